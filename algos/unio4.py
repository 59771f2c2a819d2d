"""Uni-O4: Unifying Online and Offline Deep RL with Multi-Step On-Policy Optimization (Lei et al., ICLR 2024).

One on-policy objective offline and online, as the official code (``Lei-Kun/Uni-O4`` @1eecc45)
runs it. The stages are phases of one run (each checkpointed and resumable):

1. ``critic`` — one shared critic on the dataset rows (s, a, r, s', a', not_done, MC return).
   IQL (``--critic iql``, the scripts' ``--is_iql``): double Q (2 × 1024) and V (3 × 512),
   V towards the expectile τ = 0.7 of the target min-Q, then Q towards r + γ·not_done·V_new(s'),
   target Polyak τ_t = 0.005 every 2 steps:

       L_V = E[|τ − 1(u < 0)| u²],  u = min Q̄(s, a) − V(s);   L_Q = E[(Q₁ − y)² + (Q₂ − y)²]

   ``--critic mc-sarsa``: V regressed on the Monte-Carlo return, Q by SARSA on (s', a') with a target.
2. ``dynamics`` — the OPE model, :class:`offrl.models.EnsembleDynamics` (7 models, 5 elites, 4 × 200),
   trained epoch by epoch on raw states with holdout early stopping (one global step = one epoch).
3. ``bc`` — N = 4 Gaussian members, (s) → 3 hidden → 2|A| with tanh on the whole output,
   μ = first half, log σ = −5 + 2.5(x + 1) (∈ [−5, 0]), orthogonal init; the joint loss
   (α = 0.1, the maximum over the other members detached):

       L_i = E[−log π_i(a|s) − α (log π_i(a|s) − max_{j≠i} log π_j(a|s))]

4. ``improve`` — per member i and step, on 512 dataset states, ã ~ π_i^old (no gradient),
   Â = normalize(min Q(s, ã) − V(s)) (batch-normalized only; mc-sarsa: then ω-weighted),

       ρ = π_i(ã|s) / π_i^old(ã|s);   L_i = −E[min(ρÂ, clip(ρ, 1 ± ε)Â)]   (gradient norm ≤ 0.5 per member)

   lr = 1e-4·(1 − k/T) written after step k, ε = 0.25·(1 − k/T) for k ≤ 200 then frozen.
   Every K = 100 steps the OPE gate: per member, the mean min-Q along H-step model rollouts of
   its mean action from 512 dataset states (terminated rollouts dropped); π_i^old ← π_i only where
   that score beats the member's best. Every 500 steps each member is evaluated in the real env.
5. ``value`` (only with reward scaling) — a fresh V (256 × 3, ReLU output) fitted to MC returns
   of the scaled rewards.
6. ``online`` — PPO from the member with the best last real return among the 3 best by last OPE
   score, the critic being the offline V (no reward scaling) or the re-fitted one; frozen offline
   state statistics; clip ε = 0.05 for the ratio and the value; GAE(0.99, 0.95); per-task K and
   actor lr; rewards ×0.1 ('number') or divided by a running std of the discounted return ('dynamic').

Acting (evaluation) before the online stage uses the ensemble: at each state the member whose
density at its own (clipped) mean is highest. Online it is the PPO actor's mean.
Quirks of the official code are followed by default and have flags (``docs/unio4.md``).
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from offrl.agent import Agent
from offrl.algos.iql import expectile_loss
from offrl.algos.ppo import NormalizedRolloutSink, explained_variance, ppo_losses
from offrl.errors import OffrlError, check
from offrl.logger import format_duration
from offrl.models import DynamicsTrainer, EnsembleDynamics, dynamics_targets, termination_fn
from offrl.nets import MLP, EnsembleCritic, EnsembleMLP, ValueNet, orthogonal_init_, soft_update_
from offrl.registry import Algorithm, register
from offrl.run import OfflinePhase, OnPolicyPhase, Phase
from offrl.train import OfflineConfig

STAGES = ("critic", "dynamics", "bc", "improve", "value", "online")
# online per-task settings of ppo_finetune/scripts/mujoco_loco: (K epochs, actor lr, reward scaling).
# The scripts sweep some values; where they do, offrl takes the one named in the comment.
ONLINE = {
    ("halfcheetah", "medium"): (30, 3e-5, "dynamic"),
    ("halfcheetah", "medium-replay"): (20, 3e-5, "dynamic"),  # sweeps 'number' and 'dynamic'
    ("halfcheetah", "medium-expert"): (10, 2e-5, "dynamic"),
    ("hopper", "medium"): (10, 2e-5, "number"),  # sweeps K 5/10, lr 1e-5/2e-5
    ("hopper", "medium-replay"): (10, 2e-5, "number"),  # sweeps K 5/10, lr 1e-5/2e-5
    ("hopper", "medium-expert"): (5, 6e-6, "number"),
    ("walker2d", "medium"): (30, 1e-5, "none"),  # sweeps K 20/30, lr 1e-5/3e-5
    ("walker2d", "medium-replay"): (30, 1e-5, "none"),  # sweeps K 20/30, lr 1e-5/3e-5
    ("walker2d", "medium-expert"): (30, 1e-5, "none"),  # sweeps K 20/30, lr 1e-5/3e-5
}
ONLINE_DEFAULT = (30, 2e-5, "none")  # ppo_finetune/main.py's argparse defaults


def task_of(dataset_id: str) -> tuple[str | None, str | None]:
    """(env family, level) of a dataset id: ``offrl/hopper/medium-replay-v0`` → (hopper, medium-replay)."""
    name = dataset_id.lower()
    env = next((e for e in ("halfcheetah", "hopper", "walker2d") if e in name), None)
    level = next((lv for lv in ("medium-replay", "medium-expert", "medium") if re.search(lv + r"(\b|[-_/]|$)", name)), None)
    return env, level


@dataclass
class Config(OfflineConfig):
    """Uni-O4 as the official code (Lei-Kun/Uni-O4 @1eecc45) and its mujoco_loco scripts. Fields left unset (None/auto) take the task's script settings."""

    steps: int = 1
    """Not used by Uni-O4: each stage has its own budget (--critic-steps, --model-max-epochs, --bc-steps, --improve-steps, --value-steps, --online-steps)."""
    batch_size: int = 512
    """Batch of every offline stage (critic, BC, improvement, value re-fit)."""
    online_steps: int = 3_000_000
    """Online PPO env steps (official max_train_steps 3e6; also the horizon of the online lr decay). 0: offline stages only."""
    eval_every: int = 20_000
    """Evaluate the acting policy every this many global steps (and at every stage end); 0: stage ends only."""
    discount: float = 0.99
    """Discount γ (critic, MC returns, online GAE and reward scaling)."""
    state_norm: Literal["auto", "on", "off"] = "auto"
    """Normalize states by the dataset mean and std + 1e-10 (auto: on except halfcheetah-medium-replay, as the scripts' --is_state_norm)."""
    # ---------------------------------------------------------------- critic
    critic: Literal["auto", "iql", "mc-sarsa"] = "auto"
    """iql: double Q + expectile V (the scripts' --is_iql); mc-sarsa: Monte-Carlo V + SARSA Q with ω-weighted advantages (auto: mc-sarsa for halfcheetah-medium-expert, whose script halfme.sh has no --is_iql; iql elsewhere)."""
    critic_steps: int | None = None
    """Critic gradient steps (official v_steps 2e6; walker2d-medium-replay 5e5)."""
    q_hidden: tuple[int, ...] = (1024, 1024)
    """Hidden sizes of each Q network (q_hidden_dim 1024, q_depth 2)."""
    v_hidden: tuple[int, ...] = (512, 512, 512)
    """Hidden sizes of V (v_hidden_dim 512, v_depth 3)."""
    q_lr: float = 1e-4
    """Q learning rate."""
    v_lr: float = 1e-4
    """V learning rate."""
    expectile: float = 0.7
    """Expectile τ of the IQL V loss (the official omega)."""
    omega: float = 0.7
    """mc-sarsa only: advantages weighted ω where Â > 0, 1 − ω elsewhere."""
    tau: float = 0.005
    """Polyak rate of the target Q."""
    target_update_every: int = 2
    """Critic steps between target updates."""
    # ---------------------------------------------------------------- dynamics model
    model_members: int = 7
    """Dynamics ensemble size."""
    model_elites: int = 5
    """Elites the rollouts sample from."""
    model_hidden: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden sizes of each dynamics model."""
    model_lr: float = 1e-3
    """Dynamics Adam learning rate."""
    model_batch_size: int = 256
    """Dynamics batch size."""
    model_patience: int = 5
    """Stop after this many epochs without a >1 % holdout improvement of any member."""
    model_max_epochs: int = 1000
    """At most this many dynamics epochs (official: no limit); the stage ends at the early stop."""
    # ---------------------------------------------------------------- BC ensemble
    num_members: int = 4
    """N: members of the BC ensemble (and of the improvement)."""
    bc_steps: int = 400_000
    """Joint BC gradient steps."""
    bc_hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden sizes of every member (bc_hidden_dim 256 or 512 in the scripts, depth 3)."""
    pi_activation: Literal["auto", "relu", "tanh"] = "auto"
    """Hidden activation of the policies (auto: tanh for halfcheetah except medium-expert, as halfm.sh and halfmr.sh pass --pi_activation_f tanh and halfme.sh does not; else relu)."""
    bc_lr: float = 1e-4
    """BC learning rate."""
    alpha_bc: float = 0.1
    """α of the joint BC loss (0: independent BC)."""
    # ---------------------------------------------------------------- improvement
    improve_steps: int = 10_000
    """Multi-step improvement steps T (bppo_steps; also the lr and ε schedules' horizon)."""
    improve_lr: float = 1e-4
    """Improvement learning rate at step 0."""
    lr_decay: bool = True
    """lr ← improve_lr·(1 − k/T) after step k (is_linear_decay)."""
    clip_ratio: float = 0.25
    """ε at step 0."""
    clip_decay_steps: int = 200
    """ε = clip_ratio·(1 − k/T) while k ≤ this, then frozen (is_clip_decay switched off after step 200)."""
    entropy_weight: float = 0.0
    """Entropy bonus of the improvement objective."""
    ope_every: int = 100
    """K: steps between OPE gates (eval_step)."""
    ope_horizon: int = 1000
    """H: model steps of each OPE rollout (rollout_step)."""
    ope_states: int = 512
    """Dataset states each member's OPE starts from (rollout_batch_size)."""
    replace_reference: bool = True
    """π_i^old ← π_i when member i's OPE improves (is_update_old_policy)."""
    member_eval_every: int = 500
    """Evaluate every member in the real env every this many improvement steps (eval_freq; they choose the online member); 0: never."""
    member_eval_episodes: int = 10
    """Episodes per member evaluation."""
    # ---------------------------------------------------------------- online
    reward_scale: Literal["auto", "none", "number", "dynamic"] = "auto"
    """Online reward scaling (auto: the task's script): number = ×0.1, dynamic = ÷ running std of the discounted return; none keeps the offline V as critic."""
    value_steps: int = 1_000_000
    """With reward scaling: steps of the fresh critic's fit to MC returns of the scaled rewards."""
    value_hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden sizes of the re-fitted critic (ReLU output, v_hidden_width 256)."""
    value_lr: float = 1e-4
    """Learning rate of the re-fit."""
    online_epochs: int | None = None
    """K_epochs of online PPO (per task)."""
    online_actor_lr: float | None = None
    """lr_a (per task)."""
    online_critic_lr: float = 2e-4
    """lr_c."""
    online_num_steps: int = 2048
    """Env steps per PPO batch."""
    online_minibatch: int = 128
    """Minibatch size."""
    online_clip: float = 0.05
    """ε of the ratio and (with --online-clip-value) of the value."""
    online_clip_value: bool = True
    """Clip the value loss with ε (is_clip_value)."""
    online_entropy: float = 0.01
    """Entropy coefficient."""
    gae_lambda: float = 0.95
    """GAE λ."""
    online_lr_decay: bool = True
    """Both lrs ← lr·(1 − env steps/online_steps) after every update."""
    online_double_tanh: bool = True
    """The official online quirk: log σ = −5 + 2.5(tanh(x) + 1) on the already tanh'd output (≈ [−4.40, −0.60]); False: the offline −5 + 2.5(x + 1)."""

    def resolve(self, dataset=None) -> None:
        env, level = task_of(self.dataset)
        if self.critic_steps is None:
            self.critic_steps = 500_000 if (env, level) == ("walker2d", "medium-replay") else 2_000_000
        if self.state_norm == "auto":
            self.state_norm = "off" if (env, level) == ("halfcheetah", "medium-replay") else "on"
        if self.critic == "auto":
            self.critic = "mc-sarsa" if (env, level) == ("halfcheetah", "medium-expert") else "iql"
        if self.pi_activation == "auto":
            self.pi_activation = "tanh" if env == "halfcheetah" and level != "medium-expert" else "relu"
        epochs, lr, scale = ONLINE.get((env, level), ONLINE_DEFAULT)
        self.online_epochs = epochs if self.online_epochs is None else self.online_epochs
        self.online_actor_lr = lr if self.online_actor_lr is None else self.online_actor_lr
        if self.reward_scale == "auto":
            self.reward_scale = scale

    def validate(self) -> None:
        super().validate()
        for name in ("model_members", "model_elites", "model_batch_size", "model_patience", "model_max_epochs",
                     "num_members", "bc_steps", "improve_steps", "ope_every", "ope_horizon", "ope_states",
                     "member_eval_episodes", "value_steps", "online_num_steps", "online_minibatch", "target_update_every"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("critic_steps", "online_epochs", "online_actor_lr"):
            value = getattr(self, name)
            check(value is None or value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("q_lr", "v_lr", "model_lr", "bc_lr", "improve_lr", "value_lr", "online_critic_lr", "online_clip"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(self.model_elites <= self.model_members, f"--model-elites {self.model_elites} exceeds --model-members {self.model_members}")
        check(0.0 < self.expectile < 1.0, f"--expectile must be in (0, 1), got {self.expectile}")
        check(0.0 <= self.omega <= 1.0, f"--omega must be in [0, 1], got {self.omega}")
        check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        check(self.alpha_bc >= 0 and self.entropy_weight >= 0, "--alpha-bc and --entropy-weight must be >= 0")
        check(0.0 < self.clip_ratio < 1.0, f"--clip-ratio must be in (0, 1), got {self.clip_ratio}")
        check(self.member_eval_every >= 0, f"--member-eval-every must be >= 0, got {self.member_eval_every}")
        for name in ("q_hidden", "v_hidden", "model_hidden", "bc_hidden", "value_hidden"):
            sizes = getattr(self, name)
            check(len(sizes) > 0 and all(h > 0 for h in sizes), f"--{name.replace('_', '-')} needs positive sizes, got {sizes}")
        check(self.online_num_steps >= self.online_minibatch,
              f"--online-num-steps {self.online_num_steps} is smaller than --online-minibatch {self.online_minibatch}")
        check(not self.online_steps or self.online_steps >= self.online_num_steps,
              f"--online-steps {self.online_steps} is less than one PPO batch (--online-num-steps {self.online_num_steps})")


# ------------------------------------------------------------------------------------ data (§7.1)
class RewardScaling(nn.Module):
    """The official ``RewardScaling``: R ← γR + r, a running std of R (Welford with S starting at
    1, ``std`` kept at 1 until the second sample), r' = r / (std + 1e-8); R is reset at episode
    starts. float64 buffers (checkpointed)."""

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = float(gamma)
        for name, value in (("n", 0.0), ("mean", 0.0), ("S", 1.0), ("std", 1.0), ("R", 0.0)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, r: float | torch.Tensor) -> torch.Tensor:
        self.R.copy_(self.gamma * self.R + r)
        self.n += 1
        first = self.n == 1  # the first sample sets the mean only (selected, not branched: no host sync)
        old = self.mean.clone()
        mean = torch.where(first, self.R, old + (self.R - old) / self.n)
        S = torch.where(first, self.S, self.S + (self.R - old) * (self.R - mean))
        self.std.copy_(torch.where(first, self.std, torch.sqrt(S / self.n)))
        self.mean.copy_(mean)
        self.S.copy_(S)
        return r / (self.std + 1e-8)

    def reset(self) -> None:
        self.R.zero_()


def scale_dataset_rewards(rewards: np.ndarray, not_done: np.ndarray, mode: str, gamma: float,
                          scaler: RewardScaling | None = None) -> np.ndarray:
    """The official ``reward_normalize`` of the offline rows: 'number' ×0.1; 'dynamic' runs the
    reward scaler over the rows in order, resetting R at every episode end and leaving that row's
    reward unscaled (the official loop); 'none' unchanged. ``scaler`` keeps the running state."""
    if mode == "number":
        return (rewards * 0.1).astype(np.float32)
    if mode != "dynamic":
        return rewards.astype(np.float32)
    scaler = scaler if scaler is not None else RewardScaling(gamma)
    # the running statistics in float64 numpy (a python loop over the rows), then written back
    n, mean, S, std, R = (float(getattr(scaler, k)) for k in ("n", "mean", "S", "std", "R"))
    out = rewards.astype(np.float64).copy()
    for i in range(len(out)):
        if not not_done[i]:
            R = 0.0
            continue
        R = gamma * R + out[i]
        n += 1
        if n == 1:
            mean = R
        else:
            old = mean
            mean = old + (R - old) / n
            S = S + (R - old) * (R - mean)
            std = math.sqrt(S / n)
        out[i] = out[i] / (std + 1e-8)
    for k, v in (("n", n), ("mean", mean), ("S", S), ("std", std), ("R", R)):
        getattr(scaler, k).fill_(v)
    return out.astype(np.float32)


def mc_returns(rewards: np.ndarray, not_done: np.ndarray, gamma: float) -> np.ndarray:
    """G_i = r_i + γ·not_done_i·G_{i+1}, backwards over the rows (the official compute_return)."""
    out = np.zeros(len(rewards), np.float64)
    g = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        g = float(rewards[i]) + gamma * g * float(not_done[i])
        out[i] = g
    return out.astype(np.float32)


@dataclass
class Rows:
    """The dataset as the official ``OfflineReplayBuffer.load_dataset`` reads it: row i pairs
    obs[i] with obs[i+1] and act[i+1] (the last row is dropped); not_done = 1 − (terminal | timeout)."""

    obs: np.ndarray
    act: np.ndarray
    rew: np.ndarray
    next_obs: np.ndarray
    next_act: np.ndarray
    not_done: np.ndarray
    ret: np.ndarray
    scaled_ret: np.ndarray
    obs_mean: np.ndarray | None
    obs_std: np.ndarray | None

    def dataset(self, metadata: dict):
        """As an :class:`offrl.data.Dataset` (terminals = episode ends of the rows: the critic's not_done)."""
        from offrl.data import Dataset

        return Dataset(self.obs, self.act, self.rew, self.next_obs, 1.0 - self.not_done, np.zeros_like(self.rew),
                       metadata=dict(metadata))


def official_rows(dataset, gamma: float, state_norm: bool, reward_scale: str = "none",
                  scaler: RewardScaling | None = None) -> Rows:
    """Consecutive rows, timeouts as terminal, MC returns (raw and of the online-scaled rewards),
    state statistics mean and std + 1e-10 over the rows' states (``state_norm``; else None)."""
    obs, act = dataset.observations, dataset.actions
    ends = (dataset.terminals > 0) | (dataset.timeouts > 0)
    not_done = 1.0 - ends[:-1].astype(np.float32)
    rew = dataset.rewards[:-1]
    ret = mc_returns(rew, not_done, gamma)
    scaled = scale_dataset_rewards(rew, not_done, reward_scale, gamma, scaler)
    scaled_ret = ret if reward_scale == "none" else mc_returns(scaled, not_done, gamma)
    s = obs[:-1]
    mean = std = None
    if state_norm:
        mean = s.mean(0).astype(np.float32)
        std = (s.astype(np.float64).std(0) + 1e-10).astype(np.float32)
    return Rows(s, act[:-1], rew, obs[1:], act[1:], not_done, ret, scaled_ret, mean, std)


# ------------------------------------------------------------------------------------ losses
def gaussian_logp(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ over the last dim of log N(x; μ, σ²)."""
    return (-0.5 * ((x - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def joint_bc_loss(logp: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member joint BC loss from ``logp [N, B]`` (log π_i of the dataset actions):
    L_i = mean(−log π_i − α (log π_i − max_{j≠i} log π_j)), the max detached. Returns (loss [N], max [N, B])."""
    n = logp.shape[0]
    if n == 1 or alpha == 0:
        return (-logp).mean(-1), logp.detach()
    others = logp.detach().unsqueeze(0).expand(n, n, -1)  # [i, j, B]
    eye = torch.eye(n, dtype=torch.bool, device=logp.device)[:, :, None]
    best = others.masked_fill(eye, float("-inf")).max(1).values
    return (-logp - alpha * (logp - best)).mean(-1), best


def normalize_advantage(adv: torch.Tensor) -> torch.Tensor:
    """(A − mean) / (std + 1e-10) along the last dim (unbiased std, as torch's default)."""
    return (adv - adv.mean(-1, keepdim=True)) / (adv.std(-1, keepdim=True) + 1e-10)


def weighted_advantage(adv: torch.Tensor, omega: float) -> torch.Tensor:
    """ω·A where A > 0, (1 − ω)·A elsewhere (no change at ω = 0.5)."""
    if omega == 0.5:
        return adv
    return torch.where(adv > 0, omega, 1.0 - omega) * adv


def clipped_objective(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Per member: −mean over the batch of min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â), ρ = exp(new − old) → [N]."""
    ratio = torch.exp(new_logp - old_logp)
    return -torch.min(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv).mean(-1)


def member_grad_clip_(params, max_norm: float, members: int) -> torch.Tensor:
    """``clip_grad_norm_`` for each member of stacked ensemble parameters ([N, ...] leading dim):
    member e's gradients are scaled by min(1, max_norm / (‖g_e‖ + 1e-6)). Returns the norms [N]."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.stack([g.reshape(members, -1).square().sum(-1) for g in grads]).sum(0)
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.reshape(members, *([1] * (g.dim() - 1))))
    return norm


# ------------------------------------------------------------------------------------ networks
class GaussianEnsemble(nn.Module):
    """N Gaussian policies in one batched MLP (the official GaussPolicyMLP per member):
    out = tanh(MLP(s)) [N, B, 2|A|], μ = first half, log σ = −5 + 2.5(x + 1) on the second half
    (``double_tanh``: tanh(x) instead of x, the online quirk). Orthogonal init gain 1, zero biases."""

    def __init__(self, obs_dim: int, act_dim: int, members: int, hidden, activation: str = "relu",
                 double_tanh: bool = False):
        super().__init__()
        self.net = orthogonal_init_(EnsembleMLP(obs_dim, 2 * act_dim, members, hidden, activation=activation), gain=1.0)
        self.members, self.act_dim, self.double_tanh = members, act_dim, double_tanh

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ), each [N, B, |A|], for obs [B, ·] (shared) or [N, B, ·] (per member)."""
        mean, x = torch.tanh(self.net(obs)).chunk(2, dim=-1)
        if self.double_tanh:
            x = torch.tanh(x)
        return mean, -5.0 + 0.5 * (0.0 - (-5.0)) * (x + 1.0)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """log π_i(act|obs) → [N, B] (act [B, |A|] shared or [N, B, |A|] per member)."""
        mean, log_std = self(obs)
        return gaussian_logp(act, mean, log_std)

    def member(self, m: int, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Member ``m`` alone on ``obs [B, ·]`` → (μ, log σ) [B, |A|] (one matmul per layer on its weights)."""
        x = obs
        for layer in self.net.net:
            x = torch.addmm(layer.bias[m], x, layer.weight[m]) if hasattr(layer, "ensemble_size") else layer(x)
        mean, x = torch.tanh(x).chunk(2, dim=-1)
        if self.double_tanh:
            x = torch.tanh(x)
        return mean, -5.0 + 0.5 * (0.0 - (-5.0)) * (x + 1.0)

    @torch.no_grad()
    def copy_member_(self, source: "GaussianEnsemble", src: int, dst: int = 0) -> None:
        """This ensemble's member ``dst`` ← ``source``'s member ``src`` (same layer sizes)."""
        for a, b in zip(self.net.modules(), source.net.modules()):
            if hasattr(a, "ensemble_size") and hasattr(a, "weight"):
                a.weight[dst].copy_(b.weight[src])
                a.bias[dst].copy_(b.bias[src])

    @torch.no_grad()
    def copy_where_(self, source: "GaussianEnsemble", mask: torch.Tensor) -> None:
        """Members where ``mask [N]`` is true ← the same members of ``source`` (no host sync)."""
        for a, b in zip(self.net.parameters(), source.net.parameters()):
            a.copy_(torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), b, a))


