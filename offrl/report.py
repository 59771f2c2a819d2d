"""Reports over many runs: per-task tables, aggregates with bootstrap confidence intervals,
performance profiles, learning curves and runtimes, as Markdown with SVG figures.

    offrl report sweeps/NAME [more sweeps or run dirs ...] --out report/
    offrl report /work/runs/ppo-* --split preset --out report/      # ppo[preset=cleanrl] vs ppo[preset=props-baseline]

Every run directory found under the given paths (a directory with ``config.json`` and
``metrics.jsonl``) is one run of (algorithm, task = dataset or env, seed). A run's score is its
normalized score (``--metric``; the return for tasks without reference scores): **last** is the
final evaluation, **best** the evaluation with the highest mean return (the summary's meaning).
Unfinished runs (no ``summary.json``) are left out unless ``--include-unfinished``; a run without
evaluations is an error naming it.

Aggregates over tasks follow rliable's protocol (Agarwal et al., 2021): with the score matrix of
runs × tasks of one algorithm,

* **IQM**: the mean of the middle 50 % of all run scores pooled (``trim_mean(·, 0.25)``);
* **mean** and **median**: of the per-task mean scores;
* **optimality gap**: γ − mean(min(score, γ)), lower is better. γ = 100 for normalized scores, 1 for a
  success rate (``--metric eval/success_rate``), ``--gamma`` to set it; other metrics (raw returns) have
  no target level, so the gap is left out unless ``--gamma`` gives one;
* 95 % **stratified bootstrap** intervals: each replicate resamples, task by task, that task's
  runs with replacement, and recomputes the aggregate; the interval is the 2.5 and 97.5
  percentiles of ``--reps`` replicates (seeded, so a report is reproducible);
* the **performance profile**: for each threshold τ, the mean over tasks of the fraction of runs
  scoring above τ.

Tasks may have different numbers of runs; an algorithm's aggregates use the tasks it ran.
Figures use offrl's SVG renderer (the one ``offrl plot`` uses; no plotting dependency).

Offline → online runs (their summaries have ``offline_normalized_score``) get a table of their own:
the score at the end of each phase and the online normalized regret, as CORL reports fine-tuning.
Where one environment has online phases of several groups (fine-tuning from different datasets or
algorithms, training from scratch in that env), **online phase, by environment** puts them on one axis:
env steps since the hand-over, with the score at the hand-over, at the end and the normalized regret.
``--reference FILE`` adds a column of reference scores to the per-task table (e.g. the published
D4RL figure of each algorithm next to the offrl dataset it corresponds to; the file's label says
what they are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from offrl.errors import OffrlError

GAMMA = 100.0  # optimality-gap threshold on normalized scores (expert level)


# ------------------------------------------------------------------------------------ aggregates
def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all values: drop ⌊0.25·n⌋ from each end of the sorted values, average the rest."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    k = int(0.25 * x.size)
    return float(x[k:x.size - k].mean())


def aggregate(name: str, per_task: list[np.ndarray], gamma: float | None = GAMMA) -> float:
    """One aggregate of a list of per-task score arrays (runs of that task); ``gamma``: the optimality-gap
    threshold (only the gap uses it; it has none to give with ``gamma=None``)."""
    if name == "iqm":
        return iqm(np.concatenate(per_task))
    if name == "mean":
        return float(np.mean([t.mean() for t in per_task]))
    if name == "median":
        return float(np.median([t.mean() for t in per_task]))
    if name == "optimality_gap":
        if gamma is None:
            raise ValueError("the optimality gap needs a threshold gamma")
        return float(gamma - np.mean(np.minimum(np.concatenate(per_task), gamma)))
    raise ValueError(name)


AGGREGATES = ("iqm", "mean", "median", "optimality_gap")


def stratified_bootstrap(per_task: list[np.ndarray], name: str, reps: int = 2000, seed: int = 0,
                         alpha: float = 0.05, gamma: float | None = GAMMA) -> tuple[float, float]:
    """(low, high) percentile interval of ``aggregate(name)`` over ``reps`` stratified resamples.
    Replicate r draws, for each task j in order, ``rng.integers(0, n_j, n_j)`` (n_j: runs of task j)."""
    rng = np.random.default_rng(seed)
    values = np.empty(reps)
    for r in range(reps):
        values[r] = aggregate(name, [t[rng.integers(0, t.size, t.size)] for t in per_task], gamma)
    return float(np.percentile(values, 100 * alpha / 2)), float(np.percentile(values, 100 * (1 - alpha / 2)))


def performance_profile(per_task: list[np.ndarray], taus: np.ndarray) -> np.ndarray:
    """For each τ: the mean over tasks of the fraction of that task's runs with score > τ."""
    return np.array([np.mean([(t > tau).mean() for t in per_task]) for tau in taus])


