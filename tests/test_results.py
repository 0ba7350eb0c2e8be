"""make results: statistics, resume rules, and a tiny grid whose RESULTS.md is recomputed from its cells."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prost_lightning.errors import ConfigError
from prost_lightning.metrics import scenario_goal_completion
from prost_lightning.results import (
    CELL_FILE,
    EPISODES_FILE,
    ResultsError,
    cell_finished,
    eval_settings,
    git_commit,
    load_results_spec,
    progress_line,
    results,
)
from prost_lightning.results_markdown import reading, what_this_shows
from prost_lightning.results_report import bootstrap, estimate, scenario_matrix
from prost_lightning.sweep import expand_grid
from prost_lightning.trajectory import read_trajectories

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "experiments" / "results.yaml"


# -- statistics -----------------------------------------------------------------------------------

def test_bootstrap_of_a_constant_is_the_constant_and_a_paired_self_difference_is_zero():
    ones = np.ones((3, 10))
    assert bootstrap([ones], [1.0], np.random.default_rng(0), 500) == (100.0, 100.0)
    mixed = np.random.default_rng(1).integers(0, 2, size=(3, 30)).astype(float)
    assert bootstrap([mixed, mixed], [1.0, -1.0], np.random.default_rng(0), 500) == (0.0, 0.0)


def test_estimate_is_the_mean_over_seeds_and_its_interval_is_seeded_and_contains_it():
    matrix = np.array([[1, 0, 0, 1, 0, 0], [1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=float)
    first = estimate([matrix], [1.0], 2000, 0, "x")
    assert first["value"] == pytest.approx(100 * np.mean([2 / 6, 3 / 6, 1 / 6]))
    assert first["low"] < first["value"] < first["high"]
    assert estimate([matrix], [1.0], 2000, 0, "x") == first  # same seed and label: same interval
    wide = estimate([matrix[:, :3]], [1.0], 2000, 0, "x")
    assert wide["high"] - wide["low"] > 0


def test_a_clear_paired_difference_excludes_zero_and_a_noisy_one_does_not():
    rng = np.random.default_rng(3)
    better = (rng.random((3, 45)) < 0.6).astype(float)
    worse = (rng.random((3, 45)) < 0.1).astype(float)
    clear = estimate([better, worse], [1.0, -1.0], 2000, 0, "clear")
    assert clear["low"] > 0 and reading(clear) == "better"
    same = estimate([better, (rng.random((3, 45)) < 0.6).astype(float)], [1.0, -1.0], 2000, 0, "same")
    assert same["low"] < 0 < same["high"] and reading(same) == "no difference shown"
    assert reading({"value": -3.0, "low": -5.0, "high": -1.0}, lower_is_better=True) == "better"


def test_scenario_matrix_needs_every_task_of_the_scenario():
    tasks = ["ab_1", "ab_2", "cd_1"]
    matrix = np.array([[1, 0, 1], [1, 1, 0]], dtype=float)
    assert scenario_matrix(tasks, matrix).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def _comparison(low: float, high: float, value: float) -> dict:
    e = {"value": value, "low": low, "high": high}
    return {"claim": "C1", "a": "single_progressive", "b": "single_full", "seeds": [0, 1, 2],
            "tgc": {"all": e}, "sgc": e, "failed_in_subtask": {"value": 0.0, "low": -1.0, "high": 1.0}}


def test_what_this_shows_never_claims_a_difference_the_interval_does_not_show():
    runs = [{"name": "single_progressive", "system": "single", "tgc": 12.0, "seeds": [0, 1, 2]},
            {"name": "single_full", "system": "single", "tgc": 8.0, "seeds": [0, 1, 2]}]
    result = {"runs": runs, "comparisons": [_comparison(-2.0, 10.0, 4.0)], "pareto_front": ["single_progressive"],
              "x_axis": "flops"}
    text = "\n".join(what_this_shows(result))
    assert "C1 (single): ProST − full = +4.0 [-2.0, +10.0]" in text and "not supported at this size" in text
    assert "C2 (single)" in text and "C2 not supported" in text
    result["comparisons"] = [_comparison(1.0, 7.0, 4.0)]
    assert "supported at this size." in "\n".join(what_this_shows(result))
    result["comparisons"] = [_comparison(-7.0, -1.0, -4.0)]
    assert "contradicted" in "\n".join(what_this_shows(result))
    zero = {**result, "runs": [{**r, "tgc": 0.0} for r in runs]}
    assert "none of the claims is supported" in "\n".join(what_this_shows(zero))
    zero["subtask_error_rates"] = {"single · progressive": {"1": 0.2, "2": 0.6}, "single · full": {"3": 0.5}}
    text = "\n".join(what_this_shows(zero))
    assert "single · progressive inside sub-task 2 (60.0 % of its episodes); single · full inside sub-task 3" in text
    assert "not that one schedule is better" in text


# -- the grid, its file and resuming --------------------------------------------------------------

@pytest.fixture()
def spec(monkeypatch):
    monkeypatch.chdir(ROOT)
    return load_results_spec(GRID)


def test_the_default_grid_is_systems_by_schedules_by_three_seeds(spec):
    points = expand_grid(spec, "cpu")
    assert len(points) == 12 and {p.seed for p in points} == {0, 1, 2}
    cell = next(p for p in points if p.name == "planner_executor_full_s2")
    assert cell.overrides == {"data.schedule.name": "full", "seed_everything": 2, "data.seed": 2, "data.schedule.seed": 2}
    ablations = [p for p in expand_grid(spec, "cpu", ablations=True) if p.variant]
    assert len(ablations) == 5 and {p.seed for p in ablations} == {0}
    assert eval_settings(spec, "cpu")["splits"] == ["test_normal", "test_challenge"]
    assert "max_tasks" not in eval_settings(spec, "cpu")  # the default evaluates every task
    tiny = eval_settings(spec, "tiny")
    assert tiny["max_tasks"] == 2 and tiny["limits"]["max_new_tokens"] == 16 and tiny["prompt_dir"]


def test_every_cell_has_the_same_step_budget(spec):
    overrides = spec["sizes"]["cpu"]["overrides"]
    assert overrides["trainer.max_epochs"] * overrides["trainer.limit_train_batches"] == 60
    assert not any(k.startswith("data.schedule.name") for k in overrides)


def test_bad_results_files_name_the_key(tmp_path):
    data = yaml.safe_load(GRID.read_text())
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "seeds"}))
    with pytest.raises(ResultsError, match="'seeds' is missing"):
        load_results_spec(bad)
    bad.write_text(yaml.safe_dump({**data, "eval": {**data["eval"], "split": ["dev"]}}))
    with pytest.raises(ResultsError, match=r"eval: unknown key\(s\) \['split'\]"):
        load_results_spec(bad)


def test_progress_line_estimates_from_finished_cells():
    assert "no time estimate" in progress_line([], [("a", "single"), ("b", "single")])
    done = [{"system": "single", "wall_s": 1200.0}, {"system": "planner_executor", "wall_s": 600.0}]
    line = progress_line(done, [("c", "single"), ("d", "planner_executor"), ("e", "other")])
    # 20 min + 10 min for the systems measured, the mean of all (15 min) for the unmeasured one
    assert "2 of 5 cells finished; remaining: c, d, e" in line
    assert "about 45 min left (min per cell: other 15.0, planner_executor 10.0, single 20.0)" in line
    assert progress_line(done, []) == "all 2 cells finished"


def test_dry_run_lists_every_cell_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = results(grid=str(GRID), size="cpu", out=str(tmp_path / "runs"), results_md=str(tmp_path / "R.md"),
                  dry_run=True)
    assert [c["status"] for c in out["cells"]] == ["planned"] * 12 and out["results_md"] is None
    assert not any(tmp_path.iterdir())



def test_an_unwritable_results_md_is_refused_before_any_cell_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"--results_md .*a-file is a file"):
        results(grid=str(GRID), size="cpu", out=str(tmp_path / "runs"), results_md=str(blocker / "R.md"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]

# -- the tiny grid end to end ---------------------------------------------------------------------

def _table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under ``## heading`` as {column: cell}."""
    lines = []
    for line in markdown.split(f"## {heading}", 1)[1].splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:  # the first table ends at its first non-table line
            break
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)) for line in lines[2:]]


