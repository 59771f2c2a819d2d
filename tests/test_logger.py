"""Logging: metric averaging on the device, metrics.jsonl rows, TensorBoard events, resume truncation,
the phase tag, the start line and the no-TTY heartbeat (on a fake clock)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import offrl.logger
from offrl.logger import Logger, MetricAccumulator, format_duration


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tb_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ----------------------------------------------------------------------------- accumulator
def test_accumulator_averages_and_pop_resets():
    acc = MetricAccumulator()
    assert acc.pop() == {}
    for i in range(4):
        acc.add({"loss": torch.tensor(float(i)), "q": torch.tensor(2.0 * i, requires_grad=True)})
    assert acc.pop() == pytest.approx({"loss": 1.5, "q": 3.0})
    assert acc.pop() == {}
    acc.add({"loss": torch.tensor(10.0), "q": torch.tensor(-1.0)})
    assert acc.pop() == pytest.approx({"loss": 10.0, "q": -1.0})


def test_accumulator_does_not_alias_its_inputs():
    acc = MetricAccumulator()
    x = torch.tensor(1.0)
    acc.add({"x": x})
    x += 100  # an update step reusing its metric tensor in place
    acc.add({"x": torch.tensor(3.0)})
    assert acc.pop() == pytest.approx({"x": 2.0})


def test_accumulator_integer_metrics_average_as_float():
    acc = MetricAccumulator()
    acc.add({"n": torch.tensor(1)})
    acc.add({"n": torch.tensor(2)})
    assert acc.pop() == pytest.approx({"n": 1.5})


def test_accumulator_state_round_trip():
    acc = MetricAccumulator()
    acc.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    acc.add({"a": torch.tensor(2.0), "b": torch.tensor(6.0)})
    restored = MetricAccumulator()
    restored.load_state_dict(acc.state_dict(), "cpu")
    restored.add({"a": torch.tensor(3.0), "b": torch.tensor(8.0)})
    assert restored.pop() == pytest.approx({"a": 2.0, "b": 6.0})


def test_accumulator_state_round_trip_when_empty():
    acc = MetricAccumulator()
    acc.add({"a": torch.tensor(1.0)})
    acc.pop()
    restored = MetricAccumulator()
    restored.load_state_dict(acc.state_dict(), "cpu")
    assert restored.pop() == {}
    restored.add({"a": torch.tensor(5.0)})
    assert restored.pop() == pytest.approx({"a": 5.0})


# ----------------------------------------------------------------------------- logger
def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    log = Logger(str(run), total_steps=10, progress=False)
    log.log(5, {"loss": 0.5, "q": 2.0}, prefix="train/")
    log.log(5, {"return_mean": 12.0, "normalized_score": float("nan")}, prefix="eval/")
    log.log(6, {})  # nothing to write
    log.log(10, {"loss": 0.25, "q": float("inf")}, prefix="train/")
    log.advance(10)
    log.close()
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows == [
        {"step": 5, "train/loss": 0.5, "train/q": 2.0},
        {"step": 5, "eval/return_mean": 12.0, "eval/normalized_score": None},
        {"step": 10, "train/loss": 0.25, "train/q": None},
    ]
    assert list(run.glob("events.out.tfevents*"))
    assert tb_scalars(run, "train/loss") == [(5, 0.5), (10, 0.25)]
    assert tb_scalars(run, "eval/return_mean") == [(5, 12.0)]


def test_logger_without_tensorboard(tmp_path):
    log = Logger(str(tmp_path), total_steps=3, progress=False, tensorboard=False)
    log.log(1, {"x": 1.0})
    log.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "x": 1.0}]
    assert not list(tmp_path.glob("events.out.tfevents*"))


def test_logger_appends_when_not_resuming(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 50, "x": 1.0}) + "\n")
    log = Logger(str(tmp_path), total_steps=100, progress=False, tensorboard=False)
    log.log(60, {"x": 2.0})
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [50, 60]


def test_resume_truncates_rows_after_start_step_and_torn_line(tmp_path):
    lines = [json.dumps({"step": s, "train/x": float(s)}) for s in (5, 10, 10, 15, 20)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 25, "train/x": 2')  # killed mid-write
    log = Logger(str(tmp_path), total_steps=30, start_step=10, progress=False, tensorboard=False)
    log.log(15, {"x": -1.0}, prefix="train/")
    log.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 10, 15]
    assert rows[-1]["train/x"] == -1.0


def test_resume_purges_tensorboard_events_after_start_step(tmp_path):
    log = Logger(str(tmp_path), total_steps=4, progress=False)
    for step in range(1, 5):
        log.log(step, {"x": float(step)})
    log.close()
    resumed = Logger(str(tmp_path), total_steps=4, start_step=2, progress=False)
    for step in (3, 4):
        resumed.log(step, {"x": 10.0 * step})
    resumed.close()
    assert tb_scalars(tmp_path, "x") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert [r["x"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 2.0, 30.0, 40.0]


def test_logger_progress_bar_position(tmp_path):
    log = Logger(str(tmp_path), total_steps=100, start_step=40, progress=False, tensorboard=False)
    assert log.step == 40
    log.advance(30)  # never backwards
    assert log.step == 40
    log.advance(55)
    assert log.step == 55
    log.log(55, {"normalized_score": 42.0, "return_mean": 1.0})
    assert log.last_score == 42.0
    log.log(56, {"normalized_score": math.nan})
    assert log.last_score == 42.0
    log.close()


def test_accumulator_load_state_does_not_alias_the_source():
    """Restoring from a state must copy it: adding to the restored accumulator may not change the
    state it was loaded from (nor the accumulator that produced it)."""
    acc = MetricAccumulator()
    acc.add({"a": torch.tensor(1.0)})
    state = acc.state_dict()
    restored = MetricAccumulator()
    restored.load_state_dict(state, "cpu")
    restored.add({"a": torch.tensor(5.0)})
    assert state["sums"][0].item() == 1.0
    acc.add({"a": torch.tensor(3.0)})
    assert acc.pop() == pytest.approx({"a": 2.0})
    assert restored.pop() == pytest.approx({"a": 3.0})


# ----------------------------------------------------------------------------- phase, start line, heartbeat
def test_rows_carry_phase_only_when_set(tmp_path):
    log = Logger(str(tmp_path), total_steps=10, progress=False, tensorboard=False)
    log.log(1, {"x": 1.0})
    log.phase = "offline"
    log.log(2, {"x": 2.0}, prefix="train/")
    log.phase = "online"
    log.log(3, {"return_mean": 5.0}, prefix="eval/")
    log.phase = None
    log.log(4, {"x": 4.0})
    log.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 1, "x": 1.0}, {"step": 2, "phase": "offline", "train/x": 2.0},
                    {"step": 3, "phase": "online", "eval/return_mean": 5.0}, {"step": 4, "x": 4.0}]
    assert [list(r)[:2] for r in rows[1:3]] == [["step", "phase"], ["step", "phase"]]  # right after "step"


def test_start_line_goes_to_stderr(tmp_path, capsys):
    log = Logger(str(tmp_path), total_steps=10, progress=False, tensorboard=False)
    log.start_line("iql | dataset offrl/hopper/medium-v0 (1,000,000 transitions) | device cpu | run runs/x")
    log.close()
    out = capsys.readouterr()
    assert out.err == "iql | dataset offrl/hopper/medium-v0 (1,000,000 transitions) | device cpu | run runs/x\n"
    assert out.out == ""


@pytest.fixture
def clock(monkeypatch):
    """The logger's time.monotonic, set by hand (``clock.t``): no sleeping, no real time."""
    fake = SimpleNamespace(t=0.0)
    monkeypatch.setattr(offrl.logger, "time", SimpleNamespace(monotonic=lambda: fake.t, time=time.time))
    return fake


