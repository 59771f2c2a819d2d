"""Env steps per second of offrl's whole PPO loop (env stepping, normalizers, policy forwards, GAE,
minibatch epochs), optionally against CleanRL's ``ppo_continuous_action.py`` run interleaved with it
(A B A B) on the same machine. A benchmark, not a test.

    python scripts/bench_ppo_loop.py [--env Hopper-v5] [--total-steps 40960] [--threads 1 2]
        [--setups batched:1 gymnasium:1 batched:4 batched:8] [--repeats 2] [--jsonl runs.jsonl]
        [--cleanrl PATH/ppo_continuous_action.py --cleanrl-python PY --cleanrl-env Hopper-v4]

A setup is ``BACKEND:NUM_ENVS`` (``--env-backend``, ``--num-envs``) with ``--num-steps 2048 //
NUM_ENVS``, so every setup learns from the same 2048-step rollouts (CleanRL's default, one env).
Every run is a fresh process with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (and offrl's
``--threads``) set to the thread count; offrl runs ``offrl train ppo --eval-every 0 --eval-episodes 1``
with its defaults otherwise; CleanRL runs with ``--env-id --total-timesteps --seed`` and its
defaults otherwise (no video, no wandb). For each thread count and repeat, the setups run in turn,
then CleanRL.

The rate leaves out start-up and the first rollout (imports, env and network construction, the first
calls into torch). Each process takes a mark (``time.perf_counter()``, ``time.process_time()``) at
the end of every rollout and its update: offrl when it writes a ``time/`` log row (one per
``--log-every`` 2048 env steps; the final evaluation and checkpoint come after the last one), CleanRL
when it prints its ``SPS:`` line after each iteration (a wrapper around ``print``; CleanRL's file is
run unchanged). ``sps`` = steps between the first and the last mark / wall seconds between them;
``cpu_sps`` the same per CPU second of the process (all its threads): on a machine that other work
shares, ``cpu_sps`` of one-thread runs varies less than ``sps``. ``wall_s`` is the whole process.
Prints one JSON object: every run, and per thread count and setup the medians, and with
``--cleanrl`` the median of the per-repeat ratios setup / CleanRL (``ratio_sps``, ``ratio_cpu_sps``).
``--jsonl FILE`` appends every run to FILE and summarizes all runs in it, so that a comparison can be
run in several shorter blocks (e.g. one thread count and repeat per call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROLLOUT = 2048


# Each process writes its marks [(steps, wall, cpu), ...] to the JSON file named by BENCH_MARKS at exit.
_MARKS = """
import atexit, json, os, time
marks = []
atexit.register(lambda: json.dump(marks, open(os.environ["BENCH_MARKS"], "w")))
"""
OFFRL = _MARKS + """
import sys
from offrl import run as _run
_log = _run.Run._log
def _marked(self, phase, clock):
    _log(self, phase, clock)
    marks.append((self.step, time.perf_counter(), time.process_time()))
_run.Run._log = _marked
from offrl.cli import main
sys.exit(main())
"""
CLEANRL = _MARKS + """
import builtins, runpy, sys
_print = builtins.print
def _marked(*args, **kwargs):
    if args and args[0] == "SPS:":  # printed once per iteration, after its update
        marks.append((None, time.perf_counter(), time.process_time()))
    _print(*args, **kwargs)