O2O_KEYS = ("offline_normalized_score", "online_normalized_score", "normalized_regret")


def load_reference(path: str) -> dict:
    """A reference-score file for ``--reference``: ``{"label": ..., "scores": {algo: {task: score}}}``
    (e.g. published D4RL figures of each algorithm, keyed by the offrl dataset they stand next to)."""
    try:
        with open(path) as f:
            ref = json.load(f)
    except (OSError, ValueError) as e:
        raise OffrlError(f"--reference {path}: cannot read it ({type(e).__name__})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("scores"), dict) or not isinstance(ref.get("label"), str):
        raise OffrlError(f"--reference {path}: expected {{\"label\": str, \"scores\": {{algo: {{task: score}}}}}}")
    return ref


# ------------------------------------------------------------------------------------ runs
@dataclass
class RunRecord:
    path: str
    algo: str
    task: str
    seed: int
    finished: bool
    last: float
    best: float
    steps: int
    updates: int
    seconds: float | None
    curve: tuple[np.ndarray, np.ndarray]
    boundaries: tuple = ()
    config: dict = field(default_factory=dict)
    o2o: dict | None = None
    """An offline → online run's summary scores: offline_normalized_score, online_normalized_score, normalized_regret."""
    by_return: bool = False
    """Scored by ``eval/return_mean`` because its task has no reference scores (the metric asked was the normalized score)."""
    env: str = "?"
    """The environment: the dataset's env for an offline task, the task itself for an online one."""
    handover: int | None = None
    """The global step at which the first online phase begins (0 for an online-only run); None without one."""
    phase_scores: tuple = ()
    """(phase name, normalized score at its end) of each phase, from the summary (a finished run)."""


def find_runs(paths: list[str]) -> list[str]:
    """Run directories (``config.json`` + ``metrics.jsonl``) at or under ``paths``, sorted."""
    found: set[str] = set()
    for p in paths:
        if not os.path.exists(p):
            raise OffrlError(f"{p}: no such file or directory")
        if os.path.isfile(os.path.join(p, "config.json")) and os.path.isfile(os.path.join(p, "metrics.jsonl")):
            found.add(os.path.realpath(p))
            continue
        for root, _, files in os.walk(p):
            if "config.json" in files and "metrics.jsonl" in files:
                found.add(os.path.realpath(root))
    if not found:
        raise OffrlError(f"no run directories (config.json + metrics.jsonl) under {', '.join(paths)}")
    return sorted(found)


def env_token(task: str) -> str:
    """The offrl dataset family of a task: ``offrl/halfcheetah/medium-v0`` → halfcheetah, ``HalfCheetah-v5`` →
    halfcheetah, O-DICE imitation's ``1xoffrl/halfcheetah/expert-v0+offrl/halfcheetah/random-v0`` → halfcheetah."""
    found = re.search(r"offrl/([a-z0-9_]+)/", task)  # also inside composite ids: 1xoffrl/halfcheetah/expert-v0+…
    if found:
        return found.group(1)
    return task.split("-v")[0].split("/")[-1].lower()


def imitation_references(task: str) -> tuple[float, float]:
    """(random, expert) returns of a task for expert-normalized scores: the mean episode returns of
    ``offrl/<env>/random-v0`` and ``offrl/<env>/expert-v0`` (which must be present)."""
    from offrl.data import load_dataset
    from offrl.data.registry import is_present

    env = env_token(task)
    refs = []
    for level in ("random", "expert"):
        dataset_id = f"offrl/{env}/{level}-v0"
        try:
            present = is_present(dataset_id)
        except OffrlError:
            present = False
        if not present:
            raise OffrlError(f"--expert-normalized needs {dataset_id} for {task}: offrl datasets make {dataset_id}")
        refs.append(float(load_dataset(dataset_id, download=False).summary()["return_mean"]))
    return refs[0], refs[1]


def read_run(path: str, metric: str, split: list[str], expert_normalized: bool = False,
             references: dict | None = None) -> RunRecord | None:
    """One run's record; None for an unfinished run that has no evaluation yet. ``expert_normalized``:
    the score is 100·(R − R_random)/(R_expert − R_random) of ``eval/return_mean`` (:func:`imitation_references`,
    cached in ``references`` by task)."""
    from offrl.plot import phase_boundaries, read_metric

    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    cfg = meta.get("config", {})
    algo = meta.get("algo", "?")
    shown = [k for k in split if k in cfg]  # a key this algorithm's config lacks (e.g. famo2o's base for iql) is not shown
    if shown:
        algo += "[" + ",".join(f"{k}={cfg.get(k)}" for k in shown) + "]"
    data = meta.get("dataset")
    task = data["id"] if isinstance(data, dict) and data.get("id") else (meta.get("env_id") or cfg.get("env") or "?")
    if expert_normalized and meta.get("env_id"):
        # imitation: the task is the env, so BC / O-DICE on the demos (a dataset task) and AILBoost in
        # that env (an env task) share a row group, the aggregates and the curves
        task = meta["env_id"]
    summary_path = os.path.join(path, "summary.json")
    finished = os.path.isfile(summary_path)
    if expert_normalized:
        metric = "eval/return_mean"
    by_return = False
    try:
        steps, values, _ = read_metric(path, metric)
    except OffrlError:
        try:  # a task without reference scores logs a null normalized score: score it by its return
            if metric != "eval/normalized_score":
                raise
            steps, values, _ = read_metric(path, "eval/return_mean")
            metric, by_return = "eval/return_mean", True
        except OffrlError:
            if not finished:
                return None
            raise OffrlError(f"{path}: a finished run without evaluations of {metric} (was evaluation disabled?)") from None
    summary = json.load(open(summary_path)) if finished else {}
    if expert_normalized:
        if references is None:
            references = {}
        if task not in references:
            references[task] = imitation_references(task)
        low, high = references[task]
        values = 100.0 * (np.asarray(values, dtype=np.float64) - low) / (high - low)
    if metric == "eval/normalized_score" and finished and not expert_normalized:
        last, best = summary.get("final_normalized_score"), summary.get("best_normalized_score")
    else:
        last, best = None, None
    if last is None:
        last = float(values[-1])
    if best is None:  # the evaluation with the highest mean return, as the summary defines "best"
        try:
            r_steps, r_values, _ = read_metric(path, "eval/return_mean")
            at = int(r_steps[int(np.argmax(r_values))])
            best = float(values[np.searchsorted(steps, at)]) if at in set(steps.tolist()) else float(values.max())
        except OffrlError:
            best = float(values.max())
    seconds = summary.get("total_seconds", summary.get("seconds"))
    if seconds and summary.get("stacked_seeds"):  # one process trained S seeds: each seed's share of its time
        seconds = float(seconds) / len(summary["stacked_seeds"])
    bounds = phase_boundaries(path)
    return RunRecord(path, algo, task, int(cfg.get("seed", 0)), finished, float(last), float(best),
                     int(summary.get("steps", steps[-1])), int(summary.get("updates", 0)),
                     seconds,
                     (steps, values), tuple(bounds), cfg,
                     _o2o(summary),
                     by_return, meta.get("env_id") or task, _handover(summary, bounds, data is None),
                     tuple((p.get("name"), p.get("final_normalized_score")) for p in summary.get("phases") or ()
                           if isinstance(p, dict)))


def _handover(summary: dict, bounds: list[tuple[int, str]], online_only: bool) -> int | None:
    """The global step where the first env phase (kind ``online`` or ``on-policy``) begins: from the
    summary's phase kinds (an unfinished run: the phase named ``online``), at the phase boundary that
    starts it; 0 for a run whose first phase is an env phase, None for a run without one."""
    from offrl.run import first_env_phase

    phases = summary.get("phases") if isinstance(summary.get("phases"), list) else None
    if phases:
        first = first_env_phase(phases)
        if first is None or first == 0:
            return first
        name = phases[first].get("name")
    else:
        if online_only and not bounds:
            return 0
        name = "online"
    return next((step for step, nxt in bounds if nxt == name), None)


def _o2o(summary: dict) -> dict | None:
    """The offline → online scores, from the phase lines where the summary has them (one rule for every
    run, whichever offrl version wrote its top-level keys), else from those keys; None for other runs."""
    from offrl.run import o2o_scores

    scores = o2o_scores(summary["phases"]) if isinstance(summary.get("phases"), list) else summary
    return {k: scores[k] for k in O2O_KEYS} if all(scores.get(k) is not None for k in O2O_KEYS) else None


# ------------------------------------------------------------------------------------ report
IGNORED_CONFIG = {"seed", "run_dir", "resume", "device", "threads", "progress", "track", "wandb_project", "wandb_group",
                  "wandb_entity", "heartbeat_seconds", "checkpoint_every", "log_every", "compile", "cuda_graph", "env_backend",
                  "seeds", "dataset", "env"}
"""Config fields that may differ between the runs of one row (they do not change what is computed, or name the row)."""


def _check_split(runs: list[str], split: list[str]) -> None:
    """A ``--split`` key that no run's config has is a typo: one-line error with the keys there are."""
    if not split:
        return
    keys: set[str] = set()
    for path in runs:
        with open(os.path.join(path, "config.json")) as f:
            keys |= set(json.load(f).get("config", {}))
    missing = [k for k in split if k not in keys]
    if missing:
        from offrl.errors import suggest

        raise OffrlError(f"--split {missing[0]}: no run's config has it" + suggest(missing[0], sorted(keys)))


def config_differences(cell: dict, split: list[str]) -> list[str]:
    """One note per row whose runs were trained with different configs (besides the seed and the
    runtime-only fields): they are averaged together, which is only right if meant."""
    notes = []
    for (a, t), rs in sorted(cell.items()):
        if len(rs) < 2:
            continue
        keys = sorted({k for r in rs for k in r.config} - IGNORED_CONFIG - set(split))
        differ = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in rs}) > 1]
        if differ:
            notes.append(f"**Note:** the {len(rs)} runs of {a} on {t} differ in {', '.join(differ)}; they are averaged "
                         f"together (pass --split {' '.join(differ[:2])} to separate them).")
    return notes


