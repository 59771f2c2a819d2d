"""FamO2O: Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online RL (Wang et al., NeurIPS 2023).

A universal policy π_u(a | s‖e(β)) is trained for a whole family of improvement/constraint
balances β at once, and a balance model π_b(β | s) picks the β of each state. β enters π_u through
a sinusoidal encoding of the raw value, e(β)[2i] = sin(β / n^{2i/d}), e(β)[2i+1] = cos(β / n^{2i/d})
(i < d/2, d = 6, n = 10000). π_b learns by pushing Q of π_u's actions up through the FROZEN π_u
(its gradient reaches π_b only). Offline, the policy loss draws β ~ U(lo, hi) per sample; online
the balance model supplies it. The official code (LeapLabTHU/FamO2O @ea9cb01) has two
independent variants; ``--base`` picks one (auto: iql for antmaze, cql otherwise, as the paper's
runs). Both follow that code; where it differs from the paper, the code wins (docs/famo2o.md).

IQL variant (``--base iql``; jax_iql/family_learner.py::_family_update_jit), one update in the
official order V → π_b → α_b → π_u → Q → target (IQL's named steps, :class:`FamO2OIQL`):

    1. L_V   = IQL's expectile loss of min Q̄(s, a) − V(s)
    2. β̃ ~ π_b(·|s) (tanh-squashed 1-D Gaussian, reparameterized), β = lo + (β̃ + 1)/2 · (hi − lo)
       ã = μ_u(s‖e(β)) + σ_u·ε                      (π_u frozen: gradients reach π_b only)
       L_b   = mean( α_b · log π_b(β̃|s) − min Q̄(s, ã) )
    3. L_α   = α_b · (H − H̄),  H = −mean log π_b(β̃|s),  H̄ = −0.5, α_b = exp(log α_b), α₀ = 1
    4. β_π   = U(lo, hi) per sample offline; online a sample of the OLD π_b (before step 2), stop-grad
       A     = min Q̄(s, a) − V_new(s)
       L_π   = −mean( min(exp(β_π · A), 100) · log π_u(a | s‖e(β_π)) )
    5. L_Q   = Σ_twins mean(Q(s, a) − r − γ(1 − d) V_new(s'))²
    6. Q̄    ← τ Q + (1 − τ) Q̄

  π_u is IQL's Gaussian (tanh on the mean, not squashed, state-independent log-std in [−5, 2]) on
  s‖e(β); π_b's log-std is state-independent, clipped to [−10, 2]. (lo, hi) = (1, 5) (antmaze:
  (8, 14)). Rewards as IQL's script: locomotion r·1000/(max − min episode return), antmaze r − 1.

CQL variant (``--base cql``; jax_cql/JaxCQL/family_conservative_sac.py::_train_step, :class:`FamO2OCQL`):
every loss from the parameters before the update, one backward pass, every optimizer steps, then
the targets (JaxCQL's order, as :class:`~offrl.algos.cql.CQL`):

    β̃_b ~ π_b(·|s) (JaxCQL's TanhGaussianPolicy, 1-D), β_b = lo + β̃_b · (hi − lo) ∈ (−0.5, 1.5)
    β    = U(lo, hi) = U(0.5, 1.5) offline; β_b online          (stop-gradient in every loss but L_b)
    ã ~ π_u(·|s‖e(β)) reparameterized (tanh-squashed);  L_π = mean( α log π_u(ã|s‖e(β)) − β · min Q(s, ã) )
    L_α  = −mean( log α · (log π_u(ã|s‖e(β)) + H̄) ),  H̄ = −|A|
    a' ~ π_u(·|s'‖e(β_b));  y = r + γ (1 − d) min Q̄(s', a')    (β_b of the CURRENT state s)
    L_Q  = Σᵢ mean(Qᵢ(s, a) − y)² + w Σᵢ CQLᵢ,  w = 1; CQL samples aᶜ ~ π_u(·|s‖e(β)), aⁿ ~ π_u(·|s'‖e(β_b))
    L_b  = −mean min Q(s, ã_b),  ã_b ~ π_u(·|s‖e(β_b)) reparameterized (π_u, Q frozen; no entropy term)
    Q̄   ← τ Q + (1 − τ) Q̄

  Q networks with LayerNorm after each hidden layer; rewards unscaled; dataset actions ±0.999.

Acting: β = π_b's mode (tanh of its mean, mapped), then π_u sampled (exploration) or its mean
(evaluation). ``agent.act(obs, beta=b)`` acts with a fixed β: the family of policies
(``offrl eval CHECKPOINT --beta B``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn as nn

from offrl.agent import Agent
from offrl.algos import cql, iql
from offrl.algos.cql import CQL, ScaledTanhGaussianActor
from offrl.algos.iql import IQL
from offrl.errors import OffrlError, check
from offrl.nets import EnsembleCritic, GaussianActor, gaussian_log_prob, orthogonal_init_, tanh_log_det
from offrl.preprocess import dataset_domain, fill_unset
from offrl.registry import Algorithm, register
from offrl.train import Prepared

# β ranges: the IQL variant's only shipped config is antmaze (8, 14); its constructor default
# (1, 5) is used elsewhere (no official locomotion config exists for that variant)
IQL_BETA_RANGE = {"antmaze": (8.0, 14.0)}
IQL_DEFAULT_BETA_RANGE = (1.0, 5.0)
CQL_BETA_RANGE = (0.5, 1.5)  # finetune_configs/family.py: coefficient_range


@dataclass
class Config(iql.Config, cql.Config):
    """FamO2O (official code LeapLabTHU/FamO2O). --base picks the variant; the flags of both bases
    are here (IQL's apply to --base iql, CQL's to --base cql), and unset (None) fields take the
    base's presets (iql: expectile 0.7 locomotion / 0.9 antmaze, β range (1, 5) / (8, 14),
    orthogonal init; cql: β range (0.5, 1.5), flax's default init)."""

    legacy_defaults: ClassVar[dict] = {"awr_beta": "per-sample"}  # checkpoints from before --awr-beta

    base: Literal["auto", "iql", "cql"] = "auto"
    """The variant: iql (the official code's antmaze variant, jax_iql) or cql (its locomotion variant, jax_cql); auto: the one the official code runs on the dataset's domain (iql for antmaze, else cql)."""
    beta: float | None = None
    """A fixed β for every sample and for acting, in place of U(lo, hi) offline and the balance model online (an ablation: with --balance False the update reduces to the base's). Unset: FamO2O."""
    beta_range: tuple[float, float] | None = None
    """(lo, hi) of β: offline β ~ U(lo, hi), and the range the balance model's output is mapped with (preset: iql (1, 5), iql on antmaze (8, 14), cql (0.5, 1.5))."""
    beta_map: Literal["auto", "symmetric", "shifted"] = "auto"
    """How the balance model's tanh output β̃ becomes β: symmetric lo + (β̃+1)/2·(hi−lo) in (lo, hi) (the IQL variant's code); shifted lo + β̃·(hi−lo) in (2lo−hi, hi) (the CQL variant's code: (−0.5, 1.5) for (0.5, 1.5)); auto: the base's."""
    balance: bool = True
    """Train the balance model π_b (False needs a fixed --beta)."""
    balance_lr: float = 3e-4
    """Learning rate of the balance model (official: the actor's, 3e-4)."""
    balance_alpha_lr: float = 3e-4
    """IQL variant: learning rate of the balance model's temperature α_b."""
    balance_init_alpha: float = 1.0
    """IQL variant: initial temperature α_b of the balance model's entropy term."""
    balance_target_entropy: float = -0.5
    """IQL variant: target entropy of the balance model (official −1/2)."""
    sin_cos_d: int = 6
    """Size d of the sinusoidal encoding e(β) (even)."""
    sin_cos_n: float = 10000.0
    """Base n of the sinusoidal encoding e(β)[2i] = sin(β / n^(2i/d))."""
    cosine_decay: bool = False
    """IQL variant: cosine-decay the actor learning rate over the offline phase (off in the official antmaze config; the constructor's default is on)."""
    awr_beta: Literal["broadcast", "per-sample"] = "broadcast"
    """IQL variant: which β weights sample j's AWR term. broadcast (the official family_update's quirk): its advantages (B,) times the coefficients (B, 1) broadcast to a B×B matrix, so sample j's weight is mean_i min(exp(β_i·A_j), 100), the same for every β_j; per-sample: min(exp(β_j·A_j), 100), as the paper describes."""
    actor_dropout: float | None = None
    """IQL variant: dropout in the universal actor's hidden layers (official: none; preset 0)."""
    actor_lr: float = 3e-4
    """Learning rate of the universal policy π_u."""
    orthogonal_init: bool | None = None
    """Orthogonal initialisation (preset: iql True, as the official jax_iql; cql False: flax's default, output layers 1e-2)."""
    td_beta: Literal["state", "next_state"] = "state"
    """CQL variant: the balance β of the TD target's next action and of CQL's next-action samples: state = β_b(s), of the current state (the official code's quirk); next_state = a balance sample at s'."""
    deterministic_actor: bool = False
    """Not available for famo2o (its universal policy is Gaussian)."""
    q_layer_norm: bool = True
    """CQL variant: LayerNorm after each hidden layer of the Q networks (official FamilyFullyConnectedQFunction; vanilla JaxCQL has none)."""
    cql_min_q_weight: float = 1.0
    """CQL variant: weight w of the conservative term (official FamO2O config 1.0; the plain CQL baseline config 5.0)."""
    alpha_lr: float = 3e-4
    """CQL variant: learning rate of log α, π_u's entropy temperature (JaxCQL: the policy lr)."""

    def __post_init__(self):
        if isinstance(self.beta_range, list):  # from a checkpoint's config (JSON lists)
            self.beta_range = tuple(self.beta_range)

    def validate(self) -> None:
        super().validate()
        check(self.base in ("auto", "iql", "cql"), f"--base must be auto, iql or cql, got {self.base}")
        if self.beta_range is not None:
            check(len(self.beta_range) == 2 and self.beta_range[0] < self.beta_range[1],
                  f"--beta-range must be two numbers LO < HI, got {self.beta_range}")
        check(self.beta_map in ("auto", "symmetric", "shifted"), f"--beta-map must be auto, symmetric or shifted, got {self.beta_map}")
        check(self.td_beta in ("state", "next_state"), f"--td-beta must be state or next_state, got {self.td_beta}")
        check(self.balance or self.beta is not None,
              "--balance False needs a fixed --beta (otherwise β would come from an untrained balance model)")
        check(self.sin_cos_d > 0 and self.sin_cos_d % 2 == 0, f"--sin-cos-d must be a positive even number, got {self.sin_cos_d}")
        check(self.sin_cos_n > 0, f"--sin-cos-n must be positive, got {self.sin_cos_n}")
        check(self.balance_lr > 0 and self.balance_alpha_lr > 0, "--balance-lr and --balance-alpha-lr must be positive")
        check(self.balance_init_alpha > 0, f"--balance-init-alpha must be positive, got {self.balance_init_alpha}")
        check(not self.deterministic_actor, "--deterministic-actor is not available for famo2o (its universal policy is Gaussian)")
        if self.variant() == "cql":
            check(self.reward_mode == "auto", "--reward-mode is a --base iql flag; the CQL variant's rewards are r·--reward-scale + --reward-bias")
        else:
            check(self.reward_scale == 1.0 and self.reward_bias == 0.0,
                  "--reward-scale/--reward-bias are --base cql flags; the IQL variant's rewards follow --reward-mode")

    def validate_beta(self) -> None:
        """A fixed --beta: >= 0 for the IQL variant (an AWR temperature); any value for the CQL
        variant, whose balance range reaches below 0 (the shifted map: (−0.5, 1.5))."""
        if self.variant() == "iql":
            super().validate_beta()

    def variant(self) -> str:
        """``--base``, with ``auto`` decided by the dataset id: iql for antmaze, cql otherwise."""
        if self.base != "auto":
            return self.base
        return "iql" if dataset_domain(self.dataset) == "antmaze" else "cql"

    def resolve(self, dataset) -> None:
        domain = dataset_domain(self.dataset)
        self.base = self.variant()
        if self.base == "iql":
            fill_unset(self, expectile=iql.PRESETS[domain][0], actor_dropout=0.0, orthogonal_init=True,
                       beta_range=IQL_BETA_RANGE.get(domain, IQL_DEFAULT_BETA_RANGE))
        else:
            fill_unset(self, beta_range=CQL_BETA_RANGE, orthogonal_init=False)

    def mapping(self) -> str:
        """The balance output mapping in effect (``--beta-map``, or the base's)."""
        if self.beta_map != "auto":
            return self.beta_map
        return "symmetric" if self.variant() == "iql" else "shifted"


