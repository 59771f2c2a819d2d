"""offrl's D4RL-protocol locomotion suite on Gymnasium MuJoCo v5: 15 datasets, rebuilt by recipe.

For each of hopper, halfcheetah and walker2d (``Hopper-v5``, ``HalfCheetah-v5``, ``Walker2d-v5``)
``offrl datasets make offrl/<env>/<kind>-v0`` builds, following D4RL's protocol:

* ``random``   — 1M transitions of a randomly initialised SAC policy (the behaviour run's initial
  actor, shipped as ``<env>-random.pt``).
* ``medium``   — 1M transitions of the *medium* policy: the SAC training snapshot whose
  evaluation return is closest to one third of the expert's.
* ``expert``   — 1M transitions of the *expert* policy: the best SAC snapshot.
* ``medium-replay`` — the replay buffer of the SAC run up to the medium snapshot, obtained by
  rerunning the recorded SAC configuration (same seed) for that many steps.
* ``medium-expert`` — ``medium`` cut at its last episode end, followed by ``expert`` (≤ 2M).

Actions are *sampled* from the stochastic policy (tanh-Gaussian), episodes last at most 1000
steps, ``terminations`` mark only true termination and ``truncations`` the time limit (or the
budget cut of the last episode). Step infos hold the MuJoCo ``qpos``/``qvel`` of every observation
(T + 1 rows, float64, exact) and ``action_log_probs`` (row t: log π(a_t | s_t); the final row is
NaN, no action is taken there). Collection uses :class:`offrl.envs.batched.BatchedLocomotion`
(64 copies, same transitions as Gymnasium) and is deterministic for a given seed and thread count.
Reference scores are D4RL's per-env min/max, so normalized scores read like the literature.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from offrl.data.registry import DatasetInfo, register
from offrl.errors import OffrlError

ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
DIMS = {"hopper": (11, 3), "halfcheetah": (17, 6), "walker2d": (17, 6)}
KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_LEVELS = ("random", "medium", "expert")
NUM_TRANSITIONS = 1_000_000
MAX_EPISODE_STEPS = 1000  # the time limit, as in D4RL (max_path)
SEEDS = {"random": 100, "medium": 200, "expert": 300}  # collection seed per policy level
MAX_ENVS = 64
POLICY_DIR = Path(__file__).resolve().parent / "policies"


def dataset_id(env: str, kind: str) -> str:
    return f"offrl/{env}/{kind}-v0"


def parse_id(dataset_id_: str) -> tuple[str, str]:
    parts = dataset_id_.split("/")
    if len(parts) != 3 or parts[0] != "offrl" or parts[1] not in ENVS or not parts[2].endswith("-v0") \
            or parts[2][:-3] not in KINDS:
        raise OffrlError(f"{dataset_id_} is not one of the locomotion recipes")
    return parts[1], parts[2][:-3]


# ------------------------------------------------------------------------------------ policies
def policy_file(env: str, level: str) -> Path:
    return POLICY_DIR / f"{env}-{level}.pt"


def load_behaviour(env: str, level: str, device: str = "cpu", path: str | os.PathLike | None = None):
    """The shipped behaviour policy ``level`` of ``env`` as a SAC agent (one-line errors when the
    file is missing, damaged or made for another env)."""
    from offrl.agent import load_checkpoint
    from offrl.algos.sac import SAC

    path = Path(path) if path is not None else policy_file(env, level)
    if not path.is_file():
        raise OffrlError(f"behaviour policy file missing: {path} (offrl/{env} {level}); "
                         "reinstall offrl or train it as docs/datasets.md describes")
    ckpt = load_checkpoint(str(path))
    info = ckpt.get("policy")
    if info is None:
        raise OffrlError(f"{path} is not a policy file (no provenance); write one with Agent.save_policy")
    if info.get("env") != ENVS[env]:
        raise OffrlError(f"{path} is a policy for {info.get('env')}, not {ENVS[env]}")
    agent = SAC.from_checkpoint(ckpt, device=device, path=str(path))
    agent.eval()
    return agent, info


# ------------------------------------------------------------------------------------ collection
def _num_envs(num_transitions: int, max_steps: int) -> int:
    return int(min(MAX_ENVS, max(1, num_transitions // max_steps)))


def collect_episodes(env_id: str, agent, num_transitions: int, seed: int, num_envs: int | None = None,
                     threads: int | None = None, progress: bool | None = None, desc: str = "collect") -> list[dict]:
    """Run ``agent``'s stochastic policy in ``num_envs`` copies of ``env_id`` until finished
    episodes hold ``num_transitions`` steps; returns exactly that many steps as episode dicts
    (ordered by the time they ended; the last one is cut to fit, marked truncated).

    Per vector step only whole-batch arrays are kept; episodes are cut out at the end.
    torch runs on one thread here (deterministic, and the MuJoCo threads need the cores)."""
    import torch
    from tqdm import tqdm

    from offrl.envs.batched import BatchedLocomotion

    venv = BatchedLocomotion(env_id, num_envs or _num_envs(num_transitions, MAX_EPISODE_STEPS), seed, threads=threads)
    n = venv.num_envs
    keys = ("obs", "qpos", "qvel", "actions", "rewards", "logp", "term", "trunc", "final", "final_qpos", "final_qvel")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    length = np.zeros(n, dtype=np.int64)
    total = 0
    if progress is None:
        progress = os.isatty(2)
    bar = tqdm(total=num_transitions, desc=desc, unit="step", disable=not progress, dynamic_ncols=True,
               unit_scale=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), venv:
            torch.default_generator.manual_seed(seed)  # the CPU generator only: the one fork_rng(devices=[]) restores
            while total < num_transitions:
                obs = venv.obs.astype(np.float32)
                rows["obs"].append(obs)
                rows["qpos"].append(venv.qpos.copy())
                rows["qvel"].append(venv.qvel.copy())
                actions, logp = agent.explore(obs, with_log_prob=True)
                _, rew, term, trunc, final = venv.step(actions)
                for k, v in (("actions", actions), ("rewards", rew.astype(np.float32)), ("logp", logp),
                             ("term", term), ("trunc", trunc & ~term), ("final", final.astype(np.float32)),
                             ("final_qpos", venv.final_qpos), ("final_qvel", venv.final_qvel)):
                    rows[k].append(v)
                length += 1
                ended = term | trunc
                total += int(length[ended].sum())
                length[ended] = 0
                bar.update(min(total, num_transitions) - bar.n)
    finally:
        torch.set_num_threads(threads_before)
        bar.close()
    arr = {k: np.stack(v) for k, v in rows.items()}  # [T, n, ...]
    ends = np.argwhere(arr["term"] | arr["trunc"])  # (t, env) in time order, then env order
    starts = np.zeros(n, dtype=np.int64)
    episodes = []
    for t, i in ends:
        s = starts[i]
        sl = slice(s, t + 1)
        episodes.append({
            "observations": np.concatenate([arr["obs"][sl, i], arr["final"][t:t + 1, i]]),
            "actions": arr["actions"][sl, i].astype(np.float32),
            "rewards": arr["rewards"][sl, i],
            "terminations": arr["term"][sl, i].copy(),
            "truncations": arr["trunc"][sl, i].copy(),
            "infos": {"qpos": np.concatenate([arr["qpos"][sl, i], arr["final_qpos"][t:t + 1, i]]),
                      "qvel": np.concatenate([arr["qvel"][sl, i], arr["final_qvel"][t:t + 1, i]]),
                      "action_log_probs": np.append(arr["logp"][sl, i].astype(np.float32), np.float32(np.nan))},
        })
        starts[i] = t + 1
    return _cut(episodes, num_transitions)


def _cut(episodes: list[dict], num_transitions: int) -> list[dict]:
    out, total = [], 0
    for ep in episodes:
        t = len(ep["actions"])
        if total + t > num_transitions:
            out.append(_truncate(ep, num_transitions - total))
            break
        out.append(ep)
        total += t
        if total == num_transitions:
            break
    return out


def _truncate(ep: dict, t: int) -> dict:
    """The first ``t`` steps of an episode, its last step marked truncated (the budget cut)."""
    cut = {k: ep[k][:t].copy() for k in ("actions", "rewards", "terminations", "truncations")}
    cut["observations"] = ep["observations"][:t + 1].copy()
    cut["infos"] = {k: v[:t + 1].copy() for k, v in ep["infos"].items()}
    cut["infos"]["action_log_probs"][t] = np.nan
    cut["terminations"][-1], cut["truncations"][-1] = False, True
    return cut


def episode_stats(episodes: list[dict], max_steps: int = MAX_EPISODE_STEPS) -> dict:
    """Transitions, episodes and return statistics over the *complete* episodes (terminated or
    at the time limit; a budget-cut last episode is left out of the returns)."""
    complete = [ep for ep in episodes if ep["terminations"][-1] or len(ep["actions"]) == max_steps]
    rets = np.array([float(np.sum(ep["rewards"], dtype=np.float64)) for ep in complete] or [np.nan])
    return {"transitions": int(sum(len(ep["actions"]) for ep in episodes)), "episodes": len(episodes),
            "return_mean": float(rets.mean()), "return_std": float(rets.std()),
            "terminated": int(sum(bool(ep["terminations"][-1]) for ep in episodes))}


# ------------------------------------------------------------------------------------ medium-replay
def episodes_from_run(ckpt: dict, steps: int | None = None) -> list[dict]:
    """Episodes of the first ``steps`` env steps of a SAC run trained with ``--record``
    (its replay buffer in time order plus the recorded D4RL fields)."""
    t = ckpt.get("train", {})
    parts = t.get("parts", t)  # checkpoints before the run lifecycle kept the parts at the top
    rec = parts.get("record")
    if rec is None:
        raise OffrlError("the run was not trained with --record; it has no D4RL fields to write a dataset from")
    data = parts["buffer"]["data"].numpy()
    obs_dim, act_dim = ckpt["dims"]["obs_dim"], ckpt["dims"]["act_dim"]
    n = len(rec["logp"]) if steps is None else int(steps)
    if n > len(rec["logp"]) or n > len(data):
        raise OffrlError(f"the run has {len(rec['logp'])} recorded steps, fewer than the {n} asked for")
    obs = data[:n, :obs_dim]
    act = data[:n, obs_dim:obs_dim + act_dim]
    rew = data[:n, obs_dim + act_dim]
    next_obs = data[:n, obs_dim + act_dim + 1:2 * obs_dim + act_dim + 1]
    term = data[:n, -1] > 0.5
    trunc = rec["timeouts"].numpy()[:n]
    qpos, qvel, logp = rec["qpos"].numpy()[:n], rec["qvel"].numpy()[:n], rec["logp"].numpy()[:n]
    end_state = {int(r): (q.numpy(), v.numpy()) for r, q, v in zip(rec["end_rows"], rec["end_qpos"], rec["end_qvel"])}
    episodes, start = [], 0
    ends = list(np.flatnonzero(term | trunc))
    if not ends or ends[-1] != n - 1:
        ends.append(n - 1)
    for e in ends:
        if e in end_state:
            fq, fv = end_state[e]
        elif e + 1 < len(rec["logp"]):  # cut inside an episode: the next row's state follows on
            fq, fv = rec["qpos"][e + 1].numpy(), rec["qvel"][e + 1].numpy()
        else:
            fq, fv = rec["tail_qpos"].numpy(), rec["tail_qvel"].numpy()
        sl = slice(start, e + 1)
        cut = e not in end_state
        episodes.append({
            "observations": np.concatenate([obs[sl], next_obs[e:e + 1]]).astype(np.float32),
            "actions": act[sl].astype(np.float32), "rewards": rew[sl].astype(np.float32),
            "terminations": term[sl].copy(), "truncations": (trunc[sl] | (np.arange(start, e + 1) == e) & cut),
            "infos": {"qpos": np.concatenate([qpos[sl], fq[None]]), "qvel": np.concatenate([qvel[sl], fv[None]]),
                      "action_log_probs": np.append(logp[sl], np.float32(np.nan)).astype(np.float32)},
        })
        start = e + 1
    return episodes


def rerun_medium_replay(env: str, progress: bool | None = None, threads: int = 1) -> tuple[list[dict], dict]:
    """Rerun the recorded SAC configuration of ``env``'s medium policy up to its step, recording
    the D4RL fields; returns (episodes, info)."""
    import torch

    from offrl.agent import config_from_dict, load_checkpoint
    from offrl.algos.sac import SAC, Config
    from offrl.online import run_online

    agent, info = load_behaviour(env, "medium")
    steps = int(info["step"])
    cfg = config_from_dict(Config, load_checkpoint(str(policy_file(env, "medium")))["config"])
    tmp = tempfile.mkdtemp(prefix="offrl-medium-replay-")
    try:
        cfg.total_steps, cfg.record, cfg.snapshots, cfg.eval_every = steps, True, False, 0
        cfg.checkpoint_every, cfg.run_dir, cfg.resume, cfg.progress = steps, tmp, None, progress
        cfg.threads, cfg.device = threads, "cpu"
        t0 = time.time()
        run_online(cfg, SAC)
        ckpt = load_checkpoint(os.path.join(tmp, "checkpoint.pt"))
        rerun = SAC.from_checkpoint(ckpt, device="cpu")
        same = all(torch.equal(a, b) for a, b in zip(rerun.actor.state_dict().values(), agent.actor.state_dict().values()))
        episodes = episodes_from_run(ckpt, steps)
        return episodes, {"rerun_seconds": time.time() - t0, "rerun_matches_shipped_policy": same}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ build
def _policy_metadata(env: str) -> dict:
    """Random- and expert-policy mean returns recorded in the shipped policy files."""
    out = {}
    for level in ("random", "expert"):
        try:
            _, info = load_behaviour(env, level)
            out[f"{level}_policy_return"] = info.get("behaviour_return_mean")
        except OffrlError:
            out[f"{level}_policy_return"] = None
    return out


def _minari_episodes(dataset_id_: str) -> list[dict]:
    import minari

    mds = minari.load_dataset(dataset_id_)
    return [{"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards,
             "terminations": ep.terminations, "truncations": ep.truncations,
             "infos": {k: ep.infos[k] for k in ("qpos", "qvel", "action_log_probs")}}
            for ep in mds.iterate_episodes()]


def build(info: DatasetInfo, force: bool = False, num_transitions: int | None = None, progress: bool | None = None,
          from_run: str | None = None) -> str:
    """Build the recipe dataset ``info.id`` (the registry's builder hook)."""
    import gymnasium as gym

    from offrl.data.minari_io import check_minari_root
    from offrl.data.registry import is_present
    from offrl.data.writer import write_minari_dataset
    from offrl.envs import reference_scores

    env, kind = parse_id(info.id)
    env_id = ENVS[env]
    n = NUM_TRANSITIONS if num_transitions is None else int(num_transitions)
    if n < 1:
        raise OffrlError(f"num_transitions must be positive, got {n}")
    check_minari_root()  # before collecting (minutes for the full sizes): a bad MINARI_DATASETS_PATH fails at once
    t0 = time.time()
    extra: dict = {"recipe": kind, "protocol": "d4rl", "num_transitions_target": n}
    if kind in POLICY_LEVELS:
        agent, pinfo = load_behaviour(env, kind)
        episodes = collect_episodes(env_id, agent, n, SEEDS[kind], progress=progress, desc=info.id)
        extra.update(seed=SEEDS[kind], behaviour=pinfo, num_envs=_num_envs(n, MAX_EPISODE_STEPS))
    elif kind == "medium-replay":
        _, pinfo = load_behaviour(env, "medium")
        if from_run:
            from offrl.agent import load_checkpoint

            episodes = episodes_from_run(load_checkpoint(from_run), int(pinfo["step"]))
            extra.update(source_run=os.path.basename(os.path.dirname(os.path.abspath(from_run))))
        else:
            episodes, rerun = rerun_medium_replay(env, progress=progress)
            extra.update(rerun)
        extra.update(behaviour=pinfo)
    else:  # medium-expert
        parts = []
        for level in ("medium", "expert"):
            sub = dataset_id(env, level)
            if not is_present(sub):
                from offrl.data.registry import get_info

                build(get_info(sub), num_transitions=num_transitions, progress=progress)
            eps = _minari_episodes(sub)
            if level == "medium" and eps and not eps[-1]["terminations"][-1] and len(eps[-1]["actions"]) < MAX_EPISODE_STEPS:
                eps = eps[:-1]  # cut at its last episode end
            parts.extend(eps)
        episodes = parts
        extra.update(components=[dataset_id(env, "medium"), dataset_id(env, "expert")])
    stats = episode_stats(episodes)
    # build_seconds: producing the episodes (the Minari write that follows is not included)
    extra.update(stats=stats, build_seconds=round(time.time() - t0, 1), **_policy_metadata(env))
    ref_min, ref_max = reference_scores(env_id)
    box = gym.spaces.Box(-1.0, 1.0, (DIMS[env][1],), np.float32)
    obs_box = gym.spaces.Box(-np.inf, np.inf, (DIMS[env][0],), np.float64)
    return write_minari_dataset(
        info.id, episodes, env_id, action_space=box, observation_space=obs_box, ref_min_score=ref_min,
        ref_max_score=ref_max, algorithm_name=f"offrl-sac-{kind}", force=force, description=info.description,
        metadata={"offrl": json.dumps(_jsonable(extra))}, progress=progress,
    )


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


_DESCRIPTIONS = {
    "random": "randomly initialised SAC policy, 1M steps",
    "medium": "SAC snapshot at ~1/3 of the expert's return, 1M steps",
    "medium-replay": "SAC replay buffer up to the medium snapshot (reruns SAC)",
    "expert": "best SAC snapshot, 1M steps",
    "medium-expert": "medium (cut at its last episode end) + expert, ~2M steps",
}

for _env, _env_id in ENVS.items():
    for _kind in KINDS:
        from offrl.envs import reference_scores as _refs

        _lo, _hi = _refs(_env_id)
        register(DatasetInfo(
            id=dataset_id(_env, _kind), source="offrl", env_id=_env_id, ref_min_score=_lo, ref_max_score=_hi,
            obs_dim=DIMS[_env][0], act_dim=DIMS[_env][1],
            description=f"{_env_id}, D4RL protocol: {_DESCRIPTIONS[_kind]}", builder=build,
        ))
