"""Dataset preprocessing shared by algorithm files: dataset domains, presets, and the reward
transforms, in one place and named for what they do.

A reward transform is chosen per algorithm and dataset domain, computed once on the dataset (a
scale factor, say) and then applied to every reward the buffer stores — the dataset's and, in an
online phase, the environment's — so both live on one scale:

    return_range    r · 1000 / (max − min episode return)   IQL, O-DICE locomotion
    minus_one       r − 1                                   IQL antmaze (CORL, official IQL)
    sparse_minus3   −3 where r = 0, else 0                  O-DICE antmaze (official code)
    affine          scale · r + shift                       the TD3 family's --reward-scale/--reward-shift
    none            r
"""

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


def reward_transform(name: str, dataset=None, scale: float = 1.0, shift: float = 0.0):
    """The named reward transform as a numpy function ``r → r'`` (None for ``none``); see the module docstring."""
    if name == "none":
        return None
    if name == "return_range":
        k = return_range_scale(dataset)
        return lambda r: r * k
    if name == "minus_one":
        return lambda r: r - 1.0
    if name == "sparse_minus3":
        return lambda r: np.where(r == 0.0, -3.0, 0.0).astype(np.float32)
    if name == "affine":
        return lambda r: (scale * r + shift).astype(np.float32)
    raise OffrlError(f"unknown reward transform '{name}' (return_range, minus_one, sparse_minus3, affine, none)")


def reward_mode_for(mode: str, dataset_id: str, by_domain: dict[str, str]) -> str:
    """``mode``, or for ``auto`` the algorithm's choice for the dataset's domain (``none`` if unlisted)."""
    return by_domain.get(dataset_domain(dataset_id), "none") if mode == "auto" else mode


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
