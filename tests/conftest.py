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


# ----------------------------------------------------------------------------- shared core
@pytest.fixture(scope="session")
def scripted_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Minari root holding a build of ``offrl/invertedpendulum/scripted-v0`` (~12 s, once).

    Built once per session. Treat it as read-only; point ``MINARI_DATASETS_PATH`` at it (e.g. with
    the ``use_scripted`` fixture, or in a subprocess's environment) to use it.
    """
    from offrl.data.builtin import build_scripted

    root = tmp_path_factory.mktemp("scripted_minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        mp.setenv("D4RL_DATASET_DIR", str(tmp_path_factory.mktemp("scripted_d4rl")))
        build_scripted()  # the full 20k-step dataset: the IQL learning test trains on it
    return root


@pytest.fixture
def use_scripted(scripted_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point this test's Minari root at ``scripted_root`` and the D4RL cache at an empty temp dir."""
    d4rl = tmp_path / "d4rl-empty"
    d4rl.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(scripted_root))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(d4rl))
    return scripted_root


@pytest.fixture
def policies(tmp_path, monkeypatch, data_dirs):
    """Untrained SAC policy files (2×32) for every level of hopper and halfcheetah."""
    import torch

    from offrl.algos.sac import SAC, Config
    from offrl.data import recipes

    pdir = tmp_path / "policies"
    for env, env_id in (("hopper", "Hopper-v5"), ("halfcheetah", "HalfCheetah-v5")):
        for k, level in enumerate(recipes.POLICY_LEVELS):
            torch.manual_seed(k)
            agent = SAC(Config(env=env_id, hidden=(32, 32)), *recipes.DIMS[env])
            agent.save_policy(str(pdir / f"{env}-{level}.pt"),
                              {"env": env_id, "step": 0, "seed": k, "behaviour_return_mean": float(k)})
    monkeypatch.setattr(recipes, "POLICY_DIR", pdir)
    return pdir
