"""Video of an evaluation episode (skipped where MuJoCo cannot render headless)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from offrl.data.builtin import GAINS


def _can_render() -> bool:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import imageio  # noqa: F401

        from offrl.envs import make_env

        env = make_env("InvertedPendulum-v5", render_mode="rgb_array")
        env.reset(seed=0)
        ok = env.render() is not None
        env.close()
        return ok
    except Exception:
        return False


@pytest.mark.skipif(not _can_render(), reason="no headless MuJoCo rendering or imageio here")
def test_record_video(tmp_path):
    from offrl.evaluation import evaluate

    path = str(tmp_path / "vid" / "ep.mp4")
    res = evaluate(lambda o: np.clip(o @ GAINS, -1, 1)[:, None], "InvertedPendulum-v5", episodes=1,
                   max_episode_steps=30, video_path=path)
    assert res["lengths"] == [30]
    assert os.path.getsize(path) > 1000
    import imageio.v2 as imageio

    frames = imageio.mimread(path)
    assert len(frames) == 31  # reset frame + one per step
    assert not any(p.endswith(".tmp.mp4") for p in os.listdir(tmp_path / "vid"))
