"""User-facing errors.

Anything the user can fix (a bad flag, a missing file, a corrupt dataset, a checkpoint of the
wrong algorithm) raises :class:`OffrlError`. Command-line entry points catch it and print one
line ``offrl: error: <message>`` with a non-zero exit status and no traceback.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


class OffrlError(Exception):
    """An error caused by user input, reported as one line without a traceback."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` for the closest ``choices`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def json_safe(value):
    """Replace NaN/inf floats (not valid JSON) by None, recursively."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class TrainingInterrupted(KeyboardInterrupt):
    """A training run stopped by SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint at the step it
    reached; ``--resume`` continues it exactly. Entry points exit 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, step: int, checkpoint: str, signal_name: str, exit_code: int):
        self.step, self.checkpoint, self.signal_name, self.exit_code = step, checkpoint, signal_name, exit_code
        super().__init__(f"{signal_name} at step {step}: checkpoint saved to {checkpoint}; "
                         f"continue with --resume {checkpoint}")


def check(cond: bool, message: str) -> None:
    """Raise :class:`OffrlError` with ``message`` unless ``cond`` holds."""
    if not cond:
        raise OffrlError(message)


def check_output_dir(path: str, what: str = "--run-dir") -> None:
    """Raise :class:`OffrlError` (one line naming ``what`` and ``path``) unless ``path`` is a writable
    directory or can be created as one: its nearest existing ancestor (``path`` itself if it exists)
    must be a directory this process may write and enter. Nothing is created."""
    full = os.path.abspath(os.fspath(path))
    probe = full
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK):
        return
    problem = "not writable" if os.path.isdir(probe) else "not a directory"
    if probe != full:
        problem = f"cannot be created: {probe} is {problem}"
    raise OffrlError(f"{what} {path}: {problem}")


def cli_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for entry points: turn :class:`OffrlError` into a one-line message and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OffrlError as e:
            print(f"offrl: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except BrokenPipeError:  # output piped into `head` and closed early
            sys.stderr.close()
            raise SystemExit(0) from None
        except TrainingInterrupted as e:
            print(f"offrl: stopped by {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            print("offrl: interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
