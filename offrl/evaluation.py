"""Policy evaluation in a vector env with fixed per-episode seeds, and the :class:`Evaluator`
every training loop, ``offrl eval`` and CDSA use (cadence, seeds, best tracking).

Episode ``i`` of an evaluation always starts from ``env.reset(seed=seed + i)``, whatever the
number of parallel envs, so two evaluations of the same policy give the same returns. Episodes
run in waves of up to ``num_envs`` copies stepping together; a finished copy idles until the wave
ends. Actions come from ``policy(obs_batch) -> action_batch`` (numpy in, numpy out), e.g.
``agent.act`` with its default ``deterministic=True``.

Hopper-v5, Walker2d-v5 and HalfCheetah-v5 are stepped by :class:`offrl.envs.batched.BatchedLocomotion`
(all copies of a wave in one MuJoCo call on every core; its episodes equal Gymnasium's bit for
bit), other envs by a Gymnasium ``SyncVectorEnv``. For a deterministic policy both give the same
returns for the same seeds.

Info metrics: an episode counts as a success when ``info["is_success"]`` or ``info["success"]``
was true at any of its steps (Gymnasium-Robotics, Meta-World); ``success_rate`` is the fraction of
successful episodes, present only for envs that report either key.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from offrl.errors import OffrlError

EVAL_SEED_OFFSET = 10_000
"""Evaluation episode i of a training run starts from ``reset(seed=cfg.seed + EVAL_SEED_OFFSET + i)``."""
COMPARE_SEED_OFFSET = 20_000
"""Episodes of final comparisons (CDSA's base vs corrected) use ``cfg.seed + COMPARE_SEED_OFFSET + i``."""
SUCCESS_KEYS = ("is_success", "success")


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
    on_step: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict[str, float | list]:
    """Run ``episodes`` episodes and return mean/std of returns and normalized scores.

    The result dict has ``return_mean``, ``return_std``, ``normalized_score``,
    ``normalized_score_std``, ``length_mean`` and the per-episode ``returns``/``lengths``.
    ``video_path`` additionally records the first episode to an mp4 (needs imageio and a
    MuJoCo render backend, e.g. ``MUJOCO_GL=egl``). ``batched``: step the MuJoCo locomotion
    envs with ``BatchedLocomotion`` (default: whenever ``env_id`` is one of them); False forces
    Gymnasium's vector env. ``num_envs`` (default 10 with Gymnasium, all episodes up to 64 with
    the batched stepper) is the wave width; it does not change a deterministic policy's results.
    ``on_step(obs, action, alive)``, when given, sees every vector step before it is taken: the raw
    observations ``[n, obs_dim]``, the clipped actions and the mask of copies whose episode is running
    (e.g. to record the visited state-action pairs).
    """
    from offrl.envs import make_vec_env
    from offrl.envs.batched import SUPPORTED

    if episodes <= 0:
        raise OffrlError(f"eval episodes must be positive, got {episodes}")
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    if batched is None:
        batched = env_id in SUPPORTED
    if batched:
        returns, lengths, success = _run_batched(policy, env_id, episodes, seed, min(episodes, num_envs or 64), kwargs,
                                                 on_step)
    else:
        returns, lengths, success = _run_gymnasium(policy, make_vec_env(env_id, min(episodes, num_envs or 10), **kwargs),
                                                   episodes, seed, on_step)
    if video_path is not None:
        record_video(policy, env_id, video_path, seed=seed, **kwargs)
    scores = normalized_score(returns, ref_min_score, ref_max_score)
    out = {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_score": float(np.mean(scores)),
        "normalized_score_std": float(np.std(scores)),
        "length_mean": float(lengths.mean()),
    }
    if success is not None:
        out["success_rate"] = float(success.mean())
    out.update(returns=returns.tolist(), lengths=lengths.tolist())
    if success is not None:
        out["successes"] = success.astype(int).tolist()
    return out


def _success_flags(info: dict, n: int) -> np.ndarray | None:
    """Per-copy success flags of one vector step's ``info`` (None when the env reports none)."""
    for key in SUCCESS_KEYS:
        if key in info:
            flags = np.asarray(info[key], dtype=bool).reshape(-1)
            mask = np.asarray(info.get(f"_{key}", np.ones(n, bool)), dtype=bool).reshape(-1)
            return flags & mask
        final = info.get("final_info")  # the flag of an episode's last step, after a same-step autoreset
        if isinstance(final, dict) and key in final:
            return np.asarray(final[key], dtype=bool).reshape(-1) & np.asarray(final.get(f"_{key}", np.ones(n, bool)))
    return None


def _wave(policy, obs, step, alive, action_space, infos: bool = True, on_step=None):
    """Step until every ``alive`` copy's episode ended; (returns, lengths, successes or None) per
    copy (0 where not alive). ``infos``: the step's fifth value is Gymnasium's info dict."""
    low, high = action_space.low, action_space.high
    ret = np.zeros(len(alive))
    length = np.zeros(len(alive), dtype=np.int64)
    success = None
    while alive.any():
        action = np.clip(np.asarray(policy(obs), dtype=np.float32).reshape(len(alive), -1), low, high)
        if on_step is not None:
            on_step(obs, action, alive.copy())
        obs, rew, term, trunc, info = step(action)
        ret += np.where(alive, rew, 0.0)
        length += alive
        flags = _success_flags(info, len(alive)) if infos else None
        if flags is not None:
            success = (np.zeros(len(alive), bool) if success is None else success) | (flags & alive)
        alive = alive & ~(term | trunc)
    return ret, length, success


def _run_batched(policy, env_id: str, episodes: int, seed: int, width: int, kwargs: dict, on_step=None):
    """Waves of ``BatchedLocomotion`` copies; copy i of the wave starting at episode ``start`` is
    seeded with ``seed + start + i`` (its first reset is Gymnasium's ``reset(seed=seed + start + i)``)."""
    from offrl.envs.batched import BatchedLocomotion

    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    for start in range(0, episodes, width):
        n = min(width, episodes - start)
        with BatchedLocomotion(env_id, n, seed=seed + start, **kwargs) as venv:
            ret, length, _ = _wave(policy, venv.obs, venv.step, np.ones(n, dtype=bool), venv.action_space, infos=False,
                                   on_step=on_step)
        returns[start : start + n] = ret
        lengths[start : start + n] = length
    return returns, lengths, None


def _run_gymnasium(policy, venv, episodes: int, seed: int, on_step=None):
    """Waves of a Gymnasium vector env; a short last wave pads with copies seeded past the episodes."""
    width = venv.num_envs
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    success = None
    try:
        for start in range(0, episodes, width):
            n = min(width, episodes - start)
            seeds = [seed + start + i for i in range(n)] + [seed + episodes + i for i in range(width - n)]
            obs, _ = venv.reset(seed=seeds)
            ret, length, succ = _wave(policy, obs, venv.step, np.arange(width) < n, venv.single_action_space,
                                      on_step=on_step)
            returns[start : start + n] = ret[:n]
            lengths[start : start + n] = length[:n]
            if succ is not None:
                success = np.zeros(episodes, bool) if success is None else success
                success[start : start + n] = succ[:n]
    finally:
        venv.close()
    return returns, lengths, success


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


class Evaluator:
    """Evaluation during training: when to run (every ``every`` steps, and at each phase end),
    which episodes (``seed + i``), deterministic or sampled actions, and the best so far.

    "Best" has one meaning for every algorithm: the highest mean evaluation return of the run
    (``best_return``) and that evaluation's normalized score (``best_normalized_score``, None
    without reference scores); both are checkpointed.
    """

    def __init__(self, env_id: str | None, episodes: int, seed: int, every: int = 0, ref_min_score=None,
                 ref_max_score=None, deterministic: bool = True, **kwargs):
        self.env_id, self.episodes, self.seed, self.every = env_id, episodes, seed, every
        self.ref_min_score, self.ref_max_score = ref_min_score, ref_max_score
        self.deterministic = deterministic
        self.kwargs = kwargs
        self.best_return: float | None = None
        self.best_normalized_score: float | None = None
        self.last: dict = {}
        self.note: str | None = None
        """Why there is no evaluation (printed at the start of a run), or None."""
        self.callbacks: list = []
        """``fn(agent, step, scalars)`` called after every evaluation (e.g. policy snapshots)."""
        self.on_step = None
        """``on_step(obs, action, alive)`` passed to :func:`evaluate` (None: nothing is recorded)."""
        self.history: list[dict] = []
        """Every evaluation of the run: ``{"step", "return_mean", "normalized_score"}`` (checkpointed;
        the per-phase means and the regret of the summary are computed from it)."""

    @property
    def enabled(self) -> bool:
        return self.env_id is not None

    def due(self, prev_step: int, step: int) -> bool:
        """Whether going from ``prev_step`` to ``step`` passed a multiple of ``every``."""
        return self.enabled and crossed(prev_step, step, self.every)

    def __call__(self, agent, step: int | None = None) -> dict:
        """Evaluate ``agent.act`` (or any ``act(obs, deterministic=...)``) at training step
        ``step``; returns the scalar results."""
        act = agent.act if hasattr(agent, "act") else agent
        res = evaluate(lambda o: act(o, deterministic=self.deterministic), self.env_id, self.episodes, self.seed,
                       self.ref_min_score, self.ref_max_score, on_step=self.on_step, **self.kwargs)
        scalars = {k: v for k, v in res.items() if not isinstance(v, list)}
        if self.best_return is None or scalars["return_mean"] > self.best_return:
            self.best_return = scalars["return_mean"]
            score = scalars["normalized_score"]
            self.best_normalized_score = score if np.isfinite(score) else None
        self.last = res
        if step is not None:
            score = scalars.get("normalized_score")
            self.history.append({"step": int(step), "return_mean": float(scalars["return_mean"]),
                                 "normalized_score": float(score) if score is not None and np.isfinite(score) else None})
        for fn in self.callbacks:
            fn(agent, step, scalars)
        return scalars

    def between(self, start: int, end: int | None = None) -> list[dict]:
        """The evaluations at steps in (start, end] (end None: no upper bound)."""
        return [h for h in self.history if h["step"] > start and (end is None or h["step"] <= end)]

    def state_dict(self) -> dict:
        return {"best_return": self.best_return, "best_normalized_score": self.best_normalized_score,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.best_return = state.get("best_return")
        self.best_normalized_score = state.get("best_normalized_score")
        self.history = list(state.get("history", []))


def normalized_regret(evaluations: list[dict]) -> float | None:
    """offrl's normalized-score regret: mean over ``evaluations`` of 1 − normalized_score/100 (None
    without evaluations or reference scores). CORL's regret is defined on success rates (goal
    tasks); this locomotion analogue is offrl's own extension."""
    scores = [h["normalized_score"] for h in evaluations]
    if not scores or any(s is None for s in scores):
        return None
    return float(np.mean([1.0 - s / 100.0 for s in scores]))


def mean_normalized_score(evaluations: list[dict]) -> float | None:
    """Mean normalized score over ``evaluations`` (None without evaluations or reference scores)."""
    scores = [h["normalized_score"] for h in evaluations]
    if not scores or any(s is None for s in scores):
        return None
    return float(np.mean(scores))


def crossed(prev: int, step: int, every: int) -> bool:
    """Whether going from step ``prev`` to ``step`` passed a multiple of ``every`` (0: never)."""
    return every > 0 and (step // every) > (prev // every)
