"""The command line, end to end: help texts, datasets, a tiny training run, eval, bench, bad input.

Most commands run as real subprocesses (``python -m offrl.cli``, ``python algos/iql.py``) with the
Minari root pointed at the session's small scripted dataset, an empty D4RL cache and an HTTP proxy
on a closed local port (so any download attempt fails at once, offline). Starting Python with torch
costs seconds, so :func:`cli_runs` launches every independent command at once on a small thread
pool and the tests read the results. Bad-input cases that need no separate process (they go through
the same ``offrl.cli.main`` entry point and its error wrapper) run in-process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from offrl.errors import OffrlError

REPO = Path(__file__).resolve().parents[1]
SCRIPTED = "offrl/invertedpendulum/scripted-v0"
TINY = ["--dataset", SCRIPTED, "--steps", "20", "--hidden", "32", "32", "--batch-size", "32", "--eval-episodes", "2", "--eval-every", "10",
        "--log-every", "5", "--progress", "False", "--device", "cpu"]
ONE_THREAD = ["--threads", "1"]  # subprocesses only: in-process, --threads would change torch's global setting
EVAL_SEED = 10_000  # training evaluates episode i with seed cfg.seed + 10000 + i (cfg.seed = 0)


def offrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "offrl.cli", *args]


def iql_script(*args: str) -> list[str]:
    return [sys.executable, "algos/iql.py", *args]


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def cli_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``offrl.cli.main(argv)`` (the console entry point); returns (exit code, stdout, stderr)."""
    from offrl.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def assert_one_line_error(code, err: str, *fragments: str) -> str:
    """Non-zero exit, stderr is exactly one ``offrl: error: ...`` line containing ``fragments``."""
    assert code not in (0, None), f"expected failure, got exit {code}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("offrl: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# ----------------------------------------------------------------------------- subprocess runs
HELP = {  # run as subprocesses
    "offrl": (offrl("--help"), ["offrl train", "offrl eval", "offrl datasets", "offrl bench"]),
    "eval": (offrl("eval", "--help"), ["checkpoint", "--episodes", "--json", "--seed"]),
    "datasets": (offrl("datasets", "--help"), ["list", "info"]),
    "datasets list": (offrl("datasets", "list", "--help"), ["usage: offrl datasets list"]),
    "iql.py": (iql_script("--help"), ["--expectile", "--dataset", "--steps", "--normalize-states"]),
}
# these import torch before printing help (3 s each as a process; iql.py --help above runs the
# same tyro parser as `offrl train iql --help` in a process): checked in-process instead
HELP_IN_PROCESS = {
    "train": (["train", "--help"], ["offrl train ALGO", "iql"]),
    "train iql": (["train", "iql", "--help"], ["--expectile", "--beta", "--dataset", "--steps", "--batch-size"]),
    "bench update": (["bench", "update", "--help"], ["--algo", "--steps", "--warmup", "--batch-size"]),
}


