"""Dataset preprocessing shared by algorithm files (reward scaling, dataset domains)."""

from __future__ import annotations

import re

import numpy as np

from offrl.errors import OffrlError


def dataset_domain(dataset_id: str) -> str:
    """``"antmaze"``, ``"kitchen"``, ``"adroit"`` or ``"locomotion"`` from a dataset id."""
    tokens = set(re.split(r"[-/_]", dataset_id.lower()))
    if "antmaze" in tokens:
        return "antmaze"
    if "kitchen" in tokens:
        return "kitchen"
    if tokens & {"pen", "hammer", "door", "relocate"}:
        return "adroit"
    return "locomotion"


def return_range_scale(dataset, target: float = 1000.0) -> float:
    """``target / (max episode return − min episode return)``: IQL's locomotion reward scale."""
    rets = dataset.episode_returns()
    spread = float(rets.max() - rets.min())
    if not np.isfinite(spread) or spread <= 0:
        raise OffrlError(f"{dataset.id}: cannot scale rewards, all episodes have the same return ({rets.max():.3f})")
    return target / spread


def preset_for(dataset_id: str, presets: dict, default):
    """The entry of ``presets`` (keyed by env or domain token, e.g. ``hopper``, ``antmaze``) whose key
    is a token of ``dataset_id`` (split at - / _), else ``default``."""
    tokens = set(re.split(r"[-/_]", (dataset_id or "").lower()))
    for name, values in presets.items():
        if name in tokens:
            return values
    return default


def fill_unset(cfg, **values) -> None:
    """Set each config field that is still None (not given on the command line) to its preset."""
    for name, value in values.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
