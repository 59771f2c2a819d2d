"""The run lifecycle: one run directory, one agent, a list of phases.

A :class:`Run` owns the run directory, ``config.json`` (written atomically), the logger, the
:class:`~offrl.evaluation.Evaluator`, checkpoints, stop signals and ``summary.json``. Training is
a list of phases on that one agent:

* :class:`OfflinePhase` — gradient steps on batches from a sampler (dataset replay);
* :class:`OnlinePhase` — off-policy: a collector steps the env into a replay buffer, updates at a
  fixed ratio after a warm-up;
* :class:`OnPolicyPhase` — a collector fills rollout storage; the agent learns from each full rollout.

Offline-to-online is ``[OfflinePhase, OnlinePhase]`` on one buffer. The step counter runs on across
phases (offline steps are gradient steps, online steps env steps; CORL's fine-tuning convention),
every metrics row names its ``phase``, and logging, evaluation and checkpoints happen when the
global step crosses a multiple of their interval and at every phase end. A checkpoint names the
phase, the global step and every stateful part (phase parts, metrics, RNG, evaluator) by name, so a
resumed run continues exactly — in any phase, and across the hand-over (a checkpoint at a phase end
resumes at the start of the next phase).

Summary keys, the same for every algorithm: ``algo``, ``dataset`` (None online), ``env``,
``steps`` (global), ``updates``, ``phases`` (name, kind, steps, final evaluation of each),
``run_dir``, ``checkpoint``, ``seconds`` (this invocation's training loop), ``total_seconds`` (all
invocations of the run, resumes included), ``final_return``, ``final_normalized_score`` (the last
evaluation), ``best_return``, ``best_normalized_score`` (the evaluation with the highest mean
return; see :class:`~offrl.evaluation.Evaluator`). Each phase line also has ``evaluations``,
``mean_normalized_score`` over them and, for env phases, ``normalized_regret`` (mean of
1 − score/100 over the phase's evaluations; also logged as ``eval/normalized_regret``). An
offline → online run adds ``offline_normalized_score`` (end of the last offline phase before the first
online one: :func:`o2o_scores`),
``online_normalized_score`` (end of the online phase) and ``normalized_regret`` (the online phase's),
as CORL reports fine-tuning; the regret on normalized scores is offrl's own locomotion analogue of
CORL's success-rate regret.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

from offrl.errors import OffrlError, json_safe
from offrl.evaluation import Evaluator, crossed, mean_normalized_score, normalized_regret
from offrl.io import write_json
from offrl.logger import Logger, MetricAccumulator
from offrl.utils import StopSignals, rng_state, set_rng_state


def first_env_phase(phases: list[dict]) -> int | None:
    """The index of the first env phase (kind ``online`` or ``on-policy``) among phase lines (the
    summary's ``phases``); None for a run without one."""
    return next((i for i, p in enumerate(phases) if p.get("kind") != "offline"), None)


def o2o_scores(phases: list[dict]) -> dict:
    """An offline → online run's scores from its phase lines (the summary's ``phases``):
    ``offline_normalized_score`` at the end of the last offline phase before the first env phase
    (:func:`first_env_phase`: the policy handed over; for a pipeline of offline stages, as Uni-O4's
    critic → dynamics → bc → improve → value → online PPO, the last stage, not the first),
    ``online_normalized_score`` at the end of the last env phase and that phase's ``normalized_regret``;
    empty for a run without such a hand-over."""
    first = first_env_phase(phases)
    if not first:  # None (no env phase) or 0 (online from the start)
        return {}
    offline = phases[first - 1]  # the phases before the first env phase are all offline
    online = next(p for p in reversed(phases) if p.get("kind") != "offline")
    return {"offline_normalized_score": offline.get("final_normalized_score"),
            "online_normalized_score": online.get("final_normalized_score"),
            "normalized_regret": online.get("normalized_regret")}


class Phase:
    """One stretch of training. Subclasses implement :meth:`advance` (one unit of work, returning
    how many global steps it took) and their checkpoint parts."""

    kind = "offline"
    #: False for a phase that does not change the acting policy (a critic or model fit before there is
    #: a policy, a value re-fit after it): the runner skips its evaluations, and its summary line
    #: carries the last evaluation before it (None if there is none yet)
    evaluates = True

    def __init__(self, name: str, steps: int):
        if steps <= 0:
            raise OffrlError(f"phase '{name}' must have a positive number of steps, got {steps}")
        self.name, self.steps = name, int(steps)
        self.updates = 0

    def begin(self, run: "Run") -> None:
        """Build what the phase needs (a collector, say); called before a resume loads its state."""

    def advance(self, run: "Run") -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_rows(self) -> dict[str, dict[str, float]]:
        """Extra rows per log interval, prefix → scalars (e.g. ``rollout/`` episode returns)."""
        return {}

    def end(self, run: "Run") -> None:
        """Release what :meth:`begin` built."""

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))


