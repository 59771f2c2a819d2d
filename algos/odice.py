"""O-DICE: Offline RL with orthogonal-gradient DICE (Mao, Xu, Zhang, Zhan; ICLR 2024).

A DICE method whose value update keeps only the part of the backward (s') gradient that is
orthogonal to the forward (s) gradient, so the two never cancel. Official code:
maoliyuan/ODICE-Pytorch (``orthogonal_true_g_update``); followed where it and the paper differ.

Pearson χ², f(x) = (x − 1)²: f*(y) = y·ω − (ω − 1)², ω = max(y/2 + 1, 0).

    δ_f   = r + γ(1 − d) V̄(s') − V(s)         forward residual: gradient through V(s) only
    δ_b   = r + γ(1 − d) V(s') − V̄(s)         backward residual: gradient through V(s') only
    L_f   = λ · mean f*(δ_f),   L_b = λ · η · mean f*(δ_b),   L_lin = (1 − λ) · mean_{s∈D} V(s)
    g_f   = ∇L_f,  g_b = ∇L_b   (flattened over ALL V parameters, both twins: one global vector)
    c     = ⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10)
    g     = ∇L_lin + g_f + (g_b − c · g_f)     (η scales L_b before the projection; L_lin after)
    one Adam step on V with g, then V̄ ← 0.005 V + 0.995 V̄
    w     = min(relu(δ_f), 100)                (δ_f from BEFORE the V step, detached)
    L_π   = −mean(w · log π(a|s))              (twin V: w is [2, B], the mean covers both heads)

V is a TwinV (two MLPs s → 256 → 256 → 1, LayerNorm after each hidden Linear for locomotion;
V(s) with one head is the twins' min, V̄ is the min of the target twins); δ_f and δ_b keep the
per-head V(s), V(s'). The policy weight is relu(δ_f) as in the official code, not the textbook
(f')⁻¹(δ) = δ/2 + 1 for this f. Policy: Gaussian, mean MLP s → 1024 → 1024 → |A| (no tanh in the RL
setting), state-independent log-std in [−5, 2], Adam with weight decay 1e-4; act = mean clipped to
±1. Rewards: locomotion r·1000/(max − min episode return), antmaze −3 where r = 0, else 0.

Offline imitation (``--expert-dataset ID --expert-episodes K``): the first K complete episodes of
the expert dataset plus the reward-free ``--dataset`` rows ("union"), rewards 1 on expert rows and
0 on union rows (``--il-reward label``; this labelling is offrl's choice — the official IL script
trains on a single expert trajectory, the one with index T, with all rewards 0; ``--no-union --il-reward zero
--expert-episodes 1`` trains on the first one), with the official IL hyperparameters: λ 0.4, lr 1e-4, tanh mean, normalized states,
no LayerNorm, weight decay 1e-5 (walker2d 1e-3); the official IL runs use 500k steps.

``--update-rule true_g`` (full gradient through both V(s) and V(s')) and ``semi_g`` (target V at
s') are the ablations of the official code: L = mean((1 − λ) V(s) + λ f*(δ)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from offrl.agent import Agent
from offrl.errors import check
from offrl.nets import EnsembleMLP, GaussianActor, soft_update_
from offrl.preprocess import dataset_domain, fill_unset, reward_mode_for, reward_transform
from offrl.registry import Algorithm, register
from offrl.train import OfflineConfig, Prepared

REWARD_BY_DOMAIN = {"locomotion": "return_range", "antmaze": "sparse_minus3"}


def f_star(y: torch.Tensor) -> torch.Tensor:
    """Pearson χ² conjugate f*(y) = y·ω − (ω − 1)², ω = max(y/2 + 1, 0)."""
    omega = (y / 2 + 1).clamp(min=0.0)
    return y * omega - (omega - 1).square()


def policy_weight(residual: torch.Tensor, max_weight: float = 100.0) -> torch.Tensor:
    """min(relu(δ), max): the official code's (f')⁻¹ for Pearson χ², clipped."""
    return residual.clamp(min=0.0, max=max_weight)


def project_backward(g_f: list[torch.Tensor], g_b: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """g_f + (g_b − c·g_f) with c = ⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10) over all tensors at once; returns (g, c)."""
    dot = torch.stack([(a * b).sum() for a, b in zip(g_f, g_b)]).sum()
    sq = torch.stack([a.square().sum() for a in g_f]).sum()
    c = dot / sq.clamp(min=1e-10)
    return [(1.0 - c) * a + b for a, b in zip(g_f, g_b)], c


@dataclass
class Config(OfflineConfig):
    """O-DICE (official repo defaults λ 0.6, η 1.0; the paper tunes both per dataset)."""

    lam: float | None = None
    """λ: weight of the f* terms; 1 − λ weighs the linear term mean V(s) (official name: Lambda; preset 0.6, imitation 0.4)."""
    eta: float = 1.0
    """η: scale of the backward-gradient loss before the orthogonal projection."""
    update_rule: Literal["orthogonal_true_g", "true_g", "semi_g"] = "orthogonal_true_g"
    """orthogonal_true_g (O-DICE), true_g (full gradient) or semi_g (target V at s'): the official ablations."""
    discount: float = 0.99
    """Discount γ."""
    tau: float = 0.005
    """EMA rate of the target V."""
    value_lr: float | None = None
    """V learning rate, Adam without weight decay (preset 2e-4; imitation 1e-4)."""
    policy_lr: float | None = None
    """Policy learning rate (preset 2e-4; imitation 1e-4)."""
    weight_decay: float | None = None
    """Policy Adam weight decay, L2 (preset 1e-4; imitation 1e-5, walker2d 1e-3)."""
    weight_max: float = 100.0
    """Clip of the policy weights relu(δ_f)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of each V head."""
    policy_hidden: tuple[int, ...] = (1024, 1024)
    """Hidden sizes of the policy's mean network."""
    layer_norm: bool | None = None
    """LayerNorm in V (preset: on for locomotion RL; off for antmaze and imitation)."""
    twin_v: bool | None = None
    """Two V heads (TwinV) (preset: on; off for antmaze large and umaze-diverse)."""
    tanh_mean: bool | None = None
    """tanh on the policy mean (preset: off for RL, on for imitation)."""
    normalize_states: bool | None = None
    """Normalize states by dataset mean/std + 1e-3 (preset: off for RL, on for imitation)."""
    reward_mode: Literal["auto", "return_range", "sparse_minus3", "none"] = "auto"
    """RL reward transform: return_range = r·1000/(max−min episode return), sparse_minus3 = −3 where r = 0 else 0; auto: return_range for locomotion, sparse_minus3 for antmaze."""
    expert_dataset: str | None = None
    """Offline imitation: take expert trajectories from this dataset; --dataset becomes the reward-free union data."""
    expert_episodes: int = 1
    """Offline imitation: how many (complete, first) expert episodes to use."""
    il_reward: Literal["label", "zero"] = "label"
    """Offline imitation rewards: label = 1 on expert rows, 0 on union rows; zero = 0 everywhere (the official IL script, which trains on expert rows only)."""
    union: bool = True
    """Offline imitation: include the --dataset rows (off: expert rows only, as the official IL script)."""

    def validate(self) -> None:
        super().validate()
        if self.lam is not None:
            check(0.0 <= self.lam <= 1.0, f"--lam must be in [0, 1], got {self.lam}")
        check(self.expert_episodes > 0, f"--expert-episodes must be positive, got {self.expert_episodes}")
        check(self.eta >= 0, f"--eta must be >= 0, got {self.eta}")
        check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        check(self.weight_max > 0, f"--weight-max must be positive, got {self.weight_max}")
        check(all(h > 0 for h in self.hidden + self.policy_hidden), "--hidden and --policy-hidden must be positive sizes")

    @property
    def imitation(self) -> bool:
        return self.expert_dataset is not None

    def resolve(self, dataset) -> None:
        antmaze = dataset_domain(self.dataset) == "antmaze"
        il = self.imitation
        walker = "walker2d" in re.split(r"[-/_]", (self.expert_dataset or self.dataset).lower())
        defaults = {"lam": 0.4 if il else 0.6, "value_lr": 1e-4 if il else 2e-4, "policy_lr": 1e-4 if il else 2e-4,
                    "weight_decay": (1e-3 if walker else 1e-5) if il else 1e-4, "tanh_mean": il,
                    "normalize_states": il, "layer_norm": not (antmaze or il)}
        fill_unset(self, **defaults)
        if self.twin_v is None:
            tokens = set(re.split(r"[-/_]", self.dataset.lower()))
            single = antmaze and ("large" in tokens or ("umaze" in tokens and "diverse" in tokens))
            self.twin_v = not single


class ODICE(Agent):
    """O-DICE agent: ``update(batch) -> metrics``, ``act(obs)``, ``save``/``load``."""

    algo = "odice"
    Config = Config

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        check(None not in (cfg.layer_norm, cfg.twin_v, cfg.lam, cfg.value_lr, cfg.policy_lr, cfg.weight_decay,
                           cfg.tanh_mean), "O-DICE config is not resolved (presets unset)")
        heads = 2 if cfg.twin_v else 1
        self.value = EnsembleMLP(obs_dim, 1, heads, tuple(cfg.hidden), layer_norm=cfg.layer_norm)
        self.value_target = EnsembleMLP(obs_dim, 1, heads, tuple(cfg.hidden), layer_norm=cfg.layer_norm)
        self.value_target.load_state_dict(self.value.state_dict())
        self.value_target.requires_grad_(False)
        self.actor = GaussianActor(obs_dim, act_dim, tuple(cfg.policy_hidden), tanh_mean=cfg.tanh_mean)
        self.to(self.device)
        self.optimizers = {
            "value": self.adam(self.value.parameters(), cfg.value_lr),
            "actor": self.adam(self.actor.parameters(), cfg.policy_lr, weight_decay=cfg.weight_decay),
        }

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic).clamp(-1.0, 1.0)

    def v_heads(self, obs: torch.Tensor) -> torch.Tensor:
        """Every V head at ``obs``: ``[heads, B]``."""
        return self.value(obs).squeeze(-1)

    def value_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The V update of ``cfg.update_rule``; returns (policy residual δ [heads, B], metrics)."""
        cfg = self.cfg
        obs, rew, next_obs = batch.obs, batch.rew, batch.next_obs
        not_done = 1.0 - batch.done
        params = list(self.value.parameters())
        v = self.v_heads(obs)
        metrics: dict[str, torch.Tensor] = {}
        if cfg.update_rule == "orthogonal_true_g":
            with torch.no_grad():
                target_v = self.value_target(obs).squeeze(-1).min(0).values
                target_v_next = self.value_target(next_obs).squeeze(-1).min(0).values
            v_next = self.v_heads(next_obs)
            forward = rew + cfg.discount * not_done * target_v_next - v
            backward = rew + cfg.discount * not_done * v_next - target_v
            loss_f = cfg.lam * f_star(forward).mean()
            loss_b = cfg.lam * cfg.eta * f_star(backward).mean()
            loss_lin = (1.0 - cfg.lam) * v.mean()
            g_f = torch.autograd.grad(loss_f, params, retain_graph=True)
            g_b = torch.autograd.grad(loss_b, params, retain_graph=True)
            g_lin = torch.autograd.grad(loss_lin, params)
            g_dual, c = project_backward(list(g_f), list(g_b))
            for p, gl, gd in zip(params, g_lin, g_dual):
                p.grad = gl + gd
            residual = forward
            metrics.update(forward_loss=loss_f.detach(), backward_loss=loss_b.detach(), linear_loss=loss_lin.detach(),
                           parallel_coef=c.detach())
        else:
            if cfg.update_rule == "true_g":
                v_next = self.v_heads(next_obs)
            else:
                with torch.no_grad():
                    v_next = self.value_target(next_obs).squeeze(-1).min(0).values
            residual = rew + cfg.discount * not_done * v_next - v
            loss = ((1.0 - cfg.lam) * v + cfg.lam * f_star(residual)).mean()
            self.optimizers["value"].zero_grad(set_to_none=True)
            loss.backward()
            metrics["value_loss"] = loss.detach()
        self.optimizers["value"].step()
        soft_update_(self.value_target, self.value, cfg.tau)
        residual = residual.detach()
        metrics.update(v_mean=v.detach().mean(), td_mean=residual.mean(), td_min=residual.min(), td_max=residual.max())
        return residual, metrics

    def update(self, batch) -> dict[str, torch.Tensor]:
        residual, metrics = self.value_step(batch)
        weight = policy_weight(residual, self.cfg.weight_max)  # [heads, B]
        nll = -self.actor.log_prob(batch.obs, batch.act)  # [B]
        policy_loss = (weight * nll).mean()
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        policy_loss.backward()
        opt.step()
        metrics.update(policy_loss=policy_loss.detach(), weight_mean=weight.mean(), weight_max=weight.max(),
                       weight_zero=(weight == 0).float().mean())
        return metrics


def imitation_dataset(cfg: Config, union):
    """The first ``expert_episodes`` complete episodes of ``cfg.expert_dataset`` followed by the
    union rows (``--dataset``), with rewards 1/0 (``label``) or 0 (``zero``)."""
    from offrl.data import load_dataset
    from offrl.data.dataset import ARRAY_FIELDS, Dataset

    expert = load_dataset(cfg.expert_dataset)
    check((expert.obs_dim, expert.act_dim) == (union.obs_dim, union.act_dim),
          f"{expert.id} has obs/act dims {expert.obs_dim}/{expert.act_dim}, {union.id} has {union.obs_dim}/{union.act_dim}")
    done = np.flatnonzero((expert.terminals > 0) | (expert.timeouts > 0))
    check(len(done) >= cfg.expert_episodes,
          f"{expert.id} has {len(done)} complete episodes, fewer than --expert-episodes {cfg.expert_episodes}")
    ex = expert.subset(np.arange(done[cfg.expert_episodes - 1] + 1))
    parts = [ex, union] if cfg.union else [ex]
    arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ARRAY_FIELDS}
    label = 1.0 if cfg.il_reward == "label" else 0.0
    arrays["rewards"] = np.concatenate([np.full(len(ex), label, np.float32)] +
                                       ([np.zeros(len(union), np.float32)] if cfg.union else []))
    name = f"{cfg.expert_episodes}x{expert.id}" + (f"+{union.id}" if cfg.union else "")
    return Dataset(**arrays, metadata=dict(union.metadata, id=name, expert_rows=len(ex))), len(ex)


def prepare(cfg: Config, dataset) -> Prepared:
    """RL: rewards by domain (official code). Imitation: expert + union rows, labelled rewards.
    Optional state normalization over the rows trained on."""
    if cfg.imitation:
        replaced, _ = imitation_dataset(cfg, dataset)
        mean, std = replaced.state_stats() if cfg.normalize_states else (None, None)
        return Prepared(rewards=replaced.rewards, obs_mean=mean, obs_std=std, dataset=replaced)
    mode = reward_mode_for(cfg.reward_mode, cfg.dataset, REWARD_BY_DOMAIN)
    mean, std = dataset.state_stats() if cfg.normalize_states else (None, None)
    return Prepared(reward_fn=reward_transform(mode, dataset), obs_mean=mean, obs_std=std)


ALGORITHM = register(Algorithm("odice", ODICE, Config, prepare=prepare, kind="offline", doc="O-DICE (Mao et al., 2024)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/odice.py [flags]`


if __name__ == "__main__":
    main()
