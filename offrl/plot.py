"""Learning curves from runs' ``metrics.jsonl`` as a self-contained SVG (no plotting dependency), or
as PNG through matplotlib (``--out curves.png``; the ``plot`` extra) from the same curves.

    offrl plot runs/iql/hopper/seed0 runs/td3_bc/hopper/seed0 --metric eval/normalized_score --out curves.svg
    offrl plot runs/a/seed0 runs/a/seed1 runs/b/seed0 --labels A A B     # same label: mean ± std over runs

Each run is a run directory (or its ``metrics.jsonl``). A resumed run may log a step twice; the
last row wins. Runs that share a label are averaged at the steps they all have, with a band of ±
one standard deviation across them; a single run gets the band of the metric's ``*_std``
companion when it has one (``eval/return_mean`` → ``eval/return_std``). Phase hand-overs (the end
of the offline phase of an offline → online run) are drawn as dashed vertical lines.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from offrl.errors import OffrlError, suggest

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 44, 58


@dataclass
class Curve:
    label: str
    steps: np.ndarray
    values: np.ndarray
    band: np.ndarray | None = None  # ± half-width at each step
    runs: int = 1
    boundaries: tuple = ()  # (step, name of the phase that starts there) of each phase hand-over
    color: int | None = None  # index into PALETTE (None: the curve's position), so one label keeps its colour across figures


def metrics_file(run: str | os.PathLike) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise OffrlError(f"{run}: no metrics.jsonl found (expected a run directory or its metrics.jsonl)")
    return path


def read_metric(run: str | os.PathLike, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(steps, values, std or None) of ``metric`` in one run; the last row of a step wins."""
    path = metrics_file(run)
    std_key = metric[:-5] + "_std" if metric.endswith("_mean") else None
    values: dict[int, float] = {}
    stds: dict[int, float] = {}
    seen: set[str] = set()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise OffrlError(f"{path}:{n} is not a JSON line (damaged metrics file)") from None
            seen.update(row)
            if metric in row and row[metric] is not None and "step" in row:
                values[int(row["step"])] = float(row[metric])
                if std_key and row.get(std_key) is not None:
                    stds[int(row["step"])] = float(row[std_key])
    if not values:
        known = sorted(seen - {"step"})
        raise OffrlError(f"{path} has no '{metric}' values" + suggest(metric, known)
                         + (f" (it logs: {', '.join(known[:12])}{' …' if len(known) > 12 else ''})" if known else ""))
    steps = np.array(sorted(values))
    vals = np.array([values[s] for s in steps])
    std = np.array([stds[s] for s in steps]) if std_key and all(s in stds for s in steps) else None
    return steps, vals, std


def phase_boundaries(run: str | os.PathLike) -> list[tuple[int, str]]:
    """``(last step of a phase, name of the next phase)`` for each hand-over in a run's metrics
    (rows carry ``phase``); empty for a one-phase run."""
    ends: dict[str, int] = {}
    order: list[str] = []
    with open(metrics_file(run)) as f:
        for line in f:
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                continue  # read_metric reports damaged lines
            name = row.get("phase")
            if name is None or "step" not in row:
                continue
            if name not in ends:
                order.append(name)
            ends[name] = max(ends.get(name, 0), int(row["step"]))
    return [(ends[a], b) for a, b in zip(order, order[1:])]


def curves(runs: list[str], metric: str, labels: list[str] | None = None, band: bool = True) -> list[Curve]:
    """One curve per distinct label (default: each run's directory name, with algorithm and dataset
    for the default ``runs/<algo>/<dataset>/seed<N>-<time>`` layout)."""
    if labels is not None and len(labels) != len(runs):
        raise OffrlError(f"--labels needs one label per run: {len(runs)} runs, {len(labels)} labels")
    if labels is None:
        labels = [_run_name(r) for r in runs]
    groups: dict[str, list] = {}
    bounds: dict[str, set] = {}
    for run, label in zip(runs, labels):
        groups.setdefault(label, []).append(read_metric(run, metric))
        bounds.setdefault(label, set()).update(phase_boundaries(run))
    out = []
    for label, items in groups.items():
        marks = tuple(sorted(bounds[label]))
        if len(items) == 1:
            steps, vals, std = items[0]
            out.append(Curve(label, steps, vals, std if band else None, boundaries=marks))
            continue
        common = sorted(set.intersection(*(set(s.tolist()) for s, _, _ in items)))
        if not common:
            raise OffrlError(f"the runs labelled '{label}' share no logged step of {metric}")
        stack = np.stack([v[np.searchsorted(s, common)] for s, v, _ in items])
        out.append(Curve(label, np.array(common), stack.mean(0), stack.std(0) if band else None, runs=len(items),
                         boundaries=marks))
    return out


