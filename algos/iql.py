"""IQL: Offline Reinforcement Learning with Implicit Q-Learning (Kostrikov, Nair, Levine, ICLR 2022).

IQL never queries Q at actions outside the dataset. V(s) is fit as an upper expectile of the
target Q over dataset actions (an in-sample approximation of max_a Q), Q is regressed onto
r + γV(s'), and the policy is extracted by advantage-weighted regression (AWR).

Update per step, in the official code's order (V → actor → Q → target):

    u      = min(Q̄₁, Q̄₂)(s, a) − V(s)
    L_V    = E[ |τ − 1(u < 0)| · u² ]                  (τ = expectile: weight τ where Q̄ > V)
    A      = min(Q̄₁, Q̄₂)(s, a) − V_new(s)
    L_π    = −E[ min(exp(β·A), 100) · log π(a|s) ]     (weights detached; β = inverse temperature)
    y      = r + γ (1 − d) V_new(s')                   (V_new: the V just updated; d: true terminals)
    L_Q    = E[ (Q₁ − y)² + (Q₂ − y)² ]                (sum over the twins, as the official code)
    Q̄      ← τ_t·Q + (1 − τ_t)·Q̄                        (τ_t = 0.005)

Policy: Gaussian with tanh on the mean and a state-independent log-std in [−5, 2] (no tanh
squashing of the distribution, so dataset actions are clipped to ±(1 − 1e-5)); the actor's learning
rate follows a cosine decay to 0 over the offline phase; V and Q use a constant rate. In an online
phase (``--online-steps``) the actor's rate is the constant ``--actor-lr`` (the official fine-tuning
config has no decay; CORL's cosine keeps stepping and passes 0 at the hand-over — not followed).
Rewards (``--reward-mode``, :mod:`offrl.preprocess`): locomotion ``return_range``
r·1000/(max episode return − min episode return); antmaze ``minus_one`` r − 1; online rewards get
the same transform.
States are not normalized (official code; CORL normalizes — `--normalize-states` turns it on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from offrl.agent import Agent
from offrl.errors import check
from offrl.nets import EnsembleCritic, GaussianActor, DeterministicActor, ValueNet, orthogonal_init_, soft_update_
from offrl.preprocess import dataset_domain, reward_mode_for, reward_transform
from offrl.registry import Algorithm, register
from offrl.train import OfflineConfig, Prepared

# (expectile, beta, actor dropout) per domain, from the official configs
PRESETS = {
    "locomotion": (0.7, 3.0, 0.0),
    "antmaze": (0.9, 10.0, 0.0),
    "kitchen": (0.7, 0.5, 0.1),
    "adroit": (0.7, 0.5, 0.1),
}


@dataclass
class Config(OfflineConfig):
    """Implicit Q-Learning. Unset (None) hyperparameters take the dataset domain's preset
    (locomotion: expectile 0.7, beta 3; antmaze: 0.9, 10; kitchen/adroit: 0.7, 0.5, dropout 0.1)."""

    expectile: float | None = None
    """Expectile τ of the value loss, in (0, 1) (preset: 0.7 locomotion, 0.9 antmaze)."""
    beta: float | None = None
    """Inverse temperature β of the advantage weights exp(β·A) (official name: temperature; preset: 3 locomotion, 10 antmaze, 0.5 kitchen/adroit)."""
    actor_dropout: float | None = None
    """Dropout in the actor's hidden layers (preset: 0.1 kitchen/adroit, else 0)."""
    exp_adv_max: float = 100.0
    """Clip of the advantage weights after the exponential."""
    discount: float = 0.99
    """Discount γ."""
    tau: float = 0.005
    """Polyak rate of the target Q networks."""
    actor_lr: float = 3e-4
    """Actor learning rate (cosine-decayed to 0 over the offline --steps unless --no-cosine-decay; constant online)."""
    value_lr: float = 3e-4
    """V learning rate."""
    critic_lr: float = 3e-4
    """Q learning rate."""
    cosine_decay: bool = True
    """Cosine-decay the actor learning rate to 0 over the offline phase (official code)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of every network."""
    deterministic_actor: bool = False
    """Deterministic tanh actor trained with advantage-weighted MSE instead of the Gaussian log-likelihood."""
    reward_mode: Literal["auto", "return_range", "minus_one", "none"] = "auto"
    """Reward transform: return_range = r·1000/(max−min episode return), minus_one = r−1; auto: return_range for locomotion, minus_one for antmaze."""
    normalize_states: bool = False
    """Normalize states by dataset mean/std (off in the official code)."""
    orthogonal_init: bool = True
    """Orthogonal initialisation with gain √2 (the official JAX initialiser)."""

    def validate_beta(self) -> None:
        if self.beta is not None:
            check(self.beta >= 0, f"--beta must be >= 0, got {self.beta}")

    def validate(self) -> None:
        super().validate()
        if self.expectile is not None:
            check(0.0 < self.expectile < 1.0, f"--expectile must be in (0, 1), got {self.expectile}")
        self.validate_beta()
        if self.actor_dropout is not None:
            check(0.0 <= self.actor_dropout < 1.0, f"--actor-dropout must be in [0, 1), got {self.actor_dropout}")
        check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        check(self.exp_adv_max > 0, f"--exp-adv-max must be positive, got {self.exp_adv_max}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"--hidden must be positive sizes, got {self.hidden}")

    def resolve(self, dataset) -> None:
        expectile, beta, dropout = PRESETS[dataset_domain(self.dataset)]
        self.expectile = expectile if self.expectile is None else self.expectile
        self.beta = beta if self.beta is None else self.beta
        self.actor_dropout = dropout if self.actor_dropout is None else self.actor_dropout


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|τ − 1(u < 0)| · u²) with u = Q − V: weight τ where Q > V, 1 − τ where Q ≤ V."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.square()).mean(-1)  # over the batch (per seed for stacked seeds)


