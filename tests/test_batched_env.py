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
