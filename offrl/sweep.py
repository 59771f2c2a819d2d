"""Sweeps: a grid of training runs, run by local worker processes or on Ray, resumable.

    offrl sweep --algos iql td3_bc --datasets 'offrl/*/medium*-v0' --seeds 0 1 2 --steps 100000 --out sweeps/NAME
    offrl sweep --algos ppo props --envs Hopper-v5 --seeds 0 1 2 --set total_steps=1000000 --out sweeps/onpolicy

The grid is algorithms × datasets (offline algorithms; shell-style patterns over the known dataset
ids) or algorithms × envs (online and on-policy algorithms) × seeds, each run in its own directory
``OUT/<algo>/<dataset or env, "/" → "_">/seed<k>``. ``--set key=value`` passes ``--key value`` to
every run (checked against each algorithm's flags before anything starts). The expanded grid is
written to ``OUT/plan.json``.

Re-running the same command **skips finished runs** (a ``summary.json`` in the run directory) and
**resumes interrupted ones** from their ``checkpoint.pt`` — exactly, as single runs resume — so a
long sweep survives a stop or a reboot. The datasets are built or checked once, in this process,
before any worker starts. Workers × ``--threads`` never exceeds the machine's cores unless asked
(``--workers``). Each finished run prints one line; a progress line with the ETA follows. Each run's
output goes to ``OUT/logs/<name>.log``. A failed run is reported with the last line of its log, the
others go on, and the sweep exits non-zero.

``--executor ray`` (the ``offrl[ray]`` extra) runs the same grid on Ray instead of local worker
processes: each run is one Ray task asking for ``--threads`` CPUs, which runs the very command a
local worker runs, with the same log, skip/resume, output and stop semantics. ``--ray-address`` picks
an existing cluster (default: ``auto`` when ``RAY_ADDRESS`` is set, else a Ray instance started here
with ``--workers × --threads`` CPUs). Every node must see ``OUT`` and the datasets at the same paths
(a shared filesystem) and have offrl installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import fnmatch
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from offrl.errors import OffrlError, suggest
from offrl.io import write_json


@dataclass
class RunSpec:
    """One run of the grid."""

    algo: str
    target: str  # dataset id (offline) or env id (online / on-policy)
    seed: int
    flags: list[str] = field(default_factory=list)
    run_dir: str = ""
    seeds: list[int] = field(default_factory=list)
    """Stacked seeds (``--stack-seeds``): one process trains them all, each in ``run_dir/seed<k>``."""
    asked: dict = field(default_factory=dict)
    """Config field → value this sweep asks for (its --steps and --set flags, parsed)."""

    @property
    def name(self) -> str:
        if self.seeds:
            return f"{self.algo}/{self.target.replace('/', '_')}/seeds{'-'.join(map(str, self.seeds))}"
        return f"{self.algo}/{self.target.replace('/', '_')}/seed{self.seed}"

    def _dirs(self) -> list[str]:
        return [os.path.join(self.run_dir, f"seed{s}") for s in self.seeds] if self.seeds else [self.run_dir]

    def state(self) -> str:
        """``done`` (summary.json), ``partial`` (a checkpoint to resume) or ``new`` (stacked seeds: of every seed)."""
        dirs = self._dirs()
        if all(os.path.isfile(os.path.join(d, "summary.json")) for d in dirs):
            return "done"
        if all(os.path.isfile(os.path.join(d, "checkpoint.pt")) for d in dirs):
            return "partial"
        return "new"

    def mismatches(self) -> list[tuple[str, object, object]]:
        """(field, value in the existing run's config.json, value this sweep asks) for every asked
        field the run already on disk was started with a different value of (runtime-only fields,
        such as threads and progress, do not count)."""
        out = []
        for d in self._dirs():
            path = os.path.join(d, "config.json")
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                saved = json.load(f).get("config", {})
            for key, want in self.asked.items():
                if key in RUNTIME_FIELDS or key not in saved:
                    continue
                have = saved[key]
                if (list(want) if isinstance(want, tuple) else want) != have:
                    out.append((key, have, want))
        return out

    def command(self) -> list[str]:
        """The ``offrl train`` command line that starts the run, or resumes it from its checkpoint."""
        base = [sys.executable, "-m", "offrl.cli", "train", self.algo]
        if self.seeds:
            seeds = ["--seeds", *map(str, self.seeds)]
            if self.state() == "partial":
                return base + [*seeds, "--resume", self.run_dir]
            return base + ["--dataset", self.target, *seeds, "--run-dir", self.run_dir, *self.flags]
        if self.state() == "partial":
            return base + ["--resume", os.path.join(self.run_dir, "checkpoint.pt")]
        where = "--dataset" if _kind(self.algo) == "offline" else "--env"
        return base + [where, self.target, "--seed", str(self.seed), "--run-dir", self.run_dir, *self.flags]


RUNTIME_FIELDS = {"threads", "progress", "track", "wandb_project", "wandb_group", "wandb_entity", "heartbeat_seconds",
                  "device", "compile", "cuda_graph", "env_backend", "checkpoint_every", "log_every"}
"""Config fields that do not change what a run computes: a sweep may resume a run with other values."""


def _kind(algo: str) -> str:
    from offrl.registry import get

    return get(algo).kind


def _config_fields(algo: str) -> dict[str, object]:
    """Field name → annotation of the algorithm's config."""
    from offrl.registry import get

    return {f.name: f.type for f in dataclasses.fields(get(algo).config)}


def _check_flags(algo: str, flags: list[str]):
    """Parse ``flags`` with the algorithm's config now, so a bad value fails before any run starts;
    returns the parsed config."""
    import contextlib
    import io

    from offrl.cli import parse_config
    from offrl.registry import get

    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text), contextlib.redirect_stdout(text):
            return parse_config(get(algo).config, flags, prog=f"offrl train {algo}")
    except SystemExit:
        lines = [ln.strip(" │╭╰╮╯─|+") for ln in text.getvalue().splitlines()]
        lines = [ln for ln in lines if ln.strip("-")]  # drop rules
        body = []  # tyro's message box: a title line, then the message up to the help text
        for ln in lines[1:]:
            if ln.startswith(("Got errors", "Argument helptext", "For full helptext")):
                break
            body.append(ln)
        why = " ".join(body) or (lines[0] if lines else "invalid flags")
        raise OffrlError(f"--set for {algo}: {why} (flags: {shlex.join(flags)})") from None


