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
    saved = torch.load(path, weights_only=True, map_location=None)  # a plain load: every tensor is a CPU tensor
    assert all(t.device.type == "cpu" for t in _tensors(saved))
    on_cpu = algo.agent.load(path, device="cpu")
    assert np.allclose(on_cpu.act(obs), actions, atol=1e-5)  # across devices: close, not bitwise
    again = algo.agent.load(path, device=DEVICE)
    assert np.array_equal(again.act(obs), actions)


def test_buffer_sampling_state_round_trip_on_the_device():
    a, b = _buffer(DEVICE, seed=0), _buffer(DEVICE, seed=5)
    a.sample(10)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample(64).obs, b.sample(64).obs)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_a_checkpoint_from_a_capturable_optimizer_trains_on_the_cpu(tmp_path):
    # saved on CUDA, Adam is capturable (offrl builds it so; torch.compile also flips it): off CUDA
    # a capturable Adam asserts at its first step unless the flag is reset at load
    from offrl.algos import iql

    dev = torch.device(DEVICE)
    cfg = iql.Config(batch_size=32, device=DEVICE, steps=20, **SMALL)
    cfg.resolve(None)
    agent = iql.IQL(cfg, OBS, ACT, device=dev)
    buf = _buffer(dev)
    agent.update(buf.sample(32))
    for opt in agent.optimizers.values():
        for group in opt.param_groups:
            group["capturable"] = True
    path = str(tmp_path / "agent.pt")
    agent.save(path)
    cpu = iql.IQL.load(path, device="cpu")
    assert all(not g["capturable"] for o in cpu.optimizers.values() for g in o.param_groups)
    cpu_buf = _buffer("cpu")
    assert all(torch.isfinite(v) for v in cpu.update(cpu_buf.sample(32)).values())


def test_rng_state_holds_only_the_training_devices_generator():
    from offrl.utils import rng_state, set_rng_state

    dev = torch.device(DEVICE)
    state = rng_state(dev)
    assert ("cuda" in state) == (dev.type == "cuda")
    assert "cuda" not in rng_state("cpu")  # a CPU run on a GPU host touches no CUDA generator
    if dev.type == "cuda":
        a = torch.rand(4, device=dev)
        set_rng_state(state, dev)
        assert torch.equal(torch.rand(4, device=dev), a)


def test_nearest_neighbour_search_is_exact_with_tf32_on():
    from offrl.knn import ExactNN

    dev = torch.device(DEVICE)
    g = torch.Generator().manual_seed(0)
    points = torch.cat([10.0 * torch.rand(20000, 23, generator=g), 6.0 + 1e-3 * torch.randn(5000, 23, generator=g)])
    queries = points[-256:] + 2e-4 * torch.randn(256, 23, generator=g)
    truth = torch.cdist(queries.double(), points.double()).argmin(1)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on a GPU
    try:
        got = ExactNN(points.to(dev), method="brute", chunk=8192).query(queries.to(dev))
    finally:
        torch.set_float32_matmul_precision(prev)
    assert torch.equal(got.cpu(), truth)


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="compares the CPU with a CUDA device")
@pytest.mark.parametrize("name", ["iql", "odice"])
def test_one_update_on_cpu_and_cuda_from_the_same_weights_and_batch(name):
    algo = registry.get(name)
    torch.manual_seed(0)
    cfg = algo.config(batch_size=32, device="cpu", steps=20, **SMALL, **EXTRA.get(name, {}))
    cfg.resolve(None)
    cpu = algo.agent(cfg, OBS, ACT, device=torch.device("cpu"))
    gpu = algo.agent(cfg, OBS, ACT, device=torch.device(DEVICE))
    gpu.load_state_dict(cpu.state_dict())
    batch = _buffer("cpu").sample(32)
    m_cpu = cpu.update(batch)
    m_gpu = gpu.update(batch.replace(**{k: batch[k].to(DEVICE) for k in batch.keys()}))
    for k, v in m_cpu.items():
        assert torch.allclose(v, m_gpu[k].cpu(), rtol=1e-4, atol=1e-5), k
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert torch.allclose(a.float(), b.float().cpu(), rtol=1e-4, atol=1e-5), k


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="compiles on the CUDA device (slow on the CPU)")
def test_a_compiled_step_then_a_cpu_load(tmp_path):
    from offrl.algos import iql

    cfg = iql.Config(batch_size=32, device=DEVICE, steps=20, compile=True, **SMALL)
    cfg.resolve(None)
    agent = iql.IQL(cfg, OBS, ACT, device=torch.device(DEVICE))
    buf = _buffer(DEVICE)
    update = agent.compiled_update()
    for _ in range(3):
        update(buf.sample(32))
    agent.save(str(tmp_path / "a.pt"))
    cpu = iql.IQL.load(str(tmp_path / "a.pt"), device="cpu")
    assert all(torch.isfinite(v) for v in cpu.update(_buffer("cpu").sample(32)).values())


