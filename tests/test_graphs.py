"""Whole-update CUDA graphs (offrl.graphs): the replay schedule, checked on a CPU with a stand-in
recorder that calls the captured function again at each replay (the real capture runs in
tests/test_device.py on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offrl import registry
from offrl.buffer import ReplayBuffer
from offrl.errors import OffrlError
from offrl.graphs import GraphedUpdate, ReplayByCalling
from offrl.utils import set_seed

OBS, ACT = 5, 2


def _buffer(rows=256):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(OBS, ACT, rows, "cpu", 0)
    buf.add(rng.standard_normal((rows, OBS)), rng.uniform(-1, 1, (rows, ACT)), rng.standard_normal(rows),
            rng.standard_normal((rows, OBS)), rng.uniform(size=rows) < 0.05)
    return buf


def _agent(name):
    algo = registry.get(name)
    extra = {"a2pr": dict(actor_hidden=(16, 16), vae_hidden=(16, 16)), "famo2o": dict(base="iql")}.get(name, {})
    cfg = algo.config(batch_size=16, device="cpu", hidden=(16, 16), **extra)
    if name in ("td3_bc", "a2pr"):
        cfg.policy_noise = 0.0  # the same numbers through both paths (no noise drawn in a different order)
    cfg.steps = 50
    cfg.resolve(None)
    set_seed(0)
    return algo.agent(cfg, OBS, ACT, device="cpu")


@pytest.mark.parametrize("name", ["iql", "td3_bc", "a2pr", "bc", "famo2o"])
def test_graphed_steps_equal_eager_steps(name):
    """Warm-up steps eager, one capture, then replays on the static batch: the same weights and
    metrics as eager updates on the same batches (TD3: the actor graph every policy_freq steps)."""
    eager, graphed = _agent(name), _agent(name)
    recorder = ReplayByCalling()
    update = GraphedUpdate(graphed, warmup=2, recorder=recorder)
    buf = _buffer()
    for step in range(9):
        idx = torch.randint(0, len(buf), (16,), generator=torch.Generator().manual_seed(step))
        torch.manual_seed(100 + step)  # updates that draw noise draw the same
        m_e = eager.update(buf.batch(idx))
        torch.manual_seed(100 + step)
        m_g = update(buf.batch(idx))
        assert m_e.keys() == m_g.keys()
        for k in m_e:
            assert torch.equal(m_e[k], m_g[k]), (step, k)
    assert recorder.captured == (2 if name in ("td3_bc", "a2pr") else 1)  # captured once, after the warm-up
    for k, v in eager.state_dict().items():
        assert torch.equal(v, graphed.state_dict()[k]), k
    if name in ("td3_bc", "a2pr"):
        assert graphed.iteration == eager.iteration == 9


def test_graphs_are_refused_clearly():
    with pytest.raises(OffrlError, match="cannot be captured"):
        GraphedUpdate(_agent("cql"))
    with pytest.raises(OffrlError, match="needs a CUDA device"):
        GraphedUpdate(_agent("iql"))
    with pytest.raises(OffrlError, match="alternatives"):
        registry.get("iql").config(compile=True, cuda_graph=True).validate()


def test_a_new_phase_captures_again():
    """IQL's learning rate is a python-side choice of the phase (cosine offline, constant online):
    the graphs are captured again when the phase changes, so online replays use the online rate."""
    eager, graphed = _agent("iql"), _agent("iql")
    recorder = ReplayByCalling()
    update = GraphedUpdate(graphed, warmup=1, recorder=recorder)
    buf = _buffer()
    for step in range(6):
        if step == 3:
            eager.begin_phase("online", 10)
            graphed.begin_phase("online", 10)
        idx = torch.randint(0, len(buf), (16,), generator=torch.Generator().manual_seed(step))
        m_e, m_g = eager.update(buf.batch(idx)), update(buf.batch(idx))
        assert torch.equal(m_e["actor_lr"], m_g["actor_lr"]), step
    assert recorder.captured == 2 and m_g["actor_lr"].item() == pytest.approx(graphed.cfg.actor_lr)
