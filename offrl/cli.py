"""The ``offrl`` command line.

    offrl train ALGO [flags]            same flags as `python algos/ALGO.py`
    offrl eval CHECKPOINT [--episodes N] [--video] [--beta B]
    offrl export CHECKPOINT [--format torchscript|onnx] [--out PATH]
    offrl datasets list | info ID | make ID|PATTERN ... [--force] [--transitions N] [--from-run CKPT]
    offrl bench update --algo iql --device cpu --steps N
    offrl bench loop --algo ppo --env Hopper-v5 --steps N [-- train flags]
    offrl plot RUN [RUN ...] --metric eval/normalized_score --out curves.svg [--labels ...]
    offrl sweep --algos A [A ...] --datasets PATTERN ... --seeds 0 1 2 --steps N --out DIR
    offrl report SWEEP|RUN ... --out DIR [--split KEY ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence, TypeVar

from offrl.errors import OffrlError, cli_errors, json_safe

T = TypeVar("T")


def parse_config(cls: type[T], argv: Sequence[str] | None = None, prog: str | None = None,
                 description: str | None = None) -> T:
    """Parse ``argv`` into the dataclass ``cls`` with tyro (field docstrings become ``--help``)."""
    import tyro

    return tyro.cli(cls, args=argv, prog=prog, description=description)


@cli_errors
def run_script(cls: type, train, argv: Sequence[str] | None = None, prog: str | None = None,
               description: str | None = None) -> dict:
    """What an algorithm file's ``__main__`` does: parse its config, train, print the summary as JSON."""
    summary = train(parse_config(cls, argv, prog=prog, description=description))
    print(json.dumps(json_safe(summary)))
    return summary


def _train(args: list[str]) -> int:
    import sys as _sys

    from offrl.registry import algorithms, get

    if not args or args[0] in ("-h", "--help"):
        print(f"usage: offrl train ALGO [flags]   (ALGO: {', '.join(algorithms())}; `offrl train ALGO --help` lists the flags)")
        return 0
    algo = get(args[0])
    run_script(algo.config, algo.train, args[1:], prog=f"offrl train {args[0]}",
               description=_sys.modules[algo.agent.__module__].__doc__)
    return 0


def _eval(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="offrl eval", description="Evaluate a checkpoint in its dataset's environment.")
    p.add_argument("checkpoint", help="path to a checkpoint.pt written by training or Agent.save")
    p.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    p.add_argument("--seed", type=int, default=0, help="episode i is reset with seed+i (default 0)")
    p.add_argument("--env", default=None, help="Gymnasium env id (default: the dataset's evaluation env)")
    p.add_argument("--device", default="cpu", help="torch device for the policy (default cpu)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic mode")
    p.add_argument("--video", action="store_true", help="also record the first episode to an mp4 next to the checkpoint")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--beta", type=float, default=None,
                   help="act with this fixed β (algorithms that learn a family of policies, e.g. famo2o)")
    a = p.parse_args(args)
    if a.episodes <= 0:
        raise OffrlError(f"--episodes must be positive, got {a.episodes}")
    import os

    from offrl.agent import load_checkpoint
    from offrl.data import get_info
    from offrl.evaluation import Evaluator
    from offrl.registry import agent_class
    from offrl.utils import resolve_device

    ckpt = load_checkpoint(a.checkpoint)
    agent = agent_class(ckpt["algo"]).from_checkpoint(ckpt, device=resolve_device(a.device), path=a.checkpoint)
    dataset_id = ckpt.get("dataset") or ckpt["config"].get("dataset")
    # training stores the evaluation env and reference scores it used; fall back to the registry
    env = dict(ckpt.get("env") or {})
    if not env:
        try:
            info = get_info(dataset_id)
            env = {"env_id": info.env_id, "ref_min_score": info.ref_min_score, "ref_max_score": info.ref_max_score}
        except OffrlError:
            pass
    env_id = a.env or env.get("env_id")
    ref_min, ref_max = env.get("ref_min_score"), env.get("ref_max_score")
    if env_id is None:
        raise OffrlError(f"no evaluation environment known for dataset '{dataset_id}'; pass --env")
    video = os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), "eval.mp4") if a.video else None
    evaluator = Evaluator(env_id, a.episodes, a.seed, ref_min_score=ref_min, ref_max_score=ref_max,
                          deterministic=not a.stochastic, video_path=video)
    policy = agent
    if a.beta is not None:
        import inspect

        if "beta" not in inspect.signature(agent.act).parameters:
            raise OffrlError(f"--beta: {ckpt['algo']} takes no β (it is for algorithms with a family of policies, e.g. famo2o)")

        def policy(obs, deterministic=True):
            return agent.act(obs, deterministic=deterministic, beta=a.beta)

    evaluator(policy)
    res = dict(evaluator.last)
    res.update({"checkpoint": a.checkpoint, "algo": ckpt["algo"], "env_id": env_id, "dataset": dataset_id})
    if a.beta is not None:
        res["beta"] = a.beta
    if video:
        res["video"] = video
    if not a.json:
        at = f" at β = {a.beta:g}" if a.beta is not None else ""
        print(f"{ckpt['algo']}{at} on {env_id}: return {res['return_mean']:.1f} ± {res['return_std']:.1f}, "
              f"normalized score {res['normalized_score']:.1f} over {a.episodes} episodes", file=sys.stderr)
    print(json.dumps(json_safe(res)))
    return 0


