"""PPO: Proximal Policy Optimization (Schulman et al., 2017), following CleanRL's ppo_continuous_action.py.

On-policy actor-critic with a clipped surrogate objective. A rollout of num_steps x num_envs env steps
is collected with the current Gaussian policy and then used for update_epochs passes of
num_minibatches minibatches. The defaults are CleanRL's; `--preset props-baseline` selects the PPO
settings of the PROPS repository. Per minibatch, as implemented:

    ρ      = exp(log π_θ(a|s) − log π_old(a|s))
    Â      = (A − mean A) / (std A + 1e-8)                        (per minibatch, --norm-adv)
    L_π    = mean max(−Â ρ, −Â clip(ρ, 1 − ε, 1 + ε))
    V_clip = V_old + clip(V_θ − V_old, −ε, ε)
    L_V    = ½ mean max((V_θ − R)², (V_clip − R)²)                 (--clip-vloss; else ½ mean (V_θ − R)²)
    L      = L_π − c_H · mean H[π_θ(·|s)] + c_V · L_V,   gradient norm clipped to 0.5, Adam eps 1e-5

A and R come from GAE(γ, λ) over the rollout (offrl.rollout). By default a time-limit truncation is
not bootstrapped (CleanRL's done = terminated | truncated). The lr is annealed linearly to 0 over
total_steps // (num_steps·num_envs) rollouts.

The networks are 64-64 tanh MLPs for the actor mean and the critic, orthogonal init (gain √2, actor
head 0.01, critic head 1), and a state-independent log-std that starts at 0. The Gaussian is not
squashed: the env gets the sample clipped to [-1, 1], while the storage keeps the unclipped sample
and its log-prob. The agent owns the observation and reward normalization (CleanRL's
NormalizeObservation / NormalizeReward wrappers, each followed by a clip to ±10). The statistics
are agent buffers, so they are checkpointed. They are updated during rollouts only, so `act` uses
the same frozen transform at evaluation and after loading. Logged episode returns are raw.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn as nn

from offrl.agent import Agent
from offrl.collector import RolloutSink, Transition
from offrl.config import RunConfig
from offrl.errors import OffrlError, check
from offrl.nets import MLP, orthogonal_init_
from offrl.preprocess import fill_unset, preset_for
from offrl.registry import Algorithm, register

PRESETS = ("cleanrl", "props-baseline")
CLEANRL = dict(num_steps=2048, lr=3e-4, ent_coef=0.0, kl_stop="epoch", mean_tanh=False)  # target_kl stays None (off)
PROPS_PPO = {  # env token -> (num_steps, lr) of the on-policy PPO result directories of NicholasCorrado/PPOROS
    "swimmer": (4096, 1e-3), "hopper": (2048, 1e-3), "halfcheetah": (1024, 1e-4),
    "walker2d": (4096, 1e-3), "ant": (1024, 1e-4), "humanoid": (8192, 1e-4),
}
PROPS_DEFAULT = (2048, 1e-4)  # the PROPS script's own defaults (n, lr) for other envs


@dataclass
class Config(RunConfig):
    """PPO as CleanRL's ppo_continuous_action.py (--preset props-baseline: the PROPS repo's PPO). Fields left unset (None) take the preset's value."""

    legacy_defaults: ClassVar[dict] = {"mean_tanh": False, "se_freq": 0}  # checkpoints from before these fields

    env: str = "Hopper-v5"
    """Gymnasium env id (actions are rescaled to [-1, 1])."""
    total_steps: int = 1_000_000
    """Environment steps (summed over the vector env's copies)."""
    num_envs: int = 1
    """Environment copies stepped together (a rollout is num_steps x num_envs steps)."""
    preset: Literal["cleanrl", "props-baseline"] = "cleanrl"
    """Fills the unset fields. cleanrl: num_steps 2048, lr 3e-4, ent_coef 0, no target KL. props-baseline: the PPO of the PROPS repo: ent_coef 0.01, target_kl 0.03 checked per minibatch before its step, and per-env num_steps / lr from the PROPS result directories (hopper 2048/1e-3, halfcheetah 1024/1e-4, walker2d 4096/1e-3, ant 1024/1e-4, humanoid 8192/1e-4, swimmer 4096/1e-3, other envs 2048/1e-4)."""
    num_steps: int | None = None
    """Steps per env copy in each rollout (preset: 2048; props-baseline: per env)."""
    num_minibatches: int = 32
    """Minibatches per epoch (minibatch size = num_steps·num_envs // num_minibatches)."""
    update_epochs: int = 10
    """Passes over each rollout."""
    lr: float | None = None
    """Adam learning rate (preset: 3e-4; props-baseline: per env)."""
    anneal_lr: bool = True
    """Anneal the lr linearly to 0: rollout k (1-based) uses lr·(1 − (k − 1)/K), K = total_steps // (num_steps·num_envs)."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.99
    """Discount γ (also the discount of the reward normalizer's running return)."""
    gae_lambda: float = 0.95
    """GAE λ."""
    norm_adv: bool = True
    """Normalize the advantages per minibatch."""
    clip_coef: float = 0.2
    """Surrogate clip ε; also the value clip range."""
    clip_vloss: bool = True
    """Use the clipped value loss."""
    ent_coef: float | None = None
    """Entropy bonus coefficient c_H (preset: 0; props-baseline: 0.01)."""
    vf_coef: float = 0.5
    """Value loss coefficient c_V."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm (all parameters) to this."""
    target_kl: float | None = None
    """Stop the rollout's update when the approximate KL exceeds this (preset: off; props-baseline: 0.03); 0 turns it off."""
    kl_stop: Literal["epoch", "minibatch"] | None = None
    """Where target_kl is checked (preset: epoch, after each epoch as CleanRL; props-baseline: minibatch, before each gradient step as PROPS)."""
    bootstrap_truncation: bool = False
    """Bootstrap time-limit truncations with V(true final obs) (CleanRL: no, done = terminated | truncated)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the actor-mean and critic MLPs (tanh)."""
    se_freq: int | None = None
    """Every this many PPO updates, before the update, the PROPS paper's sampling error (its compute_se: an MLE policy refitted to the rollout's actions, logged as train/sampling_error_paper); 0 turns it off (preset: off; props-baseline and props: updates // 30, as the PROPS script's default)."""
    se_epochs: int = 250
    """Epochs of the MLE fit of the paper's sampling error (official se_epochs)."""
    se_lr: float = 1e-3
    """Adam lr of the MLE fit of the paper's sampling error (official se_lr)."""
    mean_tanh: bool | None = None
    """A tanh on the actor mean's output, μ(s) ∈ (−1, 1) (preset: off, as CleanRL; props-baseline: on, as the PROPS repo's Agent.actor_mean, which ends in nn.Tanh())."""
    normalize_obs: bool = True
    """Normalize observations by running mean/var, then clip (CleanRL's NormalizeObservation)."""
    normalize_reward: bool = True
    """Divide rewards by the running std of the discounted return, then clip (CleanRL's NormalizeReward)."""
    clip_obs: float = 10.0
    """Clip of the normalized observations."""
    clip_reward: float = 10.0
    """Clip of the normalized rewards."""
    eval_every: int = 10_000
    """Evaluate every this many env steps (and at the end); 0 disables periodic evaluation."""
    log_every: int = 2048
    """Write averaged metrics every this many env steps."""
    batch_size: int = 256
    """Not used by PPO (its batch is a rollout, num_steps·num_envs; see num_minibatches)."""
    compile: bool = False
    """Not used by PPO (learn runs eagerly)."""

    def resolve(self, dataset=None) -> None:
        """Fill the unset fields from the preset (in place; a no-op on a resolved config)."""
        check(self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.preset == "props-baseline":
            num_steps, lr = preset_for(self.env, PROPS_PPO, PROPS_DEFAULT)
            fill_unset(self, num_steps=num_steps, lr=lr, ent_coef=0.01, target_kl=0.03, kl_stop="minibatch", mean_tanh=True)
            fill_unset(self, se_freq=props_se_freq(self))
        else:
            fill_unset(self, se_freq=0, **CLEANRL)

    @property
    def rollout_size(self) -> int:
        """Samples per rollout, num_steps·num_envs (the config must be resolved)."""
        return int(self.num_steps) * self.num_envs

    def validate(self) -> None:
        super().validate()
        for name in ("total_steps", "num_envs", "num_minibatches", "update_epochs"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("num_steps", "lr"):
            value = getattr(self, name)
            check(value is None or value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("adam_eps", "clip_coef", "max_grad_norm", "clip_obs", "clip_reward"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(0.0 <= self.gamma <= 1.0, f"--gamma must be in [0, 1], got {self.gamma}")
        check(0.0 <= self.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1], got {self.gae_lambda}")
        check(self.ent_coef is None or self.ent_coef >= 0, f"--ent-coef must be >= 0, got {self.ent_coef}")
        check(self.vf_coef >= 0, f"--vf-coef must be >= 0, got {self.vf_coef}")
        check(self.target_kl is None or self.target_kl >= 0, f"--target-kl must be >= 0 (0: off), got {self.target_kl}")
        check(self.kl_stop in (None, "epoch", "minibatch"), f"--kl-stop must be epoch or minibatch, got {self.kl_stop!r}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"--hidden needs positive sizes, got {self.hidden}")
        check(self.se_freq is None or self.se_freq >= 0, f"--se-freq must be >= 0 (0: off), got {self.se_freq}")
        check(self.se_epochs > 0 and self.se_lr > 0, "--se-epochs and --se-lr must be positive")
        if self.num_steps is not None:
            check(self.num_minibatches <= self.rollout_size,
                  f"--num-minibatches {self.num_minibatches} exceeds the rollout size {self.rollout_size} (num_steps x num_envs)")
            check(self.total_steps >= self.rollout_size,
                  f"--total-steps {self.total_steps} is less than one rollout ({self.rollout_size} = num_steps x num_envs): nothing would be learned")


# ------------------------------------------------------------------------------------ normalizers
class RunningMeanStd(nn.Module):
    """Running mean and (population) variance of batches, float64 buffers: gymnasium's RunningMeanStd
    (mean 0, var 1 and count 1e-4 at the start, batches merged with the parallel-variance formula)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Merge the batch ``x [B, *shape]`` (only its rows where ``mask [B]`` is true; none: no change).

        On the CPU the same float64 arithmetic runs in numpy on views of the buffers (a few µs
        instead of torch's per-op overhead, which dominated a one-env rollout step); on other
        devices it stays in torch (no host sync). The elementwise operations are the same, in the
        same order, so one-row updates are bit-identical either way."""
        if x.device.type == "cpu":
            self._update_numpy(x.numpy().astype(np.float64, copy=False), None if mask is None else mask.numpy())
        else:
            self._update_torch(x, mask)

    def _update_torch(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        x = x.to(torch.float64)
        if mask is None:
            n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
            batch_mean, batch_var = x.mean(0), x.var(0, correction=0)
        else:
            w = mask.to(torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
            n = w.sum()
            safe = n.clamp(min=1.0)
            batch_mean = (x * w).sum(0) / safe
            batch_var = ((x - batch_mean).square() * w).sum(0) / safe
        delta = batch_mean - self.mean
        total = self.count + n
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        var = m2 / total
        if mask is not None:  # an empty selection leaves the statistics exactly as they were
            some = n > 0
            mean, var, total = torch.where(some, mean, self.mean), torch.where(some, var, self.var), torch.where(some, total, self.count)
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.copy_(total)

    def _update_numpy(self, x: np.ndarray, mask: np.ndarray | None) -> None:
        if mask is not None:
            if not mask.any():
                return
            x = x[mask]
        n = float(x.shape[0])
        if x.shape[0] == 1:  # one row (one env copy): its mean is the row, its variance 0, exactly
            batch_mean, batch_var = x[0], np.zeros_like(x[0])
        else:
            batch_mean, batch_var = x.mean(0), x.var(0)
        mean, var, count = self.mean.numpy(), self.var.numpy(), self.count.numpy()  # views: written in place
        delta = batch_mean - mean
        total = count + n
        new_mean = mean + delta * n / total
        m2 = var * count + batch_var * n + np.square(delta) * count * n / total
        var[...] = m2 / total
        mean[...] = new_mean
        count[...] = total


def _sqrt(x: np.ndarray) -> np.ndarray:
    """torch's sqrt of a float64 array (its CPU kernel and numpy's differ in the last bit now and
    then; using torch's keeps the numpy fast path bit-identical to the torch path)."""
    return torch.sqrt(torch.from_numpy(np.asarray(x))).numpy()


class ObsNormalizer(RunningMeanStd):
    """NormalizeObservation + clip: ``clip((obs − mean) / sqrt(var + 1e-8), ±clip)`` (float32 out)."""

    def __init__(self, obs_dim: int, clip: float = 10.0):
        super().__init__((obs_dim,))
        self.clip = float(clip)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.device.type == "cpu" and not torch.is_grad_enabled():  # numpy: the same arithmetic, less overhead
            z = (obs.numpy().astype(np.float64, copy=False) - self.mean.numpy()) / _sqrt(self.var.numpy() + 1e-8)
            return torch.from_numpy(np.clip(z, -self.clip, self.clip).astype(np.float32))
        return self._forward_torch(obs)

    def _forward_torch(self, obs: torch.Tensor) -> torch.Tensor:
        z = (obs.to(torch.float64) - self.mean) / torch.sqrt(self.var + 1e-8)
        return z.clamp(-self.clip, self.clip).to(torch.float32)


class RewardNormalizer(nn.Module):
    """NormalizeReward + clip, one running return per env copy (gymnasium 0.29.1, CleanRL's pin):

        G ← γ (1 − terminated) G + r;   merge G into the running variance;   r' = clip(r / sqrt(var + 1e-8), ±clip)

    As in gymnasium, only a termination resets G (before adding the reward of that step); a time-limit
    truncation does not."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0):
        super().__init__()
        self.rms = RunningMeanStd(())
        self.register_buffer("ret", torch.zeros(num_envs, dtype=torch.float64))
        self.gamma, self.clip = float(gamma), float(clip)

    @torch.no_grad()
    def forward(self, rew: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        if rew.device.type == "cpu":  # numpy: the same arithmetic, less overhead (see RunningMeanStd.update)
            r = rew.numpy().astype(np.float64, copy=False)
            ret = self.ret.numpy()
            ret[...] = ret * self.gamma * (1.0 - term.numpy().astype(np.float64)) + r
            self.rms._update_numpy(ret, None)
            return torch.from_numpy(np.clip(r / _sqrt(self.rms.var.numpy() + 1e-8), -self.clip, self.clip))
        return self._forward_torch(rew, term)

    def _forward_torch(self, rew: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        rew = rew.to(torch.float64)
        self.ret.copy_(self.ret * self.gamma * (1.0 - term.to(torch.float64)) + rew)
        self.rms._update_torch(self.ret, None)
        return (rew / torch.sqrt(self.rms.var + 1e-8)).clamp(-self.clip, self.clip)


# ------------------------------------------------------------------------------------ networks, losses
class GaussianPolicy(nn.Module):
    """CleanRL's actor: mean = MLP(s) (tanh hidden, no output squashing), a free log-std vector.
    ``mean_tanh``: the PROPS repo's actor, whose mean ends in a tanh (μ ∈ (−1, 1))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], mean_tanh: bool = False):
        super().__init__()
        self.mean = orthogonal_init_(MLP(obs_dim, act_dim, hidden, activation="tanh",
                                         output_activation="tanh" if mean_tanh else None), math.sqrt(2.0), last_gain=0.01)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.mean(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)  # no host sync

    @torch.no_grad()
    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a ~ N(μ(s), σ²), Σ log N(a)) with exactly the ops of ``dist(obs).sample()`` and
        ``.log_prob(a).sum(-1)`` (the same numbers, without the distribution object's overhead)."""
        mean = self.mean(obs)
        scale = self.log_std.exp().expand_as(mean)
        a = torch.normal(mean, scale)
        logp = -((a - mean) ** 2) / (2 * scale**2) - scale.log() - math.log(math.sqrt(2 * math.pi))
        return a, logp.sum(-1)


def ppo_losses(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, new_value: torch.Tensor,
               old_value: torch.Tensor, ret: torch.Tensor, clip_coef: float, clip_vloss: bool = True,
               norm_adv: bool = True) -> dict[str, torch.Tensor]:
    """One minibatch's clipped surrogate and value losses, and the diagnostics CleanRL logs
    (``approx_kl`` = mean((ρ − 1) − log ρ), ``old_approx_kl`` = mean(−log ρ), ``clipfrac`` = share of |ρ − 1| > ε)."""
    logratio = new_logp - old_logp
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1.0) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)).mean()
    if clip_vloss:
        v_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        value_loss = 0.5 * torch.max((new_value - ret).square(), (v_clipped - ret).square()).mean()
    else:
        value_loss = 0.5 * (new_value - ret).square().mean()
    return {"policy_loss": policy_loss, "value_loss": value_loss, "old_approx_kl": old_approx_kl,
            "approx_kl": approx_kl, "clipfrac": clipfrac}


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − Var[target − pred] / Var[target] (population variances; NaN when Var[target] is 0), on the device."""
    var_y = target.var(correction=0)
    ev = 1.0 - (target - pred).var(correction=0) / var_y
    return torch.where(var_y == 0, torch.full_like(ev, float("nan")), ev)


def gaussian_kl(mu_p: torch.Tensor, std_p: torch.Tensor, mu_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(N(mu_p, std_p²) ‖ N(mu_q, std_q²))."""
    return torch.log(std_q / std_p) + (std_p.square() + (mu_p - mu_q).square()) / (2.0 * std_q.square()) - 0.5


def props_se_freq(cfg) -> int:
    """The PROPS script's default se_freq: the number of PPO updates // 30 (at least 1)."""
    return max((cfg.total_steps // (int(cfg.num_steps) * cfg.num_envs)) // 30, 1)


def paper_sampling_error(actor: "GaussianPolicy", obs: torch.Tensor, act: torch.Tensor, adv: torch.Tensor, epochs: int,
                         lr: float, minibatch: int, generator: torch.Generator) -> torch.Tensor:
    """The PROPS paper's sampling error (``compute_se`` of PPOROS/ppo_props_continuous.py) on rows
    ``obs [R, ·]``, ``act [R, |A|]`` (unclipped samples) with their GAE advantages ``adv [R]``:

    - π_MLE starts as a copy of θ's actor. The weights of its first two layers are frozen (their
      biases, the output layer and the log-std still train, as the official ``params[0]`` and
      ``params[2]``). It is fitted by maximum likelihood: ``epochs`` passes of shuffled minibatches,
      Adam at ``lr``, gradient norm clipped at 1, with log σ clamped to [−3, 1].
    - The result is mean(|Â| · (log π_MLE(a|s) − log π_θ(a|s))), where Â is the advantage
      normalized over the rows; both log-probs use log σ clamped to [−3, 1].

    θ is not changed; the shuffles draw from ``generator`` only."""
    mle = copy.deepcopy(actor)
    weights = [m.weight for m in mle.mean.net if isinstance(m, nn.Linear)]
    for w in weights[:2]:
        w.requires_grad_(False)
    params = [p for p in mle.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)

    def logp(policy, o, a):
        mean = policy.mean(o)
        std = policy.log_std.clamp(-3.0, 1.0).exp().expand_as(mean)
        return torch.distributions.Normal(mean, std, validate_args=False).log_prob(a).sum(-1)

    n = obs.shape[0]
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator, device=generator.device).to(obs.device)
            for start in range(0, n, minibatch):
                idx = perm[start:start + minibatch]
                loss = -logp(mle, obs[idx], act[idx]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
    with torch.no_grad():
        a = ((adv - adv.mean()) / (adv.std() + 1e-8)).abs()
        return (a * (logp(mle, obs, act) - logp(actor, obs, act))).mean()


def sampling_error(act: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """offrl's sampling-error estimate (not the paper's estimator): with z = (a − μ_θ(s)) / σ_θ, fit
    N(m, s²) per action dim by maximum likelihood (empirical mean and population std of z) and return
    Σ_dims KL(N(m, s²) ‖ N(0, 1)); this is KL(π_D ‖ π_θ) for the MLE π_D in the family
    N(μ_θ(s) + σ_θ m, (σ_θ s)²) (KL is invariant to the shared per-dim affine map). 0 when the data
    looks exactly like π_θ's samples; about act_dim / N for N true on-policy samples."""
    z = ((act - mu) / std).reshape(-1, act.shape[-1]).to(torch.float64)
    m, s = z.mean(0), z.std(0, correction=0).clamp(min=1e-8)
    return gaussian_kl(m, s, torch.zeros_like(m), torch.ones_like(s)).sum().float()


# ------------------------------------------------------------------------------------ rollouts
class NormalizedRolloutSink(RolloutSink):
    """The rollout sink of a PPO agent. It first updates the agent's normalizers with the step
    (:meth:`PPO.observe`). Then it stores what CleanRL stores: the normalized observation the policy
    saw, the unclipped Gaussian sample and the normalized reward. Both come from ``rollout_action``'s
    extras ``policy_obs`` and ``sample``. Values of truncated episodes' final observations are
    computed as in :class:`RolloutSink` (raw observation in, normalized with the updated statistics)."""

    def __init__(self, storage, agent: "PPO"):
        super().__init__(storage, agent.state_value)
        self.agent = agent

    def __call__(self, tr: Transition) -> None:
        rew = self.agent.observe(tr)
        super().__call__(dataclasses.replace(tr, obs=tr.extras["policy_obs"], act=tr.extras["sample"], rew=rew))


# ------------------------------------------------------------------------------------ agent
class PPO(Agent):
    """PPO agent.

    * ``rollout_action(raw obs)`` gives the clipped actions plus the extras ``logp``, ``value``,
      ``policy_obs`` and ``sample``, and merges not-yet-seen observations into the statistics.
    * ``rollout_sink(storage)`` gives :class:`NormalizedRolloutSink`.
    * ``learn(storage, last_value)`` runs the epochs; ``state_value(raw obs)`` gives V.
    * ``act(obs)`` gives the mean clipped to ±1; ``explore(obs)`` gives a clipped sample.

    Both ``act`` and ``explore`` use frozen statistics."""

    algo = "ppo"
    Config = Config
    policy_modules = ("actor", "obs_norm")

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        cfg.resolve(None)  # fill-unset: a no-op for a config that came through training
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        hidden = tuple(cfg.hidden)
        self.critic = orthogonal_init_(MLP(obs_dim, 1, hidden, activation="tanh"), math.sqrt(2.0), last_gain=1.0)
        self.actor = GaussianPolicy(obs_dim, act_dim, hidden, bool(cfg.mean_tanh))
        self.obs_norm = ObsNormalizer(obs_dim, cfg.clip_obs)
        self.reward_norm = RewardNormalizer(cfg.num_envs, cfg.gamma, cfg.clip_reward)
        # copies whose current observation is not in the statistics yet (first and reset observations)
        self.register_buffer("obs_pending", torch.ones(cfg.num_envs, dtype=torch.bool))
        self._maybe_pending = True  # host-side hint: False only when the last step ended no episode
        self.to(self.device)
        self.optimizers = {"ppo": self.adam(self.parameters(), cfg.lr, eps=cfg.adam_eps)}
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        self.se_generator = torch.Generator(device=self.device)  # the paper's sampling error only: training never reads it
        self.se_generator.manual_seed(cfg.seed + 4_000_000)
        self.learns = 0  # rollouts learned from (the lr schedule's iteration - 1)
        self.num_iterations = max(cfg.total_steps // cfg.rollout_size, 1)

    def begin_phase(self, kind: str, steps: int) -> None:
        super().begin_phase(kind, steps)
        self.num_iterations = max(steps // self.cfg.rollout_size, 1)

    # ------------------------------------------------------------------ acting
    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(obs) if self.cfg.normalize_obs else obs.to(torch.float32)

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.actor.mean(obs).clamp(-1.0, 1.0)
        return self.actor.dist(obs).sample().clamp(-1.0, 1.0)

    def _raw(self, obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def rollout_action(self, obs):
        """For the collector: ``(clip(a, ±1) as numpy, {"logp", "value", "policy_obs", "sample"})``, a ~ π(·|norm(obs))."""
        x = self._raw(obs)
        if x.dim() != 2 or x.shape[0] != self.obs_pending.shape[0]:
            raise OffrlError(f"rollout_action takes a batch of {self.obs_pending.shape[0]} observations "
                             f"(--num-envs), got shape {tuple(x.shape)}")
        if self.cfg.normalize_obs and self._maybe_pending:  # the wrapper adds each observation before normalizing it
            self.obs_norm.update(x, self.obs_pending)  # (an empty selection changes nothing)
        self.obs_pending.zero_()
        self._maybe_pending = False
        nx = self.normalize_obs(x)
        sample, logp = self.behaviour_policy().sample(nx)
        extras = {"logp": logp, "value": self.critic(nx).squeeze(-1), "policy_obs": nx, "sample": sample}
        return sample.clamp(-1.0, 1.0).cpu().numpy(), extras

    def behaviour_policy(self) -> nn.Module:
        """The policy rollouts sample from: the actor (PROPS samples from its own behaviour policy)."""
        return self.actor

    @torch.no_grad()
    def observe(self, tr: Transition) -> torch.Tensor:
        """Update the normalizers with one vector step, as the wrappers would; returns the rewards to store.

        Observation statistics take every observation the env returned: ``next_obs`` here (the
        true final one where an episode ended). The reset observations that follow an ended
        episode join at the next ``rollout_action``.
        """
        if self.cfg.normalize_obs:
            self.obs_norm.update(self._raw(tr.next_obs))
        self.obs_pending.copy_(torch.as_tensor(tr.done, device=self.device))
        self._maybe_pending = bool(tr.done.any())  # numpy: no device sync
        rew = self._raw(tr.rew)
        if self.cfg.normalize_reward:
            rew = self.reward_norm(rew, torch.as_tensor(tr.term, device=self.device))
        return rew.to(torch.float32)

    def rollout_sink(self, storage) -> NormalizedRolloutSink:
        return NormalizedRolloutSink(storage, self)

    @torch.no_grad()
    def state_value(self, obs) -> np.ndarray:
        """V(s) for raw observations (normalized with the current, frozen statistics)."""
        return self.critic(self.normalize_obs(self._raw(obs))).squeeze(-1).float().cpu().numpy()

    # ------------------------------------------------------------------ learning
    def learn(self, storage, last_value) -> dict[str, torch.Tensor]:
        """Learn from one full rollout: GAE, then ``update_epochs`` × ``num_minibatches`` clipped-PPO steps."""
        cfg = self.cfg
        opt = self.optimizers["ppo"]
        frac = 1.0 - self.learns / self.num_iterations if cfg.anneal_lr else 1.0
        lr = frac * cfg.lr
        for group in opt.param_groups:
            group["lr"] = lr
        self.learns += 1
        storage.compute_returns(last_value, cfg.gamma, cfg.gae_lambda, cfg.bootstrap_truncation)
        with torch.no_grad():  # how on-policy the rollout looks to θ before the update (PROPS's diagnostic)
            dist = self.actor.dist(storage.obs.flatten(0, 1))
            serr = sampling_error(storage.act.flatten(0, 1), dist.mean, dist.stddev)
        extra = {}
        if cfg.se_freq and self.learns % cfg.se_freq == 0:  # the paper's estimator, before the update
            rows = storage.obs.shape[0] * storage.obs.shape[1]
            extra["sampling_error_paper"] = paper_sampling_error(
                self.actor, storage.obs.flatten(0, 1), storage.act.flatten(0, 1), storage.adv.flatten(), cfg.se_epochs,
                cfg.se_lr, max(512 * rows // int(cfg.num_steps), 1), self.se_generator)
        target_kl = cfg.target_kl or None
        clipfrac, evaluated, last = None, 0, None
        stop = False
        for _ in range(cfg.update_epochs):
            for mb in storage.minibatches(cfg.num_minibatches, self.generator):
                dist = self.actor.dist(mb.obs)
                new_logp = dist.log_prob(mb.act).sum(-1)
                entropy = dist.entropy().sum(-1).mean()
                new_value = self.critic(mb.obs).squeeze(-1)
                m = ppo_losses(new_logp, mb.logp, mb.adv, new_value, mb.value, mb.ret, cfg.clip_coef, cfg.clip_vloss,
                               cfg.norm_adv)
                last = {**m, "entropy": entropy.detach()}
                clipfrac = m["clipfrac"] if clipfrac is None else clipfrac + m["clipfrac"]
                evaluated += 1
                # The KL early stop is a host decision (it changes the control flow), so it reads one scalar
                # back per minibatch; only when --target-kl is set (off in the cleanrl preset).
                if target_kl is not None and cfg.kl_stop == "minibatch" and m["approx_kl"].item() > target_kl:
                    stop = True  # PROPS: checked before the step, the rest of this rollout's update is skipped
                    break
                loss = m["policy_loss"] - cfg.ent_coef * entropy + cfg.vf_coef * m["value_loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.parameters(), cfg.max_grad_norm)
                opt.step()
            if stop or (target_kl is not None and cfg.kl_stop == "epoch" and last["approx_kl"].item() > target_kl):
                break
        return {
            "learning_rate": torch.tensor(lr, device=self.device),
            "value_loss": last["value_loss"].detach(),
            "policy_loss": last["policy_loss"].detach(),
            "entropy": last["entropy"],
            "old_approx_kl": last["old_approx_kl"],
            "approx_kl": last["approx_kl"],
            "clipfrac": clipfrac / evaluated,
            "explained_variance": explained_variance(storage.value.flatten(), storage.ret.flatten()),
            "sampling_error": serr,
            **extra,
        }

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict:
        return {**super().training_state(),
                "rollout_state": {"learns": self.learns, "minibatch_rng": self.generator.get_state(),
                                  "se_rng": self.se_generator.get_state()}}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._maybe_pending = True  # obs_pending comes from the state
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        saved = state.get("rollout_state")
        if saved is not None:
            self.learns = int(saved["learns"])
            self.generator.set_state(saved["minibatch_rng"].cpu())
            if "se_rng" in saved:  # older checkpoints: none
                self.se_generator.set_state(saved["se_rng"].cpu())


ALGORITHM = register(Algorithm("ppo", PPO, Config, kind="on-policy", benchmark=False,
                               doc="PPO (Schulman et al., 2017), as CleanRL"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/ppo.py [flags]`


if __name__ == "__main__":
    main()
