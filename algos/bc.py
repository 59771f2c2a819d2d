"""Any-percent behaviour cloning: BC and "x % BC" (after CORL's algorithms/offline/any_percent_bc.py).

A deterministic actor regresses the dataset's actions on (normalized) states:

    π(s) = tanh(MLP(s))                              (2×256 ReLU; max_action 1, offrl's unit box)
    L_π  = mean_{B, dims} (π(s) − a)²                (F.mse_loss)

``--frac f`` < 1 trains on the best trajectories only ("10 % BC" is ``--frac 0.1``). The data is cut
into trajectories at terminals, at the dataset's episode ends (timeouts) and every
``--max-episode-steps`` rows; each trajectory τ is ranked by its discounted return

    G(τ) = Σ_{t=0}^{|τ|−1} γ^t r_t                   (t counted from τ's first row, γ = --discount)

and the top max(1, int(f · n_trajectories)) trajectories (highest G first) are kept. The states are
normalized by the mean and std (+1e-3) of the kept rows, in training and evaluation alike.
Adam 3e-4, batch 256, 1M steps, evaluation every 5000 steps over 10 episodes (CORL's defaults).

Two additions for building weak base policies (ResFiT, docs/fetch.md); both are off by default,
and the defaults train exactly as above:

* ``--episodes N`` trains on the dataset's first N episodes only (a deliberately small demo set;
  applied before ``--frac``, and the statistics are those rows').
* ``--chunk K`` trains on action chunks, with ACT's chunked loss: the actor outputs K actions
  π(s_t) = (â_t, …, â_{t+K−1}) and regresses the dataset's next K actions of the same episode,

      L_π = Σ_{B, k, dims} m_{t,k} (â_{t+k} − a_{t+k})² / Σ m_{t,k},   m_{t,k} = 1[t + k ≤ episode end]

  (steps past the episode end are masked, ACT's ``is_pad``). Acting executes the first action of
  the chunk at every step (receding horizon, re-queried each step; ACT's temporal ensembling and
  open-loop execution of k actions are not implemented), so the chunk only changes the training loss
  and the policy file acts like any other policy with ``act_dim`` outputs. To find each batch row's next K actions, the buffer has an extra column
  ``row`` (the row's index) when K > 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from offrl.agent import Agent
from offrl.data.dataset import Dataset
from offrl.errors import check
from offrl.nets import DeterministicActor
from offrl.registry import Algorithm, register
from offrl.train import OfflineConfig, Prepared


@dataclass
class Config(OfflineConfig):
    """Behaviour cloning with an MSE loss; --frac < 1 keeps only the best trajectories (CORL's any-percent BC)."""

    frac: float = 1.0
    """Fraction of trajectories kept, best discounted return first, in (0, 1]: 1 = plain BC, 0.1 = 10 % BC."""
    discount: float = 0.99
    """Discount γ of the returns that rank trajectories for --frac (unused at --frac 1)."""
    max_episode_steps: int = 1000
    """For --frac: a trajectory is also cut after this many rows (besides terminals and episode ends)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the actor MLP."""
    normalize_states: bool = True
    """Normalize states by the mean and std + 1e-3 of the training (kept) rows (CORL: on)."""
    episodes: int = 0
    """Train on the dataset's first N episodes only (0: all), e.g. a small demo set for a weak base policy."""
    chunk: int = 1
    """Action chunk length K: predict the next K actions, execute the first at every step (ACT's chunked loss, not its temporal ensembling); 1 = plain BC."""

    def validate(self) -> None:
        super().validate()
        check(0.0 < self.frac <= 1.0, f"--frac must be in (0, 1], got {self.frac}")
        check(0.0 <= self.discount <= 1.0, f"--discount must be in [0, 1], got {self.discount}")
        check(self.max_episode_steps > 0, f"--max-episode-steps must be positive, got {self.max_episode_steps}")
        check(self.actor_lr > 0, f"--actor-lr must be positive, got {self.actor_lr}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"--hidden must be positive sizes, got {self.hidden}")
        check(self.episodes >= 0, f"--episodes must be >= 0 (0: all), got {self.episodes}")
        check(self.chunk >= 1, f"--chunk must be >= 1, got {self.chunk}")


# ----------------------------------------------------------------------------- trajectory filter
def trajectory_bounds(dataset: Dataset, max_episode_steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """First and last row (inclusive) of every trajectory, in dataset order.

    CORL walks the rows and closes a trajectory where ``terminals`` is set or its running length
    reaches ``max_episode_steps``. offrl's datasets also mark where an episode ends without
    termination (``timeouts``: time limits, dropped rows, the end of the data), so a trajectory is
    closed there as well and never spans two dataset episodes. Within an episode the cuts fall every
    ``max_episode_steps`` rows from its first row, as CORL's running count (it restarts at each cut).
    """
    check(max_episode_steps > 0, f"max_episode_steps must be positive, got {max_episode_steps}")
    ep_starts = dataset.episode_starts()
    ep_lens = dataset.episode_lengths()
    pieces = -(-ep_lens // max_episode_steps)  # ceil: trajectories per episode
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    starts = np.repeat(ep_starts, pieces) + max_episode_steps * (np.arange(pieces.sum()) - first_piece)
    ends = np.append(starts[1:], len(dataset)) - 1
    return starts, ends


def discounted_returns(rewards: np.ndarray, starts: np.ndarray, ends: np.ndarray, discount: float) -> np.ndarray:
    """Σ_t γ^t r_t of every trajectory [start, end], t = 0 at its first row (float64)."""
    lengths = ends - starts + 1
    t = np.arange(len(rewards)) - np.repeat(starts, lengths)  # trajectories tile the rows in order
    return np.add.reduceat(np.asarray(rewards, dtype=np.float64) * np.power(float(discount), t), starts)


def keep_best_trajectories(dataset: Dataset, frac: float, discount: float, max_episode_steps: int = 1000) -> np.ndarray:
    """Indices (ascending) of the rows of the top ``max(1, int(frac · n))`` of the n trajectories,
    ranked by discounted return, highest first (:func:`trajectory_bounds` for the cuts).

    Ties keep the earlier trajectory (a stable sort; CORL's ``np.argsort(...)[::-1]`` leaves their
    order unspecified). CORL returns the rows best trajectory first; here they stay in dataset order
    so that each kept trajectory is still contiguous and ordered. Uniform sampling does not see the
    difference.
    """
    check(0.0 < frac <= 1.0, f"frac must be in (0, 1], got {frac}")
    check(0.0 <= discount <= 1.0, f"discount must be in [0, 1], got {discount}")
    starts, ends = trajectory_bounds(dataset, max_episode_steps)
    returns = discounted_returns(dataset.rewards, starts, ends, discount)
    n_keep = max(1, int(frac * len(returns)))  # CORL's words exactly: int() truncates
    best = np.argsort(-returns, kind="stable")[:n_keep]
    keep = np.zeros(len(returns), dtype=bool)
    keep[best] = True
    return np.flatnonzero(np.repeat(keep, ends - starts + 1))


def prepare(cfg: Config, dataset: Dataset) -> Prepared:
    """The kept trajectories (for --frac < 1) and the state statistics of the rows trained on."""
    train_data = None
    if cfg.episodes:
        dataset = first_episodes(dataset, cfg.episodes)
        train_data = dataset
    if cfg.frac < 1.0:
        rows = keep_best_trajectories(dataset, cfg.frac, cfg.discount, cfg.max_episode_steps)
        # mark every kept trajectory's last row as an episode end (timeout unless terminal), so
        # the subset's episodes (config.json's dataset summary) are the kept trajectories
        _, ends = trajectory_bounds(dataset, cfg.max_episode_steps)
        is_end = np.zeros(len(dataset), dtype=bool)
        is_end[ends] = True
        sub = dataset.subset(rows)
        sub.timeouts = (is_end[rows] & (sub.terminals == 0)).astype(np.float32)
        sub.validate()
        train_data = sub
    # CORL filters (keep_best_trajectories) before compute_mean_std: the statistics are the kept
    # rows', not the whole dataset's. Evaluation normalizes with the same mean and std (Agent.act).
    rows_used = dataset if train_data is None else train_data
    mean, std = rows_used.state_stats() if cfg.normalize_states else (None, None)
    if cfg.chunk > 1:  # an extra buffer column holds each row's index, so the next K actions can be gathered
        check(len(rows_used) < 2**24, f"--chunk: {len(rows_used)} rows is too many to index exactly in float32")
        return Prepared(dataset=train_data, obs_mean=mean, obs_std=std,
                        extras={"row": np.arange(len(rows_used), dtype=np.float32)})
    return Prepared(dataset=train_data, obs_mean=mean, obs_std=std)


def first_episodes(dataset: Dataset, n: int) -> Dataset:
    """The dataset's first ``n`` episodes (all of it when it has no more)."""
    ends = dataset.episode_ends()
    if n >= len(ends):
        return dataset
    return dataset.subset(np.arange(ends[n - 1] + 1))


def chunk_targets(actions: torch.Tensor, episode_end: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, k·A]`` targets and mask for action chunks: row t holds a_t, …, a_{t+k−1}, each step
    past the last row of t's episode (``episode_end[t]``) repeated from that row and masked out."""
    n = actions.shape[0]
    idx = torch.arange(n, device=actions.device).unsqueeze(1) + torch.arange(k, device=actions.device)
    valid = idx <= episode_end.unsqueeze(1)
    idx = torch.minimum(idx, episode_end.unsqueeze(1))
    targets = actions[idx].reshape(n, -1)
    mask = valid.unsqueeze(-1).expand(n, k, actions.shape[1]).reshape(n, -1).to(actions.dtype)
    return targets, mask


def buffer_episode_ends(obs: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """For every row of time-ordered data, the last row of its episode: an episode ends at a
    termination, where the next row does not continue it (``next_obs[t] != obs[t+1]``) and at the end."""
    n = obs.shape[0]
    last = done > 0
    if n > 1:
        last[:-1] |= (next_obs[:-1] != obs[1:]).any(dim=1)
    last[-1] = True
    end_rows = torch.nonzero(last).squeeze(1)
    return end_rows[torch.searchsorted(end_rows, torch.arange(n, device=obs.device))]


# ----------------------------------------------------------------------------- agent
class BC(Agent):
    """Behaviour-cloning agent: ``update(batch) -> metrics``, ``act(obs)``, ``save``/``load``."""

    algo = "bc"
    Config = Config
    policy_modules = ("actor",)
    graph_safe = True  # --cuda-graph

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, device="cpu"):
        super().__init__(cfg, obs_dim, act_dim, obs_mean, obs_std, device)
        self.chunk = int(getattr(cfg, "chunk", 1))
        self.actor = DeterministicActor(obs_dim, act_dim * self.chunk, tuple(cfg.hidden))
        self.to(self.device)
        self.optimizers = {"actor": self.adam(self.actor.parameters(), cfg.actor_lr)}  # fused on CPU/CUDA
        self._chunk_act: torch.Tensor | None = None  # [N, K·A] chunk targets of the buffer rows (--chunk > 1)
        self._chunk_mask: torch.Tensor | None = None

    def policy(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if self.chunk > 1:
            return self.actor(obs)[:, : self.act_dim]  # execute the chunk's first action
        return self.actor(obs)

    def policy_chunk(self, obs: torch.Tensor) -> torch.Tensor:
        """The predicted chunk ``[B, K, act_dim]`` for normalized observations."""
        return self.actor(obs).reshape(obs.shape[0], self.chunk, self.act_dim)

    def setup_data(self, buffer) -> None:
        """--chunk > 1: the next K actions of every buffer row (rows in dataset order)."""
        if self.chunk == 1:
            return
        n = len(buffer)
        obs, nxt = buffer.column("obs")[:n], buffer.column("next_obs")[:n]
        ends = buffer_episode_ends(obs, nxt, buffer.column("done")[:n])
        self._chunk_act, self._chunk_mask = chunk_targets(buffer.column("act")[:n], ends, self.chunk)

    def update(self, batch) -> dict[str, torch.Tensor]:
        if self.chunk > 1:
            return self._chunk_update(batch)
        actor_loss = F.mse_loss(self.actor(batch.obs), batch.act)
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        opt.step()
        return {"actor_loss": actor_loss.detach()}

    def _chunk_update(self, batch) -> dict[str, torch.Tensor]:
        rows = batch.row.long()  # the row index column (prepare), so the next K actions can be gathered
        target, mask = self._chunk_act[rows], self._chunk_mask[rows]
        actor_loss = ((self.actor(batch.obs) - target).square() * mask).sum() / mask.sum()
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        opt.step()
        return {"actor_loss": actor_loss.detach()}


ALGORITHM = register(Algorithm("bc", BC, Config, prepare=prepare, kind="offline", doc="BC and any-percent BC (CORL)"))
train, main = ALGORITHM.train, ALGORITHM.main  # train(cfg) -> summary; `python algos/bc.py [flags]`


if __name__ == "__main__":
    main()