def _run_name(run: str) -> str:
    path = Path(run)
    if path.name == "metrics.jsonl":
        path = path.parent
    if path.name.startswith("seed") and len(path.parts) >= 3:  # runs/<algo>/<dataset>/seed0-<time>
        return "/".join(path.parts[-3:])
    return path.name or str(run)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def _fmt(x: float) -> str:
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:g}M"
    if ax >= 1e4:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def render_svg(items: list[Curve], metric: str, title: str | None = None, xlabel: str = "step") -> str:
    """The curves as an SVG document (axes, ticks, bands, lines, legend); ``metric`` labels the y axis."""
    xs = np.concatenate([c.steps for c in items]).astype(float)
    lows = [c.values - (c.band if c.band is not None else 0) for c in items]
    highs = [c.values + (c.band if c.band is not None else 0) for c in items]
    xt = nice_ticks(float(xs.min()), float(xs.max()))
    yt = nice_ticks(float(np.min(np.concatenate(lows))), float(np.max(np.concatenate(highs))))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x):
        return LEFT + (x - x0) / ((x1 - x0) or 1.0) * pw

    def py(y):
        return TOP + ph - (y - y0) / ((y1 - y0) or 1.0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
           'font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
    if title:
        out.append(f'<text x="{WIDTH / 2:.1f}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>')
    for t in yt:
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{px(t):.1f}" y="{TOP + ph + 18}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for step, name in sorted({b for c in items for b in c.boundaries}):  # phase hand-overs (offline → online)
        if x0 <= step <= x1:
            out.append(f'<line class="phase" x1="{px(step):.1f}" x2="{px(step):.1f}" y1="{TOP}" y2="{TOP + ph}" '
                       'stroke="#555" stroke-dasharray="5,4"/>')
            out.append(f'<text x="{px(step) + 4:.1f}" y="{TOP + ph - 6}" fill="#555">{escape(name)} →</text>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{TOP + ph / 2:.1f}" text-anchor="middle" transform="rotate(-90 16 {TOP + ph / 2:.1f})">'
               f'{escape(metric)}</text>')
    legend = []
    for i, c in enumerate(items):
        color = PALETTE[(i if c.color is None else c.color) % len(PALETTE)]
        if c.band is not None:
            upper = [f"{px(x):.1f},{py(y):.1f}" for x, y in zip(c.steps, c.values + c.band)]
            lower = [f"{px(x):.1f},{py(y):.1f}" for x, y in zip(c.steps[::-1], (c.values - c.band)[::-1])]
            out.append(f'<polygon class="band" points="{" ".join(upper + lower)}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(c.steps, c.values))
        out.append(f'<polyline class="curve" data-label="{escape(c.label)}" points="{pts}" fill="none" stroke="{color}" '
                   'stroke-width="2"/>')
        ly = TOP + 18 + 18 * i
        name = c.label + (f" (mean ± std of {c.runs} runs)" if c.runs > 1 else "")
        legend.append(f'<line x1="{LEFT + 12}" x2="{LEFT + 32}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>')
        legend.append(f'<text x="{LEFT + 38}" y="{ly}">{escape(name)}</text>')
    width = 50 + 7 * max(len(c.label) + (24 if c.runs > 1 else 0) for c in items)
    out.append(f'<rect x="{LEFT + 4}" y="{TOP + 4}" width="{width}" height="{18 * len(items) + 8}" fill="white" '
               'fill-opacity="0.85" stroke="#ccc"/>')
    out += legend
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_png(items: list[Curve], metric: str, out: str, title: str | None = None, xlabel: str = "step") -> None:
    """The same figure as :func:`render_svg` (the same curves, bands, phase marks and colours),
    drawn with matplotlib and written to ``out`` as PNG, atomically. Needs the ``plot`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OffrlError("PNG figures need matplotlib: pip install 'offrl[plot]' (or write .svg)") from None
    fig, ax = plt.subplots(figsize=(WIDTH / 100, HEIGHT / 100), dpi=100)
    marks: set = set()
    for i, c in enumerate(items):
        color = PALETTE[(i if c.color is None else c.color) % len(PALETTE)]
        label = c.label + (f" (mean ± std of {c.runs} runs)" if c.runs > 1 else "")
        ax.plot(c.steps, c.values, color=color, linewidth=2, label=label)
        if c.band is not None:
            ax.fill_between(c.steps, c.values - c.band, c.values + c.band, color=color, alpha=0.15, linewidth=0)
        marks.update(c.boundaries)
    for step, name in sorted(marks):
        ax.axvline(step, color="#555", linestyle="--", linewidth=1)
        ax.annotate(f"{name} →", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(4, -14),
                    textcoords="offset points", color="#555", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(True, color="#e5e5e5")
    ax.legend(loc="best", fontsize=9, framealpha=0.85)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = out + ".tmp.png"
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    except OSError as e:
        raise OffrlError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def write_figure(out: str, items: list[Curve], metric: str, title: str | None = None, xlabel: str = "step") -> None:
    """``out`` by its extension: .svg (offrl's renderer, no dependency) or .png (matplotlib, the ``plot`` extra)."""
    if out.endswith(".png"):
        render_png(items, metric, out, title, xlabel)
    elif out.endswith(".svg"):
        write_svg(out, render_svg(items, metric, title, xlabel=xlabel))
    else:
        raise OffrlError(f"--out must be an .svg or .png file, got {out}")


def write_svg(out: str, svg: str) -> None:
    """Write ``svg`` to ``out`` atomically (a temporary file renamed into place)."""
    if not out.endswith(".svg"):
        raise OffrlError(f"--out must be an .svg file, got {out}")
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write(svg)
        os.replace(tmp, out)
    except OSError as e:
        raise OffrlError(f"cannot write {out}: {e.strerror or e}") from None


def plot(runs: list[str], out: str, metric: str = "eval/return_mean", labels: list[str] | None = None,
         title: str | None = None, band: bool = True) -> dict:
    """Write the figure to ``out`` (.svg, or .png with matplotlib; atomically); returns a summary of what was drawn."""
    if not out.endswith((".svg", ".png")):
        raise OffrlError(f"--out must be an .svg or .png file, got {out}")
    items = curves(runs, metric, labels, band)
    write_figure(out, items, metric, title)
    return {"out": out, "metric": metric, "curves": [
        {"label": c.label, "runs": c.runs, "points": len(c.steps), "last_step": int(c.steps[-1]),
         "last": float(c.values[-1]), "best": float(c.values.max())} for c in items]}


ROW_HEIGHT = 72


def histogram_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins ``edges`` (the last bin closed; values outside are clipped in)."""
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]


def render_histograms(rows: list[tuple[str, np.ndarray]], xlabel: str, title: str | None = None,
                      bins: int = 50) -> str:
    """Small multiples: one histogram row per ``(label, values)``, on a shared x axis. Each row's
    bars are scaled to that row's tallest bin; its label gives the count and mean ± std."""
    rows = [(label, np.asarray(v, dtype=np.float64)) for label, v in rows if len(v)]
    if not rows:
        raise OffrlError("nothing to plot: every distribution is empty")
    allv = np.concatenate([v for _, v in rows])
    xt = nice_ticks(float(allv.min()), float(allv.max()))
    x0, x1 = xt[0], xt[-1]
    edges = np.linspace(x0, x1, bins + 1)
    pw = WIDTH - LEFT - RIGHT
    height = TOP + ROW_HEIGHT * len(rows) + BOTTOM

    def px(x):
        return LEFT + (x - x0) / ((x1 - x0) or 1.0) * pw

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           'font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{WIDTH / 2:.1f}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>')
    bottom = TOP + ROW_HEIGHT * len(rows)
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{bottom}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{px(t):.1f}" y="{bottom + 18}" text-anchor="middle">{_fmt(t)}</text>')
    for i, (label, v) in enumerate(rows):
        color = PALETTE[i % len(PALETTE)]
        base = TOP + ROW_HEIGHT * (i + 1) - 4
        counts = histogram_counts(v, edges)
        scale = (ROW_HEIGHT - 24) / max(int(counts.max()), 1)
        out.append(f'<g class="hist" data-label="{escape(label)}" data-n="{len(v)}">')
        for k, c in enumerate(counts):
            if c:
                x, w = px(edges[k]), px(edges[k + 1]) - px(edges[k])
                out.append(f'<rect class="bar" data-count="{int(c)}" x="{x:.1f}" y="{base - c * scale:.1f}" '
                           f'width="{max(w - 0.5, 0.5):.1f}" height="{c * scale:.1f}" fill="{color}"/>')
        out.append("</g>")
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{base}" y2="{base}" stroke="#999"/>')
        out.append(f'<text x="{LEFT + 6}" y="{base - ROW_HEIGHT + 20}">{escape(label)} · n = {len(v):,} · '
                   f'{v.mean():.1f} ± {v.std():.1f}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{bottom - TOP}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{height - 14}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