def _export(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="offrl export",
                                description="Write a checkpoint's deterministic policy (raw observations in, actions in "
                                            "[-1, 1] out, normalization inside) as a standalone TorchScript or ONNX file "
                                            "that runs without offrl (docs/export.md).")
    p.add_argument("checkpoint", help="path to a checkpoint.pt or policy file written by training or Agent.save")
    p.add_argument("--format", default="torchscript", help="torchscript (default) or onnx (needs: pip install 'offrl[export]')")
    p.add_argument("--out", default=None, help="file to write (default: policy.pt / policy.onnx next to the checkpoint)")
    a = p.parse_args(args)
    import os

    from offrl.agent import load_checkpoint
    from offrl.registry import agent_class
    from offrl.export import DEFAULT_FILENAMES, check_format, export_policy

    check_format(a.format)
    ckpt = load_checkpoint(a.checkpoint)
    agent = agent_class(ckpt["algo"]).from_checkpoint(ckpt, device="cpu", path=a.checkpoint)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), DEFAULT_FILENAMES[a.format])
    path = export_policy(agent, out, a.format)
    print(json.dumps({"path": path, "format": a.format, "algo": ckpt["algo"],
                      "obs_dim": agent.obs_dim, "act_dim": agent.act_dim}))
    return 0


def _datasets(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="offrl datasets", description="List and inspect known datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every known dataset id, its source, env, reference scores and whether it is present")
    info = sub.add_parser("info", help="everything about one dataset")
    info.add_argument("id", help="dataset id, e.g. hopper-medium-v2")
    make = sub.add_parser("make", help="build offrl's own datasets",
                          description="Build offrl's own datasets. An id may be a pattern: "
                                      "'offrl/walker2d/*' or 'offrl/*/expert-v0' (quote it); "
                                      "datasets a pattern matches that are present already are skipped.")
    make.add_argument("ids", nargs="+", metavar="ID",
                      help="dataset ids or patterns, e.g. offrl/hopper/medium-v0 'offrl/*'")
    make.add_argument("--force", action="store_true", help="rebuild even if a dataset is present")
    make.add_argument("--transitions", type=int, default=None,
                      help="transitions to collect (default: the recipe's, 1M for the locomotion suite)")
    make.add_argument("--from-run", default=None, metavar="CHECKPOINT",
                      help="medium-replay: cut the data from this --record SAC run instead of rerunning it")
    a = p.parse_args(args)
    from offrl import data

    if a.cmd == "list":
        data.print_list()
    elif a.cmd == "info":
        data.print_info(a.id)
    else:
        targets = _make_targets(a.ids, a.force)
        kw = {}
        if a.transitions is not None:
            if a.transitions < 1:
                raise OffrlError(f"--transitions must be positive, got {a.transitions}")
            kw["num_transitions"] = a.transitions
        if a.from_run is not None:
            replay = [t for t in targets if t.endswith("/medium-replay-v0")]
            if len(replay) != 1:
                raise OffrlError("--from-run applies to the medium-replay datasets only, one at a time")
        for target in targets:
            info = data.get_info(target)
            extra = {"from_run": a.from_run} if a.from_run is not None and target.endswith("/medium-replay-v0") else {}
            if data.is_present(target) and not a.force:  # built meanwhile as part of a medium-expert
                print(f"{target}: present, skipped", file=sys.stderr)
                continue
            path = info.builder(info, force=a.force, **kw, **extra)
            print(json.dumps({"id": target, "path": str(path),
                              **data.load_dataset(target, download=False).summary()}), flush=True)
    return 0


