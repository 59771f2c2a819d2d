"""`offrl sweep`: grid expansion and naming, flag checks, skip finished / resume interrupted runs, the Ray executor."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_cli import SCRIPTED, assert_one_line_error, cli_main

from offrl.errors import OffrlError
from offrl.sweep import expand_datasets, parse_sets, plan

TINY = ["hidden=16 16", "batch_size=16", "eval_episodes=1", "eval_every=0", "log_every=10"]


def test_grid_expansion_and_naming(tmp_path):
    ds = expand_datasets(["offrl/hopper/medium*-v0", "offrl/hopper/medium-v0"])
    assert ds == ["offrl/hopper/medium-expert-v0", "offrl/hopper/medium-replay-v0", "offrl/hopper/medium-v0"]
    runs = plan(["iql", "td3_bc", "sac"], ds[:2], ["Hopper-v5"], [0, 1], str(tmp_path), steps=500,
                sets=parse_sets(["batch-size=64"]))
    names = [r.name for r in runs]
    assert names[:4] == ["iql/offrl_hopper_medium-expert-v0/seed0", "iql/offrl_hopper_medium-expert-v0/seed1",
                         "iql/offrl_hopper_medium-replay-v0/seed0", "iql/offrl_hopper_medium-replay-v0/seed1"]
    assert len(runs) == 2 * 2 * 2 + 2  # offline algorithms × datasets × seeds, then sac × env × seeds
    assert names[-2:] == ["sac/Hopper-v5/seed0", "sac/Hopper-v5/seed1"]
    iql = runs[0].command()
    assert iql[iql.index("--dataset") + 1] == "offrl/hopper/medium-expert-v0"
    assert iql[iql.index("--steps") + 1] == "500" and iql[iql.index("--batch-size") + 1] == "64"
    assert iql[iql.index("--run-dir") + 1] == os.path.join(str(tmp_path), "iql/offrl_hopper_medium-expert-v0/seed0")
    sac = runs[-1].command()
    assert sac[sac.index("--env") + 1] == "Hopper-v5" and sac[sac.index("--total-steps") + 1] == "500"
    assert sac[sac.index("--seed") + 1] == "1"


def test_a_run_on_disk_with_other_flags_is_a_one_line_error(tmp_path):
    """Re-running a sweep with another budget must not count the old runs as done (or resume them
    with their old flags); runtime-only fields (threads, progress) may differ."""
    from offrl.sweep import check_existing

    runs = plan(["iql"], [SCRIPTED], [], [0, 1], str(tmp_path), steps=500, sets=parse_sets(["batch-size=64"]))
    check_existing(runs)  # nothing on disk yet
    os.makedirs(runs[1].run_dir)
    with open(os.path.join(runs[1].run_dir, "config.json"), "w") as f:
        json.dump({"algo": "iql", "config": {"steps": 1000, "batch_size": 64, "threads": 4, "progress": True}}, f)
    assert runs[0].mismatches() == [] and runs[1].mismatches() == [("steps", 1000, 500)]
    with pytest.raises(OffrlError, match=r"seed1 was started with steps=1000, this sweep asks steps=500"):
        check_existing(runs)
    same = plan(["iql"], [SCRIPTED], [], [0, 1], str(tmp_path), steps=1000, sets=parse_sets(["batch-size=64"]))
    check_existing(same)  # the same flags: fine (threads and progress do not count)


@pytest.mark.parametrize("kwargs, message", [
    (dict(algos=["iql"], datasets=["offrl/nothing*"]), "matches no known dataset"),
    (dict(algos=["iqll"], datasets=[SCRIPTED]), "unknown algorithm 'iqll'"),
    (dict(algos=["iql"], datasets=[SCRIPTED], sets=["expectilee=0.8"]), "iql has no such flag"),
    (dict(algos=["sac"], datasets=[SCRIPTED]), "give --envs"),
    (dict(algos=["iql"], datasets=[SCRIPTED], sets=["expectile"]), "expects key=value"),
    (dict(algos=["iql"], datasets=[SCRIPTED], sets=["expectile=high"]), "--set for iql"),
])
def test_bad_grids_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(OffrlError, match=message):
        plan(kwargs["algos"], expand_datasets(kwargs.get("datasets", [])), [], [0], str(tmp_path),
             sets=parse_sets(kwargs.get("sets", [])))


def test_cli_bad_flag_is_one_line(tmp_path, capsys):
    code, _, err = cli_main(["sweep", "--algos", "iql", "--datasets", SCRIPTED, "--set", "nope=1",
                             "--out", str(tmp_path / "s")], capsys)
    assert_one_line_error(code, err, "nope")


def _sweep_cmd(out, steps):
    return [sys.executable, "-m", "offrl.cli", "sweep", "--algos", "iql", "td3_bc", "--datasets", SCRIPTED,
            "--seeds", "0", "--steps", str(steps), "--workers", "1", "--out", str(out),
            "--set", *TINY, "checkpoint_every=20"]


def test_sweep_skips_finished_and_resumes_interrupted_runs(use_scripted, tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_sweep_cmd(out, 3000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    first = out / "iql" / SCRIPTED.replace("/", "_") / "seed0"
    deadline = time.time() + 120
    while not (first / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (first / "checkpoint.pt").exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)  # stop the sweep: the running run checkpoints and exits
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again" in stderr
    assert not (first / "summary.json").exists() and (first / "checkpoint.pt").exists()
    second = out / "td3_bc" / SCRIPTED.replace("/", "_") / "seed0"
    assert not second.exists()  # no new run starts once the sweep is stopping
    plan_file = json.loads((out / "plan.json").read_text())
    assert [r["name"] for r in plan_file["runs"]] == [f"iql/{SCRIPTED.replace('/', '_')}/seed0",
                                                      f"td3_bc/{SCRIPTED.replace('/', '_')}/seed0"]

    dry = subprocess.run(_sweep_cmd(out, 3000) + ["--dry-run"], capture_output=True, text=True, env=env)
    assert dry.returncode == 0 and dry.stdout.split()[0] == "partial" and "--resume" in dry.stdout

    again = subprocess.run(_sweep_cmd(out, 3000), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 to resume, 1 to start" in again.stdout
    s1 = json.loads((first / "summary.json").read_text())
    assert s1["steps"] == 3000 and (second / "summary.json").exists()
    log = (out / "logs" / f"iql_{SCRIPTED.replace('/', '_')}_seed0.log").read_text()
    assert "--resume" in log  # the second invocation resumed the interrupted run
    third = subprocess.run(_sweep_cmd(out, 3000), capture_output=True, text=True, env=env, timeout=120)
    assert third.returncode == 0 and "2 finished, 0 to resume, 0 to start" in third.stdout
    result = json.loads(third.stdout.strip().splitlines()[-1])
    assert result["ran"] == 0 and result["failed"] == []


def test_a_failed_run_is_reported_and_the_others_go_on(use_scripted, tmp_path):
    out = tmp_path / "s"
    bad = out / "iql" / SCRIPTED.replace("/", "_") / "seed0"
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a damaged partial run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_sweep_cmd(out, 40), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert f"FAILED iql/{SCRIPTED.replace('/', '_')}/seed0" in r.stdout
    assert (out / "td3_bc" / SCRIPTED.replace("/", "_") / "seed0" / "summary.json").exists()


def test_track_groups_the_runs_by_the_sweep_name(tmp_path, capsys):
    code, out, _ = cli_main(["sweep", "--algos", "iql", "--datasets", SCRIPTED, "--out", str(tmp_path / "grid-a"),
                             "--track", "--dry-run"], capsys)
    assert code == 0
    line = out.strip().splitlines()[0]
    assert "--track " in line and "--wandb-group grid-a" in line


def test_executor_ray_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = cli_main(["sweep", "--algos", "iql", "--datasets", SCRIPTED, "--out", str(tmp_path / "s"),
                             "--executor", "ray"], capsys)
    line = assert_one_line_error(code, err)
    assert line == "offrl: error: --executor ray needs Ray: pip install 'offrl[ray]'"
    assert not (tmp_path / "s").exists()  # up front: nothing planned or written


def test_gpus_per_run_needs_the_ray_executor(tmp_path, capsys):
    code, _, err = cli_main(["sweep", "--algos", "iql", "--datasets", SCRIPTED, "--out", str(tmp_path / "s"),
                             "--gpus-per-run", "0.5"], capsys)
    assert assert_one_line_error(code, err) == "offrl: error: --gpus-per-run needs --executor ray and a value >= 0"


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the offrl[ray] extra")


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster on loopback with 2 CPUs, started in this process; yields its address. The
    sweeps connect to it as a cluster (--ray-address), which forwards their dataset variables to the tasks."""
    import ray

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():  # ray.init installs its own SIGTERM handler
            signal.signal(sig, handler)


