"""Smoke runs of every helper in scripts/ through its command line, at a tiny size."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import SCRIPTED

from offrl.algos.sac import SAC, Config
from offrl.data import get_info, recipes

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, argv: list[str], capsys) -> list[str]:
    """Run scripts/<name> as ``__main__`` with ``argv``; returns its stdout lines."""
    old = sys.argv
    sys.argv = [name, *argv]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(SCRIPTS / name), run_name="__main__")
            raise SystemExit(0)  # scripts whose main() returns None
        assert e.value.code in (0, None)
    finally:
        sys.argv = old
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_every_script_is_covered():
    covered = {"ship_behaviour_policies.py", "dataset_card.py", "bench_collect.py", "bench_iql_baseline.py",
               "compare_iql_speed.py", "cdsa_sweep.py", "bench_ppo_loop.py", "residual_report.py",
               "unio4_ope.py"}
    assert {p.name for p in SCRIPTS.glob("*.py")} == covered


def _snapshot(run: Path, step: int, ret):
    torch.manual_seed(step)
    agent = SAC(Config(env="Hopper-v5", hidden=(32, 32), seed=5), 11, 3)
    info = {"env": "Hopper-v5", "step": step, "seed": 5}
    if ret is not None:
        info["return_mean"] = ret
    agent.save_policy(str(run / "snapshots" / f"step{step:08d}.pt"), info)


def test_ship_behaviour_policies_picks_expert_and_medium(tmp_path, capsys):
    run = tmp_path / "run"
    for step, ret in ((0, None), (10, 100.0), (20, 380.0), (30, 1200.0), (40, 900.0), (50, 420.0)):
        _snapshot(run, step, ret)
    out = tmp_path / "policies"
    lines = run_script("ship_behaviour_policies.py", ["--env", "hopper", "--run", str(run), "--episodes", "2",
                                                      "--out", str(out), "--candidates", "1"], capsys)
    rows = {r["level"]: r for r in map(json.loads, lines)}
    # expert = best evaluation (step 30); medium = the earlier snapshot closest to 1200 / 3 (step 20, not 50)
    assert (rows["random"]["step"], rows["medium"]["step"], rows["expert"]["step"]) == (0, 20, 30)
    for level in ("random", "medium", "expert"):
        ck = torch.load(out / f"hopper-{level}.pt", weights_only=True)
        assert ck["policy"]["level"] == level and ck["policy"]["behaviour_episodes"] == 2
        assert ck["policy"]["expert_eval_return"] == 1200.0
        src = torch.load(run / "snapshots" / f"step{rows[level]['step']:08d}.pt", weights_only=True)
        assert src["agent"].keys() == ck["agent"].keys()
        assert all(torch.equal(v, ck["agent"][k]) for k, v in src["agent"].items())
        agent, info = recipes.load_behaviour("hopper", level, path=out / f"hopper-{level}.pt")
        assert info["step"] == rows[level]["step"]
    index = json.loads((out / "policies.json").read_text())
    assert sorted(index) == ["hopper-expert.pt", "hopper-medium.pt", "hopper-random.pt"]
    assert index["hopper-medium.pt"]["step"] == 20 and index["hopper-expert.pt"]["eval_return_mean"] == 1200.0


def test_ship_expert_is_the_best_stochastic_candidate(tmp_path, capsys):
    run = tmp_path / "run"
    for step, ret in ((0, None), (10, 100.0), (20, 380.0), (30, 1200.0), (40, 900.0), (50, 420.0)):
        _snapshot(run, step, ret)
    out = tmp_path / "policies"
    run_script("ship_behaviour_policies.py", ["--env", "hopper", "--run", str(run), "--episodes", "2", "--out", str(out),
                                              "--candidates", "3"], capsys)
    info = torch.load(out / "hopper-expert.pt", weights_only=True)["policy"]
    cands = info["expert_candidates"]
    assert [c["step"] for c in cands] == [30, 40, 50]  # the three best evaluations, best first
    best = max(cands, key=lambda c: c["stochastic_return_mean"])
    assert info["step"] == best["step"] and info["behaviour_return_mean"] == best["stochastic_return_mean"]
    medium = torch.load(out / "hopper-medium.pt", weights_only=True)["policy"]
    assert medium["step"] < info["step"]


def test_ship_behaviour_policies_needs_an_earlier_snapshot(tmp_path, capsys):
    run = tmp_path / "run"
    _snapshot(run, 10, 500.0)
    _snapshot(run, 20, 100.0)
    sys.argv, old = ["ship", "--env", "hopper", "--run", str(run), "--out", str(tmp_path / "p"), "--candidates", "1",
                     "--episodes", "1"], sys.argv
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(SCRIPTS / "ship_behaviour_policies.py"), run_name="__main__")
    finally:
        sys.argv = old
    assert "no earlier snapshot" in str(e.value.code)


def test_dataset_card_reads_built_datasets(policies, tmp_path, capsys):
    recipes.build(get_info("offrl/hopper/medium-v0"), num_transitions=1500, progress=False)
    rows = {r["id"]: r for r in map(json.loads, run_script("dataset_card.py", ["--json"], capsys))}
    assert len(rows) == 15
    med = rows["offrl/hopper/medium-v0"]
    assert med["transitions"] == 1500 and med["episodes"] >= 1 and med["behaviour_step"] == 0
    assert rows["offrl/hopper/expert-v0"] == {"id": "offrl/hopper/expert-v0", "present": False}
    table = run_script("dataset_card.py", [], capsys)
    assert len(table) == 2 + 15 and "| `offrl/hopper/medium-v0` | 1,500 |" in "\n".join(table)
    run_script("dataset_card.py", ["--plot", str(tmp_path)], capsys)
    assert sorted(p.name for p in tmp_path.glob("*.svg")) == ["returns_hopper.svg"]  # only envs with data
    svg = (tmp_path / "returns_hopper.svg").read_text()
    assert 'data-label="medium-v0"' in svg and 'data-label="expert-v0"' not in svg


def test_bench_collect(policies, capsys):
    (row,) = run_script("bench_collect.py", ["--transitions", "600", "--num-envs", "2", "--envs", "halfcheetah"], capsys)
    r = json.loads(row)
    assert r["transitions_per_s"]["halfcheetah"] > 0 and r["policy"] == {"halfcheetah": "expert"}


def test_bench_iql_baseline_and_compare(capsys):
    (row,) = run_script("bench_iql_baseline.py", ["--steps", "3", "--warmup", "1", "--threads", "1"], capsys)
    assert json.loads(row)["updates_per_s"] > 0
    (row,) = run_script("compare_iql_speed.py", ["--rounds", "1", "--steps", "3", "--warmup", "1", "--threads", "1"],
                        capsys)
    r = json.loads(row)["threads_1"]
    assert r["baseline"] > 0 and r["offrl"] > 0 and r["ratio"] > 0


def test_cdsa_sweep(use_scripted, tmp_path, capsys):
    from offrl.cli import main

    base_dir, run_dir = tmp_path / "base", tmp_path / "cdsa"
    tiny = ["--hidden", "16", "16", "--batch-size", "16", "--eval-every", "0", "--eval-episodes", "1", "--progress", "False"]
    assert main(["train", "iql", "--dataset", "offrl/invertedpendulum/scripted-v0", "--steps", "20", *tiny,
                 "--run-dir", str(base_dir)]) == 0
    assert main(["train", "cdsa", "--checkpoint", str(base_dir / "checkpoint.pt"), "--steps", "20", *tiny,
                 "--compare-episodes", "1", "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    lines = run_script("cdsa_sweep.py", [str(run_dir / "checkpoint.pt"), "--act-sigma", "0.1", "0.3", "--episodes", "2"],
                       capsys)
    rows = [json.loads(x) for x in lines]
    assert len(rows) == 2 and all("base" in json.dumps(r) for r in rows)


def test_ship_random_fallback_is_the_runs_initial_actor(tmp_path, capsys):
    """A run without a step-0 snapshot: the random policy is rebuilt from the run's config and seed,
    and must equal the actor the run started from."""
    from offrl.algos import sac

    run = tmp_path / "run"
    sac.main(["--env", "Hopper-v5", "--total-steps", "300", "--learning-starts", "100", "--eval-every", "100",
              "--eval-episodes", "1", "--snapshots", "--seed", "7", "--run-dir", str(run), "--hidden", "32", "32",
              "--batch-size", "16", "--progress", "False"])
    capsys.readouterr()
    initial = torch.load(run / "snapshots" / "step00000000.pt", weights_only=True)
    (run / "snapshots" / "step00000000.pt").unlink()
    for step, ret in ((100, 10.0), (200, 50.0), (300, 30.0)):  # make step 200 the expert, step 100 the medium
        path = run / "snapshots" / f"step{step:08d}.pt"
        ck = torch.load(path, weights_only=True)
        ck["policy"]["return_mean"] = ret
        torch.save(ck, path)
    out = tmp_path / "policies"
    rows = {r["level"]: r for r in map(json.loads, run_script(
        "ship_behaviour_policies.py", ["--env", "hopper", "--run", str(run), "--episodes", "1", "--out", str(out), "--candidates", "1"], capsys))}
    assert (rows["random"]["step"], rows["medium"]["step"], rows["expert"]["step"]) == (0, 100, 200)
    shipped = torch.load(out / "hopper-random.pt", weights_only=True)
    assert shipped["agent"].keys() == initial["agent"].keys()
    assert all(torch.equal(v, shipped["agent"][k]) for k, v in initial["agent"].items())


def test_bench_ppo_loop_prints_rates(tmp_path, capsys):
    lines = run_script("bench_ppo_loop.py", ["--env", "InvertedPendulum-v5", "--total-steps", "4096", "--threads", "1",
                                             "--repeats", "1", "--setups", "gymnasium:1", "--workdir", str(tmp_path)],
                       capsys)
    summary = json.loads("\n".join(lines))  # one indented JSON document
    assert summary["env"] == "InvertedPendulum-v5" and summary["cleanrl"] is None
    assert summary["summary"]["threads=1"]["gymnasium:1"]["sps"] > 0


def _residual_run(root: Path, task: str, name: str, success: list[float], base: float | None, seconds: float):
    run = root / task / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"seed": int(name.rsplit("-s", 1)[1])}}))
    rows = [{"step": 1000 * (i + 1), "phase": "online", "eval/success_rate": v} for i, v in enumerate(success)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"total_seconds": seconds}
    if base is not None:
        summary["base"] = {"success_rate": base}
    (run / "summary.json").write_text(json.dumps(summary))


def test_residual_report_table_and_figures(tmp_path, capsys):
    runs = tmp_path / "runs"
    _residual_run(runs, "push", "residual-sac-s0", [0.5, 0.7], 0.40, 600)
    _residual_run(runs, "push", "residual-sac-s1", [0.6, 0.5], 0.50, 1200)
    _residual_run(runs, "push", "residual-td3-s1", [0.2, 0.2], 0.50, 600)  # the seed-1 base again: counted once
    _residual_run(runs, "push", "sac-demos-s0", [0.1, 0.3], None, 300)
    (runs / "push" / "residual-td3-s0").mkdir()  # unfinished (no summary): left out
    (runs / "push" / "residual-td3-s0" / "metrics.jsonl").write_text('{"step": 1000, "eval/success_rate": 1.0}\n')
    lines = run_script("residual_report.py", [str(runs), "--figures", str(tmp_path / "img")], capsys)
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:3]: line for line in lines[2:]}
    # by hand: final 70, 50 -> 60 ± 10; best 70, 60 -> 65 ± 5; mean 60, 55 -> 58 ± 2 (57.5 rounds to even); 15 min
    assert rows[("FetchPush-v4", "residual SAC", "2")].endswith("| 60 ± 10 | 65 ± 5 | 58 ± 2 | 15 |")
    assert rows[("FetchPush-v4", "frozen BC base", "2")].split("|")[4].strip() == "45 ± 5"
    assert rows[("FetchPush-v4", "residual TD3", "1")].endswith("| 20 | 20 | 20 | 10 |")
    assert rows[("FetchPush-v4", "SAC from scratch + demos", "1")].endswith("| 30 | 30 | 20 | 5 |")
    assert not any("PickAndPlace" in line for line in lines)
    svg = (tmp_path / "img" / "residual_push.svg").read_text()
    assert "frozen BC base" in svg and "SAC from scratch + demos" in svg
    assert not (tmp_path / "img" / "residual_pickandplace.svg").exists()


def test_residual_docs_table_is_the_committed_runs(capsys):
    """docs/residual_sac.md's success table is what the script computes from docs/results/runs/residual."""
    runs = SCRIPTS.parent / "docs" / "results" / "runs" / "residual"
    table = run_script("residual_report.py", [str(runs)], capsys) if runs.is_dir() else []
    if len(table) <= 2:  # only the header: no finished residual run is committed
        pytest.skip("no committed residual runs")
    doc = (SCRIPTS.parent / "docs" / "residual_sac.md").read_text()
    assert "\n".join(table) in doc