class ReluValue(nn.Module):
    """The online re-fitted critic (``ValueReluMLP``): MLP with ReLU hidden layers and a ReLU output → [B]."""

    def __init__(self, obs_dim: int, hidden):
        super().__init__()
        self.net = MLP(obs_dim, 1, hidden, output_activation="relu")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


# ------------------------------------------------------------------------------------ agent
class UniO4(Agent):
    """Uni-O4 agent: one agent through every stage (``stage``, set by :meth:`begin_stage`).

    * ``update(batch)`` is the current offline stage's step (critic, BC, improvement, value re-fit);
      :meth:`dynamics_epoch` is one epoch of the dynamics model.
    * The online stage is PPO on the shared core: ``rollout_action``, ``observe``, ``rollout_sink``
      (algos/ppo.py's :class:`NormalizedRolloutSink`), ``state_value``, ``learn`` (with algos/ppo.py's
      ``ppo_losses``).
    * ``act``: the density-greedy ensemble offline, the PPO actor's mean online.
    """

    algo = "unio4"
    Config = Config
    policy_modules = ("pi", "online_actor", "stage_index")

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        cfg.resolve(None)  # fill-unset: a no-op for a config that came through training
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        iql = cfg.critic == "iql"
        self.critic = EnsembleCritic(obs_dim, act_dim, 2 if iql else 1, tuple(cfg.q_hidden))
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(obs_dim, tuple(cfg.v_hidden))
        act_fn = cfg.pi_activation if cfg.pi_activation != "auto" else "relu"
        n = cfg.num_members
        self.pi = GaussianEnsemble(obs_dim, act_dim, n, tuple(cfg.bc_hidden), act_fn)
        self.pi_old = copy.deepcopy(self.pi).requires_grad_(False)
        self.dynamics = EnsembleDynamics(obs_dim, act_dim, cfg.model_members, cfg.model_elites, tuple(cfg.model_hidden),
                                         _weight_decays(len(cfg.model_hidden)))
        self.online_actor = GaussianEnsemble(obs_dim, act_dim, 1, tuple(cfg.bc_hidden), act_fn, cfg.online_double_tanh)
        scaled = cfg.reward_scale in ("number", "dynamic")
        self.online_value = ReluValue(obs_dim, tuple(cfg.value_hidden)) if scaled else ValueNet(obs_dim, tuple(cfg.v_hidden))
        self.reward_scaler = RewardScaling(cfg.discount)
        self.register_buffer("stage_index", torch.zeros((), dtype=torch.int64))
        self.register_buffer("ope_best", torch.full((n,), float("-inf")))
        self.register_buffer("ope_last", torch.full((n,), float("nan")))
        self.register_buffer("member_returns", torch.full((n,), float("nan")))
        self.register_buffer("selected", torch.full((), -1, dtype=torch.int64))
        self.register_buffer("episode_start", torch.ones((), dtype=torch.bool))
        self.to(self.device)
        self.optimizers = {
            "value": self.adam(self.value.parameters(), cfg.v_lr),
            "critic": self.adam(self.critic.parameters(), cfg.q_lr),
            "model": self.adam(self.dynamics.parameters(), cfg.model_lr),
            "bc": self.adam(self.pi.parameters(), cfg.bc_lr),
            "improve": self.adam(self.pi.parameters(), cfg.improve_lr),
            "value_refit": self.adam(self.online_value.parameters(), cfg.value_lr),
            "online_actor": self.adam(self.online_actor.parameters(), cfg.online_actor_lr or 1e-5, eps=1e-5),
            "online_critic": self.adam(self.online_value.parameters(), cfg.online_critic_lr, eps=1e-5),
        }
        self.generator = torch.Generator(device=self.device)  # OPE, dynamics training: checkpointed
        self.generator.manual_seed(cfg.seed + 7)
        self.model_trainer = DynamicsTrainer(self.dynamics, self.optimizers["model"], cfg.model_batch_size,
                                             max_epochs_since_update=cfg.model_patience, max_epochs=cfg.model_max_epochs)
        self.term_fn = termination_fn(None)
        self.buffer = None
        self.eval_env: dict | None = None  # {"env_id", "seed", "ref_min", "ref_max"} for member evaluations
        self.stage = "critic"
        self.critic_updates = 0
        self.improve_step = 0
        self.eps = cfg.clip_ratio
        self.learns = 0
        self.history: list[dict] = []  # per OPE gate / member evaluation: step, scores

    # ------------------------------------------------------------------ stages
    def begin_stage(self, name: str) -> None:
        """Called when a stage's phase begins (also on resume, after the agent state was loaded)."""
        self.stage = name
        index = STAGES.index(name)
        first = int(self.stage_index) < index
        self.stage_index.fill_(max(index, int(self.stage_index)))
        if name == "improve" and first:
            self.pi_old.load_state_dict(self.pi.state_dict())
            scores = self.ope()  # the official best_mean_qs before the first step
            self.ope_best.copy_(scores)
            self.ope_last.copy_(scores)
            self.history.append({"improve_step": 0, "ope": scores.tolist()})
            if self.cfg.member_eval_every:
                self.evaluate_members()
        if name == "online" and first:
            member = self.select_member()
            self.selected.fill_(member)
            self.online_actor.copy_member_(self.pi, member)
            if self.cfg.reward_scale == "none":
                self.online_value.load_state_dict(self.value.state_dict())
            self.episode_start.fill_(True)

    def setup_data(self, buffer) -> None:
        self.buffer = buffer

    def compiled_update(self):
        """--compile is not applied: ``update`` dispatches on the stage and the OPE gate syncs with the host."""
        return self.update

    def set_env(self, env_id: str | None, seed: int, ref_min=None, ref_max=None) -> None:
        """The evaluation env of the member evaluations and the OPE's termination function (without an env,
        the dataset's family decides it, with Gymnasium v5's healthy ranges)."""
        family = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}.get(task_of(self.cfg.dataset or "")[0])
        self.term_fn = termination_fn(env_id or family)
        self.eval_env = None if env_id is None else {"env_id": env_id, "seed": seed, "ref_min": ref_min, "ref_max": ref_max}

    def update(self, batch) -> dict[str, torch.Tensor]:
        step = {"critic": self.critic_update, "bc": self.bc_update, "improve": self.improve_update,
                "value": self.value_update}.get(self.stage)
        if step is None:
            raise OffrlError(f"unio4 has no gradient step in stage '{self.stage}'")
        return step(batch)

    # ------------------------------------------------------------------ 1. critic
    def min_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, act).min(0).values

    def critic_update(self, batch) -> dict[str, torch.Tensor]:
        cfg, opt = self.cfg, self.optimizers
        s, s2 = self.normalize_obs(batch.obs), self.normalize_obs(batch.next_obs)
        not_done = 1.0 - batch.done
        if cfg.critic == "iql":
            with torch.no_grad():
                target_q = self.critic_target(s, batch.act).min(0).values
            v = self.value(s)
            value_loss = expectile_loss(target_q - v, cfg.expectile)
            opt["value"].zero_grad(set_to_none=True)
            value_loss.backward()
            opt["value"].step()
            with torch.no_grad():
                y = batch.rew + cfg.discount * not_done * self.value(s2)
            q = self.critic(s, batch.act)
            q_loss = (q - y).square().sum(0).mean()
        else:  # Monte-Carlo V and SARSA Q (independent fits; one batch for both)
            v = self.value(s)
            value_loss = (v - batch.ret).square().mean()
            opt["value"].zero_grad(set_to_none=True)
            value_loss.backward()
            opt["value"].step()
            with torch.no_grad():
                y = batch.rew + cfg.discount * not_done * self.critic_target(s2, batch.next_act)[0]
            q = self.critic(s, batch.act)
            q_loss = (q[0] - y).square().mean()
        opt["critic"].zero_grad(set_to_none=True)
        q_loss.backward()
        opt["critic"].step()
        self.critic_updates += 1
        if self.critic_updates % cfg.target_update_every == 0:
            soft_update_(self.critic_target, self.critic, cfg.tau)
        return {"value_loss": value_loss.detach(), "q_loss": q_loss.detach(), "q_mean": q.detach().mean(),
                "v_mean": v.detach().mean()}

    def advantage(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Â per member for ``act [N, B, |A|]`` at shared ``obs [B, ·]``: batch-normalized
        min Q − V (iql), or ω-weighted normalized Q − V (mc-sarsa) → [N, B]."""
        n, b = act.shape[:2]
        q = self.min_q(obs.repeat(n, 1), act.reshape(n * b, -1)).reshape(n, b)
        adv = normalize_advantage(q - self.value(obs))
        return adv if self.cfg.critic == "iql" else weighted_advantage(adv, self.cfg.omega)

    # ------------------------------------------------------------------ 2. dynamics model
    def dynamics_epoch(self, on_batch=None) -> tuple[dict[str, torch.Tensor], bool]:
        """One epoch of the OPE model on the raw rows; (metrics, finished). ``on_batch(done, total)``:
        called after every minibatch (the stage reports progress inside the epoch with it)."""
        buf = self.buffer
        inputs, targets = dynamics_targets(buf.observations, buf.actions, buf.column("rew"), buf.column("next_obs"))
        metrics = self.model_trainer.epoch(inputs, targets, self.generator, on_batch)
        return metrics, self.model_trainer.done

    # ------------------------------------------------------------------ 3. BC ensemble
    def bc_update(self, batch) -> dict[str, torch.Tensor]:
        logp = self.pi.log_prob(self.normalize_obs(batch.obs), batch.act)
        loss, _ = joint_bc_loss(logp, self.cfg.alpha_bc)
        opt = self.optimizers["bc"]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # members' parameters are disjoint: each gets its own loss's gradient
        opt.step()
        return {"bc_loss": loss.detach().mean(), "bc_nll": -logp.detach().mean()}

    # ------------------------------------------------------------------ 4. improvement
    def improve_update(self, batch) -> dict[str, torch.Tensor]:
        cfg, k = self.cfg, self.improve_step
        s = self.normalize_obs(batch.obs)
        with torch.no_grad():
            mean_old, log_std_old = self.pi_old(s)
            act = mean_old + log_std_old.exp() * torch.randn_like(mean_old)  # ã ~ π_old: data, no gradient
            old_logp = gaussian_logp(act, mean_old, log_std_old)
            adv = self.advantage(s, act)
        if k <= cfg.clip_decay_steps:
            self.eps = cfg.clip_ratio * (1.0 - k / cfg.improve_steps)
        mean, log_std = self.pi(s)
        new_logp = gaussian_logp(act, mean, log_std)
        loss = clipped_objective(new_logp, old_logp, adv, self.eps)
        if cfg.entropy_weight:
            loss = loss - cfg.entropy_weight * (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1).mean(-1)
        opt = self.optimizers["improve"]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        grad_norm = member_grad_clip_(list(self.pi.parameters()), 0.5, cfg.num_members)
        opt.step()
        lr = opt.param_groups[0]["lr"]
        if cfg.lr_decay:
            for group in opt.param_groups:
                group["lr"] = cfg.improve_lr * (1.0 - k / cfg.improve_steps)
        self.improve_step = k + 1
        with torch.no_grad():
            ratio = torch.exp(new_logp.detach() - old_logp)
        metrics = {"improve_loss": loss.detach().mean(), "ratio_mean": ratio.mean(),
                   "clipfrac": ((ratio - 1.0).abs() > self.eps).float().mean(), "grad_norm": grad_norm.mean(),
                   "clip_ratio": torch.tensor(self.eps, device=self.device), "improve_lr": torch.tensor(lr, device=self.device)}
        if self.improve_step % cfg.ope_every == 0:
            metrics.update(self.ope_gate())
        if cfg.member_eval_every and self.improve_step % cfg.member_eval_every == 0:
            metrics.update(self.evaluate_members())
        return metrics

    def ope_gate(self) -> dict[str, torch.Tensor]:
        """OPE of every member; the reference policy of those that beat their best is replaced."""
        scores = self.ope()
        better = scores > self.ope_best
        self.ope_best.copy_(torch.where(better, scores, self.ope_best))
        self.ope_last.copy_(scores)
        if self.cfg.replace_reference:
            self.pi_old.copy_where_(self.pi, better)
        self.history.append({"improve_step": self.improve_step, "ope": scores.tolist(), "replaced": better.tolist()})
        out = {f"ope_member{i}": scores[i] for i in range(len(scores))}
        out["ope_replaced"] = better.float().sum()
        return out

    @torch.no_grad()
    def ope(self, masked: bool | None = None) -> torch.Tensor:
        """Mean min-Q along H-step model rollouts of each member's (clipped) mean action, from
        ``ope_states`` dataset states per member; a terminated rollout is dropped (its rows leave
        the batch, as the official code) → [N].

        ``masked`` (default on a GPU): the rows keep a fixed [N, B] layout and terminated ones are
        masked out instead of removed (no host sync per model step; all-dead is checked every 25
        steps). It draws more random numbers than the compacting loop once a rollout has ended, so
        the two agree exactly only while no rollout terminates."""
        cfg, buf, n = self.cfg, self.buffer, self.cfg.num_members
        if buf is None:
            raise OffrlError("unio4: OPE needs the dataset (setup_data was not called)")
        if masked is None:
            masked = self.device.type == "cuda"
        idx = torch.randint(0, buf.size, (n, cfg.ope_states), generator=self.generator, device=self.generator.device)
        obs = buf.observations[idx.to(self.device).reshape(-1)]  # raw states, member-major: the model works on raw states
        if masked:
            return self._ope_masked(obs)
        member = torch.arange(n, device=self.device).repeat_interleave(cfg.ope_states)
        counts = [cfg.ope_states] * n
        total = torch.zeros(n, device=self.device)
        visited = [0] * n
        for _ in range(cfg.ope_horizon):
            s = self.normalize_obs(obs)
            act = torch.cat([self.pi.member(m, chunk)[0] for m, chunk in enumerate(s.split(counts))]).clamp(-1.0, 1.0)
            total.index_add_(0, member, self.min_q(s, act))
            visited = [v + c for v, c in zip(visited, counts)]
            next_obs, _ = self.dynamics.step(obs, act, self.generator)
            keep = ~self.term_fn(next_obs)
            obs, member = next_obs[keep], member[keep]  # rows stay member-major
            counts = torch.bincount(member, minlength=n).tolist()
            if not sum(counts):
                break
        return total / torch.tensor(visited, dtype=total.dtype, device=self.device)

    def _ope_masked(self, obs: torch.Tensor) -> torch.Tensor:
        """:meth:`ope` on a fixed layout: obs [N·B, ·] member-major, an alive mask instead of compaction."""
        cfg, n = self.cfg, self.cfg.num_members
        alive = torch.ones(n, cfg.ope_states, dtype=torch.bool, device=self.device)
        total = torch.zeros(n, device=self.device)
        visited = torch.zeros(n, device=self.device)
        for t in range(cfg.ope_horizon):
            s = self.normalize_obs(obs)
            act = self.pi(s.reshape(n, cfg.ope_states, -1))[0].clamp(-1.0, 1.0).reshape(obs.shape[0], -1)
            q = self.min_q(s, act).reshape(n, -1)
            total += torch.where(alive, q, torch.zeros_like(q)).sum(1)
            visited += alive.sum(1)
            obs, _ = self.dynamics.step(obs, act, self.generator, grouped=False)
            alive &= ~self.term_fn(obs).reshape(n, -1)
            if t % 25 == 24 and not bool(alive.any()):
                break
        return total / visited

    def evaluate_members(self) -> dict[str, torch.Tensor]:
        """Every member's deterministic return in the real env (their mean actions); None without an env."""
        if self.eval_env is None:
            return {}
        from offrl.evaluation import EVAL_SEED_OFFSET, evaluate

        env = self.eval_env
        returns = []
        was_training = self.training
        self.eval()
        try:
            for i in range(self.cfg.num_members):
                def act(o, i=i):
                    x = torch.as_tensor(np.asarray(o, np.float32), device=self.device)
                    with torch.no_grad():
                        return self.pi(self.normalize_obs(x))[0][i].clamp(-1.0, 1.0).cpu().numpy()
                res = evaluate(act, env["env_id"], self.cfg.member_eval_episodes, env["seed"] + EVAL_SEED_OFFSET,
                               env["ref_min"], env["ref_max"])
                returns.append(res["return_mean"])
        finally:
            self.train(was_training)
        self.member_returns.copy_(torch.tensor(returns))
        self.history.append({"improve_step": self.improve_step, "member_returns": returns})
        return {f"member{i}_return": torch.tensor(r, device=self.device) for i, r in enumerate(returns)}

    def select_member(self) -> int:
        """The official ``load_pi_value``: the 3 members with the highest last OPE score, then the
        first member whose last real return equals the best of theirs (without real returns: the
        best last OPE score)."""
        ope = self.ope_last.cpu().numpy()
        top = np.argsort(ope)[-3:]  # get_top_x_indices
        real = self.member_returns.cpu().numpy()
        if np.isnan(real).any():
            return int(np.argmax(ope))
        return int(np.where(real == real[top].max())[0][0])

    # ------------------------------------------------------------------ 5. value re-fit
    def value_update(self, batch) -> dict[str, torch.Tensor]:
        v = self.online_value(self.normalize_obs(batch.obs))
        loss = (v - batch.scaled_ret).square().mean()
        opt = self.optimizers["value_refit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"refit_value_loss": loss.detach(), "refit_v_mean": v.detach().mean()}

    # ------------------------------------------------------------------ acting
    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if self.stage == "online" or int(self.stage_index) == STAGES.index("online"):
            mean, log_std = self.online_actor(obs)
            a = mean[0] if deterministic else mean[0] + log_std[0].exp() * torch.randn_like(mean[0])
            return a.clamp(-1.0, 1.0)
        return self.ensemble_action(obs, deterministic)

    def ensemble_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Per state, the action of the member with the highest density at its own clipped mean
        (the official mixed_offline_evaluate, greedy)."""
        mean, log_std = self.pi(obs)
        a = mean.clamp(-1.0, 1.0)
        best = gaussian_logp(a, mean, log_std).argmax(0)  # [B]
        rows = torch.arange(obs.shape[0], device=obs.device)
        if not deterministic:
            a = (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1.0, 1.0)
        return a[best, rows]

    # ------------------------------------------------------------------ 6. online PPO
    def _raw(self, obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def rollout_action(self, obs):
        """a = clip(sample, ±1) and log π(a) of the clipped action (the official choose_action)."""
        x = self.normalize_obs(self._raw(obs))
        mean, log_std = self.online_actor(x)
        mean, log_std = mean[0], log_std[0]
        a = (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1.0, 1.0)
        extras = {"logp": gaussian_logp(a, mean, log_std), "value": self.online_value(x), "policy_obs": x, "sample": a}
        return a.cpu().numpy(), extras

    @torch.no_grad()
    def observe(self, tr) -> torch.Tensor:
        """The reward to store: ×0.1 ('number'), ÷ the running std of the discounted return ('dynamic',
        R reset at each episode start), or unchanged."""
        rew = self._raw(tr.rew).to(torch.float64)
        mode = self.cfg.reward_scale
        if mode == "number":
            rew = rew * 0.1
        elif mode == "dynamic":
            if bool(self.episode_start):
                self.reward_scaler.reset()
            rew = self.reward_scaler(rew[0]).reshape(1)
            self.episode_start.fill_(bool(tr.done[0]))
        return rew.to(torch.float32)

    def rollout_sink(self, storage) -> NormalizedRolloutSink:
        return NormalizedRolloutSink(storage, self)

    @torch.no_grad()
    def state_value(self, obs) -> np.ndarray:
        return self.online_value(self.normalize_obs(self._raw(obs))).float().cpu().numpy()

    def learn(self, storage, last_value) -> dict[str, torch.Tensor]:
        """One PPO update as ppo_finetune/ppo.py: GAE (truncations bootstrapped, cut at episode ends),
        advantages normalized over the batch, K epochs of minibatches, actor and critic each with its
        own Adam and gradient clip 0.5, then both lrs decayed."""
        cfg = self.cfg
        storage.compute_returns(last_value, cfg.discount, cfg.gae_lambda, bootstrap_truncation=True)
        adv = storage.adv
        adv.copy_((adv - adv.mean()) / (adv.std() + 1e-5))
        size = storage.num_steps * storage.num_envs
        opt_a, opt_c = self.optimizers["online_actor"], self.optimizers["online_critic"]
        last = None
        for _ in range(cfg.online_epochs):
            for mb in storage.minibatches(max(size // cfg.online_minibatch, 1), self.generator):
                mean, log_std = self.online_actor(mb.obs)
                new_logp = gaussian_logp(mb.act, mean[0], log_std[0])
                entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std[0]).sum(-1).mean()
                new_value = self.online_value(mb.obs)
                m = ppo_losses(new_logp, mb.logp, mb.adv, new_value, mb.value, mb.ret, cfg.online_clip,
                               cfg.online_clip_value, norm_adv=False)
                actor_loss = m["policy_loss"] - cfg.online_entropy * entropy
                opt_a.zero_grad(set_to_none=True)
                actor_loss.backward()
                nn.utils.clip_grad_norm_(self.online_actor.parameters(), 0.5)
                opt_a.step()
                critic_loss = 2.0 * m["value_loss"]  # the official loss has no ½
                opt_c.zero_grad(set_to_none=True)
                critic_loss.backward()
                nn.utils.clip_grad_norm_(self.online_value.parameters(), 0.5)
                opt_c.step()
                last = {**m, "entropy": entropy.detach(), "critic_loss": critic_loss.detach()}
        self.learns += 1
        if cfg.online_lr_decay:
            frac = 1.0 - self.learns * size / cfg.online_steps
            for opt, lr in ((opt_a, cfg.online_actor_lr), (opt_c, cfg.online_critic_lr)):
                for group in opt.param_groups:
                    group["lr"] = lr * frac
        return {"policy_loss": last["policy_loss"].detach(), "critic_loss": last["critic_loss"],
                "entropy": last["entropy"], "approx_kl": last["approx_kl"], "clipfrac": last["clipfrac"],
                "actor_lr": torch.tensor(opt_a.param_groups[0]["lr"], device=self.device),
                "explained_variance": explained_variance(storage.value.flatten(), storage.ret.flatten())}

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict:
        state = {"stage": self.stage, "critic_updates": self.critic_updates, "improve_step": self.improve_step,
                 "eps": self.eps, "learns": self.learns, "history": list(self.history),
                 "generator": self.generator.get_state(), "model_trainer": self.model_trainer.state_dict()}
        return {**super().training_state(), "unio4_state": state}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.stage = STAGES[int(self.stage_index)]
        return out

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        saved = state.get("unio4_state")
        if saved is not None:
            self.stage = saved["stage"]
            self.critic_updates, self.improve_step = int(saved["critic_updates"]), int(saved["improve_step"])
            self.eps, self.learns = float(saved["eps"]), int(saved["learns"])
            self.history = list(saved["history"])
            self.generator.set_state(saved["generator"].cpu())
            self.model_trainer.load_state_dict(saved["model_trainer"])


def _weight_decays(layers: int) -> tuple[float, ...]:
    """The official per-layer decays for 4 hidden layers; other depths repeat the last hidden one."""
    base = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5)
    hidden = [base[min(i, len(base) - 1)] for i in range(layers)]
    return (*hidden, 1e-4)


# ------------------------------------------------------------------------------------ phases
class Stage(OfflinePhase):
    """An offline stage: gradient steps on dataset batches with the agent in stage ``name``. The critic
    and value stages do not change the acting policy (none is trained yet; the improved ensemble), so
    they are not evaluated."""

    def __init__(self, steps: int, sampler, batch_size: int, name: str):
        super().__init__(steps, sampler, batch_size, name=name)
        self.evaluates = name not in ("critic", "value")

    def begin(self, run) -> None:
        super().begin(run)  # setup_data
        run.agent.begin_stage(self.name)


class DynamicsStage(Phase):
    """The dynamics model: one advance = one epoch; at the early stop the stage jumps to its end. The
    policy is untrained here: no evaluation."""

    kind = "offline"
    evaluates = False

    def __init__(self, max_epochs: int, buffer):
        super().__init__("dynamics", max_epochs)
        self.buffer = buffer

    def begin(self, run) -> None:
        run.agent.setup_data(self.buffer)
        run.agent.begin_stage("dynamics")

    def advance(self, run) -> int:
        epoch, t0 = run.agent.model_trainer.epochs + 1, time.monotonic()

        def report(done: int, total: int) -> None:  # a 1M-row epoch takes minutes on a CPU: say where it is
            rate = done / max(time.monotonic() - t0, 1e-9)
            run.logger.tick(f"dynamics epoch {epoch} (at most {self.steps}): batch {done}/{total}, "
                            f"{rate:.1f} batches/s, epoch ETA {format_duration((total - done) / rate)}")

        metrics, done = run.agent.dynamics_epoch(report)
        run.acc.add(metrics)
        self.updates += 1
        return self.steps - (self.updates - 1) if done else 1


class OnlineStage(OnPolicyPhase):
    """Online PPO (the agent's stage ``online``)."""

    def begin(self, run) -> None:
        run.agent.begin_stage("online")
        super().begin(run)


def train(cfg: Config) -> dict:
    """The whole pipeline as one run: critic → dynamics → bc → improve → (value) → online."""
    from offrl.buffer import ReplayBuffer
    from offrl.collector import Collector
    from offrl.data import load_dataset
    from offrl.rollout import RolloutStorage
    from offrl.train import check_dims, dataset_run, setup_torch, start_run

    ckpt, cfg, run_dir = start_run(cfg, UniO4.algo, cfg.dataset)
    dataset = load_dataset(cfg.dataset)
    cfg.resolve(dataset)
    cfg.validate()
    env_id = check_dims(dataset, dataset.env_id)
    if cfg.online_steps and env_id is None:
        raise OffrlError(f"--online-steps needs the environment of {dataset.id} ({dataset.env_id}), which is not "
                         "available; pass --online-steps 0 for the offline stages only")
    device = setup_torch(cfg)
    scaler = RewardScaling(cfg.discount)
    rows = official_rows(dataset, cfg.discount, cfg.state_norm == "on", cfg.reward_scale, scaler)
    ds = rows.dataset(dataset.metadata)
    buffer = ReplayBuffer.from_dataset(ds, device, seed=cfg.seed, extras={"next_act": rows.next_act, "ret": rows.ret,
                                                                           "scaled_ret": rows.scaled_ret})
    agent = UniO4(cfg, dataset.obs_dim, dataset.act_dim, rows.obs_mean, rows.obs_std, device=device)
    agent.reward_scaler.load_state_dict(scaler.state_dict())  # online 'dynamic' scaling continues from the dataset pass
    ref_min, ref_max = dataset.metadata.get("ref_min_score"), dataset.metadata.get("ref_max_score")
    agent.set_env(env_id, cfg.seed, ref_min, ref_max)

    phases: list[Phase] = [Stage(cfg.critic_steps, buffer, cfg.batch_size, name="critic"),
                           DynamicsStage(cfg.model_max_epochs, buffer),
                           Stage(cfg.bc_steps, buffer, cfg.batch_size, name="bc"),
                           Stage(cfg.improve_steps, buffer, cfg.batch_size, name="improve")]
    if cfg.online_steps:
        if cfg.reward_scale != "none":
            phases.append(Stage(cfg.value_steps, buffer, cfg.batch_size, name="value"))
        storage = RolloutStorage(cfg.online_num_steps, 1, dataset.obs_dim, dataset.act_dim, device)
        phases.append(OnlineStage(cfg.online_steps, storage,
                                  lambda: Collector(env_id, 1, cfg.seed, backend=cfg.env_backend), name="online"))
    run = dataset_run(cfg, agent, phases, dataset, env_id, buffer, run_dir, ckpt, device)
    run.summary_updates.append(lambda: {"unio4": _unio4_summary(run, agent)})
    return run.execute()


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing the mean of their ranks (as Spearman's ρ ranks)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def policy_scores(history: list[dict]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The (member, improvement step) policies that have both an OPE score and a real evaluation at
    that step: their steps and the OPE scores and real returns as [steps, members] arrays."""
    ope, real = {}, {}
    for h in history:
        if "ope" in h:
            ope[h["improve_step"]] = h["ope"]
        if "member_returns" in h:
            real[h["improve_step"]] = h["member_returns"]
    steps = sorted(set(ope) & set(real))
    if not steps:
        return [], np.zeros((0, 0)), np.zeros((0, 0))
    return (steps, np.array([ope[k] for k in steps], np.float64).reshape(len(steps), -1),
            np.array([real[k] for k in steps], np.float64).reshape(len(steps), -1))


def pairwise_agreement(o: np.ndarray, r: np.ndarray) -> tuple[int, int]:
    """(pairs of policies the OPE scores ``o`` order as the real returns ``r`` do, pairs with different
    real returns), over all entries of ``o`` and ``r``; a tie in ``o`` between different returns counts as
    a disagreement."""
    o, r = np.ravel(o), np.ravel(r)
    i, j = np.triu_indices(len(o), k=1)
    differ = r[i] != r[j]
    agree = (np.sign(o[i] - o[j]) == np.sign(r[i] - r[j])) & differ
    return int(agree.sum()), int(differ.sum())


def ope_ranking(history: list[dict]) -> dict:
    """How the OPE scores rank the policies their real returns rank (:func:`policy_scores`).
    ``spearman``: over all of them; ``spearman_within_step``: the mean over steps of the ρ over
    members; ``pairwise_accuracy``: the fraction of policy pairs with different real returns that the
    OPE orders the same way (the paper's "AM-Q ranks policies right 78 % of the time")."""
    steps, o, r = policy_scores(history)
    if not steps:
        return {"policies": 0, "spearman": None, "spearman_within_step": None, "pairwise_accuracy": None}
    within = [v for v in (spearman(o_k, r_k) for o_k, r_k in zip(o, r)) if v is not None]
    agree, differ = pairwise_agreement(o, r)
    return {"policies": int(o.size), "steps": steps, "spearman": spearman(o.ravel(), r.ravel()),
            "spearman_within_step": float(np.mean(within)) if within else None,
            "pairwise_accuracy": agree / differ if differ else None}


def _unio4_summary(run, agent) -> dict:
    """The summary's ``unio4`` block: the score after each stage, the member chosen, OPE and real returns."""
    by_name = {p["name"]: p for p in run.results}
    return {
        "bc_normalized_score": by_name.get("bc", {}).get("final_normalized_score"),
        "offline_normalized_score": by_name.get("improve", {}).get("final_normalized_score"),
        "online_normalized_score": by_name.get("online", {}).get("final_normalized_score"),
        "selected_member": int(agent.selected) if int(agent.selected) >= 0 else None,
        "ope_last": agent.ope_last.tolist(), "ope_best": agent.ope_best.tolist(),
        "member_returns": agent.member_returns.tolist(), "model_elites": agent.dynamics.elites.tolist(),
        "ope_ranking": ope_ranking(agent.history),
        "history": agent.history,
    }


ALGORITHM = register(Algorithm("unio4", UniO4, Config, train=train, kind="offline", benchmark=False,
                               doc="Uni-O4 (Lei et al., 2024): BC ensemble, OPE-gated multi-step PPO, online PPO"))
main = ALGORITHM.main  # `python algos/unio4.py [flags]`


if __name__ == "__main__":
    main()
