"""Optional Weights & Biases tracking (``--track``; ``pip install offrl[wandb]``).

A tracked run logs the same scalars as ``metrics.jsonl`` and TensorBoard, against offrl's global
step (the W&B metric ``global_step``, so a resumed run may log a step again, as the JSON file
does), plus the config and the run directory. The W&B run id is kept in ``run_dir/wandb_id``: a
resumed run continues the same W&B run. ``WANDB_MODE=offline`` works without a network (the run
is written under ``run_dir/wandb/`` for a later ``wandb sync``).
"""

from __future__ import annotations

import os
import secrets

from offrl.errors import OffrlError


class WandbSink:
    """Receives every logged row (``log(step, {key: value})``) and forwards it to a W&B run."""

    def __init__(self, run):
        self.run = run

    def log(self, step: int, row: dict[str, float | None]) -> None:
        values = {k: v for k, v in row.items() if isinstance(v, (int, float))}  # the phase name stays in the JSON
        self.run.log({**values, "global_step": step})

    def close(self) -> None:
        self.run.finish()


def check_wandb() -> None:
    """One-line error (before any output) when ``--track`` is asked for without wandb installed."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise OffrlError("--track needs Weights & Biases: pip install 'offrl[wandb]' (or pip install wandb)")


def start_wandb(cfg, run_dir: str, meta: dict) -> WandbSink | None:
    """A :class:`WandbSink` when ``cfg.track`` (else None); a one-line error without wandb."""
    if not getattr(cfg, "track", False):
        return None
    check_wandb()
    import wandb
    id_path = os.path.join(run_dir, "wandb_id")
    if os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip()
    else:
        run_id = secrets.token_hex(6)  # a W&B run id: lowercase alphanumeric
        os.makedirs(run_dir, exist_ok=True)
        with open(id_path, "w") as f:
            f.write(run_id + "\n")
    data = meta.get("dataset")
    name = f"{meta.get('algo')}/{data['id'] if isinstance(data, dict) else meta.get('env_id')}/seed{getattr(cfg, 'seed', 0)}"
    run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, group=cfg.wandb_group, name=name,
                     id=run_id, resume="allow", dir=run_dir, config={**meta, "run_dir": os.path.abspath(run_dir)},
                     settings=wandb.Settings(console="off"))
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    return WandbSink(run)