class OfflinePhase(Phase):
    """``steps`` gradient steps, each on ``sampler.sample(batch_size)`` (the sampler's state is a
    run part: it is shared with the phases that follow)."""

    kind = "offline"

    def __init__(self, steps: int, sampler, batch_size: int, name: str = "offline"):
        super().__init__(name, steps)
        self.sampler, self.batch_size = sampler, batch_size

    def begin(self, run: "Run") -> None:
        run.agent.setup_data(self.sampler)

    def advance(self, run: "Run") -> int:
        run.acc.add(run.update(self.sampler.sample(self.batch_size)))
        self.updates += 1
        return 1



class EnvPhase(Phase):
    """A phase that steps an environment: its collector is built when the phase begins, closed
    when it ends, gives the ``rollout/`` rows and is part of the phase's checkpoint."""

    def __init__(self, name: str, steps: int, make_collector: Callable[[], Any]):
        super().__init__(name, steps)
        self.make_collector = make_collector
        self.collector = None

    def begin(self, run: "Run") -> None:
        self.collector = self.make_collector()

    def log_rows(self) -> dict[str, dict[str, float]]:
        return {"rollout/": self.collector.pop_finished()}

    def end(self, run: "Run") -> None:
        if self.collector is not None:
            self.collector.close()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "collector": self.collector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.collector.load_state_dict(state["collector"])