# ---------------------------------------------------------------------------------- shared parts
def sin_cos_encoding(beta: torch.Tensor, d: int = 6, n: float = 10000.0) -> torch.Tensor:
    """e(β) of the official ``sin_cos_skill_func``: ``[B] → [B, d]`` with e[2i] = sin(β / n^(2i/d)) and
    e[2i+1] = cos(β / n^(2i/d)), i = 0..d/2−1, of the raw β."""
    i = torch.arange(d // 2, device=beta.device, dtype=torch.float32)
    inner = beta.reshape(-1, 1) / (n ** (2.0 * i / d))
    return torch.stack([torch.sin(inner), torch.cos(inner)], dim=-1).reshape(-1, d)


def map_beta(beta_tilde: torch.Tensor, lo: float, hi: float, mapping: str) -> torch.Tensor:
    """The balance model's tanh output β̃ ∈ (−1, 1) as β: ``symmetric`` lo + (β̃ + 1)/2·(hi − lo) ∈ (lo, hi)
    (IQL variant); ``shifted`` β̃·(hi − lo) + lo ∈ (2lo − hi, hi) (CQL variant's code)."""
    if mapping == "symmetric":
        return (beta_tilde + 1.0) / 2.0 * (hi - lo) + lo
    if mapping == "shifted":
        return beta_tilde * (hi - lo) + lo
    raise OffrlError(f"unknown beta mapping '{mapping}' (symmetric, shifted)")


def _beta_column(beta, like: torch.Tensor) -> torch.Tensor:
    """``beta`` (float, array or tensor: one value or one per row) as a ``[B]`` tensor next to ``like``."""
    b = torch.as_tensor(np.asarray(beta, dtype=np.float32) if not isinstance(beta, torch.Tensor) else beta,
                        dtype=torch.float32, device=like.device).reshape(-1)
    if b.numel() == 1:
        return b.expand(like.shape[0])
    if b.numel() != like.shape[0]:
        raise OffrlError(f"beta has {b.numel()} values for {like.shape[0]} observations (give one, or one per row)")
    return b


class FamO2O(Agent):
    """FamO2O agent, either variant: ``FamO2O(cfg, ...)`` builds :class:`FamO2OIQL` or
    :class:`FamO2OCQL` by ``cfg.base``. Shared here: the β encoding and mapping, acting (the balance
    model's mode, or a given β) and the β source of each phase."""

    algo = "famo2o"
    Config = Config
    online_continuation = True
    policy_modules = ("actor", "balance")

    def __new__(cls, cfg=None, *args, **kwargs):
        if cls is FamO2O and cfg is not None:
            cls = VARIANTS.get(cfg.variant())
            if cls is None:
                raise OffrlError(f"famo2o: --base {cfg.base} is not available (expected one of {', '.join(VARIANTS)})")
        return super().__new__(cls)

    # ------------------------------------------------------------------ set up by the variants
    @staticmethod
    def check_resolved(cfg) -> None:
        unset = [f for f in ("beta_range", "orthogonal_init") if getattr(cfg, f) is None]
        check(not unset, f"famo2o config is not resolved ({', '.join(unset)} unset): call cfg.resolve(dataset)")

    def _famo2o_setup(self) -> None:
        cfg = self.cfg
        self.beta_lo, self.beta_hi = float(cfg.beta_range[0]), float(cfg.beta_range[1])
        self.beta_mapping = cfg.mapping()
        self._act_beta = None

    def encode(self, beta: torch.Tensor) -> torch.Tensor:
        return sin_cos_encoding(beta, self.cfg.sin_cos_d, self.cfg.sin_cos_n)

    def actor_input(self, obs: torch.Tensor, beta) -> torch.Tensor:
        """s‖e(β); ``beta`` a ``[B]`` tensor or a float."""
        if not isinstance(beta, torch.Tensor):
            beta = torch.zeros_like(obs[:, 0]) + beta  # traceable (export): the batch size stays dynamic
        return torch.cat([obs, self.encode(beta)], dim=-1)

    def map_beta(self, beta_tilde: torch.Tensor) -> torch.Tensor:
        return map_beta(beta_tilde, self.beta_lo, self.beta_hi, self.beta_mapping)

    def balance_sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(β ``[B]``, log π_b(β̃|s) ``[B]``): a reparameterized sample of the balance model, mapped."""
        raise NotImplementedError

    def balance_mode(self, obs: torch.Tensor) -> torch.Tensor:
        """β of the balance model's mode (tanh of its mean, mapped) ``[B]``."""
        raise NotImplementedError

    def uniform_beta(self, obs: torch.Tensor) -> torch.Tensor:
        """β ~ U(lo, hi) per row (the offline policy loss)."""
        return torch.rand(obs.shape[0], device=obs.device) * (self.beta_hi - self.beta_lo) + self.beta_lo

    def policy_beta(self, obs: torch.Tensor):
        """β of the IQL variant's policy loss: ``--beta`` if fixed (a float), else U(lo, hi) offline
        and a stochastic sample of the balance model (stop-gradient) in an online phase. (The CQL
        variant's :meth:`FamO2OCQL.losses` draws its own: online it is the balance sample β_b.)"""
        if self.cfg.beta is not None:
            return float(self.cfg.beta)
        if self.phase_kind == "offline":
            return self.uniform_beta(obs)
        with torch.no_grad():
            return self.balance_sample(obs)[0]

    # ------------------------------------------------------------------ acting
    def acting_beta(self, obs: torch.Tensor):
        if self._act_beta is not None:
            return _beta_column(self._act_beta, obs)
        if self.cfg.beta is not None:
            return float(self.cfg.beta)
        return self.balance_mode(obs)

    def universal_act(self, obs_beta: torch.Tensor, deterministic: bool) -> torch.Tensor:
        raise NotImplementedError

    def policy(self, obs: torch.Tensor, deterministic: bool = True, beta=None) -> torch.Tensor:
        """β = ``beta`` if given, else ``--beta``, else the balance model's mode; then π_u's mean
        (deterministic) or a sample, clipped to [−1, 1]."""
        b = _beta_column(beta, obs) if beta is not None else self.acting_beta(obs)
        return self.universal_act(self.actor_input(obs, b), deterministic).clamp(-1.0, 1.0)

    def explore(self, obs) -> np.ndarray:
        """Training-time behaviour (official): β = the balance model's mode, π_u sampled."""
        return self.act(obs, deterministic=False)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True, beta=None) -> np.ndarray:
        """Actions for raw observations; ``beta`` (a float, or one value per row) acts with that β
        instead of the balance model's: one member of the family of policies."""
        if beta is None:
            return super().act(obs, deterministic)
        self._act_beta = beta
        try:
            return super().act(obs, deterministic)
        finally:
            self._act_beta = None


