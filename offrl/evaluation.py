"""Policy evaluation in a vector env with fixed per-episode seeds.

Episode ``i`` of an evaluation always starts from ``env.reset(seed=seed + i)``, whatever the
number of parallel envs, so two evaluations of the same policy give the same returns. Episodes
run in waves of up to ``num_envs`` copies stepping together; a finished copy idles until the wave
ends. Actions come from ``policy(obs_batch) -> action_batch`` (numpy in, numpy out), e.g.
``agent.act`` with its default ``deterministic=True``.

Hopper-v5, Walker2d-v5 and HalfCheetah-v5 are stepped by :class:`offrl.envs.batched.BatchedLocomotion`
(all copies of a wave in one MuJoCo call on every core; its episodes equal Gymnasium's bit for
bit), other envs by a Gymnasium ``SyncVectorEnv``. For a deterministic policy both give the same
returns for the same seeds.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from offrl.errors import OffrlError


def normalized_score(returns, ref_min: float | None, ref_max: float | None):
    """D4RL-normalized score ``100 · (R − ref_min) / (ref_max − ref_min)`` (same type as input).

    Returns NaN(s) when the reference scores are unknown.
    """
    r = np.asarray(returns, dtype=np.float64)
    if ref_min is None or ref_max is None:
        out = np.full_like(r, np.nan)
    else:
        if ref_max == ref_min:
            raise OffrlError(f"reference scores must differ, got min = max = {ref_min}")
        out = 100.0 * (r - ref_min) / (ref_max - ref_min)
    return float(out) if out.ndim == 0 else out


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    env_id: str,
    episodes: int = 10,
    seed: int = 0,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    num_envs: int | None = None,
    max_episode_steps: int | None = None,
    video_path: str | None = None,
    batched: bool | None = None,
) -> dict[str, float | list]:
    """Run ``episodes`` episodes and return mean/std of returns and normalized scores.

    The result dict has ``return_mean``, ``return_std``, ``normalized_score``,
    ``normalized_score_std``, ``length_mean`` and the per-episode ``returns``/``lengths``.
    ``video_path`` additionally records the first episode to an mp4 (needs imageio and a
    MuJoCo render backend, e.g. ``MUJOCO_GL=egl``). ``batched``: step the MuJoCo locomotion
    envs with ``BatchedLocomotion`` (default: whenever ``env_id`` is one of them); False forces
    Gymnasium's vector env. ``num_envs`` (default 10 with Gymnasium, all episodes up to 64 with
    the batched stepper) is the wave width; it does not change a deterministic policy's results.
    """
    from offrl.envs import make_vec_env
    from offrl.envs.batched import SUPPORTED

    if episodes <= 0:
        raise OffrlError(f"eval episodes must be positive, got {episodes}")
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    if batched is None:
        batched = env_id in SUPPORTED
    if batched:
        returns, lengths = _run_batched(policy, env_id, episodes, seed, min(episodes, num_envs or 64), kwargs)
    else:
        returns, lengths = _run_gymnasium(policy, make_vec_env(env_id, min(episodes, num_envs or 10), **kwargs),
                                          episodes, seed)
    if video_path is not None:
        record_video(policy, env_id, video_path, seed=seed, **kwargs)
    scores = normalized_score(returns, ref_min_score, ref_max_score)
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_score": float(np.mean(scores)),
        "normalized_score_std": float(np.std(scores)),
        "length_mean": float(lengths.mean()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
    }


def _wave(policy, obs, step, alive, action_space):
    """Step until every ``alive`` copy's episode ended; (returns, lengths) per copy (0 where not alive)."""
    low, high = action_space.low, action_space.high
    ret = np.zeros(len(alive))
    length = np.zeros(len(alive), dtype=np.int64)
    while alive.any():
        action = np.asarray(policy(obs), dtype=np.float32).reshape(len(alive), -1)
        obs, rew, term, trunc, _ = step(np.clip(action, low, high))
        ret += np.where(alive, rew, 0.0)
        length += alive
        alive = alive & ~(term | trunc)
    return ret, length


def _run_batched(policy, env_id: str, episodes: int, seed: int, width: int, kwargs: dict):
    """Waves of ``BatchedLocomotion`` copies; copy i of the wave starting at episode ``start`` is
    seeded with ``seed + start + i`` (its first reset is Gymnasium's ``reset(seed=seed + start + i)``)."""
    from offrl.envs.batched import BatchedLocomotion

    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    for start in range(0, episodes, width):
        n = min(width, episodes - start)
        with BatchedLocomotion(env_id, n, seed=seed + start, **kwargs) as venv:
            ret, length = _wave(policy, venv.obs, venv.step, np.ones(n, dtype=bool), venv.action_space)
        returns[start : start + n] = ret
        lengths[start : start + n] = length
    return returns, lengths


def _run_gymnasium(policy, venv, episodes: int, seed: int):
    """Waves of a Gymnasium vector env; a short last wave pads with copies seeded past the episodes."""
    width = venv.num_envs
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    try:
        for start in range(0, episodes, width):
            n = min(width, episodes - start)
            seeds = [seed + start + i for i in range(n)] + [seed + episodes + i for i in range(width - n)]
            obs, _ = venv.reset(seed=seeds)
            ret, length = _wave(policy, obs, venv.step, np.arange(width) < n, venv.single_action_space)
            returns[start : start + n] = ret[:n]
            lengths[start : start + n] = length[:n]
    finally:
        venv.close()
    return returns, lengths


def record_video(policy, env_id: str, path: str, seed: int = 0, fps: int | None = None, **kwargs) -> str:
    """Render one episode (reset with ``seed``) to an mp4 at ``path``; returns the path."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import imageio.v2 as imageio
    except ImportError as e:
        raise OffrlError("video needs imageio: pip install 'offrl[video]'") from e
    from offrl.envs import make_env

    env = make_env(env_id, render_mode="rgb_array", **kwargs)
    frames = []
    try:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            frames.append(env.render())
            obs, _, term, trunc, _ = env.step(np.asarray(policy(obs[None]))[0])
            done = term or trunc
        frames.append(env.render())
        fps = fps or env.metadata.get("render_fps", 30)
    except Exception as e:
        raise OffrlError(f"rendering {env_id} failed ({type(e).__name__}: {e}); set MUJOCO_GL=egl or osmesa") from e
    finally:
        env.close()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.mp4"
    imageio.mimsave(tmp, frames, fps=fps)
    os.replace(tmp, path)
    return path