builtins.print = _marked
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def timed(cmd: list[str], threads: int, cwd: str | None = None) -> tuple[list, float]:
    """Run ``cmd`` with the thread count in its environment; (its marks, whole-process seconds)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        marks_path = f.name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BENCH_MARKS": marks_path}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    with open(marks_path) as f:
        marks = json.load(f)
    os.unlink(marks_path)
    if len(marks) < 2:
        raise SystemExit(f"{cmd[:4]}: fewer than two rollouts timed; give more --total-steps")
    return marks, wall


def rates(marks: list, steps: int) -> dict:
    """Steps between the first and the last mark per wall second and per CPU second."""
    (_, w0, c0), (_, w1, c1) = marks[0], marks[-1]
    return {"sps": steps / (w1 - w0), "cpu_sps": steps / (c1 - c0), "steps_timed": steps}


def run_offrl(a, backend: str, num_envs: int, threads: int, workdir: str) -> dict:
    run_dir = tempfile.mkdtemp(prefix=f"ppo-{backend}{num_envs}-t{threads}-", dir=workdir)
    cmd = [sys.executable, "-c", OFFRL, "train", "ppo",
           "--env", a.env, "--total-steps", str(a.total_steps), "--num-envs", str(num_envs),
           "--num-steps", str(ROLLOUT // num_envs), "--env-backend", backend, "--threads", str(threads),
           "--seed", str(a.seed), "--eval-every", "0", "--eval-episodes", "1", "--log-every", str(ROLLOUT),
           "--checkpoint-every", str(10 * a.total_steps), "--progress", "False", "--heartbeat-seconds", "0",
           "--run-dir", run_dir]
    marks, wall = timed(cmd, threads)
    return {"who": "offrl", "setup": f"{backend}:{num_envs}", "threads": threads,
            **rates(marks, marks[-1][0] - marks[0][0]), "wall_s": wall}


def run_cleanrl(a, threads: int) -> dict:
    script = os.path.abspath(a.cleanrl)
    cmd = [a.cleanrl_python, "-c", CLEANRL, script, "--env-id", a.cleanrl_env, "--total-timesteps",
           str(a.total_steps), "--seed", str(a.seed)]
    marks, wall = timed(cmd, threads, cwd=os.path.dirname(script))  # CleanRL writes runs/ into its folder
    return {"who": "cleanrl", "setup": "cleanrl", "threads": threads, **rates(marks, (len(marks) - 1) * ROLLOUT),
            "wall_s": wall}


def summarize(runs: list[dict]) -> dict:
    """Per thread count and setup: median sps and cpu_sps (min, max), and the median over blocks of
    the ratio to the CleanRL run of the same block."""
    out: dict = {}
    for t in sorted({r["threads"] for r in runs}):
        mine = [r for r in runs if r["threads"] == t]
        cleanrl = {r["block"]: r for r in mine if r["who"] == "cleanrl"}
        row = {}
        for setup in dict.fromkeys(r["setup"] for r in mine):
            those = [r for r in mine if r["setup"] == setup]
            entry = {"runs": len(those)}
            for key in ("sps", "cpu_sps"):
                v = [r[key] for r in those]
                entry[key] = round(statistics.median(v), 1)
                entry[f"{key}_range"] = [round(min(v), 1), round(max(v), 1)]
            paired = [(r, cleanrl[r["block"]]) for r in those if r["who"] != "cleanrl" and r["block"] in cleanrl]
            for key in ("sps", "cpu_sps") if paired else ():
                ratios = [x[key] / y[key] for x, y in paired]
                entry[f"ratio_{key}"] = round(statistics.median(ratios), 3)
                entry[f"ratios_{key}"] = [round(x, 3) for x in ratios]
            row[setup] = entry
        out[f"threads={t}"] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--total-steps", type=int, default=40960)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--setups", nargs="+", default=["batched:1", "gymnasium:1", "batched:4", "batched:8"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cleanrl", default=None, help="CleanRL's ppo_continuous_action.py, run after the setups")
    p.add_argument("--cleanrl-python", default=sys.executable, help="the interpreter for CleanRL (e.g. its own venv)")
    p.add_argument("--cleanrl-env", default=None, help="CleanRL's --env-id (default: --env)")
    p.add_argument("--jsonl", default=None, help="append every run here and summarize every run in the file")
    p.add_argument("--workdir", default=None, help="where offrl's run directories go (default: a temporary one)")
    a = p.parse_args(argv)
    setups = []
    for s in a.setups:
        backend, _, n = s.partition(":")
        if backend not in ("auto", "gymnasium", "batched") or not n.isdigit() or ROLLOUT % int(n):
            p.error(f"a setup is BACKEND:NUM_ENVS with NUM_ENVS dividing {ROLLOUT}, got '{s}'")
        setups.append((backend, int(n)))
    a.cleanrl_env = a.cleanrl_env or a.env
    workdir = a.workdir or tempfile.mkdtemp(prefix="bench-ppo-loop-")
    os.makedirs(workdir, exist_ok=True)
    runs = []

    def done(run: dict) -> None:
        runs.append(run)
        if a.jsonl:  # at once: a block cut short keeps its finished runs
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(run) + "\n")

    for t in a.threads:
        for rep in range(a.repeats):
            block = f"{time.time():.0f}-t{t}-r{rep}"  # the runs one ratio pairs
            for backend, n in setups:
                done({**run_offrl(a, backend, n, t, workdir), "block": block})
            if a.cleanrl:
                done({**run_cleanrl(a, t), "block": block})
    if a.jsonl:
        with open(a.jsonl) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(json.dumps({"env": a.env, "total_steps": a.total_steps, "cpu": cpu, "cores": os.cpu_count(),
                      "cleanrl": a.cleanrl and f"{a.cleanrl} --env-id {a.cleanrl_env}", "summary": summarize(runs),
                      "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
