"""The TD3 machinery the TD3+BC family shares (TD3+BC, PRDC, A2PR): twin critics with target
policy smoothing, a delayed deterministic actor whose Q term is weighted by λ = α / mean|Q₁|,
Polyak targets updated on actor steps, dataset state normalization and reward scale/shift.

An algorithm file subclasses :class:`TD3Agent` and implements only its actor loss
(:meth:`TD3Agent.actor_loss`) — and, if it has them, extra networks and steps (:meth:`TD3Agent.extra_update`).

    a'  = clip(π̄(s') + clip(N(0, σ²), −c, c), −1, 1)              (target policy smoothing)
    y   = r + γ (1 − d) min(Q̄₁, Q̄₂)(s', a')
    L_Q = MSE(Q₁, y) + MSE(Q₂, y)                                  (every step)
    λ   = α / mean_B |Q₁(s, π(s))|  (detached)                     (every ``policy_freq`` steps:)
    L_π = −λ · mean Q₁(s, π(s)) + (the algorithm's constraint)
    θ̄  ← τ θ + (1 − τ) θ̄  for the actor and both critics           (after each actor step)

The step counter is a python int (no host sync); the critic and actor steps are separate
methods so ``--compile`` captures each without branching on the counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from offrl.agent import Agent
from offrl.errors import check
from offrl.nets import DeterministicActor, EnsembleCritic, soft_update_
from offrl.preprocess import fill_unset, preset_for, reward_transform
from offrl.train import OfflineConfig, Prepared


@dataclass
class TD3Config(OfflineConfig):
    """Fields of every TD3-based offline algorithm (TD3+BC's defaults).

    A method with per-dataset presets names the fields (``preset_fields``, left None by default)
    and the table (``presets``: env/domain token → values, ``default_preset``); :meth:`resolve`
    fills what the command line left unset."""

    preset_fields: ClassVar[tuple[str, ...]] = ()
    presets: ClassVar[dict[str, tuple]] = {}
    default_preset: ClassVar[tuple] = ()

    @classmethod
    def preset_for(cls, dataset_id: str) -> tuple:
        """The preset values for ``dataset_id`` (in ``preset_fields`` order)."""
        return preset_for(dataset_id, cls.presets, cls.default_preset)

    def resolve(self, dataset) -> None:
        fill_unset(self, **dict(zip(self.preset_fields, self.preset_for(self.dataset))))

    alpha: float | None = 2.5
    """α of the Q weight λ = α / mean|Q₁(s, π(s))|."""
    discount: float = 0.99
    """Discount γ."""
    tau: float = 0.005
    """Polyak rate of the target actor and critics."""
    actor_lr: float = 3e-4
    """Actor learning rate."""
    critic_lr: float = 3e-4
    """Critic learning rate."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise."""
    policy_freq: int = 2
    """Actor and target update every this many critic updates."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the actor and critics."""
    normalize_states: bool = True
    """Normalize states by the dataset mean and std (+1e-3), at training and evaluation."""
    reward_scale: float | None = 1.0
    """Rewards are used as reward_scale · r + reward_shift."""
    reward_shift: float | None = 0.0
    """Rewards are used as reward_scale · r + reward_shift."""

    def validate(self) -> None:
        super().validate()
        if self.alpha is not None:
            check(self.alpha >= 0, f"--alpha must be >= 0, got {self.alpha}")
        if self.discount is not None:
            check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(0.0 < self.tau <= 1.0, f"--tau must be in (0, 1], got {self.tau}")
        check(self.policy_noise >= 0 and self.noise_clip >= 0, "--policy-noise and --noise-clip must be >= 0")
        check(self.policy_freq >= 1, f"--policy-freq must be >= 1, got {self.policy_freq}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"--hidden must be positive sizes, got {self.hidden}")


def td3_prepare(cfg: TD3Config, dataset) -> Prepared:
    """Rewards as scale·r + shift; states normalized by the dataset's mean and std + 1e-3."""
    mean, std = dataset.state_stats() if cfg.normalize_states else (None, None)
    return Prepared(reward_fn=reward_transform("affine", scale=cfg.reward_scale, shift=cfg.reward_shift),
                    obs_mean=mean, obs_std=std)


def q_weight(alpha: float, q: torch.Tensor) -> torch.Tensor:
    """λ = α / mean|Q| with the mean over the batch detached (TD3+BC's normalization of the Q
    term; per seed, ``[S, 1]``, for stacked seeds ``q [S, B]``)."""
    if q.dim() == 1:
        return alpha / q.abs().mean().detach()
    return alpha / q.abs().mean(-1, keepdim=True).detach()


class TD3Agent(Agent):
    """TD3 core: subclasses implement :meth:`actor_loss` (and may add networks and steps)."""

    policy_modules = ("actor",)
    graph_safe = True  # --cuda-graph: two graphs, the schedule in python (graph_parts, graph_step)

    def __init__(self, cfg: TD3Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu",
                 actor_hidden=None, critic_hidden=None):
        # the reward presets belong to the data preprocessing (td3_prepare), the rest to the agent
        unset = [f for f in cfg.preset_fields if getattr(cfg, f) is None and not f.startswith("reward_")]
        check(not unset, f"{self.algo} config is not resolved ({', '.join(unset)} unset): call cfg.resolve(dataset)")
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        actor_hidden = tuple(actor_hidden or cfg.hidden)
        critic_hidden = tuple(critic_hidden or cfg.hidden)
        self.actor = DeterministicActor(obs_dim, act_dim, actor_hidden)
        self.actor_target = DeterministicActor(obs_dim, act_dim, actor_hidden)
        self.critic = EnsembleCritic(obs_dim, act_dim, 2, critic_hidden)
        self.critic_target = EnsembleCritic(obs_dim, act_dim, 2, critic_hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_target.requires_grad_(False)
        self.critic_target.requires_grad_(False)
        self.iteration = 0  # critic updates so far (python int: no host sync)
        self._actor_metrics: dict[str, torch.Tensor] | None = None
        self._critic_update = self.critic_update
        self._extra_update = self.extra_update
        self._actor_step = self.actor_step
        self.to(self.device)
        self.optimizers = {"actor": self.adam(self.actor.parameters(), self.cfg.actor_lr),
                           "critic": self.adam(self.critic.parameters(), self.cfg.critic_lr)}
        # a subclass adds its own networks after this, then moves them and adds their optimizers

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor(obs)

    # ------------------------------------------------------------------ shared steps
    @torch.no_grad()
    def target_action(self, next_obs: torch.Tensor) -> torch.Tensor:
        """π̄(s') plus clipped Gaussian noise, clipped to the action box."""
        cfg = self.cfg
        a = self.actor_target(next_obs)
        noise = (torch.randn_like(a) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        return (a + noise).clamp(-1.0, 1.0)

    def critic_targets(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, a'): the TD3 target and the smoothed target action it used."""
        next_act = self.target_action(batch.next_obs)
        with torch.no_grad():
            next_q = self.critic_target(batch.next_obs, next_act).min(0).values
            y = batch.rew + self.cfg.discount * (1.0 - batch.done) * next_q
        return y, next_act

    def critic_update(self, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One TD3 critic update, L_Q = MSE(Q₁, y) + MSE(Q₂, y); returns (metrics, y, a')."""
        y, next_act = self.critic_targets(batch)
        q = self.critic(batch.obs, batch.act)
        loss = (q - y).square().mean(-1).sum(0)  # [E, (S,) B]: per seed for stacked seeds
        opt = self.optimizers["critic"]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        return {"critic_loss": loss.detach(), "q1_mean": self.seed_mean(q[0].detach()),
                "target_mean": self.seed_mean(y)}, y, next_act

    def critic_step(self, batch) -> dict[str, torch.Tensor]:
        return self.critic_update(batch)[0]

    def extra_update(self, batch, y: torch.Tensor, next_act: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """Steps between the critic and the actor update, every iteration (A2PR: V and the VAE).
        Returns (metrics, aux); ``aux`` is handed to :meth:`actor_loss`. None by default."""
        return {}, None

    def actor_loss(self, batch, aux=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        """The algorithm's actor loss and its metrics."""
        raise NotImplementedError

    def actor_step(self, batch, aux=None) -> dict[str, torch.Tensor]:
        """Actor update with :meth:`actor_loss`, then Polyak targets."""
        self.critic.requires_grad_(False)  # the actor loss needs dQ/da only
        try:
            loss, metrics = self.actor_loss(batch, aux)
        finally:
            self.critic.requires_grad_(True)
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # the sum over stacked seeds (a no-op for one)
        opt.step()
        self.update_targets()
        return {"actor_loss": loss.detach(), **metrics}

    def q_term(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(−λ·mean_B Q, λ) with λ = α / mean_B |Q| detached: the Q part of the actor loss, per seed
        (``[S]``) for stacked seeds."""
        lam = q_weight(self.cfg.alpha, q)
        if self.seeds:
            lam = lam.squeeze(-1)
            return -lam * q.mean(-1), lam
        return -lam * q.mean(), lam

    def batch_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of a ``[B, A]`` term over batch and dims (per seed, ``[S]``, for stacked seeds ``[S, B, A]``)."""
        return x.mean(dim=(-2, -1)) if self.seeds else x.mean()

    def update_targets(self) -> None:
        soft_update_(self.actor_target, self.actor, self.cfg.tau)
        soft_update_(self.critic_target, self.critic, self.cfg.tau)

    def update(self, batch) -> dict[str, torch.Tensor]:
        metrics, y, next_act = self._critic_update(batch)
        extra, aux = self._extra_update(batch, y, next_act)
        metrics.update(extra)
        self.iteration += 1
        if self.iteration % self.cfg.policy_freq == 0:
            # cloned: under CUDA graphs the step's outputs are overwritten by the next replay
            self._actor_metrics = {k: v.clone() for k, v in self._actor_step(batch, aux).items()}
        if self._actor_metrics is not None:
            # the latest actor metrics every step: over a log interval their mean is the actor steps' mean
            metrics.update(self._actor_metrics)
        return metrics

    def graph_parts(self, batch, outputs: dict) -> dict:
        """``--cuda-graph``: one graph for the critic and extra steps, one for the delayed actor step
        (which reads the first graph's ``aux``); :meth:`graph_step` keeps the schedule in python."""
        from offrl.graphs import outputs_of

        def critic():
            metrics, y, next_act = self.critic_update(batch)
            extra, aux = self.extra_update(batch, y, next_act)
            return {"metrics": {**metrics, **extra}, "aux": aux}

        return {"critic": critic, "actor": lambda: self.actor_step(batch, outputs_of(outputs["critic"])["aux"])}

    def graph_step(self, replays: dict, outputs: dict) -> dict[str, torch.Tensor]:
        from offrl.graphs import outputs_of

        replays["critic"]()
        metrics = dict(outputs_of(outputs["critic"])["metrics"])
        self.iteration += 1
        if self.iteration % self.cfg.policy_freq == 0:
            replays["actor"]()
            self._actor_metrics = {k: v.clone() for k, v in outputs_of(outputs["actor"]).items()}
        if self._actor_metrics is not None:
            metrics.update(self._actor_metrics)
        return metrics

    def compiled_update(self):
        """``--compile``: capture the critic, extra and actor steps separately (the schedule stays in python)."""
        self._critic_update = torch.compile(self.critic_update)
        self._extra_update = torch.compile(self.extra_update)
        self._actor_step = torch.compile(self.actor_step)
        return self.update

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict[str, Any]:
        last = {k: v.detach().clone() for k, v in (self._actor_metrics or {}).items()}
        return {**super().training_state(), "iteration": self.iteration, "actor_metrics": last}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self.iteration = int(state.get("iteration", 0))
        last = state.get("actor_metrics") or {}
        self._actor_metrics = {k: v.to(self.device) for k, v in last.items()} or None
