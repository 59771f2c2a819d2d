"""TD3+BC: A Minimalist Approach to Offline Reinforcement Learning (Fujimoto & Gu, NeurIPS 2021).

TD3 with a behaviour-cloning term added to the actor loss and the Q term normalized by its scale;
states are normalized by the dataset's mean and std. The shared TD3 machinery (target policy
smoothing, delayed actor, λ, Polyak targets) lives in :mod:`offrl.td3`; this file is the delta:

    λ   = α / mean_B |Q₁(s, π(s))|          (detached; α = 2.5)
    L_π = −λ · mean_B Q₁(s, π(s)) + mean_{B, dims} (π(s) − a)²

Critic: y = r + γ(1 − d) min(Q̄₁, Q̄₂)(s', clip(π̄(s') + clip(N(0, 0.2²), −0.5, 0.5), −1, 1)),
L_Q = MSE(Q₁, y) + MSE(Q₂, y) every step; actor and targets (τ = 0.005) every 2 steps.
Networks 2×256 ReLU, Adam 3e-4, batch 256, γ 0.99, 1M steps (the paper's and official defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offrl.registry import Algorithm, register
from offrl.td3 import TD3Agent, TD3Config, td3_prepare


@dataclass
class Config(TD3Config):
    """TD3+BC (α = 2.5, states normalized, TD3 defaults)."""


class TD3BC(TD3Agent):
    """TD3+BC agent: ``update(batch) -> metrics``, ``act(obs)``, ``save``/``load``."""

    algo = "td3_bc"
    Config = Config
    stackable = True  # --seeds (offrl.stacked)

    def actor_loss(self, batch, aux=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pi = self.actor(batch.obs)
        q = self.critic(batch.obs, pi)[0]
        q_term, lam = self.q_term(q)  # −λ·mean Q, per seed for stacked seeds
        bc = self.batch_mean((pi - batch.act).square())
        return q_term + bc, {"bc_loss": bc.detach(), "lambda": lam, "q_pi": self.seed_mean(q.detach())}


ALGORITHM = register(Algorithm("td3_bc", TD3BC, Config, prepare=td3_prepare, kind="offline", doc="TD3+BC (Fujimoto & Gu, 2021)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/td3_bc.py [flags]`


if __name__ == "__main__":
    main()
