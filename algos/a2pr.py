"""A2PR: Adaptive Advantage-Guided Policy Regularization (Liu et al., ICML 2024).

TD3 whose actor is regularized toward an *advantage-chosen* action: either the VAE reconstruction
of the policy's own action or the dataset action, whichever has the higher advantage under a
learned V, and only where that action beats V. Official code: ltlhuuu/A2PR (followed where the
paper is silent). Per step, after the TD3 critic update (:mod:`offrl.td3`, y_T from the targets):

    V:    y_C = r + γ(1 − d) min(Q₁, Q₂)(s', a')            (current critics, the same smoothed a')
          L_V = mean (V(s) − min(y_T, y_C))²                 (plain MSE)
    VAE:  m   = 1[Q₁(s, a) > V⁻(s)]                          (V⁻: V(s) before this step's V update)
          L_VAE = mean_{B,dims}( w_vae · m · (â − a)² ) + ½ · mean KL(N(μ, σ²) ‖ N(0, I))
    actor (every 2 steps):
          λ   = α / mean |Q₁(s, π(s))|
          ã   = VAE(s, π(s))                                  (reparameterized; gradient flows to π)
          A_π = Q₁(s, ã) − V⁻(s),   A_D = Q₁(s, a) − V⁻(s)
          t   = ã if A_π ≥ A_D else a
          w   = mask · 1[Q₁(s, ã) ≥ V⁻(s) or Q₁(s, a) > V⁻(s)]       ∈ {0, mask}
          L_π = −λ · mean Q₁(s, π(s)) + mean_{B,dims}( w · (π(s) − t)² )

Networks (official): actor s → 256×3 → |A| (tanh), twin critics (s‖a) → 256×4 → 1, V s → 256×4
→ 1, VAE 750-750 encoder/decoder with latent 2|A| (BCQ style). Adam 3e-4 (actor, critics, V),
1e-3 (VAE, torch's default as in the official code). States normalized by dataset mean/std (+1e-3).
The VAE's parameter gradients from the actor loss are discarded in the official code (its
optimizer zeroes them next step); here the VAE is frozen during the actor loss — the same update.

Presets (official commands): halfcheetah α 40, w_vae 1, mask 1, γ 0.99; hopper α 2.5, w_vae 1,
mask 0.4, γ 0.995; walker2d α 2.5, w_vae 1.5, mask 1, γ 0.99; otherwise α 2.5, w_vae 1, mask 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offrl.errors import check
from offrl.nets import ConditionalVAE, ValueNet, gaussian_kl_elements
from offrl.registry import Algorithm, register
from offrl.td3 import TD3Agent, TD3Config, td3_prepare

@dataclass
class Config(TD3Config):
    """A2PR. Unset (None) α, w_vae, mask and γ take the dataset's preset (halfcheetah 40/1/1/0.99,
    hopper 2.5/1/0.4/0.995, walker2d 2.5/1.5/1/0.99, else 2.5/1/0.5/0.99)."""

    preset_fields = ("alpha", "vae_weight", "mask", "discount")
    presets = {  # official commands
        "halfcheetah": (40.0, 1.0, 1.0, 0.99),
        "hopper": (2.5, 1.0, 0.4, 0.995),
        "walker2d": (2.5, 1.5, 1.0, 0.99),
    }
    default_preset = (2.5, 1.0, 0.5, 0.99)

    alpha: float | None = None
    """α of the Q weight λ = α / mean|Q₁| (preset by env)."""
    vae_weight: float | None = None
    """w_vae: weight of the VAE's masked reconstruction loss (preset by env)."""
    mask: float | None = None
    """Constraint weight where either action beats V: mask·1[Q₁(s,ã) ≥ V or Q₁(s,a) > V] (preset by env)."""
    discount: float | None = None
    """Discount γ (preset: 0.995 hopper, else 0.99)."""
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Hidden sizes of the twin critics and V."""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden sizes of the actor."""
    vae_hidden: tuple[int, ...] = (750, 750)
    """Hidden sizes of the VAE's encoder and decoder."""
    value_lr: float = 3e-4
    """V learning rate."""
    vae_lr: float = 1e-3
    """VAE learning rate."""

    def validate(self) -> None:
        super().validate()
        for name in ("vae_weight", "mask"):
            v = getattr(self, name)
            if v is not None:
                check(v >= 0, f"--{name.replace('_', '-')} must be >= 0, got {v}")
        check(all(h > 0 for h in self.actor_hidden) and all(h > 0 for h in self.vae_hidden),
              "--actor-hidden and --vae-hidden must be positive sizes")


