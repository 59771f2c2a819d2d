"""Print the measured table of offrl's D4RL-protocol locomotion suite (docs/datasets.md) from the
metadata that ``offrl datasets make`` stored in each locally present dataset.

    python scripts/dataset_card.py              # markdown table
    python scripts/dataset_card.py --json       # one JSON line per dataset
    python scripts/dataset_card.py --plot docs/img   # also docs/img/returns_<env>.svg

Columns: transitions, episodes, mean ± std return of the complete episodes and its normalized
score (D4RL's per-env reference scores), the behaviour policy's SAC training step, and the
seconds the recipe took to produce the episodes (``build_seconds``: collection, or reading the run
or the parts; the Minari write comes after and is not included). Datasets that are not present are
listed as such (nothing is made up).

``--plot DIR`` draws, per env with datasets present, the distribution of the complete episodes'
normalized returns, one row per dataset (``DIR/returns_<env>.svg``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from offrl.data import load_dataset, recipes
from offrl.data.registry import get_info, is_present
from offrl.envs import reference_scores


def card_row(dataset_id: str) -> dict:
    """The measured statistics of one present recipe dataset (from its stored metadata)."""
    import minari

    env, kind = recipes.parse_id(dataset_id)
    meta = json.loads(minari.load_dataset(dataset_id).storage.metadata["offrl"])
    stats = meta["stats"]
    lo, hi = reference_scores(recipes.ENVS[env])
    norm = lambda r: 100.0 * (r - lo) / (hi - lo)  # noqa: E731
    behaviour = meta.get("behaviour") or {}
    return {
        "id": dataset_id, "transitions": stats["transitions"], "episodes": stats["episodes"],
        "terminated": stats["terminated"], "return_mean": stats["return_mean"], "return_std": stats["return_std"],
        "normalized_mean": norm(stats["return_mean"]), "normalized_std": 100.0 * stats["return_std"] / (hi - lo),
        "behaviour_step": None if kind == "medium-expert" else behaviour.get("step"),
        "build_seconds": meta.get("build_seconds"), "rerun_seconds": meta.get("rerun_seconds"),
    }


def complete_episode_returns(dataset_id: str) -> np.ndarray:
    """Returns of the dataset's complete episodes (terminated or at the time limit; an episode cut
    to reach the transition count is left out), as in the stored statistics."""
    ds = load_dataset(dataset_id, download=False)
    complete = (ds.terminals[ds.episode_ends()] > 0) | (ds.episode_lengths() == recipes.MAX_EPISODE_STEPS)
    return ds.episode_returns()[complete]


def plot_returns(env: str, out_dir: str) -> str | None:
    """``out_dir/returns_<env>.svg`` for the env's present datasets (None when none is present)."""
    from offrl.plot import render_histograms, write_svg

    lo, hi = reference_scores(recipes.ENVS[env])
    rows = []
    for kind in recipes.KINDS:
        did = recipes.dataset_id(env, kind)
        if is_present(did):
            rows.append((f"{kind}-v0", 100.0 * (complete_episode_returns(did) - lo) / (hi - lo)))
    if not rows:
        return None
    out = os.path.join(out_dir, f"returns_{env}.svg")
    write_svg(out, render_histograms(rows, "normalized return of an episode (D4RL reference scores)",
                                     title=f"offrl/{env}: return of each complete episode (n · mean ± std)"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON line per dataset instead of a markdown table")
    p.add_argument("--plot", metavar="DIR", help="also write DIR/returns_<env>.svg (episode-return histograms)")
    a = p.parse_args(argv)
    if a.plot:
        for env in recipes.ENVS:
            out = plot_returns(env, a.plot)
            if out:
                print(f"wrote {out}", file=sys.stderr)
    rows = []
    for env in recipes.ENVS:
        for kind in recipes.KINDS:
            did = recipes.dataset_id(env, kind)
            rows.append(card_row(did) if is_present(get_info(did).id) else {"id": did, "present": False})
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("| dataset | transitions | episodes | return (mean ± std) | normalized | behaviour SAC step | collect |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("present") is False:
            print(f"| `{r['id']}` | not built | | | | | |")
            continue
        step = "—" if r["behaviour_step"] is None else f"{r['behaviour_step']:,}"
        build = "—" if r["build_seconds"] is None else f"{r['build_seconds']:.0f} s"
        print(f"| `{r['id']}` | {r['transitions']:,} | {r['episodes']:,} | {r['return_mean']:.0f} ± {r['return_std']:.0f}"
              f" | {r['normalized_mean']:.1f} ± {r['normalized_std']:.1f} | {step} | {build} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
