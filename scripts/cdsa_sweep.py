"""Sweep CDSA's act-time settings on a trained CDSA checkpoint (no retraining): base vs corrected
returns, normalized score, VaR/CVaR over the same episode seeds. Prints one JSON line per setting.

    python scripts/cdsa_sweep.py runs/cdsa/.../checkpoint.pt --act-sigma 0.01 0.1 0.3 1.0 --weight 1 --episodes 30
"""

from __future__ import annotations

import argparse
import json

from offrl.agent import load_checkpoint
from offrl.algos.cdsa import CDSA, compare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--act-sigma", type=float, nargs="+", default=[0.01, 0.1, 0.3, 1.0])
    p.add_argument("--weight", type=float, nargs="+", default=[1.0])
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=None, help="episode seeds start here (default: the run's seed + 20000)")
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.checkpoint)
    agent = CDSA.from_checkpoint(ckpt, device="cpu")
    env = ckpt["env"]
    seed = a.seed if a.seed is not None else agent.cfg.seed + 20_000
    if a.step_size is not None:
        agent.cfg.step_size = a.step_size
    for sigma in a.act_sigma:
        for w in a.weight:
            agent.cfg.act_sigma, agent.cfg.weight = sigma, w
            res = compare(agent, env["env_id"], a.episodes, seed, env.get("ref_min_score"), env.get("ref_max_score"),
                          agent.cfg.risk_alpha)
            print(json.dumps({"act_sigma": sigma, "weight": w, "step_size": agent.cfg.step_size, "episodes": a.episodes,
                              **{k: {m: round(v, 2) for m, v in r.items() if m != "returns"} for k, r in res.items()}}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
