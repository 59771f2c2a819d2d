"""Print the measured table of offrl's D4RL-protocol locomotion suite (docs/datasets.md) from the
metadata that ``offrl datasets make`` stored in each locally present dataset.

    python scripts/dataset_card.py              # markdown table
    python scripts/dataset_card.py --json       # one JSON line per dataset

Columns: transitions, episodes, mean ± std return of the complete episodes and its normalized
score (D4RL's per-env reference scores), the behaviour policy's SAC training step, and the
seconds the recipe took to produce the episodes (``build_seconds``: collection, or reading the run
or the parts; the Minari write comes after and is not included). Datasets that are not present are listed as such (nothing is made up).
"""

from __future__ import annotations

import argparse
import json

from offrl.data import recipes
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON line per dataset instead of a markdown table")
    a = p.parse_args(argv)
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
