"""CDSA: score-based action correction for any pre-trained offline policy (Liu, Yang, Li, 2024).

CDSA (Conservative Denoising Score-based Algorithm, arXiv 2406.07541) decouples conservatism from
policy training: a denoising score-matching model learns the gradient field of the dataset's state
density, and an inverse dynamics model turns a step along that field into an auxiliary action
component added to a frozen base policy's action, steering toward denser (safer) regions; the
paper assumes a deterministic continuous MDP. There is no public code, and the paper's exact
combination rule could not be read here, so this file implements the following derivation
(every choice a flag), written down in docs/cdsa.md:

Models, all on dataset states normalized by the dataset mean/std (x = (s − μ)/σ_s):

    score    s_φ(x, σ) = net_φ([x, log σ]) / σ,  σ ∈ geometric grid [σ_min, σ_max] (num_sigmas levels)
             L_score = E_{σ, x, ε} ‖σ · s_φ(x + σε, σ) + ε‖²          (denoising score matching, λ(σ) = σ²)
    forward  F(x, a) ≈ x' − x                                         L_F = E ‖F(x, a) − (x' − x)‖²
    inverse  I(x, x') ≈ a  (tanh output)                               L_I = E ‖I(x, x') − a‖²

Acting, with the base action a₀ = π₀(s):

    x̂'  = x + F(x, a₀)                          the next state the base action leads to
    x*  = x̂' + ε · σ_a² · s_φ(x̂', σ_a)          ε = 1: Tweedie's denoised estimate at level σ_a
    Δa  = I(x, x*) − I(x, x̂')                   the inverse model's bias cancels in the difference
    a   = clip(a₀ + w · Δa, −1, 1)               w = 0 returns a₀ exactly (no clip, no model call)

Training fits the three models on the dataset (the base policy stays frozen); evaluation runs the
corrected policy. At the end the run compares base (w = 0) with base + CDSA over the same episode
seeds: normalized score, VaR and CVaR of the episode returns at ``--risk-alpha`` (10 %).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from offrl.agent import Agent, load_checkpoint
from offrl.errors import OffrlError, check
from offrl.evaluation import COMPARE_SEED_OFFSET, Evaluator
from offrl.io import write_json
from offrl.nets import MLP
from offrl.registry import Algorithm, register
from offrl.train import OfflineConfig, Prepared, run_offline


@dataclass
class Config(OfflineConfig):
    """CDSA plug-in: score and dynamics models trained on the dataset, correcting a frozen base policy."""

    checkpoint: str = ""
    """Base policy: an offrl checkpoint or policy file (IQL, TD3+BC, PRDC, A2PR, O-DICE, ...). Required."""
    dataset: str | None = None
    """Dataset for the score and dynamics models (default: the base checkpoint's dataset)."""
    steps: int = 100_000
    """Gradient steps of the score, forward and inverse models (each step updates all three)."""
    eval_every: int = 10_000
    """Evaluate the corrected policy every this many steps (and at the end)."""
    sigma_min: float = 0.01
    """Smallest noise level of the score model (normalized state units)."""
    sigma_max: float = 1.0
    """Largest noise level of the score model."""
    num_sigmas: int = 10
    """Noise levels, geometric from sigma_max to sigma_min."""
    act_sigma: float | None = None
    """Noise level σ_a of the score used at act time (default: sigma_min)."""
    step_size: float = 1.0
    """ε: the predicted next state moves by ε·σ_a²·s_φ (1 = Tweedie's denoised estimate)."""
    weight: float = 1.0
    """w: weight of the action correction (0 gives exactly the base policy's actions)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the score, forward and inverse models."""
    lr: float = 3e-4
    """Adam learning rate of the three models."""
    compare_episodes: int = 20
    """Episodes (same seeds for both) of the final base vs base + CDSA comparison."""
    risk_alpha: float = 0.1
    """Tail level of VaR/CVaR of episode returns in the comparison."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.checkpoint), "--checkpoint (the base policy) is required")
        check(0 < self.sigma_min <= self.sigma_max, f"need 0 < --sigma-min <= --sigma-max, got {self.sigma_min}, {self.sigma_max}")
        check(self.num_sigmas >= 1, f"--num-sigmas must be >= 1, got {self.num_sigmas}")
        check(self.act_sigma is None or self.act_sigma > 0, f"--act-sigma must be positive, got {self.act_sigma}")
        check(self.step_size >= 0 and self.weight >= 0, "--step-size and --weight must be >= 0")
        check(self.compare_episodes >= 1, f"--compare-episodes must be >= 1, got {self.compare_episodes}")
        check(0 < self.risk_alpha < 1, f"--risk-alpha must be in (0, 1), got {self.risk_alpha}")


def dsm_loss(score_fn, x: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor | None = None,
             levels: torch.Tensor | None = None) -> torch.Tensor:
    """Denoising score matching over noise levels: mean ‖σ·s(x + σε, σ) + ε‖² (λ(σ) = σ²)."""
    if levels is None:
        levels = torch.randint(0, len(sigmas), (len(x),), device=x.device)
    if noise is None:
        noise = torch.randn_like(x)
    sigma = sigmas[levels].unsqueeze(-1)
    return (sigma * score_fn(x + sigma * noise, sigma) + noise).square().sum(-1).mean()


def var_cvar(returns, alpha: float) -> tuple[float, float]:
    """Value-at-risk (the α-quantile of returns, lower tail) and CVaR (mean of returns ≤ VaR)."""
    r = np.sort(np.asarray(returns, dtype=np.float64))
    k = max(1, int(math.ceil(alpha * len(r))))
    return float(r[k - 1]), float(r[:k].mean())


class CDSA(Agent):
    """Frozen base policy + score-based correction: ``update(batch)`` fits the models, ``act`` corrects.
    The base is the agent's frozen part ``base`` (:class:`offrl.agent.FrozenPolicy`): never
    optimized, saved inside CDSA's checkpoints and policy files and restored from them."""

    algo = "cdsa"
    Config = Config
    policy_modules = ("score", "forward_model", "inverse_model")

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        base = self.frozen_policy("base", cfg.checkpoint)
        if base.algo == "cdsa":
            raise OffrlError("the base policy cannot itself be a CDSA checkpoint")
        if (base.obs_dim, base.act_dim) != (obs_dim, act_dim):
            raise OffrlError(f"the base policy has obs/act dims {base.obs_dim}/{base.act_dim}, the dataset {obs_dim}/{act_dim}")
        hidden = tuple(cfg.hidden)
        self.score = MLP(obs_dim + 1, obs_dim, hidden)
        self.forward_model = MLP(obs_dim + act_dim, obs_dim, hidden)
        self.inverse_model = MLP(2 * obs_dim, act_dim, hidden, output_activation="tanh")
        sigmas = torch.tensor(np.geomspace(cfg.sigma_max, cfg.sigma_min, cfg.num_sigmas), dtype=torch.float32)
        self.register_buffer("sigmas", sigmas)
        self.to(self.device)
        params = [*self.score.parameters(), *self.forward_model.parameters(), *self.inverse_model.parameters()]
        self.optimizers = {"models": torch.optim.Adam(params, lr=cfg.lr)}

    # ------------------------------------------------------------------ models
    def score_fn(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """s_φ(x, σ) = net([x, log σ]) / σ, with σ of shape [B, 1]."""
        return self.score(torch.cat([x, sigma.log()], -1)) / sigma

    def correction(self, x: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
        """Δa = I(x, x* ) − I(x, x̂') for normalized states ``x`` and base actions ``a0``."""
        cfg = self.cfg
        sigma = cfg.act_sigma if cfg.act_sigma is not None else cfg.sigma_min
        x_next = x + self.forward_model(torch.cat([x, a0], -1))
        s = torch.full((x.shape[0], 1), float(sigma), device=x.device)
        x_star = x_next + cfg.step_size * sigma ** 2 * self.score_fn(x_next, s)
        return self.inverse_model(torch.cat([x, x_star], -1)) - self.inverse_model(torch.cat([x, x_next], -1))

    def raw_policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        a0 = self.base(obs, deterministic)
        if self.cfg.weight == 0:
            return a0
        return (a0 + self.cfg.weight * self.correction(self.normalize_obs(obs), a0)).clamp(-1.0, 1.0)

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:  # pragma: no cover
        raise OffrlError("CDSA acts on raw observations (raw_policy/act), its base has its own normalization")

    def update(self, batch) -> dict[str, torch.Tensor]:
        obs, act, next_obs = batch.obs, batch.act, batch.next_obs
        score_loss = dsm_loss(self.score_fn, obs, self.sigmas)
        forward_loss = (self.forward_model(torch.cat([obs, act], -1)) - (next_obs - obs)).square().sum(-1).mean()
        inverse_loss = (self.inverse_model(torch.cat([obs, next_obs], -1)) - act).square().sum(-1).mean()
        opt = self.optimizers["models"]
        opt.zero_grad(set_to_none=True)
        (score_loss + forward_loss + inverse_loss).backward()
        opt.step()
        return {"score_loss": score_loss.detach(), "forward_loss": forward_loss.detach(),
                "inverse_loss": inverse_loss.detach()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device=None, path: str = "checkpoint"):
        if ckpt.get("algo") == cls.algo and "frozen" not in ckpt:
            if "base" not in ckpt:
                raise OffrlError(f"{path} has no base policy")
            ckpt = {**ckpt, "frozen": {"base": ckpt["base"]}}  # checkpoints written before frozen parts
        return super().from_checkpoint(ckpt, device=device, path=path)


def prepare(cfg: Config, dataset) -> Prepared:
    """The models work on normalized states (dataset mean/std + 1e-3)."""
    mean, std = dataset.state_stats()
    return Prepared(obs_mean=mean, obs_std=std)


def compare(agent: CDSA, env_id: str, episodes: int, seed: int, ref_min=None, ref_max=None, alpha: float = 0.1) -> dict:
    """Base (w = 0) vs base + CDSA (the agent's w) over the same episode seeds."""
    out = {}
    w = agent.cfg.weight
    evaluator = Evaluator(env_id, episodes, seed, ref_min_score=ref_min, ref_max_score=ref_max)
    for name, weight in (("base", 0.0), ("cdsa", w)):
        agent.cfg.weight = weight
        try:
            evaluator(agent)
        finally:
            agent.cfg.weight = w
        res = evaluator.last
        var, cvar = var_cvar(res["returns"], alpha)
        out[name] = {"return_mean": res["return_mean"], "return_std": res["return_std"],
                     "normalized_score": res["normalized_score"], f"var_{alpha:g}": var, f"cvar_{alpha:g}": cvar,
                     "returns": res["returns"]}
    return out


def train(cfg: Config) -> dict:
    """Fit the models on the dataset, evaluate the corrected policy, then compare with the base."""
    if not cfg.resume:
        check(bool(cfg.checkpoint), "--checkpoint (the base policy) is required")
        if cfg.dataset is None:
            base = load_checkpoint(cfg.checkpoint)
            cfg.dataset = base.get("dataset")
            check(cfg.dataset is not None, f"{cfg.checkpoint} does not name its dataset; pass --dataset")
    summary = run_offline(cfg, CDSA, prepare)
    ckpt = load_checkpoint(summary["checkpoint"])
    env = ckpt.get("env", {})
    if env.get("env_id"):
        agent = CDSA.from_checkpoint(ckpt, device="cpu")
        result = compare(agent, env["env_id"], agent.cfg.compare_episodes, seed=agent.cfg.seed + COMPARE_SEED_OFFSET,
                         ref_min=env.get("ref_min_score"), ref_max=env.get("ref_max_score"), alpha=agent.cfg.risk_alpha)
        write_json(os.path.join(summary["run_dir"], "comparison.json"), result)
        summary["comparison"] = {k: {m: v for m, v in r.items() if m != "returns"} for k, r in result.items()}
    return summary


ALGORITHM = register(Algorithm("cdsa", CDSA, Config, train, kind="plug-in", benchmark=False,
                               doc="CDSA score-based action correction of a base policy (Liu et al., 2024)"))
main = ALGORITHM.main  # `python algos/cdsa.py --checkpoint BASE [flags]`: fit, evaluate, compare; print the summary JSON.


if __name__ == "__main__":
    main()
