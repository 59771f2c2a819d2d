"""How well Uni-O4's offline policy evaluation ranks its policies, for docs/unio4.md: one table over
the finished Uni-O4 runs of a folder.

    python scripts/unio4_ope.py                                          # docs/results/runs/unio4
    python scripts/unio4_ope.py RUNS --json docs/results/unio4/ope.json  # also the numbers as JSON

Every run directory under RUNS whose ``config.json`` names ``unio4`` and that has a ``summary.json``
counts. Its summary's ``unio4.ope_ranking`` (written by ``algos/unio4.py``: the OPE score and the
real evaluation of each (member, improvement step) policy) gives, per run: Spearman's ρ between OPE
and real return over all those policies, the mean over steps of ρ over the members, and the pairwise
accuracy (the fraction of policy pairs with different real returns that the OPE orders the same way;
the paper reports 78 % for its AM-Q). Per dataset: mean ± std over seeds (population std); the last
row pools every run's pairs. The stage scores (BC ensemble, after improvement, after online PPO)
come from the same summaries.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from offrl.algos.unio4 import pairwise_agreement, policy_scores


def finished_runs(root: Path) -> list[tuple[str, int, dict]]:
    """(dataset, seed, summary) of each finished Uni-O4 run under ``root``, sorted."""
    out = []
    for cfg_path in sorted(root.rglob("config.json")):
        run = cfg_path.parent
        meta = json.loads(cfg_path.read_text())
        if meta.get("algo") != "unio4" or not (run / "summary.json").is_file():
            continue
        summary = json.loads((run / "summary.json").read_text())
        if "unio4" not in summary:
            sys.exit(f"error: {run}/summary.json has no 'unio4' block (not written by algos/unio4.py?)")
        out.append((meta["config"]["dataset"], int(meta["config"]["seed"]), summary))
    return sorted(out, key=lambda x: (x[0], x[1]))


def pm(xs: list, digits: int = 2) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def pairs(history: list[dict]) -> tuple[int, int]:
    """(pairs the OPE orders as the real returns do, pairs with different real returns) of one run."""
    _, o, r = policy_scores(history)
    return pairwise_agreement(o, r)


def table(runs: list[tuple[str, int, dict]]) -> tuple[list[str], dict]:
    lines = ["| dataset | seeds | policies per run | Spearman ρ (all) | ρ within a step | pairwise accuracy | "
             "BC ensemble | after improvement | after online | member chosen |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    numbers: dict = {}
    for ds in sorted({d for d, _, _ in runs}):
        rows = [(seed, s["unio4"]) for d, seed, s in runs if d == ds]
        rank = [u["ope_ranking"] for _, u in rows]
        col = {k: [r.get(k) for r in rank] for k in ("spearman", "spearman_within_step", "pairwise_accuracy")}
        stage = {k: [u.get(k) for _, u in rows] for k in ("bc_normalized_score", "offline_normalized_score",
                                                          "online_normalized_score")}
        policies = sorted({r.get("policies", 0) for r in rank})
        chosen = ", ".join(f"s{seed}: {u.get('selected_member')}" for seed, u in rows)
        lines.append(f"| {ds} | {len(rows)} | {', '.join(map(str, policies))} | {pm(col['spearman'])} | "
                     f"{pm(col['spearman_within_step'])} | {pm(col['pairwise_accuracy'])} | "
                     f"{pm(stage['bc_normalized_score'], 1)} | {pm(stage['offline_normalized_score'], 1)} | "
                     f"{pm(stage['online_normalized_score'], 1)} | {chosen} |")
        numbers[ds] = {"seeds": [seed for seed, _ in rows], **col, **stage,
                       "selected_member": [u.get("selected_member") for _, u in rows]}
    agree, total = map(sum, zip(*(pairs(s["unio4"]["history"]) for _, _, s in runs))) if runs else (0, 0)
    pooled = agree / total if total else None
    lines.append(f"| all ({len(runs)} runs, pooled pairs) | | | | | "
                 + (f"{pooled:.2f} ({agree}/{total})" if pooled is not None else "–") + " | | | | |")
    numbers["pooled_pairwise_accuracy"] = {"agree": agree, "pairs": total, "accuracy": pooled}
    return lines, numbers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", default="docs/results/runs/unio4", help="folder with Uni-O4 run directories")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    root = Path(a.runs)
    if not root.is_dir():
        sys.exit(f"error: {root}: no such folder")
    runs = finished_runs(root)
    if not runs:
        sys.exit(f"error: no finished Uni-O4 runs under {root}")
    lines, numbers = table(runs)
    print("\n".join(lines))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