@pytest.mark.parametrize("name", ["iql", "td3_bc"])
def test_stacked_seeds_on_the_device_match_single_agents(name):
    """Stacked seeds (offrl.stacked) on the device: three stacked updates of two seeds end within
    float rounding of the same updates of two single agents on the same batches (no target noise)."""
    from offrl.stacked import Stack
    from offrl.utils import set_seed

    algo = registry.get(name)
    dev = torch.device(DEVICE)
    cfg = algo.config(batch_size=32, device=DEVICE, **SMALL)
    if name == "td3_bc":
        cfg.policy_noise = 0.0
    cfg.steps = 20
    cfg.resolve(None)

    def build(seed):
        set_seed(seed)
        return algo.agent(cfg, OBS, ACT, device=dev)

    singles, for_stack = [build(s) for s in (0, 1)], [build(s) for s in (0, 1)]
    stack = Stack(build(0), for_stack)
    buf = _buffer(dev)
    for _ in range(3):
        idx = torch.randint(0, len(buf), (2, 32), device=dev)
        flat = buf.batch(idx.reshape(-1))
        stacked_batch = flat.replace(**{k: v.reshape(2, 32, *v.shape[1:]) for k, v in flat.__dict__.items()})
        metrics = stack.agent.update(stacked_batch)
        for s, agent in enumerate(singles):
            agent.update(buf.batch(idx[s]))
    assert all(v.device.type == dev.type and torch.isfinite(v).all() for v in metrics.values())
    for s, agent in enumerate(singles):
        stack.unstack_into(s, for_stack[s])
        for k, v in agent.state_dict().items():
            assert torch.allclose(v.float(), for_stack[s].state_dict()[k].float(), atol=1e-4), k


@pytest.mark.parametrize("name", ["iql", "td3_bc", "a2pr", "bc", "famo2o"])
def test_cuda_graph_steps_match_eager_steps(name):
    """--cuda-graph (offrl.graphs) on the device: after warm-up, capture and replays the weights and
    metrics match eager updates on the same batches, to float rounding (no target noise). Skipped off CUDA."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("CUDA graphs need OFFRL_TEST_DEVICE=cuda")
    from offrl.graphs import GraphedUpdate
    from offrl.utils import set_seed

    algo = registry.get(name)
    dev = torch.device(DEVICE)

    def build():
        extra = dict(base="iql") if name == "famo2o" else EXTRA.get(name, {})  # the IQL variant is graph-safe
        cfg = algo.config(batch_size=32, device=DEVICE, **SMALL, **extra)
        if name in ("td3_bc", "a2pr"):
            cfg.policy_noise = 0.0
        cfg.steps = 20
        cfg.resolve(None)
        set_seed(0)
        return algo.agent(cfg, OBS, ACT, device=dev)

    eager, graphed = build(), build()
    update = GraphedUpdate(graphed, warmup=3)
    buf = _buffer(dev)
    for step in range(10):
        idx = torch.randint(0, len(buf), (32,), device=dev)
        batch = buf.batch(idx)
        torch.manual_seed(100 + step)  # A2PR's VAE draws: the same numbers on both paths (graphs read the generator at replay)
        m_e = eager.update(batch)
        torch.manual_seed(100 + step)
        m_g = update(batch)
        for k in m_e:
            assert torch.allclose(m_e[k].float(), m_g[k].float(), rtol=1e-4, atol=1e-5), (step, k)
    for k, v in eager.state_dict().items():
        assert torch.allclose(v.float(), graphed.state_dict()[k].float(), rtol=1e-4, atol=1e-5), k


def test_unio4_ope_on_the_device_both_layouts_agree():
    """Uni-O4's OPE on the device: the default layout there (masked on CUDA, compacting on a CPU) and
    the other one give the same scores from the same generator state (no terminations: Hopper-like
    bounds are off), and the scores are finite."""
    from offrl.algos.unio4 import Config, UniO4

    cfg = Config(dataset="offrl/invertedpendulum/scripted-v0", num_members=3, bc_hidden=(16, 16), q_hidden=(16, 16),
                 v_hidden=(16, 16), model_members=3, model_elites=2, model_hidden=(16, 16), ope_states=8, ope_horizon=6,
                 device=DEVICE)
    torch.manual_seed(0)
    agent = UniO4(cfg, OBS, ACT, device=torch.device(DEVICE))
    agent.setup_data(_buffer(DEVICE, rows=64))
    state = agent.generator.get_state()
    default = agent.ope()
    agent.generator.set_state(state)
    other = agent.ope(masked=not DEVICE.startswith("cuda"))
    assert default.device.type == torch.device(DEVICE).type and torch.isfinite(default).all()
    assert torch.allclose(default, other, atol=1e-4)
