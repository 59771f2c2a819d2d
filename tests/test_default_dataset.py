"""The embedded default: with no --dataset, offline training uses offrl/hopper/medium-v0, built on
first use from the shipped medium policy (here at a tiny size)."""

import json

import numpy as np

from offrl.data import get_info, is_present, recipes
from offrl.train import DEFAULT_DATASET


def test_default_is_hopper_medium_from_the_shipped_policy():
    assert DEFAULT_DATASET == "offrl/hopper/medium-v0"
    assert get_info(DEFAULT_DATASET).builder is not None
    assert recipes.policy_file("hopper", "medium").is_file()


def test_no_dataset_flag_builds_the_default_then_trains(data_dirs, monkeypatch, tmp_path):
    from offrl.algos import iql

    monkeypatch.setattr(recipes, "NUM_TRANSITIONS", 3000)  # the real recipe collects 1M
    assert not is_present(DEFAULT_DATASET)
    s = iql.main(["--steps", "20", "--hidden", "32", "32", "--batch-size", "32", "--eval-every", "0",
                  "--eval-episodes", "1", "--progress", "False", "--threads", "1", "--run-dir", str(tmp_path / "run")])
    assert s["dataset"] == DEFAULT_DATASET and s["steps"] == 20 and np.isfinite(s["final_return"])
    assert is_present(DEFAULT_DATASET)
    import minari

    meta = json.loads(minari.load_dataset(DEFAULT_DATASET).storage.metadata["offrl"])
    assert meta["stats"]["transitions"] == 3000 and meta["seed"] == recipes.SEEDS["medium"]
    assert meta["behaviour"]["step"] == 90_000 and meta["behaviour"]["env"] == "Hopper-v5"
