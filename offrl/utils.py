"""Small shared helpers: device choice, seeding, RNG state capture for exact resume."""

from __future__ import annotations

import random
import signal
import threading

import numpy as np
import torch

from offrl.errors import OffrlError, TrainingInterrupted


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; otherwise validate the given device. A CUDA device
    is returned with its index (``cuda`` → ``cuda:0``), so device comparisons hold."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise OffrlError(f"invalid --device '{device}': expected auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OffrlError(f"--device {device} requested but CUDA is not available on this machine")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise OffrlError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", index)
    return dev


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | str | None = None) -> dict:
    """Global RNG states as tensors/primitives (loadable with ``torch.load(weights_only=True)``):
    python, numpy, torch's CPU generator and, for a CUDA ``device``, that device's generator only
    (a CPU run on a GPU host creates no CUDA context)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | str | None = None) -> None:
    """Restore :func:`rng_state`; the CUDA generator goes to the training ``device`` (whatever
    index it was saved from: a ``cuda:1`` run resumed on ``cuda:0`` restores cuda:0's)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    device = torch.device(device) if device is not None else None
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every device's generator
            cuda = cuda[device.index or 0] if len(cuda) > (device.index or 0) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


class StopSignals:
    """Turn SIGINT / SIGTERM into a request that a training loop honours at its next step boundary
    (save a checkpoint, then raise :class:`~offrl.errors.TrainingInterrupted`) instead of dying
    mid-update; SIGUSR1 asks for a checkpoint and training goes on. A second SIGINT interrupts at
    once. Handlers are installed only in the main thread, not over a signal the process ignores
    (e.g. SIGINT of a background job), and restored on exit.

        with StopSignals() as stop:
            for step in ...:
                ...
                if stop.save_now():   # SIGUSR1 since the last call
                    save()
                if stop.requested:
                    save(); raise stop.interrupted(step, path)
    """

    HANDLED = ("SIGINT", "SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signum: int | None = None
        self._save = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def save_now(self) -> bool:
        flag, self._save = self._save, False
        return flag

    def _handle(self, signum, frame) -> None:
        if signum == getattr(signal, "SIGUSR1", None):
            self._save = True
            return
        if self.signum == signal.SIGINT and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def interrupted(self, step: int, checkpoint: str):
        name = signal.Signals(self.signum).name
        return TrainingInterrupted(step, checkpoint, name, 128 + int(self.signum))

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.HANDLED:
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # respect ignored signals
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
