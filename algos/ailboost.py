"""AILBoost: Adversarial imitation learning by boosting (Chang, Sreenivas, Zhang, Lin, Song, Sun; ICLR 2024).

Adversarial imitation from a few expert trajectories in which the discriminator is trained
against a *weighted mixture of all past policies* (weak learners), not against the latest replay.
Official code: Cornell-RL/ailboost @9dd29a7 (``train_state.py``, ``agent/boosting.py``,
``replay_buffer.py::ReplayBufferMemory``); followed where it and the paper differ, quirks named.

Every ``policy_iter`` training env steps (from ``learning_starts`` on), a boosting round:

    1. learner k = a snapshot of the actor π_k
    2. π_k (sampled actions, a separate env) collects exactly n = n_samples transitions into the
       next block of the discriminator buffer (these env steps count toward --total-steps)
    3. boosting weights per block (η = 0.05): 1 block → uniform; 2 → [1 − η, η];
       then old weights × (1 − η), new block η; a row of block b has weight w_b / n
    4. 100 discriminator steps, each on B/2 expert rows and B/2 rows drawn by the weights:
           L_D = E_expert[exp(−f(s, a))] + E_mixture[f(s, a)]                  ("rkl")
               + 10 · Σ_i (‖∇_x f(x̂_i)‖₂ − 1)² / (B/2),   x̂ = α x_E + (1 − α) x_π, α ~ U(0, 1) per row
       with f(s, a) = tanh(MLP_64-64(s ‖ a))
    5. the SAC buffer is re-pointed at the discriminator buffer's storage (``load_buffer``): it holds
       every block plus the training steps since the round, sampled uniformly

SAC (offrl's SAC named steps, ``algos/sac.py``) updates every 2 training env steps
(``--updates-per-step 0.5``) on the reward r = f(s, a) of the CURRENT discriminator, computed
when the batch is sampled (no log, no sigmoid):

    y   = f(s, a) + γ (1 − d) [min Q̄(s', a') − α log π(a'|s')]      (d = 0 with absorbing states)
    L_Q, L_π, L_α, Q̄ ← τ Q + (1 − τ) Q̄                              as in algos/sac.py

Absorbing states (DAC, Kostrikov et al. 2019; Gymnasium MuJoCo episodes terminate early, DMC's do
not): observations get an indicator 0; a termination (s, a, s_T) is stored as (s, a, s_A) followed by
(s_A, 0, s_A), s_A = (0, …, 0, 1), with d = 0 everywhere, for expert rows and policy rows alike, so
the discriminator scores ending an episode. Blocks hold exactly n rows (absorbing rows included; the
last episode of a block is cut, not terminated).

``--disc-mode dac`` is the official ``agent/dac.py`` baseline on the same machinery: no rounds;
before every SAC update one discriminator step on B/2 expert rows and the first B/2 rows of the
SAC batch (uniform replay), JS loss  Σ_E softplus(−f) + Σ_π softplus(f), divided by B/2
(BCE-with-logits on the tanh output) plus the same penalty; rewards f(s, a) stored when a row is
added (``--dac-rewards stored``, the official computes them once per episode at its end) or
recomputed at sample time (``current``).

Evaluation: the deterministic current policy (``eval/``), and the boosted mixture: per episode one
learner drawn by weight acts with its mean (``eval/boosted_*``). The official pairs weights and
learners wrongly (ascending sorted weights with the learners oldest-first, so the newest learner
gets the largest weight); that is the default (``--boosted-pairing sorted``), ``block`` pairs each
learner with its own block's weight. See docs/ailboost.md for the schedule, flags and deviations.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from offrl.algos.sac import SAC
from offrl.algos.sac import Config as SACConfig
from offrl.errors import check
from offrl.nets import TanhGaussianActor
from offrl.registry import Algorithm, register
from offrl.run import EnvPhase

SAMPLE_SEED_OFFSET = 1_000_000
"""The env that collects round k's block is reset with ``cfg.seed + SAMPLE_SEED_OFFSET + k``."""
BOOST_SEED_OFFSET = 2_000_000
"""Seed of the generator that draws the learner of each boosted-evaluation episode."""


