"""Atomic file writes: nothing half-written is ever left behind (write a temp file next to the
target, then rename over it)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (created parent dirs); the
    temp file is removed if writing fails. Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str, text: str) -> str:
    """Write ``text`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path: str, obj: Any, indent: int | None = 2) -> str:
    """``json.dump`` atomically (with a final newline)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")

    return atomic_write(path, write)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in dicts, lists, tuples) moved to the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(to_cpu(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_torch(obj: Any, path: str) -> str:
    """``torch.save`` atomically, every tensor on the CPU (a checkpoint written on a GPU loads with
    a plain ``torch.load`` anywhere)."""
    import torch

    obj = to_cpu(obj)
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
