"""Building online runs on the run lifecycle (:mod:`offrl.run`): off-policy (:func:`run_online`: a
collector over a vector env (``--env-backend``) appends to the shared replay buffer, the agent updates) and
on-policy (:func:`run_on_policy`: the collector fills rollout storage, the agent learns from each
full rollout); evaluation, logging and checkpoints as offline.

Truncation (time limit) is not termination (:mod:`offrl.collector`). A checkpoint holds the
replay buffer, every sub-env's exact MuJoCo integration state, time-limit counter and RNG, and the
collector's episode accumulators, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from offrl.agent import Agent, config_to_dict, restoring_frozen
from offrl.config import RunConfig
from offrl.errors import check


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
        check(not self.record or self.env_backend != "batched",
              "--record needs the gymnasium env backend (it probes each copy): drop --env-backend batched")


def run_online(cfg: OnlineConfig, agent_cls: type[Agent]) -> dict:
    """Train ``agent_cls`` online in ``cfg.env``; returns the summary (:mod:`offrl.run`).

    The agent's ``explore(obs)`` gives the behaviour (with ``--record``: ``explore(obs,
    with_log_prob=True)``) besides ``update`` and ``act``.
    """
    from offrl.buffer import ReplayBuffer
    from offrl.collector import Collector, ReplaySink
    from offrl.envs import env_dims
    from offrl.run import OnlinePhase
    from offrl.train import setup_torch, start_run

    ckpt, cfg, run_dir = start_run(cfg, agent_cls.algo, cfg.env)
    obs_dim, act_dim = env_dims(cfg.env)
    device = setup_torch(cfg)
    buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size, device, seed=cfg.seed)
    with restoring_frozen(ckpt):
        agent = agent_cls(cfg, obs_dim, act_dim, device=device)
    recorder = None
    sinks = [ReplaySink(buffer)]
    wrap = None
    if cfg.record:
        from offrl.data.recorder import PhysicsProbe, Recorder
        from offrl.envs import make_env

        env = make_env(cfg.env)
        recorder = Recorder(cfg.total_steps, env.unwrapped.model.nq, env.unwrapped.model.nv)
        env.close()
        sinks.append(recorder)
        wrap = PhysicsProbe
    backend = getattr(cfg, "env_backend", "auto")  # auto with --record: gymnasium (the probe wraps each copy)
    phase = OnlinePhase(cfg.total_steps, buffer,
                        lambda: Collector(cfg.env, cfg.num_envs, cfg.seed, sinks, wrap=wrap, backend=backend),
                        cfg.batch_size, cfg.learning_starts, cfg.updates_per_step, with_log_prob=cfg.record)
    parts = {"buffer": buffer, **({"record": recorder} if recorder is not None else {})}
    run = env_run(cfg, agent, phase, run_dir, ckpt, device, parts)
    info = {"env": cfg.env, "seed": cfg.seed}
    if cfg.snapshots:  # behaviour-policy selection: the policy of every evaluation, with its result
        run.evaluator.callbacks.append(lambda agent_, step, scalars: agent_.save_policy(
            os.path.join(run_dir, "snapshots", f"step{step:08d}.pt"), {**info, "step": step, **scalars}))
        if run.step == 0:  # the initial (random) policy
            agent.save_policy(os.path.join(run_dir, "snapshots", "step00000000.pt"), {**info, "step": 0})
    return run.execute()


def env_run(cfg, agent, phase, run_dir: str, ckpt, device, parts: dict | None = None):
    """The :class:`~offrl.run.Run` of an environment-only run (no dataset) in ``cfg.env``."""
    from offrl.envs import reference_scores
    from offrl.run import Run
    from offrl.train import make_evaluator

    ref_min, ref_max = reference_scores(cfg.env)
    meta = {"algo": agent.algo, "config": config_to_dict(cfg), "dataset": None, "env_id": cfg.env,
            "device": str(device), "torch": torch.__version__}
    return Run(cfg, agent, [phase], make_evaluator(cfg, cfg.env, ref_min, ref_max), run_dir, meta, parts=parts,
               ckpt=ckpt, desc=f"{agent.algo} {cfg.env}",
               checkpoint_extra={"env": {"env_id": cfg.env, "ref_min_score": ref_min, "ref_max_score": ref_max}},
               summary_extra={"algo": agent.algo, "dataset": None, "env": cfg.env})


def run_on_policy(cfg, agent_cls: type[Agent]) -> dict:
    """Train an on-policy agent in ``cfg.env``; returns the summary (:mod:`offrl.run`).

    One :class:`~offrl.run.OnPolicyPhase` of ``cfg.total_steps`` env steps: a collector of
    ``cfg.num_envs`` copies (same-step autoreset) fills ``RolloutStorage(T, cfg.num_envs)`` on the
    training device through the agent's ``rollout_sink``, T the config field the agent class names
    in ``rollout_field`` (``num_steps``; PROPS learns every ``props_steps``); the agent learns from
    each full storage. The checkpoint holds the partly filled storage and the collector, so a
    resumed run continues exactly, even in the middle of a rollout.
    """
    from offrl.collector import Collector
    from offrl.envs import env_dims
    from offrl.rollout import RolloutStorage
    from offrl.run import OnPolicyPhase
    from offrl.train import setup_torch, start_run

    ckpt, cfg, run_dir = start_run(cfg, agent_cls.algo, cfg.env)
    cfg.resolve(None)
    cfg.validate()
    obs_dim, act_dim = env_dims(cfg.env)
    device = setup_torch(cfg)
    with restoring_frozen(ckpt):
        agent = agent_cls(cfg, obs_dim, act_dim, device=device)
    storage = RolloutStorage(getattr(cfg, getattr(agent_cls, "rollout_field", "num_steps")), cfg.num_envs,
                             obs_dim, act_dim, device)
    backend = getattr(cfg, "env_backend", "auto")
    phase = OnPolicyPhase(cfg.total_steps, storage, lambda: Collector(cfg.env, cfg.num_envs, cfg.seed, backend=backend))
    return env_run(cfg, agent, phase, run_dir, ckpt, device).execute()
