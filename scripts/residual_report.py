"""The residual-learning results of docs/residual_sac.md: the success table and the success-rate curves.

    python scripts/residual_report.py                                   # table of docs/results/runs/residual
    python scripts/residual_report.py RUNS --figures docs/img           # also docs/img/residual_<task>.svg

RUNS holds one folder per task (``push``, ``pickandplace``) with one run directory per method and seed
(``residual-sac-s0``, ``residual-td3-s1``, ``sac-demos-s0``, …), each with ``config.json``,
``metrics.jsonl`` and ``summary.json`` as every offrl run writes them. The frozen base is the
``base`` entry of the residual runs' summaries (its evaluation before training, on that run's
episode seeds), taken once per seed; it is drawn as a flat line at its mean. Scores are success rates in percent over the runs'
evaluation episodes, mean ± std over seeds (population std, as ``offrl report``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from offrl.plot import Curve, curves, write_figure

TASKS = {"push": "FetchPush-v4", "pickandplace": "FetchPickAndPlace-v4"}
METHODS = {"residual-sac": "residual SAC", "residual-td3": "residual TD3", "sac-demos": "SAC from scratch + demos"}
COLORS = {"frozen BC base": 3, "residual SAC": 0, "residual TD3": 1, "SAC from scratch + demos": 2}


def runs_of(root: Path, task: str, method: str) -> list[Path]:
    return sorted(p for p in (root / task).glob(f"{method}-s*") if (p / "summary.json").exists())


def successes(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ev = [(r["step"], r["eval/success_rate"]) for r in rows if "eval/success_rate" in r]
    if not ev:
        sys.exit(f"error: {run} has no eval/success_rate rows")
    return np.array([s for s, _ in ev]), 100 * np.array([v for _, v in ev])


def base_successes(root: Path, task: str) -> list[float]:
    """The frozen base's success (%) once per seed: runs of one seed evaluate it on the same episodes."""
    by_seed = {}
    for m in ("residual-sac", "residual-td3"):
        for r in runs_of(root, task, m):
            seed = json.loads((r / "config.json").read_text())["config"]["seed"]
            by_seed.setdefault(seed, json.loads((r / "summary.json").read_text())["base"]["success_rate"] * 100)
    return [by_seed[k] for k in sorted(by_seed)]


def pm(xs: list[float]) -> str:
    return f"{np.mean(xs):.0f} ± {np.std(xs):.0f}" if len(xs) > 1 else f"{xs[0]:.0f}"


def table(root: Path) -> str:
    out = ["| task | method | seeds | final success % | best % | mean over evaluations % | minutes per run |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for task, env in TASKS.items():
        bases = base_successes(root, task)
        if bases:
            out.append(f"| {env} | frozen BC base | {len(bases)} | {pm(bases)} | | | |")
        for m, label in METHODS.items():
            runs = runs_of(root, task, m)
            if not runs:
                continue
            ev = [successes(r)[1] for r in runs]
            wall = [json.loads((r / "summary.json").read_text())["total_seconds"] / 60 for r in runs]
            out.append(f"| {env} | {label} | {len(runs)} | {pm([e[-1] for e in ev])} | {pm([e.max() for e in ev])} "
                       f"| {pm([e.mean() for e in ev])} | {np.mean(wall):.0f} |")
    return "\n".join(out)


def figures(root: Path, out_dir: Path) -> list[str]:
    written = []
    for task, env in TASKS.items():
        items: list[Curve] = []
        runs, labels = [], []
        for m, label in METHODS.items():
            for r in runs_of(root, task, m):
                runs.append(str(r)), labels.append(label)
        if not runs:
            continue
        items = curves(runs, "eval/success_rate", labels)
        for c in items:
            c.values, c.color = 100 * c.values, COLORS[c.label]
            c.band = None if c.band is None else 100 * c.band
        bases = base_successes(root, task)
        if bases:
            steps = np.array([0, max(int(c.steps[-1]) for c in items)])
            items.insert(0, Curve("frozen BC base", steps, np.full(2, np.mean(bases)), None,
                                  color=COLORS["frozen BC base"]))
        out = out_dir / f"residual_{task}.svg"
        write_figure(str(out), items, "success rate (%)", title=f"{env}: success over 50 evaluation episodes",
                     xlabel="env steps")
        written.append(str(out))
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="?", default=str(Path(__file__).resolve().parent.parent / "docs/results/runs/residual"))
    p.add_argument("--figures", help="folder for residual_<task>.svg")
    a = p.parse_args(argv)
    root = Path(a.runs)
    if not root.is_dir():
        sys.exit(f"error: {root} is not a directory")
    print(table(root))
    if a.figures:
        for f in figures(root, Path(a.figures)):
            print(f"wrote {f}", file=sys.stderr)


if __name__ == "__main__":
    main()
