"""Whole-update CUDA graphs (``--cuda-graph``): each gradient step replays captured kernels.

A 2×256 update on a batch of 256 is launch-bound on a GPU: hundreds of small kernels, each a few
microseconds of work behind a CPU-side launch. :class:`GraphedUpdate` captures the agent's update
once with :class:`torch.cuda.CUDAGraph` (forward, backward and the optimizer steps: the optimizers
are capturable Adams on CUDA, :func:`offrl.agent.adam`) and then replays it, so a step costs one
launch. The recipe is PyTorch's whole-network capture:

1. the first ``warmup`` steps run eagerly on a side stream (real training steps on real batches;
   capture needs the autograd and cuBLAS state they set up);
2. the update is captured on a static batch (capturing records kernels, it runs nothing);
3. every later step copies its batch into the static batch and replays.

An agent opts in with ``graph_safe = True``: its update has no host sync, no data-dependent shape
and no python-side state that changes between steps, or it says how to replay it with
:meth:`offrl.agent.Agent.graph_parts` (the TD3 family: one graph for the critic (and extra)
steps, one for the delayed actor step, chosen by its python counter). Randomness inside an update
(TD3's target noise) comes from the default CUDA generator, which graphs replay safely. The
metrics of a step are the graph's static outputs: the metric accumulator adds them before the next
replay overwrites them. The graph holds no training state: a checkpoint is the agent's as usual,
and a resumed run captures again, as does a run whose phase changes (offline → online: the agent's
python-side choices, such as IQL's online learning rate, may differ).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from offrl.errors import OffrlError


class CUDAGraphRecorder:
    """The real capture: ``capture(fn)`` records ``fn()`` into a new CUDA graph and returns
    (replay, outputs). Tests on a CPU use a stand-in with the same interface that calls ``fn`` again
    at each replay."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = None  # one memory pool shared by all graphs of an update

    def capture(self, fn: Callable[[], Any]):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn()
        self.pool = graph.pool()
        return graph.replay, outputs

    def side_stream(self):
        """The context the warm-up steps run in (a side stream, as capture requires)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        return _StreamContext(stream, self.device)


class _StreamContext:
    def __init__(self, stream, device):
        self.stream, self.device, self._ctx = stream, device, None

    def __enter__(self):
        self._ctx = torch.cuda.stream(self.stream)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return False


class GraphedUpdate:
    """``update(batch) -> metrics`` of ``agent`` through CUDA graphs (see the module docstring)."""

    def __init__(self, agent, warmup: int = 3, recorder=None):
        if not getattr(agent, "graph_safe", False):
            raise OffrlError(f"{agent.algo}'s update cannot be captured as a CUDA graph (--cuda-graph); "
                             "train without it or with --compile")
        if recorder is None:
            if agent.device.type != "cuda":
                raise OffrlError(f"--cuda-graph needs a CUDA device, the run is on {agent.device}")
            recorder = CUDAGraphRecorder(agent.device)
        self.agent, self.warmup, self.recorder = agent, int(warmup), recorder
        self.steps = 0
        self.static = None
        self.replays: dict[str, Callable[[], None]] = {}
        self.outputs: dict[str, Any] = {}
        self.phase = None  # the agent's phase_kind when the graphs were captured

    def _capture(self, batch) -> None:
        self.phase = getattr(self.agent, "phase_kind", None)
        self.static = batch.replace(**{k: v.clone() for k, v in batch.__dict__.items()})
        # in order: a later part may read an earlier part's static outputs (``outputs``) when it runs
        for name, fn in self.agent.graph_parts(self.static, self.outputs).items():
            self.replays[name], self.outputs[name] = self.recorder.capture(fn)

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps <= self.warmup:
            with self.recorder.side_stream():
                return self.agent.update(batch)
        if self.static is not None and getattr(self.agent, "phase_kind", None) != self.phase:
            # a new phase may change what the update does in python (IQL's online lr): capture again
            self.static, self.replays, self.outputs = None, {}, {}
        if self.static is None:
            self._capture(batch)
        for k, v in batch.__dict__.items():
            self.static.__dict__[k].copy_(v)
        return self.agent.graph_step(self.replays, self.outputs)


class _PlainStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class ReplayByCalling:
    """A stand-in recorder for CPU tests: capture runs nothing, each replay calls ``fn`` again and
    writes its outputs into the first call's tensors — what a graph replay does to static outputs."""

    def __init__(self):
        self.captured = 0

    def capture(self, fn):
        self.captured += 1
        state: dict[str, Any] = {}

        def replay():
            out = fn()
            if "outputs" not in state:
                state["outputs"] = out
            else:
                _copy_into(state["outputs"], out)

        # static outputs: tensors of the right shapes, filled at each replay
        return replay, _Lazy(state)

    def side_stream(self):
        return _PlainStream()


class _Lazy:
    """The outputs of a replayed stand-in capture (available after the first replay)."""

    def __init__(self, state):
        self._state = state

    def get(self):
        return self._state["outputs"]


def _copy_into(dst, src) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            _copy_into(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        for a, b in zip(dst, src):
            _copy_into(a, b)


def outputs_of(value):
    """The static outputs of a capture (the stand-in's after its first replay)."""
    return value.get() if isinstance(value, _Lazy) else value
