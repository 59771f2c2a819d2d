"""Sweeps: a grid of training runs, run locally by a pool of worker processes, resumable.

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

    @property
    def name(self) -> str:
        return f"{self.algo}/{self.target.replace('/', '_')}/seed{self.seed}"

    def state(self) -> str:
        """``done`` (summary.json), ``partial`` (a checkpoint to resume) or ``new``."""
        if os.path.isfile(os.path.join(self.run_dir, "summary.json")):
            return "done"
        if os.path.isfile(os.path.join(self.run_dir, "checkpoint.pt")):
            return "partial"
        return "new"

    def command(self) -> list[str]:
        """The ``offrl train`` command line that starts the run, or resumes it from its checkpoint."""
        base = [sys.executable, "-m", "offrl.cli", "train", self.algo]
        if self.state() == "partial":
            return base + ["--resume", os.path.join(self.run_dir, "checkpoint.pt")]
        where = "--dataset" if _kind(self.algo) == "offline" else "--env"
        return base + [where, self.target, "--seed", str(self.seed), "--run-dir", self.run_dir, *self.flags]


def _kind(algo: str) -> str:
    from offrl.registry import get

    return get(algo).kind


def _config_fields(algo: str) -> dict[str, object]:
    """Field name → annotation of the algorithm's config."""
    from offrl.registry import get

    return {f.name: f.type for f in dataclasses.fields(get(algo).config)}


def _check_flags(algo: str, flags: list[str]) -> None:
    """Parse ``flags`` with the algorithm's config now, so a bad value fails before any run starts."""
    import contextlib
    import io

    from offrl.cli import parse_config
    from offrl.registry import get

    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text), contextlib.redirect_stdout(text):
            parse_config(get(algo).config, flags, prog=f"offrl train {algo}")
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
         steps: int | None = None, sets: dict[str, str] | None = None, threads: int = 1) -> list[RunSpec]:
    """The grid, in order algorithm → dataset/env → seed. Offline algorithms take ``datasets``, the
    others ``envs``; every ``sets`` key must be a flag of every algorithm it is passed to."""
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
        flags = []
        for key, value in sets.items():
            if key == "steps" and not offline and "steps" not in fields:
                key = "total_steps"  # online/on-policy budgets are env steps
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
        _check_flags(algo, flags)
        for target in targets:
            for seed in seeds:
                spec = RunSpec(algo, target, seed, flags)
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


def _run_one(spec: RunSpec, log_path: str, env: dict, children: dict) -> tuple[int, float, dict | None]:
    t = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(spec.command())}\n")
        log.flush()
        proc = subprocess.Popen(spec.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        children[spec.name] = proc
        try:
            rc = proc.wait()
        finally:
            children.pop(spec.name, None)
    summary = None
    path = os.path.join(spec.run_dir, "summary.json")
    if rc == 0 and os.path.isfile(path):
        with open(path) as f:
            summary = json.load(f)
    return rc, time.time() - t, summary


def _echo(line: str) -> None:
    print(line, flush=True)  # a sweep's log is usually a file: one line as it happens


def run_sweep(runs: list[RunSpec], out: str, workers: int, threads: int, echo=_echo) -> dict:
    """Run the ``runs`` not yet finished on ``workers`` processes; returns counts and failures.
    One sweep at a time per directory (a lock file); SIGINT/SIGTERM stop it: no new runs start and
    the running ones checkpoint and exit, to be resumed by the next call."""

    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    lock = open(os.path.join(out, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OffrlError(f"another sweep is running on {out}") from None
    try:
        return _run_locked(runs, out, workers, threads, echo)
    finally:
        lock.close()


def _run_locked(runs: list[RunSpec], out: str, workers: int, threads: int, echo) -> dict:
    from offrl.data import load_dataset

    write_json(os.path.join(out, "plan.json"), {"runs": [
        {"name": r.name, "algo": r.algo, "target": r.target, "seed": r.seed, "flags": r.flags, "run_dir": r.run_dir}
        for r in runs]})
    todo = [r for r in runs if r.state() != "done"]
    for dataset in sorted({r.target for r in todo if _kind(r.algo) == "offline"}):
        load_dataset(dataset)  # build or check once, before any worker starts
    done = len(runs) - len(todo)
    echo(f"sweep {out}: {len(runs)} runs, {done} finished, {sum(r.state() == 'partial' for r in todo)} to resume, "
         f"{sum(r.state() == 'new' for r in todo)} to start | {workers} workers × {threads} threads")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    failures, t0, finished_now = [], time.time(), 0
    children: dict[str, subprocess.Popen] = {}
    stopping: list[int] = []

    def forward(signum, frame):  # stop: no new runs; running ones checkpoint and exit (offrl's stop signals)
        stopping.append(signum)
        for proc in list(children.values()):
            proc.send_signal(signum)

    handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: dict[Future, RunSpec] = {}
            queue = list(todo)
            while (queue and not stopping) or pending:
                while queue and not stopping and len(pending) < workers:
                    spec = queue.pop(0)
                    log = os.path.join(out, "logs", spec.name.replace("/", "_") + ".log")
                    pending[pool.submit(_run_one, spec, log, env, children)] = spec
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    spec = pending.pop(fut)
                    rc, seconds, summary = fut.result()
                    finished_now += 1
                    if rc == 0 and summary is not None:
                        score = summary.get("final_normalized_score")
                        ret = summary.get("final_return")
                        what = f"final score {score:.1f}" if score is not None else (
                            f"final return {ret:.1f}" if ret is not None else "no evaluation")
                        echo(f"done {spec.name}: {what} ({_fmt_seconds(seconds)})")
                    elif stopping:
                        echo(f"stopped {spec.name} (it resumes from its checkpoint next time)")
                    else:
                        log = os.path.join(out, "logs", spec.name.replace("/", "_") + ".log")
                        failures.append({"name": spec.name, "rc": rc, "log": log})
                        echo(f"FAILED {spec.name} (exit {rc}): {_last_line(log)}")
                    left = len(queue) + len(pending)
                    eta = (time.time() - t0) / finished_now * left  # runs finish about workers at a time
                    echo(f"[{len(runs) - left}/{len(runs)}] {len(failures)} failed | elapsed "
                         f"{_fmt_seconds(time.time() - t0)} | ETA {_fmt_seconds(eta)}")
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
    p.add_argument("--workers", type=int, default=None, help="parallel runs (default: cores // threads)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the state of each run; run nothing")
    p.add_argument("--track", action="store_true",
                   help="log every run to Weights & Biases, grouped by the sweep's name (its --out folder)")
    a = p.parse_args(argv)
    if a.threads < 1:
        raise OffrlError(f"--threads must be >= 1, got {a.threads}")
    cores = os.cpu_count() or 1
    workers = a.workers if a.workers is not None else max(1, cores // a.threads)
    if workers < 1:
        raise OffrlError(f"--workers must be >= 1, got {workers}")
    sets = parse_sets(a.sets)
    if a.track:
        sets.setdefault("track", "True")
        sets.setdefault("wandb_group", os.path.basename(os.path.normpath(a.out)))
    runs = plan(a.algos, expand_datasets(a.datasets), a.envs, a.seeds, a.out, a.steps, sets, a.threads)
    if a.dry_run:
        for r in runs:
            print(f"{r.state():8s} {r.name}  {shlex.join(r.command()[2:])}")
        return 0
    result = run_sweep(runs, a.out, workers, a.threads)
    print(json.dumps(result))
    if result["interrupted"]:
        print(f"sweep {a.out} stopped; run the same command again to resume it", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0
