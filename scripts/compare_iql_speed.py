"""Compare offrl's IQL update speed with the straightforward eager baseline on this machine.

Runs `scripts/bench_iql_baseline.py` and `offrl bench update --algo iql` alternately, ROUNDS
times per thread count, each in a fresh process, and prints one JSON line with the median
updates/s of each and their ratio. Interleaving keeps slow drifts of a shared machine from
favouring either side.

    python scripts/compare_iql_speed.py --rounds 5 --steps 300 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd: list[str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(json.loads(out)["updates_per_s"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--compile", action="store_true", help="also time offrl with --compile")
    a = p.parse_args()
    result = {"rounds": a.rounds, "steps": a.steps}
    for th in a.threads:
        common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(th)]
        base, ours, comp = [], [], []
        for _ in range(a.rounds):
            base.append(run([sys.executable, os.path.join(HERE, "bench_iql_baseline.py"), *common]))
            ours.append(run([sys.executable, "-m", "offrl.cli", "bench", "update", "--algo", "iql", *common]))
            if a.compile:
                comp.append(run([sys.executable, "-m", "offrl.cli", "bench", "update", "--algo", "iql", "--compile", *common]))
        row = {"baseline": statistics.median(base), "offrl": statistics.median(ours),
               "baseline_all": base, "offrl_all": ours}
        row["ratio"] = round(row["offrl"] / row["baseline"], 3)
        if comp:
            row["offrl_compile"] = statistics.median(comp)
            row["offrl_compile_all"] = comp
        result[f"threads_{th}"] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
