"""Device-dependent checks, on the device ``OFFRL_TEST_DEVICE`` names (default cpu):

    OFFRL_TEST_DEVICE=cuda python -m pytest tests/test_device.py

For every algorithm that trains on replay batches: updates on that device keep their data and
metrics there and stay finite; ``act`` takes numpy and gives numpy; a checkpoint saved there loads
on the CPU and on the device with the same actions. Also the buffer's sampling state round trip.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from offrl import registry
from offrl.buffer import ReplayBuffer

DEVICE = os.environ.get("OFFRL_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"OFFRL_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)

OBS, ACT = 5, 2
SMALL = dict(hidden=(32, 32))
EXTRA = {"a2pr": dict(actor_hidden=(32, 32), vae_hidden=(32, 32)), "odice": dict(policy_hidden=(32, 32))}


def _buffer(dev, rows=512, seed=0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(OBS, ACT, rows, dev, seed)
    buf.add(rng.standard_normal((rows, OBS)), rng.uniform(-1, 1, (rows, ACT)), rng.standard_normal(rows),
            rng.standard_normal((rows, OBS)), rng.uniform(size=rows) < 0.05)
    return buf


@pytest.mark.parametrize("name", [n for n, a in registry.algorithms().items() if a.benchmark and a.kind in ("offline", "online")])
def test_updates_act_and_checkpoints_on_the_device(name, tmp_path):
    algo = registry.get(name)
    dev = torch.device(DEVICE)
    torch.manual_seed(0)
    cfg = algo.config(batch_size=32, device=DEVICE, **SMALL, **EXTRA.get(name, {}))
    if hasattr(cfg, "steps"):
        cfg.steps = 20
    cfg.resolve(None)
    agent = algo.agent(cfg, OBS, ACT, obs_mean=np.arange(OBS, dtype=np.float32), obs_std=np.full(OBS, 2.0, np.float32),
                       device=dev)
    buf = _buffer(dev)
    agent.setup_data(buf)
    agent.train()
    for _ in range(6):
        metrics = agent.update(buf.sample(32))
    assert metrics and all(v.device.type == dev.type for v in metrics.values())
    assert all(torch.isfinite(v).all() for v in metrics.values())
    obs = np.random.default_rng(1).normal(size=(7, OBS)).astype(np.float32)
    actions = agent.act(obs)
    assert isinstance(actions, np.ndarray) and actions.shape == (7, ACT) and np.abs(actions).max() <= 1.0
    path = str(tmp_path / "agent.pt")
    agent.save(path)
    on_cpu = algo.agent.load(path, device="cpu")
    assert np.allclose(on_cpu.act(obs), actions, atol=1e-5)  # across devices: close, not bitwise
    again = algo.agent.load(path, device=DEVICE)
    assert np.array_equal(again.act(obs), actions)


def test_buffer_sampling_state_round_trip_on_the_device():
    a, b = _buffer(DEVICE, seed=0), _buffer(DEVICE, seed=5)
    a.sample(10)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample(64).obs, b.sample(64).obs)