def _pm(x: np.ndarray, digits: int = 1) -> str:
    return f"{x.mean():.{digits}f} ± {x.std():.{digits}f}" if x.size > 1 else f"{x.mean():.{digits}f}"


def _ci(value: float, lo: float, hi: float, digits: int = 1) -> str:
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def score_scale(metric: str, expert_normalized: bool = False, gamma: float | None = None) -> tuple[float | None, int]:
    """(optimality-gap threshold γ, decimals shown) of a report's score: normalized scores (γ = 100, 1 decimal),
    success rates in [0, 1] (γ = 1, 2 decimals), anything else (no γ unless given, 1 decimal)."""
    rate = metric.rsplit("/", 1)[-1].endswith("rate") and not expert_normalized
    if gamma is None:
        if expert_normalized or metric == "eval/normalized_score":
            gamma = GAMMA
        elif rate:
            gamma = 1.0
    return gamma, 2 if rate else 1


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def build(paths: list[str], out: str, metric: str = "eval/normalized_score", split: list[str] | None = None,
          reps: int = 2000, seed: int = 0, include_unfinished: bool = False, title: str | None = None,
          reference: str | None = None, expert_normalized: bool = False, fmt: str = "svg",
          gamma: float | None = None) -> dict:
    """Read the runs, write ``out/report.md`` and its SVG figures; returns the numbers as a dict.
    ``reference``: a :func:`load_reference` file whose scores get a column of the per-task table.
    ``gamma``: the optimality-gap threshold (default: :func:`score_scale` of the metric)."""
    from offrl.io import write_json, write_text
    from offrl.plot import Curve, write_figure

    if fmt not in ("svg", "png"):
        raise OffrlError(f"--format must be svg or png, got {fmt}")

    gamma, digits = score_scale(metric, expert_normalized, gamma)
    references: dict = {}
    found = find_runs(paths)
    _check_split(found, split or [])
    read = [(p, read_run(p, metric, split or [], expert_normalized, references)) for p in found]
    records = [r for _, r in read if r is not None]
    no_eval = [p for p, r in read if r is None]  # unfinished, no evaluation yet: never reportable
    skipped = ([r for r in records if not r.finished] if not include_unfinished else []) + no_eval
    if not include_unfinished:
        records = [r for r in records if r.finished]
    if not records:
        if include_unfinished:
            raise OffrlError(f"no runs with an evaluation yet under {', '.join(paths)} ({len(no_eval)} runs without one)")
        raise OffrlError(f"no finished runs under {', '.join(paths)} ({len(skipped)} unfinished; "
                         "--include-unfinished reports those with an evaluation)")
    algos = sorted({r.algo for r in records})
    tasks = sorted({r.task for r in records})
    cell = {(a, t): [r for r in records if r.algo == a and r.task == t] for a in algos for t in tasks}
    os.makedirs(out, exist_ok=True)
    score_name = "normalized score" if metric == "eval/normalized_score" else metric
    if expert_normalized:
        metric = "expert-normalized return"
        score_name = ("expert-normalized return, 100·(R − R_random)/(R_expert − R_random) with R_expert and R_random "
                      "the mean episode returns of offrl/<env>/expert-v0 and random-v0 ("
                      + "; ".join(f"{t}: {lo:.1f}, {hi:.1f}" for t, (lo, hi) in sorted(references.items())) + ")")
    lines = [f"# {title or 'Results'}", "",
             f"{len(records)} runs: {len(algos)} algorithm(s) × {len(tasks)} task(s). Score: {score_name} "
             "(last = final evaluation, best = the evaluation with the highest mean return, mean over evaluations = "
             "the learning curve's mean, a data-efficiency measure); mean ± std over runs (the population std, "
             "ddof 0)."]
    if skipped:
        lines.append(f"{len(skipped)} unfinished runs left out" + (f" ({len(no_eval)} without any evaluation yet)."
                                                                      if no_eval else "."))
    by_return = sorted({r.task for r in records if r.by_return})
    if by_return:
        lines.append("Tasks without reference scores are scored by their return (eval/return_mean) and left out of "
                     "the aggregates: " + ", ".join(by_return) + ".")
    for note in config_differences(cell, split or []):
        lines.append(note)
    ref = load_reference(reference) if reference else None
    ref_head = f" {ref['label']} |" if ref else ""
    lines += ["", "## Per task", "", f"| task | algorithm | runs | budget (steps) | last | best | mean over evaluations |{ref_head}",
              "|---|---|---|---|---|---|---|" + ("---|" if ref else "")]
    table = {}
    for t in tasks:
        for a in algos:
            rs = cell[(a, t)]
            if not rs:
                continue
            last = np.array([r.last for r in rs])
            best = np.array([r.best for r in rs])
            area = np.array([float(r.curve[1].mean()) for r in rs])  # data efficiency: the mean of the learning curve
            budget = sorted({r.steps for r in rs})
            ref_cell = ""
            if ref:
                value = ref["scores"].get(a.split("[")[0], {}).get(t)
                ref_cell = f" {value:.{digits}f} |" if isinstance(value, (int, float)) else " – |"
            lines.append(f"| {t}{' (return)' if t in by_return else ''} | {a} | {len(rs)} | {', '.join(f'{b:,}' for b in budget)} | {_pm(last, digits)} | {_pm(best, digits)} | {_pm(area, digits)} |{ref_cell}")
            table[f"{a}|{t}"] = {"runs": len(rs), "seeds": len({r.seed for r in rs}), "score": "eval/return_mean" if t in by_return else metric,
                                 "last_mean": float(last.mean()), "last_std": float(last.std()),
                                 "best_mean": float(best.mean()), "best_std": float(best.std()),
                                 "curve_mean": float(area.mean()), "curve_std": float(area.std()), "budget": budget}

    if ref and ref.get("note"):
        lines += ["", ref["note"]]

    # offline → online runs: the end of each phase and the online regret, as CORL reports fine-tuning
    o2o = {}
    if any(r.o2o for r in records):
        lines += ["", "## Offline → online", "",
                  "Normalized score at the end of the offline phase and of the online phase, and the normalized regret "
                  "(mean over the online evaluations of 1 − score/100); mean ± std over seeds.", "",
                  "| task | algorithm | seeds | offline | online | online − offline | normalized regret ↓ |",
                  "|---|---|---|---|---|---|---|"]
        for t in tasks:
            for a in algos:
                rs = [r for r in cell[(a, t)] if r.o2o]
                if not rs:
                    continue
                off = np.array([r.o2o["offline_normalized_score"] for r in rs])
                on = np.array([r.o2o["online_normalized_score"] for r in rs])
                reg = np.array([r.o2o["normalized_regret"] for r in rs])
                o2o[f"{a}|{t}"] = {"seeds": len(rs), "offline_mean": float(off.mean()), "online_mean": float(on.mean()),
                                   "regret_mean": float(reg.mean()), "regret_std": float(reg.std())}
                lines.append(f"| {t} | {a} | {len(rs)} | {_pm(off)} | {_pm(on)} | {_pm(on - off)} | "
                             + (f"{reg.mean():.3f} ± {reg.std():.3f}" if reg.size > 1 else f"{reg.mean():.3f}") + " |")

    # aggregates over tasks (the last score), with stratified bootstrap intervals
    agg = {}
    names = AGGREGATES if gamma is not None else tuple(n for n in AGGREGATES if n != "optimality_gap")
    lines += ["", f"## Aggregates over tasks (last score, 95 % stratified bootstrap CI, {reps} replicates)", ""]
    if gamma is None:
        lines += [f"No optimality gap: {metric} has no target level (`--gamma` sets one).", ""]
    lines += ["| algorithm | tasks | runs | IQM | mean | median |" + (f" optimality gap (γ = {gamma:g}) ↓ |" if gamma is not None else ""),
              "|---|---|---|---|---|---|" + ("---|" if gamma is not None else "")]
    scored = [t for t in tasks if t not in by_return]  # one scale: tasks scored by their return are left out
    for a in algos:
        per_task = [np.array([r.last for r in cell[(a, t)]]) for t in scored if cell[(a, t)]]
        if not per_task:
            continue
        row = {}
        for name in names:
            lo, hi = stratified_bootstrap(per_task, name, reps, seed, gamma=gamma)
            row[name] = {"value": aggregate(name, per_task, gamma), "low": lo, "high": hi}
        agg[a] = row
        lines.append(f"| {a} | {len(per_task)} | {sum(t.size for t in per_task)} | "
                     + " | ".join(_ci(row[n]["value"], row[n]["low"], row[n]["high"], digits) for n in names) + " |")

    # performance profile
    all_scores = np.array([r.last for r in records if r.task not in by_return] or [0.0])
    top = gamma if gamma is not None else 0.0
    taus = np.linspace(min(0.0, float(all_scores.min())), max(top, float(all_scores.max())), 101)
    profile = []
    for a in algos:
        per_task = [np.array([r.last for r in cell[(a, t)]]) for t in scored if cell[(a, t)]]
        if per_task:
            profile.append(Curve(a, taus, performance_profile(per_task, taus), color=algos.index(a)))
    if profile:
        write_figure(os.path.join(out, f"profile.{fmt}"), profile, "fraction of runs with score > τ",
                     "Performance profile (last score)", xlabel="τ")
        lines += ["", "## Performance profile", "", f"![performance profile](profile.{fmt})"]

    # learning curves per task: mean ± std over seeds at the steps all seeds logged
    lines += ["", "## Learning curves", ""]
    for t in tasks:
        items = []
        for a in algos:
            rs = cell[(a, t)]
            if not rs:
                continue
            common = sorted(set.intersection(*(set(r.curve[0].tolist()) for r in rs)))
            if not common:
                continue
            stack = np.stack([r.curve[1][np.searchsorted(r.curve[0], common)] for r in rs])
            marks = tuple(sorted({b for r in rs for b in r.boundaries}))
            items.append(Curve(a, np.array(common), stack.mean(0), stack.std(0) if len(rs) > 1 else None,
                               runs=len(rs), boundaries=marks, color=algos.index(a)))
        if items:
            name = f"curves_{_slug(t)}.{fmt}"
            write_figure(os.path.join(out, name), items, "eval/return_mean" if t in by_return else metric, t)
            lines.append(f"![{t}]({name})")
    stages, stage_lines = stage_table(records) if metric == "eval/normalized_score" else ({}, [])
    lines += stage_lines
    online, online_lines = online_by_env(records, out, fmt) if metric == "eval/normalized_score" else ({}, [])
    lines += online_lines
    # runtime
    lines += ["", "## Runtime", "", "| task | algorithm | wall time per run | steps/s | updates/s |", "|---|---|---|---|---|"]
    runtime = {}
    for t in tasks:
        for a in algos:
            rs = [r for r in cell[(a, t)] if r.seconds]
            if not rs:
                continue
            secs = np.array([r.seconds for r in rs])
            ups = np.array([r.updates / r.seconds for r in rs])
            sps = np.array([r.steps / r.seconds for r in rs])
            runtime[f"{a}|{t}"] = {"seconds_mean": float(secs.mean()), "steps_per_s_mean": float(sps.mean()),
                                   "updates_per_s_mean": float(ups.mean())}
            lines.append(f"| {t} | {a} | {secs.mean() / 60:.1f} min | {sps.mean():.3g} | {ups.mean():.3g} |")
    lines += ["", "Wall times are of the machine the runs ran on, with whatever else ran there; compare "
              "them only within one sweep. A run trained with stacked seeds (`--seeds`, `--stack-seeds`) counts its "
              "share: the process's time divided by its number of seeds.", ""]
    write_text(os.path.join(out, "report.md"), "\n".join(lines))
    result = {"out": out, "runs": len(records), "unfinished_left_out": len(skipped), "metric": metric, "gamma": gamma,
              "scored_by_return": by_return,
              "algorithms": algos, "tasks": tasks, "table": table, "aggregates": agg, "runtime": runtime, "o2o": o2o,
              "online_by_env": online, "stages": stages}
    write_json(os.path.join(out, "report.json"), result, indent=1)
    return result