def awr_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """exp(β·A) clipped at ``max_weight`` (after the exponential)."""
    return torch.exp(beta * adv).clamp(max=max_weight)


REWARD_BY_DOMAIN = {"locomotion": "return_range", "antmaze": "minus_one"}


class IQL(Agent):
    """IQL agent: ``update(batch) -> metrics``, ``act(obs)``, ``save``/``load``.

    Named steps a method built on IQL overrides (FamO2O): :meth:`value_step`, :meth:`awr_weights`,
    :meth:`actor_loss`, :meth:`critic_loss`; :meth:`update` runs them in the official order."""

    algo = "iql"
    Config = Config
    online_continuation = True
    stackable = True  # --seeds: reductions over the batch dim, per seed
    graph_safe = True  # --cuda-graph: no host sync; the cosine lr is written in place on the device

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        check(cfg.expectile is not None and cfg.beta is not None, "IQL config is not resolved (expectile/beta unset)")
        hidden = tuple(cfg.hidden)
        self.critic = EnsembleCritic(obs_dim, act_dim, 2, hidden)
        self.critic_target = EnsembleCritic(obs_dim, act_dim, 2, hidden)
        self.value = ValueNet(obs_dim, hidden)
        dropout = cfg.actor_dropout or 0.0
        if cfg.deterministic_actor:
            self.actor = DeterministicActor(obs_dim, act_dim, hidden, dropout=dropout)
        else:
            self.actor = GaussianActor(obs_dim, act_dim, hidden, dropout=dropout)
        if cfg.orthogonal_init:
            for net in (self.critic, self.value, self.actor):
                orthogonal_init_(net)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.to(self.device)
        self.optimizers = {
            "value": self.adam(self.value.parameters(), cfg.value_lr),
            # tensor lr: the cosine schedule is written in place inside update(), no host sync
            "actor": self.adam(self.actor.parameters(), torch.tensor(cfg.actor_lr, device=self.device)),
            "critic": self.adam(self.critic.parameters(), cfg.critic_lr),
        }

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic).clamp(-1.0, 1.0)

    def actor_lr(self) -> torch.Tensor:
        """Cosine decay lr·½(1 + cos(π·t/T)) of the official code (optax.cosine_decay_schedule)
        over the offline phase (T = --steps); constant in an online phase."""
        if not self.cfg.cosine_decay or self.phase_kind != "offline":
            return torch.full((), self.cfg.actor_lr, device=self.device)
        t = self.num_updates.clamp(max=self.cfg.steps).float()
        return self.cfg.actor_lr * 0.5 * (1.0 + torch.cos(math.pi * t / self.cfg.steps))

    # ------------------------------------------------------------------ named steps
    def value_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1. V towards the upper expectile of the target Q over dataset actions; returns
        (min target Q(s, a), V(s) before the step, the value loss)."""
        with torch.no_grad():
            target_q = self.critic_target(batch.obs, batch.act).min(0).values
        v = self.value(batch.obs)
        value_loss = expectile_loss(target_q - v, self.cfg.expectile)
        opt = self.optimizers["value"]
        opt.zero_grad(set_to_none=True)
        value_loss.sum().backward()  # the sum over stacked seeds (a no-op for one)
        opt.step()
        return target_q, v, value_loss

    def awr_weights(self, batch, adv: torch.Tensor) -> torch.Tensor:
        """exp(β·A) clipped (detached)."""
        return awr_weights(adv, self.cfg.beta, self.cfg.exp_adv_max)

    def actor_loss(self, batch, weights: torch.Tensor) -> torch.Tensor:
        """2. Advantage-weighted regression on the dataset actions."""
        if self.cfg.deterministic_actor:
            bc = (self.actor(batch.obs) - batch.act).square().sum(-1)
            return (weights * bc).mean(-1)
        return -(weights * self.actor.log_prob(batch.obs, batch.act)).mean(-1)

    def critic_loss(self, batch, q_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """3. Q regression onto r + γ(1 − d)V_new(s'); returns (loss, Q)."""
        q = self.critic(batch.obs, batch.act)
        return (q - q_target).square().sum(0).mean(-1), q

    def update(self, batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        opt = self.optimizers
        target_q, v, value_loss = self.value_step(batch)

        # V_new at s (advantages) and s' (Q target) in one forward pass
        with torch.no_grad():
            v_new, next_v = self.value(torch.cat([batch.obs, batch.next_obs], dim=-2)).chunk(2, dim=-1)
            adv = target_q - v_new
            weights = self.awr_weights(batch, adv)
            q_target = batch.rew + cfg.discount * (1.0 - batch.done) * next_v

        # 2. actor (AWR) and 3. Q regression: disjoint parameters, one backward pass
        actor_loss = self.actor_loss(batch, weights)
        critic_loss, q = self.critic_loss(batch, q_target)
        opt["actor"].zero_grad(set_to_none=True)
        opt["critic"].zero_grad(set_to_none=True)
        (actor_loss + critic_loss).sum().backward()
        opt["actor"].param_groups[0]["lr"].copy_(self.actor_lr())
        opt["actor"].step()
        opt["critic"].step()

        # 4. targets
        soft_update_(self.critic_target, self.critic, cfg.tau)
        self.num_updates += 1
        return {
            "value_loss": value_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "q_mean": self.seed_mean(q.detach(), 1),
            "v_mean": self.seed_mean(v.detach()),
            "adv_mean": self.seed_mean(adv),
            "weight_mean": self.seed_mean(weights),
            "weight_max": weights.amax(-1) if self.seeds else weights.max(),
            "actor_lr": opt["actor"].param_groups[0]["lr"].detach().clone(),
        }


def prepare(cfg: Config, dataset) -> Prepared:
    """Rewards by domain (official code), dataset actions clipped to ±(1 − 1e-5), optional state stats."""
    mode = reward_mode_for(cfg.reward_mode, cfg.dataset, REWARD_BY_DOMAIN)
    actions = np.clip(dataset.actions, -1.0 + 1e-5, 1.0 - 1e-5)
    mean, std = dataset.state_stats() if cfg.normalize_states else (None, None)
    return Prepared(reward_fn=reward_transform(mode, dataset), actions=actions, obs_mean=mean, obs_std=std)


ALGORITHM = register(Algorithm("iql", IQL, Config, prepare=prepare, kind="offline", doc="IQL (Kostrikov et al., 2022)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/iql.py [flags]`


if __name__ == "__main__":
    main()
