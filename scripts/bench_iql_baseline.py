"""Reference point for `offrl bench update --algo iql`: a straightforward eager IQL update.

Same math as offrl's IQL (official update order V → actor → Q → target, V_new for the advantage
and the Q target), written the plain way: two separate Q networks, three default Adam
optimizers, a LambdaLR cosine schedule and `.item()` on every metric every step. Prints one JSON
line with updates/s, measured like `offrl bench update` (synthetic D4RL-size batch, same warm-up).

    python scripts/bench_iql_baseline.py --steps 300 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn


def mlp(i, o, hidden=(256, 256)):
    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, act_dim))
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def dist(self, obs):
        mean = torch.tanh(self.net(obs))
        return torch.distributions.Normal(mean, self.log_std.clamp(-5, 2).exp())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--obs-dim", type=int, default=17)
    p.add_argument("--act-dim", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    o, ac, B, N = a.obs_dim, a.act_dim, a.batch_size, 100_000
    data = {
        "obs": torch.randn(N, o), "act": torch.rand(N, ac) * 2 - 1, "rew": torch.randn(N),
        "next_obs": torch.randn(N, o), "done": (torch.rand(N) < 0.01).float(),
    }
    q1, q2, v, actor = mlp(o + ac, 1), mlp(o + ac, 1), mlp(o, 1), Actor(o, ac)
    q1t, q2t = mlp(o + ac, 1), mlp(o + ac, 1)
    q1t.load_state_dict(q1.state_dict())
    q2t.load_state_dict(q2.state_dict())
    q_opt = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=3e-4)
    v_opt = torch.optim.Adam(v.parameters(), lr=3e-4)
    a_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    total = a.steps + a.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(a_opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    expectile, beta, gamma, tau = 0.7, 3.0, 0.99, 0.005

    def update():
        idx = torch.randint(0, N, (B,))
        obs, act, rew, nobs, done = (data[k][idx] for k in ("obs", "act", "rew", "next_obs", "done"))
        sa = torch.cat([obs, act], 1)
        with torch.no_grad():
            tq = torch.min(q1t(sa), q2t(sa)).squeeze(-1)
        vv = v(obs).squeeze(-1)
        u = tq - vv
        v_loss = (torch.abs(expectile - (u < 0).float()) * u ** 2).mean()
        v_opt.zero_grad()
        v_loss.backward()
        v_opt.step()
        with torch.no_grad():
            v_new = v(obs).squeeze(-1)
            next_v = v(nobs).squeeze(-1)
        w = torch.exp(beta * (tq - v_new)).clamp(max=100.0)
        a_loss = -(w * actor.dist(obs).log_prob(act).sum(-1)).mean()
        a_opt.zero_grad()
        a_loss.backward()
        a_opt.step()
        sched.step()
        y = rew + gamma * (1 - done) * next_v
        q_loss = ((q1(sa).squeeze(-1) - y) ** 2).mean() + ((q2(sa).squeeze(-1) - y) ** 2).mean()
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        with torch.no_grad():
            for net, tgt in ((q1, q1t), (q2, q2t)):
                for pp, tp in zip(net.parameters(), tgt.parameters()):
                    tp.data.mul_(1 - tau).add_(tau * pp.data)
        return {"v_loss": v_loss.item(), "a_loss": a_loss.item(), "q_loss": q_loss.item()}

    for _ in range(a.warmup):
        update()
    t = time.perf_counter()
    for _ in range(a.steps):
        update()
    dt = time.perf_counter() - t
    print(json.dumps({"algo": "iql-baseline", "device": "cpu", "threads": torch.get_num_threads(), "steps": a.steps,
                      "updates_per_s": round(a.steps / dt, 2), "ms_per_update": round(1000 * dt / a.steps, 4)}))


if __name__ == "__main__":
    main()
