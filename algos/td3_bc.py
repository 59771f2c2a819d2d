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

from offrl.td3 import TD3Agent, TD3Config, q_weight, td3_prepare
from offrl.train import run_offline


@dataclass
class Config(TD3Config):
    """TD3+BC (α = 2.5, states normalized, TD3 defaults)."""


class TD3BC(TD3Agent):
    """TD3+BC agent: ``update(batch) -> metrics``, ``act(obs)``, ``save``/``load``."""

    algo = "td3_bc"
    Config = Config

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        self._init_optimizers()

    def actor_loss(self, batch, aux=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        obs, act = batch[0], batch[1]
        pi = self.actor(obs)
        q = self.critic(obs, pi)[0]
        lam = q_weight(self.cfg.alpha, q)
        bc = (pi - act).square().mean()
        return -lam * q.mean() + bc, {"bc_loss": bc.detach(), "lambda": lam, "q_pi": q.detach().mean()}


def train(cfg: Config) -> dict:
    """Train TD3+BC on ``cfg.dataset``; returns the run summary."""
    return run_offline(cfg, TD3BC, td3_prepare)


def main(argv: list[str] | None = None) -> dict:
    """``python algos/td3_bc.py [flags]``: parse flags, train, print the summary JSON line."""
    from offrl.cli import run_script

    return run_script(Config, train, argv, prog="td3_bc", description=__doc__)


if __name__ == "__main__":
    main()