def _make_targets(ids: list[str], force: bool) -> list[str]:
    """Expand ``offrl datasets make``'s ids and patterns to the recipe datasets to build, in
    registry order (medium-expert after its parts). A named id that is present without ``--force``
    is an error; what a pattern matches that is present is skipped."""
    import fnmatch

    from offrl import data

    recipes = [i.id for i in data.list_datasets() if i.builder is not None]
    chosen: set[str] = set()
    for pattern in ids:
        if any(c in pattern for c in "*?["):
            hits = fnmatch.filter(recipes, pattern)
            if not hits:
                raise OffrlError(f"'{pattern}' matches no dataset offrl can build (see `offrl datasets list`)")
            skipped = [h for h in hits if data.is_present(h) and not force]
            for h in skipped:
                print(f"{h}: present, skipped (--force rebuilds it)", file=sys.stderr)
            chosen.update(h for h in hits if h not in skipped)
            continue
        info = data.get_info(pattern)
        if info.builder is None:
            raise OffrlError(f"{pattern} is a {info.source} dataset; offrl has no recipe to build it")
        if data.is_present(pattern) and not force:
            raise OffrlError(f"{pattern} is already present at {data.dataset_path(pattern)}; pass --force to rebuild it")
        chosen.add(pattern)
    order = {r: k for k, r in enumerate(recipes)}
    return sorted(chosen, key=lambda r: (order[r], r))


def _bench(args: list[str]) -> int:
    from offrl.bench import bench_algorithms, bench_update

    p = argparse.ArgumentParser(prog="offrl bench", description="Benchmarks (print one JSON line).")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("update", help="updates/s of an algorithm's update step on a synthetic D4RL-size batch")
    u.add_argument("--algo", default="iql", choices=bench_algorithms())
    u.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    u.add_argument("--steps", type=int, default=500, help="timed updates (default 500)")
    u.add_argument("--warmup", type=int, default=50, help="untimed updates first (default 50)")
    u.add_argument("--batch-size", type=int, default=256)
    u.add_argument("--obs-dim", type=int, default=17)
    u.add_argument("--act-dim", type=int, default=6)
    u.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    u.add_argument("--compile", action="store_true", help="torch.compile the update step")
    u.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic dataset (PRDC searches all of them)")
    u.add_argument("--cuda-graph", action="store_true", help="capture the update as a CUDA graph (offrl.graphs)")
    u.add_argument("--stack", type=int, default=1,
                   help="stacked seeds: each timed update trains this many seeds at once (iql, td3_bc, prdc, a2pr; offrl.stacked)")
    lp = sub.add_parser("loop", help="env steps/s of an online or on-policy algorithm's whole training loop",
                        description="Env steps/s of the whole training loop (env stepping, normalizers, storage, "
                                    "updates) of an online or on-policy algorithm, evaluation and checkpoints off; "
                                    "flags after -- go to the algorithm (e.g. -- --num-envs 4 --env-backend batched).")
    lp.add_argument("--algo", default="ppo")
    lp.add_argument("--env", default="Hopper-v5")
    lp.add_argument("--steps", type=int, default=20480, help="env steps of the run (default 20480)")
    lp.add_argument("--log-every", type=int, default=2048, help="env steps between marks (default 2048)")
    lp.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    lp.add_argument("--device", default="cpu")
    lp.add_argument("--seed", type=int, default=0)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1:]
    a = p.parse_args(args)
    if a.cmd == "loop":
        from offrl.bench import bench_loop

        print(json.dumps(bench_loop(a.algo, a.env, a.steps, a.threads, a.device, a.log_every, extra, a.seed)))
        return 0
    if a.rows < a.batch_size:
        raise OffrlError(f"--rows must be at least --batch-size ({a.batch_size}), got {a.rows}")
    print(json.dumps(bench_update(a.algo, a.device, a.steps, a.warmup, a.batch_size, a.obs_dim, a.act_dim,
                                  a.threads, a.compile, a.rows, stack=a.stack, cuda_graph=a.cuda_graph)))
    return 0


def _plot(args: list[str]) -> int:
    from offrl import plot

    p = argparse.ArgumentParser(prog="offrl plot", description=plot.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or their metrics.jsonl)")
    p.add_argument("--metric", default="eval/return_mean", help="logged metric to draw (default eval/return_mean)")
    p.add_argument("--out", default="curves.svg", help="figure to write: .svg (default curves.svg) or .png (matplotlib, the plot extra)")
    p.add_argument("--labels", nargs="+", default=None, help="one label per run; runs sharing a label are averaged")
    p.add_argument("--title", default=None)
    p.add_argument("--no-band", action="store_true", help="draw the lines only (no ± std band)")
    a = p.parse_args(args)
    print(json.dumps(plot.plot(a.runs, a.out, a.metric, a.labels, a.title, band=not a.no_band)))
    return 0


def _sweep(args: list[str]) -> int:
    from offrl import sweep

    return sweep.main(args)


def _report(args: list[str]) -> int:
    from offrl import report

    return report.main(args)


COMMANDS = {"train": _train, "eval": _eval, "export": _export, "datasets": _datasets, "bench": _bench, "plot": _plot,
            "sweep": _sweep, "report": _report}


@cli_errors
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--version":
        from offrl import __version__

        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        from offrl.errors import suggest

        raise OffrlError(f"unknown command '{argv[0]}', expected one of {', '.join(COMMANDS)}" + suggest(argv[0], COMMANDS))
    return COMMANDS[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
