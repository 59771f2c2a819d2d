"""Update-step benchmark: ``offrl bench update --algo iql --device cpu --steps N``.

Builds the agent on a synthetic packed buffer (100k rows) of D4RL locomotion dimensions (obs 17,
act 6 by default), runs
warm-up updates, then times ``steps`` updates (synchronizing the device at the ends only) and
prints one JSON line with ``updates_per_s``. A benchmark, not a test.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from offrl.errors import OffrlError



def bench_algorithms() -> list[str]:
    """Registered algorithms ``offrl bench update`` can time on synthetic data."""
    from offrl.registry import algorithms

    return [name for name, a in algorithms().items() if a.benchmark]


def bench_update(algo: str = "iql", device: str = "cpu", steps: int = 1000, warmup: int = 100, batch_size: int = 256,
                 obs_dim: int = 17, act_dim: int = 6, threads: int = 0, compile: bool = False, rows: int = 100_000,
                 seed: int = 0) -> dict:
    from offrl.buffer import ReplayBuffer
    from offrl.utils import resolve_device, set_seed

    if steps <= 0 or warmup < 0 or batch_size <= 0:
        raise OffrlError("--steps and --batch-size must be positive, --warmup >= 0")
    from offrl.registry import get

    entry = get(algo)
    if not entry.benchmark:
        raise OffrlError(f"{algo} cannot be benchmarked on synthetic data")
    cls = entry.agent
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)
    # presets resolve from the dataset id; the default one is a locomotion-style dataset
    cfg = entry.config(batch_size=batch_size, device=str(dev), compile=compile)
    if hasattr(cfg, "steps"):  # offline configs: schedules run over the benchmark's updates
        cfg.steps = steps + warmup
    cfg.resolve(None)
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(obs_dim, act_dim, rows, dev, seed)
    buf.add(rng.standard_normal((rows, obs_dim)), rng.uniform(-1, 1, (rows, act_dim)), rng.standard_normal(rows),
            rng.standard_normal((rows, obs_dim)), (rng.uniform(size=rows) < 0.01))
    agent = cls(cfg, obs_dim, act_dim, device=dev)
    agent.train()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync()
    t = time.perf_counter()
    agent.setup_data(buf)  # PRDC: the nearest-neighbour index over all rows
    sync()
    setup_s = time.perf_counter() - t
    update = agent.compiled_update() if compile else agent.update

    t = time.perf_counter()
    for _ in range(warmup):
        update(buf.sample(batch_size))
    sync()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        m = update(buf.sample(batch_size))
    sync()
    dt = time.perf_counter() - t
    finite = all(np.isfinite(v.item()) for v in m.values())
    return {
        "algo": algo, "device": str(dev), "compile": compile, "threads": torch.get_num_threads(),
        "batch_size": batch_size, "obs_dim": obs_dim, "act_dim": act_dim, "steps": steps,
        "updates_per_s": round(steps / dt, 2), "ms_per_update": round(1000 * dt / steps, 4),
        "warmup_s": round(warm_s, 3), "setup_s": round(setup_s, 3), "rows": rows, "metrics_finite": finite, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
    }

