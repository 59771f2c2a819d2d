"""Policy export: TorchScript and ONNX files reproduce ``agent.act`` on raw observations (the
normalization inside) for batches of 1 and 7, load without offrl, carry their metadata; the CLI;
one-line errors (unknown format, missing onnx, a trace that fixed the batch size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from offrl.agent import Agent
from offrl.algos.iql import IQL
from offrl.algos.iql import Config as IQLConfig
from offrl.algos.sac import SAC
from offrl.algos.sac import Config as SACConfig
from offrl.algos.td3_bc import TD3BC
from offrl.algos.td3_bc import Config as TD3BCConfig
from offrl.errors import OffrlError
from offrl.export import DEFAULT_FILENAMES, METADATA_FILE, export_policy, read_metadata

# torch >= 2.10 marks torch.jit deprecated; TorchScript still loads in libtorch and Python
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

OBS_DIM, ACT_DIM = 5, 3
# far from (0, 1): without the normalization inside, the exported actions would be different
OBS_MEAN = np.array([10.0, -3.0, 0.5, 100.0, -50.0], dtype=np.float32)
OBS_STD = np.array([0.1, 5.0, 1.0, 20.0, 0.01], dtype=np.float32)
BATCHES = (1, 7)
ALGOS = ("iql", "iql_deterministic", "td3_bc", "sac")


def make_agent(name: str, seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    if name.startswith("iql"):
        # dropout in the actor: the export must be in eval mode
        cfg = IQLConfig(steps=100, hidden=(32, 32), expectile=0.7, beta=3.0, actor_dropout=0.2,
                        deterministic_actor=name == "iql_deterministic")
        return IQL(cfg, OBS_DIM, ACT_DIM, OBS_MEAN, OBS_STD)
    if name == "td3_bc":
        return TD3BC(TD3BCConfig(hidden=(32, 32)), OBS_DIM, ACT_DIM, OBS_MEAN, OBS_STD)
    if name == "sac":
        return SAC(SACConfig(hidden=(32, 32)), OBS_DIM, ACT_DIM, OBS_MEAN, OBS_STD)
    raise ValueError(name)


def raw_obs(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (OBS_MEAN + 2.0 * OBS_STD * rng.standard_normal((batch, OBS_DIM))).astype(np.float32)


def run_torchscript(path: str, obs: np.ndarray) -> np.ndarray:
    module = torch.jit.load(path)
    with torch.no_grad():
        return module(torch.from_numpy(obs)).numpy()


def run_onnx(path: str, obs: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(["action"], {"obs": obs})[0]


def needs_onnx():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


# ----------------------------------------------------------------------------- TorchScript
@pytest.mark.parametrize("algo", ALGOS)
def test_torchscript_matches_act(algo, tmp_path):
    agent = make_agent(algo)
    agent.train()  # export must not depend on (nor change) the agent's mode
    path = export_policy(agent, str(tmp_path / "policy.pt"))
    assert path == str(tmp_path / "policy.pt") and os.path.isfile(path)
    assert agent.training
    for b in BATCHES:
        obs = raw_obs(b, seed=b)
        got = run_torchscript(path, obs)
        assert got.shape == (b, ACT_DIM) and got.dtype == np.float32
        np.testing.assert_allclose(got, agent.act(obs), atol=1e-5, rtol=0)
        assert np.all(np.abs(got) <= 1.0)
    # the normalization is inside: the policy on un-normalized inputs gives other actions
    obs = raw_obs(7, seed=3)
    with torch.no_grad():
        unnormalized = agent.eval().policy(torch.from_numpy(obs), deterministic=True).numpy()
    assert not np.allclose(run_torchscript(path, obs), unnormalized, atol=1e-3)


def test_torchscript_metadata_and_acting_weights_only(tmp_path):
    agent = make_agent("iql")
    path = export_policy(agent, str(tmp_path / "policy.pt"))
    files = {METADATA_FILE: ""}  # what a user without offrl does
    module = torch.jit.load(path, _extra_files=files)
    meta = json.loads(files[METADATA_FILE])
    assert meta["algo"] == "iql" and meta["obs_dim"] == OBS_DIM and meta["act_dim"] == ACT_DIM
    assert (meta["action_low"], meta["action_high"]) == (-1.0, 1.0)
    assert read_metadata(path) == meta
    # critics, value and target networks stay behind; the actor and the normalization travel
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    assert any(n.startswith("agent.actor.") for n in names)
    assert {"agent.obs_mean", "agent.obs_std"} <= names
    assert not any(n.split(".")[1] in ("critic", "critic_target", "value") for n in names)
    assert not any(p.requires_grad for p in module.parameters())


def test_torchscript_loads_without_offrl(tmp_path):
    agent = make_agent("sac")
    path = export_policy(agent, str(tmp_path / "policy.pt"))
    obs = raw_obs(7, seed=11)
    code = ("import sys, json, torch; sys.modules['offrl'] = None\n"  # any `import offrl` would fail
            f"m = torch.jit.load({path!r}); x = torch.tensor(json.loads(sys.argv[1]))\n"
            "print(json.dumps(m(x).tolist()))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(obs.tolist())], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.array(json.loads(proc.stdout)), agent.act(obs), atol=1e-5, rtol=0)


def test_export_leaves_the_agent_alone(tmp_path):
    agent = make_agent("td3_bc")
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    opt_state = agent.optimizers["actor"].state_dict()
    export_policy(agent, str(tmp_path / "policy.pt"))
    after = agent.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert agent.optimizers["actor"].state_dict()["param_groups"] == opt_state["param_groups"]
    assert hasattr(agent, "critic") and all(p.requires_grad for p in agent.actor.parameters())


def test_example_batch_is_not_baked_in(tmp_path):
    agent = make_agent("iql")
    path = export_policy(agent, str(tmp_path / "policy.pt"), example_batch=7)
    for b in BATCHES:
        obs = raw_obs(b, seed=20 + b)
        np.testing.assert_allclose(run_torchscript(path, obs), agent.act(obs), atol=1e-5, rtol=0)
    with pytest.raises(OffrlError, match="example_batch"):
        export_policy(agent, str(tmp_path / "p2.pt"), example_batch=0)


def test_atomic_write_creates_dirs_and_replaces(tmp_path):
    out = tmp_path / "a" / "b" / "policy.pt"
    export_policy(make_agent("sac", seed=0), str(out))
    export_policy(make_agent("sac", seed=1), str(out))  # overwrite in place
    obs = raw_obs(7)
    np.testing.assert_allclose(run_torchscript(str(out), obs), make_agent("sac", seed=1).act(obs), atol=1e-5, rtol=0)
    assert os.listdir(out.parent) == ["policy.pt"]  # no temp file left
    with pytest.raises(OffrlError, match="is a directory"):
        export_policy(make_agent("sac"), str(tmp_path / "a"))


def test_unknown_format_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(OffrlError) as e:
        export_policy(make_agent("iql"), str(tmp_path / "policy.tflite"), format="tflite")
    assert "unknown export format 'tflite'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(OffrlError, match="did you mean: onnx"):
        export_policy(make_agent("iql"), str(tmp_path / "policy.onnx"), format="onx")
    assert os.listdir(tmp_path) == []


def test_missing_onnx_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(OffrlError) as e:
        export_policy(make_agent("iql"), str(tmp_path / "policy.onnx"), format="onnx")
    assert "pip install 'offrl[export]'" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


class LenAgent(Agent):
    """Acts with ``len(obs)``: a trace fixes that batch size."""

    algo = "len_agent"

    def __init__(self):
        super().__init__(None, 2, 2)
        self.actor = torch.nn.Linear(3, 2)

    def policy(self, obs, deterministic=True):
        col = torch.full((len(obs), 1), 0.5)
        return torch.tanh(self.actor(torch.cat([obs, col], -1)))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_trace_that_fixes_the_batch_size_is_refused(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    with pytest.raises(OffrlError) as e:
        export_policy(LenAgent(), str(tmp_path / DEFAULT_FILENAMES[fmt]), format=fmt)
    msg = str(e.value)
    assert "batch of 7" in msg and "len" in msg and "\n" not in msg
    assert os.listdir(tmp_path) == []


class NumpyAgent(LenAgent):
    """Acts through numpy: the trace records the example's actions as a constant."""

    algo = "numpy_agent"

    def policy(self, obs, deterministic=True):
        x = torch.cat([obs, torch.zeros_like(obs[:, :1])], -1)
        return torch.from_numpy(torch.tanh(self.actor(x)).detach().numpy())


