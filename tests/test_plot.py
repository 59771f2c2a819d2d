"""`offrl plot`: curves read from metrics.jsonl (resume duplicates, grouping) and a valid SVG."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli_main

from offrl.plot import curves, histogram_counts, nice_ticks, render_histograms

SVG = "{http://www.w3.org/2000/svg}"


def _run(path, rows):
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _eval_rows(values, stds=None, every=10):
    return [{"step": every * (i + 1), "eval/return_mean": v, **({"eval/return_std": stds[i]} if stds else {})}
            for i, v in enumerate(values)]


def test_last_row_of_a_step_wins_and_std_companion_is_the_band(tmp_path):
    rows = _eval_rows([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) + [{"step": 20, "train/loss": 9.0},
                                                           {"step": 20, "eval/return_mean": 7.0, "eval/return_std": 1.0}]
    (c,) = curves([_run(tmp_path / "r", rows)], "eval/return_mean")
    np.testing.assert_array_equal(c.steps, [10, 20, 30])
    np.testing.assert_array_equal(c.values, [1.0, 7.0, 3.0])
    np.testing.assert_array_equal(c.band, [0.5, 1.0, 0.5])
    (c,) = curves([_run(tmp_path / "s", rows)], "eval/return_mean", band=False)
    assert c.band is None


def test_same_label_runs_are_averaged_over_common_steps(tmp_path):
    a = _run(tmp_path / "a", _eval_rows([1.0, 2.0, 3.0]))
    b = _run(tmp_path / "b", _eval_rows([3.0, 6.0]))
    c = _run(tmp_path / "c", _eval_rows([5.0]))
    mean, single = curves([a, b, c], "eval/return_mean", labels=["x", "x", "y"])
    assert (mean.label, mean.runs, single.label, single.runs) == ("x", 2, "y", 1)
    np.testing.assert_array_equal(mean.steps, [10, 20])
    np.testing.assert_allclose(mean.values, [2.0, 4.0])
    np.testing.assert_allclose(mean.band, [1.0, 2.0])  # population std of (1, 3) and (2, 6)


def test_nice_ticks_cover_the_range():
    for lo, hi in ((0.0, 1.0), (-37.0, 4123.0), (1e5, 1e6), (3.0, 3.0)):
        t = nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and 2 <= len(t) <= 12
        steps = np.diff(t)
        np.testing.assert_allclose(steps, steps[0])


def test_cli_writes_an_svg_with_one_line_per_label(tmp_path, capsys):
    a = _run(tmp_path / "iql", _eval_rows([10.0, 20.0, 30.0], [1.0, 2.0, 3.0]))
    b = _run(tmp_path / "td3_bc", _eval_rows([5.0, 25.0, 45.0]))
    out = tmp_path / "figs" / "curves.svg"
    code, stdout, _ = cli_main(["plot", a, b, "--out", str(out), "--title", "A < B"], capsys)
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert [(c["label"], c["points"], c["best"]) for c in summary["curves"]] == [("iql", 3, 30.0), ("td3_bc", 3, 45.0)]
    root = ET.parse(out).getroot()  # well-formed XML (the title's '<' is escaped)
    lines = [e for e in root.iter(f"{SVG}polyline") if e.get("class") == "curve"]
    assert [e.get("data-label") for e in lines] == ["iql", "td3_bc"]
    assert all(len(e.get("points").split()) == 3 for e in lines)
    assert len([e for e in root.iter(f"{SVG}polygon") if e.get("class") == "band"]) == 1  # only iql logs a std
    # higher values are drawn higher (smaller y): td3_bc's last point is above iql's
    last_y = [float(e.get("points").split()[-1].split(",")[1]) for e in lines]
    assert last_y[1] < last_y[0]
    assert not list(out.parent.glob("*.tmp"))


def test_png_is_the_same_figure_through_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from offrl.plot import plot

    runs = [_run(tmp_path / f"r{i}", _eval_rows([1.0 + i, 3.0, 2.0 + i])) for i in range(2)]
    res = plot(runs, str(tmp_path / "c.png"), labels=["a", "a"])
    data = (tmp_path / "c.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert res["curves"][0]["runs"] == 2 and res == {**plot(runs, str(tmp_path / "c.svg"), labels=["a", "a"]),
                                                     "out": str(tmp_path / "c.png")}
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("case", ["missing", "metric", "labels", "damaged", "suffix"])
def test_cli_bad_input_is_one_line(tmp_path, capsys, case):
    run = _run(tmp_path / "r", _eval_rows([1.0]))
    out = str(tmp_path / "o.svg")
    argv = {"missing": ["plot", str(tmp_path / "nope"), "--out", out],
            "metric": ["plot", run, "--metric", "eval/retrun_mean", "--out", out],
            "labels": ["plot", run, "--labels", "a", "b", "--out", out],
            "damaged": ["plot", run, "--out", out],
            "suffix": ["plot", run, "--out", str(tmp_path / "o.pdf")]}[case]
    if case == "damaged":
        with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
            f.write('{"step": 20, "eval/ret')
    code, _, err = cli_main(argv, capsys)
    assert_one_line_error(code, err)
    assert {"missing": "no metrics.jsonl", "metric": "did you mean: eval/return_mean", "labels": "one label per run",
            "damaged": "not a JSON line", "suffix": ".svg or .png"}[case] in err
    assert not (tmp_path / "o.svg").exists()


def test_histograms_one_row_per_distribution_with_exact_counts():
    values = np.array([0.0, 0.1, 0.1, 9.9, 10.0])
    edges = np.linspace(0.0, 10.0, 3)
    assert histogram_counts(values, edges).tolist() == [3, 2]  # the last bin includes its right edge
    assert histogram_counts(np.array([-5.0, 50.0]), edges).tolist() == [1, 1]  # outside: clipped in
    svg = render_histograms([("a", values), ("empty", np.array([])), ("b", np.full(4, 5.0))], "x", bins=2)
    groups = ET.fromstring(svg).findall(f"{SVG}g")
    assert [g.get("data-label") for g in groups] == ["a", "b"]  # empty rows are left out
    counts = [[int(r.get("data-count")) for r in g.findall(f"{SVG}rect")] for g in groups]
    assert sum(counts[0]) == 5 and sum(counts[1]) == 4
    tallest = [max(float(r.get("height")) for r in g.findall(f"{SVG}rect")) for g in groups]
    assert tallest[0] == pytest.approx(tallest[1])  # each row scaled to its own tallest bin
    with pytest.raises(Exception, match="nothing to plot"):
        render_histograms([("e", [])], "x")


def test_phase_hand_over_is_marked(tmp_path):
    from offrl.plot import render_svg

    rows = [{"step": s, "phase": "offline", "eval/return_mean": float(s)} for s in (10, 20, 30)]
    rows += [{"step": s, "phase": "online", "eval/return_mean": float(s)} for s in (40, 50)]
    (c,) = curves([_run(tmp_path / "o2o", rows)], "eval/return_mean")
    assert c.boundaries == ((30, "online"),)  # the last offline step, then the next phase's name
    root = ET.fromstring(render_svg([c], "eval/return_mean"))
    marks = [e for e in root.iter(f"{SVG}line") if e.get("class") == "phase"]
    assert len(marks) == 1
    texts = [e.text for e in root.iter(f"{SVG}text")]
    assert "online →" in texts
    (single,) = curves([_run(tmp_path / "one", _eval_rows([1.0, 2.0]))], "eval/return_mean")
    assert single.boundaries == ()
    root = ET.fromstring(render_svg([single], "eval/return_mean"))
    assert not [e for e in root.iter(f"{SVG}line") if e.get("class") == "phase"]