@dataclass
class Config(SACConfig):
    """AILBoost: boosted adversarial imitation on SAC (official Cornell-RL/ailboost defaults; nets and batch 2×256 / 256 on CPU, paper 2×1024 / 1024)."""

    env: str = "HalfCheetah-v5"
    """Gymnasium env id (actions are rescaled to [-1, 1])."""
    expert_dataset: str | None = None
    """Expert demonstrations (states and actions are used); default offrl/<env family>/expert-v0."""
    expert_episodes: int = 1
    """Use the first K complete episodes of --expert-dataset (the paper: 1, 4, 10)."""
    disc_mode: Literal["boost", "dac"] = "boost"
    """boost: AILBoost (discriminator on the weighted mixture of all learners); dac: the official DAC baseline (discriminator on the replay buffer, one step per SAC update)."""
    eta: float = 0.05
    """Boosting step η: the new learner's weight; older weights are multiplied by 1 − η."""
    n_samples: int = 1000
    """Transitions each new learner collects into its block of the discriminator buffer."""
    policy_iter: int = 1000
    """A boosting round every this many training env steps (from --learning-starts on)."""
    disc_iters: int = 100
    """Discriminator steps per boosting round."""
    disc_hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the discriminator f(s, a) (ReLU, tanh output)."""
    disc_lr: float | None = None
    """Discriminator Adam learning rate (default: --actor-lr, as the official code)."""
    divergence: Literal["rkl", "js"] | None = None
    """Discriminator loss: rkl = E_E[exp(−f)] + E_π[f] (AILBoost), js = binary cross-entropy on f as a logit (DAC); default rkl for boost, js for dac."""
    grad_penalty: float = 10.0
    """Gradient-penalty coefficient λ in λ Σ (‖∇f(x̂)‖ − 1)² / (B/2)."""
    disc_buffer_size: int | None = None
    """Discriminator buffer rows (a multiple of --n-samples; its blocks = the most learners kept); default --buffer-size."""
    when_full: Literal["roll", "renormalize"] = "roll"
    """Weights once the discriminator buffer is full: roll (official default ``roll: true``: shift the block weights by one block) or renormalize (the replaced block gets η, the others are rescaled to sum 1 − η)."""
    policy_buffer: Literal["shared", "replay"] = "shared"
    """shared: the SAC buffer is re-pointed at the discriminator buffer after every round (official); replay: a separate replay buffer of every training step."""
    absorbing: bool = True
    """DAC absorbing states at terminations (off: terminations are ends with d = 1)."""
    boosted_pairing: Literal["sorted", "block"] = "sorted"
    """Boosted evaluation: sorted (official quirk: ascending weights paired with learners oldest-first) or block (each learner with its own block's weight)."""
    boosted_eval_episodes: int = 20
    """Episodes of each boosted evaluation (one learner drawn by weight per episode); 0 turns it off."""
    dac_rewards: Literal["stored", "current"] = "stored"
    """--disc-mode dac: stored = f(s, a) computed when the row is added (official: once per episode, so rewards go stale); current = recomputed at sample time."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log-std (official bounds [-5, 2])."""
    # official SAC settings (cfgs/algo/sac.yaml, cfgs/suite/dmc.yaml)
    actor_lr: float = 1e-4
    """Actor learning rate."""
    critic_lr: float = 1e-4
    """Critic learning rate."""
    alpha_lr: float = 1e-4
    """Temperature learning rate."""
    updates_per_step: float = 0.5
    """SAC updates per training env step (official: one every 2 steps)."""
    eval_episodes: int = 5
    """Episodes of each plain evaluation (deterministic current policy)."""

    def resolve(self, dataset) -> None:
        if self.expert_dataset is None:
            self.expert_dataset = f"offrl/{self.env.split('-')[0].lower()}/expert-v0"
        if self.disc_buffer_size is None:
            self.disc_buffer_size = self.buffer_size
        if self.divergence is None:
            self.divergence = "rkl" if self.disc_mode == "boost" else "js"
        if self.disc_lr is None:
            self.disc_lr = self.actor_lr

    def validate(self) -> None:
        super().validate()
        check(self.expert_episodes > 0, f"--expert-episodes must be positive, got {self.expert_episodes}")
        check(0.0 < self.eta < 1.0, f"--eta must be in (0, 1), got {self.eta}")
        for name in ("n_samples", "policy_iter", "disc_iters"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(self.grad_penalty >= 0, f"--grad-penalty must be >= 0, got {self.grad_penalty}")
        check(self.boosted_eval_episodes >= 0, f"--boosted-eval-episodes must be >= 0, got {self.boosted_eval_episodes}")
        check(self.num_envs == 1, f"ailboost steps one training env (--num-envs 1), got {self.num_envs}")
        check(not self.record, "--record is not available for ailboost (its buffers hold absorbing-state rows)")
        check(not self.snapshots, "--snapshots is not available for ailboost (its learners are in the checkpoint)")
        check(self.batch_size >= 2, f"--batch-size must be >= 2 (half expert, half policy), got {self.batch_size}")
        if self.disc_buffer_size is not None and self.disc_mode == "boost":
            check(self.disc_buffer_size >= self.n_samples and self.disc_buffer_size % self.n_samples == 0,
                  f"--disc-buffer-size must be a positive multiple of --n-samples {self.n_samples}, got {self.disc_buffer_size}")


# ------------------------------------------------------------------------------------ math
def absorbing_rows(obs, act, rew, next_obs, term, absorbing: bool = True):
    """Transitions as stored: with ``absorbing``, every observation gets an indicator column 0, a
    terminal row (s, a, s_T) becomes (s, a, s_A) followed by (s_A, 0, s_A) with reward 0, and
    ``done`` is 0 everywhere (DAC); without, the rows are unchanged and ``done`` = ``term``.
    Returns float32 numpy ``(obs, act, rew, next_obs, done)``."""
    obs, act = np.asarray(obs, np.float32), np.asarray(act, np.float32)
    next_obs, rew = np.asarray(next_obs, np.float32), np.asarray(rew, np.float32).reshape(-1)
    term = np.asarray(term).reshape(-1) > 0
    if not absorbing:
        return obs, act, rew, next_obs, term.astype(np.float32)
    zero = np.zeros((len(obs), 1), np.float32)
    obs, next_obs = np.concatenate([obs, zero], 1), np.concatenate([next_obs, zero], 1)
    s_abs = np.zeros(obs.shape[1], np.float32)
    s_abs[-1] = 1.0
    ends = np.flatnonzero(term)
    next_obs[ends] = s_abs
    at = ends + 1  # np.insert before these indices = right after each terminal row
    obs, next_obs = np.insert(obs, at, s_abs, axis=0), np.insert(next_obs, at, s_abs, axis=0)
    act, rew = np.insert(act, at, 0.0, axis=0), np.insert(rew, at, 0.0)
    return obs, act, rew, next_obs, np.zeros(len(obs), np.float32)


def next_block_weights(weights: np.ndarray | None, blocks: int, new_block: int, eta: float,
                       when_full: str = "roll") -> np.ndarray | None:
    """Boosting weights per block of the discriminator buffer after block ``new_block`` was written
    (``ReplayBufferMemory.get_weights``): ``blocks`` = blocks now in the buffer. Fewer than 2 →
    None (uniform); 2 → [1 − η, η]; not full → old × (1 − η), then η appended; full (the new block
    replaced the oldest) → ``roll`` shifts the weights by one block (the new block gets the newest
    weight η, the oldest survivor the base weight), ``renormalize`` gives the new block η and scales
    the others to sum 1 − η. Indexed by ring position, summing to 1."""
    if blocks < 2:
        return None
    if weights is None:
        return np.array([1.0 - eta, eta])
    if len(weights) < blocks:
        return np.append(weights * (1.0 - eta), eta)
    if when_full == "roll":
        return np.roll(weights, 1)
    out = weights * (1.0 - eta) / (1.0 - weights[new_block])
    out[new_block] = eta
    return out


def learner_weights(block_weights: np.ndarray | None, learner_blocks: list[int], pairing: str = "sorted") -> np.ndarray:
    """Probabilities of the learners (oldest first) in boosted evaluation. ``block``: each learner's
    own block weight. ``sorted`` (the official ``get_learner_weights``): the block weights sorted
    ascending, paired with the learners oldest-first (the official also merges equal weights with
    np.unique, which only matters for exact ties; here ties stay separate so sizes match)."""
    n = len(learner_blocks)
    if block_weights is None:
        return np.full(n, 1.0 / n)
    if pairing == "block":
        w = np.asarray([block_weights[b] for b in learner_blocks], np.float64)
    else:
        w = np.sort(np.asarray(block_weights, np.float64))[-n:]
    return w / w.sum()


def discriminator_loss(disc: nn.Module, expert_x: torch.Tensor, policy_x: torch.Tensor, divergence: str = "rkl",
                       penalty: float = 10.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_penalty, f_expert, f_policy)`` for B/2 expert and B/2 policy inputs (s ‖ a).

    rkl: mean(exp(−f_E)) + mean(f_π); js: (Σ softplus(−f_E) + Σ softplus(f_π)) / (B/2). Penalty:
    λ Σ_i (‖∇_x f(x̂_i)‖₂ − 1)² / (B/2), x̂ = α x_E + (1 − α) x_π with α ~ U(0, 1) per row
    (torch's global generator, as the official ``compute_gradient_penalty``)."""
    half = expert_x.shape[0]
    f = disc(torch.cat([expert_x, policy_x], 0)).squeeze(-1)
    f_e, f_p = f[:half], f[half:]
    if divergence == "rkl":
        loss = torch.exp(-f_e).mean() + f_p.mean()
    else:
        loss = (F.softplus(-f_e).sum() + F.softplus(f_p).sum()) / half
    alpha = torch.rand(half, 1, device=expert_x.device)
    mix = (alpha * expert_x + (1 - alpha) * policy_x).requires_grad_(True)
    grad = torch.autograd.grad(disc(mix).sum(), mix, create_graph=True)[0]
    gp = penalty * (grad.norm(2, dim=1) - 1).square().sum() / half
    return loss, gp, f_e.detach(), f_p.detach()


class Discriminator(nn.Module):
    """f(s, a) = tanh(MLP(s ‖ a)): ReLU hidden layers, orthogonal weights, zero biases (official ``nets.Discriminator``)."""

    def __init__(self, in_dim: int, hidden=(64, 64)):
        super().__init__()
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers += [nn.Linear(d, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ------------------------------------------------------------------------------------ agent
class AILBoost(SAC):
    """AILBoost agent: SAC on discriminator rewards, the discriminator, the weak learners and their
    weights. ``act(obs)`` is the current policy; :meth:`learner_act` acts with learner k;
    :meth:`boosted_probabilities` gives the mixture's learner probabilities. Observations are not
    normalized (official); the networks take them with the absorbing indicator appended
    (``--absorbing``), and ``obs_mean``/``obs_std`` are ignored."""

    algo = "ailboost"
    Config = Config

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        cfg.resolve(None)
        self.pad = 1 if cfg.absorbing else 0
        super().__init__(cfg, obs_dim + self.pad, act_dim, device=device)  # nets see the absorbing indicator
        self.obs_dim = int(obs_dim)  # act() takes env observations; raw_policy pads them
        self.discriminator = Discriminator(obs_dim + self.pad + act_dim, tuple(cfg.disc_hidden)).to(self.device)
        self.optimizers["disc"] = self.adam(self.discriminator.parameters(), cfg.disc_lr)
        self.expert = None  # the expert ReplayBuffer (set by train; dac mode samples it in update)
        # boosting state: learners oldest first, the ring block each collected, weights per block
        self.learners: list[dict[str, torch.Tensor]] = []
        self.learner_blocks: list[int] = []
        self.block_weights: np.ndarray | None = None
        self.rounds = 0
        self._eval_actor: list[TanhGaussianActor] = []  # not a registered sub-module
        self._eval_loaded = None  # the learner state dict _eval_actor holds now

    # ------------------------------------------------------------------ acting
    def pad_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Env observations with the absorbing indicator 0 appended."""
        if not self.pad:
            return obs
        return torch.cat([obs, torch.zeros(*obs.shape[:-1], 1, dtype=obs.dtype, device=obs.device)], -1)

    def raw_policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.policy(self.normalize_obs(self.pad_obs(obs)), deterministic)

    @torch.no_grad()
    def learner_act(self, k: int, obs) -> np.ndarray:
        """Learner k's deterministic action (tanh of its mean) for raw env observations ``[B, obs_dim]``."""
        if not self._eval_actor:
            self._eval_actor.append(copy.deepcopy(self.actor).eval())
        actor = self._eval_actor[0]
        if self._eval_loaded is not self.learners[k]:  # once per episode, not per step (k is fixed per episode)
            actor.load_state_dict(self.learners[k])
            self._eval_loaded = self.learners[k]
        x = self.pad_obs(torch.as_tensor(np.asarray(obs, np.float32), device=self.device))
        return actor.act(self.normalize_obs(x), True).cpu().numpy()

    def boosted_probabilities(self) -> np.ndarray:
        return learner_weights(self.block_weights, self.learner_blocks, self.cfg.boosted_pairing)

    # ------------------------------------------------------------------ discriminator
    @torch.no_grad()
    def reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """r = f(s, a) of the current discriminator (stored-coordinate observations)."""
        return self.discriminator(torch.cat([obs, act], -1)).squeeze(-1)

    @torch.no_grad()
    def divergence(self, obs: np.ndarray, act: np.ndarray) -> float:
        """The divergence to the expert that the official code logs after each evaluation
        (``compute_divergence``): the discriminator's loss, without the penalty, between every expert
        row and the given env state-action pairs. rkl: mean exp(−f_E) + mean f_π; js (which the
        official does not implement): mean softplus(−f_E) + mean softplus(f_π). NaN without data."""
        if self.expert is None or len(self.expert) == 0 or len(obs) == 0:
            return float("nan")
        x = self.pad_obs(torch.as_tensor(np.asarray(obs, np.float32), device=self.device))
        f_p = self.reward(self.normalize_obs(x), torch.as_tensor(np.asarray(act, np.float32), device=self.device))
        f_e = self.reward(self.expert.column("obs"), self.expert.column("act"))
        if self.cfg.divergence == "rkl":
            return float(torch.exp(-f_e).mean() + f_p.mean())
        return float(F.softplus(-f_e).mean() + F.softplus(f_p).mean())

    def disc_step(self, expert, policy) -> dict[str, torch.Tensor]:
        """One discriminator step on an expert batch and a policy batch (same size)."""
        loss, gp, f_e, f_p = discriminator_loss(self.discriminator, torch.cat([expert.obs, expert.act], -1),
                                                torch.cat([policy.obs, policy.act], -1), self.cfg.divergence,
                                                self.cfg.grad_penalty)
        opt = self.optimizers["disc"]
        opt.zero_grad(set_to_none=True)
        (loss + gp).backward()  # the official backpropagates both, then steps once
        opt.step()
        return {"disc_loss": loss.detach(), "disc_grad_penalty": gp.detach(), "disc_expert": f_e.mean(),
                "disc_policy": f_p.mean()}

    # ------------------------------------------------------------------ SAC on f(s, a)
    def update(self, batch) -> dict[str, torch.Tensor]:
        metrics = {}
        if self.pad and batch.obs.shape[-1] == self.obs_dim:  # env-width rows (offrl bench): indicator 0
            batch = batch.replace(obs=self.pad_obs(batch.obs), next_obs=self.pad_obs(batch.next_obs))
        if self.cfg.disc_mode == "dac" and self.expert is not None:  # one discriminator step per SAC update
            half = batch.obs.shape[0] // 2
            policy = batch.replace(obs=batch.obs[:half], act=batch.act[:half])
            metrics.update(self.disc_step(self.expert.sample(half), policy))
        if not (self.cfg.disc_mode == "dac" and self.cfg.dac_rewards == "stored"):
            batch = batch.replace(rew=self.reward(batch.obs, batch.act))  # the current discriminator, at sample time
        alpha = self.log_alpha.detach().exp()
        critic = self.critic_step(batch, alpha)
        actor = self.actor_step(batch, alpha)
        self.update_targets()
        metrics.update(critic_loss=critic["critic_loss"], actor_loss=actor["actor_loss"], alpha_loss=actor["alpha_loss"],
                       alpha=alpha, entropy=actor["entropy"], q_mean=critic["q_mean"], reward=batch.rew.mean())
        return metrics

    # ------------------------------------------------------------------ boosting
    def add_learner(self, block: int, max_learners: int) -> None:
        """Snapshot the actor as a weak learner whose samples go to ring block ``block``."""
        self.learners.append({k: v.detach().cpu().clone() for k, v in self.actor.state_dict().items()})
        self.learner_blocks.append(int(block))
        if len(self.learners) > max_learners:  # deque(maxlen=n_learners): its block was overwritten
            self.learners.pop(0)
            self.learner_blocks.pop(0)

    def training_state(self) -> dict:
        state = super().training_state()
        state["boost"] = {"learners": self.learners, "blocks": list(self.learner_blocks), "rounds": self.rounds,
                          "weights": None if self.block_weights is None else torch.from_numpy(self.block_weights.copy())}
        return state

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        boost = state.get("boost")
        if boost is not None:
            self.learners = [dict(s) for s in boost["learners"]]
            self.learner_blocks = [int(b) for b in boost["blocks"]]
            self.rounds = int(boost["rounds"])
            self.block_weights = None if boost["weights"] is None else boost["weights"].numpy().astype(np.float64)


# ------------------------------------------------------------------------------------ data
def expert_buffer(cfg: Config, obs_dim: int, act_dim: int, device):
    """The first ``expert_episodes`` complete episodes of ``cfg.expert_dataset`` (states and
    actions; absorbing rows at terminations) as a ReplayBuffer, plus their mean return."""
    from offrl.buffer import ReplayBuffer
    from offrl.data import load_dataset

    ds = load_dataset(cfg.expert_dataset)
    check((ds.obs_dim, ds.act_dim) == (obs_dim, act_dim),
          f"--expert-dataset {ds.id} has obs/act dims {ds.obs_dim}/{ds.act_dim}, {cfg.env} has {obs_dim}/{act_dim}")
    ends = np.flatnonzero((ds.terminals > 0) | (ds.timeouts > 0))
    check(len(ends) >= cfg.expert_episodes,
          f"--expert-dataset {ds.id} has {len(ends)} complete episodes, fewer than --expert-episodes {cfg.expert_episodes}")
    n = int(ends[cfg.expert_episodes - 1]) + 1
    rows = absorbing_rows(ds.observations[:n], ds.actions[:n], ds.rewards[:n], ds.next_observations[:n],
                          ds.terminals[:n], cfg.absorbing)
    buf = ReplayBuffer(rows[0].shape[1], act_dim, len(rows[0]), device, seed=cfg.seed + 2)
    buf.add(*rows)
    buf.num_fixed = len(buf)  # rebuilt from the dataset on resume; only the sampling state is saved
    starts = np.concatenate([[0], ends[:-1] + 1])
    returns = [float(ds.rewards[s: e + 1].sum()) for s, e in zip(starts, ends)]
    info = {"dataset": ds.id, "episodes": cfg.expert_episodes, "rows": len(buf),
            "return_mean": float(np.mean(returns[: cfg.expert_episodes])),
            "dataset_return_mean": float(np.mean(returns)), "dataset_episodes": len(returns)}
    return buf, info


class TrainingSink:
    """Training transitions into the SAC buffer (absorbing rows at terminations); in dac mode with
    stored rewards, each row's reward is f(s, a) of the discriminator at the time it is added."""

    def __init__(self, buffer, agent: AILBoost):
        self.buffer, self.agent = buffer, agent

    def __call__(self, tr) -> None:
        cfg = self.agent.cfg
        obs, act, rew, next_obs, done = absorbing_rows(tr.obs, tr.act, tr.rew, tr.next_obs, tr.term, cfg.absorbing)
        if cfg.disc_mode == "dac" and cfg.dac_rewards == "stored":
            dev = self.agent.device
            rew = self.agent.reward(torch.as_tensor(obs, device=dev), torch.as_tensor(act, device=dev))  # stays on the device
        self.buffer.add(obs, act, rew, next_obs, done)


class BoostBuffers:
    """The SAC buffer and the discriminator buffer as one checkpoint part. With a shared storage
    (the official ``load_buffer``) the SAC buffer's rows always include the discriminator's, so the
    rows are saved once, with the SAC buffer, and each buffer's pointer, size, weights and sampling
    generator are saved."""

    def __init__(self, policy, disc, shared: bool):
        self.policy, self.disc, self.shared = policy, disc, shared

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "disc": self.disc.state_dict(include_data=not self.shared)}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])  # shared: fills the discriminator's rows too
        disc = state["disc"]
        if self.shared:
            self.disc.size = int(disc["size"])
        self.disc.load_state_dict(disc)


class StepRecorder:
    """``on_step`` of an evaluation: keeps the (raw observation, action) pairs of running episodes."""

    def __init__(self):
        self.obs: list[np.ndarray] = []
        self.act: list[np.ndarray] = []

    def __call__(self, obs, act, alive) -> None:
        self.obs.append(np.asarray(obs)[alive])
        self.act.append(np.asarray(act)[alive])

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The pairs recorded since the last call (and forget them)."""
        obs, act = np.concatenate(self.obs or [np.zeros((0, 0))]), np.concatenate(self.act or [np.zeros((0, 0))])
        self.obs, self.act = [], []
        return obs, act


class PlainDivergence:
    """An Evaluator callback: ``divergence`` (:meth:`AILBoost.divergence`) of the plain evaluation's
    episodes, recorded by the evaluator's ``on_step``."""

    def __init__(self, evaluator):
        self.recorder = StepRecorder()
        evaluator.on_step = self.recorder

    def __call__(self, agent: "AILBoost", step, scalars: dict) -> None:
        scalars["divergence"] = agent.divergence(*self.recorder.take())


class BoostedEval:
    """Boosted evaluation, called after every plain evaluation (an Evaluator callback): each of
    ``episodes`` episodes draws one learner by its probability and acts with its mean; episode i is
    reset with the plain evaluation's seed + i. Adds ``boosted_*`` to the evaluation row. Its
    generator is a checkpoint part."""

    def __init__(self, cfg: Config, ref_min, ref_max):
        from offrl.evaluation import EVAL_SEED_OFFSET

        self.episodes, self.env_id = cfg.boosted_eval_episodes, cfg.env
        self.seed = cfg.seed + EVAL_SEED_OFFSET
        self.ref_min, self.ref_max = ref_min, ref_max
        self.rng = np.random.default_rng(cfg.seed + BOOST_SEED_OFFSET)
        self.last: dict = {}

    def __call__(self, agent: AILBoost, step, scalars: dict) -> None:
        from offrl.evaluation import evaluate, normalized_score

        if not self.episodes or not agent.learners:
            return
        p = agent.boosted_probabilities()
        picks = self.rng.choice(len(p), size=self.episodes, p=p)
        record = StepRecorder()
        returns = [evaluate(lambda o, k=int(k): agent.learner_act(k, o), self.env_id, 1, self.seed + i,
                            self.ref_min, self.ref_max, on_step=record)["return_mean"] for i, k in enumerate(picks)]
        res = {"boosted_return_mean": float(np.mean(returns)), "boosted_return_std": float(np.std(returns)),
               "boosted_divergence": agent.divergence(*record.take()),
               "boosted_normalized_score": float(np.mean(normalized_score(returns, self.ref_min, self.ref_max))),
               "learners": float(len(p)), "newest_learner_probability": float(p[-1])}
        scalars.update(res)
        self.last = res

    def state_dict(self) -> dict:
        return {"rng": json.dumps(self.rng.bit_generator.state), "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.last = dict(state.get("last", {}))


class BoostingPhase(EnvPhase):
    """Training env steps, SAC updates and boosting rounds; one ``advance`` is one training env step
    (plus, when a round is due at its start, the round's ``n_samples`` collection steps, which count
    as global steps too).

    Order per training step t (the official loop): a round if t ≥ learning_starts and t is a multiple of
    policy_iter (and more than n_samples env steps of the budget are left, so the run does not overrun
    --total-steps by a collection); the env step (uniform actions while t < learning_starts, else
    sampled); SAC updates so that ⌈(t − learning_starts + 1) · updates_per_step⌉ have run
    (official: one before every even step's env step)."""

    kind = "online"

    def __init__(self, cfg: Config, buffers: BoostBuffers, expert, make_collector, name: str = "online"):
        super().__init__(name, cfg.total_steps, make_collector)
        self.cfg, self.buffers, self.expert = cfg, buffers, expert
        self.train_steps = 0
        self.sample_steps = 0
        self.max_learners = max(1, cfg.disc_buffer_size // cfg.n_samples)  # = the blocks the buffer holds

    def begin(self, run) -> None:
        super().begin(run)
        self.collector.sinks.append(TrainingSink(self.buffers.policy, run.agent))

    # ------------------------------------------------------------------ a round
    def collect_block(self, agent: AILBoost, round_index: int) -> tuple[tuple, int]:
        """Exactly ``n_samples`` rows from the current stochastic policy in a separate env, freshly
        reset (the last episode is cut); returns (rows, env steps taken)."""
        from offrl.collector import Collector

        parts, rows, steps = [], 0, 0
        backend = getattr(self.cfg, "env_backend", "auto")
        col = Collector(self.cfg.env, 1, self.cfg.seed + SAMPLE_SEED_OFFSET + round_index,
                        [lambda tr: parts.append(absorbing_rows(tr.obs, tr.act, tr.rew, tr.next_obs, tr.term,
                                                                self.cfg.absorbing))], backend=backend)
        try:
            while rows < self.cfg.n_samples:
                col.step(lambda obs: (agent.explore(obs), {}))
                steps += 1
                rows += len(parts[-1][0])
        finally:
            col.close()
        n = self.cfg.n_samples
        return tuple(np.concatenate([p[i] for p in parts])[:n] for i in range(5)), steps

    def boosting_round(self, run) -> int:
        """Add a learner, collect its block, reweight, train the discriminator, re-point the SAC
        buffer; returns the env steps of the collection."""
        agent, disc, cfg = run.agent, self.buffers.disc, self.cfg
        block = disc.ptr // cfg.n_samples
        agent.add_learner(block, self.max_learners)
        rows, steps = self.collect_block(agent, agent.rounds)
        disc.add(*rows)
        agent.rounds += 1
        agent.block_weights = next_block_weights(agent.block_weights, len(disc) // cfg.n_samples, block, cfg.eta,
                                                 cfg.when_full)
        if agent.block_weights is not None:
            rows_w = np.repeat(agent.block_weights / cfg.n_samples, cfg.n_samples)  # row i of block b: w_b / n
            disc.set_weights(torch.as_tensor(rows_w, dtype=torch.float32))
        half = cfg.batch_size // 2
        metrics = [agent.disc_step(self.expert.sample(half), disc.sample(half)) for _ in range(cfg.disc_iters)]
        row = {k: torch.stack([m[k] for m in metrics]).mean() for k in metrics[0]}
        row["newest_weight"] = torch.tensor(1.0 if agent.block_weights is None else float(agent.block_weights[block]),
                                            device=agent.device)
        row["learners"] = torch.tensor(float(len(agent.learners)), device=agent.device)
        run.acc.add(row)
        if self.buffers.shared:  # load_buffer: the SAC buffer = the discriminator's rows, then new training steps
            self.buffers.policy.size, self.buffers.policy.ptr = disc.size, disc.ptr
        self.sample_steps += steps
        return steps

    def advance(self, run) -> int:
        cfg, t = self.cfg, self.train_steps
        steps = 0
        left = self.steps - (t + self.sample_steps)  # the phase's env-step budget still unused
        if cfg.disc_mode == "boost" and t >= cfg.learning_starts and t % cfg.policy_iter == 0 and left > cfg.n_samples:
            steps += self.boosting_round(run)
        random = t < cfg.learning_starts
        self.collector.step(lambda obs: (self.collector.random_actions() if random else run.agent.explore(obs), {}))
        self.train_steps = t + 1
        if not random:
            target = math.ceil(round((t - cfg.learning_starts + 1) * cfg.updates_per_step, 9))
            while self.updates < target:
                run.acc.add(run.update(self.buffers.policy.sample(cfg.batch_size)))
                self.updates += 1
        return steps + 1

    def log_rows(self) -> dict:
        rows = super().log_rows()
        rows["boost/"] = {"train_steps": float(self.train_steps), "sample_steps": float(self.sample_steps)}
        return rows

    def state_dict(self) -> dict:
        return {**super().state_dict(), "train_steps": self.train_steps, "sample_steps": self.sample_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.train_steps, self.sample_steps = int(state["train_steps"]), int(state["sample_steps"])


# ------------------------------------------------------------------------------------ train
def train(cfg: Config) -> dict:
    """Train AILBoost (or the DAC baseline) in ``cfg.env`` from ``cfg.expert_dataset``; returns the
    summary (offrl's keys plus ``expert`` and ``boosted``)."""
    from offrl.agent import config_to_dict
    from offrl.buffer import ReplayBuffer
    from offrl.collector import Collector
    from offrl.envs import env_dims, reference_scores
    from offrl.run import Run
    from offrl.train import make_evaluator, setup_torch, start_run

    ckpt, cfg, run_dir = start_run(cfg, AILBoost.algo, cfg.env)
    cfg.resolve(None)
    cfg.validate()
    obs_dim, act_dim = env_dims(cfg.env)
    device = setup_torch(cfg)
    agent = AILBoost(cfg, obs_dim, act_dim, device=device)
    expert, expert_info = expert_buffer(cfg, obs_dim, act_dim, device)
    agent.expert = expert
    width = obs_dim + agent.pad
    shared = cfg.disc_mode == "boost" and cfg.policy_buffer == "shared"
    disc_rows = cfg.disc_buffer_size if cfg.disc_mode == "boost" else 1  # dac: no discriminator buffer
    disc = ReplayBuffer(width, act_dim, disc_rows, device, seed=cfg.seed + 1)
    policy = ReplayBuffer(width, act_dim, cfg.disc_buffer_size if shared else cfg.buffer_size, device, seed=cfg.seed)
    if shared:
        policy.data = disc.data  # one storage, two pointers (the official load_buffer)
    buffers = BoostBuffers(policy, disc, shared)
    backend = getattr(cfg, "env_backend", "auto")
    phase = BoostingPhase(cfg, buffers, expert, lambda: Collector(cfg.env, 1, cfg.seed, backend=backend))
    ref_min, ref_max = reference_scores(cfg.env)
    boosted = BoostedEval(cfg, ref_min, ref_max)
    meta = {"algo": agent.algo, "config": config_to_dict(cfg), "dataset": None, "env_id": cfg.env,
            "device": str(device), "torch": torch.__version__, "expert": expert_info}
    run = Run(cfg, agent, [phase], make_evaluator(cfg, cfg.env, ref_min, ref_max), run_dir, meta,
              parts={"buffers": buffers, "expert": expert, "boosted_eval": boosted}, ckpt=ckpt,
              desc=f"{agent.algo} {cfg.env}",
              checkpoint_extra={"env": {"env_id": cfg.env, "ref_min_score": ref_min, "ref_max_score": ref_max}},
              summary_extra={"algo": agent.algo, "dataset": None, "env": cfg.env})
    run.evaluator.callbacks.insert(0, PlainDivergence(run.evaluator))  # eval/divergence, both modes
    if cfg.disc_mode == "boost":
        run.evaluator.callbacks.append(boosted)
    run.summary_updates.append(lambda: {"expert": expert_info, "boosted": boosted.last or None})
    return run.execute()


ALGORITHM = register(Algorithm("ailboost", AILBoost, Config, train=train, kind="online",
                               doc="AILBoost (Chang et al., 2024)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/ailboost.py [flags]`


if __name__ == "__main__":
    main()