def test_a_trace_that_froze_the_values_is_refused(tmp_path):
    with pytest.raises(OffrlError) as e:
        export_policy(NumpyAgent(), str(tmp_path / "policy.pt"))
    assert "does not reproduce" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("algo", ALGOS)
def test_onnx_matches_act(algo, tmp_path):
    needs_onnx()
    import onnxruntime as ort

    agent = make_agent(algo)
    path = export_policy(agent, str(tmp_path / "policy.onnx"), format="onnx")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "obs" and out.name == "action"
    assert isinstance(inp.shape[0], str) and inp.shape[1] == OBS_DIM  # dynamic batch dimension
    assert isinstance(out.shape[0], str) and out.shape[1] == ACT_DIM
    for b in BATCHES:
        obs = raw_obs(b, seed=b)
        got = sess.run(["action"], {"obs": obs})[0]
        assert got.shape == (b, ACT_DIM)
        np.testing.assert_allclose(got, agent.act(obs), atol=1e-5, rtol=0)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["algo"] == agent.algo and json.loads(meta["obs_dim"]) == OBS_DIM and json.loads(meta["act_dim"]) == ACT_DIM
    assert read_metadata(path)["act_dim"] == ACT_DIM


# ----------------------------------------------------------------------------- CDSA (a wrapped base agent)
@pytest.fixture
def td3_base(tmp_path):
    base = make_agent("td3_bc", seed=3)
    path = str(tmp_path / "base.pt")
    base.save(path)
    return path, base


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cdsa_weight_zero_exports_the_base_policy(fmt, td3_base, tmp_path):
    from offrl.algos.cdsa import CDSA
    from offrl.algos.cdsa import Config as CDSAConfig

    if fmt == "onnx":
        needs_onnx()
    path, base = td3_base
    agent = CDSA(CDSAConfig(checkpoint=path, hidden=(16,), weight=0.0), OBS_DIM, ACT_DIM, OBS_MEAN, OBS_STD)
    out = export_policy(agent, str(tmp_path / "out" / DEFAULT_FILENAMES[fmt]), format=fmt)
    run = run_torchscript if fmt == "torchscript" else run_onnx
    for b in BATCHES:
        obs = raw_obs(b, seed=30 + b)
        np.testing.assert_allclose(run(out, obs), base.act(obs), atol=1e-5, rtol=0)


