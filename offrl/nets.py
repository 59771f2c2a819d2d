"""Network zoo shared by every algorithm file.

* :class:`MLP` — plain MLP with activation / LayerNorm / dropout options.
* :class:`EnsembleLinear`, :class:`EnsembleMLP` — E independent MLPs evaluated in one batched
  matmul (weights ``[E, in, out]``); :class:`EnsembleCritic` is the batched Q ensemble.
* :class:`ValueNet` — V(s).
* :class:`GaussianActor` — IQL's actor: tanh on the mean, state-independent log-std,
  unsquashed Gaussian.
* :class:`TanhGaussianActor` — SAC's actor: state-dependent log-std, tanh-squashed sample.
* :class:`DeterministicActor` — TD3's actor.
* :func:`orthogonal_init_`, :func:`lecun_init_`, :func:`variance_scaling_` — initialisers (the
  JAX defaults of the official codes).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),  # in place: no extra buffer; safe after linear/norm layers
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "silu": nn.SiLU,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}', expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def orthogonal_init_(module: nn.Module, gain: float = math.sqrt(2.0), last_gain: float | None = None) -> nn.Module:
    """Orthogonal weights (``gain``), zero biases for every (ensemble) linear layer; the last gets ``last_gain``."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]
    for i, layer in enumerate(layers):
        g = last_gain if (last_gain is not None and i == len(layers) - 1) else gain
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain=g)
            nn.init.zeros_(layer.bias)
        else:
            for e in range(layer.ensemble_size):
                # ensemble weight is [E, in, out]; orthogonalize the [out, in] view like nn.Linear
                nn.init.orthogonal_(layer.weight.data[e].T, gain=g)
            nn.init.zeros_(layer.bias)
    return module


