"""The shared offline training loop: data → buffer → updates → evaluation → logs → checkpoints.

Algorithm files subclass :class:`OfflineConfig` for their hyperparameters and call
:func:`run_offline` with their agent class and dataset preprocessing; everything else (seeding,
devices, resume, logging, evaluation, checkpoints, bad-input checks) happens here once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from offrl.agent import Agent, config_to_dict
from offrl.config import RunConfig, open_resume
from offrl.errors import OffrlError, check, json_safe
from offrl.logger import Logger, MetricAccumulator
from offrl.utils import StopSignals, resolve_device, rng_state, set_rng_state, set_seed

DEFAULT_DATASET = "offrl/hopper/medium-v0"  # built on first use from the shipped medium SAC policy


@dataclass
class OfflineConfig(RunConfig):
    """Fields every offline algorithm shares."""

    dataset: str = DEFAULT_DATASET
    """Dataset id: a D4RL name (hopper-medium-v2), a Minari id (mujoco/hopper/medium-v0) or an offrl id (offrl/...). See `offrl datasets list`."""
    steps: int = 1_000_000
    """Number of gradient steps."""

    def validate(self) -> None:
        super().validate()
        check(self.steps > 0, f"--steps must be positive, got {self.steps}")


def default_run_dir(algo: str, cfg) -> str:
    name = cfg.dataset.replace("/", "_")
    return os.path.join("runs", algo, name, f"seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_dims(dataset, env_id: str | None) -> str | None:
    """The evaluation env for ``dataset``: ``env_id`` if it exists here and its observation/action
    sizes match the dataset's (else OffrlError); None when there is none or it is not installed."""
    if env_id is None:
        return None
    import gymnasium as gym

    from offrl.envs import env_dims

    if env_id not in gym.registry:
        return None
    obs_dim, act_dim = env_dims(env_id)
    if (obs_dim, act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OffrlError(
            f"{dataset.id}: observations/actions have {dataset.obs_dim}/{dataset.act_dim} dims but "
            f"{env_id} has {obs_dim}/{act_dim}"
        )
    return env_id


@dataclass
class Prepared:
    """What an algorithm's preprocessing hands the loop."""

    rewards: np.ndarray | None = None
    actions: np.ndarray | None = None
    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    dataset: object | None = None
    """A replacement training dataset (e.g. expert + union rows for offline imitation); the other
    fields then refer to its rows. Evaluation still uses the env of ``--dataset``."""


def run_offline(
    cfg: OfflineConfig,
    agent_cls: type[Agent],
    prepare: Callable[[OfflineConfig, object], Prepared] | None = None,
) -> dict:
    """Train ``agent_cls`` offline on ``cfg.dataset``; returns a summary dict.

    ``prepare(cfg, dataset)`` returns transformed rewards and observation statistics.
    Writes ``config.json``, ``metrics.jsonl``, TensorBoard events and ``checkpoint.pt`` to the
    run directory. With ``cfg.resume`` it continues a run exactly where its checkpoint left off.
    """
    from offrl.data import load_dataset
    from offrl.evaluation import evaluate

    ckpt, cfg = open_resume(cfg, agent_cls.algo)
    run_dir = cfg.run_dir
    cfg.validate()

    # ---------------------------------------------------------------- data (before any output)
    dataset = load_dataset(cfg.dataset)
    cfg.resolve(dataset)
    cfg.validate()
    env_id = check_dims(dataset, dataset.env_id)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    prep = prepare(cfg, dataset) if prepare else Prepared()
    if prep.dataset is not None:
        dataset = prep.dataset
    from offrl.buffer import ReplayBuffer

    buffer = ReplayBuffer.from_dataset(dataset, device, seed=cfg.seed, rewards=prep.rewards, actions=prep.actions,
                                       obs_mean=prep.obs_mean, obs_std=prep.obs_std)
    agent = agent_cls(cfg, dataset.obs_dim, dataset.act_dim, prep.obs_mean, prep.obs_std, device=device)
    acc = MetricAccumulator()
    start = 0
    best = None
    if ckpt is not None:
        agent.load_training_state(ckpt)
        train_state = ckpt["train"]
        start = int(train_state["step"])
        buffer.load_state_dict(train_state["buffer"])
        acc.load_state_dict(train_state["metrics"], device)
        set_rng_state(train_state["rng"])
        best = train_state.get("best")
        if start >= cfg.steps:
            raise OffrlError(f"{cfg.resume} is already at step {start} >= --steps {cfg.steps}")
    agent.setup_data(buffer)
    update = agent.compiled_update() if cfg.compile else agent.update

    # ---------------------------------------------------------------- outputs
    run_dir = run_dir or default_run_dir(agent_cls.algo, cfg)
    os.makedirs(run_dir, exist_ok=True)
    meta = {"algo": agent_cls.algo, "config": config_to_dict(cfg), "dataset": dataset.summary(),
            "env_id": env_id, "device": str(device), "torch": torch.__version__}
    with open(os.path.join(run_dir, "config.json.tmp"), "w") as f:
        json.dump(json_safe(meta), f, indent=2)
    os.replace(os.path.join(run_dir, "config.json.tmp"), os.path.join(run_dir, "config.json"))
    logger = Logger(run_dir, cfg.steps, start, cfg.progress, desc=f"{agent_cls.algo} {cfg.dataset}")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    ref_min = dataset.metadata.get("ref_min_score")
    ref_max = dataset.metadata.get("ref_max_score")
    if env_id is None:
        why = "is not installed" if dataset.env_id else "is not known"
        logger.write(f"note: the evaluation env of {dataset.id} ({dataset.env_id}) {why}; training without evaluation")

    def do_eval(step: int) -> dict:
        nonlocal best
        t = time.time()
        res = evaluate(agent.act, env_id, cfg.eval_episodes, seed=cfg.seed + 10_000,
                       ref_min_score=ref_min, ref_max_score=ref_max)
        scalars = {k: v for k, v in res.items() if not isinstance(v, list)}
        scalars["seconds"] = time.time() - t
        logger.log(step, scalars, prefix="eval/")
        key = scalars["normalized_score"] if np.isfinite(scalars["normalized_score"]) else scalars["return_mean"]
        if best is None or key > best:
            best = key
        return res

    def save(step: int) -> None:
        train_state = {"step": step, "buffer": buffer.state_dict(include_data=False), "metrics": acc.state_dict(),
                       "rng": rng_state(), "best": best}
        agent.save(ckpt_path, train=train_state, dataset=dataset.id,
                   env={"env_id": env_id, "ref_min_score": ref_min, "ref_max_score": ref_max})

    last_eval: dict = {}
    t_start = time.time()
    agent.train()
    try:
        with StopSignals() as stop:
            for step in range(start + 1, cfg.steps + 1):
                metrics = update(buffer.sample(cfg.batch_size))
                acc.add(metrics)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    logger.log(step, acc.pop(), prefix="train/")
                    logger.advance(step)
                if env_id is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                    last_eval = do_eval(step)
                if stop.save_now() or step % cfg.checkpoint_every == 0 or step == cfg.steps or stop.requested:
                    save(step)
                    logger.flush()
                if stop.requested and step < cfg.steps:
                    raise stop.interrupted(step, ckpt_path)
    finally:
        logger.close()
    summary = {
        "algo": agent_cls.algo,
        "dataset": dataset.id,
        "steps": cfg.steps,
        "run_dir": run_dir,
        "checkpoint": ckpt_path,
        "seconds": time.time() - t_start,
        "final_return": last_eval.get("return_mean"),
        "final_normalized_score": last_eval.get("normalized_score"),
        "best": best,
    }
    summary = json_safe(summary)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
