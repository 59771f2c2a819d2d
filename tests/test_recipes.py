"""The locomotion dataset recipes at a tiny size: keys, dtypes, terminal/timeout semantics, infos,
metadata, bit-identical rebuilds, medium-replay from a recorded SAC run, and bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, cli_main

from offrl.data import get_info, is_present, load_dataset, recipes

TINY_SAC = ["--hidden", "32", "32", "--batch-size", "32", "--threads", "1", "--progress", "False"]


def _minari(dataset_id):
    import minari

    return minari.load_dataset(dataset_id)


def _arrays(dataset_id):
    out = []
    for ep in _minari(dataset_id).iterate_episodes():
        out += [ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations,
                ep.infos["qpos"], ep.infos["qvel"], ep.infos["action_log_probs"]]
    return out


def test_tiny_recipe_dataset_format(policies):
    recipes.build(get_info("offrl/halfcheetah/medium-v0"), num_transitions=2500, progress=False)
    mds = _minari("offrl/halfcheetah/medium-v0")
    eps = list(mds.iterate_episodes())
    # HalfCheetah never terminates: two time-limit episodes, then the 500-step budget cut
    assert [len(ep.actions) for ep in eps] == [1000, 1000, 500]
    for ep in eps:
        t = len(ep.actions)
        assert ep.observations.shape == (t + 1, 17) and ep.observations.dtype == np.float32
        assert ep.actions.shape == (t, 6) and ep.actions.dtype == np.float32
        assert ep.rewards.dtype == np.float32 and np.abs(ep.actions).max() <= 1.0
        assert not ep.terminations.any()
        assert ep.truncations[-1] and not ep.truncations[:-1].any()
        qpos, qvel, logp = ep.infos["qpos"], ep.infos["qvel"], ep.infos["action_log_probs"]
        assert qpos.shape == (t + 1, 9) and qvel.shape == (t + 1, 9) and qpos.dtype == np.float64
        # the infos are the exact MuJoCo state of every observation, the final one included
        np.testing.assert_array_equal(ep.observations, np.concatenate([qpos[:, 1:], qvel], 1).astype(np.float32))
        assert np.isfinite(logp[:-1]).all() and np.isnan(logp[-1])
    # stochastic actions: log-probs match the policy's density of the stored actions
    agent, _ = recipes.load_behaviour("halfcheetah", "medium")
    with torch.no_grad():
        mean, log_std = agent.actor(agent.normalize_obs(torch.as_tensor(eps[0].observations[:5])))
    u = torch.atanh(torch.as_tensor(eps[0].actions[:5]).double().clamp(-1 + 1e-12, 1 - 1e-12))
    assert not torch.allclose(torch.tanh(mean).double(), torch.as_tensor(eps[0].actions[:5]).double(), atol=1e-3)
    from offrl.nets import gaussian_log_prob, tanh_log_det
    logp = gaussian_log_prob(u, mean.double(), log_std.exp().double()) - tanh_log_det(u)
    np.testing.assert_allclose(logp.numpy(), eps[0].infos["action_log_probs"][:5], rtol=1e-3, atol=1e-3)

    ds = load_dataset("offrl/halfcheetah/medium-v0")
    assert len(ds.observations) == 2500 and ds.terminals.sum() == 0
    assert ds.timeouts.sum() == 3 and ds.timeouts[999] == 1 and ds.timeouts[1999] == 1 and ds.timeouts[-1] == 1
    assert (ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]) == (-280.178953, 12135.0)
    meta = json.loads(ds.metadata["minari"]["offrl"])
    assert meta["recipe"] == "medium" and meta["seed"] == recipes.SEEDS["medium"]
    assert meta["behaviour"]["env"] == "HalfCheetah-v5" and meta["expert_policy_return"] == 2.0
    assert meta["random_policy_return"] == 0.0 and meta["stats"]["transitions"] == 2500
    assert mds.spec.env_spec.id == "HalfCheetah-v5"


def test_halfcheetah_build_prints_and_logs_no_mujoco_warning(policies, tmp_path, monkeypatch, capfd):
    """Minari makes the env from its id while writing: the settotalmass warning of half_cheetah.xml
    must not reach stderr or leave MUJOCO_LOG.TXT in the working directory there either."""
    monkeypatch.chdir(tmp_path)
    recipes.build(get_info("offrl/halfcheetah/random-v0"), num_transitions=1000, progress=False)
    assert "settotalmass" not in capfd.readouterr().err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_terminations_and_rebuild_is_bit_identical(policies):
    info = get_info("offrl/hopper/random-v0")
    recipes.build(info, num_transitions=1500, progress=False)
    first = _arrays(info.id)
    eps = list(_minari(info.id).iterate_episodes())
    assert sum(len(ep.actions) for ep in eps) == 1500
    for ep in eps[:-1]:  # an untrained hopper falls: every complete episode ends terminated
        assert ep.terminations[-1] and not ep.terminations[:-1].any() and not ep.truncations.any()
    recipes.build(info, num_transitions=1500, progress=False, force=True)
    second = _arrays(info.id)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_medium_expert_concatenates(policies):
    recipes.build(get_info("offrl/hopper/medium-expert-v0"), num_transitions=1200, progress=False)
    assert is_present("offrl/hopper/medium-v0") and is_present("offrl/hopper/expert-v0")
    med = load_dataset("offrl/hopper/medium-v0")
    exp = load_dataset("offrl/hopper/expert-v0")
    both = load_dataset("offrl/hopper/medium-expert-v0")
    ends = np.flatnonzero(med.terminals + med.timeouts)
    cut = ends[-2] + 1 if not med.terminals[-1] else len(med.observations)  # medium up to its last episode end
    assert len(both.observations) == cut + len(exp.observations)
    np.testing.assert_array_equal(both.observations[:cut], med.observations[:cut])
    np.testing.assert_array_equal(both.observations[cut:], exp.observations)


def _tiny_sac_run(run_dir, steps=1400, extra=()):
    from offrl.algos import sac

    return sac.main(["--env", "Hopper-v5", "--total-steps", str(steps), "--learning-starts", "1000",
                     "--eval-every", "0", "--eval-episodes", "1", "--record", "--snapshots", "--seed", "3",
                     "--run-dir", str(run_dir), *TINY_SAC, *extra])


def test_medium_replay_from_run_and_rerun(policies, tmp_path):
    _tiny_sac_run(tmp_path / "run")
    ckpt_path = tmp_path / "run" / "checkpoint.pt"
    # the run's final snapshot plays the medium policy; its step is where medium-replay stops
    snap = tmp_path / "run" / "snapshots" / "step00001400.pt"
    ck = torch.load(snap, weights_only=True)
    ck["policy"]["behaviour_return_mean"] = 1.0
    torch.save(ck, policies / "hopper-medium.pt")

    recipes.build(get_info("offrl/hopper/medium-replay-v0"), from_run=str(ckpt_path), progress=False)
    eps = list(_minari("offrl/hopper/medium-replay-v0").iterate_episodes())
    ck = torch.load(ckpt_path, weights_only=True)
    data = ck["train"]["parts"]["buffer"]["data"].numpy()
    assert sum(len(ep.actions) for ep in eps) == 1400
    np.testing.assert_array_equal(np.concatenate([ep.actions for ep in eps]), data[:, 11:14])
    np.testing.assert_array_equal(np.concatenate([ep.observations[:-1] for ep in eps]), data[:, :11])
    for ep in eps:
        np.testing.assert_array_equal(ep.observations[-1][:5], ep.infos["qpos"][-1][1:].astype(np.float32))
        assert ep.terminations[-1] or ep.truncations[-1]
    assert np.allclose(np.concatenate([ep.infos["action_log_probs"][:-1] for ep in eps])[:1000], -3 * np.log(2))
    first = _arrays("offrl/hopper/medium-replay-v0")

    # rebuilding without the run reruns SAC with the medium policy's recorded config and seed
    episodes, rerun = recipes.rerun_medium_replay("hopper", progress=False)
    assert rerun["rerun_matches_shipped_policy"]
    again = []
    for ep in episodes:
        again += [ep["observations"], ep["actions"], ep["rewards"], ep["terminations"], ep["truncations"],
                  ep["infos"]["qpos"], ep["infos"]["qvel"], ep["infos"]["action_log_probs"]]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again)) and len(first) == len(again)


# ----------------------------------------------------------------------------- bad input
def test_make_unknown_id(policies, capsys):
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/mediun-v0"], capsys)
    assert_one_line_error(code, err, "unknown dataset", "offrl/hopper/medium-v0")


def test_make_missing_and_damaged_policy(policies, capsys):
    os.remove(policies / "hopper-expert.pt")
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/expert-v0", "--transitions", "100"], capsys)
    assert_one_line_error(code, err, "behaviour policy file missing", "hopper-expert.pt")
    (policies / "hopper-medium.pt").write_bytes(b"not a checkpoint" * 10)
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/medium-v0", "--transitions", "100"], capsys)
    assert_one_line_error(code, err, "cannot read checkpoint", "hopper-medium.pt")
    torch.save(torch.load(policies / "halfcheetah-random.pt", weights_only=True), policies / "hopper-random.pt")
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "100"], capsys)
    assert_one_line_error(code, err, "policy for HalfCheetah-v5, not Hopper-v5")
    assert not any(is_present(f"offrl/hopper/{k}-v0") for k in recipes.KINDS)


def test_make_present_needs_force(policies, capsys):
    code, out, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "200"], capsys)
    assert code == 0 and json.loads(out)["transitions"] == 200
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "200"], capsys)
    assert_one_line_error(code, err, "already present", "--force")
    code, out, _ = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "300", "--force"], capsys)
    assert code == 0 and json.loads(out)["transitions"] == 300


def test_make_patterns(policies, capsys):
    """A pattern builds what it matches in registry order (medium-expert after its parts, which it
    builds when missing); a second run skips what is present; a pattern that matches nothing fails."""
    code, out, err = cli_main(["datasets", "make", "offrl/hopper/*expert-v0", "--transitions", "150"], capsys)
    assert code == 0, err
    built = [json.loads(line)["id"] for line in out.splitlines()]
    assert built == ["offrl/hopper/expert-v0", "offrl/hopper/medium-expert-v0"]
    assert is_present("offrl/hopper/medium-v0") and not is_present("offrl/hopper/random-v0")
    code, out, _ = cli_main(["datasets", "info", "offrl/hopper/expert-v0"], capsys)
    info = dict(line.split(":", 1) for line in out.splitlines())
    assert code == 0 and info["recipe"].strip() == "expert (d4rl protocol), collection seed 300"
    assert info["behaviour"].strip() == "Hopper-v5 step 0; stochastic return 2.0"  # the fixture's policy file
    assert "build time" in info and info["transitions"].strip() == "150"
    code, out, _ = cli_main(["datasets", "info", "offrl/hopper/medium-expert-v0"], capsys)
    assert "components:     offrl/hopper/medium-v0, offrl/hopper/expert-v0" in out.splitlines()
    code, out, err = cli_main(["datasets", "make", "offrl/hopper/*expert-v0", "offrl/hopper/random-v0",
                               "--transitions", "150"], capsys)
    assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == ["offrl/hopper/random-v0"]
    assert "offrl/hopper/expert-v0: present, skipped" in err and "medium-expert-v0: present, skipped" in err
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "offrl/hopper/medium-v0"], capsys)
    assert_one_line_error(code, err, "offrl/hopper/random-v0 is already present", "--force")
    code, _, err = cli_main(["datasets", "make", "offrl/nowhere/*"], capsys)
    assert_one_line_error(code, err, "'offrl/nowhere/*' matches no dataset offrl can build")
    code, _, err = cli_main(["datasets", "make", "offrl/*/medium-replay-v0", "--from-run", "x.pt", "--force"], capsys)
    assert_one_line_error(code, err, "--from-run applies to the medium-replay datasets only, one at a time")


def test_make_bad_transitions_and_from_run(policies, capsys):
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "0"], capsys)
    assert_one_line_error(code, err, "--transitions must be positive")
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--from-run", "x.pt"], capsys)
    assert_one_line_error(code, err, "--from-run applies to the medium-replay datasets only")


def _no_collecting(monkeypatch):
    """The Minari root is checked before any episode is collected."""
    def collect(*a, **k):
        raise AssertionError("collected before checking the Minari root")

    monkeypatch.setattr(recipes, "collect_episodes", collect)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_make_unwritable_root(policies, data_dirs, monkeypatch, capsys):
    _no_collecting(monkeypatch)
    data_dirs.minari.chmod(0o500)
    try:
        code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "100"], capsys)
    finally:
        data_dirs.minari.chmod(0o700)
    assert_one_line_error(code, err, f"MINARI_DATASETS_PATH {data_dirs.minari}: not writable")


def test_unwritable_root_as_root(policies, tmp_path, monkeypatch, capsys):
    _no_collecting(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(blocker / "datasets"))  # a path below a file
    code, _, err = cli_main(["datasets", "make", "offrl/hopper/random-v0", "--transitions", "100"], capsys)
    assert_one_line_error(code, err, f"MINARI_DATASETS_PATH {blocker / 'datasets'}: cannot be created: {blocker} is not a directory")


def test_interrupted_build_leaves_nothing(policies, data_dirs, monkeypatch):
    import minari

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(minari, "create_dataset_from_buffers", boom)
    with pytest.raises(KeyboardInterrupt):
        recipes.build(get_info("offrl/hopper/random-v0"), num_transitions=100, progress=False)
    assert not is_present("offrl/hopper/random-v0")
    assert [p.name for p in Path(data_dirs.minari).rglob("*") if p.is_dir() and "staging" in p.name] == []


def test_list_shows_recipes_and_presence(policies, capsys):
    recipes.build(get_info("offrl/hopper/random-v0"), num_transitions=100, progress=False)
    code, out, _ = cli_main(["datasets", "list"], capsys)
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("offrl/")}
    assert len([r for r in rows if r.count("/") == 2 and r.split("/")[1] in recipes.ENVS]) == 15
    assert rows["offrl/hopper/random-v0"].rstrip().endswith("yes")
    assert rows["offrl/hopper/medium-v0"].rstrip().endswith("no")


def test_build_writes_the_flat_cache_that_loading_uses(policies, monkeypatch):
    from offrl.data import minari_io

    recipes.build(get_info("offrl/hopper/medium-v0"), num_transitions=1500, progress=False)
    cache = minari_io.minari_path("offrl/hopper/medium-v0") / minari_io._CACHE_NAME
    assert cache.is_file()
    original = minari_io.episodes_to_arrays

    def no_read(*a, **k):
        raise AssertionError("episodes were read back")

    monkeypatch.setattr(minari_io, "episodes_to_arrays", no_read)
    cached = load_dataset("offrl/hopper/medium-v0")
    monkeypatch.setattr(minari_io, "episodes_to_arrays", original)
    cache.unlink()
    read = load_dataset("offrl/hopper/medium-v0")
    for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
        assert np.array_equal(getattr(cached, k), getattr(read, k)), k
    assert len(read) == 1500
