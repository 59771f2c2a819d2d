"""The batched MuJoCo stepping equals Gymnasium's v5 envs bit for bit, across resets and time limits."""

import numpy as np
import pytest

from offrl.envs import make_env
from offrl.envs.batched import BatchedLocomotion, _has_batch
from offrl.errors import OffrlError


BACKENDS = ["threads"] + (["batch"] if _has_batch() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"])
def test_matches_gymnasium(env_id, backend):
    steps = 1100 if env_id == "HalfCheetah-v5" else 400  # cheetah never terminates: crosses the time limit
    rng = np.random.default_rng(1)
    venv = BatchedLocomotion(env_id, num_envs=3, seed=7, threads=2, backend=backend)
    envs = [make_env(env_id) for _ in range(3)]
    obs = [e.reset(seed=7 + i)[0] for i, e in enumerate(envs)]
    np.testing.assert_array_equal(venv.obs, np.stack(obs))
    ends = 0
    for _ in range(steps):
        a = rng.uniform(-1, 1, size=(3, venv.model.nu)).astype(np.float32)
        next_obs, rew, term, trunc, final = venv.step(a)
        for i, e in enumerate(envs):
            o, r, te, tr, _ = e.step(a[i])
            assert (r, te, tr) == (rew[i], term[i], trunc[i])
            np.testing.assert_array_equal(final[i], o)
            np.testing.assert_array_equal(venv.final_qpos[i], e.unwrapped.data.qpos)
            np.testing.assert_array_equal(venv.final_qvel[i], e.unwrapped.data.qvel)
            if te or tr:
                ends += 1
                o, _ = e.reset()
            np.testing.assert_array_equal(next_obs[i], o)
            np.testing.assert_array_equal(venv.qpos[i], e.unwrapped.data.qpos)
    assert ends >= 3


def test_rejects_bad_input():
    with pytest.raises(OffrlError, match="supports"):
        BatchedLocomotion("Ant-v5", 2)
    with pytest.raises(OffrlError, match="backend must be"):
        BatchedLocomotion("Hopper-v5", 2, backend="gpu")
    for backend in BACKENDS:
        venv = BatchedLocomotion("Hopper-v5", 2, threads=1, backend=backend)
        with pytest.raises(OffrlError, match="shape"):
            venv.step(np.zeros((2, 5), np.float32))


@pytest.mark.skipif(not _has_batch(), reason="mujoco.batch needs MuJoCo >= 4")
def test_backends_agree_with_many_copies():
    """64 copies on 2 threads: the C++ batch and the Python thread pool give identical transitions."""
    rng = np.random.default_rng(0)
    a, b = (BatchedLocomotion("Hopper-v5", 64, seed=3, threads=2, backend=k) for k in ("batch", "threads"))
    for _ in range(150):
        act = rng.uniform(-1, 1, size=(64, 3)).astype(np.float32)
        for x, y in zip(a.step(act), b.step(act)):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a.final_qvel, b.final_qvel)


def test_halfcheetah_model_warning_is_not_printed_or_logged(tmp_path, monkeypatch, capfd):
    """Gymnasium's half_cheetah.xml uses MuJoCo's deprecated settotalmass: offrl drops that one
    warning (no stderr line, no MUJOCO_LOG.TXT in the working directory) and restores the handler."""
    import mujoco

    from offrl.envs import make_env

    monkeypatch.chdir(tmp_path)
    before = mujoco.get_mju_user_warning()
    make_env("HalfCheetah-v5").close()
    BatchedLocomotion("HalfCheetah-v5", 2).close()
    assert "settotalmass" not in capfd.readouterr().err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is before


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_resumes_exactly(backend):
    """Save after K steps (mid-episode, time-limit counters running), load into a new env with
    another seed, continue: identical to not stopping, across resets (reset-noise RNG) and a
    30-step time limit crossed after the load."""
    import io

    import torch

    rng = np.random.default_rng(5)
    acts = rng.uniform(-1, 1, size=(120, 4, 3)).astype(np.float32)
    ref = BatchedLocomotion("Hopper-v5", 4, seed=1, threads=2, backend=backend, max_episode_steps=30)
    for a in acts[:47]:
        ref.step(a)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert [s["elapsed"] for s in state["envs"]] == list(ref.elapsed)
    new = BatchedLocomotion("Hopper-v5", 4, seed=123, threads=1, backend=backend, max_episode_steps=30)
    new.load_state_dict(state)
    np.testing.assert_array_equal(new.obs, ref.obs)
    ends = 0
    for a in acts[47:]:
        x, y = ref.step(a), new.step(a)
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
        ends += int((x[2] | x[3]).sum())
    assert ends >= 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_matches_gymnasium_env_state(backend):
    """The per-copy state is offrl.collector.env_state's for the Gymnasium env at the same point
    (same integration state, RNG and time-limit counter), and a Gymnasium state loads here."""
    from offrl.collector import env_state, set_env_state

    rng = np.random.default_rng(3)
    venv = BatchedLocomotion("Walker2d-v5", 2, seed=9, threads=1, backend=backend)
    envs = [make_env("Walker2d-v5") for _ in range(2)]
    for i, e in enumerate(envs):
        e.reset(seed=9 + i)
    for _ in range(70):
        a = rng.uniform(-1, 1, size=(2, 6)).astype(np.float32)
        _, _, term, trunc, _ = venv.step(a)
        for i, e in enumerate(envs):
            _, _, te, tr, _ = e.step(a[i])
            if te or tr:
                e.reset()
    for mine, theirs in zip(venv.state_dict()["envs"], (env_state(e) for e in envs)):
        assert mine["rng"] == theirs["rng"] and mine["elapsed"] == theirs["elapsed"]
        assert torch_equal(mine["mujoco"], theirs["mujoco"])
    other = BatchedLocomotion("Walker2d-v5", 2, seed=0, threads=1, backend=backend)
    other.load_state_dict({"envs": [env_state(e) for e in envs]})
    np.testing.assert_array_equal(other.obs, venv.obs)
    set_env_state(envs[0], venv.state_dict()["envs"][1])  # and the other way round
    np.testing.assert_array_equal(envs[0].unwrapped.data.qpos, venv.qpos[1])


def test_load_state_dict_rejects_mismatches():
    state = BatchedLocomotion("Hopper-v5", 2, threads=1).state_dict()
    with pytest.raises(OffrlError, match="copies"):
        BatchedLocomotion("Hopper-v5", 3, threads=1).load_state_dict(state)
    with pytest.raises(OffrlError, match="does not fit"):
        BatchedLocomotion("HalfCheetah-v5", 2, threads=1).load_state_dict(state)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
