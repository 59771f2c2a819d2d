"""PROPS: Proximal Robust On-Policy Sampling (Corrado & Hanna), on top of offrl's PPO.

PPO learns a target policy π_θ from a buffer of the last b rollouts of n steps; the data is sampled
by a separate behaviour policy π_φ (same architecture as the actor) that is trained, every m env
steps, to make the buffer look more on-policy for π_θ ("sampling error" reduction):

    φ ← θ, then minimize over the buffer (the oldest m steps excluded once it is full)
    ρ      = π_φ(a|s) / π_θ(a|s)
    L(φ)   = mean max(ρ, clip(ρ, 1 − ε_P, 1 + ε_P)) + λ · mean_{batch, dims} KL(N_φ(s) ‖ N_θ(s))
             (--ros: the first term becomes −mean log ρ; the KL term stays)
    early stop of the whole update when mean((ρ − 1) − log ρ) > δ_P, checked per minibatch before its step

Every n env steps θ gets one PPO update (algos/ppo.py, the PROPS repo's settings: ent 0.01,
target-KL 0.03 per minibatch before the step) over the whole buffer, oldest to newest: log-probs
and values are recomputed with the current θ (so the ratio's "old" policy is the current θ), GAE
with done = terminated | truncated. The buffer holds RAW observations and rewards; they are
normalized with the agent's current statistics before every update.

offrl's design: the on-policy phase's storage has m steps per env copy, so ``learn`` is called
every m env steps; each call runs the behaviour update, and every (n/m)-th call runs the PPO
update first. The sink also writes every raw step into the agent's ring buffer of b·n steps
(agent buffers: checkpointed with φ, its optimizer and the counters). Stale-θ quirk (on by
default, ``--stale-theta False`` turns it off): when both updates fall on the same call, the θ
log-probs, means and stds that the behaviour update uses are those computed before the PPO update,
while φ is copied from the updated θ. Evaluation uses θ's mean (``act``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from offrl.algos import ppo
from offrl.algos.ppo import PPO, GaussianPolicy, NormalizedRolloutSink, gaussian_kl, sampling_error  # noqa: F401 (re-exported)
from offrl.collector import Transition
from offrl.errors import check
from offrl.preprocess import fill_unset, preset_for
from offrl.registry import Algorithm, register
from offrl.rollout import RolloutStorage

# env token -> (n, m, lr PPO, lr PROPS, δ_P, λ, PROPS minibatches): the PPOROS result directories (MuJoCo v4)
PROPS_ENVS = {
    "swimmer": (2048, 1024, 1e-3, 1e-5, 0.03, 0.1, 16),
    "hopper": (2048, 256, 1e-3, 1e-3, 0.05, 0.3, 16),
    "halfcheetah": (1024, 512, 1e-4, 1e-3, 0.05, 0.3, 16),
    "walker2d": (2048, 256, 1e-3, 1e-3, 0.1, 0.3, 32),
    "ant": (1024, 256, 1e-4, 1e-3, 0.03, 0.3, 16),  # PROPS minibatches not in the table: the default 16
    "humanoid": (8192, 256, 1e-4, 1e-4, 0.1, 0.1, 32),
}
PROPS_DEFAULT = (2048, 1024, 1e-4, 1e-4, 0.05, 0.3, 16)  # the PROPS script's own defaults
_PRESET_FIELDS = ("num_steps", "props_steps", "lr", "props_lr", "props_target_kl", "props_lambda", "props_num_minibatches")


@dataclass
class Config(ppo.Config):
    """PROPS (Corrado & Hanna) on offrl's PPO. Fields left unset (None) take the per-env preset of the PROPS result directories (hopper, halfcheetah, walker2d, ant, humanoid, swimmer; other envs: the PROPS script's defaults)."""

    preset: Literal["props"] = "props"
    """props: PPO with ent_coef 0.01, target_kl 0.03 checked per minibatch, and per-env n, m, lr, props_lr, props_target_kl, props_lambda, props_num_minibatches."""
    buffer_rollouts: int = 2
    """b: the buffer holds the last b·num_steps steps per env copy."""
    props_steps: int | None = None
    """m: env steps per copy between behaviour updates (num_steps must be a multiple; preset: 1024 or per env)."""
    props_lr: float | None = None
    """Adam lr of the behaviour policy (not annealed; preset: 1e-4 or per env)."""
    props_clip: float = 0.3
    """ε_P: clip of the behaviour ratio."""
    props_target_kl: float | None = None
    """δ_P: stop the behaviour update when approx-KL(φ, θ) exceeds this, checked per minibatch before its step (preset: 0.05 or per env); 0 turns it off."""
    props_lambda: float | None = None
    """λ: weight of the KL(π_φ ‖ π_θ) regularizer (preset: 0.3 or per env)."""
    props_epochs: int = 16
    """Passes of each behaviour update."""
    props_num_minibatches: int | None = None
    """Behaviour minibatch size = (b·n − m)·num_envs // this (preset: 16 or per env)."""
    props_max_grad_norm: float = 0.5
    """Gradient-norm clip of the behaviour update."""
    ros: bool = False
    """ROS variant: the behaviour surrogate becomes −mean log ρ (the KL term is still added)."""
    behaviour_update: bool = True
    """False: no behaviour update, φ = θ always: on-policy sampling into the same b-rollout buffer (the paper's "PPO with a buffer" baseline: PROPS's settings, PROPS's data reuse, no sampling correction)."""
    stale_theta: bool = True
    """The PROPS repo's quirk: when both updates fall on the same step, the behaviour update compares φ with the θ statistics from before the PPO update (φ itself starts from the updated θ). False: recompute them after the PPO update."""

    def resolve(self, dataset=None) -> None:
        check(self.preset == "props", f"--preset must be props, got {self.preset!r}")
        values = dict(zip(_PRESET_FIELDS, preset_for(self.env, PROPS_ENVS, PROPS_DEFAULT)))
        fill_unset(self, ent_coef=0.01, target_kl=0.03, kl_stop="minibatch", mean_tanh=True, **values)
        fill_unset(self, se_freq=ppo.props_se_freq(self))

    @property
    def buffer_steps(self) -> int:
        """b·n: steps per env copy the ring buffer holds (the config must be resolved)."""
        return self.buffer_rollouts * int(self.num_steps)

    def validate(self) -> None:
        super().validate()
        for name in ("buffer_rollouts", "props_epochs", "props_max_grad_norm"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("props_steps", "props_lr", "props_num_minibatches"):
            value = getattr(self, name)
            check(value is None or value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        check(self.props_clip >= 0, f"--props-clip must be >= 0, got {self.props_clip}")
        check(self.props_lambda is None or self.props_lambda >= 0, f"--props-lambda must be >= 0, got {self.props_lambda}")
        check(self.props_target_kl is None or self.props_target_kl >= 0,
              f"--props-target-kl must be >= 0 (0: off), got {self.props_target_kl}")
        check(not self.bootstrap_truncation, "PROPS does not bootstrap truncations (done = terminated | truncated)")
        if self.num_steps is not None and self.props_steps is not None:
            check(self.num_steps % self.props_steps == 0,
                  f"--num-steps {self.num_steps} must be a multiple of --props-steps {self.props_steps}")
            check(self.buffer_steps > self.props_steps,
                  f"the buffer (b·n = {self.buffer_steps}) must be longer than --props-steps {self.props_steps}")
            if self.props_num_minibatches is not None:
                check(self.props_num_minibatches <= (self.buffer_steps - self.props_steps) * self.num_envs,
                      f"--props-num-minibatches {self.props_num_minibatches} exceeds (b·n − m)·num_envs")
            check(self.num_minibatches <= self.buffer_steps * self.num_envs,
                  f"--num-minibatches {self.num_minibatches} exceeds the buffer (b·n·num_envs)")


# ------------------------------------------------------------------------------------ losses
def props_loss(logp_phi: torch.Tensor, logp_theta: torch.Tensor, mu_phi: torch.Tensor, std_phi: torch.Tensor,
               mu_theta: torch.Tensor, std_theta: torch.Tensor, clip: float, lam: float,
               ros: bool = False) -> dict[str, torch.Tensor]:
    """The behaviour loss of one minibatch (θ inputs are constants) and its diagnostics:
    ``loss = surrogate + λ·kl``, surrogate = mean max(ρ, clip(ρ, 1 ± ε)) (ros: −mean log ρ),
    kl = mean over batch and dims of KL(N_φ ‖ N_θ), ``approx_kl`` = mean((ρ − 1) − log ρ)."""
    logratio = logp_phi - logp_theta
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip).float().mean()
    if ros:
        surrogate = -logratio.mean()
    else:
        surrogate = torch.max(ratio, ratio.clamp(1.0 - clip, 1.0 + clip)).mean()
    kl = gaussian_kl(mu_phi, std_phi, mu_theta, std_theta).mean()
    return {"loss": surrogate + lam * kl, "surrogate": surrogate, "kl": kl, "approx_kl": approx_kl, "clipfrac": clipfrac}


# ------------------------------------------------------------------------------------ storage
class BufferRollout(RolloutStorage):
    """The buffer as a rollout, oldest to newest, for the PPO update: minibatches of a fixed size
    (the PROPS repo: b·n·num_envs // num_minibatches, at most the data), whatever the fill."""

    minibatch_size: int = 1

    def minibatches(self, num_minibatches, generator=None):
        size = self.num_steps * self.num_envs
        return super().minibatches(max(1, size // min(self.minibatch_size, size)), generator)


class PROPSSink(NormalizedRolloutSink):
    """PPO's sink (normalizer updates, the phase's m-step storage) plus the raw row into the agent's ring buffer."""

    def __call__(self, tr: Transition) -> None:
        self.agent.store(tr)
        super().__call__(tr)


# ------------------------------------------------------------------------------------ agent
class PROPS(PPO):
    """PROPS agent: PPO's θ (``actor``, ``critic``) plus the behaviour policy ``behavior`` (φ).

    * ``rollout_action`` samples from φ; ``act`` / evaluation use θ's mean.
    * ``learn(storage, last_value)`` is called every m env steps: PPO update every n/m calls, then the behaviour update.
    * ``buffer_order()``: ring indices oldest → newest; ``behaviour_indices()``: those the behaviour update uses.
    """

    algo = "props"
    Config = Config
    rollout_field = "props_steps"  # the on-policy phase calls learn every m steps

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        self.behavior = GaussianPolicy(obs_dim, act_dim, tuple(cfg.hidden), bool(cfg.mean_tanh)).to(self.device)
        self.behavior.load_state_dict(self.actor.state_dict())
        self.optimizers["props"] = self.adam(self.behavior.parameters(), cfg.props_lr, eps=cfg.adam_eps)
        B, N = cfg.buffer_steps, cfg.num_envs
        f64 = dict(dtype=torch.float64, device=self.device)
        self.register_buffer("buf_obs", torch.zeros(B, N, obs_dim, **f64))
        self.register_buffer("buf_act", torch.zeros(B, N, act_dim, device=self.device))
        self.register_buffer("buf_rew", torch.zeros(B, N, **f64))
        self.register_buffer("buf_term", torch.zeros(B, N, dtype=torch.bool, device=self.device))
        self.register_buffer("buf_trunc", torch.zeros(B, N, dtype=torch.bool, device=self.device))
        self.buf_ptr = 0  # next row to write
        self.buf_size = 0  # rows filled (≤ b·n)
        self.calls = 0  # learn calls (behaviour updates)
        self.ppo_every = int(cfg.num_steps) // int(cfg.props_steps)

    def begin_phase(self, kind: str, steps: int) -> None:
        super().begin_phase(kind, steps)  # lr annealing over the PPO updates, steps // (n·num_envs)

    # ------------------------------------------------------------------ acting and storing
    def behaviour_policy(self) -> nn.Module:
        """Rollouts sample from φ (PPO's ``rollout_action`` asks for it; evaluation acts with θ)."""
        return self.behavior

    @torch.no_grad()
    def store(self, tr: Transition) -> None:
        """Write one raw vector step (raw obs and reward, unclipped sample, flags) at the ring's head."""
        i = self.buf_ptr
        self.buf_obs[i] = self._raw(tr.obs)
        self.buf_act[i] = tr.extras["sample"].to(self.device, torch.float32)
        self.buf_rew[i] = self._raw(tr.rew)
        self.buf_term[i] = torch.as_tensor(np.asarray(tr.term), device=self.device)
        self.buf_trunc[i] = torch.as_tensor(np.asarray(tr.trunc), device=self.device)
        self.buf_ptr = (i + 1) % self.cfg.buffer_steps
        self.buf_size = min(self.buf_size + 1, self.cfg.buffer_steps)

    def rollout_sink(self, storage) -> PROPSSink:
        return PROPSSink(storage, self)

    def buffer_order(self) -> torch.Tensor:
        """Ring rows oldest → newest."""
        B = self.cfg.buffer_steps
        if self.buf_size < B:
            return torch.arange(self.buf_size, device=self.device)
        return (torch.arange(B, device=self.device) + self.buf_ptr) % B

    def behaviour_indices(self) -> torch.Tensor:
        """Positions (in ``buffer_order``) the behaviour update uses: all, or all but the oldest m once full."""
        start = int(self.cfg.props_steps) if self.buf_size >= self.cfg.buffer_steps else 0
        return torch.arange(start, self.buf_size, device=self.device)

    @torch.no_grad()
    def _normalized_buffer(self):
        order = self.buffer_order()
        obs = self.normalize_obs(self.buf_obs[order].reshape(-1, self.obs_dim)).reshape(len(order), -1, self.obs_dim)
        rew = self.buf_rew[order]
        if self.cfg.normalize_reward:
            rew = (rew / torch.sqrt(self.reward_norm.rms.var + 1e-8)).clamp(-self.cfg.clip_reward, self.cfg.clip_reward)
        return obs, self.buf_act[order], rew.to(torch.float32), self.buf_term[order], self.buf_trunc[order]

    @torch.no_grad()
    def _theta_stats(self, obs: torch.Tensor, act: torch.Tensor):
        dist = self.actor.dist(obs)
        return dist.mean, dist.stddev, dist.log_prob(act).sum(-1)

    # ------------------------------------------------------------------ learning
    def learn(self, storage, last_value) -> dict[str, torch.Tensor]:
        """Every m env steps: (every n/m-th call) the PPO update of θ over the buffer, then the behaviour update of φ."""
        cfg = self.cfg
        self.calls += 1
        obs, act, rew, term, trunc = self._normalized_buffer()
        T, N = obs.shape[:2]
        mu, std, logp = self._theta_stats(obs, act)  # θ before any update of this call
        metrics = {"sampling_error": sampling_error(act, mu, std)}
        if self.calls % self.ppo_every == 0:
            rollout = BufferRollout(T, N, self.obs_dim, self.act_dim, self.device)
            rollout.minibatch_size = cfg.buffer_steps * N // cfg.num_minibatches
            rollout.obs.copy_(obs)
            rollout.act.copy_(act)
            rollout.logp.copy_(logp)
            with torch.no_grad():
                rollout.value.copy_(self.critic(obs).squeeze(-1))
            rollout.rew.copy_(rew)
            rollout.term.copy_(term)
            rollout.trunc.copy_(trunc)
            rollout.ptr = T
            metrics.update(super().learn(rollout, last_value))
            if not cfg.stale_theta:
                mu, std, logp = self._theta_stats(obs, act)
        if cfg.behaviour_update:
            metrics.update(self.behaviour_update(obs, act, mu, std, logp))
        else:  # on-policy sampling: φ is θ
            self.behavior.load_state_dict(self.actor.state_dict())
        return metrics

    def behaviour_update(self, obs, act, mu, std, logp) -> dict[str, torch.Tensor]:
        """φ ← θ, then ``props_epochs`` passes of fixed-size minibatches over ``behaviour_indices()``
        (arguments: the buffer, oldest → newest, normalized, and the θ statistics to compare with)."""
        cfg = self.cfg
        self.behavior.load_state_dict(self.actor.state_dict())
        keep = self.behaviour_indices()
        N = obs.shape[1]
        flat = [x[keep].reshape(len(keep) * N, *x.shape[2:]) for x in (obs, act, mu, std, logp)]
        size = flat[0].shape[0]
        mb_size = min((cfg.buffer_steps - cfg.props_steps) * N // cfg.props_num_minibatches, size)
        opt = self.optimizers["props"]
        target_kl = cfg.props_target_kl or None
        steps, last, stop = 0, None, False
        for _ in range(cfg.props_epochs):
            perm = torch.randperm(size, generator=self.generator, device=self.generator.device).to(self.device)
            for start in range(0, size, mb_size):
                b_obs, b_act, b_mu, b_std, b_logp = (x[perm[start:start + mb_size]] for x in flat)
                dist = self.behavior.dist(b_obs)
                m = props_loss(dist.log_prob(b_act).sum(-1), b_logp, dist.mean, dist.stddev, b_mu, b_std,
                               cfg.props_clip, cfg.props_lambda, cfg.ros)
                last = m
                # The KL stop decides the control flow on the host: one scalar read back per minibatch.
                if target_kl is not None and m["approx_kl"].item() > target_kl:
                    stop = True
                    break
                opt.zero_grad(set_to_none=True)
                m["loss"].backward()
                nn.utils.clip_grad_norm_(self.behavior.parameters(), cfg.props_max_grad_norm)
                opt.step()
                steps += 1
            if stop:
                break
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            kl_end = gaussian_kl(self.behavior.dist(flat[0]).mean, self.behavior.log_std.exp().expand_as(flat[2]),
                                 flat[2], flat[3]).sum(-1).mean()
        return {"props_loss": last["loss"].detach(), "props_surrogate": last["surrogate"].detach(),
                "props_kl_regularizer": last["kl"].detach(), "props_approx_kl": last["approx_kl"],
                "props_clipfrac": last["clipfrac"], "props_steps": torch.tensor(float(steps), device=self.device),
                "props_kl_behaviour_target": kl_end}

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict:
        return {**super().training_state(),
                "props_state": {"buf_ptr": self.buf_ptr, "buf_size": self.buf_size, "calls": self.calls}}

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        saved = state.get("props_state")
        if saved is not None:
            self.buf_ptr, self.buf_size, self.calls = int(saved["buf_ptr"]), int(saved["buf_size"]), int(saved["calls"])


ALGORITHM = register(Algorithm("props", PROPS, Config, kind="on-policy", benchmark=False,
                               doc="PROPS (Corrado & Hanna): PPO with a learned behaviour policy"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/props.py [flags]`


if __name__ == "__main__":
    main()