def test_heartbeat_without_a_bar(tmp_path, clock, capsys):
    log = Logger(str(tmp_path), total_steps=1_000_000, start_step=2000, progress=False, desc="iql hopper",
                 tensorboard=False, heartbeat_seconds=30.0)
    log.phase = "offline"
    log.log(2000, {"return_mean": 1000.0, "normalized_score": 45.2}, prefix="eval/")
    clock.t = 20.0
    log.advance(4000)  # 20 s since the start: not due yet
    assert capsys.readouterr().err == ""
    clock.t = 40.0
    log.advance(5812)  # 3812 steps in 40 s = 95.3/s; 994188 left → 10432 s
    assert capsys.readouterr().err == \
        "[iql hopper] step 5812/1000000 (0.6%) | phase offline | 95.3 steps/s | ETA 2h53m | score 45.2\n"
    clock.t = 50.0
    log.advance(6000)  # 10 s since that record
    assert capsys.readouterr().err == ""
    log.phase = None
    clock.t = 70.0
    log.advance(8812)  # the rate over the interval since the last record: 3000 steps in 30 s
    assert capsys.readouterr().err == "[iql hopper] step 8812/1000000 (0.9%) | 100.0 steps/s | ETA 2h45m | score 45.2\n"
    log.close()


def test_heartbeat_falls_back_to_the_eval_return_and_handles_a_stall(tmp_path, clock, capsys):
    log = Logger(str(tmp_path), total_steps=1000, progress=False, desc="sac", tensorboard=False, heartbeat_seconds=10.0)
    clock.t = 10.0
    log.advance(250)
    assert capsys.readouterr().err == "[sac] step 250/1000 (25.0%) | 25.0 steps/s | ETA 30s\n"  # no score, no return
    log.log(250, {"return_mean": 12.34, "normalized_score": math.nan}, prefix="eval/")
    clock.t = 25.0
    log.advance(250)  # no progress in 15 s
    assert capsys.readouterr().err == "[sac] step 250/1000 (25.0%) | 0.0 steps/s | ETA ? | return 12.3\n"
    log.close()


