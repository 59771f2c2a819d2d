"""Dataset-collection speed of the locomotion recipes: batched MuJoCo stepping plus a batched SAC
policy forward (sampled actions with log-probs), as ``offrl datasets make`` runs it.

    python scripts/bench_collect.py [--transitions 50000] [--num-envs 64] [--policy-dir DIR]

Uses the shipped behaviour policies when present (``--level``), else untrained 2×256 SAC actors
(short hopper/walker episodes: more resets). Prints one JSON line: ``transitions_per_s`` counts the
transitions delivered (whole episodes, the last one cut to fit), ``env_steps_per_s`` every simulated
step. They differ by the episodes still running when the target is reached (up to ``num_envs`` ×
1000 steps): a short benchmark understates what a 1M-transition build delivers per second.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from offrl.algos.sac import SAC, Config
from offrl.data import recipes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transitions", type=int, default=50_000)
    p.add_argument("--num-envs", type=int, default=recipes.MAX_ENVS)
    p.add_argument("--level", default="expert", choices=recipes.POLICY_LEVELS)
    p.add_argument("--envs", nargs="+", default=list(recipes.ENVS), choices=list(recipes.ENVS))
    a = p.parse_args(argv)
    out, steps, policies = {}, {}, {}
    for env in a.envs:
        env_id = recipes.ENVS[env]
        if recipes.policy_file(env, a.level).is_file():
            agent, _ = recipes.load_behaviour(env, a.level)
            policies[env] = a.level
        else:
            torch.manual_seed(0)
            agent = SAC(Config(env=env_id), *recipes.DIMS[env])
            policies[env] = "untrained"
        calls = []
        explore = agent.explore
        agent.explore = lambda obs, **kw: (calls.append(len(obs)), explore(obs, **kw))[1]
        t = time.perf_counter()
        recipes.collect_episodes(env_id, agent, a.transitions, seed=0, num_envs=a.num_envs, progress=False)
        dt = time.perf_counter() - t
        out[env] = round(a.transitions / dt)
        steps[env] = round(sum(calls) / dt)
    print(json.dumps({"transitions_per_s": out, "env_steps_per_s": steps, "policy": policies, "num_envs": a.num_envs,
                      "transitions": a.transitions, "cpus": os.cpu_count(), "torch_threads": 1}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
