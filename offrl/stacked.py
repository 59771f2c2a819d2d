"""Stacked seeds: S seeds of one offline algorithm trained in one process, one update for all.

    offrl train iql --dataset offrl/hopper/medium-v0 --seeds 0 1 2 --run-dir runs/iql-stacked
    offrl sweep --algos iql td3_bc --datasets ... --seeds 0 1 2 --stack-seeds --out sweeps/NAME

Every network of the agent becomes a :class:`SeedStacked` module: the S seeds' parameters are
stacked along a leading dim (``[S, ...]``) and a call runs the seed's own network on the seed's own
inputs under ``torch.func.vmap``, so one update is one set of batched kernels for all seeds instead
of S sets (on a GPU the update is launch-bound, so this is where stacking pays; on a CPU the matmuls
are compute-bound and stacking buys nothing: ``docs/results.md``). Batches are ``[S, B, ...]``: seed
s samples its rows with its own generator, seeded as a single run of seed s seeds its buffer, so
seed s sees the batches a single run of seed s would see. Losses are per-seed means summed over the
seeds, so each seed's parameters get exactly its own gradient; Adam, Polyak averaging and the
learning-rate schedules are elementwise, so each seed's optimizer state evolves as in a single run.
The networks start from the weights single runs of those seeds start from. The stacked update
matches S single updates to float rounding (vmap's batched matmuls round differently), except for
the randomness inside an update (TD3's target-policy noise): one generator draws it for all seeds.

An agent opts in with ``stackable = True`` and writes its batch reductions per seed (the seed dim
sits right before the batch dim: ``[S, B]``, ``[S, B, d]``, ensembles ``[E, S, B]``; reduce with
``dim=-1`` / ``Agent.seed_mean``, concatenate along the batch dim ``-2``). IQL and the TD3 family (TD3+BC, PRDC, A2PR)
do.

A stacked run writes one ordinary run directory per seed (``RUN_DIR/seed<k>``: config.json,
metrics.jsonl, TensorBoard, checkpoint.pt, summary.json), each readable by ``offrl eval``,
``offrl report`` and ``Agent.load``; each checkpoint holds that seed's slice of the weights and
optimizer state with the run's step, buffer sampler, evaluator and metric state, so
``--resume RUN_DIR`` continues the stacked run (and ``--resume RUN_DIR/seed<k>/checkpoint.pt``
continues seed k alone as a single run).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.func import stack_module_state, vmap
from torch.nn.utils.stateless import _reparametrize_module

from offrl.errors import OffrlError, json_safe


def _key(name: str) -> str:
    return name.replace(".", "__")


class SeedStacked(nn.Module):
    """S copies of one architecture with stacked parameters and buffers (``[S, ...]``).

    Calling it (or any method of the wrapped module, e.g. ``actor.log_prob``) runs the wrapped
    module once per seed under ``vmap``: every tensor argument carries the seed dim first, and every
    output gets it at ``out_dim`` — 0, or 1 for ensemble modules (an attribute ``ensemble_size``),
    whose outputs lead with the member dim (``[E, S, B]``). Other attributes are the wrapped
    module's (``max_action``, ``ensemble_size``)."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        if not modules:
            raise OffrlError("SeedStacked needs at least one module")
        params, buffers = stack_module_state(modules)
        first = modules[0]
        self.seeds = len(modules)
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        grads = {n: p.requires_grad for n, p in first.named_parameters()}
        self.stacked = nn.ParameterDict({_key(n): nn.Parameter(v.detach().clone(), requires_grad=grads[n])
                                         for n, v in params.items()})
        for n, v in buffers.items():
            self.register_buffer("buf__" + _key(n), v.detach().clone())
        base = copy.deepcopy(first).to("meta")
        object.__setattr__(self, "_base", base)  # not a submodule: its (meta) weights are never used
        self.out_dim = 1 if hasattr(first, "ensemble_size") else 0

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {n: self.stacked[_key(n)] for n in self._param_names}
        out.update({n: getattr(self, "buf__" + _key(n)) for n in self._buffer_names})
        return out

    def call(self, method: str, *args, **kwargs):
        """``wrapped.method(*args, **kwargs)`` for every seed at once (tensor args: seed dim first)."""
        base = self._base

        def one(tensors, *a):
            with _reparametrize_module(base, tensors):
                return getattr(base, method)(*a, **kwargs)

        in_dims = (0, *[0 if isinstance(a, torch.Tensor) else None for a in args])
        return vmap(one, in_dims=in_dims, out_dims=self.out_dim, randomness="different")(self._tensors(), *args)

    def forward(self, *args, **kwargs):
        return self.call("forward", *args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_base")
            if base is None or name.startswith("_"):
                raise
            attr = getattr(base, name)
            if callable(attr) and not isinstance(attr, nn.Module):
                return lambda *args, **kwargs: self.call(name, *args, **kwargs)
            return attr

    def train(self, mode: bool = True) -> "SeedStacked":
        super().train(mode)
        self._base.train(mode)
        return self

    @torch.no_grad()
    def seed_state(self, s: int) -> dict[str, torch.Tensor]:
        """Seed ``s``'s state dict in the wrapped module's naming (parameters and buffers)."""
        return {n: t[s].detach().clone() for n, t in self._tensors().items()}


def stackable_children(agent: nn.Module) -> list[str]:
    """The agent's direct sub-modules that hold weights (its networks), frozen parts excluded."""
    frozen = set(getattr(agent, "_frozen", {}))
    out = []
    for name, child in agent.named_children():
        if name in frozen:
            continue
        if any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
            out.append(name)
    return out


class Stack:
    """The stacked agent built from S single agents of one class and config (the weights single
    runs of those seeds start from): ``stack.agent`` is an agent of that class whose networks are
    :class:`SeedStacked` and whose optimizers (same class and hyperparameters) hold the stacked
    parameters. :meth:`unstack_into` writes seed s's weights and optimizer state back into a single
    agent; :meth:`load_from` stacks single agents' state again (resume)."""

    def __init__(self, shell, agents: list):
        self.agents = agents
        self.S = len(agents)
        self.agent = shell
        self.children = stackable_children(agents[0])
        for name in self.children:
            setattr(shell, name, SeedStacked([getattr(a, name) for a in agents]))
        shell.seeds = self.S
        # every optimizer again, over the stacked parameters (same class, groups and hyperparameters)
        where = {id(p): (c, n) for c in self.children for n, p in getattr(agents[0], c).named_parameters()}
        shell.optimizers = {}
        for oname, opt in agents[0].optimizers.items():
            groups = []
            for g in opt.param_groups:
                missing = [p for p in g["params"] if id(p) not in where]
                if missing:
                    raise OffrlError(f"{shell.algo}: optimizer '{oname}' holds parameters outside the agent's "
                                     "networks; this algorithm cannot be stacked")
                params = [getattr(shell, where[id(p)][0]).stacked[_key(where[id(p)][1])] for p in g["params"]]
                hp = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in g.items() if k != "params"}
                groups.append({"params": params, **hp})
            shell.optimizers[oname] = type(opt)(groups)
        self._where = where

    @torch.no_grad()
    def unstack_into(self, s: int, agent) -> None:
        """Seed ``s``'s networks and optimizer state into the single ``agent`` (same class and config)."""
        for name in self.children:
            getattr(agent, name).load_state_dict(getattr(self.agent, name).seed_state(s))
        for k, v in self.agent.state_dict().items():  # agent-level buffers (counters, statistics): shared
            if k.split(".")[0] not in self.children:
                agent.state_dict()[k].copy_(v)
        for oname, opt in self.agent.optimizers.items():
            target = agent.optimizers[oname]
            state = opt.state_dict()
            single = {"param_groups": [{**g} for g in target.state_dict()["param_groups"]], "state": {}}
            for g_stacked, g_single in zip(state["param_groups"], single["param_groups"]):
                for k, v in g_stacked.items():
                    if k != "params":
                        g_single[k] = v.clone() if isinstance(v, torch.Tensor) else v
            for idx, st in state["state"].items():
                single["state"][idx] = {k: (v[s].clone() if isinstance(v, torch.Tensor) and v.dim() > 0 else
                                            (v.clone() if isinstance(v, torch.Tensor) else v)) for k, v in st.items()}
            target.load_state_dict(single)

    @torch.no_grad()
    def load_from(self, agents: list) -> None:
        """Stack the weights and optimizer states of single ``agents`` (one per seed, in order)."""
        for name in self.children:
            stacked = getattr(self.agent, name)
            for n, t in stacked._tensors().items():
                t.copy_(torch.stack([getattr(a, name).state_dict()[n] for a in agents]))
        for k, v in agents[0].state_dict().items():
            if k.split(".")[0] not in self.children:
                self.agent.state_dict()[k].copy_(v)
        for oname, opt in self.agent.optimizers.items():
            states = [a.optimizers[oname].state_dict() for a in agents]
            merged = {"param_groups": [{**g} for g in opt.state_dict()["param_groups"]], "state": {}}
            for g_merged, g_single in zip(merged["param_groups"], states[0]["param_groups"]):
                for k, v in g_single.items():
                    if k != "params":
                        g_merged[k] = v.clone() if isinstance(v, torch.Tensor) else v
            for idx, st in states[0]["state"].items():
                merged["state"][idx] = {k: (torch.stack([x["state"][idx][k] for x in states])
                                            if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                                        for k, v in st.items()}
            opt.load_state_dict(merged)


class StackedSampler:
    """Batches ``[S, B, ...]`` from one buffer: seed s draws its row indices with its own generator
    (seeded with seed s, as a single run's buffer is), so each seed gets a single run's batches."""

    def __init__(self, buffer, seeds: list[int]):
        if buffer.weights is not None:
            raise OffrlError("stacked seeds sample uniformly; weighted sampling is not supported")
        self.buffer = buffer
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=buffer.device)
            g.manual_seed(int(s))
            self.generators.append(g)

    def sample(self, batch_size: int):
        buf = self.buffer
        idx = torch.stack([torch.randint(0, buf.size, (batch_size,), device=buf.device, generator=g)
                           for g in self.generators])
        flat = buf.batch(idx.reshape(-1))
        S = len(self.generators)
        return flat.replace(**{k: v.reshape(S, batch_size, *v.shape[1:]) for k, v in flat.__dict__.items()})

    def generator_state(self, s: int) -> torch.Tensor:
        return self.generators[s].get_state()

    def set_generator_state(self, s: int, state: torch.Tensor) -> None:
        self.generators[s].set_state(state.cpu())


