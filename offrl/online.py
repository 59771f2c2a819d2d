"""The shared online training loop: a collector over a Gymnasium vector env appends to the shared
replay buffer; the agent updates; evaluation, logging and checkpoints as offline.

Truncation (time limit) is not termination: the stored ``done`` is ``terminated`` only, and the
next observation of a truncated step is the true final observation (same-step autoreset).
A checkpoint holds the replay buffer, every sub-env's exact MuJoCo integration state, time-limit
counter and RNG, and the collector's episode accumulators, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from offrl.agent import Agent, config_to_dict
from offrl.config import RunConfig, open_resume
from offrl.errors import OffrlError, check, json_safe
from offrl.logger import Logger, MetricAccumulator
from offrl.utils import StopSignals, resolve_device, rng_state, set_rng_state, set_seed


@dataclass
class OnlineConfig(RunConfig):
    """Fields every online algorithm shares (step counts are environment steps)."""

    env: str = "Hopper-v5"
    """Gymnasium env id (actions are rescaled to [-1, 1])."""
    total_steps: int = 1_000_000
    """Environment steps (summed over the vector env's copies)."""
    num_envs: int = 1
    """Environment copies stepped together."""
    learning_starts: int = 5000
    """Uniform-random actions for this many env steps before the policy acts and updates begin."""
    updates_per_step: float = 1.0
    """Gradient steps per env step (after learning_starts)."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity."""
    eval_every: int = 10_000
    """Evaluate every this many env steps (and at the end); 0 disables periodic evaluation."""
    record: bool = False
    """Also keep, per env step, the D4RL fields (qpos, qvel, action log-prob, timeout) in the checkpoint, so the run's replay data can be written as a dataset (medium-replay). Needs --num-envs 1."""
    snapshots: bool = False
    """At every evaluation, write the policy (actor weights and its eval return) to run_dir/snapshots/ (behaviour-policy selection)."""

    def validate(self) -> None:
        super().validate()
        for name in ("total_steps", "num_envs", "buffer_size"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(self.learning_starts >= 0, f"--learning-starts must be >= 0, got {self.learning_starts}")
        check(self.updates_per_step > 0, f"--updates-per-step must be positive, got {self.updates_per_step}")
        check(not self.record or self.num_envs == 1, "--record needs --num-envs 1 (rows in time order)")


# ------------------------------------------------------------------------------------ env state
def _time_limit(env: gym.Env):
    while env is not None:
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def env_state(env: gym.Env) -> dict:
    """Exact state of one (MuJoCo) env: integration state, time-limit counter, RNG."""
    import mujoco

    u = env.unwrapped
    state = {"rng": json.dumps(u.np_random.bit_generator.state)}
    if hasattr(u, "model") and hasattr(u, "data"):
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mujoco.mj_stateSize(u.model, spec))
        mujoco.mj_getState(u.model, u.data, buf, spec)
        state["mujoco"] = torch.from_numpy(buf)
    tl = _time_limit(env)
    if tl is not None:
        state["elapsed"] = int(tl._elapsed_steps or 0)
    return state


def set_env_state(env: gym.Env, state: dict) -> None:
    import mujoco

    u = env.unwrapped
    if "mujoco" in state:
        mujoco.mj_setState(u.model, u.data, state["mujoco"].numpy().astype(np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(u.model, u.data)
    u.np_random.bit_generator.state = json.loads(state["rng"])
    tl = _time_limit(env)
    if tl is not None and "elapsed" in state:
        tl._elapsed_steps = state["elapsed"]


class Collector:
    """Steps a same-step-autoreset vector env with an action function and fills a buffer."""

    def __init__(self, env_id: str, num_envs: int, seed: int, probe: bool = False, **env_kwargs):
        from offrl.envs import make_env

        def make():
            env = make_env(env_id, **env_kwargs)
            return _PhysicsProbe(env) if probe else env

        self.venv = gym.vector.SyncVectorEnv([make for _ in range(num_envs)],
                                             autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.obs, _ = self.venv.reset(seed=[seed + i for i in range(num_envs)])
        self.venv.action_space.seed(seed)
        self.num_envs = num_envs
        self.ep_return = np.zeros(num_envs)
        self.ep_length = np.zeros(num_envs, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def physics(self) -> tuple[np.ndarray, np.ndarray]:
        """``qpos``, ``qvel`` of every sub-env now (the state the current ``obs`` shows)."""
        data = [e.unwrapped.data for e in self.venv.envs]
        return np.stack([d.qpos for d in data]), np.stack([d.qvel for d in data])

    def step(self, actions: np.ndarray, buffer, recorder: Recorder | None = None, logp=None) -> None:
        if recorder is not None:
            qpos, qvel = self.physics()
        next_obs, rew, term, trunc, info = self.venv.step(actions)
        done = term | trunc
        if recorder is not None:
            end_qpos = np.stack([e.qpos for e in self.venv.envs])
            end_qvel = np.stack([e.qvel for e in self.venv.envs])
            recorder.add(qpos, qvel, logp, trunc & ~term, done, end_qpos, end_qvel)
        real_next = next_obs.copy()
        if done.any():
            real_next[done] = np.stack(info["final_obs"][done])
        buffer.add(self.obs, actions, rew, real_next, term.astype(np.float32))
        self.ep_return += rew
        self.ep_length += 1
        for i in np.flatnonzero(done):
            self.finished.append((float(self.ep_return[i]), int(self.ep_length[i])))
            self.ep_return[i], self.ep_length[i] = 0.0, 0
        self.obs = next_obs

    def pop_finished(self) -> dict[str, float]:
        if not self.finished:
            return {}
        r = np.array([f[0] for f in self.finished])
        n = np.array([f[1] for f in self.finished])
        self.finished = []
        return {"episode_return": float(r.mean()), "episode_length": float(n.mean()), "episodes": float(len(r))}

    def state_dict(self) -> dict:
        return {"envs": [env_state(e) for e in self.venv.envs], "obs": torch.from_numpy(np.asarray(self.obs)),
                "ep_return": torch.from_numpy(self.ep_return), "ep_length": torch.from_numpy(self.ep_length),
                "action_space_rng": json.dumps(self.venv.action_space.np_random.bit_generator.state),
                "finished": json.dumps(self.finished)}  # episodes ended since the last log row

    def load_state_dict(self, state: dict) -> None:
        for e, s in zip(self.venv.envs, state["envs"]):
            set_env_state(e, s)
        self.obs = state["obs"].numpy().copy()
        self.ep_return = state["ep_return"].numpy().copy()
        self.ep_length = state["ep_length"].numpy().copy()
        self.venv.action_space.np_random.bit_generator.state = json.loads(state["action_space_rng"])
        self.finished = [tuple(f) for f in json.loads(state.get("finished", "[]"))]  # older checkpoints: none

    def close(self) -> None:
        self.venv.close()


class Recorder:
    """The D4RL fields the replay buffer does not hold, per env step in time order (one env): the
    MuJoCo ``qpos``/``qvel`` of the state the action was taken in, the action's log-probability
    under the behaviour, ``timeouts`` (the episode was cut by the time limit, not terminated), and
    the exact final state of every episode that ended (``end_rows``, ``end_qpos``, ``end_qvel``)."""

    KEYS = ("qpos", "qvel", "logp", "timeouts")

    def __init__(self, capacity: int, nq: int, nv: int):
        self.qpos = np.zeros((capacity, nq))
        self.qvel = np.zeros((capacity, nv))
        self.logp = np.zeros(capacity, np.float32)
        self.timeouts = np.zeros(capacity, bool)
        self.ends: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.size = 0

    def add(self, qpos, qvel, logp, timeout, done, end_qpos, end_qvel) -> None:
        i = self.size
        self.qpos[i], self.qvel[i] = qpos[0], qvel[0]
        self.logp[i], self.timeouts[i] = logp[0], timeout[0]
        if done[0]:
            self.ends.append((i, end_qpos[0].copy(), end_qvel[0].copy()))
        self.size += 1

    def state_dict(self) -> dict:
        n = self.size
        state = {k: torch.from_numpy(getattr(self, k)[:n].copy()) for k in self.KEYS}
        nq, nv = self.qpos.shape[1], self.qvel.shape[1]
        state["end_rows"] = torch.tensor([e[0] for e in self.ends], dtype=torch.int64)
        state["end_qpos"] = torch.from_numpy(np.array([e[1] for e in self.ends]).reshape(-1, nq))
        state["end_qvel"] = torch.from_numpy(np.array([e[2] for e in self.ends]).reshape(-1, nv))
        return state

    def load_state_dict(self, state: dict) -> None:
        n = len(state["logp"])
        for k in self.KEYS:
            getattr(self, k)[:n] = state[k].numpy()
        self.ends = [(int(r), q.numpy(), v.numpy()) for r, q, v in
                     zip(state["end_rows"], state["end_qpos"], state["end_qvel"])]
        self.size = n


class _PhysicsProbe(gym.Wrapper):
    """Keeps ``qpos``/``qvel`` right after each step, before a vector env's autoreset."""

    def step(self, action):
        out = self.env.step(action)
        d = self.env.unwrapped.data
        self.qpos, self.qvel = d.qpos.copy(), d.qvel.copy()
        return out


def _crossed(prev: int, step: int, every: int) -> bool:
    """Whether going from env step ``prev`` to ``step`` passed a multiple of ``every``."""
    return every > 0 and (step // every) > (prev // every)


def run_online(cfg: OnlineConfig, agent_cls: type[Agent]) -> dict:
    """Train ``agent_cls`` online in ``cfg.env``; returns a summary dict (as :func:`offrl.train.run_offline`).

    The agent must provide ``explore(obs_tensor) -> actions`` (a stochastic action on raw
    observations) besides ``update`` and ``act``.
    """
    from offrl.buffer import ReplayBuffer
    from offrl.envs import env_dims, reference_scores
    from offrl.evaluation import evaluate

    ckpt, cfg = open_resume(cfg, agent_cls.algo)
    run_dir = cfg.run_dir
    cfg.validate()
    obs_dim, act_dim = env_dims(cfg.env)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size, device, seed=cfg.seed)
    agent = agent_cls(cfg, obs_dim, act_dim, device=device)
    collector = Collector(cfg.env, cfg.num_envs, cfg.seed, probe=cfg.record)
    recorder = None
    if cfg.record:
        model = collector.venv.envs[0].unwrapped.model
        recorder = Recorder(cfg.total_steps, model.nq, model.nv)
    uniform_logp = -act_dim * float(np.log(2.0))  # density of uniform actions on [-1, 1]^|A|
    acc = MetricAccumulator()
    step, updates, best = 0, 0, None
    if ckpt is not None:
        agent.load_training_state(ckpt)
        t = ckpt["train"]
        step, updates, best = int(t["step"]), int(t["updates"]), t.get("best")
        buffer.load_state_dict(t["buffer"])
        collector.load_state_dict(t["collector"])
        if recorder is not None:
            if "record" not in t:
                raise OffrlError(f"{cfg.resume} was not trained with --record; it cannot be resumed with it")
            recorder.load_state_dict(t["record"])
        acc.load_state_dict(t["metrics"], device)
        set_rng_state(t["rng"])
        if step >= cfg.total_steps:
            raise OffrlError(f"{cfg.resume} is already at step {step} >= --total-steps {cfg.total_steps}")
    update = agent.compiled_update() if cfg.compile else agent.update

    run_dir = run_dir or os.path.join("runs", agent_cls.algo, cfg.env, f"seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(json_safe({"algo": agent_cls.algo, "config": config_to_dict(cfg), "device": str(device)}), f, indent=2)
    logger = Logger(run_dir, cfg.total_steps, step, cfg.progress, desc=f"{agent_cls.algo} {cfg.env}")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    ref_min, ref_max = reference_scores(cfg.env)
    last_eval: dict = {}
    t_start = time.time()
    clock = [t_start, step]  # time and step of the last log row, for steps/s over the interval

    def save() -> None:
        train = {"step": step, "updates": updates, "best": best, "buffer": buffer.state_dict(include_data=True),
                 "collector": collector.state_dict(), "metrics": acc.state_dict(), "rng": rng_state()}
        if recorder is not None:  # with the state now: the final state of an episode cut here
            qpos, qvel = collector.physics()
            train["record"] = {**recorder.state_dict(), "tail_qpos": torch.from_numpy(qpos[0].copy()),
                               "tail_qvel": torch.from_numpy(qvel[0].copy())}
        agent.save(ckpt_path, train=train, env={"env_id": cfg.env, "ref_min_score": ref_min, "ref_max_score": ref_max})

    agent.train()
    if cfg.snapshots and step == 0:  # the initial (random) policy
        agent.save_policy(os.path.join(run_dir, "snapshots", "step00000000.pt"), {"env": cfg.env, "step": 0, "seed": cfg.seed})
    try:
        with StopSignals() as stop:
            while step < cfg.total_steps:
                logp = None
                if step < cfg.learning_starts:
                    actions = collector.venv.action_space.sample()
                    logp = np.full(cfg.num_envs, uniform_logp, np.float32)
                elif recorder is not None:
                    actions, logp = agent.explore(collector.obs, with_log_prob=True)
                else:
                    actions = agent.explore(collector.obs)
                collector.step(actions, buffer, recorder, logp)
                prev, step = step, step + cfg.num_envs
                if step >= cfg.learning_starts:
                    target = int((step - cfg.learning_starts) * cfg.updates_per_step)
                    while updates < target:
                        acc.add(update(buffer.sample(cfg.batch_size)))
                        updates += 1

                if _crossed(prev, step, cfg.log_every) or step >= cfg.total_steps:
                    logger.log(step, acc.pop(), prefix="train/")
                    logger.log(step, collector.pop_finished(), prefix="rollout/")
                    now = time.time()
                    logger.log(step, {"updates": updates, "sps": (step - clock[1]) / max(now - clock[0], 1e-9)}, prefix="time/")
                    clock[:] = [now, step]
                    logger.advance(step)
                if _crossed(prev, step, cfg.eval_every) or step >= cfg.total_steps:
                    res = evaluate(agent.act, cfg.env, cfg.eval_episodes, seed=cfg.seed + 10_000,
                                   ref_min_score=ref_min, ref_max_score=ref_max)
                    last_eval = {k: v for k, v in res.items() if not isinstance(v, list)}
                    logger.log(step, last_eval, prefix="eval/")
                    key = last_eval["return_mean"]
                    best = key if best is None or key > best else best
                    if cfg.snapshots:
                        agent.save_policy(os.path.join(run_dir, "snapshots", f"step{step:08d}.pt"),
                                          {"env": cfg.env, "step": step, "seed": cfg.seed, **last_eval})
                if (stop.save_now() or _crossed(prev, step, cfg.checkpoint_every) or step >= cfg.total_steps
                        or stop.requested):
                    save()
                    logger.flush()
                if stop.requested and step < cfg.total_steps:
                    raise stop.interrupted(step, ckpt_path)
    finally:
        logger.close()
        collector.close()
    summary = json_safe({"algo": agent_cls.algo, "env": cfg.env, "total_steps": step, "updates": updates,
                         "run_dir": run_dir, "checkpoint": ckpt_path, "seconds": time.time() - t_start,
                         "final_return": last_eval.get("return_mean"),
                         "final_normalized_score": last_eval.get("normalized_score"), "best_return": best})
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