@pytest.fixture(scope="module")
def cli_env(scripted_root, tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("no_proxy", "NO_PROXY"):
        env.pop(key, None)
    proxy = f"http://127.0.0.1:{closed_port()}"
    env.update(
        MINARI_DATASETS_PATH=str(scripted_root),
        D4RL_DATASET_DIR=str(tmp_path_factory.mktemp("cli_d4rl")),
        http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy,
        COLUMNS="200",
    )
    return env


@pytest.fixture(scope="module")
def cli_base(tmp_path_factory) -> Path:
    """Parent of the run directories the subprocesses are given."""
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cli_runs(cli_env, cli_base) -> dict[str, Future]:
    """Launch every independent subprocess at once; values are futures of CompletedProcess
    (``"train"`` resolves to a dict with the run dir and the train and eval processes)."""
    run_dir = cli_base / "iql-run"

    def train_then_eval() -> dict:
        train = run(offrl("train", "iql", "--run-dir", str(run_dir), *TINY, *ONE_THREAD), cli_env)
        out = {"run_dir": run_dir, "train": train}
        if out["train"].returncode == 0:
            out["eval"] = run(offrl("eval", str(run_dir / "checkpoint.pt"), "--episodes", "2",
                                    "--seed", str(EVAL_SEED), "--json"), cli_env)
        return out

    def bad(name: str, cmd: list[str]):
        return cmd + ["--run-dir", str(cli_base / name)]

    commands = {
        "bench": offrl("bench", "update", "--algo", "iql", "--steps", "3", "--warmup", "1", *ONE_THREAD),
        "datasets list": offrl("datasets", "list"),
        "datasets info": offrl("datasets", "info", "hopper-medium-v2"),
        "missing d4rl": bad("missing d4rl", offrl("train", "iql", *TINY, *ONE_THREAD, "--dataset", "hopper-medium-v2")),
        "script steps 0": bad("script steps 0", iql_script(*TINY, *ONE_THREAD, "--steps", "0")),
        "unknown command": offrl("trian", "iql"),
        **{f"help {name}": cmd for name, (cmd, _) in HELP.items()},
    }
    console = shutil.which("offrl", path=cli_env.get("PATH"))
    if console:
        commands["help console"] = [console, "--help"]
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1))
    futures = {"train": pool.submit(train_then_eval)}  # the longest first
    futures.update({name: pool.submit(run, cmd, cli_env) for name, cmd in commands.items()})
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", list(HELP))
def test_help(cli_runs, name):
    proc = cli_runs[f"help {name}"].result()
    assert_ok(proc)
    for flag in HELP[name][1]:
        assert flag in proc.stdout, f"{flag!r} missing from `{name} --help`:\n{proc.stdout}"


@pytest.mark.parametrize("name", list(HELP_IN_PROCESS))
def test_help_in_process(capsys, name):
    argv, flags = HELP_IN_PROCESS[name]
    code, out, err = cli_main(argv, capsys)
    assert code == 0 and "Traceback" not in err
    for flag in flags:
        assert flag in out, f"{flag!r} missing from `offrl {name} --help`:\n{out}"


def test_console_script_help(cli_runs):
    if "help console" not in cli_runs:
        pytest.skip("the `offrl` console script is not on PATH")
    proc = cli_runs["help console"].result()
    assert_ok(proc)
    assert "offrl train" in proc.stdout


def test_datasets_list(cli_runs):
    proc = cli_runs["datasets list"].result()
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    hopper = next(line for line in lines if line.startswith("hopper-medium-v2 "))
    assert "d4rl" in hopper and "Hopper-v5" in hopper and hopper.rstrip().endswith("no")
    scripted = next(line for line in lines if line.startswith(SCRIPTED))
    assert "InvertedPendulum-v5" in scripted and scripted.rstrip().endswith("yes")  # the fixture built it
    assert any(line.startswith("mujoco/hopper/medium-v0") for line in lines)


def test_datasets_info_shows_reference_scores(cli_runs):
    proc = cli_runs["datasets info"].result()
    assert_ok(proc)
    fields = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert fields["id:"] == "hopper-medium-v2"
    assert float(fields["ref_min_score:"]) == pytest.approx(-20.272305)
    assert float(fields["ref_max_score:"]) == pytest.approx(3234.3)
    assert fields["env_id:"] == "Hopper-v5"
    assert fields["present:"] == "no"


def test_bench_update_prints_one_json_line(cli_runs):
    proc = cli_runs["bench"].result()
    assert_ok(proc)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["algo"] == "iql" and res["steps"] == 3
    assert res["updates_per_s"] > 0 and res["metrics_finite"] is True


# ----------------------------------------------------------------------------- training run
@pytest.fixture(scope="module")
def trained(cli_runs) -> dict:
    out = cli_runs["train"].result()
    assert_ok(out["train"])
    return out


