"""Building online (off-policy) runs on the run lifecycle: a collector over a Gymnasium vector env
appends to the shared replay buffer; the agent updates; evaluation, logging and checkpoints as
offline (:mod:`offrl.run`).

Truncation (time limit) is not termination (:mod:`offrl.collector`). A checkpoint holds the
replay buffer, every sub-env's exact MuJoCo integration state, time-limit counter and RNG, and the
collector's episode accumulators, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from offrl.agent import Agent, config_to_dict
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


def run_online(cfg: OnlineConfig, agent_cls: type[Agent]) -> dict:
    """Train ``agent_cls`` online in ``cfg.env``; returns the summary (:mod:`offrl.run`).

    The agent's ``explore(obs)`` gives the behaviour (with ``--record``: ``explore(obs,
    with_log_prob=True)``) besides ``update`` and ``act``.
    """
    from offrl.buffer import ReplayBuffer
    from offrl.collector import Collector, ReplaySink
    from offrl.envs import env_dims, reference_scores
    from offrl.run import OnlinePhase, Run
    from offrl.train import make_evaluator, setup_torch, start_run

    ckpt, cfg, run_dir = start_run(cfg, agent_cls.algo, cfg.env)
    obs_dim, act_dim = env_dims(cfg.env)
    device = setup_torch(cfg)
    buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size, device, seed=cfg.seed)
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
    phase = OnlinePhase(cfg.total_steps, buffer, lambda: Collector(cfg.env, cfg.num_envs, cfg.seed, sinks, wrap=wrap),
                        cfg.batch_size, cfg.learning_starts, cfg.updates_per_step, with_log_prob=cfg.record)
    ref_min, ref_max = reference_scores(cfg.env)
    evaluator = make_evaluator(cfg, cfg.env, ref_min, ref_max)
    info = {"env": cfg.env, "seed": cfg.seed}
    if cfg.snapshots:  # behaviour-policy selection: the policy of every evaluation, with its result
        evaluator.callbacks.append(lambda agent_, step, scalars: agent_.save_policy(
            os.path.join(run_dir, "snapshots", f"step{step:08d}.pt"), {**info, "step": step, **scalars}))
    meta = {"algo": agent_cls.algo, "config": config_to_dict(cfg), "dataset": None, "env_id": cfg.env,
            "device": str(device), "torch": torch.__version__}
    parts = {"buffer": buffer, **({"record": recorder} if recorder is not None else {})}
    run = Run(cfg, agent, [phase], evaluator, run_dir, meta, parts=parts, ckpt=ckpt,
              desc=f"{agent_cls.algo} {cfg.env}",
              checkpoint_extra={"env": {"env_id": cfg.env, "ref_min_score": ref_min, "ref_max_score": ref_max}},
              summary_extra={"algo": agent_cls.algo, "dataset": None, "env": cfg.env})
    if cfg.snapshots and run.step == 0:  # the initial (random) policy
        agent.save_policy(os.path.join(run_dir, "snapshots", "step00000000.pt"), {**info, "step": 0})
    return run.execute()
