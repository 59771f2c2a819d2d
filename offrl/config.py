"""Run configuration shared by every algorithm (offline and online) and resuming from checkpoints."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

from offrl.agent import config_from_dict, load_checkpoint
from offrl.errors import OffrlError, check


@dataclass
class RunConfig:
    """Fields every training run shares (seeding, devices, evaluation, logging, checkpoints)."""

    seed: int = 0
    """Random seed (torch, numpy, python, buffer sampling; evaluation episodes use seed+10000+i)."""
    device: str = "auto"
    """Torch device: auto (cuda when available), cpu, cuda, cuda:N."""
    batch_size: int = 256
    """Transitions per gradient step."""
    eval_every: int = 5000
    """Evaluate every this many steps (and once at the end); 0 disables periodic evaluation."""
    eval_episodes: int = 10
    """Episodes per evaluation, run in a vector env with fixed seeds."""
    log_every: int = 1000
    """Write averaged metrics every this many steps."""
    checkpoint_every: int = 50_000
    """Write run_dir/checkpoint.pt every this many steps (and at the end)."""
    run_dir: str | None = None
    """Output directory (default runs/<algo>/<dataset or env>/seed<seed>-<time>)."""
    resume: str | None = None
    """Continue from this checkpoint; the run resumes in the checkpoint's directory with its config (flags changed on the command line override)."""
    compile: bool = False
    """torch.compile the update step."""
    cuda_graph: bool = False
    """Capture the whole update step as a CUDA graph and replay it (CUDA only; IQL, TD3+BC, A2PR, BC: offrl/graphs.py)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    env_backend: Literal["auto", "gymnasium", "batched"] = "auto"
    """How training collectors step the env copies: batched (offrl's batched MuJoCo stepper; Hopper-v5, Walker2d-v5, HalfCheetah-v5), gymnasium (a Gymnasium SyncVectorEnv), auto (batched where it applies). Same transitions either way; only the speed differs."""
    progress: bool | None = None
    """Show a progress bar (default: when stderr is a terminal)."""
    heartbeat_seconds: float = 30.0
    """Without a progress bar (nohup, cluster jobs): one line to stderr (step, phase, steps/s, ETA, last score) every this many seconds; 0 turns it off."""
    track: bool = False
    """Also log to Weights & Biases (pip install 'offrl[wandb]'; WANDB_MODE=offline works without a network)."""
    wandb_project: str = "offrl"
    """W&B project (with --track)."""
    wandb_group: str | None = None
    """W&B group, e.g. a sweep's name (with --track)."""
    wandb_entity: str | None = None
    """W&B entity (team or user; default: yours) (with --track)."""

    def validate(self) -> None:
        """Raise OffrlError for invalid values (extended by algorithm configs)."""
        for name in ("batch_size", "eval_episodes", "log_every", "checkpoint_every"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every}")
        check(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        check(self.env_backend in ("auto", "gymnasium", "batched"),
              f"--env-backend must be auto, gymnasium or batched, got '{self.env_backend}'")
        check(self.heartbeat_seconds >= 0, f"--heartbeat-seconds must be >= 0, got {self.heartbeat_seconds}")
        check(not (self.compile and self.cuda_graph), "--compile and --cuda-graph are alternatives: choose one")
        if self.track:
            from offrl.tracking import check_wandb

            check_wandb()

    def resolve(self, dataset) -> None:
        """Fill dataset-dependent defaults (presets) in place; algorithm configs override."""


def merge_resume_config(cli_cfg, ckpt_cfg: dict):
    """Config of a resumed run: the checkpoint's, overridden by fields changed on the command line."""
    cls = type(cli_cfg)
    base = config_from_dict(cls, ckpt_cfg)
    defaults = cls()
    changes = {f.name: getattr(cli_cfg, f.name) for f in dataclasses.fields(cls)
               if getattr(cli_cfg, f.name) != getattr(defaults, f.name)}
    return dataclasses.replace(base, **changes)


def open_resume(cfg: RunConfig, algo: str):
    """For ``cfg.resume``: ``(checkpoint, merged config)``; the run continues in the checkpoint's
    directory unless ``--run-dir`` is given now. ``(None, cfg)`` when not resuming."""
    if not cfg.resume:
        return None, cfg
    ckpt = load_checkpoint(cfg.resume)
    if ckpt.get("algo") != algo:
        raise OffrlError(f"{cfg.resume} is a checkpoint of algorithm '{ckpt.get('algo')}', not '{algo}'")
    if "train" not in ckpt:
        raise OffrlError(f"{cfg.resume} holds weights only (no training state) and cannot be resumed")
    run_dir = cfg.run_dir or os.path.dirname(os.path.abspath(cfg.resume))
    return ckpt, dataclasses.replace(merge_resume_config(cfg, ckpt["config"]), run_dir=run_dir)
