"""CQL: Conservative Q-Learning for Offline Reinforcement Learning (Kumar, Zhou, Tucker, Levine, NeurIPS 2020).

SAC with a conservative critic: besides the TD regression, each Q is pushed down on actions
sampled away from the data (a soft maximum over uniform and policy actions) and up on the dataset
actions, so that the learned Q lower-bounds the policy's value off the data. This is the CQL(H)
variant with importance-sampled log-sum-exp, as in JaxCQL (young-geng/JaxCQL ``ConservativeSAC``),
the code FamO2O's CQL baseline runs. Defaults are JaxCQL's ``get_default_config`` and
``conservative_sac_main.py``.

Update per step. Every loss is computed from the same parameters, then every optimizer steps
(JaxCQL takes each loss's gradient w.r.t. its own parameters and applies all updates at once; offrl's
SAC instead steps the critic before it computes the actor loss). Here the losses are built as
disjoint graphs (policy samples detached in the critic loss, critic weights frozen in the actor
loss) and backpropagated as one sum, which gives the same gradients:

    ã, log π(ã|s) ~ π(·|s)                          (reparameterized, tanh-squashed)
    α      = exp(log α) · alpha_multiplier           (a constant in every loss but L_α)
    L_α    = −E[ log α · (log π(ã|s) + H̄) ]            (H̄ = −|A|)
    L_π    = E[ α log π(ã|s) − min(Q₁, Q₂)(s, ã) ]
    a', log π(a'|s') ~ π(·|s')
    y      = r + γ (1 − d) min(Q̄₁, Q̄₂)(s', a')       [− α log π(a'|s') with --backup-entropy]
             (--cql-max-target-backup: N samples a'ⱼ, y uses the a'ⱼ with the largest min Q̄)
    L_TD   = E[ (Q₁(s,a) − y)² ] + E[ (Q₂(s,a) − y)² ]
    CQL term, per critic i, N = cql_n_actions samples of each kind, all scored at the state s:
      aʳ ~ U(−1, 1)^|A|,  aᶜ ~ π(·|s),  aⁿ ~ π(·|s')    (no gradient into π)
      with importance sampling (default), over the 3N samples:
        ood_i = T · logsumexp( [Q_i(s,aʳ) − log 0.5^|A|, Q_i(s,aⁿ) − log π(aⁿ|s'), Q_i(s,aᶜ) − log π(aᶜ|s)] / T )
      without: ood_i = T · logsumexp( [Q_i(s,aʳ), Q_i(s,a), Q_i(s,aⁿ), Q_i(s,aᶜ)] / T )
      diff_i = E[ clip(ood_i − Q_i(s, a), clip_min, clip_max) ]
    L_CQL  = w · (diff₁ + diff₂)                      (w = cql_min_q_weight = 5)
             --cql-lagrange: α' = clip(exp(log α'), 0, 1e6), L_CQL = α'·w·Σᵢ(diff_i − gap),
             L_α' = −½ α'·w·Σᵢ(diff_i − gap)  (log α' starts at 1.0, Adam at the critic lr)
    L_Q    = L_TD + L_CQL
    Q̄      ← τ Q + (1 − τ) Q̄                          (τ = 5e-3)

Networks (JaxCQL): policy MLP 256-256 ReLU → 2|A| outputs (mean, raw log-std); log σ = m·raw + c
with learnable scalars m (init 1) and c (init −1), clipped to [−20, 2]; the Gaussian is
tanh-squashed (log-prob with the tanh log-det); acting uses tanh(mean). Twin Q 256-256 ReLU on
(s‖a), one batched ensemble. Initialisation is flax ``Dense``'s default (LeCun-normal, zero bias)
with variance_scaling(1e-2, fan_in, uniform) output layers (``--orthogonal-init``: orthogonal √2,
output 1e-2). Adam 3e-4 for policy, Q and α; batch 256; γ 0.99; α starts at 1. Data: dataset
actions clipped to ±0.999, rewards unscaled (``--reward-scale``/``--reward-bias``: r·scale + bias),
d = true terminals, states not normalized. Steps: offrl's default 1M (JaxCQL's script: 2000 epochs
× 1000 = 2M; FamO2O's base config: 2M offline, then 1M online).

Offline-to-online (``--online-steps``): the same CQL update continues online (FamO2O's baseline
keeps w = 5), the dataset stays in the replay buffer, exploration samples from π.

CORL's ``algorithms/offline/cql.py`` (a PyTorch port of the same code) differs in its defaults:
policy lr 3e-5, ``cql_alpha`` (= w) 10, ``cql_target_action_gap`` −1, orthogonal init of the Q
networks, 3 hidden layers of 256 in the policy and in each Q, state normalization, a
``bc_steps`` warm-up option (0 in the locomotion configs; not implemented here) and no dataset
action clipping. Its losses are also all computed before any optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from offrl.algos.sac import SAC
from offrl.errors import check
from offrl.nets import EnsembleCritic, TanhGaussianActor, lecun_init_, orthogonal_init_
from offrl.preprocess import reward_transform
from offrl.registry import Algorithm, register
from offrl.train import OfflineConfig, Prepared


@dataclass
class Config(OfflineConfig):
    """Conservative Q-Learning (CQL(H), importance-sampled), defaults of JaxCQL's ConservativeSAC."""

    discount: float = 0.99
    """Discount γ."""
    tau: float = 5e-3
    """Polyak rate of the target critics (JaxCQL: soft_target_update_rate)."""
    actor_lr: float = 3e-4
    """Policy learning rate (JaxCQL: policy_lr; CORL: 3e-5)."""
    critic_lr: float = 3e-4
    """Q learning rate (JaxCQL: qf_lr); also the rate of log α' with --cql-lagrange."""
    alpha_lr: float = 3e-4
    """Learning rate of log α (JaxCQL uses the policy lr)."""
    autotune: bool = True
    """Tune α towards the target entropy (JaxCQL: use_automatic_entropy_tuning); off: α = alpha_multiplier."""
    alpha_multiplier: float = 1.0
    """α = exp(log α) · alpha_multiplier."""
    target_entropy: float | None = None
    """Target entropy H̄ (default −|A|)."""
    backup_entropy: bool = False
    """Subtract α log π(a'|s') in the TD target (off in JaxCQL's CQL)."""
    cql_n_actions: int = 10
    """Sampled actions of each kind (uniform, π at s, π at s') per state in the CQL term."""
    cql_importance_sample: bool = True
    """Importance-weight the log-sum-exp by the sampling densities (uniform 0.5^|A|, π); off: the plain log-sum-exp over the samples and the dataset action."""
    cql_temp: float = 1.0
    """Temperature T of the log-sum-exp."""
    cql_min_q_weight: float = 5.0
    """Weight w of the conservative term (CORL: cql_alpha = 10; FamO2O: 1.0, its CQL baseline: 5.0)."""
    cql_lagrange: bool = False
    """Tune the conservative weight α' (Lagrange dual) so that each diff stays at --cql-target-action-gap."""
    cql_target_action_gap: float = 1.0
    """Target of the conservative gap with --cql-lagrange (CORL: -1.0)."""
    cql_max_target_backup: bool = False
    """TD target from the best of --cql-n-actions sampled next actions (max over them of min Q̄)."""
    cql_clip_diff_min: float | None = None
    """Lower clip of ood − Q(s, a) per sample before the mean (None: no clip, JaxCQL's −inf)."""
    cql_clip_diff_max: float | None = None
    """Upper clip of ood − Q(s, a) per sample before the mean (None: no clip, JaxCQL's +inf)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the policy and of each Q network."""
    policy_log_std_multiplier: float = 1.0
    """Initial value of the learnable scale m in log σ = m·raw + c."""
    policy_log_std_offset: float = -1.0
    """Initial value of the learnable offset c in log σ = m·raw + c."""
    orthogonal_init: bool = False
    """Orthogonal init (gain √2, output layers 1e-2) instead of flax's default (LeCun normal, output variance-scaling 1e-2)."""
    clip_action: float = 0.999
    """Clip dataset actions to ±clip_action."""
    reward_scale: float = 1.0
    """Dataset (and online) rewards become r·reward_scale + reward_bias."""
    reward_bias: float = 0.0
    """See --reward-scale."""
    normalize_states: bool = False
    """Normalize states by dataset mean/std (off in JaxCQL; CORL normalizes)."""

    def validate(self) -> None:
        super().validate()
        check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "cql_temp"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(self.alpha_multiplier >= 0, f"--alpha-multiplier must be >= 0, got {self.alpha_multiplier}")
        check(self.cql_n_actions >= 1, f"--cql-n-actions must be >= 1, got {self.cql_n_actions}")
        check(self.cql_min_q_weight >= 0, f"--cql-min-q-weight must be >= 0, got {self.cql_min_q_weight}")
        lo, hi = self.cql_clip_diff_min, self.cql_clip_diff_max
        check(lo is None or hi is None or lo <= hi, f"--cql-clip-diff-min ({lo}) must not exceed --cql-clip-diff-max ({hi})")
        check(0.0 < self.clip_action <= 1.0, f"--clip-action must be in (0, 1], got {self.clip_action}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"--hidden must be positive sizes, got {self.hidden}")


class CQLTerm(NamedTuple):
    """The conservative term of :func:`cql_conservative_term`, per critic."""

    diff: torch.Tensor
    """``[E]``: mean over the batch of clip(ood − Q(s, a))."""
    ood: torch.Tensor
    """``[E, B]``: T · logsumexp(cat / T), the soft maximum over the sampled actions."""
    std: torch.Tensor
    """``[E, B]``: std of the plain concatenation [Q(s,aʳ), Q(s,a), Q(s,aⁿ), Q(s,aᶜ)] (a diagnostic)."""


def cql_conservative_term(q_data: torch.Tensor, q_rand: torch.Tensor, q_cur: torch.Tensor, logp_cur: torch.Tensor,
                          q_next: torch.Tensor, logp_next: torch.Tensor, act_dim: int, temp: float = 1.0,
                          importance_sample: bool = True, clip_min: float | None = None,
                          clip_max: float | None = None) -> CQLTerm:
    """JaxCQL's conservative term on tensors. ``q_data`` ``[E, B]`` = Q_e(s, a) at the dataset
    actions; ``q_rand``, ``q_cur``, ``q_next`` ``[E, B, N]`` = Q_e(s, ·) at N uniform actions, N
    actions sampled from π(·|s) and N from π(·|s') (all at the state s); ``logp_cur``, ``logp_next``
    ``[B, N]`` (or ``[E, B, N]``) their log-probabilities under π. With ``importance_sample`` the
    log-sum-exp runs over the 3N samples, each minus its log-density (log 0.5^|A| for uniform);
    without, over the plain Q values of the 3N samples and the dataset action."""
    plain = torch.cat([q_rand, q_data.unsqueeze(-1), q_next, q_cur], dim=-1)
    std = plain.std(dim=-1, unbiased=False)
    if importance_sample:
        random_density = act_dim * math.log(0.5)
        cat = torch.cat([q_rand - random_density, q_next - logp_next, q_cur - logp_cur], dim=-1)
    else:
        cat = plain
    ood = temp * torch.logsumexp(cat / temp, dim=-1)
    diff = ood - q_data
    if clip_min is not None or clip_max is not None:
        diff = diff.clamp(clip_min, clip_max)
    return CQLTerm(diff.mean(-1), ood, std)


class ScaledTanhGaussianActor(TanhGaussianActor):
    """JaxCQL's ``TanhGaussianPolicy``: the head's raw log-std goes through log σ = m·raw + c with
    learnable scalars m (``log_std_multiplier``) and c (``log_std_offset``), then the clip to
    [−20, 2]. Sampling, log-probabilities and tanh(mean) acting are :class:`TanhGaussianActor`'s."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256), log_std_multiplier: float = 1.0,
                 log_std_offset: float = -1.0, **kw):
        super().__init__(obs_dim, act_dim, hidden, log_std_min=-20.0, log_std_max=2.0, **kw)
        self.log_std_multiplier = nn.Parameter(torch.tensor(float(log_std_multiplier)))
        self.log_std_offset = nn.Parameter(torch.tensor(float(log_std_offset)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.head(self.trunk(obs)).chunk(2, dim=-1)
        log_std = self.log_std_multiplier * raw + self.log_std_offset
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)


POLICY_USES = ("actor", "td", "cql_current", "cql_next")
"""The four policy samples of one update, in the order :meth:`CQL.update` draws them."""


class CQL(SAC):
    """CQL agent on SAC's actor and acting (``act``: tanh of the mean; ``explore``: a sample).

    Named steps a method built on CQL overrides (FamO2O's CQL variant), all from the parameters
    before the update:

    * :meth:`make_actor`, :meth:`make_critic` — the networks (e.g. a wider policy input, LayerNorm Q).
    * :meth:`sample_policy` ``(batch, use, n=None) -> (actions, log_probs)`` — the policy's samples
      for each use: ``"actor"`` (the policy loss, at s, reparameterized), ``"td"`` (the TD target's
      next action, at s'), ``"cql_current"`` (N at s), ``"cql_next"`` (N at s'); the last three run
      under ``no_grad``. :meth:`update` draws them in the order of :data:`POLICY_USES`. A subclass
      can add columns to the batch (``batch.replace(beta=...)``) in ``losses`` and read them here.
    * :meth:`actor_loss` ``(batch, alpha) -> (loss, log π(ã|s))`` — E[α log π − min Q(s, ã)];
      :meth:`policy_q` is min Q with the critic weights frozen.
    * :meth:`alpha_loss` ``(logp) -> loss``; :meth:`td_target` ``(batch, alpha) -> y``;
      :meth:`critic_loss` ``(batch, y) -> (loss, metrics)`` — TD plus the conservative term
      (:func:`cql_conservative_term`), one critic forward over the dataset and all 3N sampled actions.
    * :meth:`losses` ``(batch) -> ({optimizer name: loss}, metrics)`` — all of the above; a subclass
      adds a loss for its own optimizer here. :meth:`update` backpropagates their sum once, steps
      those optimizers, then :meth:`update_targets` (SAC's Polyak step).

    SAC's ``critic_step`` and ``actor_step`` (SAC's sequential order) are not used by :meth:`update`.
    """

    algo = "cql"
    Config = Config
    online_continuation = True

    # SAC's constructor with CQL's networks (make_actor, make_critic below); log α starts at 0 (JaxCQL)
    def make_extras(self) -> None:
        self.log_alpha_prime = nn.Parameter(torch.ones(()))  # JaxCQL: Scalar(1.0); used with --cql-lagrange

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().make_optimizers(),
                "alpha_prime": torch.optim.Adam([self.log_alpha_prime], lr=self.cfg.critic_lr)}

    # ------------------------------------------------------------------ networks
    def init_weights_(self, net: nn.Module) -> nn.Module:
        """JaxCQL's initialisation: flax Dense defaults with 1e-2 output layers, or orthogonal."""
        if self.cfg.orthogonal_init:
            return orthogonal_init_(net, gain=math.sqrt(2.0), last_gain=1e-2)
        return lecun_init_(net, last_scale=1e-2)

    def make_actor(self) -> nn.Module:
        cfg = self.cfg
        return self.init_weights_(ScaledTanhGaussianActor(self.obs_dim, self.act_dim, tuple(cfg.hidden),
                                                          cfg.policy_log_std_multiplier, cfg.policy_log_std_offset))

    def make_critic(self) -> nn.Module:
        return self.init_weights_(EnsembleCritic(self.obs_dim, self.act_dim, 2, tuple(self.cfg.hidden)))

    # ------------------------------------------------------------------ named steps
    def sample_policy(self, batch, use: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions and log π for one use (:data:`POLICY_USES`): at s for ``actor`` and
        ``cql_current``, at s' for ``td`` and ``cql_next``; ``[B, A]``, ``[B]`` or with ``n``
        ``[B, n, A]``, ``[B, n]`` (one policy forward pass, n samples)."""
        obs = batch.obs if use in ("actor", "cql_current") else batch.next_obs
        return self.actor.sample(obs, n)

    def alpha(self) -> torch.Tensor:
        """α = exp(log α) · alpha_multiplier, detached."""
        return self.log_alpha.detach().exp() * self.cfg.alpha_multiplier

    def policy_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """min(Q₁, Q₂)(obs, act) with the critic weights frozen: gradients reach ``act`` only."""
        self.critic.requires_grad_(False)
        try:
            return self.critic(obs, act).min(0).values
        finally:
            self.critic.requires_grad_(True)

    def actor_loss(self, batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E[α log π(ã|s) − min Q(s, ã)], ã reparameterized; returns (loss, log π(ã|s))."""
        new_act, logp = self.sample_policy(batch, "actor")
        return (alpha * logp - self.policy_q(batch.obs, new_act)).mean(), logp

    def alpha_loss(self, logp: torch.Tensor) -> torch.Tensor:
        """−E[log α · (log π(ã|s) + H̄)]."""
        return -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()

    @torch.no_grad()
    def td_target(self, batch, alpha: torch.Tensor) -> torch.Tensor:
        """y = r + γ(1 − d) min Q̄(s', a') [− α log π(a'|s')]; with --cql-max-target-backup a' is
        the best of N samples by min Q̄."""
        cfg = self.cfg
        if cfg.cql_max_target_backup:
            n = cfg.cql_n_actions
            next_act, next_logp = self.sample_policy(batch, "td", n)  # [B, N, A], [B, N]
            b = next_act.shape[0]
            obs = batch.next_obs.unsqueeze(1).expand(b, n, batch.next_obs.shape[-1]).reshape(b * n, -1)
            q = self.critic_target(obs, next_act.reshape(b * n, -1)).min(0).values.view(b, n)
            next_q, idx = q.max(-1)
            next_logp = next_logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        else:
            next_act, next_logp = self.sample_policy(batch, "td")
            next_q = self.critic_target(batch.next_obs, next_act).min(0).values
        if cfg.backup_entropy:
            next_q = next_q - alpha * next_logp
        return batch.rew + cfg.discount * (1.0 - batch.done) * next_q

    def critic_loss(self, batch, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_TD + L_CQL with every Q value from one critic forward pass over the dataset actions
        and the 3N sampled actions per state; returns (loss, metrics). With --cql-lagrange the
        metrics hold ``alpha_prime_loss`` with its graph (into log α' only)."""
        cfg = self.cfg
        obs, act = batch.obs, batch.act
        b, n, d = obs.shape[0], cfg.cql_n_actions, obs.shape[-1]
        with torch.no_grad():
            rand_act = torch.rand(b, n, self.act_dim, device=obs.device, dtype=obs.dtype) * 2.0 - 1.0
            cur_act, cur_logp = self.sample_policy(batch, "cql_current", n)
            next_act, next_logp = self.sample_policy(batch, "cql_next", n)
            sampled = torch.cat([rand_act, next_act, cur_act], dim=1).reshape(b * 3 * n, self.act_dim)
            obs_all = torch.cat([obs, obs.unsqueeze(1).expand(b, 3 * n, d).reshape(b * 3 * n, d)])
            act_all = torch.cat([act, sampled])
        q_all = self.critic(obs_all, act_all)  # [2, B + 3NB]
        q = q_all[:, :b]
        q_rand, q_next, q_cur = q_all[:, b:].reshape(q_all.shape[0], b, 3 * n).split(n, dim=-1)
        td_loss = (q - target).square().mean(-1).sum()
        term = cql_conservative_term(q, q_rand, q_cur, cur_logp, q_next, next_logp, self.act_dim, cfg.cql_temp,
                                     cfg.cql_importance_sample, cfg.cql_clip_diff_min, cfg.cql_clip_diff_max)
        metrics = {}
        if cfg.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            gap = term.diff - cfg.cql_target_action_gap  # [2]
            cql_loss = (alpha_prime.detach() * cfg.cql_min_q_weight * gap).sum()
            metrics["alpha_prime_loss"] = -0.5 * (alpha_prime * cfg.cql_min_q_weight * gap.detach()).sum()
            metrics["alpha_prime"] = alpha_prime.detach()
        else:
            cql_loss = cfg.cql_min_q_weight * term.diff.sum()
        q_means = q.detach().mean(-1)
        diff, ood, std = term.diff.detach(), term.ood.detach().mean(-1), term.std.detach().mean(-1)
        metrics.update({
            "td_loss": td_loss.detach(), "cql_loss": cql_loss.detach(),
            "q1_mean": q_means[0], "q2_mean": q_means[1], "td_target_mean": target.mean(),
            "cql_diff_q1": diff[0], "cql_diff_q2": diff[1], "cql_ood_q1": ood[0], "cql_ood_q2": ood[1],
            "cql_std_q1": std[0], "cql_std_q2": std[1], "cql_q_rand": q_rand.detach().mean(),
            "cql_q_current": q_cur.detach().mean(), "cql_q_next": q_next.detach().mean(),
        })
        return td_loss + cql_loss, metrics

    def losses(self, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every loss of one update from the current parameters, in JaxCQL's sampling order:
        ``({optimizer name: loss}, metrics)``. Each loss's graph reaches only the parameters of
        the optimizer it is named after (a subclass adds its own, e.g. a balance model's)."""
        cfg = self.cfg
        alpha = self.alpha()
        actor_loss, logp = self.actor_loss(batch, alpha)
        alpha_loss = self.alpha_loss(logp)
        target = self.td_target(batch, alpha)
        critic_loss, info = self.critic_loss(batch, target)
        losses = {"actor": actor_loss, "critic": critic_loss}
        if cfg.autotune:
            losses["alpha"] = alpha_loss
        if "alpha_prime_loss" in info:
            losses["alpha_prime"] = info.pop("alpha_prime_loss")
            info["alpha_prime_loss"] = losses["alpha_prime"].detach()
        metrics = {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                   "alpha_loss": alpha_loss.detach(), "alpha": alpha, "entropy": -logp.detach().mean(), **info}
        return losses, metrics

    def update(self, batch) -> dict[str, torch.Tensor]:
        """:meth:`losses`, one backward pass over their sum (the graphs touch disjoint parameters,
        so each parameter gets its own loss's gradient), every named optimizer steps, then the targets."""
        losses, metrics = self.losses(batch)
        for name in losses:
            self.optimizers[name].zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()
        for name in losses:
            self.optimizers[name].step()
        self.update_targets()
        return metrics


def prepare(cfg: Config, dataset) -> Prepared:
    """Dataset actions clipped to ±clip_action, rewards r·scale + bias (online rewards too), optional state stats."""
    actions = np.clip(dataset.actions, -cfg.clip_action, cfg.clip_action)
    affine = cfg.reward_scale != 1.0 or cfg.reward_bias != 0.0
    reward_fn = reward_transform("affine", scale=cfg.reward_scale, shift=cfg.reward_bias) if affine else None
    mean, std = dataset.state_stats() if cfg.normalize_states else (None, None)
    return Prepared(reward_fn=reward_fn, actions=actions, obs_mean=mean, obs_std=std)


ALGORITHM = register(Algorithm("cql", CQL, Config, prepare=prepare, kind="offline",
                               doc="CQL (Kumar et al., 2020), JaxCQL's ConservativeSAC"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/cql.py [flags]`


if __name__ == "__main__":
    main()
