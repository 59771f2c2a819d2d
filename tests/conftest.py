"""Shared pytest fixtures (data layer: isolated caches and temporary registry entries)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest


@pytest.fixture
def data_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Point the D4RL and Minari caches at empty temporary directories (never the real home)."""
    dirs = SimpleNamespace(d4rl=tmp_path / "d4rl", minari=tmp_path / "minari")
    dirs.d4rl.mkdir()
    dirs.minari.mkdir()
    monkeypatch.setenv("D4RL_DATASET_DIR", str(dirs.d4rl))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dirs.minari))
    return dirs


@pytest.fixture
def temp_register(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Register a DatasetInfo for the duration of one test; the registry is restored afterwards."""
    from offrl.data import registry

    def _register(info):
        monkeypatch.setitem(registry._REGISTRY, info.id, info)
        return info

    return _register
