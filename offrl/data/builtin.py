"""Small datasets offrl builds itself in seconds, with no trained policy needed.

``offrl/invertedpendulum/scripted-v0`` — InvertedPendulum-v5 (actions rescaled to [-1, 1]).
At every step the behaviour takes, with probability ½, a stabilising linear controller's action
plus Gaussian noise (σ = 0.2), and otherwise the *destabilising* opposite action plus noise.
The mix keeps the pole up for only a few dozen steps (mean return ≈ 10–20 of a possible 1000),
and cloning it averages the two modes to ≈ 0 — a policy that also falls at once. An offline RL
method that weighs actions by their value (IQL, …) can recover the stabilising controller and
balance for the whole 1000-step episode, so the dataset doubles as a fast learning test.
Reference scores: min = mean return of uniform random actions over 100 episodes, max = 1000.
"""

from __future__ import annotations

import numpy as np

from offrl.data.registry import DatasetInfo, register

SCRIPTED_ID = "offrl/invertedpendulum/scripted-v0"
ENV_ID = "InvertedPendulum-v5"
# u = K·[x, θ, ẋ, θ̇] in the unit action box; balances the pole for 1000 steps from any reset
GAINS = np.array([0.56, 5.19, 0.65, 0.63], dtype=np.float64)


def collect_scripted(num_transitions: int = 20_000, seed: int = 0, p_good: float = 0.5, noise: float = 0.2):
    """Roll out the mixed controller for (at least) ``num_transitions`` steps of whole episodes."""
    from offrl.envs import make_env

    env = make_env(ENV_ID)
    rng = np.random.default_rng(seed)
    episodes, total, ep = [], 0, 0
    try:
        while total < num_transitions:
            obs, _ = env.reset(seed=seed * 100_000 + ep)
            o_list, a_list, r_list, term_list, trunc_list = [obs], [], [], [], []
            while True:
                sign = 1.0 if rng.random() < p_good else -1.0
                a = np.clip(sign * (GAINS @ obs) + noise * rng.standard_normal(), -1.0, 1.0)
                obs, r, term, trunc, _ = env.step(np.array([a], dtype=np.float32))
                o_list.append(obs)
                a_list.append([a])
                r_list.append(r)
                term_list.append(term)
                trunc_list.append(trunc)
                if term or trunc:
                    break
            episodes.append({
                "seed": seed * 100_000 + ep,
                "observations": np.asarray(o_list, dtype=np.float32),
                "actions": np.asarray(a_list, dtype=np.float32),
                "rewards": np.asarray(r_list, dtype=np.float32),
                "terminations": np.asarray(term_list, dtype=bool),
                "truncations": np.asarray(trunc_list, dtype=bool),
            })
            total += len(a_list)
            ep += 1
    finally:
        env.close()
    return episodes


def random_policy_return(episodes: int = 100, seed: int = 123) -> float:
    """Mean return of uniform random actions (Minari's ref_min_score protocol, action space seeded 123)."""
    from offrl.evaluation import evaluate

    rng = np.random.default_rng(seed)
    res = evaluate(lambda o: rng.uniform(-1, 1, (len(o), 1)), ENV_ID, episodes, seed=seed)
    return res["return_mean"]


def build_scripted(info: DatasetInfo | None = None, force: bool = False, num_transitions: int = 20_000,
                   seed: int = 0) -> str:
    import gymnasium as gym

    from offrl.data.minari_io import check_minari_root
    from offrl.data.writer import write_minari_dataset

    check_minari_root()  # before collecting: a bad MINARI_DATASETS_PATH fails at once
    episodes = collect_scripted(num_transitions, seed)
    box = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    return write_minari_dataset(
        SCRIPTED_ID, episodes, ENV_ID, action_space=box, ref_min_score=random_policy_return(),
        ref_max_score=1000.0, algorithm_name="scripted-mixed-controller", force=force,
        description=__doc__.split("\n\n", 1)[1].strip(),
    )


register(DatasetInfo(
    id=SCRIPTED_ID, source="offrl", env_id=ENV_ID, ref_min_score=None, ref_max_score=1000.0, obs_dim=4, act_dim=1,
    description="InvertedPendulum-v5, a stabilising controller mixed 50/50 with its opposite; 20k steps, built in seconds",
    builder=build_scripted,
))
