"""Export a trained agent's acting policy as a standalone file: TorchScript or ONNX.

The exported function is the agent's deterministic policy on *raw* observations, with the
observation normalization inside::

    obs [B, obs_dim] float32 (raw, as the environment returns them) → action [B, act_dim] in [-1, 1]

that is ``agent.raw_policy(obs, deterministic=True)``, what :meth:`Agent.act` computes. The batch
dimension is dynamic. Loading the file needs no offrl: ``torch.jit.load`` (Python or C++ libtorch)
for TorchScript, ONNX Runtime (or any ONNX runtime) for ONNX. Rescaling the actions to the
environment's action bounds is the user's (offrl's environments act in [-1, 1]); docs/export.md.

ONNX export uses torch's TorchScript-based exporter (``dynamo=False``), which needs only the
``onnx`` package (``pip install 'offrl[export]'``); the dynamo exporter would also need onnxscript.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from offrl.errors import OffrlError
from offrl.io import atomic_write

FORMATS = ("torchscript", "onnx")
DEFAULT_FILENAMES = {"torchscript": "policy.pt", "onnx": "policy.onnx"}
METADATA_FILE = "offrl.json"
"""Name of the metadata entry in a TorchScript file's ``_extra_files``."""
EXPORT_FORMAT = "offrl-policy-export-v1"
INPUT_NAME, OUTPUT_NAME = "obs", "action"
ONNX_OPSET = 17
CHECK_BATCHES = (1, 7)
"""Batch sizes the exported function is checked on against the agent before the file is written."""
CHECK_ATOL = 1e-4
"""Tolerance of that check against the eager CPU copy (a fixed shape fails by far more)."""


class ActingPolicy(nn.Module):
    """``forward(obs) = agent.raw_policy(obs, deterministic=True)``: what gets traced."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.raw_policy(obs, deterministic=True)


def check_format(format: str) -> str:
    """``format`` if offrl can export to it, else a one-line :class:`OffrlError`."""
    if format not in FORMATS:
        from offrl.errors import suggest

        raise OffrlError(f"unknown export format '{format}', expected one of {', '.join(FORMATS)}"
                         + suggest(str(format), FORMATS))
    return format


def policy_metadata(agent) -> dict[str, Any]:
    """What an exported file records about the policy (TorchScript: ``offrl.json``; ONNX: metadata_props)."""
    from offrl import __version__

    return {"format": EXPORT_FORMAT, "algo": agent.algo, "obs_dim": agent.obs_dim, "act_dim": agent.act_dim,
            "input": INPUT_NAME, "output": OUTPUT_NAME, "action_low": -1.0, "action_high": 1.0,
            "deterministic": True, "normalization": "inside (raw observations in)", "offrl_version": __version__}


def _agents(module: nn.Module) -> list:
    from offrl.agent import Agent

    return [m for m in module.modules() if isinstance(m, Agent)]


def _is_training_state(value: Any) -> bool:
    """An optimizer or LR scheduler, or a non-empty dict of them (``agent.optimizers``)."""
    kinds = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
    if isinstance(value, dict):
        return bool(value) and all(isinstance(v, kinds) for v in value.values())
    return isinstance(value, kinds)


def _cpu_copy(agent) -> nn.Module:
    """A deep copy on CPU in eval mode without gradients; optimizers and schedulers (whatever
    attributes hold them) are not copied."""
    memo: dict[int, Any] = {}
    for a in _agents(agent):
        for value in vars(a).values():
            if _is_training_state(value):
                memo[id(value)] = {} if isinstance(value, dict) else None
    clone = copy.deepcopy(agent, memo)
    clone.to("cpu").eval().requires_grad_(False)
    for a in _agents(clone):
        a.device = torch.device("cpu")
    return clone


def _drop_unused_children(clone: nn.Module, obs: torch.Tensor) -> None:
    """Delete the sub-modules of every agent in ``clone`` that acting never calls (critics, value
    nets, target networks), so that the exported file holds the acting weights only."""
    called: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda mod, _inp: called.add(id(mod))) for m in clone.modules()]
    try:
        with torch.no_grad():
            clone.raw_policy(obs, deterministic=True)
    finally:
        for h in handles:
            h.remove()
    for a in _agents(clone):
        for name, child in list(a.named_children()):
            if not any(id(m) in called for m in child.modules()):
                delattr(a, name)


def _acting_copy(agent, obs: torch.Tensor) -> nn.Module:
    """The CPU copy with only what acting uses; the full copy if acting touches a sub-module
    without calling it (then deleting it raises AttributeError)."""
    clone = _cpu_copy(agent)
    _drop_unused_children(clone, obs)
    try:
        with torch.no_grad():
            clone.raw_policy(obs, deterministic=True)
    except AttributeError:
        clone = _cpu_copy(agent)
    return clone


def _example_obs(agent, batch: int, seed: int) -> torch.Tensor:
    """Observations around the agent's normalization statistics (so that they are realistic)."""
    g = torch.Generator().manual_seed(seed)
    mean = agent.obs_mean.detach().float().cpu()
    std = agent.obs_std.detach().float().cpu()
    return mean + std * torch.randn(batch, agent.obs_dim, generator=g)


