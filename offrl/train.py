"""Building offline runs (and their optional online continuation) on the run lifecycle.

Algorithm files subclass :class:`OfflineConfig` for their hyperparameters and call
:func:`run_offline` with their agent class and dataset preprocessing; everything else (seeding,
devices, resume, logging, evaluation, checkpoints, bad-input checks) happens in
:mod:`offrl.run` once. With ``--online-steps N`` (agents whose method defines an online
continuation) the offline phase is followed by an online phase in the dataset's environment, the
dataset kept in the replay buffer (uniform over dataset + online rows) and online rows put into
the same coordinates (observation normalization, reward transform) as the dataset's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from offrl.agent import Agent, config_to_dict, restoring_frozen
from offrl.config import RunConfig, open_resume
from offrl.errors import OffrlError, check, check_output_dir

DEFAULT_DATASET = "offrl/hopper/medium-v0"  # built on first use from the shipped medium SAC policy


@dataclass
class OfflineConfig(RunConfig):
    """Fields every offline algorithm shares."""

    dataset: str = DEFAULT_DATASET
    """Dataset id: a D4RL name (hopper-medium-v2), a Minari id (mujoco/hopper/medium-v0) or an offrl id (offrl/...). See `offrl datasets list`."""
    steps: int = 1_000_000
    """Number of gradient steps."""
    online_steps: int = 0
    """Offline-to-online: environment steps of an online phase after the offline one, in the dataset's env, the dataset kept in the replay buffer (agents with an online continuation)."""
    online_updates_per_step: float = 1.0
    """Offline-to-online: gradient steps per env step in the online phase."""
    online_learning_starts: int = 0
    """Offline-to-online: uniform-random actions for this many env steps before the agent acts online (CORL: 0)."""
    seeds: tuple[int, ...] = ()
    """Stacked seeds: train these seeds in one process, every network stacked over them (IQL, TD3+BC, PRDC, A2PR; one run directory per seed under --run-dir; pays on a GPU). Empty: the single --seed."""

    def validate(self) -> None:
        super().validate()
        check(self.steps > 0, f"--steps must be positive, got {self.steps}")
        check(self.online_steps >= 0, f"--online-steps must be >= 0, got {self.online_steps}")
        check(self.online_updates_per_step > 0, f"--online-updates-per-step must be positive, got {self.online_updates_per_step}")
        check(self.online_learning_starts >= 0, f"--online-learning-starts must be >= 0, got {self.online_learning_starts}")


def default_run_dir(algo: str, name: str, seed: int) -> str:
    return os.path.join("runs", algo, name.replace("/", "_"), f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}")


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

    reward_fn: Callable[[np.ndarray], np.ndarray] | None = None
    """The reward transform (:func:`offrl.preprocess.reward_transform`), applied to dataset and online rewards."""
    rewards: np.ndarray | None = None
    """Replacement rewards of the dataset rows, already final (e.g. imitation labels)."""
    actions: np.ndarray | None = None
    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    dataset: object | None = None
    """A replacement training dataset (e.g. expert + union rows for offline imitation); the other
    fields then refer to its rows. Evaluation still uses the env of ``--dataset``."""
    extras: dict[str, np.ndarray] | None = None
    """Extra buffer columns, name → per-row array (``batch.<name>`` in updates; e.g. BC's row index)."""


def start_run(cfg: RunConfig, algo: str, name: str):
    """Common start of every run: resume merge, validation, output-dir check (before any work).
    Returns ``(checkpoint or None, cfg, run_dir)``."""
    ckpt, cfg = open_resume(cfg, algo)
    cfg.validate()
    run_dir = cfg.run_dir or default_run_dir(algo, name, cfg.seed)
    check_output_dir(run_dir)
    return ckpt, cfg, run_dir


def setup_torch(cfg: RunConfig) -> torch.device:
    from offrl.utils import resolve_device, set_seed

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    return device


def make_evaluator(cfg: RunConfig, env_id: str | None, ref_min, ref_max, note: str | None = None):
    from offrl.evaluation import EVAL_SEED_OFFSET, Evaluator

    ev = Evaluator(env_id, cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET, cfg.eval_every, ref_min, ref_max)
    ev.note = note
    return ev


