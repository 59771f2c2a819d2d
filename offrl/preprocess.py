"""Dataset preprocessing shared by algorithm files (reward scaling, dataset domains)."""

from __future__ import annotations

import numpy as np

from offrl.errors import OffrlError


def dataset_domain(dataset_id: str) -> str:
    """``"antmaze"``, ``"kitchen"``, ``"adroit"`` or ``"locomotion"`` from a dataset id."""
    name = dataset_id.lower()
    for domain, keys in (("antmaze", ("antmaze",)), ("kitchen", ("kitchen",)),
                         ("adroit", ("pen-", "hammer-", "door-", "relocate-", "pen/", "hammer/", "door/", "relocate/"))):
        if any(k in name for k in keys):
            return domain
    return "locomotion"


def return_range_scale(dataset, target: float = 1000.0) -> float:
    """``target / (max episode return − min episode return)``: IQL's locomotion reward scale."""
    rets = dataset.episode_returns()
    spread = float(rets.max() - rets.min())
    if not np.isfinite(spread) or spread <= 0:
        raise OffrlError(f"{dataset.id}: cannot scale rewards, all episodes have the same return ({rets.max():.3f})")
    return target / spread