preset_for = Config.preset_for


class A2PR(TD3Agent):
    """A2PR agent: ``update(batch) -> metrics``, ``act(obs)``, ``save``/``load``."""

    algo = "a2pr"
    Config = Config
    stackable = True  # --seeds (offrl.stacked): reductions per seed; the VAE's noise is drawn per seed

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device, actor_hidden=cfg.actor_hidden,
                         critic_hidden=cfg.hidden)
        self.value = ValueNet(obs_dim, tuple(cfg.hidden))
        self.vae = ConditionalVAE(obs_dim, act_dim, 2 * act_dim, tuple(cfg.vae_hidden))
        self.to(self.device)
        self.optimizers.update(value=self.adam(self.value.parameters(), cfg.value_lr),
                               vae=self.adam(self.vae.parameters(), cfg.vae_lr))

    def extra_update(self, batch, y: torch.Tensor, next_act: torch.Tensor):
        """V towards min(y_T, y_C), then the advantage-masked VAE; aux = (V⁻(s), Q₁(s, a))."""
        cfg = self.cfg
        obs, act = batch.obs, batch.act
        with torch.no_grad():
            y_c = batch.rew + cfg.discount * (1.0 - batch.done) * self.critic(batch.next_obs, next_act).min(0).values
            v_target = torch.minimum(y, y_c)
        v = self.value(obs)
        value_loss = (v - v_target).square().mean(-1)
        self.optimizers["value"].zero_grad(set_to_none=True)
        value_loss.sum().backward()
        self.optimizers["value"].step()
        v_old = v.detach()

        with torch.no_grad():
            q_data = self.critic(obs, act)[0]
        keep = (q_data > v_old).float()
        recon, mean, std = self.vae(obs, act)
        recon_loss = self.batch_mean(cfg.vae_weight * keep.unsqueeze(-1) * (recon - act).square())
        kl = self.batch_mean(gaussian_kl_elements(mean, std))
        vae_loss = recon_loss + 0.5 * kl
        self.optimizers["vae"].zero_grad(set_to_none=True)
        vae_loss.sum().backward()
        self.optimizers["vae"].step()
        metrics = {"value_loss": value_loss.detach(), "v_mean": self.seed_mean(v_old), "vae_loss": vae_loss.detach(),
                   "vae_recon_loss": recon_loss.detach(), "vae_kl": kl.detach(), "vae_mask_mean": self.seed_mean(keep)}
        return metrics, (v_old, q_data)

    def actor_loss(self, batch, aux=None):
        check(aux is not None, "A2PR's actor loss needs V(s) and Q₁(s, a) from extra_update")
        cfg = self.cfg
        obs, act = batch.obs, batch.act
        v_old, q_data = aux
        pi = self.actor(obs)
        q = self.critic(obs, pi)[0]
        q_term, lam = self.q_term(q)  # −λ·mean Q, per seed for stacked seeds
        self.vae.requires_grad_(False)  # gradients reach π through the VAE; its own are not used
        try:
            recon_pi, _, _ = self.vae(obs, pi)
        finally:
            self.vae.requires_grad_(True)
        with torch.no_grad():
            q_recon = self.critic(obs, recon_pi)[0]
        use_recon = (q_recon - v_old) >= (q_data - v_old)
        target = torch.where(use_recon.unsqueeze(-1), recon_pi, act)
        weight = cfg.mask * torch.logical_or(q_recon >= v_old, q_data > v_old).float()  # official: bool + bool, an OR
        constraint = self.batch_mean(weight.unsqueeze(-1) * (pi - target).square())
        return q_term + constraint, {
            "constraint_loss": constraint.detach(), "lambda": lam, "q_pi": self.seed_mean(q.detach()),
            "recon_chosen": self.seed_mean(use_recon.float()), "weight_mean": self.seed_mean(weight),
        }


ALGORITHM = register(Algorithm("a2pr", A2PR, Config, prepare=td3_prepare, kind="offline", doc="A2PR (Liu et al., 2024)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/a2pr.py [flags]`


if __name__ == "__main__":
    main()