def test_results_sh_report_only_writes_the_results_page(use_scripted, tmp_path):
    """scripts/results.sh --report-only turns a sweep folder into docs/results.md: the fixed preamble
    (budget, the reduced-budget warning, the reference caveat) and the report's table, with figure
    links addressed from docs/. Run in a copy of the repo layout so the real docs/ is untouched."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "docs" / "results").mkdir(parents=True)
    shutil.copy(SCRIPTS / "results.sh", repo / "scripts" / "results.sh")
    shutil.copy(SCRIPTS.parent / "docs" / "results" / "d4rl_reference.json", repo / "docs" / "results")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SWEEP": str(sweep)}
    done = subprocess.run([sys.executable, "-m", "offrl.cli", "sweep", "--algos", "bc", "--datasets", SCRIPTED,
                           "--seeds", "0", "1", "--steps", "200", "--workers", "1", "--out", str(sweep),
                           "--set", "hidden=16 16", "batch_size=16", "eval_episodes=1", "eval_every=100"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rep = subprocess.run(["bash", str(repo / "scripts" / "results.sh"), "--report-only"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert rep.returncode == 0, rep.stderr
    page = (repo / "docs" / "results.md").read_text()
    assert page.startswith("# Results\n") and "**reduced budget**" in page and "different dataset" in page
    assert "10000 gradient steps per run" in page  # the cpu budget's preamble
    assert "0 of the grid's 189 runs have finished" in page  # the scripted runs are not in the grid
    row = [line for line in page.splitlines() if line.startswith("|") and "bc" in line and "scripted" in line]
    assert row, page
    assert [c.strip() for c in row[0].strip("|").split("|")][2:4] == ["2", "200"]  # two seeds, 200 steps
    links = [p for p in page.split("](")[1:] if p.split(")")[0].endswith((".svg", ".png"))]
    assert links and all(p.startswith("results/cpu/") for p in links)
    for p in links:
        assert (repo / "docs" / p.split(")")[0]).is_file()
    assert not (repo / "docs" / "results.md.tmp").exists()
    # a finished run at a grid position, started with the grid's flags, counts (the sweep's own dry run decides)
    run = sweep / "bc" / "offrl_hopper_medium-v0" / "seed0"
    shutil.copytree(next(sweep.glob("bc/*/seed0")), run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"].update(dataset="offrl/hopper/medium-v0", steps=10000, eval_every=5000, eval_episodes=10)
    (run / "config.json").write_text(json.dumps(cfg))
    rep = subprocess.run(["bash", str(repo / "scripts" / "results.sh"), "--report-only"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert rep.returncode == 0, rep.stderr
    assert "1 of the grid's 189 runs have finished" in (repo / "docs" / "results.md").read_text()


def test_unio4_study_dry_run_checks_every_flag(tmp_path):
    """scripts/unio4_study.sh --dry-run expands its three sweeps (Uni-O4, IQL fine-tuning, PPO: 3 tasks x 2
    seeds each), which checks every --set flag against each algorithm, and runs nothing."""
    env = {**os.environ, "OUT": str(tmp_path / "sweep")}
    done = subprocess.run(["bash", str(SCRIPTS / "unio4_study.sh"), "--dry-run"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("new")]
    assert len(lines) == 18, done.stdout
    assert sum("train unio4" in line and "--online-steps 50000" in line for line in lines) == 6
    assert sum("train iql" in line and "--online-steps 50000" in line and "--steps 50000" in line for line in lines) == 6
    assert sum("train ppo" in line and "--total-steps 50000" in line for line in lines) == 6
    assert not list((tmp_path / "sweep").glob("*/*/seed*/metrics.jsonl"))  # nothing ran


def _unio4_run(root: Path, dataset: str, seed: int, ope: list, real: list, ranking: dict, bc: float, member: int):
    run = root / "unio4" / dataset.replace("/", "_") / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": "unio4", "config": {"dataset": dataset, "seed": seed}}))
    history = [{"improve_step": 0, "ope": ope}, {"improve_step": 0, "member_returns": real}]
    unio4 = {"bc_normalized_score": bc, "offline_normalized_score": bc + 2, "online_normalized_score": bc + 4,
             "selected_member": member, "ope_ranking": ranking, "history": history}
    (run / "summary.json").write_text(json.dumps({"unio4": unio4}))


def test_unio4_ope_table_pools_the_pairs(tmp_path, capsys):
    runs = tmp_path / "runs"
    rank0 = {"policies": 3, "spearman": 0.5, "spearman_within_step": 0.5, "pairwise_accuracy": 2 / 3}
    rank1 = {"policies": 3, "spearman": 0.0, "spearman_within_step": 0.0, "pairwise_accuracy": 0.5}
    # by hand: (1,2,3) vs (10,30,20): pairs 01 and 02 agree, 12 not -> 2 of 3
    _unio4_run(runs, "d/one", 0, [1.0, 2.0, 3.0], [10.0, 30.0, 20.0], rank0, 30.0, 1)
    # (3,1,2) vs (5,5,9): pair 01 has equal returns (left out), 02 disagrees, 12 agrees -> 1 of 2
    _unio4_run(runs, "d/one", 1, [3.0, 1.0, 2.0], [5.0, 5.0, 9.0], rank1, 40.0, 2)
    (runs / "unio4" / "d_one" / "seed2").mkdir()  # unfinished: left out
    (runs / "unio4" / "d_one" / "seed2" / "config.json").write_text(json.dumps({"algo": "unio4", "config": {}}))
    out = tmp_path / "ope.json"
    lines = run_script("unio4_ope.py", [str(runs), "--json", str(out)], capsys)
    assert lines[2] == ("| d/one | 2 | 3 | 0.25 ± 0.25 | 0.25 ± 0.25 | 0.58 ± 0.08 | 35.0 ± 5.0 | 37.0 ± 5.0 | "
                        "39.0 ± 5.0 | s0: 1, s1: 2 |")
    assert lines[3].startswith("| all (2 runs, pooled pairs) |") and "| 0.60 (3/5) |" in lines[3]
    numbers = json.loads(out.read_text())
    assert numbers["pooled_pairwise_accuracy"] == {"agree": 3, "pairs": 5, "accuracy": 0.6}
    assert numbers["d/one"]["seeds"] == [0, 1]
