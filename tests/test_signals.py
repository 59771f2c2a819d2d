"""SIGINT / SIGTERM stop a training run at a step boundary with a checkpoint there (resuming it is
exact); SIGUSR1 writes a checkpoint and training goes on."""

import json
import os
import signal

import pytest
import torch
from test_cli import SCRIPTED

from offrl import logger as logger_mod
from offrl.algos import iql, sac
from offrl.errors import TrainingInterrupted
from offrl.utils import StopSignals

IQL_TINY = dict(dataset=SCRIPTED, hidden=(32, 32), batch_size=32, eval_episodes=2, log_every=5, progress=False,
                threads=1, steps=40, eval_every=10)
SAC_TINY = dict(env="InvertedPendulum-v5", hidden=(32, 32), batch_size=32, eval_episodes=2, log_every=50,
                progress=False, threads=1, learning_starts=100, buffer_size=1000, total_steps=400, eval_every=200)


@pytest.fixture(autouse=True)
def default_handlers():
    """Start from Python's default handlers: a background job (CI) may inherit SIGINT ignored,
    and StopSignals leaves ignored signals alone."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _signal_at(monkeypatch, n_call: int, sig: int, then=None):
    """Send ``sig`` to this process from inside the ``n_call``-th metrics add (an update step)."""
    calls = {"n": 0}
    original = logger_mod.MetricAccumulator.add

    def add(self, metrics):
        calls["n"] += 1
        if calls["n"] == n_call:
            os.kill(os.getpid(), sig)
        if then is not None:
            then(calls["n"])
        original(self, metrics)

    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", add)
    return original


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "eval/seconds"} for r in rows]


def _same_weights(a_dir, b_dir):
    a = torch.load(a_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(b_dir / "checkpoint.pt", weights_only=True)
    assert a["agent"].keys() == b["agent"].keys()
    assert all(torch.equal(v, b["agent"][k]) for k, v in a["agent"].items())
    return a, b


def test_sigterm_stops_offline_run_with_exact_checkpoint(use_scripted, tmp_path, monkeypatch):
    iql.train(iql.Config(run_dir=str(tmp_path / "full"), checkpoint_every=1000, **IQL_TINY))
    original = _signal_at(monkeypatch, 23, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as e:
        iql.train(iql.Config(run_dir=str(tmp_path / "cut"), checkpoint_every=1000, **IQL_TINY))
    assert (e.value.step, e.value.signal_name, e.value.exit_code) == (23, "SIGTERM", 143)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["train"]["step"] == 23
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    before = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["train"]["seconds"]
    summary = iql.train(iql.Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    a, b = _same_weights(tmp_path / "full", tmp_path / "cut")
    assert a["train"]["step"] == b["train"]["step"] == 40
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    # the wall time of both invocations: total_seconds = the first's (in the checkpoint) + this one's
    assert before > 0 and summary["total_seconds"] == pytest.approx(before + summary["seconds"], abs=1e-6)


def test_sigint_stops_online_run_mid_episode_and_resumes_exactly(tmp_path, monkeypatch):
    sac.train(sac.Config(run_dir=str(tmp_path / "full"), checkpoint_every=10_000, **SAC_TINY))
    original = _signal_at(monkeypatch, 137, signal.SIGINT)  # update 137 = env step 237
    with pytest.raises(TrainingInterrupted) as e:
        sac.train(sac.Config(run_dir=str(tmp_path / "cut"), checkpoint_every=10_000, **SAC_TINY))
    assert (e.value.step, e.value.exit_code) == (237, 130)
    monkeypatch.setattr(logger_mod.MetricAccumulator, "add", original)
    sac.train(sac.Config(resume=str(tmp_path / "cut" / "checkpoint.pt"), progress=False, threads=1))
    a, b = _same_weights(tmp_path / "full", tmp_path / "cut")
    assert torch.equal(a["train"]["parts"]["buffer"]["data"], b["train"]["parts"]["buffer"]["data"])
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")


def test_sigusr1_checkpoints_and_training_goes_on(use_scripted, tmp_path, monkeypatch):
    seen = {}

    def peek(n):
        if n == 15:  # the step-12 request was honoured at the end of step 12
            seen["step"] = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["train"]["step"]

    _signal_at(monkeypatch, 12, signal.SIGUSR1, then=peek)
    summary = iql.train(iql.Config(run_dir=str(tmp_path / "run"), checkpoint_every=1000, **IQL_TINY))
    assert seen["step"] == 12 and summary["steps"] == 40
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["train"]["step"] == 40


def test_cli_exit_code_and_one_line(use_scripted, tmp_path, monkeypatch, capsys):
    from offrl.cli import main

    _signal_at(monkeypatch, 7, signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        main(["train", "iql", "--dataset", SCRIPTED, "--steps", "30", "--hidden", "16", "16", "--batch-size", "16",
              "--eval-every", "0", "--eval-episodes", "1", "--progress", "False", "--run-dir", str(tmp_path / "r")])
    assert e.value.code == 143
    err = capsys.readouterr().err.strip().splitlines()
    # the run's start line, then one line for the stop
    assert len(err) == 2 and err[0].startswith("iql | dataset ") and f"run {tmp_path / 'r'}" in err[0]
    assert err[1].startswith("offrl: stopped by SIGTERM at step 7: checkpoint saved to ")
    assert f"--resume {tmp_path / 'r' / 'checkpoint.pt'}" in err[1]


def test_second_ctrl_c_interrupts_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ignored_signals_stay_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert not stop.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