def test_heartbeat_of_a_run_of_several_phases_gives_the_phase_eta(tmp_path, clock, capsys):
    log = Logger(str(tmp_path), total_steps=1000, progress=False, desc="unio4", tensorboard=False, heartbeat_seconds=10.0)
    log.phase, log.phase_end = "critic", 300
    clock.t = 10.0
    log.advance(100)  # 10 steps/s: 200 steps of this phase left → 20 s; 900 overall → 90 s at this rate
    assert capsys.readouterr().err == "[unio4] step 100/1000 (10.0%) | phase critic (ends in 20s) | 10.0 steps/s | ETA 1m30s\n"
    log.close()


def test_tick_reports_inside_a_long_step(tmp_path, clock, capsys):
    log = Logger(str(tmp_path), total_steps=15, start_step=5, progress=False, desc="unio4", tensorboard=False,
                 heartbeat_seconds=30.0)
    log.phase = "dynamics"
    clock.t = 10.0
    log.tick("epoch 1: batch 100/3906")  # not due yet
    assert capsys.readouterr().err == ""
    clock.t = 31.0
    log.tick("epoch 1: batch 300/3906")
    assert capsys.readouterr().err == "[unio4] step 5/15 (33.3%) | phase dynamics | epoch 1: batch 300/3906\n"
    clock.t = 50.0
    log.tick("epoch 1: batch 500/3906")  # 19 s since that line
    assert capsys.readouterr().err == ""
    clock.t = 61.0
    log.advance(6)  # the next heartbeat's rate counts from the tick's line: 1 step in 30 s
    assert capsys.readouterr().err.startswith("[unio4] step 6/15 (40.0%) | phase dynamics | 0.0 steps/s")
    log.close()
    bar = Logger(str(tmp_path / "bar"), total_steps=10, progress=True, desc="bar", tensorboard=False, heartbeat_seconds=1.0)
    clock.t = 100.0
    bar.tick("epoch 1: batch 1/2")
    bar.close()
    assert "[bar] step" not in capsys.readouterr().err


def test_no_heartbeat_when_turned_off(tmp_path, clock, capsys):
    log = Logger(str(tmp_path), total_steps=1000, progress=False, tensorboard=False, heartbeat_seconds=0)
    for i in range(1, 6):
        clock.t = 1000.0 * i
        log.advance(100 * i)
    log.close()
    assert capsys.readouterr().err == ""


def test_no_heartbeat_with_a_bar(tmp_path, clock, capsys):
    log = Logger(str(tmp_path), total_steps=1000, progress=True, desc="bar", tensorboard=False, heartbeat_seconds=1.0)
    clock.t = 100.0
    log.advance(500)
    log.close()
    assert "[bar] step" not in capsys.readouterr().err


def test_format_duration():
    assert [format_duration(x) for x in (0, 7.9, 65, 3599, 3600, 10432.2, 90000)] == \
           ["0s", "7s", "1m05s", "59m59s", "1h00m", "2h53m", "25h00m"]
