"""Run logging: TensorBoard events + ``metrics.jsonl`` + a console progress bar.

Without a terminal (the bar disabled) the logger writes a plain heartbeat line to stderr every
``heartbeat_seconds`` instead, so a log file or a CI page shows progress, speed and ETA.

Update metrics stay on the device: :class:`MetricAccumulator` sums them with one fused op per
step and turns them into python floats (one host sync) only when a log line is written.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import torch


class MetricAccumulator:
    """Running sums of scalar metric tensors, averaged at log time.

    The usual case — the same keys every step — is one fused add per step. A key that appears
    later (e.g. actor metrics that start with the first delayed actor update) is averaged over
    the steps that reported it.
    """

    def __init__(self):
        self.keys: list[str] | None = None
        self.sums: list[torch.Tensor] = []
        self.counts: list[int] = []

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        values = [v.detach().float() for v in metrics.values()]
        keys = list(metrics.keys())
        if self.keys is None or not self.counts:
            self.keys, self.sums, self.counts = keys, [v.clone() for v in values], [1] * len(keys)
        elif keys == self.keys:
            torch._foreach_add_(self.sums, values)
            self.counts = [c + 1 for c in self.counts]
        else:
            index = {k: i for i, k in enumerate(self.keys)}
            for k, v in zip(keys, values):
                if k in index:
                    self.sums[index[k]] += v
                    self.counts[index[k]] += 1
                else:
                    self.keys.append(k)
                    self.sums.append(v.clone())
                    self.counts.append(1)

    def pop(self) -> dict[str, float]:
        """Means since the last pop (one device→host transfer), then reset."""
        if not self.counts or self.keys is None:
            return {}
        counts = torch.tensor(self.counts, dtype=torch.float32, device=self.sums[0].device)
        means = (torch.stack(self.sums) / counts).tolist()
        keys = self.keys
        self.keys, self.sums, self.counts = None, [], []
        return dict(zip(keys, means))

    def state_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys or []), "sums": [s.detach().cpu().clone() for s in self.sums],
                "counts": list(self.counts)}

    def load_state_dict(self, state: dict[str, Any], device) -> None:
        self.keys = list(state["keys"]) or None
        self.sums = [s.to(device, copy=True) for s in state["sums"]]
        if "counts" in state:
            self.counts = [int(c) for c in state["counts"]]
        else:  # older checkpoints: one count for every key
            self.counts = [int(state["count"])] * len(self.sums) if state["count"] else []
            if not self.counts:
                self.keys, self.sums = None, []


def format_duration(seconds: float) -> str:
    """``2h52m``, ``4m05s``, ``7s`` (rounded down)."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Logger:
    """Writes scalars to TensorBoard and ``metrics.jsonl`` in ``run_dir`` and drives a tqdm bar.

    On resume (``start_step > 0``) lines of ``metrics.jsonl`` after ``start_step`` are dropped and
    TensorBoard events after it are purged, so a resumed run's logs equal an uninterrupted run's.

    When the bar is disabled (no TTY, or ``progress=False``), the first :meth:`advance` at least
    ``heartbeat_seconds`` after the previous record (or the start) writes one line to stderr::

        [desc] step 12000/1000000 (1.2%) | phase offline | 95.3 steps/s | ETA 2h52m | score 45.2

    steps/s over the interval since the previous record, the ETA at that rate, ``phase`` only when
    set, then the last normalized score, else the last eval return (``return``), else nothing.
    ``heartbeat_seconds=0`` turns it off. Set ``phase`` (e.g. "offline", "online") to also tag every
    ``metrics.jsonl`` row with it.
    """

    def __init__(self, run_dir: str, total_steps: int, start_step: int = 0, progress: bool | None = None,
                 desc: str = "train", tensorboard: bool = True, heartbeat_seconds: float = 30.0, sinks=()):
        self.run_dir = run_dir
        self.sinks = list(sinks)  # more receivers of every row (e.g. offrl.tracking.WandbSink)
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl_path = os.path.join(run_dir, "metrics.jsonl")
        if start_step > 0 and os.path.exists(self.jsonl_path):
            self._truncate_jsonl(start_step)
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(run_dir, purge_step=start_step + 1 if start_step > 0 else None)
        from tqdm.auto import tqdm

        disable = (not progress) if progress is not None else (None if sys.stderr.isatty() else True)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
                        disable=disable, smoothing=0.05)
        self.step = start_step
        self.t0 = time.time()
        self.last_score: float | None = None
        self.last_return: float | None = None
        self.phase: str | None = None
        self.phase_end: int | None = None  # the step the current phase ends at, in runs of several phases
        self.desc, self.total_steps, self.heartbeat_seconds = desc, total_steps, heartbeat_seconds
        self._beat_time, self._beat_step = time.monotonic(), start_step

    def _truncate_jsonl(self, start_step: int) -> None:
        keep = []
        with open(self.jsonl_path) as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= start_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a killed run
        tmp = self.jsonl_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.jsonl_path)

    def advance(self, step: int) -> None:
        """Move the progress bar to ``step`` (without a bar: a heartbeat line when one is due)."""
        if step > self.step:
            self.bar.update(step - self.step)
            self.step = step
        if self.bar.disable and self.heartbeat_seconds > 0:
            now = time.monotonic()
            if now - self._beat_time >= self.heartbeat_seconds:
                self.bar.write(self._heartbeat(now), file=sys.stderr)
                self._beat_time, self._beat_step = now, self.step

    def tick(self, detail: str) -> None:
        """Progress inside one long global step (e.g. a dynamics-model epoch over a million rows):
        with a bar, ``detail`` becomes its postfix; without one, a heartbeat line ending in ``detail``
        when one is due, so a log never goes quiet for longer than ``heartbeat_seconds``."""
        if not self.bar.disable:
            self.bar.set_postfix_str(detail)
            return
        if self.heartbeat_seconds > 0:
            now = time.monotonic()
            if now - self._beat_time >= self.heartbeat_seconds:
                parts = [self._position()] + ([f"phase {self.phase}"] if self.phase is not None else []) + [detail]
                self.bar.write(" | ".join(parts), file=sys.stderr)
                self._beat_time, self._beat_step = now, self.step

    def _position(self) -> str:
        """``[desc] step 12000/1000000 (1.2%)``: the head of every heartbeat line."""
        return (f"[{self.desc}] step {self.step}/{self.total_steps}"
                + (f" ({100.0 * self.step / self.total_steps:.1f}%)" if self.total_steps > 0 else ""))

    def _heartbeat(self, now: float) -> str:
        rate = (self.step - self._beat_step) / (now - self._beat_time)
        parts = [self._position()]
        if self.phase is not None:
            if self.phase_end is not None and rate > 0:  # the overall ETA assumes this phase's rate for all of them
                parts.append(f"phase {self.phase} (ends in {format_duration(max(self.phase_end - self.step, 0) / rate)})")
            else:
                parts.append(f"phase {self.phase}")
        parts.append(f"{rate:.1f} steps/s")
        left = max(self.total_steps - self.step, 0)
        parts.append(f"ETA {format_duration(left / rate)}" if rate > 0 else "ETA ?")
        if self.last_score is not None:
            parts.append(f"score {self.last_score:.1f}")
        elif self.last_return is not None:
            parts.append(f"return {self.last_return:.1f}")
        return " | ".join(parts)

    def start_line(self, text: str) -> None:
        """One line to stderr, TTY or not (e.g. what is trained on which data and device, and where)."""
        self.bar.write(text, file=sys.stderr)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        """Write ``{prefix}{key}: value`` scalars at ``step`` (NaN/inf written as null in JSON)."""
        if not metrics:
            return
        row: dict[str, Any] = {"step": step}
        if self.phase is not None:
            row["phase"] = self.phase
        for k, v in metrics.items():
            key = f"{prefix}{k}"
            v = float(v)
            row[key] = v if math.isfinite(v) else None
            if self.tb is not None:
                self.tb.add_scalar(key, v, step)
        self._jsonl.write(json.dumps(row) + "\n")
        for sink in self.sinks:
            sink.log(step, {k: v for k, v in row.items() if k != "step"})
        if "normalized_score" in metrics and math.isfinite(metrics["normalized_score"]):
            self.last_score = float(metrics["normalized_score"])
            self.bar.set_postfix(score=f"{self.last_score:.1f}", refresh=False)
        elif "return_mean" in metrics and self.last_score is None:
            self.bar.set_postfix(ret=f"{metrics['return_mean']:.1f}", refresh=False)
        if "return_mean" in metrics and math.isfinite(metrics["return_mean"]):
            self.last_return = float(metrics["return_mean"])

    def write(self, message: str) -> None:
        self.bar.write(message)

    def flush(self) -> None:
        self._jsonl.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.bar.close()
        self._jsonl.close()
        if self.tb is not None:
            self.tb.close()
        for sink in self.sinks:
            sink.close()
