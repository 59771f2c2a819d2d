"""Benchmarks; each prints one JSON line. Benchmarks, not tests.

* ``offrl bench update --algo iql --device cpu --steps N`` — the update step alone: the agent on a
  synthetic packed buffer (100k rows) of D4RL locomotion dimensions (obs 17, act 6 by default),
  warm-up updates, then ``steps`` timed updates (the device synchronized at the ends only);
  ``updates_per_s``.
* ``offrl bench loop --algo ppo --env Hopper-v5 --steps N [-- train flags]`` — the whole training
  loop of an online or on-policy algorithm (env stepping, normalizers, policy forwards, replay or
  rollout storage, updates), run through its ``train`` with evaluation and checkpoints off, in a
  temporary run directory; ``env_steps_per_s`` between the first and the last log row (start-up and
  the first interval left out), ``cpu_steps_per_s`` the same per CPU second of the process.
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
                 seed: int = 0, stack: int = 1, cuda_graph: bool = False) -> dict:
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
    if stack < 1:
        raise OffrlError(f"--stack must be >= 1, got {stack}")
    sampler = buf
    if stack > 1:  # stacked seeds (offrl.stacked): one update trains `stack` seeds
        from offrl.stacked import Stack, StackedSampler

        if not getattr(cls, "stackable", False):
            raise OffrlError(f"{algo} cannot be trained with stacked seeds")
        if compile:
            raise OffrlError("--stack and --compile cannot be combined yet")
        agents = []
        for s in range(stack):
            set_seed(seed + s)
            agents.append(cls(cfg, obs_dim, act_dim, device=dev))
        agent = Stack(cls(cfg, obs_dim, act_dim, device=dev), agents).agent
        sampler = StackedSampler(buf, [seed + s for s in range(stack)])
    else:
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
    if cuda_graph:
        from offrl.graphs import GraphedUpdate

        if compile or stack > 1:
            raise OffrlError("--cuda-graph cannot be combined with --compile or --stack")
        update = GraphedUpdate(agent)  # the warm-up updates run eagerly, then one capture (in warmup_s)
    else:
        update = agent.compiled_update() if compile else agent.update

    t = time.perf_counter()
    for _ in range(warmup):
        update(sampler.sample(batch_size))
    sync()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        m = update(sampler.sample(batch_size))
    sync()
    dt = time.perf_counter() - t
    finite = all(bool(torch.isfinite(v).all()) for v in m.values())
    return {
        "algo": algo, "device": str(dev), "compile": compile, "cuda_graph": cuda_graph, "threads": torch.get_num_threads(),
        "batch_size": batch_size, "obs_dim": obs_dim, "act_dim": act_dim, "steps": steps,
        "updates_per_s": round(steps / dt, 2), "ms_per_update": round(1000 * dt / steps, 4),
        "stack": stack, "seed_updates_per_s": round(stack * steps / dt, 2),
        "warmup_s": round(warm_s, 3), "setup_s": round(setup_s, 3), "rows": rows, "metrics_finite": finite, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
    }



def bench_loop(algo: str = "ppo", env: str = "Hopper-v5", steps: int = 20480, threads: int = 1, device: str = "cpu",
               log_every: int = 2048, flags: list[str] | None = None, seed: int = 0) -> dict:
    """Env steps/s of the whole training loop of an online or on-policy algorithm (see the module docstring)."""
    import contextlib
    import dataclasses
    import os
    import tempfile

    from offrl import run as run_module
    from offrl.cli import parse_config
    from offrl.registry import get

    entry = get(algo)
    if entry.kind not in ("online", "on-policy"):
        raise OffrlError(f"offrl bench loop times online and on-policy algorithms; {algo} is {entry.kind} "
                         "(use `offrl bench update`)")
    if steps <= 0 or log_every <= 0 or steps < 3 * log_every:
        raise OffrlError(f"--steps must be at least 3 × --log-every ({log_every}), got {steps}")
    marks: list[tuple[int, float, float]] = []
    original = run_module.Run._log

    def marked(self, phase, clock):
        original(self, phase, clock)
        marks.append((self.step, time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory(prefix="offrl-bench-") as tmp, contextlib.ExitStack() as stack:
        cfg = parse_config(entry.config, [*(flags or []), "--env", env], prog=f"offrl bench loop {algo}")
        cfg = dataclasses.replace(cfg, total_steps=steps, eval_every=0, eval_episodes=1, log_every=log_every,
                                  checkpoint_every=steps, run_dir=os.path.join(tmp, "run"), threads=threads,
                                  device=device, seed=seed, progress=False, heartbeat_seconds=0.0)
        run_module.Run._log = marked
        stack.callback(setattr, run_module.Run, "_log", original)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            entry.train(cfg)
        wall = time.perf_counter() - t0
    if len(marks) < 2:
        raise OffrlError("the run logged fewer than two rows; raise --steps")
    (s0, w0, c0), (s1, w1, c1) = marks[0], marks[-1]
    return {
        "algo": algo, "env": env, "device": device, "threads": threads, "steps": steps, "log_every": log_every,
        "flags": list(flags or []), "env_steps_per_s": round((s1 - s0) / (w1 - w0), 2),
        "cpu_steps_per_s": round((s1 - s0) / max(c1 - c0, 1e-9), 2), "timed_steps": s1 - s0,
        "wall_s": round(wall, 2), "torch": torch.__version__,
    }