class OnlinePhase(EnvPhase):
    """Off-policy online training: ``steps`` env steps (summed over copies) from a collector into
    ``buffer``; uniform-random actions for the first ``learning_starts`` steps of the phase, then
    the agent's ``explore``; ``updates_per_step`` gradient steps per env step after the warm-up,
    on batches from ``sampler`` (default: the buffer). The buffer is a run part (checkpointed by
    the run: an offline phase before this one fills and samples it too)."""

    kind = "online"

    def __init__(self, steps: int, buffer, make_collector: Callable[[], Any], batch_size: int,
                 learning_starts: int = 0, updates_per_step: float = 1.0, sampler=None, with_log_prob: bool = False,
                 name: str = "online"):
        super().__init__(name, steps, make_collector)
        self.buffer, self.batch_size = buffer, batch_size
        self.learning_starts, self.updates_per_step = learning_starts, updates_per_step
        self.sampler = sampler if sampler is not None else buffer
        self.with_log_prob = with_log_prob
        self.env_steps = 0
        self._uniform_logp = None

    def begin(self, run: "Run") -> None:
        super().begin(run)
        act_dim = int(np.prod(self.collector.venv.single_action_space.shape))
        self._uniform_logp = -act_dim * float(np.log(2.0))  # density of uniform actions on [-1, 1]^|A|

    def _act(self, run: "Run"):
        n = self.collector.num_envs

        def act_fn(obs):
            if self.env_steps < self.learning_starts:
                return self.collector.random_actions(), {"logp": np.full(n, self._uniform_logp, np.float32)}
            if self.with_log_prob:  # the dataset recorder stores the behaviour's log-probabilities
                a, logp = run.agent.explore(obs, with_log_prob=True)
                return a, {"logp": logp}
            return run.agent.explore(obs), {}

        return act_fn

    def advance(self, run: "Run") -> int:
        self.collector.step(self._act(run))
        n = self.collector.num_envs
        self.env_steps += n
        if self.env_steps >= self.learning_starts:
            target = int((self.env_steps - self.learning_starts) * self.updates_per_step)
            while self.updates < target:
                run.acc.add(run.update(self.sampler.sample(self.batch_size)))
                self.updates += 1
        return n

    def state_dict(self) -> dict:
        return {**super().state_dict(), "env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.env_steps = int(state["env_steps"])


class OnPolicyPhase(EnvPhase):
    """On-policy training: the collector steps the env with ``agent.rollout_action`` (actions plus
    ``logp`` and ``value`` extras) into ``storage`` through the agent's ``rollout_sink(storage)``
    (by default a :class:`~offrl.collector.RolloutSink`: truncated episodes get
    ``agent.state_value(final_obs)``); when the storage is full,
    ``agent.learn(storage, last_value)`` (returns, advantages, minibatch epochs; metrics as
    tensors) runs on it with the value of the observations the next rollout starts from, and the
    storage starts over. ``updates`` counts rollouts learned from."""

    kind = "on-policy"

    def __init__(self, steps: int, storage, make_collector: Callable[[], Any], name: str = "on-policy"):
        super().__init__(name, steps, make_collector)
        self.storage = storage

    def begin(self, run: "Run") -> None:
        super().begin(run)
        self.collector.sinks.append(run.agent.rollout_sink(self.storage))

    def advance(self, run: "Run") -> int:
        self.collector.step(run.agent.rollout_action)
        if self.storage.full:
            run.acc.add(run.agent.learn(self.storage, run.agent.state_value(self.collector.obs)))
            self.storage.reset()
            self.updates += 1
        return self.collector.num_envs

    def state_dict(self) -> dict:
        return {**super().state_dict(), "storage": self.storage.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.storage.load_state_dict(state["storage"])


class Run:
    """One training run: ``Run(...).execute()`` runs the phases and returns the summary.

    Args:
        cfg: the run's config (RunConfig fields: log/eval/checkpoint cadence, progress, resume).
        agent: the agent all phases train.
        phases: the phases, in order.
        evaluator: the :class:`Evaluator` (``env_id`` None: no evaluation).
        run_dir: output directory (created when the run starts).
        meta: what ``config.json`` holds (algo, config, dataset summary, env, device, torch).
        parts: stateful objects shared by phases (the replay buffer), checkpointed by name.
        ckpt: a checkpoint to resume from, or None.
        checkpoint_extra: stored in every checkpoint (dataset id, evaluation env and reference scores).
        desc: progress-bar label.
        summary_extra: leading keys of the summary (algo, dataset, env).
    """

    def __init__(self, cfg, agent, phases: list[Phase], evaluator: Evaluator, run_dir: str, meta: dict,
                 parts: dict[str, Any] | None = None, ckpt: dict | None = None, checkpoint_extra: dict | None = None,
                 desc: str = "train", summary_extra: dict | None = None):
        self.cfg, self.agent, self.phases, self.evaluator = cfg, agent, phases, evaluator
        self.run_dir, self.meta, self.parts = run_dir, meta, dict(parts or {})
        self.checkpoint_extra = checkpoint_extra or {}
        self.summary_extra = summary_extra or {}
        self.summary_updates: list[Callable[[], dict]] = []
        """Called at the end of :meth:`execute`; each returns keys added to the summary (after the
        common ones) before ``summary.json`` is written, e.g. an algorithm's own evaluation."""
        self.desc = desc
        self.step = 0
        self.phase_index = 0
        self.phase_start = 0
        self.results: list[dict] = []
        self.seconds_before = 0.0  # training-loop seconds of earlier invocations (a resumed run)
        self.acc = MetricAccumulator()
        self.ckpt_path = os.path.join(run_dir, "checkpoint.pt")
        if getattr(cfg, "cuda_graph", False):
            from offrl.graphs import GraphedUpdate

            self.update = GraphedUpdate(agent)
        else:
            self.update = agent.compiled_update() if cfg.compile else agent.update
        self._resume: dict | None = None
        self._t_start: float | None = None
        if ckpt is not None:
            self._restore(ckpt)

    @property
    def total(self) -> int:
        """Planned global steps (online phases may end a few env steps past their length)."""
        return sum(p.steps for p in self.phases)

    @property
    def updates(self) -> int:
        done = sum(r["updates"] for r in self.results)
        running = len(self.results) == self.phase_index < len(self.phases)  # the current phase is not in results yet
        return done + (self.phases[self.phase_index].updates if running else 0)

    # ------------------------------------------------------------------ state
    def _restore(self, ckpt: dict) -> None:
        t = ckpt["train"]
        names = [p.name for p in self.phases]
        if "phases" not in t:
            raise OffrlError(f"{self.cfg.resume} was written before offrl's run lifecycle: it loads for acting "
                             "and evaluation, but cannot be resumed")
        if names[: len(t["phases"])] != t["phases"]:  # phases may be appended (e.g. --online-steps later)
            raise OffrlError(f"{self.cfg.resume} was trained with phases {t['phases']}, this run has {names}")
        self.agent.load_training_state(ckpt)
        self.step, self.phase_index, self.phase_start = int(t["step"]), int(t["phase"]), int(t["phase_start"])
        self.results = list(t["results"])
        self.seconds_before = float(t.get("seconds", 0.0))  # older checkpoints: unknown, 0
        parts = t["parts"]
        phase_state = parts["phase"]
        if t.get("phase_done"):  # saved at the end of phase_index
            last = self.results[-1]
            if self.phases[self.phase_index].steps > last["steps"]:  # made longer on resume: go on with it
                self.results.pop()
            else:  # start the next phase
                self.phase_index, self.phase_start, phase_state = self.phase_index + 1, self.step, None
        if self.phase_index >= len(self.phases):
            raise OffrlError(f"{self.cfg.resume} is a finished run (step {self.step}); "
                             "pass more steps to continue it")
        for name, obj in self.parts.items():
            if name not in parts:
                raise OffrlError(f"{self.cfg.resume} has no '{name}' state: it was trained with other flags")
            obj.load_state_dict(parts[name])
        self.acc.load_state_dict(parts["metrics"], self.agent.device)
        self.evaluator.load_state_dict(parts["evaluator"])
        self._resume = {"phase": phase_state, "rng": parts["rng"]}

    def save(self, phase_state: dict, done: bool = False) -> None:
        """Checkpoint now, inside phase ``phase_index`` (``done``: at its end; a resume starts the
        next phase, or goes on with this one if it was made longer)."""
        parts = {name: obj.state_dict() for name, obj in self.parts.items()}
        parts.update(metrics=self.acc.state_dict(), rng=rng_state(self.agent.device), evaluator=self.evaluator.state_dict(),
                     phase=phase_state)
        train = {"step": self.step, "phase": self.phase_index, "phase_done": done, "phase_start": self.phase_start,
                 "phases": [p.name for p in self.phases], "results": self.results, "parts": parts,
                 "seconds": self.seconds_before + (time.time() - self._t_start if self._t_start else 0.0)}
        self.agent.save(self.ckpt_path, train=train, **self.checkpoint_extra)

    # ------------------------------------------------------------------ loop
    def _log(self, phase: Phase, clock: list) -> None:
        self.logger.log(self.step, self.acc.pop(), prefix="train/")
        for prefix, row in phase.log_rows().items():
            self.logger.log(self.step, row, prefix=prefix)
        now = time.time()
        sps = (self.step - clock[1]) / max(now - clock[0], 1e-9)
        self.logger.log(self.step, {"updates": self.updates, "sps": sps}, prefix="time/")
        clock[:] = [now, self.step]
        self.logger.advance(self.step)

    def _evaluate(self, phase: Phase) -> None:
        t = time.time()
        scalars = self.evaluator(self.agent, self.step)
        if phase.kind != "offline":  # running regret over this phase's evaluations (offrl's normalized-score analogue)
            regret = normalized_regret(self.evaluator.between(self.phase_start))
            if regret is not None:
                scalars["normalized_regret"] = regret
        self.logger.log(self.step, {**scalars, "seconds": time.time() - t}, prefix="eval/")

    def _run_phase(self, phase: Phase, stop: StopSignals, clock: list) -> None:
        """Advance ``phase`` to its end: log, evaluate and checkpoint on interval crossings."""
        cfg = self.cfg
        end = self.phase_start + phase.steps
        while self.step < end:
            prev = self.step
            self.step = prev + phase.advance(self)
            last = self.step >= end
            if crossed(prev, self.step, cfg.log_every) or last:
                self._log(phase, clock)
            if phase.evaluates and (self.evaluator.due(prev, self.step) or (last and self.evaluator.enabled)):
                self._evaluate(phase)
            if last:
                return
            if stop.save_now() or crossed(prev, self.step, cfg.checkpoint_every) or stop.requested:
                self.save(phase.state_dict())
                self.logger.flush()
            if stop.requested:
                raise stop.interrupted(self.step, self.ckpt_path)

    def _phase_result(self, phase: Phase) -> dict:
        """The phase's line of the summary: its steps and updates, the last evaluation (for a phase that
        does not evaluate, the last one before it), and the mean normalized score (and, for an env
        phase, the normalized regret) over its evaluations."""
        evals = self.evaluator.between(self.phase_start, self.step)
        if phase.evaluates:
            final = {k: v for k, v in self.evaluator.last.items() if not isinstance(v, list)}
        else:  # from the checkpointed history: a resume inside this phase has no `last`
            before = self.evaluator.between(-1, self.step)
            final = before[-1] if before else {}
        result = {"name": phase.name, "kind": phase.kind, "steps": self.step - self.phase_start,
                  "updates": phase.updates, "end_step": self.step, "final_return": final.get("return_mean"),
                  "final_normalized_score": final.get("normalized_score"), "evaluations": len(evals),
                  "mean_normalized_score": mean_normalized_score(evals)}
        if phase.kind != "offline":
            result["normalized_regret"] = normalized_regret(evals)
        return result

    def execute(self) -> dict:
        os.makedirs(self.run_dir, exist_ok=True)
        write_json(os.path.join(self.run_dir, "config.json"), json_safe(self.meta))
        from offrl.tracking import start_wandb

        wandb = start_wandb(self.cfg, self.run_dir, json_safe(self.meta))
        self.logger = Logger(self.run_dir, self.total, self.step, self.cfg.progress, desc=self.desc,
                             heartbeat_seconds=self.cfg.heartbeat_seconds, sinks=[wandb] if wandb else [])
        self.logger.start_line(self._start_line())
        if self.evaluator.note:
            self.logger.write(self.evaluator.note)
        t_start = self._t_start = time.time()
        clock = [t_start, self.step]
        self.agent.train()
        try:
            with StopSignals() as stop:
                for index in range(self.phase_index, len(self.phases)):
                    phase = self.phases[index]
                    self.phase_index = index
                    self.logger.phase = phase.name
                    # runs of several phases at different speeds (Uni-O4: critic, dynamics, ...): a per-phase ETA
                    self.logger.phase_end = self.phase_start + phase.steps if len(self.phases) > 1 else None
                    self.agent.begin_phase(phase.kind, phase.steps)
                    try:
                        phase.begin(self)
                        if self._resume is not None:
                            if self._resume["phase"] is not None:  # resuming inside this phase
                                phase.load_state_dict(self._resume["phase"])
                            set_rng_state(self._resume["rng"], self.agent.device)  # as saved, after the phase's own setup
                            self._resume = None
                        self._run_phase(phase, stop, clock)
                        self.results.append(self._phase_result(phase))
                        stop.save_now()
                        self.save(phase.state_dict(), done=True)  # every phase end
                        self.logger.flush()
                    finally:
                        phase.end(self)
                    self.phase_index, self.phase_start = index + 1, self.step
                    if stop.requested and index + 1 < len(self.phases):
                        raise stop.interrupted(self.step, self.ckpt_path)
        finally:
            self.logger.close()
        elapsed = time.time() - t_start
        last = self.results[-1]
        o2o = o2o_scores(self.results)
        summary = json_safe({
            **self.summary_extra,
            "steps": self.step,
            "updates": self.updates,
            "phases": self.results,
            "run_dir": self.run_dir,
            "checkpoint": self.ckpt_path,
            "seconds": elapsed,
            "total_seconds": self.seconds_before + elapsed,
            "final_return": last["final_return"],
            "final_normalized_score": last["final_normalized_score"],
            "best_return": self.evaluator.best_return,
            "best_normalized_score": self.evaluator.best_normalized_score,
            **o2o,
        })
        for fn in self.summary_updates:
            summary.update(json_safe(fn()))
        write_json(os.path.join(self.run_dir, "summary.json"), summary)
        return summary

    def _start_line(self) -> str:
        m = self.meta
        data = m.get("dataset")
        where = f"dataset {data['id']} ({data['transitions']:,} transitions)" if data else f"env {m.get('env_id')}"
        phases = " → ".join(f"{p.name} {p.steps:,}" for p in self.phases)
        return f"{m.get('algo')} | {where} | {phases} steps | device {m.get('device')} | run {self.run_dir}"
