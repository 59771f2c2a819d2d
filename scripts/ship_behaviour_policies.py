"""Pick the behaviour policies of the locomotion suite from SAC training runs and write the small
policy files that ship inside the package (offrl/data/policies/<env>-<level>.pt).

    python scripts/ship_behaviour_policies.py --env hopper --run runs/behaviour/hopper

A run must have been trained with ``--snapshots`` (one policy file per evaluation, with its
deterministic evaluation return). Following D4RL:

* expert — among the ``--candidates`` snapshots with the highest (deterministic, 10-episode)
  evaluation returns, the one whose *stochastic* policy returns most over ``--episodes`` episodes
  (the datasets sample actions, and the single best evaluation is a noisy maximum);
* medium — among earlier snapshots, the one whose evaluation return is closest to 1/3 of the expert's;
* random — the run's initial policy (step 0 snapshot), or a SAC actor initialised with the run's
  seed when the run predates step-0 snapshots.

Each file records its provenance (env, step, seed, SAC config, evaluation return) and the mean ±
std return of the *stochastic* policy (what the datasets collect) over ``--episodes`` episodes.
Prints one JSON line per policy.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import torch

from offrl.agent import load_checkpoint
from offrl.algos.sac import SAC
from offrl.data import recipes
from offrl.evaluation import evaluate
from offrl.io import write_json
from offrl.utils import set_seed


def stochastic_return(agent, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: the one fork_rng(devices=[]) restores
        res = evaluate(lambda o: agent.explore(o), env_id, episodes, seed=seed)
    return float(res["return_mean"]), float(res["return_std"])


def write_index(out_dir: str) -> str:
    """``policies.json`` next to the policy files: how each shipped policy was made, for humans."""
    index = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*-*.pt"))):
        info = load_checkpoint(path)["policy"]
        keep = ("env", "level", "step", "seed", "eval_return_mean", "behaviour_return_mean", "behaviour_return_std",
                "behaviour_episodes", "run", "source", "torch", "note")
        index[os.path.basename(path)] = {k: info.get(k) for k in keep}
    return write_json(os.path.join(out_dir, "policies.json"), index)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True, choices=sorted(recipes.ENVS))
    p.add_argument("--run", required=True, help="SAC run directory (with snapshots/)")
    p.add_argument("--episodes", type=int, default=50, help="episodes for the stochastic-return measurement")
    p.add_argument("--out", default=str(recipes.POLICY_DIR))
    p.add_argument("--upto", type=int, default=None, help="only consider snapshots up to this env step")
    p.add_argument("--candidates", type=int, default=3,
                   help="expert: re-measure this many best-evaluated snapshots stochastically and keep the best")
    a = p.parse_args(argv)
    env_id = recipes.ENVS[a.env]
    snaps = []
    for path in sorted(glob.glob(os.path.join(a.run, "snapshots", "step*.pt"))):
        ck = load_checkpoint(path)
        info = ck["policy"]
        if info.get("env") != env_id:
            sys.exit(f"{path} is a policy for {info.get('env')}, not {env_id}")
        if a.upto is not None and info["step"] > a.upto:
            continue
        snaps.append((info["step"], info.get("return_mean"), path, ck))
    scored = [s for s in snaps if s[1] is not None]
    if not scored:
        sys.exit(f"no evaluated snapshots under {a.run}/snapshots")
    if a.candidates < 1:
        sys.exit(f"--candidates must be positive, got {a.candidates}")
    measured = {}  # step -> (mean, std) of the stochastic policy
    top = sorted(scored, key=lambda s: -s[1])[:a.candidates]
    for step, _, _, ck in top:
        measured[step] = stochastic_return(SAC.from_checkpoint(ck, device="cpu"), env_id, a.episodes, seed=20_000)
    expert = max(top, key=lambda s: measured[s[0]][0])
    candidates = [{"step": s[0], "eval_return_mean": s[1], "stochastic_return_mean": measured[s[0]][0]} for s in top]
    target = expert[1] / 3.0
    earlier = [s for s in scored if s[0] < expert[0]]
    if not earlier:
        sys.exit(f"the best snapshot (step {expert[0]}) is the first evaluated one: no earlier snapshot to be medium")
    medium = min(earlier, key=lambda s: abs(s[1] - target))
    random = next((s for s in snaps if s[0] == 0), None)
    if random is None:  # the initial actor exactly as run_online builds it
        cfg_ck = expert[3]
        agent = SAC.from_checkpoint(cfg_ck, device="cpu")
        set_seed(agent.cfg.seed)
        fresh = SAC(agent.cfg, agent.obs_dim, agent.act_dim)
        fresh.save_policy(os.path.join(a.out, ".tmp-random.pt"), {"env": env_id, "step": 0, "seed": agent.cfg.seed})
        random = (0, None, os.path.join(a.out, ".tmp-random.pt"), load_checkpoint(os.path.join(a.out, ".tmp-random.pt")))
        os.remove(random[2])
    os.makedirs(a.out, exist_ok=True)
    for level, (step, ret, path, ck) in (("random", random), ("medium", medium), ("expert", expert)):
        agent = SAC.from_checkpoint(ck, device="cpu")
        mean, std = measured[step] if level == "expert" else stochastic_return(agent, env_id, a.episodes, seed=20_000)
        info = dict(ck["policy"])
        if level == "expert":
            info["expert_candidates"] = candidates
        info.update(level=level, behaviour_return_mean=mean, behaviour_return_std=std, behaviour_episodes=a.episodes,
                    eval_return_mean=ret, run=os.path.basename(os.path.normpath(a.run)), source=os.path.basename(path),
                    expert_eval_return=expert[1], torch=str(torch.__version__),
                    note=f"SAC ({agent.cfg.hidden}, seed {agent.cfg.seed}) on {env_id}, snapshot at env step {step}")
        out = os.path.join(a.out, f"{a.env}-{level}.pt")
        agent.save_policy(out, info)
        print(json.dumps({"file": out, **{k: v for k, v in info.items() if isinstance(v, (int, float, str)) or v is None}}))
    write_index(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
