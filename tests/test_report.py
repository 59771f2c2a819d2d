"""`offrl report`: aggregates against hand computations, the seeded stratified bootstrap, tables
and figures from run directories, clear errors."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli_main

from offrl.errors import OffrlError
from offrl.report import aggregate, build, iqm, performance_profile, stratified_bootstrap

SVG = "{http://www.w3.org/2000/svg}"


def test_aggregates_by_hand():
    # 8 pooled values: drop floor(0.25 * 8) = 2 from each end -> mean of the middle 4
    assert iqm(np.array([9.0, 1.0, 5.0, 3.0, 100.0, 4.0, 6.0, -50.0])) == pytest.approx((3 + 4 + 5 + 6) / 4)
    # 5 values: floor(1.25) = 1 from each end
    assert iqm(np.array([1.0, 2.0, 3.0, 4.0, 50.0])) == pytest.approx(3.0)
    tasks = [np.array([10.0, 30.0]), np.array([50.0, 70.0, 90.0]), np.array([120.0])]
    assert aggregate("mean", tasks) == pytest.approx((20 + 70 + 120) / 3)
    assert aggregate("median", tasks) == pytest.approx(70.0)  # median of the task means 20, 70, 120
    # gap = 100 - mean(min(x, 100)) over the 6 pooled runs
    assert aggregate("optimality_gap", tasks) == pytest.approx(100 - (10 + 30 + 50 + 70 + 90 + 100) / 6)
    assert aggregate("iqm", tasks) == pytest.approx((30 + 50 + 70 + 90) / 4)  # 6 values, 1 cut per end


def test_stratified_bootstrap_is_the_documented_resampling():
    tasks = [np.array([10.0, 30.0, 20.0]), np.array([50.0, 90.0])]
    lo, hi = stratified_bootstrap(tasks, "mean", reps=500, seed=3)
    # the same draws, written out: per replicate, per task in order, integers(0, n_j, n_j)
    rng = np.random.default_rng(3)
    vals = []
    for _ in range(500):
        means = []
        for t in tasks:
            idx = rng.integers(0, t.size, t.size)
            means.append(sum(t[i] for i in idx) / t.size)
        vals.append(sum(means) / len(means))
    assert (lo, hi) == pytest.approx((np.percentile(vals, 2.5), np.percentile(vals, 97.5)))
    assert lo <= aggregate("mean", tasks) <= hi
    # resampling stays within a task: a task with one run never varies
    one = [np.array([42.0]), np.array([7.0])]
    assert stratified_bootstrap(one, "iqm", reps=50) == pytest.approx((24.5, 24.5))


def test_performance_profile_by_hand():
    tasks = [np.array([10.0, 60.0]), np.array([80.0, 90.0, 20.0, 30.0])]
    prof = performance_profile(tasks, np.array([0.0, 25.0, 70.0, 95.0]))
    # tau 25: task 1 -> 1/2, task 2 -> 3/4; tau 70: 0 and 2/4
    np.testing.assert_allclose(prof, [1.0, (0.5 + 0.75) / 2, (0.0 + 0.5) / 2, 0.0])


def _fake_run(root, algo, task, seed, scores, returns=None, finished=True, online=False, extra_cfg=None, o2o=None,
              env_id="X-v5"):
    d = root / f"{algo}-{task.replace('/', '_')}-{seed}"
    d.mkdir(parents=True)
    cfg = {"seed": seed, **(extra_cfg or {})}
    meta = {"algo": algo, "config": cfg, "dataset": None if online else {"id": task}, "env_id": task if online else env_id}
    (d / "config.json").write_text(json.dumps(meta))
    returns = returns or [10 * s for s in scores]
    with open(d / "metrics.jsonl", "w") as f:
        for i, (s, r) in enumerate(zip(scores, returns)):
            f.write(json.dumps({"step": 100 * (i + 1), "phase": "offline", "eval/normalized_score": s,
                                "eval/return_mean": r}) + "\n")
    if finished:
        best = int(np.argmax(returns))
        (d / "summary.json").write_text(json.dumps({"steps": 100 * len(scores), "updates": 100 * len(scores),
                                                     "seconds": 10.0, "final_normalized_score": scores[-1],
                                                     "best_normalized_score": scores[best], **(o2o or {})}))
    return d


def test_report_tables_figures_and_numbers(tmp_path):
    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate([(40.0, 70.0), (60.0, 90.0)]):
        _fake_run(runs, "iql", "d/one", seed, [10.0, a])
        _fake_run(runs, "iql", "d/two", seed, [20.0, b])
        _fake_run(runs, "bc", "d/one", seed, [5.0, a / 2])
    _fake_run(runs, "bc", "d/two", 0, [1.0, 2.0], finished=False)  # unfinished: left out
    res = build([str(runs)], str(tmp_path / "rep"), reps=200)
    assert res["runs"] == 6 and res["unfinished_left_out"] == 1
    assert res["algorithms"] == ["bc", "iql"] and res["tasks"] == ["d/one", "d/two"]
    t = res["table"]["iql|d/one"]
    assert (t["seeds"], t["last_mean"], t["last_std"]) == (2, 50.0, 10.0)
    assert t["curve_mean"] == pytest.approx(((10 + 40) / 2 + (10 + 60) / 2) / 2)
    assert res["aggregates"]["iql"]["mean"]["value"] == pytest.approx((50 + 80) / 2)
    assert res["aggregates"]["iql"]["iqm"]["value"] == pytest.approx((60 + 70) / 2)  # 4 values, 1 cut per end
    assert "bc|d/two" not in res["table"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| d/one | iql | 2 | 200 | 50.0 ± 10.0 |" in md
    for fig in ("profile.svg", "curves_d_one.svg", "curves_d_two.svg"):
        root = ET.parse(tmp_path / "rep" / fig).getroot()
        assert root.tag == f"{SVG}svg" and f"]({fig})" in md
    curves = [e.get("data-label") for e in ET.parse(tmp_path / "rep" / "curves_d_one.svg").getroot().iter(f"{SVG}polyline")]
    assert curves == ["bc", "iql"]
    with_unfinished = build([str(runs)], str(tmp_path / "rep2"), reps=10, include_unfinished=True)
    assert with_unfinished["table"]["bc|d/two"]["last_mean"] == 2.0


def test_best_follows_the_highest_return_and_split_keys(tmp_path):
    runs = tmp_path / "runs"
    # score and return disagree: best is the evaluation with the highest mean RETURN
    _fake_run(runs, "ppo", "Hopper-v5", 0, [30.0, 80.0, 50.0], returns=[900.0, 100.0, 200.0], online=True,
              extra_cfg={"preset": "cleanrl"})
    _fake_run(runs, "ppo", "Hopper-v5", 1, [30.0, 40.0, 50.0], online=True, extra_cfg={"preset": "props-baseline"})
    res = build([str(runs)], str(tmp_path / "rep"), reps=10, split=["preset"])
    assert res["algorithms"] == ["ppo[preset=cleanrl]", "ppo[preset=props-baseline]"]
    assert res["tasks"] == ["Hopper-v5"]
    assert res["table"]["ppo[preset=cleanrl]|Hopper-v5"]["best_mean"] == 30.0


def test_tasks_without_reference_scores_duplicates_split_typos_and_config_differences(tmp_path):
    runs = tmp_path / "runs"
    d = _fake_run(runs, "ppo", "InvertedPendulum-v5", 0, [None, None], returns=[12.0, 800.0], online=True)
    _fake_run(runs, "ppo", "InvertedPendulum-v5", 1, [None, None], returns=[20.0, 1000.0], online=True,
              extra_cfg={"lr": 1e-3})
    _fake_run(runs, "iql", "d/one", 0, [10.0, 50.0])
    # the same run twice (relative and absolute path): counted once
    res = build([str(runs), str(d), os.path.relpath(d)], str(tmp_path / "rep"), reps=10)
    assert res["runs"] == 3 and res["scored_by_return"] == ["InvertedPendulum-v5"]
    t = res["table"]["ppo|InvertedPendulum-v5"]
    assert (t["runs"], t["last_mean"], t["score"]) == (2, 900.0, "eval/return_mean")
    assert "ppo" not in res["aggregates"] and "iql" in res["aggregates"]  # returns are not on the 0-100 scale
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| InvertedPendulum-v5 (return) | ppo | 2 |" in md
    assert "the 2 runs of ppo on InvertedPendulum-v5 differ in lr" in md and "population std" in md
    split = build([str(runs)], str(tmp_path / "rep3"), reps=10, split=["lr"])  # only one ppo run's config has lr
    assert sorted(split["algorithms"]) == ["iql", "ppo", "ppo[lr=0.001]"]
    with pytest.raises(OffrlError, match=r"--split presett: no run's config has it"):
        build([str(runs)], str(tmp_path / "rep2"), split=["presett"])


def test_png_figures_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _fake_run(runs, "iql", "d/one", seed, [10.0, 50.0 + seed])
    build([str(runs)], str(tmp_path / "rep"), reps=10, fmt="png")
    md = (tmp_path / "rep" / "report.md").read_text()
    for fig in ("profile.png", "curves_d_one.png"):
        assert (tmp_path / "rep" / fig).read_bytes()[:4] == b"\x89PNG" and f"]({fig})" in md
    assert not list((tmp_path / "rep").glob("*.svg"))
    with pytest.raises(OffrlError, match="--format must be svg or png"):
        build([str(runs)], str(tmp_path / "rep2"), fmt="pdf")


def test_an_algorithm_keeps_its_colour_across_task_figures(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "bc", "d/one", 0, [1.0, 2.0])
    _fake_run(runs, "iql", "d/one", 0, [1.0, 3.0])
    _fake_run(runs, "iql", "d/two", 0, [1.0, 4.0])  # no bc here: iql is the first curve of this figure
    build([str(runs)], str(tmp_path / "rep"), reps=10)
    colour = {fig: {e.get("data-label"): e.get("stroke") for e in ET.parse(tmp_path / "rep" / fig).getroot().iter(f"{SVG}polyline")}
              for fig in ("curves_d_one.svg", "curves_d_two.svg")}
    assert colour["curves_d_one.svg"]["iql"] == colour["curves_d_two.svg"]["iql"] != colour["curves_d_one.svg"]["bc"]


def test_stacked_seed_runs_count_their_share_of_the_process_time(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        d = _fake_run(runs, "iql", "d/one", seed, [10.0, 50.0])
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "total_seconds": 40.0, "stacked_seeds": [0, 1]}))
    res = build([str(runs)], str(tmp_path / "rep"), reps=10)
    assert res["runtime"]["iql|d/one"]["seconds_mean"] == 20.0


def test_unfinished_counts_with_and_without_the_flag(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "iql", "d/one", 0, [10.0, 50.0])
    _fake_run(runs, "iql", "d/one", 1, [10.0], finished=False)  # unfinished, one evaluation
    e = runs / "no-eval"
    e.mkdir()
    (e / "config.json").write_text(json.dumps({"algo": "iql", "config": {"seed": 2}, "dataset": {"id": "d/one"}}))
    (e / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 1.0}) + "\n")  # unfinished, no evaluation
    assert build([str(runs)], str(tmp_path / "a"), reps=10)["unfinished_left_out"] == 2
    assert build([str(runs)], str(tmp_path / "b"), reps=10, include_unfinished=True)["unfinished_left_out"] == 1
    only = tmp_path / "only"
    only.mkdir()
    os.rename(e, only / "no-eval")
    with pytest.raises(OffrlError, match="no runs with an evaluation yet"):
        build([str(only)], str(tmp_path / "c"), include_unfinished=True)


def test_errors_are_clear(tmp_path, capsys):
    runs = tmp_path / "runs"
    d = _fake_run(runs, "iql", "d/one", 0, [10.0])
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 1.0}) + "\n")  # finished, no evaluation
    with pytest.raises(OffrlError, match="without evaluations"):
        build([str(runs)], str(tmp_path / "rep"))
    code, _, err = cli_main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "no such file")
    (tmp_path / "empty").mkdir()
    code, _, err = cli_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "no run directories")


def test_offline_to_online_table_and_reference_column(tmp_path):
    runs = tmp_path / "runs"
    for seed, (off, on, reg) in enumerate([(20.0, 30.0, 0.75), (40.0, 30.0, 0.65)]):
        _fake_run(runs, "iql", "d/one", seed, [off, on], o2o={"offline_normalized_score": off,
                                                            "online_normalized_score": on, "normalized_regret": reg})
    _fake_run(runs, "bc", "d/one", 0, [5.0, 6.0])  # offline only: not in the offline → online table
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"label": "paper (other data)", "note": "Reference: not our data.",
                               "scores": {"iql": {"d/one": 66.3}}}))
    res = build([str(runs)], str(tmp_path / "rep"), reps=50, reference=str(ref))
    assert list(res["o2o"]) == ["iql|d/one"]
    row = res["o2o"]["iql|d/one"]
    assert (row["offline_mean"], row["online_mean"], row["regret_mean"]) == (30.0, 30.0, pytest.approx(0.7))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| d/one | iql | 2 | 30.0 ± 10.0 | 30.0 ± 0.0 | 0.0 ± 10.0 | 0.700 ± 0.050 |" in md
    assert "| mean over evaluations | paper (other data) |" in md
    assert "| d/one | iql | 2 | 200 | 30.0 ± 0.0 |" in md and md.count(" 66.3 |") == 1 and "| – |" in md
    assert "Reference: not our data." in md
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(OffrlError, match="--reference"):
        build([str(runs)], str(tmp_path / "rep2"), reps=10, reference=str(bad))


def test_offline_to_online_scores_come_from_the_phase_lines(tmp_path):
    """A staged offline pipeline (Uni-O4): the report takes the score at the end of the last offline stage
    from the summary's phases, even where the summary's top-level keys name the first stage."""
    runs = tmp_path / "runs"
    phases = [{"name": "critic", "kind": "offline", "final_normalized_score": 1.0},
              {"name": "bc", "kind": "offline", "final_normalized_score": 30.0},
              {"name": "improve", "kind": "offline", "final_normalized_score": 36.0},
              {"name": "online", "kind": "online", "final_normalized_score": 50.0, "normalized_regret": 0.55}]
    _fake_run(runs, "unio4", "d/one", 0, [30.0, 50.0], o2o={"phases": phases, "offline_normalized_score": 1.0,
                                                          "online_normalized_score": 50.0, "normalized_regret": 0.55})
    res = build([str(runs)], str(tmp_path / "rep"), reps=10)
    row = res["o2o"]["unio4|d/one"]
    assert (row["offline_mean"], row["online_mean"], row["regret_mean"]) == (36.0, 50.0, 0.55)


def _phased_run(root, algo, task, seed, rows, phases, env_id):
    """A run whose metrics rows are (step, phase, normalized score) and whose summary has ``phases``."""
    d = root / f"{algo}-{task.replace('/', '_')}-{seed}"
    d.mkdir(parents=True)
    online_only = task == env_id
    meta = {"algo": algo, "config": {"seed": seed}, "dataset": None if online_only else {"id": task}, "env_id": env_id}
    (d / "config.json").write_text(json.dumps(meta))
    with open(d / "metrics.jsonl", "w") as f:
        for step, phase, score in rows:
            f.write(json.dumps({"step": step, "phase": phase, "eval/normalized_score": score,
                                "eval/return_mean": 10 * score}) + "\n")
    (d / "summary.json").write_text(json.dumps({"steps": rows[-1][0], "updates": rows[-1][0], "seconds": 1.0,
                                                 "final_normalized_score": rows[-1][2], "phases": phases}))


def test_online_phase_by_env_puts_fine_tuning_next_to_training_from_scratch(tmp_path):
    runs = tmp_path / "runs"
    off, on = {"name": "offline", "kind": "offline"}, {"name": "online", "kind": "online"}
    for seed, (h, a, b) in enumerate([(20.0, 30.0, 40.0), (40.0, 50.0, 40.0)]):
        # offline until step 200 (the hand-over evaluation at 200), online evaluations at 300 and 400
        _phased_run(runs, "iql", "d/hop", seed, [(100, "offline", 5.0), (200, "offline", h), (300, "online", a),
                                                (400, "online", b)], [off, on], "Hop-v5")
    ppo = {"name": "on-policy", "kind": "on-policy"}  # PPO's one phase
    for seed, (a, b) in enumerate([(10.0, 20.0), (30.0, 60.0)]):
        _phased_run(runs, "ppo", "Hop-v5", seed, [(100, "on-policy", a), (200, "on-policy", b)], [ppo], "Hop-v5")
    _phased_run(runs, "bc", "d/hop", 0, [(100, "offline", 7.0)], [off], "Hop-v5")  # no online phase: not shown
    res = build([str(runs)], str(tmp_path / "rep"), reps=10)
    rows = res["online_by_env"]
    assert sorted(rows) == ["iql|d/hop|Hop-v5", "ppo|from scratch|Hop-v5"]
    iql_row, ppo_row = rows["iql|d/hop|Hop-v5"], rows["ppo|from scratch|Hop-v5"]
    assert (iql_row["handover_mean"], iql_row["end_mean"]) == (30.0, 40.0)
    # regret over the evaluations after the hand-over: seed 0 (0.7 + 0.6)/2, seed 1 (0.5 + 0.6)/2
    assert iql_row["regret_mean"] == pytest.approx((0.65 + 0.55) / 2)
    assert ppo_row["handover_mean"] is None and ppo_row["end_mean"] == 40.0
    assert ppo_row["regret_mean"] == pytest.approx(((0.9 + 0.8) / 2 + (0.7 + 0.4) / 2) / 2)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| Hop-v5 | iql | d/hop | 2 | 30.0 ± 10.0 | 40.0 ± 0.0 | 10.0 ± 10.0 | 0.600 ± 0.050 |" in md
    assert "| Hop-v5 | ppo | from scratch | 2 | – | 40.0 ± 20.0 | – |" in md
    svg = ET.parse(tmp_path / "rep" / "online_Hop-v5.svg").getroot()
    assert sorted(e.get("data-label") for e in svg.iter(f"{SVG}polyline")) == ["iql (from d/hop)", "ppo (from scratch)"]
    assert "](online_Hop-v5.svg)" in md
    # a second env's rows stay in the one table (the figures follow it)
    _phased_run(runs, "iql", "d/walk", 0, [(100, "offline", 5.0), (200, "online", 9.0)], [off, on], "Walk-v5")
    _phased_run(runs, "ppo", "Walk-v5", 0, [(100, "on-policy", 3.0)], [ppo], "Walk-v5")
    build([str(runs)], str(tmp_path / "rep3"), reps=10)
    section = (tmp_path / "rep3" / "report.md").read_text().split("## Online phase, by environment")[1].split("## ")[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4 and section.index("| Walk-v5 | ppo |") < section.index("![")
    # the hand-over steps the curves are shifted by: the boundary where the online phase begins
    from offrl.report import read_run

    assert read_run(str(runs / "iql-d_hop-0"), "eval/normalized_score", []).handover == 200
    assert read_run(str(runs / "ppo-Hop-v5-0"), "eval/normalized_score", []).handover == 0
    assert read_run(str(runs / "bc-d_hop-0"), "eval/normalized_score", []).handover is None


def test_stage_table_shows_each_phase_end(tmp_path):
    runs = tmp_path / "runs"
    for seed, (bc, imp) in enumerate([(30.0, 34.0), (40.0, 38.0)]):
        phases = [{"name": "critic", "kind": "offline", "final_normalized_score": None},
                  {"name": "bc", "kind": "offline", "final_normalized_score": bc},
                  {"name": "improve", "kind": "offline", "final_normalized_score": imp},
                  {"name": "online", "kind": "online", "final_normalized_score": 50.0 + seed}]
        _phased_run(runs, "unio4", "d/hop", seed, [(10, "critic", 1.0), (20, "bc", bc), (30, "improve", imp),
                                                  (40, "online", 50.0 + seed)], phases, "Hop-v5")
    _phased_run(runs, "iql", "d/hop", 0, [(10, "offline", 1.0), (20, "online", 2.0)],
                [{"name": "offline", "kind": "offline", "final_normalized_score": 1.0},
                 {"name": "online", "kind": "online", "final_normalized_score": 2.0}], "Hop-v5")  # two phases: not shown
    res = build([str(runs)], str(tmp_path / "rep"), reps=10)
    assert list(res["stages"]) == ["unio4|d/hop"]
    row = res["stages"]["unio4|d/hop"]
    assert row["critic"] is None and row["bc"] == {"mean": 35.0, "std": 5.0} and row["online"]["mean"] == 50.5
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| task | algorithm | runs | critic | bc | improve | online |" in md
    assert "| d/hop | unio4 | 2 | – | 35.0 ± 5.0 | 36.0 ± 2.0 | 50.5 ± 0.5 |" in md


def test_expert_normalized_scores(tmp_path, monkeypatch, data_dirs):
    from offrl import report

    runs = tmp_path / "runs"
    _fake_run(runs, "ailboost", "HalfCheetah-v5", 0, [1.0, 2.0], returns=[100.0, 550.0], online=True)
    _fake_run(runs, "bc", "offrl/halfcheetah/expert-v0", 0, [1.0, 2.0], returns=[1000.0, 325.0], env_id="HalfCheetah-v5")
    with pytest.raises(OffrlError, match="needs offrl/halfcheetah/random-v0 for .*offrl datasets make"):
        build([str(runs)], str(tmp_path / "rep0"), reps=10, expert_normalized=True)
    seen = []

    def refs(task):
        seen.append(task)
        return 100.0, 1000.0

    monkeypatch.setattr(report, "imitation_references", refs)
    res = build([str(runs)], str(tmp_path / "rep"), reps=10, expert_normalized=True)
    assert res["table"]["ailboost|HalfCheetah-v5"]["last_mean"] == pytest.approx(50.0)  # (550 − 100) / 900
    # the offline run on the demos is grouped under its env, next to the online imitation run
    assert sorted(res["table"]) == ["ailboost|HalfCheetah-v5", "bc|HalfCheetah-v5"]
    assert res["table"]["bc|HalfCheetah-v5"]["last_mean"] == pytest.approx(25.0)
    assert res["table"]["bc|HalfCheetah-v5"]["best_mean"] == pytest.approx(100.0)  # the highest return
    assert seen == ["HalfCheetah-v5"]  # once per task
    plain = build([str(runs)], str(tmp_path / "rep1"), reps=10)  # without --expert-normalized: the dataset is the task
    assert sorted(plain["table"]) == ["ailboost|HalfCheetah-v5", "bc|offrl/halfcheetah/expert-v0"]
    assert "expert-normalized return" in (tmp_path / "rep" / "report.md").read_text()
    assert report.env_token("HalfCheetah-v5") == report.env_token("offrl/halfcheetah/medium-v0") == "halfcheetah"
    # O-DICE imitation's composite dataset ids (K expert episodes + the union, or the expert episodes alone)
    assert report.env_token("1xoffrl/halfcheetah/expert-v0+offrl/halfcheetah/random-v0") == "halfcheetah"
    assert report.env_token("10xoffrl/hopper/expert-v0") == "hopper"


def _rate_run(root, algo, task, seed, rates):
    d = root / f"{algo}-{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"algo": algo, "config": {"seed": seed}, "dataset": {"id": task},
                                               "env_id": "FetchPush-v4"}))
    with open(d / "metrics.jsonl", "w") as f:
        for i, r in enumerate(rates):
            f.write(json.dumps({"step": 100 * (i + 1), "eval/success_rate": r, "eval/return_mean": -50 + 50 * r,
                                "eval/normalized_score": None}) + "\n")
    (d / "summary.json").write_text(json.dumps({"steps": 100 * len(rates), "updates": 0, "seconds": 1.0}))


def test_success_rates_get_a_gap_at_one_and_raw_returns_none(tmp_path):
    runs = tmp_path / "runs"
    _rate_run(runs, "residual_sac", "push", 0, [0.40, 0.64])
    _rate_run(runs, "residual_sac", "push", 1, [0.50, 0.56])
    res = build([str(runs)], str(tmp_path / "rep"), metric="eval/success_rate", reps=20)
    assert res["gamma"] == 1.0
    # gap = 1 - mean(min(x, 1)) over the two last rates 0.64 and 0.56
    assert res["aggregates"]["residual_sac"]["optimality_gap"]["value"] == pytest.approx(1 - (0.64 + 0.56) / 2)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| push | residual_sac | 2 | 200 | 0.60 ± 0.04 |" in md and "optimality gap (γ = 1) ↓" in md
    # a raw return has no target level: no gap column, no gap number, unless --gamma gives one
    res = build([str(runs)], str(tmp_path / "rep2"), metric="eval/return_mean", reps=20)
    assert res["gamma"] is None and "optimality_gap" not in res["aggregates"]["residual_sac"]
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert "optimality gap" not in md.split("No optimality gap")[1] and "No optimality gap" in md
    res = build([str(runs)], str(tmp_path / "rep3"), metric="eval/return_mean", reps=20, gamma=0.0)
    assert res["aggregates"]["residual_sac"]["optimality_gap"]["value"] == pytest.approx(0.0 - (-18.0 + -22.0) / 2)