# ---------------------------------------------------------------------------------- IQL variant
class FamO2OIQL(FamO2O, IQL):
    """FamO2O on IQL (the official ``jax_iql`` variant). Reuses IQL's named steps: ``value_step``
    (V, then the balance model and its temperature, the official order), ``awr_weights`` and
    ``actor_loss`` with a per-sample β on s‖e(β), and IQL's Q step and targets unchanged."""

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        check(cfg.variant() == "iql", f"FamO2OIQL needs --base iql, got {cfg.base}")
        self.check_resolved(cfg)
        # IQL builds the critics, V and an actor on s, in its RNG order (so V and Q start as a plain
        # IQL's of the same seed); its single β is not FamO2O's, only its check needs a value
        super().__init__(dataclasses.replace(cfg, beta=1.0 if cfg.beta is None else cfg.beta),
                         obs_dim, act_dim, obs_mean, obs_std, device)
        self.cfg = cfg
        self._famo2o_setup()
        hidden = tuple(cfg.hidden)
        # universal policy π_u(a | s‖e(β)) replaces IQL's actor; balance model π_b(β̃ | s), 1-D
        self.actor = GaussianActor(obs_dim + cfg.sin_cos_d, act_dim, hidden, dropout=cfg.actor_dropout or 0.0)
        self.balance = GaussianActor(obs_dim, 1, hidden, log_std_min=-10.0, log_std_max=2.0, tanh_mean=False)
        if cfg.orthogonal_init:
            orthogonal_init_(self.actor)
            orthogonal_init_(self.balance)
        self.log_balance_alpha = nn.Parameter(torch.tensor(math.log(cfg.balance_init_alpha)))
        self.target_entropy_b = float(cfg.balance_target_entropy)
        self.to(self.device)
        self.optimizers["actor"] = self.adam(self.actor.parameters(), torch.tensor(cfg.actor_lr, device=self.device))
        self.optimizers["balance"] = self.adam(self.balance.parameters(), cfg.balance_lr)
        self.optimizers["balance_alpha"] = self.adam([self.log_balance_alpha], cfg.balance_alpha_lr)  # capturable on CUDA (--cuda-graph)
        self._beta = None
        self._balance_metrics: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ balance model
    def balance_sample(self, obs):
        mean, std = self.balance(obs)
        u = mean + std * torch.randn_like(mean)
        logp = gaussian_log_prob(u, mean, std) - tanh_log_det(u)
        return self.map_beta(torch.tanh(u)).squeeze(-1), logp

    def balance_mode(self, obs):
        return self.map_beta(torch.tanh(self.balance(obs)[0])).squeeze(-1)

    def universal_act(self, obs_beta, deterministic):
        return self.actor.act(obs_beta, deterministic)

    def balance_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_b = mean(α_b log π_b(β̃|s) − min Q̄(s, ã)), ã a reparameterized sample of the frozen
        π_u(·|s‖e(β)). (The official code draws β̃ and ã with the same PRNG key; here the two noises
        are independent draws.)"""
        beta, logp = self.balance_sample(batch.obs)
        alpha = self.log_balance_alpha.detach().exp()
        actor_mode = self.actor.training
        self.actor.requires_grad_(False)
        self.actor.eval()  # official: training=False (no dropout) in this loss
        mean, std = self.actor(self.actor_input(batch.obs, beta))
        self.actor.train(actor_mode)
        self.actor.requires_grad_(True)
        act = mean + std * torch.randn_like(mean)
        q = self.critic_target(batch.obs, act).min(0).values
        loss = (alpha * logp - q).mean()
        return loss, {"logp": logp.detach(), "alpha": alpha, "q": q.detach(), "beta": beta.detach()}

    def balance_step(self, batch) -> dict[str, torch.Tensor]:
        """2. the balance model, 3. its temperature: L_α = α_b (H − H̄), with H from step 2."""
        loss, aux = self.balance_loss(batch)
        opt = self.optimizers["balance"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        entropy = -aux["logp"].mean()
        alpha_loss = self.log_balance_alpha.exp() * (entropy - self.target_entropy_b)
        opt = self.optimizers["balance_alpha"]
        opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        opt.step()
        return {"balance_loss": loss.detach(), "balance_alpha": aux["alpha"], "balance_alpha_loss": alpha_loss.detach(),
                "balance_entropy": entropy, "balance_q": aux["q"].mean(),
                "balance_beta_mean": aux["beta"].mean(), "balance_beta_std": aux["beta"].std()}

    # ------------------------------------------------------------------ IQL's named steps
    def value_step(self, batch):
        """1. V (IQL's step), then 2.–3. the balance model and its temperature: the official order."""
        out = super().value_step(batch)
        self._balance_metrics = self.balance_step(batch) if self.cfg.balance else {}
        return out

    def awr_weights(self, batch, adv: torch.Tensor) -> torch.Tensor:
        """min(exp(β·A), 100) with the policy loss's β: per sample (--awr-beta per-sample, or the
        fixed --beta), or the official broadcast, w_j = mean_i min(exp(β_i·A_j), 100)."""
        beta = self._beta
        if isinstance(beta, torch.Tensor) and self.cfg.awr_beta == "broadcast":
            return torch.exp(beta.reshape(-1, 1) * adv.reshape(1, -1)).clamp(max=self.cfg.exp_adv_max).mean(0)
        return iql.awr_weights(adv, beta, self.cfg.exp_adv_max)

    def actor_loss(self, batch, weights: torch.Tensor) -> torch.Tensor:
        """4. AWR of π_u on s‖e(β) with the same β as the weights."""
        return -(weights * self.actor.log_prob(self.actor_input(batch.obs, self._beta), batch.act)).mean()

    def update(self, batch) -> dict[str, torch.Tensor]:
        # the policy loss's β, from the balance model BEFORE its step (official: the old parameters)
        self._beta = self.policy_beta(batch.obs)
        metrics = super().update(batch)  # IQL: value_step (V, π_b, α_b) → AWR → Q → target
        metrics.update(self._balance_metrics)
        if isinstance(self._beta, torch.Tensor):
            metrics["beta_mean"] = self._beta.mean()
            metrics["beta_std"] = self._beta.std()
        self._beta, self._balance_metrics = None, {}
        return metrics


# ---------------------------------------------------------------------------------- CQL variant
class FamO2OCQL(FamO2O, CQL):
    """FamO2O on CQL (the official ``jax_cql`` variant). Every loss comes from the parameters before
    the update and one backward pass over their sum steps every optimizer (JaxCQL, and
    :meth:`CQL.update`); this class overrides CQL's named steps:

    * :meth:`losses` — draws β of the policy loss (U(lo, hi) offline, the balance sample online)
      and β_b(s), a reparameterized sample of the balance model, puts both into the batch as
      ``beta`` and ``beta_b`` (detached), and adds the balance loss
      L_b = −mean min Q(s, ã_b), ã_b ~ π_u(·|s‖e(β_b(s))) (π_u and Q frozen: gradients reach π_b only).
    * :meth:`sample_policy` — π_u at s‖e(β) for the policy loss and CQL's current actions; at
      s'‖e(β_b(s)) (the balance β of the CURRENT state) for the TD target and CQL's next actions.
    * :meth:`actor_loss` — mean(α log π_u(ã|s‖e(β)) − β · min Q(s, ã)).
    * :meth:`make_actor`, :meth:`make_critic` — π_u on s‖e(β); Q with LayerNorm (``--q-layer-norm``).

    The equations are in the module docstring. Online, the official code evaluates the policy loss
    and the balance loss at one sample ã; here the balance loss draws its own action noise (the same
    distribution, each loss's gradient as the official), so the graphs stay disjoint.
    """

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        check(cfg.variant() == "cql", f"FamO2OCQL needs --base cql, got {cfg.base}")
        self.check_resolved(cfg)
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)  # CQL: make_actor, make_critic
        self._famo2o_setup()
        # the balance model (official HierarchicalPolicy): JaxCQL's TanhGaussianPolicy with a 1-D output
        self.balance = self.init_weights_(ScaledTanhGaussianActor(obs_dim, 1, tuple(cfg.hidden), cfg.policy_log_std_multiplier,
                                                                  cfg.policy_log_std_offset))
        self.to(self.device)
        self.optimizers["balance"] = self.adam(self.balance.parameters(), cfg.balance_lr)

    def make_actor(self) -> nn.Module:
        cfg = self.cfg
        return self.init_weights_(ScaledTanhGaussianActor(self.obs_dim + cfg.sin_cos_d, self.act_dim, tuple(cfg.hidden),
                                                          cfg.policy_log_std_multiplier, cfg.policy_log_std_offset))

    def make_critic(self) -> nn.Module:
        return self.init_weights_(EnsembleCritic(self.obs_dim, self.act_dim, 2, tuple(self.cfg.hidden),
                                                 layer_norm=self.cfg.q_layer_norm))

    # ------------------------------------------------------------------ balance model
    def balance_sample(self, obs):
        beta_tilde, logp = self.balance.sample(obs)
        return self.map_beta(beta_tilde).squeeze(-1), logp

    def balance_mode(self, obs):
        return self.map_beta(torch.tanh(self.balance(obs)[0])).squeeze(-1)

    def universal_act(self, obs_beta, deterministic):
        return self.actor.act(obs_beta, deterministic)

    def balance_loss(self, batch, beta_b: torch.Tensor) -> torch.Tensor:
        """L_b = −mean min Q(s, ã_b), ã_b a reparameterized sample of π_u(·|s‖e(β_b)) with π_u's and
        Q's weights frozen: the gradient reaches π_b through β_b only. No entropy term (official)."""
        self.actor.requires_grad_(False)
        try:
            act, _ = self.actor.sample(self.actor_input(batch.obs, beta_b))
        finally:
            self.actor.requires_grad_(True)
        return -self.policy_q(batch.obs, act).mean()

    # ------------------------------------------------------------------ CQL's named steps
    def losses(self, batch):
        cfg = self.cfg
        n = batch.obs.shape[0]
        bal_loss = None
        if cfg.balance:
            beta_b, _ = self.balance_sample(batch.obs)  # β_b(s), with its graph into π_b
            bal_loss = self.balance_loss(batch, beta_b)
            beta_b_col = beta_b.detach()
        if cfg.beta is not None:
            beta_pi = beta_b_col = torch.full((n,), float(cfg.beta), device=batch.obs.device)
        elif self.phase_kind == "offline":
            beta_pi = self.uniform_beta(batch.obs)
        else:
            beta_pi = beta_b_col  # online: the balance sample itself (official: hierarchical_coefficient)
        beta_next = beta_b_col
        if cfg.td_beta == "next_state" and cfg.beta is None:
            with torch.no_grad():
                beta_next = self.balance_sample(batch.next_obs)[0]
        losses, metrics = super().losses(batch.replace(beta=beta_pi, beta_b=beta_next))
        if bal_loss is not None:
            losses["balance"] = bal_loss
            metrics["balance_loss"] = bal_loss.detach()
            metrics["balance_beta_mean"] = beta_b.detach().mean()
            metrics["balance_beta_std"] = beta_b.detach().std()
        if cfg.beta is None:
            metrics["beta_mean"] = beta_pi.mean()
            metrics["beta_std"] = beta_pi.std()
        return losses, metrics

    def sample_policy(self, batch, use: str, n: int | None = None):
        """π_u at s‖e(β) (``actor``, ``cql_current``: the policy loss's β) or at s'‖e(β_b(s))
        (``td``, ``cql_next``: the balance β of the current state s, not of s'; ``--td-beta
        next_state``: a balance sample at s')."""
        if use in ("actor", "cql_current"):
            x = self.actor_input(batch.obs, batch.beta)
        else:
            x = self.actor_input(batch.next_obs, batch.beta_b)
        return self.actor.sample(x, n)

    def actor_loss(self, batch, alpha: torch.Tensor):
        """mean(α log π_u(ã|s‖e(β)) − β · min Q(s, ã)); returns (loss, log π_u(ã|s‖e(β)))."""
        new_act, logp = self.sample_policy(batch, "actor")
        return (alpha * logp - batch.beta * self.policy_q(batch.obs, new_act)).mean(), logp


VARIANTS: dict[str, type] = {"iql": FamO2OIQL, "cql": FamO2OCQL}


def prepare(cfg: Config, dataset) -> Prepared:
    """The base's preprocessing: IQL variant as IQL's (rewards by domain, actions clipped to
    ±(1 − 1e-5)); CQL variant as CQL's (rewards unscaled, actions clipped to ±0.999)."""
    if cfg.variant() == "iql":
        return iql.prepare(cfg, dataset)
    return cql.prepare(cfg, dataset)


ALGORITHM = register(Algorithm("famo2o", FamO2O, Config, prepare=prepare, kind="offline",
                               doc="FamO2O, a family of balances for offline-to-online RL (Wang et al., 2023)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/famo2o.py [flags]`


if __name__ == "__main__":
    main()