def stage_table(records: list[RunRecord]) -> tuple[dict, list[str]]:
    """The normalized score at the end of each phase, for runs of three or more evaluated phases (a staged
    pipeline, as Uni-O4's critic → dynamics → bc → improve → value → online); mean ± std over seeds."""
    cells: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        if sum(v is not None for _, v in r.phase_scores) >= 3:
            cells.setdefault((r.algo, r.task), []).append(r)
    if not cells:
        return {}, []
    lines = ["", "## Score at the end of each phase", "",
             "Runs of a staged pipeline: the normalized score of the evaluation at the end of each phase "
             "(– where a phase has none), mean ± std over seeds."]
    result: dict = {}
    for (a, t), rs in sorted(cells.items()):
        names = [n for n, _ in rs[0].phase_scores]
        lines += ["", f"| task | algorithm | runs | {' | '.join(names)} |", "|---|---|---|" + "---|" * len(names),
                  f"| {t} | {a} | {len(rs)} | "]
        row = {}
        for n in names:
            got = [dict(r.phase_scores).get(n) for r in rs]
            v = np.array(got, dtype=np.float64) if None not in got else None
            row[n] = {"mean": float(v.mean()), "std": float(v.std())} if v is not None else None
            lines[-1] += (_pm(v) if v is not None else "–") + " | "
        lines[-1] = lines[-1].rstrip()
        result[f"{a}|{t}"] = row
    return result, lines