def test_train_writes_run_outputs(trained):
    run_dir: Path = trained["run_dir"]
    summary = json.loads(trained["train"].stdout.strip().splitlines()[-1])
    assert summary["algo"] == "iql" and summary["dataset"] == SCRIPTED and summary["steps"] == 20
    assert Path(summary["run_dir"]) == run_dir and Path(summary["checkpoint"]) == run_dir / "checkpoint.pt"
    assert summary["final_return"] is not None
    for name in ("metrics.jsonl", "config.json", "checkpoint.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents*"))

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if any(k.startswith("train/") for k in r)]
    eval_rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["step"] for r in eval_rows] == [10, 20]
    assert {"train/value_loss", "train/actor_loss", "train/critic_loss"} <= set(train_rows[0])
    assert {"eval/return_mean", "eval/normalized_score", "eval/length_mean"} <= set(eval_rows[0])
    assert all(v is not None and math.isfinite(v) for r in train_rows for k, v in r.items() if k != "phase")

    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "iql" and config["env_id"] == "InvertedPendulum-v5"
    assert config["config"]["steps"] == 20 and config["config"]["hidden"] == [32, 32]
    assert config["config"]["expectile"] == 0.7  # the locomotion preset, resolved
    assert config["dataset"]["transitions"] >= 3000


def test_checkpoint_contents(trained):
    from offrl.agent import load_checkpoint

    ckpt = load_checkpoint(str(trained["run_dir"] / "checkpoint.pt"))
    assert ckpt["algo"] == "iql" and ckpt["dataset"] == SCRIPTED
    assert ckpt["dims"] == {"obs_dim": 4, "act_dim": 1}
    assert ckpt["train"]["step"] == 20


def test_eval_json(trained):
    proc = trained["eval"]
    assert_ok(proc)
    res = json.loads(proc.stdout)
    assert res["algo"] == "iql" and res["env_id"] == "InvertedPendulum-v5" and res["dataset"] == SCRIPTED
    assert len(res["returns"]) == 2
    assert res["return_mean"] == pytest.approx(np.mean(res["returns"]))


def _last_training_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/return_mean" in r][-1]


def test_eval_reproduces_training_evaluation_returns(trained):
    """Same checkpoint, same episode seeds (10000 + i) → the returns the training run logged."""
    res = json.loads(trained["eval"].stdout)
    assert res["return_mean"] == pytest.approx(_last_training_eval(trained["run_dir"])["eval/return_mean"])


def test_eval_normalized_score_matches_training(trained):
    """`offrl eval` must use the reference scores training used (the scripted dataset's registry
    entry has no ref_min_score; its stored metadata has the random-policy return)."""
    logged = _last_training_eval(trained["run_dir"])["eval/normalized_score"]
    assert logged is not None and math.isfinite(logged)
    res = json.loads(trained["eval"].stdout)
    assert res["normalized_score"] == pytest.approx(logged)


def test_load_trained_agent_in_process(trained):
    from offrl.algos.iql import IQL

    agent = IQL.load(str(trained["run_dir"] / "checkpoint.pt"), device="cpu")
    single = agent.act(np.zeros(4))
    assert single.shape == (1,) and single.dtype == np.float32
    batch = agent.act(np.random.default_rng(0).standard_normal((5, 4)))
    assert batch.shape == (5, 1) and np.abs(batch).max() <= 1.0
    np.testing.assert_array_equal(agent.act([0.0, 0.0, 0.0, 0.0]), single)
    np.testing.assert_array_equal(agent.act(torch.zeros(1, 4))[0], single)
    with pytest.raises(OffrlError, match="observation has 3 dims, the agent expects 4"):
        agent.act(np.zeros(3))


# ----------------------------------------------------------------------------- bad input, subprocess
def _assert_no_run_dir(cli_base: Path, name: str) -> None:
    assert not (cli_base / name).exists(), f"{name}: a run directory was created"


def test_missing_d4rl_file_offline(cli_runs, cli_env, cli_base):
    proc = cli_runs["missing d4rl"].result()
    assert_one_line_error(proc.returncode, proc.stderr, "hopper_medium-v2.hdf5", "offline")
    _assert_no_run_dir(cli_base, "missing d4rl")
    assert not any(Path(cli_env["D4RL_DATASET_DIR"]).iterdir())  # no partial download left behind


def test_script_rejects_zero_steps(cli_runs, cli_base):
    proc = cli_runs["script steps 0"].result()
    assert_one_line_error(proc.returncode, proc.stderr, "--steps must be positive, got 0")
    _assert_no_run_dir(cli_base, "script steps 0")