_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (JAX's correction)


def variance_scaling_(layer: nn.Module, scale: float = 1.0, mode: str = "fan_in",
                      distribution: str = "truncated_normal") -> nn.Module:
    """Weights of one (ensemble) linear layer as ``jax.nn.initializers.variance_scaling(scale, mode,
    distribution)`` draws them, zero biases. Variance σ² = scale / n with n the layer's fan-in,
    fan-out or their mean (per member for an ensemble layer): ``truncated_normal`` draws
    N(0, (σ/0.8796)²) truncated at ±2 of its std, ``normal`` N(0, σ²), ``uniform`` U(±√(3σ²))."""
    if isinstance(layer, nn.Linear):
        fan_in, fan_out = layer.in_features, layer.out_features
    elif isinstance(layer, EnsembleLinear):
        fan_in, fan_out = layer.in_dim, layer.out_dim
    else:
        raise TypeError(f"variance_scaling_ takes nn.Linear or EnsembleLinear, got {type(layer).__name__}")
    fans = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    if mode not in fans:
        raise ValueError(f"unknown mode '{mode}', expected one of {sorted(fans)}")
    var = scale / fans[mode]
    with torch.no_grad():
        if distribution == "truncated_normal":
            std = math.sqrt(var) / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(layer.weight, 0.0, std, -2.0 * std, 2.0 * std)
        elif distribution == "normal":
            nn.init.normal_(layer.weight, 0.0, math.sqrt(var))
        elif distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            nn.init.uniform_(layer.weight, -limit, limit)
        else:
            raise ValueError(f"unknown distribution '{distribution}', expected truncated_normal, normal or uniform")
        nn.init.zeros_(layer.bias)
    return layer


def lecun_init_(module: nn.Module, last_scale: float | None = None) -> nn.Module:
    """flax ``nn.Dense``'s default initialisation for every (ensemble) linear layer of ``module``:
    LeCun-normal weights (``variance_scaling(1, fan_in, truncated_normal)``) and zero biases; with
    ``last_scale`` the last layer gets ``variance_scaling(last_scale, fan_in, uniform)`` instead
    (the output layers of JaxCQL's networks: 1e-2)."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]
    for i, layer in enumerate(layers):
        if last_scale is not None and i == len(layers) - 1:
            variance_scaling_(layer, last_scale, "fan_in", "uniform")
        else:
            variance_scaling_(layer, 1.0, "fan_in", "truncated_normal")
    return module


class MLP(nn.Module):
    """``in → hidden… → out`` with ``activation`` after each hidden layer.

    ``layer_norm`` adds LayerNorm after each hidden linear (before the activation), ``dropout``
    adds dropout after each hidden activation, ``output_activation`` optionally follows the last
    layer (``out_dim=None`` returns the last hidden features).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        output_activation: str | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        if output_activation is not None:
            layers.append(_activation(output_activation))
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied at once: ``x [E, B, in] → [E, B, out]``.

    Input of shape ``[B, in]`` is broadcast to every member. Initialised like ``nn.Linear``
    (uniform ±1/√in) member by member.
    """

    def __init__(self, in_dim: int, out_dim: int, ensemble_size: int):
        super().__init__()
        self.in_dim, self.out_dim, self.ensemble_size = in_dim, out_dim, ensemble_size
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            # [B, in] shared by all members: one matmul against [in, E*out]
            out = x @ self.weight.permute(1, 0, 2).reshape(self.in_dim, -1)
            return out.view(x.shape[0], self.ensemble_size, self.out_dim).transpose(0, 1) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, ensemble={self.ensemble_size}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine (weight, bias) per ensemble member."""

    def __init__(self, dim: int, ensemble_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, dim))
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps) * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """E independent MLPs in batched form: ``[B, in]`` or ``[E, B, in]`` → ``[E, B, out]``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        ensemble_size: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        layer_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(EnsembleLinear(d, h, ensemble_size))
            if layer_norm:
                layers.append(EnsembleLayerNorm(h, ensemble_size))
            layers.append(_activation(activation))
            d = h
        layers.append(EnsembleLinear(d, out_dim, ensemble_size))
        self.net = nn.Sequential(*layers)
        self.ensemble_size = ensemble_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EnsembleCritic(nn.Module):
    """Q ensemble ``Q_e(s, a)`` for e = 1..E as one batched module; returns ``[E, B]``."""

    def __init__(self, obs_dim: int, act_dim: int, ensemble_size: int = 2, hidden: Sequence[int] = (256, 256), **kw):
        super().__init__()
        self.net = EnsembleMLP(obs_dim + act_dim, 1, ensemble_size, hidden, **kw)
        self.ensemble_size = ensemble_size

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


class ValueNet(nn.Module):
    """V(s) → ``[B]``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), **kw):
        super().__init__()
        self.net = MLP(obs_dim, 1, hidden, **kw)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class GaussianActor(nn.Module):
    """IQL's policy: mean = tanh(MLP(s)), log-std a free vector clipped to [min, max]; no squashing.

    The hidden activation is applied on the last hidden layer too (as the official code does).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        tanh_mean: bool = True,
    ):
        super().__init__()
        self.trunk = MLP(obs_dim, None, hidden, dropout=dropout)
        self.mean = nn.Linear(self.trunk.out_dim, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_min, self.log_std_max, self.tanh_mean = log_std_min, log_std_max, tanh_mean

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mean, std)."""
        mean = self.mean(self.trunk(obs))
        if self.tanh_mean:
            mean = torch.tanh(mean)
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()
        return mean, std.expand_as(mean)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Diagonal-Gaussian log-density of ``act``, summed over action dims → ``[B]``."""
        mean, std = self(obs)
        return gaussian_log_prob(act, mean, std)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        mean, std = self(obs)
        return mean if deterministic else mean + std * torch.randn_like(mean)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of log N(x; mean, std²)."""
    z = (x - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class TanhGaussianActor(nn.Module):
    """SAC's policy: Gaussian with state-dependent log-std, sample squashed by tanh.

    ``sample`` returns the action and its log-probability with the tanh change of variables,
    computed stably as ``log(1 − tanh(u)²) = 2(log 2 − u − softplus(−2u))``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        **kw,
    ):
        super().__init__()
        self.trunk = MLP(obs_dim, None, hidden, **kw)
        self.head = nn.Linear(self.trunk.out_dim, 2 * act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: torch.Tensor, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized action and its log-probability, ``[B, A]`` and ``[B]``; with ``n``,
        ``n`` independent samples per observation from one forward pass, ``[B, n, A]`` and ``[B, n]``."""
        mean, log_std = self(obs)
        if n is not None:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
            eps = torch.randn((*mean.shape[:-2], n, mean.shape[-1]), dtype=mean.dtype, device=mean.device)
        else:
            eps = torch.randn_like(mean)
        std = log_std.exp()
        u = mean + std * eps
        logp = gaussian_log_prob(u, mean, std) - tanh_log_det(u)
        return torch.tanh(u), logp

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self(obs)[0])
        return self.sample(obs)[0]


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """Σ log(1 − tanh(u)²) over the last dim, numerically stable."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


class DeterministicActor(nn.Module):
    """TD3's policy: ``max_action · tanh(MLP(s))``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), max_action: float = 1.0, **kw):
        super().__init__()
        self.net = MLP(obs_dim, act_dim, hidden, **kw)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(obs))

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self(obs)


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target ← τ·source + (1−τ)·target`` with one fused foreach op."""
    tp = list(target.parameters())
    sp = list(source.parameters())
    torch._foreach_lerp_(tp, sp, tau)


class ConditionalVAE(nn.Module):
    """BCQ's conditional VAE of actions given states (Fujimoto et al., 2019).

    Encoder (s‖a) → hidden → (μ, log σ) with log σ clamped to [−4, 15]; decoder (s‖z) → hidden →
    ``max_action · tanh``. ``forward`` reconstructs ``a`` through a reparameterized sample
    z = μ + σ·ε; ``decode`` maps a given latent z to an action.
    """

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, hidden: Sequence[int] = (750, 750),
                 max_action: float = 1.0):
        super().__init__()
        self.encoder = MLP(obs_dim + act_dim, None, hidden)
        self.mean = nn.Linear(self.encoder.out_dim, latent_dim)
        self.log_std = nn.Linear(self.encoder.out_dim, latent_dim)
        self.decoder = MLP(obs_dim + latent_dim, act_dim, hidden)
        self.latent_dim, self.max_action = latent_dim, max_action

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, μ, σ)."""
        h = self.encoder(torch.cat([obs, act], -1))
        mean = self.mean(h)
        std = self.log_std(h).clamp(-4.0, 15.0).exp()
        z = mean + std * torch.randn_like(std)
        return self.decode(obs, z), mean, std

    def decode(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.decoder(torch.cat([obs, z], -1)))


def gaussian_kl_elements(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, σ²) ‖ N(0, 1)) = −½(1 + log σ² − μ² − σ²) (BCQ's form)."""
    return -0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square())


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """mean over elements of :func:`gaussian_kl_elements`."""
    return gaussian_kl_elements(mean, std).mean()