@needs_ray
def test_sweep_on_ray_runs_every_run_as_a_task_and_skips_finished_ones(use_scripted, ray_head, tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _sweep_cmd(out, 40) + ["--workers", "2", "--executor", "ray", "--ray-address", ray_head]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    names = [f"{algo}/{SCRIPTED.replace('/', '_')}/seed0" for algo in ("iql", "td3_bc")]
    assert "0 finished, 0 to resume, 2 to start | Ray (" in r.stdout
    for name in names:
        run_dir = out / name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 40 and summary["algo"] == name.split("/")[0]
        log = (out / "logs" / f"{name.replace('/', '_')}.log").read_text()
        assert log.startswith("$ ") and f"--run-dir {run_dir}" in log.splitlines()[0]  # the local worker's command
        assert any(line.startswith(f"done {name}: final ") for line in r.stdout.splitlines())
    assert "[2/2] 0 failed" in r.stdout
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["ran"] == 2 and result["failed"] == [] and not result["interrupted"]

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "2 finished, 0 to resume, 0 to start" in again.stdout
    assert json.loads(again.stdout.strip().splitlines()[-1])["ran"] == 0


@needs_ray
def test_sweep_on_ray_stop_reaches_the_running_runs(use_scripted, ray_head, tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ray_head}  # the default --ray-address: auto
    proc = subprocess.Popen(_sweep_cmd(out, 3000) + ["--executor", "ray"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    first = out / "iql" / SCRIPTED.replace("/", "_") / "seed0"
    deadline = time.time() + 120
    while not (first / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (first / "checkpoint.pt").exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)  # the task forwards it to its run: checkpoint and exit
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert f"stopped iql/{SCRIPTED.replace('/', '_')}/seed0" in stdout
    log = (out / "logs" / f"iql_{SCRIPTED.replace('/', '_')}_seed0.log").read_text()
    assert "stopped by SIGTERM" in log and not (first / "summary.json").exists()
    assert not (out / "td3_bc").exists()  # --workers 1: the second run was never submitted
    dry = subprocess.run(_sweep_cmd(out, 3000) + ["--dry-run"], capture_output=True, text=True, env=env)
    assert dry.stdout.split()[0] == "partial"  # the next invocation resumes it