def run_offline(
    cfg: OfflineConfig,
    agent_cls: type[Agent],
    prepare: Callable[[OfflineConfig, object], Prepared] | None = None,
) -> dict:
    """Train ``agent_cls`` offline on ``cfg.dataset`` (then online with ``--online-steps``); returns
    the summary (:mod:`offrl.run`).

    ``prepare(cfg, dataset)`` returns the reward transform, replaced rows and observation statistics.
    Writes ``config.json``, ``metrics.jsonl``, TensorBoard events, ``checkpoint.pt`` and
    ``summary.json`` to the run directory. With ``cfg.resume`` it continues a run exactly.
    """
    from offrl.buffer import DataTransform, ReplayBuffer
    from offrl.collector import Collector, ReplaySink
    from offrl.data import load_dataset
    from offrl.run import OfflinePhase, OnlinePhase

    if cfg.seeds:
        from offrl.stacked import run_stacked

        return run_stacked(cfg, agent_cls, prepare)
    ckpt, cfg, run_dir = start_run(cfg, agent_cls.algo, cfg.dataset)
    if cfg.online_steps and not agent_cls.online_continuation:
        raise OffrlError(f"{agent_cls.algo} has no online continuation; --online-steps is not available")

    # ---------------------------------------------------------------- data (before any output)
    dataset = load_dataset(cfg.dataset)
    cfg.resolve(dataset)
    cfg.validate()
    env_id = check_dims(dataset, dataset.env_id)
    if cfg.online_steps and env_id is None:
        raise OffrlError(f"--online-steps needs the environment of {dataset.id} ({dataset.env_id}), which is not available")
    device = setup_torch(cfg)
    prep = prepare(cfg, dataset) if prepare else Prepared()
    if prep.dataset is not None:
        dataset = prep.dataset
    transform = DataTransform(prep.obs_mean, prep.obs_std, prep.reward_fn)
    buffer = ReplayBuffer.from_dataset(dataset, device, seed=cfg.seed, capacity=len(dataset) + cfg.online_steps,
                                       transform=transform, rewards=prep.rewards, actions=prep.actions,
                                       extras=prep.extras)
    with restoring_frozen(ckpt):
        agent = agent_cls(cfg, dataset.obs_dim, dataset.act_dim, prep.obs_mean, prep.obs_std, device=device)

    phases = [OfflinePhase(cfg.steps, buffer, cfg.batch_size)]
    if cfg.online_steps:
        phases.append(OnlinePhase(cfg.online_steps, buffer, lambda: Collector(env_id, 1, cfg.seed, [ReplaySink(buffer)],
                                                                     backend=cfg.env_backend),
                                  cfg.batch_size, cfg.online_learning_starts, cfg.online_updates_per_step))
    return dataset_run(cfg, agent, phases, dataset, env_id, buffer, run_dir, ckpt, device).execute()


def dataset_run(cfg: RunConfig, agent: Agent, phases: list, dataset, env_id: str | None, buffer, run_dir: str,
                ckpt, device):
    """The :class:`~offrl.run.Run` of an algorithm trained on ``dataset``: evaluation in ``env_id``
    with the dataset's reference scores (a note when there is no env), ``config.json`` metadata,
    the buffer as a checkpointed part, and the dataset's keys in checkpoints and the summary."""
    from offrl.run import Run

    ref_min = dataset.metadata.get("ref_min_score")
    ref_max = dataset.metadata.get("ref_max_score")
    note = None
    if env_id is None:
        why = "is not installed" if dataset.env_id else "is not known"
        note = f"note: the evaluation env of {dataset.id} ({dataset.env_id}) {why}; training without evaluation"
    meta = {"algo": agent.algo, "config": config_to_dict(cfg), "dataset": dataset.summary(), "env_id": env_id,
            "device": str(device), "torch": torch.__version__}
    return Run(cfg, agent, phases, make_evaluator(cfg, env_id, ref_min, ref_max, note), run_dir, meta,
               parts={"buffer": buffer}, ckpt=ckpt, desc=f"{agent.algo} {cfg.dataset}",
               checkpoint_extra={"dataset": dataset.id,
                                 "env": {"env_id": env_id, "ref_min_score": ref_min, "ref_max_score": ref_max}},
               summary_extra={"algo": agent.algo, "dataset": dataset.id, "env": env_id})