def _check(name: str, run, reference, agent, notes: list[str] | None = None) -> None:
    """One-line error unless ``run(obs)`` matches ``reference(obs)`` (numpy in, numpy out) on a
    batch of each size in :data:`CHECK_BATCHES`: a trace that fixed the batch size fails here."""
    for k, b in enumerate(CHECK_BATCHES):
        obs = _example_obs(agent, b, seed=1 + k).numpy()
        want = reference(obs)
        try:
            got = np.asarray(run(obs))
        except Exception as e:  # the interpreter hits a shape the trace fixed
            detail = f"{type(e).__name__} when run"
        else:
            if got.shape == want.shape and np.allclose(got, want, atol=CHECK_ATOL, rtol=0):
                continue
            detail = (f"max abs difference {np.abs(got - want).max():.3g}" if got.shape == want.shape
                      else f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        why = f"; tracing warned: {notes[0].split('. ')[0]}" if notes else ""
        raise OffrlError(f"the exported {name} does not reproduce the {agent.algo} agent's actions "
                         f"on a batch of {b} ({detail}){why}")


def _trace(agent, example_batch: int) -> tuple[ActingPolicy, torch.jit.ScriptModule]:
    """The acting wrapper around a CPU copy, and its trace checked on batch sizes 1 and 7."""
    example = _example_obs(agent, example_batch, seed=0)
    wrapper = ActingPolicy(_acting_copy(agent, example))
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")  # recorded, not shown: jit.trace's deprecation notice in torch >= 2.10
        try:
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        except Exception as e:
            raise OffrlError(f"cannot trace the {agent.algo} policy: {_first_line(e)}") from None
    notes = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    _check("TorchScript trace", lambda obs: _torch_run(traced, obs), lambda obs: _torch_run(wrapper, obs), agent, notes)
    return wrapper, traced


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _torch_run(module: nn.Module, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(obs)).numpy()


def _write_onnx(agent, wrapper: ActingPolicy, traced, meta: dict, tmp: str, example_batch: int) -> None:
    import onnx

    example = _example_obs(agent, example_batch, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        try:
            torch.onnx.export(traced, (example,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)
        except Exception as e:  # an operator without an ONNX counterpart at this opset
            raise OffrlError(f"ONNX export of the {agent.algo} policy failed: {_first_line(e)}") from None
    model = onnx.load(tmp)
    model.producer_name = "offrl"
    # static feature sizes (the exporter can leave the action width symbolic, e.g. after chunk)
    for value, size in ((model.graph.input[0], agent.obs_dim), (model.graph.output[0], agent.act_dim)):
        value.type.tensor_type.shape.dim[1].dim_value = size
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, tmp)
    try:
        import onnxruntime
    except ImportError:  # the trace it came from was checked; no runtime here to check the file
        return
    sess = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    _check("ONNX policy", lambda obs: sess.run([OUTPUT_NAME], {INPUT_NAME: obs})[0],
           lambda obs: _torch_run(wrapper, obs), agent)


def export_policy(agent, path: str, format: str = "torchscript", example_batch: int = 1) -> str:
    """Write ``agent``'s deterministic acting policy (raw observations → actions in [-1, 1], the
    observation normalization inside) as a standalone ``format`` file at ``path``; returns ``path``.

    ``format``: ``"torchscript"`` (``torch.jit.load``; metadata in the ``offrl.json`` extra file) or
    ``"onnx"`` (input ``"obs"``, output ``"action"``, opset 17; metadata in ``metadata_props``).
    The batch dimension is dynamic; ``example_batch`` is the batch size traced with. Before writing,
    the exported function is checked against the eager policy on batches of 1 and 7 observations
    (and the ONNX file with ONNX Runtime when it is installed): a one-line :class:`OffrlError`
    instead of a file that fixed the batch size.
    The agent itself is not changed (a CPU copy is traced). Parent directories are created and the
    file is written atomically (temp file, then rename).
    """
    from offrl.agent import Agent

    check_format(format)
    if not isinstance(agent, Agent):
        raise OffrlError(f"export_policy needs an offrl Agent, got {type(agent).__name__}")
    if int(example_batch) < 1:
        raise OffrlError(f"example_batch must be >= 1, got {example_batch}")
    if format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise OffrlError("ONNX export needs the onnx package: pip install 'offrl[export]'") from None
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OffrlError(f"{path} is a directory; pass a file name (e.g. {DEFAULT_FILENAMES[format]})")
    wrapper, traced = _trace(agent, int(example_batch))
    meta = policy_metadata(agent)
    def write(tmp: str) -> None:
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 marks torch.jit deprecated
                torch.jit.save(traced, tmp, _extra_files={METADATA_FILE: json.dumps(meta)})
        else:
            _write_onnx(agent, wrapper, traced, meta, tmp, int(example_batch))

    return atomic_write(path, write)


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata an exported file records (``algo``, ``obs_dim``, ``act_dim``, ...)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OffrlError(f"exported policy not found: {path}")
    if path.endswith(".onnx"):
        try:
            import onnx
        except ImportError:
            raise OffrlError("reading ONNX metadata needs the onnx package: pip install 'offrl[export]'") from None
        out = {}
        for p in onnx.load(path).metadata_props:
            try:
                out[p.key] = json.loads(p.value)
            except json.JSONDecodeError:
                out[p.key] = p.value
        return out
    files = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(path, map_location="cpu", _extra_files=files)
    except Exception as e:
        raise OffrlError(f"cannot read {path} as TorchScript: {type(e).__name__}") from None
    if not files[METADATA_FILE]:
        raise OffrlError(f"{path} has no offrl metadata")
    return json.loads(files[METADATA_FILE])
