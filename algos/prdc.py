"""PRDC: Policy Regularization with Dataset Constraint (Ran, Li, Zhang, Yu; ICML 2023).

TD3 with a *dataset constraint*: the policy's action is pulled toward the action of the dataset
row nearest to the point (β·s, π(s)) — the nearest (state, action) pair in the whole dataset —
instead of toward the sampled transition's action (TD3+BC). Official code: LAMDA-RL/PRDC.

    key  = [β · s_norm, π(s)]  (detached)            the POLICY's action, not the dataset's
    j    = argmin_i ‖key − [β · s_i, a_i]‖₂           exact 1-NN over every dataset row
    λ    = α / mean_B |Q₁(s, π(s))|                   (detached; Q₁ only)
    L_π  = −λ · mean_B Q₁(s, π(s)) + mean_{B, dims} (π(s) − a_j)²

Critic, delayed actor (every 2 steps), target smoothing and Polyak targets as TD3 (:mod:`offrl.td3`).
States normalized by dataset mean/std (+1e-3); β multiplies the normalized state, actions are not
scaled. The search is exact (:class:`offrl.knn.ExactNN`): chunked brute force on the GPU with the
dataset held on the device, a KD-tree on the CPU (the official code uses scipy's KD-tree on CPU).
The official code queries the k-th neighbour with k = 1; only k = 1 is implemented.

Presets (official README): halfcheetah α 40, β 2; hopper, walker2d α 2.5, β 2; antmaze α 7.5,
β 7.5 with rewards 10000·r − 1 (taken literally from the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from offrl.errors import check
from offrl.knn import ExactNN
from offrl.registry import Algorithm, register
from offrl.td3 import TD3Agent, TD3Config, td3_prepare

@dataclass
class Config(TD3Config):
    """PRDC. Unset (None) α, β and reward scale/shift take the dataset's preset
    (halfcheetah α 40, β 2; hopper/walker2d α 2.5, β 2; antmaze α 7.5, β 7.5, r ← 10000·r − 1)."""

    preset_fields = ("alpha", "beta", "reward_scale", "reward_shift")
    presets = {  # official README
        "halfcheetah": (40.0, 2.0, 1.0, 0.0),
        "hopper": (2.5, 2.0, 1.0, 0.0),
        "walker2d": (2.5, 2.0, 1.0, 0.0),
        "antmaze": (7.5, 7.5, 10000.0, -1.0),
    }
    default_preset = (2.5, 2.0, 1.0, 0.0)

    alpha: float | None = None
    """α of the Q weight λ = α / mean|Q₁| (preset by env)."""
    beta: float | None = None
    """β: weight of the normalized state in the nearest-neighbour key [β·s, a] (preset by env)."""
    reward_scale: float | None = None
    """Rewards are used as reward_scale · r + reward_shift (preset: 1, antmaze 10000)."""
    reward_shift: float | None = None
    """Rewards are used as reward_scale · r + reward_shift (preset: 0, antmaze −1)."""
    nn_method: Literal["auto", "brute", "kdtree"] = "auto"
    """Exact nearest-neighbour search: brute (chunked on the device; GPU default) or kdtree (CPU default)."""
    nn_chunk: int = 262_144
    """Dataset rows per chunk of the brute-force search."""

    def validate(self) -> None:
        super().validate()
        if self.beta is not None:
            check(self.beta >= 0, f"--beta must be >= 0, got {self.beta}")
        check(self.nn_chunk > 0, f"--nn-chunk must be positive, got {self.nn_chunk}")


preset_for = Config.preset_for


class PRDC(TD3Agent):
    """PRDC agent; call :meth:`setup_data` (the training loop does) before updating."""

    algo = "prdc"
    Config = Config
    stackable = True  # --seeds (offrl.stacked): one index, queried for every seed's actions at once
    graph_safe = False  # the nearest-neighbour search (a KD-tree on CPU) is not captured

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        self.index: ExactNN | None = None
        self.data_actions: torch.Tensor | None = None

    def setup_data(self, buffer) -> None:
        """Build the exact index over [β · s_norm, a] of every dataset row (states as the buffer holds them)."""
        obs, act = buffer.observations, buffer.actions
        self.set_dataset(obs, act)

    def set_dataset(self, obs: torch.Tensor, act: torch.Tensor) -> None:
        keys = torch.cat([self.cfg.beta * obs, act], 1).to(self.device)
        self.index = ExactNN(keys, method=self.cfg.nn_method, chunk=self.cfg.nn_chunk)
        self.data_actions = act.to(self.device)

    def nearest_actions(self, obs: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """Action of the dataset row nearest to [β·s, π(s)] (no gradient)."""
        keys = torch.cat([self.cfg.beta * obs, pi.detach()], -1)
        idx = self.index.query(keys.reshape(-1, keys.shape[-1]))  # stacked seeds [S, B, ·]: one query for all
        return self.data_actions[idx].reshape(*pi.shape)

    def actor_loss(self, batch, aux=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        check(self.index is not None, "PRDC needs its dataset index: call setup_data(buffer) first")
        obs = batch.obs
        pi = self.actor(obs)
        q = self.critic(obs, pi)[0]
        q_term, lam = self.q_term(q)  # −λ·mean Q, per seed for stacked seeds
        target = self.nearest_actions(obs, pi)
        constraint = self.batch_mean((pi - target).square())
        return q_term + constraint, {"constraint_loss": constraint.detach(), "lambda": lam,
                                     "q_pi": self.seed_mean(q.detach())}

    def compiled_update(self):
        """The KD-tree query is not capturable: compile the critic step only on CPU."""
        self._critic_update = torch.compile(self.critic_update)
        if self.index is not None and self.index.method == "brute":
            self._actor_step = torch.compile(self.actor_step)
        return self.update


ALGORITHM = register(Algorithm("prdc", PRDC, Config, prepare=td3_prepare, kind="offline", doc="PRDC (Ran et al., 2023)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/prdc.py [flags]`


if __name__ == "__main__":
    main()
