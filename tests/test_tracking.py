"""`--track`: Weights & Biases gets the same scalars as metrics.jsonl, offline, and a resumed run
continues the same W&B run."""

from __future__ import annotations

import glob
import json
import os
import sys
import time
import types

import pytest
from test_cli import SCRIPTED, assert_one_line_error, cli_main

TINY = dict(dataset=SCRIPTED, steps=40, hidden=(16, 16), batch_size=16, eval_every=20, eval_episodes=1,
            log_every=10, progress=False, threads=1)


class _FakeRun:
    def __init__(self, **kw):
        self.kw, self.rows, self.metrics, self.finished = kw, [], [], False

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, row):
        self.rows.append(dict(row))

    def finish(self):
        self.finished = True


def test_tracked_scalars_equal_the_jsonl_rows(use_scripted, tmp_path, monkeypatch):
    from offrl.algos import td3_bc

    runs = []
    fake = types.SimpleNamespace(init=lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1],
                                 Settings=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "wandb" else None)
    td3_bc.train(td3_bc.Config(run_dir=str(tmp_path / "r"), track=True, wandb_group="g1", **TINY))
    (run,) = runs
    assert run.finished and run.kw["group"] == "g1" and run.kw["project"] == "offrl" and run.kw["resume"] == "allow"
    assert run.kw["config"]["algo"] == "td3_bc" and run.kw["config"]["run_dir"] == os.path.abspath(tmp_path / "r")
    assert ("*", "global_step") in run.metrics
    with open(tmp_path / "r" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    expected = [{**{k: v for k, v in r.items() if k not in ("step", "phase") and v is not None}, "global_step": r["step"]}
                for r in rows]
    assert run.rows == expected and any("eval/return_mean" in r for r in run.rows)
    assert run.kw["id"] == (tmp_path / "r" / "wandb_id").read_text().strip()


def test_track_works_offline_and_resume_continues_the_run(use_scripted, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from offrl.algos import td3_bc

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "r"
    td3_bc.train(td3_bc.Config(run_dir=str(run_dir), track=True, **TINY))
    run_id = (run_dir / "wandb_id").read_text().strip()
    (first,) = glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    data = b""
    for _ in range(100):  # W&B's service may still be writing the record file
        data = open(first, "rb").read()
        if b"eval/return_mean" in data:
            break
        time.sleep(0.1)
    for key in (b"eval/return_mean", b"train/critic_loss", b"global_step"):
        assert key in data
    td3_bc.train(td3_bc.Config(resume=str(run_dir / "checkpoint.pt"), steps=60, progress=False, threads=1, track=True))
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    assert len(glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}"))) == 2  # the same W&B run, resumed


def test_track_without_wandb_is_one_line_before_any_output(use_scripted, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    code, _, err = cli_main(["train", "td3_bc", "--dataset", SCRIPTED, "--steps", "5", "--track",
                             "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--track needs Weights & Biases")
    assert not (tmp_path / "r").exists()