def expand_datasets(patterns: list[str]) -> list[str]:
    """Known dataset ids matching each shell-style pattern, sorted (a plain id is kept as given); in order,
    without repeats. A pattern matching nothing is an error."""
    from offrl.data.registry import list_datasets

    known = [info.id for info in list_datasets()]
    out: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            hits = [pattern]
        else:
            hits = sorted(d for d in known if fnmatch.fnmatchcase(d, pattern))
            if not hits:
                raise OffrlError(f"--datasets {pattern!r} matches no known dataset" + suggest(pattern, known))
        out += [h for h in hits if h not in out]
    return out


def parse_sets(items: list[str]) -> dict[str, str]:
    """``key=value`` pairs (``key`` as a config field name, dashes allowed)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OffrlError(f"--set expects key=value, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def plan(algos: list[str], datasets: list[str], envs: list[str], seeds: list[int], out: str,
         steps: int | None = None, sets: dict[str, str] | None = None, threads: int = 1,
         stack_seeds: bool = False) -> list[RunSpec]:
    """The grid, in order algorithm → dataset/env → seed. Offline algorithms take ``datasets``, the
    others ``envs``; every ``sets`` key must be a flag of every algorithm it is passed to. With
    ``stack_seeds`` an algorithm that supports it (``Agent.stackable``) trains all seeds of a
    dataset in one process (:mod:`offrl.stacked`); the run directories are the same."""
    from offrl.registry import algorithms

    known = algorithms()
    sets = dict(sets or {})
    if steps is not None:
        sets.setdefault("steps", str(steps))
    sets.setdefault("threads", str(threads))
    sets.setdefault("progress", "False")
    runs = []
    for algo in algos:
        if algo not in known:
            raise OffrlError(f"unknown algorithm '{algo}'" + suggest(algo, list(known)))
        offline = _kind(algo) == "offline"
        targets = datasets if offline else envs
        if not targets:
            raise OffrlError(f"{algo} is {'an offline' if offline else 'an online'} algorithm: give "
                             f"{'--datasets' if offline else '--envs'}")
        fields = _config_fields(algo)
        flags, keys = [], []
        for key, value in sets.items():
            if key == "steps" and not offline and "steps" not in fields:
                key = "total_steps"  # online/on-policy budgets are env steps
            keys.append(key)
            if key not in fields:
                raise OffrlError(f"--set {key}: {algo} has no such flag" + suggest(key, sorted(fields)))
            flag = key.replace("_", "-")
            if fields[key] in (bool, "bool"):  # a plain bool field is a switch: --key / --no-key
                on = value.strip().lower() in ("true", "1", "yes", "on")
                if not on and value.strip().lower() not in ("false", "0", "no", "off"):
                    raise OffrlError(f"--set {key}={value}: expected True or False")
                flags.append(f"--{flag}" if on else f"--no-{flag}")
            else:
                flags += [f"--{flag}", *shlex.split(value)]
        parsed = _check_flags(algo, flags)
        asked = {key: getattr(parsed, key) for key in keys}
        if stack_seeds and len(seeds) > 1 and getattr(known[algo].agent, "stackable", False):
            for target in targets:
                spec = RunSpec(algo, target, seeds[0], flags, seeds=list(seeds), asked=asked)
                spec.run_dir = os.path.join(out, algo, target.replace("/", "_"))
                runs.append(spec)
            continue
        for target in targets:
            for seed in seeds:
                spec = RunSpec(algo, target, seed, flags, asked=asked)
                spec.run_dir = os.path.join(out, spec.name)
                runs.append(spec)
    return runs


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return lines[-1] if lines else "(no output)"
    except OSError:
        return "(no log)"


def _log_path(out: str, spec: RunSpec) -> str:
    return os.path.join(out, "logs", spec.name.replace("/", "_") + ".log")


def _run_one(spec: RunSpec, log_path: str, env: dict, children: dict | None = None, stop_signals=None,
             cwd: str | None = None) -> tuple[int, float, dict | None]:
    """Run (or resume) ``spec`` in a subprocess, its output appended to ``log_path``; returns (exit code,
    seconds, summary or None). The local executor registers the process in ``children`` and forwards
    signals to it itself; a Ray task passes ``stop_signals`` (a callable: the stop signals the sweep got
    so far), polled while the run goes on and forwarded to it, each once."""
    t = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(spec.command())}\n")
        log.flush()
        # a run gets signals from the sweep only (which forwards each once), never a terminal's Ctrl-C
        # on top: a second SIGINT would mean "stop now, no final checkpoint" to offrl
        proc = subprocess.Popen(spec.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        if children is not None:
            children[spec.name] = proc
        try:
            rc = proc.wait() if stop_signals is None else _wait_forwarding(proc, stop_signals)
        finally:
            if children is not None:
                children.pop(spec.name, None)
    summary = None
    paths = [os.path.join(d, "summary.json") for d in spec._dirs()]
    if rc == 0 and all(os.path.isfile(p) for p in paths):
        summaries = []
        for p in paths:
            with open(p) as f:
                summaries.append(json.load(f))
        summary = summaries[0]
        if spec.seeds:  # stacked seeds: the mean over the seeds for the progress line
            def mean(key):
                values = [x.get(key) for x in summaries]
                return None if any(v is None for v in values) else sum(values) / len(values)

            summary = {"final_normalized_score": mean("final_normalized_score"), "final_return": mean("final_return"),
                       "seeds": len(summaries)}
    return rc, time.time() - t, summary


_POLL_S = 0.5  # how often a Ray task looks for a stop signal, and the sweep for finished tasks


def _wait_forwarding(proc: subprocess.Popen, stop_signals) -> int:
    sent = 0
    while True:
        try:
            return proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        signals = stop_signals()
        for signum in signals[sent:]:
            proc.send_signal(signum)
        sent = len(signals)


class _LocalExecutor:
    """Runs on a pool of threads, each waiting for one run's subprocess."""

    def __init__(self, workers: int, threads: int):
        self.slots = max(1, workers)
        self.describe = f"{workers} workers × {threads} threads"
        self._env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self._children: dict[str, subprocess.Popen] = {}
        self._pool: ThreadPoolExecutor | None = None

    def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.slots)

    def submit(self, spec: RunSpec, log: str) -> Future:
        return self._pool.submit(_run_one, spec, log, self._env, self._children)

    def wait(self, handles: list) -> list:
        return list(wait(handles, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Future, log: str):
        return handle.result()

    def forward(self, signum: int) -> None:  # called from the signal handler
        for proc in list(self._children.values()):
            proc.send_signal(signum)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


RAY_MISSING = "--executor ray needs Ray: pip install 'offrl[ray]'"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise OffrlError(RAY_MISSING) from None
    return ray


class _StopSignals:
    """A Ray actor: the stop signals the sweep got, for its tasks to forward to their runs."""

    def __init__(self):
        self.signals: list[int] = []

    def add(self, signals: list[int]) -> None:
        self.signals += signals

    def get(self) -> list[int]:
        return self.signals


# the sweep's variables a run on another node needs too: where the datasets are (and WANDB_*)
_FORWARD_ENV = ("MINARI_DATASETS_PATH", "D4RL_DATASET_DIR")


def _ray_task(spec: RunSpec, log: str, env: dict, cwd: str, stop) -> tuple | None:
    """One run as a Ray task: ``_run_one`` on the node, the sweep's stop signals forwarded to the run;
    None if the sweep was stopping before the task started."""
    import ray

    def stop_signals() -> list[int]:
        return ray.get(stop.get.remote())

    if stop_signals():
        return None
    return _run_one(spec, log, {**os.environ, **env}, stop_signals=stop_signals,
                    cwd=cwd if os.path.isdir(cwd) else None)


class _RayExecutor:
    """Runs each run as a Ray task asking for ``threads`` CPUs, on an existing cluster (``address``) or on
    a Ray instance started here with ``workers × threads`` CPUs. ``workers`` (or None: no cap) bounds the
    runs in flight."""

    def __init__(self, workers: int | None, threads: int, address: str | None, gpus: float = 0.0):
        self._ray = _import_ray()
        self.threads, self.address, self.gpus = threads, address, float(gpus)
        self.slots = workers if workers is not None else 1 << 30
        self._cpus = (workers or max(1, (os.cpu_count() or 1) // threads)) * threads
        self._per_run = f"{threads} CPU{'s' if threads > 1 else ''}" + (f" and {gpus:g} GPU" if gpus else "") + " per run"
        self.describe = f"Ray ({address or f'local, {self._cpus} CPUs'}), {self._per_run}"
        self._started = False
        self._signals: list[int] = []
        self._sent = 0
        self._stop = self._task = None

    def open(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            import logging

            common = dict(log_to_driver=False, logging_level=logging.WARNING)
            if self.address is None:
                ray.init(address="local", num_cpus=self._cpus, include_dashboard=False, **common)
            else:
                try:
                    ray.init(address=self.address, **common)
                except ConnectionError as e:
                    why = (str(e).strip().splitlines() or ["no answer"])[0]
                    raise OffrlError(f"--executor ray: cannot connect to Ray at {self.address}: {why}") from None
            self._started = True
        self.describe = (f"Ray ({ray.get_runtime_context().gcs_address}, {ray.cluster_resources().get('CPU', 0):g} "
                         f"CPUs), {self._per_run}")
        self._stop = ray.remote(num_cpus=0)(_StopSignals).remote()
        self._task = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0)(_ray_task)
        self._env = {k: v for k, v in os.environ.items() if k in _FORWARD_ENV or k.startswith("WANDB_")}
        self._env["OMP_NUM_THREADS"] = str(self.threads)

    def submit(self, spec: RunSpec, log: str):
        spec = dataclasses.replace(spec, run_dir=os.path.abspath(spec.run_dir))  # the node's cwd is not ours
        return self._task.remote(spec, os.path.abspath(log), self._env, os.getcwd(), self._stop)

    def wait(self, handles: list) -> list:
        if len(self._signals) > self._sent:  # signals come in between polls: tell the tasks, from here
            new, self._sent = self._signals[self._sent:], len(self._signals)
            self._ray.get(self._stop.add.remote(new))
        return self._ray.wait(handles, num_returns=1, timeout=_POLL_S)[0]

    def result(self, handle, log: str):
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayError as e:  # the task itself failed (a lost node, offrl missing there)
            why = (str(e).strip().splitlines() or [""])[0]
            with open(log, "a") as f:  # where the sweep reports a failure from
                f.write(f"Ray task failed: {type(e).__name__}: {why}\n")
            return None, 0.0, None

    def forward(self, signum: int) -> None:  # called from the signal handler: no Ray calls here
        self._signals.append(signum)

    def close(self) -> None:
        if self._stop is not None:
            self._ray.kill(self._stop)
        if self._started:
            self._ray.shutdown()


def _echo(line: str) -> None:
    print(line, flush=True)  # a sweep's log is usually a file: one line as it happens


def run_sweep(runs: list[RunSpec], out: str, workers: int | None, threads: int, echo=_echo,
              executor: str = "local", ray_address: str | None = None, gpus_per_run: float = 0.0) -> dict:
    """Run the ``runs`` not yet finished on ``workers`` processes (``executor="local"``) or as Ray tasks
    (``"ray"``: on the cluster at ``ray_address``, or on a Ray instance started here; ``workers`` None: no
    cap on the runs in flight); returns counts and failures. One sweep at a time per directory (a lock
    file); SIGINT/SIGTERM stop it: no new runs start and the running ones checkpoint and exit, to be
    resumed by the next call."""
    if executor == "ray":
        pool = _RayExecutor(workers, threads, ray_address, gpus_per_run)
    elif executor == "local":
        pool = _LocalExecutor(workers or max(1, (os.cpu_count() or 1) // threads), threads)
    else:
        raise OffrlError(f"unknown executor {executor!r}, expected local or ray")

    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    lock = open(os.path.join(out, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OffrlError(f"another sweep is running on {out}") from None
    try:
        return _run_locked(runs, out, pool, echo)
    finally:
        lock.close()


def check_existing(runs: list[RunSpec]) -> None:
    """One-line error when a run already on disk was started with other flags than this sweep asks
    (a finished run would be counted as done, a partial one resumed with its old flags)."""
    bad = [(r, m) for r in runs for m in r.mismatches()]
    if bad:
        r, (key, have, want) = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise OffrlError(f"{r.run_dir} was started with {key}={have!r}, this sweep asks {key}={want!r}{more}: "
                         "use another --out, or remove those runs")


def _run_locked(runs: list[RunSpec], out: str, pool, echo) -> dict:
    from offrl.data import load_dataset

    check_existing(runs)

    write_json(os.path.join(out, "plan.json"), {"runs": [
        {"name": r.name, "algo": r.algo, "target": r.target, "seed": r.seed, "flags": r.flags, "run_dir": r.run_dir}
        for r in runs]})
    todo = [r for r in runs if r.state() != "done"]
    for dataset in sorted({r.target for r in todo if _kind(r.algo) == "offline"}):
        load_dataset(dataset)  # build or check once, before any worker starts
    done = len(runs) - len(todo)
    failures, finished_now = [], 0
    stopping: list[int] = []

    def forward(signum, frame):  # stop: no new runs; running ones checkpoint and exit (offrl's stop signals)
        stopping.append(signum)
        pool.forward(signum)

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    handlers = {s: signal.signal(s, forward) for s in stop_signals}
    try:
        if todo:
            pool.open()
            for s in stop_signals:  # again: starting Ray sets its own SIGTERM handler
                signal.signal(s, forward)
        echo(f"sweep {out}: {len(runs)} runs, {done} finished, {sum(r.state() == 'partial' for r in todo)} to resume, "
             f"{sum(r.state() == 'new' for r in todo)} to start | {pool.describe}")
        t0 = time.time()
        pending: dict = {}
        queue = list(todo)
        while (queue and not stopping) or pending:
            while queue and not stopping and len(pending) < pool.slots:
                spec = queue.pop(0)
                pending[pool.submit(spec, _log_path(out, spec))] = spec
            for handle in pool.wait(list(pending)):
                spec = pending.pop(handle)
                log = _log_path(out, spec)
                outcome = pool.result(handle, log)
                if outcome is None:  # a Ray task that found the sweep stopping: the run never started
                    continue
                rc, seconds, summary = outcome
                finished_now += 1
                if rc == 0 and summary is not None:
                    score = summary.get("final_normalized_score")
                    ret = summary.get("final_return")
                    what = f"final score {score:.1f}" if score is not None else (
                        f"final return {ret:.1f}" if ret is not None else "no evaluation")
                    echo(f"done {spec.name}: {what} ({_fmt_seconds(seconds)})")
                elif stopping and rc is not None:
                    echo(f"stopped {spec.name} (it resumes from its checkpoint next time)")
                else:  # rc None: the Ray task failed, not the run (its log's last line says why)
                    failures.append({"name": spec.name, "rc": rc, "log": log})
                    echo(f"FAILED {spec.name} ({'Ray task' if rc is None else f'exit {rc}'}): {_last_line(log)}")
                left = len(queue) + len(pending)
                eta = (time.time() - t0) / finished_now * left  # runs finish about workers at a time
                echo(f"[{len(runs) - left}/{len(runs)}] {len(failures)} failed | elapsed "
                     f"{_fmt_seconds(time.time() - t0)} | ETA {_fmt_seconds(eta)}")
    finally:
        try:
            pool.close()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
    return {"out": out, "runs": len(runs), "finished_before": done, "ran": finished_now,
            "failed": failures, "interrupted": bool(stopping), "seconds": time.time() - t0}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="offrl sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", required=True, help="algorithm names (offrl train --help lists them)")
    p.add_argument("--datasets", nargs="+", default=[], help="dataset ids or shell patterns, for offline algorithms")
    p.add_argument("--envs", nargs="+", default=[], help="Gymnasium env ids, for online and on-policy algorithms")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=None, help="training budget of every run (offline: --steps; others: --total-steps)")
    p.add_argument("--set", dest="sets", nargs="+", default=[], metavar="KEY=VALUE", help="a flag for every run")
    p.add_argument("--out", required=True, help="the sweep directory")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel runs (default: cores // threads; with --executor ray on a cluster: no cap)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes (default), or one Ray task per run (pip install 'offrl[ray]')")
    p.add_argument("--ray-address", "--address", dest="ray_address", default=None, metavar="ADDR",
                   help="with --executor ray: the cluster to use (default: auto if RAY_ADDRESS is set, "
                        "else a Ray instance started here with workers × threads CPUs)")
    p.add_argument("--stack-seeds", action="store_true",
                   help="algorithms that support it (iql, td3_bc, prdc, a2pr) train all --seeds of a dataset in one process, "
                        "networks stacked over the seeds (pays on a GPU); the others one process per seed")
    p.add_argument("--gpus-per-run", type=float, default=0.0, metavar="F",
                   help="with --executor ray: the GPU fraction each run's task asks for (e.g. 0.25: four runs per GPU; "
                        "pass --set device=cuda too)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the state of each run; run nothing")
    p.add_argument("--track", action="store_true",
                   help="log every run to Weights & Biases, grouped by the sweep's name (its --out folder)")
    a = p.parse_args(argv)
    if a.threads < 1:
        raise OffrlError(f"--threads must be >= 1, got {a.threads}")
    if a.executor == "ray":
        _import_ray()  # up front: one line, not a traceback after the planning
    elif a.ray_address is not None:
        raise OffrlError("--ray-address needs --executor ray")
    if a.gpus_per_run < 0 or (a.gpus_per_run and a.executor != "ray"):
        raise OffrlError("--gpus-per-run needs --executor ray and a value >= 0")
    ray_address = a.ray_address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    if ray_address == "local":
        ray_address = None  # start one here, as without RAY_ADDRESS
    cores = os.cpu_count() or 1
    workers = a.workers if a.workers is not None else max(1, cores // a.threads)
    if workers < 1:
        raise OffrlError(f"--workers must be >= 1, got {workers}")
    if a.executor == "ray" and a.workers is None and ray_address is not None:
        workers = None  # a cluster: Ray schedules every run by its CPUs
    sets = parse_sets(a.sets)
    if a.track:
        sets.setdefault("track", "True")
        sets.setdefault("wandb_group", os.path.basename(os.path.normpath(a.out)))
    runs = plan(a.algos, expand_datasets(a.datasets), a.envs, a.seeds, a.out, a.steps, sets, a.threads, a.stack_seeds)
    if a.dry_run:
        for r in runs:
            state = "mismatch" if r.mismatches() else r.state()
            print(f"{state:8s} {r.name}  offrl {shlex.join(r.command()[3:])}")
        return 0
    result = run_sweep(runs, a.out, workers, a.threads, executor=a.executor, ray_address=ray_address,
                       gpus_per_run=a.gpus_per_run)
    print(json.dumps(result))
    if result["interrupted"]:
        print(f"sweep {a.out} stopped; run the same command again to resume it", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0