def slice_tree(x, s: int, S: int):
    """Seed ``s``'s part of a stacked value: a tensor ``[S, ...]`` → ``x[s]``; dicts and lists recursively."""
    if isinstance(x, torch.Tensor):
        return x[s].clone() if x.dim() >= 1 and x.shape[0] == S else x
    if isinstance(x, dict):
        return {k: slice_tree(v, s, S) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(slice_tree(v, s, S) for v in x)
    return x


def stack_tree(values: list):
    """The inverse of :func:`slice_tree` over the seeds' values: tensors stacked, equal plain values kept."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, dict):
        return {k: stack_tree([v[k] for v in values]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(stack_tree(list(v)) for v in zip(*values))
    if any(v != first for v in values):
        raise OffrlError(f"the seeds' checkpoints disagree on a shared value ({values})")
    return first


def _split(metrics: dict[str, torch.Tensor], S: int) -> list[dict[str, torch.Tensor]]:
    """Per-seed metrics: a ``[S]`` value is seed s's at index s, a scalar is shared."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(S)]
    for k, v in metrics.items():
        for s in range(S):
            out[s][k] = v[s] if v.dim() == 1 and v.shape[0] == S else v
    return out


def run_stacked(cfg, agent_cls, prepare=None) -> dict:
    """Train ``cfg.seeds`` stacked (see the module docstring); returns ``{"seeds": [...], "runs": [summaries]}``."""
    from offrl.agent import load_checkpoint
    from offrl.buffer import DataTransform, ReplayBuffer
    from offrl.data import load_dataset
    from offrl.evaluation import crossed, mean_normalized_score
    from offrl.io import save_torch, write_json
    from offrl.logger import Logger, MetricAccumulator
    from offrl.run import OfflinePhase
    from offrl.train import Prepared, check_dims, dataset_run, default_run_dir, setup_torch
    from offrl.utils import StopSignals, rng_state, set_rng_state, set_seed

    seeds = [int(s) for s in cfg.seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < 1:
        raise OffrlError(f"--seeds must be distinct, got {list(cfg.seeds)}")
    if not getattr(agent_cls, "stackable", False):
        raise OffrlError(f"{agent_cls.algo} cannot be trained with stacked seeds (--seeds); "
                         "run one process per seed (offrl sweep --seeds ...)")
    if cfg.online_steps:
        raise OffrlError("--seeds trains the offline phase only; --online-steps needs one process per seed")
    if cfg.compile:
        raise OffrlError("--seeds and --compile cannot be combined yet")
    resume_dir = None
    if cfg.resume:
        if not os.path.isdir(cfg.resume):
            raise OffrlError(f"with --seeds, --resume takes the stacked run's directory (RUN_DIR), got {cfg.resume}")
        resume_dir = cfg.resume
    root = cfg.run_dir or resume_dir or default_run_dir(agent_cls.algo, cfg.dataset, seeds[0]) + "-stacked"
    seed_dirs = [os.path.join(root, f"seed{s}") for s in seeds]
    ckpts = None
    if resume_dir is not None:
        paths = [os.path.join(d, "checkpoint.pt") for d in seed_dirs]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise OffrlError(f"cannot resume the stacked run in {resume_dir}: {missing[0]} not found")
        ckpts = [load_checkpoint(p) for p in paths]
        for c, p in zip(ckpts, paths):
            if c.get("algo") != agent_cls.algo or "train" not in c:
                raise OffrlError(f"{p} is not a resumable {agent_cls.algo} checkpoint")
        steps = {int(c["train"]["step"]) for c in ckpts}
        if len(steps) != 1:
            raise OffrlError(f"the seeds' checkpoints in {resume_dir} are at different steps {sorted(steps)}")
        if ckpts[0]["train"].get("phase_done"):
            raise OffrlError(f"{resume_dir} is a finished stacked run (step {steps.pop()})")
        from offrl.config import merge_resume_config

        cfg = merge_resume_config(cfg, ckpts[0]["config"])  # the run's flags, overridden by those changed now
    else:
        from offrl.errors import check_output_dir

        for d in seed_dirs:
            check_output_dir(d)
    cfg.validate()

    dataset = load_dataset(cfg.dataset)
    cfg.resolve(dataset)
    cfg.validate()
    env_id = check_dims(dataset, dataset.env_id)
    cfgs = [dataclasses.replace(cfg, seed=s, seeds=(), run_dir=d, resume=None) for s, d in zip(seeds, seed_dirs)]
    device = setup_torch(cfgs[0])
    prep = prepare(cfg, dataset) if prepare else Prepared()
    if prep.dataset is not None:
        dataset = prep.dataset
    transform = DataTransform(prep.obs_mean, prep.obs_std, prep.reward_fn)
    buffer = ReplayBuffer.from_dataset(dataset, device, seed=seeds[0], transform=transform, rewards=prep.rewards,
                                       actions=prep.actions, extras=prep.extras)
    agents = []
    for c in cfgs:
        set_seed(c.seed)  # as a single run seeds before building its agent
        agents.append(agent_cls(c, dataset.obs_dim, dataset.act_dim, prep.obs_mean, prep.obs_std, device=device))
    shell = agent_cls(cfgs[0], dataset.obs_dim, dataset.act_dim, prep.obs_mean, prep.obs_std, device=device)
    stack = Stack(shell, agents)
    sampler = StackedSampler(buffer, seeds)
    # one ordinary Run per seed: its config.json, evaluator, logger, checkpoint and summary machinery
    runs = [dataset_run(c, a, [OfflinePhase(cfg.steps, buffer, cfg.batch_size)], dataset, env_id, buffer, d, ck, device)
            for c, a, d, ck in zip(cfgs, agents, seed_dirs, ckpts or [None] * len(seeds))]
    step = 0
    if ckpts is not None:
        stack.load_from(agents)  # each Run restored its agent from its checkpoint
        # the agent's own training state beyond weights and optimizers (TD3's counter and last actor metrics)
        own = {k: stack_tree([c[k] for c in ckpts]) for k in agents[0].training_state() if k not in ("agent", "optimizers")}
        shell.load_training_state({**shell.training_state(), **own})
        step = runs[0].step
        for s, ck in enumerate(ckpts):
            sampler.set_generator_state(s, ck["train"]["parts"]["buffer"]["generator"])
        set_rng_state(ckpts[0]["train"]["parts"]["rng"], device)
    agent = stack.agent
    agent.train()
    total = cfg.steps
    loggers = []
    t_start = time.time()
    for k, (run, d) in enumerate(zip(runs, seed_dirs)):
        os.makedirs(d, exist_ok=True)
        write_json(os.path.join(d, "config.json"), json_safe({**run.meta, "stacked_seeds": seeds}))
        run.logger = Logger(d, total, step, cfg.progress if k == 0 else False, desc=f"{agent.algo} {cfg.dataset} ×{len(seeds)} seeds",
                            heartbeat_seconds=cfg.heartbeat_seconds if k == 0 else 0.0)
        if k == 0:
            run.logger.start_line(f"{agent.algo} | dataset {dataset.id} | seeds {seeds} stacked in one process | "
                                  f"offline {total:,} steps | device {device} | run {root}")
        loggers.append(run.logger)
    phase_name = "offline"
    for run in runs:
        run.logger.phase = phase_name
    agent.begin_phase("offline", total)
    for a in agents:
        a.begin_phase("offline", total)
    agent.setup_data(buffer)
    clock = [time.time(), step]

    def checkpoint(done: bool) -> None:
        for s, (run, a) in enumerate(zip(runs, agents)):
            stack.unstack_into(s, a)
            run.step = step
            state = buffer.state_dict()
            state["generator"] = sampler.generator_state(s)
            parts = {"buffer": state, "metrics": run.acc.state_dict(), "rng": rng_state(device),
                     "evaluator": run.evaluator.state_dict(), "phase": {"updates": step}}
            train = {"step": step, "phase": 0, "phase_done": done, "phase_start": 0, "phases": [phase_name],
                     "results": run.results, "parts": parts, "seconds": run.seconds_before + time.time() - t_start}
            ckpt = a.checkpoint(train=train, **run.checkpoint_extra)
            for k, v in shell.training_state().items():  # counters, cached metrics: seed s's part
                if k not in ("agent", "optimizers"):
                    ckpt[k] = slice_tree(v, s, len(seeds))
            save_torch(ckpt, run.ckpt_path)

    try:
        with StopSignals() as stop:
            while step < total:
                prev = step
                metrics = agent.update(sampler.sample(cfg.batch_size))
                step += 1
                for run, m in zip(runs, _split(metrics, len(seeds))):
                    run.acc.add(m)
                last = step >= total
                if crossed(prev, step, cfg.log_every) or last:
                    now = time.time()
                    sps = (step - clock[1]) / max(now - clock[0], 1e-9)
                    clock[:] = [now, step]
                    for run in runs:
                        run.logger.log(step, run.acc.pop(), prefix="train/")
                        run.logger.log(step, {"updates": step, "sps": sps, "seeds": len(seeds)}, prefix="time/")
                        run.logger.advance(step)
                if runs[0].evaluator.due(prev, step) or (last and runs[0].evaluator.enabled):
                    for s, (run, a) in enumerate(zip(runs, agents)):
                        stack.unstack_into(s, a)
                        t = time.time()
                        scalars = run.evaluator(a, step)
                        run.logger.log(step, {**scalars, "seconds": time.time() - t}, prefix="eval/")
                if last:
                    break
                if stop.save_now() or crossed(prev, step, cfg.checkpoint_every) or stop.requested:
                    checkpoint(False)
                    for lg in loggers:
                        lg.flush()
                if stop.requested:
                    raise stop.interrupted(step, os.path.join(root, "seed*/checkpoint.pt"))
            summaries = []
            for s, run in enumerate(runs):
                ev = run.evaluator
                final = {k: v for k, v in ev.last.items() if not isinstance(v, list)}
                evals = ev.between(0, step)
                run.results = [{"name": phase_name, "kind": "offline", "steps": step, "updates": step, "end_step": step,
                                "final_return": final.get("return_mean"),
                                "final_normalized_score": final.get("normalized_score"), "evaluations": len(evals),
                                "mean_normalized_score": mean_normalized_score(evals)}]
            stop.save_now()
            checkpoint(True)
    finally:
        for lg in loggers:
            lg.close()
    seconds = time.time() - t_start
    for s, run in enumerate(runs):
        last = run.results[-1]
        summary = json_safe({**run.summary_extra, "steps": step, "updates": step, "phases": run.results,
                             "run_dir": run.run_dir, "checkpoint": run.ckpt_path, "seconds": seconds,
                             "total_seconds": run.seconds_before + seconds,
                             "final_return": last["final_return"], "final_normalized_score": last["final_normalized_score"],
                             "best_return": run.evaluator.best_return,
                             "best_normalized_score": run.evaluator.best_normalized_score,
                             "stacked_seeds": seeds})
        write_json(os.path.join(run.run_dir, "summary.json"), summary)
        summaries.append(summary)
    return {"algo": agent.algo, "dataset": dataset.id, "seeds": seeds, "run_dir": root, "seconds": seconds,
            "runs": summaries}