def _value(cell: str) -> float:
    return float(re.match(r"[-+]?[\d.]+", cell).group(0))


@pytest.mark.appworld
def test_tiny_grid_end_to_end_then_resumes_and_its_results_match_the_cells(mini_world_root, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = yaml.safe_load(GRID.read_text())
    data.update(systems={"single": data["systems"]["single"]}, seeds=[0, 1], collect={"splits": []},
                trajectories=str(ROOT / "tests" / "fixtures" / "trajectories.jsonl"))  # no collection: seconds
    data["sizes"]["tiny"]["eval"]["max_tasks"] = 1
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(data))
    target = tmp_path / "RESULTS.md"
    kwargs = dict(grid=str(grid), size="tiny", out=str(tmp_path / "runs"), root=str(mini_world_root),
                  results_md=str(target))
    first = results(**kwargs)
    assert [c["status"] for c in first["cells"]] == ["done"] * 4
    markdown = target.read_text()

    cells = {}
    for folder in sorted((tmp_path / "runs" / "tiny").iterdir()):
        if (folder / CELL_FILE).is_file():
            episodes = read_trajectories(folder / EPISODES_FILE)
            successes = {t.task_id: bool(t.outcome.success) for t in episodes}
            cells[folder.name] = {"tgc": 100 * sum(successes.values()) / len(successes),
                                  "sgc": scenario_goal_completion(successes), "episodes": episodes}
    assert set(cells) == {"single_progressive_s0", "single_progressive_s1", "single_full_s0", "single_full_s1"}
    assert all(len(c["episodes"]) == 2 for c in cells.values())  # one task of each split

    by_cell = {row["cell"]: row for row in _table(markdown, "Cells")}
    for name, cell in cells.items():
        assert _value(by_cell[name]["TGC"]) == pytest.approx(cell["tgc"], abs=0.051)
    tgc = {row["configuration"]: row for row in _table(markdown, "Task goal completion")}
    sgc = {row["configuration"]: row for row in _table(markdown, "Scenario goal completion")}
    cost = {row["configuration"]: row for row in _table(markdown, "Cost per task")}
    for config in ("single_progressive", "single_full"):
        members = [c for n, c in cells.items() if n.startswith(config + "_s")]
        assert _value(tgc[config]["overall"]) == pytest.approx(np.mean([c["tgc"] for c in members]), abs=0.051)
        assert _value(sgc[config]["overall"]) == pytest.approx(np.mean([c["sgc"] for c in members]), abs=0.051)
        low, high = map(float, re.search(r"\[([-\d.]+), ([-\d.]+)\]", tgc[config]["overall"]).groups())
        assert low <= _value(tgc[config]["overall"]) <= high
        tokens = [sum(t.usage.prompt_tokens.values()) + sum(t.usage.completion_tokens.values())
                  for c in members for t in c["episodes"]]
        assert float(cost[config]["tokens/task"]) == pytest.approx(np.mean(tokens), abs=0.51)
    differences = _table(markdown, "Paired differences")
    assert [row["a − b"] for row in differences] == ["single_progressive − single_full"]
    assert "What this shows" in markdown and "**Commit**" in markdown and "**Machine**" in markdown
    png = (tmp_path / "results" / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 200_000
    assert json.loads((tmp_path / "results" / "results.json").read_text())["pareto_front"]

    # the report alone rewrites the same figures; a torn cell is planned again, finished ones are kept
    results(**kwargs, report_only=True)
    rewritten = target.read_text()
    for heading in ("Task goal completion", "Scenario goal completion", "Paired differences", "Cells"):
        assert _table(rewritten, heading) == _table(markdown, heading)
    settings = eval_settings(load_results_spec(grid), "tiny")
    torn = tmp_path / "runs" / "tiny" / "single_full_s1"
    (torn / EPISODES_FILE).write_text((torn / EPISODES_FILE).read_text().splitlines()[0] + "\n")
    assert cell_finished(torn, str(mini_world_root), settings) is None
    plan = results(**kwargs, dry_run=True)
    assert [c["status"] for c in plan["cells"]] == ["finished earlier"] * 3 + ["planned"]
    assert json.loads((torn.parent / "single_full_s0" / CELL_FILE).read_text())["commit"]  # provenance per cell
    results(**kwargs, report_only=True)  # a partial grid's report says which cells it lacks
    assert "**Unfinished grid**: 3 of 4 cells; not run yet: single_full_s1." in target.read_text()


def _hand_made_cell(folder: Path, config: str, schedule: str, seed: int, solved: set[str], tasks: dict) -> None:
    from prost_lightning.trajectory import (
        Conversation,
        Message,
        Outcome,
        SubTask,
        Trajectory,
        Usage,
        write_trajectories,
    )

    conversation = Conversation(role="agent", messages=[Message(role="user", content="task"),
                                                         Message(role="assistant", content="a", subtask=1)])

    episodes = [Trajectory(task_id=t, system="single", instruction="do it", difficulty=1 + i % 2,
                           subtasks=[SubTask(index=1, description="a"), SubTask(index=2, description="b")],
                           conversations=[conversation], outcome=Outcome(success=t in solved,
                                                             failed_subtask=None if t in solved else 1 + i % 2),
                           usage=Usage(llm_calls={"agent": 2}, prompt_tokens={"agent": 100 + i},
                                       completion_tokens={"agent": 10}, flops=1e9, env_steps=1, wall_time_s=2.0))
                for i, t in enumerate(t for ids in tasks.values() for t in ids)]
    write_trajectories(folder / EPISODES_FILE, episodes)
    (folder / "point.yaml").write_text(yaml.safe_dump({"model": {"roles": ["agent"], "base_model": "tiny"},
                                                       "data": {"schedule": {"name": schedule}, "mode": "slice"}}))
    (folder / CELL_FILE).write_text(json.dumps({
        "cell": folder.name, "config": config, "system": "single", "schedule": schedule, "variant": None,
        "seed": seed, "base_model": "tiny", "splits": list(tasks), "tasks": tasks,
        "fit_s": 1.0, "eval_s": 2.0, "wall_s": 3.0}))


def test_results_md_figures_equal_hand_computed_ones_on_known_cells(tmp_path, monkeypatch):
    """Cells with known outcomes (no training): every TGC/SGC figure and difference is checked by hand."""
    from prost_lightning.results_report import write_results

    monkeypatch.chdir(ROOT)
    tasks = {"test_normal": ["aa_1", "aa_2", "bb_1", "bb_2"], "test_challenge": ["cc_1", "cc_2"]}
    solved = {("single_progressive", 0): {"aa_1", "aa_2", "bb_1", "cc_1"},
              ("single_progressive", 1): {"aa_1", "aa_2", "cc_1", "cc_2"},
              ("single_full", 0): {"aa_1"}, ("single_full", 1): {"aa_1", "bb_2"}}
    folders = []
    for (config, seed), ok in solved.items():
        folder = tmp_path / "cells" / f"{config}_s{seed}"
        _hand_made_cell(folder, config, config.split("_")[1], seed, ok, tasks)
        folders.append(folder)
    spec = load_results_spec(GRID)
    target = tmp_path / "RESULTS.md"
    result = write_results(folders, target, spec=spec, size="cpu", command="prost results (test)", invocation_s=1.0)
    markdown = target.read_text()
    tgc = {r["configuration"]: r for r in _table(markdown, "Task goal completion")}
    sgc = {r["configuration"]: r for r in _table(markdown, "Scenario goal completion")}
    # progressive: seed 0 solves 4/6, seed 1 4/6; full: 1/6 and 2/6
    assert _value(tgc["single_progressive"]["overall"]) == pytest.approx(66.7, abs=0.05)
    assert _value(tgc["single_full"]["overall"]) == pytest.approx(25.0, abs=0.05)
    assert _value(tgc["single_progressive"]["test_challenge"]) == pytest.approx(75.0, abs=0.05)
    # SGC: progressive seed 0 {aa} of {aa, bb, cc}, seed 1 {aa, cc}; full: none, none
    assert _value(sgc["single_progressive"]["overall"]) == pytest.approx(50.0, abs=0.05)
    assert _value(sgc["single_full"]["overall"]) == pytest.approx(0.0, abs=0.05)
    diff = _table(markdown, "Paired differences")[0]
    assert _value(diff["ΔTGC"]) == pytest.approx(41.7, abs=0.05) and diff["seeds"] == "2"
    low, high = map(float, re.search(r"\[([-+\d.]+), ([-+\d.]+)\]", diff["ΔTGC"]).groups())
    assert low <= 41.7 <= high
    errors = {r["system · schedule"]: r for r in _table(markdown, "Sub-task error rates")}
    # full fails 9 of 12 episodes; task i fails at sub-task 1 + i % 2
    assert errors["single · full"]["any sub-task"] == "75.0%"
    assert result["cells"][0]["tgc"] == pytest.approx(100 * 4 / 6)
    assert "C1 (single): ProST − full = +41.7" in markdown
    assert (tmp_path / "results" / "pareto.png").read_bytes().startswith(b"\x89PNG")


def test_the_header_names_the_commits_cells_ran_on_when_they_differ_from_the_report():
    from prost_lightning.results_markdown import _cell_commits

    same = [{"cell": "a_s0", "commit": "abc1234"}, {"cell": "a_s1", "commit": "abc1234"}]
    assert _cell_commits(same, "abc1234") == ""
    mixed = [{"cell": "a_s0", "commit": "abc1234"}, {"cell": "a_s1"}, {"cell": "b_s0", "commit": "def5678"}]
    line = _cell_commits(mixed, "def5678")
    assert "abc1234 (a_s0)" in line and "an unrecorded commit (a_s1)" in line and "def5678 (b_s0)" in line


def test_the_committed_results_md_parses_and_agrees_with_its_results_json():
    """RESULTS.md at the root is the command's output: its tables parse and equal results/results.json."""
    markdown_path, json_path = ROOT / "RESULTS.md", ROOT / "results" / "results.json"
    if not markdown_path.is_file():
        pytest.skip("no committed RESULTS.md yet")
    markdown = markdown_path.read_text()
    result = json.loads(json_path.read_text())
    assert "Written by `prost results`" in markdown and f"**Commit**: {result['header']['commit']}" in markdown
    tgc = {row["configuration"]: row for row in _table(markdown, "Task goal completion")}
    assert set(tgc) == {run["name"] for run in result["runs"]}
    for run in result["runs"]:
        assert _value(tgc[run["name"]]["overall"]) == pytest.approx(run["goal"]["tgc"]["all"]["value"], abs=0.051)
        assert int(tgc[run["name"]]["seeds"]) == len(run["seeds"])
    cells = {row["cell"]: row for row in _table(markdown, "Cells")}
    assert set(cells) == {c["cell"] for c in result["cells"]}
    for cell in result["cells"]:
        assert _value(cells[cell["cell"]]["TGC"]) == pytest.approx(cell["tgc"], abs=0.051)
    assert (ROOT / "results" / "pareto.png").read_bytes().startswith(b"\x89PNG")


def test_the_wandb_results_sweep_runs_every_cell_of_the_grid_once(spec, tmp_path):
    """Its `only` values are the cpu grid's cells, and what an agent runs parses as `prost results`."""
    sweep = yaml.safe_load((ROOT / "experiments" / "wandb_results_sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["command"][-1] == "${args}" and "results" in sweep["command"]
    cells = [yaml.safe_load(v)[0] for v in sweep["parameters"]["only"]["values"]]
    assert sorted(cells) == sorted(p.name for p in expand_grid(spec, "cpu", False))
    args = [a for a in sweep["command"][2:-1]] + [f"--only={sweep['parameters']['only']['values'][0]}"]
    out = subprocess.run([sys.executable, "-m", "prost_lightning.cli", *args, "--dry_run", "true",
                          "--out", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"[dry run] {cells[0]}:" in out.stdout


def test_git_commit_marks_changed_code_but_not_the_runs_own_outputs(tmp_path, monkeypatch):
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git("rev-parse", "--short", "HEAD")
    monkeypatch.chdir(tmp_path / "results")  # paths are relative to where the run started
    (tmp_path / "results" / "table.json").write_text('{"cells": {}}\n')  # the run wrote its summary
    assert git_commit() == f"{head} with uncommitted changes"
    assert git_commit(outputs=["table.json"]) == head
    (tmp_path / "code.py").write_text("x = 2\n")  # the code changed: always marked
    assert git_commit(outputs=["table.json"]) == f"{head} with uncommitted changes"