def test_unknown_command(cli_runs):
    proc = cli_runs["unknown command"].result()
    assert_one_line_error(proc.returncode, proc.stderr, "unknown command 'trian'", "train")


# ----------------------------------------------------------------------------- bad input, in-process
@pytest.fixture
def iql_ckpt(tmp_path) -> Path:
    """A small untrained IQL checkpoint for the scripted dataset, saved in-process."""
    from offrl.algos.iql import IQL, Config

    cfg = Config(dataset=SCRIPTED, hidden=(32, 32), steps=20)
    cfg.resolve(None)
    path = tmp_path / "ckpt" / "checkpoint.pt"
    IQL(cfg, 4, 1).save(str(path), dataset=SCRIPTED)
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_unknown_dataset_suggests_close_id(use_scripted, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = cli_main(["train", "iql", *TINY, "--dataset", "hoper-medium-v2", "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, "unknown dataset 'hoper-medium-v2'", "hopper-medium-v2")
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "--steps must be positive, got 0"),
        (["--steps", "-5"], "--steps must be positive, got -5"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["--expectile", "1.5"], "--expectile must be in (0, 1), got 1.5"),
        (["--expectile", "0"], "--expectile must be in (0, 1), got 0"),
        (["--eval-episodes", "0"], "--eval-episodes must be positive"),
    ],
)
def test_train_rejects_bad_flags(use_scripted, tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    code, _, err = cli_main(["train", "iql", *TINY, *flags, "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, message)
    assert not run_dir.exists()


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_eval_checkpoint_not_a_file(use_scripted, tmp_path, capsys, kind):
    path = tmp_path / "nope.pt" if kind == "missing" else tmp_path
    code, _, err = cli_main(["eval", str(path), "--episodes", "1"], capsys)
    assert_one_line_error(code, err, "checkpoint not found", str(path))


def test_eval_corrupt_checkpoint(use_scripted, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, err = cli_main(["eval", str(corrupt), "--episodes", "1"], capsys)
    assert_one_line_error(code, err, "cannot read checkpoint", str(corrupt))


def test_eval_truncated_checkpoint(use_scripted, iql_ckpt, tmp_path, capsys):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(iql_ckpt.read_bytes()[:5000])
    code, _, err = cli_main(["eval", str(cut), "--episodes", "1"], capsys)
    assert_one_line_error(code, err, "cannot read checkpoint", str(cut))


def test_unknown_algorithm(capsys):
    code, _, err = cli_main(["train", "nosuchalgo", "--steps", "5"], capsys)
    assert_one_line_error(code, err, "unknown algorithm 'nosuchalgo'", "iql")


def test_eval_rejects_non_positive_episodes(use_scripted, iql_ckpt, capsys):
    code, _, err = cli_main(["eval", str(iql_ckpt), "--episodes", "0"], capsys)
    assert_one_line_error(code, err, "--episodes must be positive")


def test_eval_not_an_offrl_checkpoint(use_scripted, tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    code, _, err = cli_main(["eval", str(path)], capsys)
    assert_one_line_error(code, err, "is not an offrl checkpoint")


def test_checkpoint_of_another_algorithm(use_scripted, iql_ckpt, tmp_path, capsys):
    other = _rewrite(iql_ckpt, tmp_path / "td3_bc.pt", lambda c: c.update(algo="td3_bc"))
    from offrl.algos.iql import IQL

    with pytest.raises(OffrlError, match="checkpoint of algorithm 'td3_bc', not 'iql'"):
        IQL.load(str(other))
    run_dir = tmp_path / "resumed"
    code, _, err = cli_main(["train", "iql", *TINY, "--resume", str(other), "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, "td3_bc", "iql")
    assert not run_dir.exists()
    code, _, err = cli_main(["eval", str(other), "--episodes", "1"], capsys)
    assert_one_line_error(code, err, "td3_bc")


def test_eval_json_is_strict_json_without_reference_scores(use_scripted, iql_ckpt, tmp_path, capsys):
    """With unknown reference scores the normalized score is NaN; `--json` must still print valid
    JSON (null, as metrics.jsonl does), not a bare ``NaN`` token."""
    ckpt = _rewrite(iql_ckpt, tmp_path / "unknown-dataset.pt", lambda c: c.update(dataset="nowhere/unknown-v0"))
    code, out, err = cli_main(["eval", str(ckpt), "--env", "InvertedPendulum-v5", "--episodes", "1", "--json"], capsys)
    assert code == 0, err

    def reject(token):
        raise ValueError(f"not JSON: {token}")

    res = json.loads(out, parse_constant=reject)
    assert res["normalized_score"] is None and res["env_id"] == "InvertedPendulum-v5"


# ----------------------------------------------------------------------------- dims check
def test_check_dims_direct():
    from types import SimpleNamespace

    from offrl.train import check_dims

    check_dims(SimpleNamespace(id="x", obs_dim=4, act_dim=1), "InvertedPendulum-v5")
    check_dims(SimpleNamespace(id="x", obs_dim=99, act_dim=9), None)  # no env: nothing to check
    with pytest.raises(OffrlError, match=r"x: observations/actions have 5/1 dims but InvertedPendulum-v5 has 4/1"):
        check_dims(SimpleNamespace(id="x", obs_dim=5, act_dim=1), "InvertedPendulum-v5")
    with pytest.raises(OffrlError, match=r"have 4/2 dims .* has 4/1"):
        check_dims(SimpleNamespace(id="x", obs_dim=4, act_dim=2), "InvertedPendulum-v5")


def test_train_dataset_dims_differ_from_env(tmp_path, monkeypatch, temp_register, capsys):
    """A Minari dataset recorded 'on' InvertedPendulum-v5 whose observations have 5 dims, not 4."""
    import gymnasium as gym

    from offrl.data import DatasetInfo
    from offrl.data.writer import write_minari_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    rng = np.random.default_rng(0)
    episodes = [
        {"observations": rng.standard_normal((6, 5)).astype(np.float32),
         "actions": rng.uniform(-1, 1, (5, 1)).astype(np.float32), "rewards": np.ones(5, np.float32) * (i + 1),
         "terminations": np.array([0, 0, 0, 0, 1], bool), "truncations": np.zeros(5, bool)}
        for i in range(3)
    ]
    dataset_id = "test/pendulum5/wrongdims-v0"
    write_minari_dataset(dataset_id, episodes, "InvertedPendulum-v5",
                         action_space=gym.spaces.Box(-1, 1, (1,), np.float32),
                         observation_space=gym.spaces.Box(-np.inf, np.inf, (5,), np.float32))
    temp_register(DatasetInfo(id=dataset_id, source="offrl", env_id="InvertedPendulum-v5", ref_min_score=None,
                              ref_max_score=None, obs_dim=None, act_dim=None))
    run_dir = tmp_path / "run"
    code, _, err = cli_main(["train", "iql", *TINY, "--dataset", dataset_id, "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, dataset_id, "5/1", "InvertedPendulum-v5 has 4/1")
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- weights that do not fit the config
def test_eval_checkpoint_weights_not_matching_config(use_scripted, iql_ckpt, tmp_path, capsys):
    """A checkpoint whose weights do not fit its config (edited, or from another offrl version)
    must give one error line, not load_state_dict's RuntimeError traceback."""
    bad = _rewrite(iql_ckpt, tmp_path / "mismatch.pt", lambda c: c["config"].update(hidden=[64, 64]))
    code, _, err = cli_main(["eval", str(bad), "--episodes", "1"], capsys)
    assert_one_line_error(code, err)


def test_resume_with_a_different_architecture(use_scripted, trained, tmp_path, capsys):
    """`--resume ckpt --hidden 64 64` (the run was trained with 32 32): the changed flag overrides the
    checkpoint's config, and the weights no longer fit. One error line expected, not a traceback."""
    run_dir = tmp_path / "resumed"
    argv = ["train", "iql", *TINY, "--steps", "30", "--hidden", "64", "64",
            "--resume", str(trained["run_dir"] / "checkpoint.pt"), "--run-dir", str(run_dir)]
    code, _, err = cli_main(argv, capsys)
    assert_one_line_error(code, err)
    assert not run_dir.exists()
