"""The algorithm registry: every algorithm module declares itself, the CLI and plug-ins look it up.

An algorithm file ends its definitions with

    ALGORITHM = register(Algorithm("iql", IQL, Config, prepare=prepare, doc="IQL (Kostrikov et al., 2022)"))
    train, main = ALGORITHM.train, ALGORITHM.main

``offrl train``, ``offrl eval``, ``offrl bench``, ``offrl export`` and CDSA find algorithms here by
name. The modules of ``offrl.algos`` are discovered (imported) on first lookup; a third-party
package adds its own through the ``offrl.algorithms`` entry-point group (a module to import).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from offrl.errors import OffrlError, suggest


@dataclass(frozen=True)
class Algorithm:
    """What offrl knows of an algorithm."""

    name: str
    """The name in ``offrl train NAME`` and in checkpoints (the agent's ``algo``)."""
    agent: type
    """The :class:`~offrl.agent.Agent` subclass."""
    config: type
    """Its config dataclass (tyro turns it into flags)."""
    train: Callable[..., dict] | None = None
    """``train(cfg) -> summary``; default: :func:`offrl.train.run_offline` with ``prepare`` (kind
    offline), :func:`offrl.online.run_online` (online) or :func:`offrl.online.run_on_policy` (on-policy)."""
    prepare: Callable | None = None
    """The dataset preprocessing hook of the default offline ``train``."""
    kind: str = "offline"
    """offline, online, on-policy or plug-in (a method on top of another agent, e.g. CDSA)."""
    benchmark: bool = True
    """Whether ``offrl bench update`` can time it on synthetic data."""
    doc: str = ""
    """One line for listings."""

    def __post_init__(self):
        if self.train is None:
            object.__setattr__(self, "train", self._default_train)

    def _default_train(self, cfg) -> dict:
        if self.kind in ("online", "on-policy"):
            from offrl.online import run_on_policy, run_online

            return (run_online if self.kind == "online" else run_on_policy)(cfg, self.agent)
        from offrl.train import run_offline

        return run_offline(cfg, self.agent, self.prepare)

    def main(self, argv: list[str] | None = None) -> dict:
        """What ``python algos/NAME.py [flags]`` does: parse the flags (``--help`` shows the module
        docstring and every field's), train, print the summary as one JSON line; returns it."""
        import sys

        from offrl.cli import run_script

        return run_script(self.config, self.train, argv, prog=self.name,
                          description=sys.modules[self.agent.__module__].__doc__)


_ALGORITHMS: dict[str, Algorithm] = {}
_discovered = False


def register(algo: Algorithm) -> Algorithm:
    """Add ``algo`` (called at the bottom of an algorithm module); returns it."""
    if getattr(algo.agent, "algo", None) != algo.name:
        raise OffrlError(f"algorithm '{algo.name}': its agent class says algo = '{getattr(algo.agent, 'algo', None)}'")
    _ALGORITHMS[algo.name] = algo
    return algo


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import offrl.algos

    for mod in sorted(m.name for m in pkgutil.iter_modules(offrl.algos.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"offrl.algos.{mod}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="offrl.algorithms"):
        importlib.import_module(ep.value)


def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm, by name (sorted)."""
    _discover()
    return dict(sorted(_ALGORITHMS.items()))


def get(name: str | None) -> Algorithm:
    """The algorithm called ``name``; one-line error with suggestions otherwise."""
    known = algorithms()
    if name not in known:
        raise OffrlError(f"unknown algorithm '{name}', expected one of {', '.join(known)}" + suggest(str(name), known))
    return known[name]


def agent_class(name: str | None) -> type:
    return get(name).agent