def online_by_env(records: list[RunRecord], out: str, fmt: str = "svg") -> tuple[dict, list[str]]:
    """The online phases side by side, per environment: fine-tuning from a dataset (x = env steps since the
    hand-over) next to training from scratch in the same env (x = env steps). Written when an env has online
    phases of at least two (algorithm, start) groups, one of them a hand-over. Per group: the score at the
    hand-over (the evaluation at the end of the offline phase), at the end, and the normalized regret over
    the online evaluations (after the hand-over). Returns the numbers and the Markdown lines."""
    from offrl.evaluation import normalized_regret
    from offrl.plot import Curve, write_figure

    groups: dict[str, dict[tuple[str, str], list[RunRecord]]] = {}
    for r in records:
        if r.handover is not None and r.curve[0].size and int(r.curve[0][-1]) > r.handover:
            start = "from scratch" if r.handover == 0 else r.task
            groups.setdefault(r.env, {}).setdefault((r.algo, start), []).append(r)
    envs = [e for e in sorted(groups) if len(groups[e]) > 1 and any(s != "from scratch" for _, s in groups[e])]
    if not envs:
        return {}, []
    lines = ["", "## Online phase, by environment", "",
             "Fine-tuning from a dataset next to training from scratch in the same env, on one axis: env steps since "
             "the hand-over (from scratch: since the start). *At the hand-over*: the evaluation at the end of the "
             "offline phase; *end*: the last evaluation; *regret*: the mean of 1 − score/100 over the online "
             "evaluations after the hand-over. Normalized score, mean ± std over seeds.", "",
             "| env | algorithm | start | runs | at the hand-over | end | end − hand-over | normalized regret ↓ |",
             "|---|---|---|---|---|---|---|---|"]
    result: dict = {}
    figures: list[str] = []  # after the table: one table for all envs
    for e in envs:
        items = []
        for i, ((a, start), rs) in enumerate(sorted(groups[e].items(), key=lambda kv: (kv[0][1] == "from scratch", kv[0]))):
            online = [(r.curve[0][r.curve[0] >= r.handover] - r.handover, r.curve[1][r.curve[0] >= r.handover]) for r in rs]
            end = np.array([v[-1] for _, v in online])
            regret = np.array([normalized_regret([{"normalized_score": float(s)} for s in v[x > 0]]) for x, v in online],
                              dtype=np.float64)  # None (no evaluation after the hand-over) -> nan
            at = np.array([v[0] for x, v in online if x[0] == 0]) if start != "from scratch" else np.array([])
            key = f"{a}|{start}|{e}"
            result[key] = {"runs": len(rs), "end_mean": float(end.mean()), "end_std": float(end.std()),
                           "regret_mean": float(np.nanmean(regret)),
                           "handover_mean": float(at.mean()) if at.size else None}
            gain = _pm(end - at) if at.size == end.size and at.size else "–"
            lines.append(f"| {e} | {a} | {start} | {len(rs)} | {_pm(at) if at.size else '–'} | {_pm(end)} | {gain} | "
                         + (f"{np.nanmean(regret):.3f} ± {np.nanstd(regret):.3f}" if len(rs) > 1 else f"{regret[0]:.3f}")
                         + " |")
            common = sorted(set.intersection(*(set(x.tolist()) for x, _ in online)))
            if common:
                stack = np.stack([v[np.searchsorted(x, common)] for x, v in online])
                label = f"{a} ({'from scratch' if start == 'from scratch' else 'from ' + start})"
                items.append(Curve(label, np.array(common), stack.mean(0), stack.std(0) if len(rs) > 1 else None,
                                   runs=len(rs), color=i))
        if items:
            name = f"online_{_slug(e)}.{fmt}"
            write_figure(os.path.join(out, name), items, "eval/normalized_score", f"{e}: online phase",
                         xlabel="env steps since the hand-over")
            figures.append(f"![{e} online]({name})")
    return result, lines + [""] + figures


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="offrl report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="sweep directories and/or run directories")
    p.add_argument("--out", required=True, help="directory for report.md, report.json and the SVG figures")
    p.add_argument("--metric", default="eval/normalized_score", help="the score (default eval/normalized_score)")
    p.add_argument("--split", nargs="+", default=[], metavar="KEY",
                   help="config keys that split an algorithm's runs into separate rows (e.g. preset)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--include-unfinished", action="store_true", help="report unfinished runs at their last evaluation")
    p.add_argument("--title", default=None)
    p.add_argument("--format", default="svg", choices=["svg", "png"],
                   help="figure format: svg (offrl's renderer, no dependency; default) or png (matplotlib, the plot extra)")
    p.add_argument("--expert-normalized", action="store_true",
                   help="score = 100·(R − R_random)/(R_expert − R_random) of eval/return_mean, with the mean episode "
                        "returns of offrl/<env>/expert-v0 and random-v0 (imitation runs; each run's task is then its env, "
                        "so offline runs on the demos and online runs in the env share rows)")
    p.add_argument("--reference", default=None, metavar="FILE",
                   help='reference scores for a column of the per-task table: JSON {"label": ..., "note": ..., '
                        '"scores": {algo: {task: score}}} (e.g. docs/results/d4rl_reference.json)')
    p.add_argument("--gamma", type=float, default=None,
                   help="optimality-gap threshold (default 100 for normalized scores, 1 for a *rate metric such as "
                        "eval/success_rate, none for other metrics: the gap is then left out)")
    a = p.parse_args(argv)
    if a.reps < 1:
        raise OffrlError(f"--reps must be >= 1, got {a.reps}")
    res = build(a.paths, a.out, a.metric, a.split, a.reps, a.seed, a.include_unfinished, a.title, a.reference,
                a.expert_normalized, a.format, a.gamma)
    print(json.dumps({k: res[k] for k in ("out", "runs", "unfinished_left_out", "algorithms", "tasks")}))
    return 0