def test_cdsa_correction_export(td3_base, tmp_path):
    from offrl.algos.cdsa import CDSA
    from offrl.algos.cdsa import Config as CDSAConfig

    path, base = td3_base
    agent = CDSA(CDSAConfig(checkpoint=path, hidden=(16,), weight=1.0), OBS_DIM, ACT_DIM, OBS_MEAN, OBS_STD)
    try:
        out = export_policy(agent, str(tmp_path / "policy.pt"))
    except OffrlError as e:  # CDSA.correction sizes σ with len(x): the trace fixes the batch size
        assert "batch of 7" in str(e) and not os.path.exists(tmp_path / "policy.pt")
        pytest.xfail(f"CDSA with a correction is not exportable yet: {e}")
    for b in BATCHES:
        obs = raw_obs(b, seed=40 + b)
        np.testing.assert_allclose(run_torchscript(out, obs), agent.act(obs), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- CLI
def cli_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from offrl.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_torchscript_next_to_the_checkpoint(tmp_path, capsys):
    agent = make_agent("iql")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    agent.save(str(ckpt))
    code, out, err = cli_main(["export", str(ckpt)], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res == {"path": str(tmp_path / "run" / "policy.pt"), "format": "torchscript", "algo": "iql",
                   "obs_dim": OBS_DIM, "act_dim": ACT_DIM}
    obs = raw_obs(7, seed=5)
    np.testing.assert_allclose(run_torchscript(res["path"], obs), agent.act(obs), atol=1e-5, rtol=0)


def test_cli_export_onnx_of_a_policy_file(tmp_path, capsys):
    needs_onnx()
    agent = make_agent("sac")
    pol = tmp_path / "sac-policy.pt"
    agent.save_policy(str(pol), {"env": "test"})  # acting weights only: enough to export
    out_path = tmp_path / "deploy" / "sac.onnx"
    code, out, err = cli_main(["export", str(pol), "--format", "onnx", "--out", str(out_path)], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["path"] == str(out_path) and res["format"] == "onnx" and res["algo"] == "sac"
    for b in BATCHES:
        obs = raw_obs(b, seed=b)
        np.testing.assert_allclose(run_onnx(str(out_path), obs), agent.act(obs), atol=1e-5, rtol=0)


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    make_agent("td3_bc").save(str(ckpt))
    code, out, err = cli_main(["export", str(ckpt), "--format", "tflite"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("offrl: error: unknown export format 'tflite'")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    code, out, err = cli_main(["export", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and err.count("\n") == 1 and "checkpoint not found" in err
