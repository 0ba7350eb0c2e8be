"""The main job end to end on the tiny model: every phase runs on the real mini-world and writes the report.

`make demo` runs the same code on SmolLM2 (minutes); here the team is a random tiny model, so the
tests check the pipeline and the report's bookkeeping, not that training helps. The demo runs twice,
as two cells of `prost demo-table` (oracle and recovery data at seed 0), once for the whole module:
the report checks read the recovery cell, the table checks both and their resumption.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prost_lightning import demo_table as table_module
from prost_lightning.demo import _train_tasks, demo
from prost_lightning.demo_table import demo_table, render_table
from prost_lightning.env.tasks import load_task_ids
from prost_lightning.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cells(mini_world_root, tmp_path_factory):
    """Two real demo cells (oracle, recovery; seed 0) through `prost demo-table`: (folder, options, table)."""
    folder = tmp_path_factory.mktemp("demo_table")
    (folder / "README.md").write_text("intro\n<!-- demo-table -->\nold table\n<!-- /demo-table -->\nafter\n")
    options = dict(out=str(folder / "cells"), root=str(mini_world_root), recipes=["oracle", "recovery"], seeds=[0],
                   steps_per_epoch=3, summary=str(folder / "table.json"), table=str(folder / "table.md"),
                   readme=str(folder / "README.md"), config=str(REPO / "experiments" / "demo.yaml"), base_model="tiny",
                   eval_scenarios=1, train_variants=1, pool_size=3,
                   fit_args=["--trainer.max_epochs", "2", "--data.batch_size", "8",
                             "--data.max_length", "4096"])  # the tiny tokenizer is byte-level
    return folder, options, demo_table(**options)


@pytest.mark.appworld
def test_train_tasks_rotate_the_variants_across_scenarios(mini_world_root):
    train = load_task_ids(mini_world_root, "train")
    scenarios = {t.rsplit("_", 1)[0] for t in train}
    one = _train_tasks(mini_world_root, 1)
    assert len(one) == len(scenarios) and {t.rsplit("_", 1)[0] for t in one} == scenarios
    assert {t.rsplit("_", 1)[1] for t in one} == {"1", "2", "3"}  # every phrasing is trained
    two = _train_tasks(mini_world_root, 2)
    assert len(two) == 2 * len(scenarios) and set(one) <= set(two)
    assert _train_tasks(mini_world_root, None) == train


@pytest.mark.appworld
def test_demo_runs_every_phase_and_writes_a_consistent_report(mini_world_root, cells):
    tmp_path = cells[0] / "cells" / "recovery_s0"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["eval_splits"] == ["test_normal", "test_challenge"]
    for split in report["eval_splits"]:  # one whole scenario of each held-out split
        held_out = report["eval_tasks"][split]
        assert len(held_out) == 3 and len({t.rsplit("_", 1)[0] for t in held_out}) == 1
        assert set(held_out) <= set(load_task_ids(mini_world_root, split))
    trained_on = [json.loads(line) for line in
                  (tmp_path / "trajectories" / "planner_executor_train.jsonl").read_text().splitlines()]
    held = {t for ids in report["eval_tasks"].values() for t in ids}
    assert len(trained_on) == report["train_tasks"] and not {t["task_id"] for t in trained_on} & held

    # the recipe: recovery data really is in the training file, and the report says so
    recipe = report["recipe"]
    marked = sum(1 for t in trained_on for c in t["conversations"] if c["role"] == "executor"
                 and any(m.get("context_only") for m in c["messages"]))
    assert recipe["perturb"] == 0.3 and recipe["subtasks_with_mistake"] == marked > 0
    assert 0.15 < recipe["mistake_share"] < 0.45 and recipe["trajectories"] == report["train_tasks"]
    assert recipe["budgets"]["max_steps_per_subtask"] >= 3  # a failed code step can be retried
    assert recipe["size"] == "steps" and recipe["steps_per_epoch"] == 3 and "3 steps per epoch" in recipe["size_reason"]
    assert recipe["improve_rounds"] == 0 and report["improve"] is None

    for name in ("untrained", "trained"):
        for split in report["eval_splits"]:
            episodes = (tmp_path / "eval" / f"{name}_{split}.jsonl").read_text().splitlines()
            assert sorted(json.loads(line)["task_id"] for line in episodes) == sorted(report["eval_tasks"][split])
            summary = report[name][split]
            assert summary["goal"]["num_tasks"] == 3
            assert summary["usage"]["mean_llm_calls"] > 0  # the model really played
            assert sum(summary["failures"].values()) + round(summary["goal"]["tgc"] * 3 / 100) == 3
            failed_inside = sum(summary["subtask_error_rates"].values())
            assert abs(failed_inside - (100 - summary["goal"]["tgc"]) / 100) < 0.01  # every failure has its sub-task
            # every failure is judged against the ground-truth plan (the mini-world has one for every task)
            diagnostics = summary["diagnostics"]
            assert diagnostics["episodes"] == 3 and diagnostics["failed"] == sum(summary["failures"].values())
            assert diagnostics["plan"]["diverged"] + diagnostics["plan"]["followed"] == diagnostics["failed"]
            after = diagnostics["after_error"]
            assert after["errors"] == sum(after[k] for k in ("report", "same_code", "new_code", "none"))
            # each failure counts against the kind of one true plan step; every episode reached its first step
            kinds = diagnostics["kinds"]
            assert sum(n["failed"] for n in kinds.values()) == diagnostics["failed"]
            assert kinds["login"]["reached"] == 3 and all(n["failed"] <= n["reached"] for k, n in kinds.items()
                                                          if k != "beyond_plan")
    assert 0 < report["training"]["steps"] <= 2 * 3 and report["training"]["trained_tokens"]
    assert (Path(report["run_dir"]) / "adapters" / "executor" / "adapter_config.json").is_file()
    assert set(report["wall_time_s"]) == {"build_world", "collect", "eval_untrained", "fine_tune",
                                          "eval_trained", "total"}

    for split in report["eval_splits"]:
        assert sorted(report["episodes"][split]) == sorted(report["eval_tasks"][split])
        assert all(set(runs) == {"untrained", "trained"} for runs in report["episodes"][split].values())
    markdown = (tmp_path / "report.md").read_text()
    assert "| untrained |" in markdown and "| ProST-trained |" in markdown
    assert "## `test_normal`" in markdown and "## `test_challenge`" in markdown and "Size `steps`" in markdown
    assert markdown.count("Diagnostics, untrained: 3 of 3 episodes failed") == 2  # once per split
    assert markdown.count("Diagnostics, trained: ") == 2
    assert all(f"| {task_id} |" in markdown for task_id in held)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes left nothing behind


def test_auto_size_fits_the_fit_into_what_the_budget_leaves_and_says_so():
    from prost_lightning.demo import MIN_STEPS_PER_EPOCH, SECONDS_PER_STEP, _epochs, plan_steps
    from prost_lightning.errors import ConfigError

    # 1800 s budget, 100 s spent before the first evaluation + 500 s of it, a second one as long
    fast = plan_steps("auto", budget_s=1800, elapsed_s=600, eval_s=500, precision="bf16-mixed", epochs=3)
    left = 1800 - 600 - 500 - 60
    assert fast["steps_per_epoch"] == int(left // (SECONDS_PER_STEP["bf16-mixed"] * 3))
    assert f"{left} s of training" in fast["why"] and "fast on this CPU" in fast["why"]
    fp32 = plan_steps("auto", budget_s=1800, elapsed_s=600, eval_s=500, precision="32-true", epochs=3)
    assert fp32["steps_per_epoch"] == int(left // (SECONDS_PER_STEP["32-true"] * 3)) and "emulated" in fp32["why"]
    # nothing left: the minimum, and the report says by how much the budget will be exceeded
    late = plan_steps("auto", budget_s=1800, elapsed_s=1500, eval_s=500, precision="bf16-mixed", epochs=3)
    assert late["steps_per_epoch"] == MIN_STEPS_PER_EPOCH and "exceed the budget" in late["why"]
    assert plan_steps("full", budget_s=0, elapsed_s=0, eval_s=0, precision="32-true", epochs=3)["steps_per_epoch"] is None
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        plan_steps("steps", budget_s=0, elapsed_s=0, eval_s=0, precision="32-true", epochs=3)
    with pytest.raises(ConfigError, match="auto | full | steps"):
        plan_steps("huge", budget_s=0, elapsed_s=0, eval_s=0, precision="32-true", epochs=3)
    config = str(REPO / "experiments" / "demo.yaml")
    assert _epochs(config, []) == 3 and _epochs(config, ["--trainer.max_epochs", "2"]) == 2


class _Stopped(Exception):
    pass


@pytest.mark.appworld
def test_table_cells_run_once_share_the_untrained_evaluation_and_resume(cells, monkeypatch):
    tmp_path, options, table = cells
    readme = tmp_path / "README.md"

    records = json.loads((tmp_path / "table.json").read_text())["cells"]
    assert sorted(records) == ["oracle_s0", "recovery_s0"]
    reports = {name: json.loads((tmp_path / "cells" / name / "report.json").read_text()) for name in records}
    oracle, recovery = reports["oracle_s0"]["recipe"], reports["recovery_s0"]["recipe"]
    # the recipes differ in their data alone: the recovery cell trains on mistakes and repairs
    assert oracle["perturb"] == 0 and oracle["subtasks_with_mistake"] == 0
    assert recovery["perturb"] == 0.3 and recovery["subtasks_with_mistake"] > 0
    assert oracle["size"] == recovery["size"] == "steps" and oracle["steps_per_epoch"] == 3
    # the untrained team was evaluated once; the second cell copied its episodes and summaries
    assert oracle["untrained_eval"] == "measured in this run" and recovery["untrained_eval"].startswith("reused from")
    for split in ("test_normal", "test_challenge"):
        first, second = (tmp_path / "cells" / name / "eval" / f"untrained_{split}.jsonl" for name in records)
        assert first.read_bytes() == second.read_bytes() and first.read_bytes()
        assert reports["oracle_s0"]["untrained"][split] == reports["recovery_s0"]["untrained"][split]
    assert records["recovery_s0"]["trained"]["test_normal"]["tgc"] == reports["recovery_s0"]["trained"]["test_normal"]["goal"]["tgc"]
    # a record older than the failure diagnostics gets them from its cell's episodes on disk
    older = json.loads(json.dumps(records))
    for split in older["oracle_s0"]["trained"]:
        older["oracle_s0"]["trained"][split]["diagnostics"] = None
    for split in older["recovery_s0"]["trained"]:  # ... and one from before the per-kind counts gets those
        del older["recovery_s0"]["trained"][split]["diagnostics"]["kinds"]
    assert table_module.add_diagnostics(older, tmp_path / "elsewhere", options["root"]) == []  # no folder: none
    assert older["oracle_s0"]["trained"]["test_normal"]["diagnostics"] is None
    assert table_module.add_diagnostics(older, tmp_path / "cells", options["root"]) == ["oracle_s0", "recovery_s0"]
    assert older == records
    assert "Where the episodes fail" in table

    assert "| oracle only | 1 of 1 (0) |" in table and "| + recovery data | 1 of 1 (0) |" in table
    assert "| untrained team | - |" in table and "2 of 2 cells finished" in table
    assert (tmp_path / "table.md").read_text() == table
    assert readme.read_text() == f"intro\n<!-- demo-table -->\n{table}<!-- /demo-table -->\nafter\n"

    # an improve cell starts from its seed's recovery fit (they differ by the round alone), when it is on disk
    recovery_fit = Path(reports["recovery_s0"]["run_dir"])
    assert (recovery_fit / "adapters").is_dir()
    assert table_module.shared_fit(records, tmp_path / "cells", "improve", 0) == recovery_fit
    assert table_module.shared_fit(records, tmp_path / "cells", "improve", 1) is None  # no recovery cell of seed 1
    assert table_module.shared_fit(records, tmp_path / "cells", "oracle", 0) is None
    command = table_module.demo_command("improve", 0, tmp_path / "x", tmp_path / "u", records["oracle_s0"]["settings"],
                                        options["root"], 3, fit_from=recovery_fit)
    assert command[command.index("--fit_from") + 1] == str(recovery_fit)
    assert command[command.index("--improve_rounds") + 1] == "1"
    with pytest.raises(ConfigError, match="not a finished fit"):
        demo(out=str(tmp_path / "bad"), root=options["root"], base_model="tiny", fit_from=str(tmp_path))

    # resumed: finished cells are not run again ...
    ran: list[list[str]] = []

    def record(command, what, again):
        ran.append(command)
        raise _Stopped

    monkeypatch.setattr(table_module, "_run", record)
    assert demo_table(**options) == table and ran == []
    # ... a cell without a summary (killed before it finished) is redone from scratch, alone
    del records["recovery_s0"]
    (tmp_path / "table.json").write_text(json.dumps({"cells": records}))
    with pytest.raises(_Stopped):
        demo_table(**options)
    assert len(ran) == 1 and str(tmp_path / "cells" / "recovery_s0") in ran[0]
    assert not (tmp_path / "cells" / "recovery_s0").exists()  # what the killed attempt left is not trusted
    # other settings are refused, not mixed into the same table
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        demo_table(**{**options, "steps_per_epoch": 2})


def _record(recipe: str, seed: int, normal: float, challenge: float) -> dict:
    def split(tgc: float, tasks: int, errors: dict) -> dict:
        failed = tasks - round(tgc * tasks / 100)
        return {"tgc": tgc, "sgc": tgc / 2, "failures": {}, "subtask_error_rates": errors, "diagnostics": {
            "episodes": tasks, "failed": failed, "plan": {"diverged": failed - 1, "followed": 1, "unknown": 0},
            "after_error": {"errors": 10, "report": 2, "same_code": 5, "new_code": 3, "repaired": 1, "none": 0},
            "kinds": {"login": {"reached": tasks, "failed": 0}, "filter": {"reached": tasks, "failed": failed - 1},
                      "count": {"reached": 2, "failed": 1}}}}

    return {"cell": f"{recipe}_s{seed}", "recipe": recipe, "seed": seed, "tasks": {"test_normal": 30, "test_challenge": 15},
            "settings": {"steps_per_epoch": None, "config": "experiments/demo.yaml", "base_model": "smollm2"},
            "untrained": {"test_normal": split(0.0, 30, {}), "test_challenge": split(0.0, 15, {})},
            "trained": {"test_normal": split(normal, 30, {"2": 0.5, "3": 0.1}),
                        "test_challenge": split(challenge, 15, {"2": 0.2, "5": 0.6})},
            "training": {"steps": 200 + seed}, "precision": "32-true", "wall_time_s": {"total": 3000.0},
            "commit": "abc1234", "machine": "a CPU"}


def test_table_gives_mean_spread_seeds_that_beat_the_untrained_team_and_the_worst_subtask():
    cells = {r["cell"]: r for r in (_record("oracle", 0, 50.0, 0.0), _record("oracle", 1, 40.0, 20.0),
                                    _record("oracle", 2, 30.0, 10.0), _record("recovery", 0, 10.0, 10.0))}
    table = render_table(cells, ["oracle", "recovery", "improve"], [0, 1, 2], "prost demo-table")
    oracle = next(line for line in table.splitlines() if line.startswith("| oracle only"))
    assert oracle.startswith("| oracle only | 3 of 3 (0, 1, 2) | 40.0 ± 10.0 (50.0, 40.0, 30.0) | 20.0 ± 5.0 ")
    assert "| 10.0 ± 10.0 (0.0, 20.0, 10.0) |" in oracle
    assert "| 3 of 3, 2 of 3 |" in oracle  # seed 0 does not beat the untrained team on test_challenge
    # k=2: (0.5 * 30 + 0.2 * 15) per seed of 45 episodes = 40 %; k=5: 9 of 45 = 20 %
    assert oracle.endswith("| k=2 (40 %) |")
    assert "| + recovery data | 1 of 3 (0) | 10.0 | 5.0 | 10.0 | 5.0 | 1 of 1, 1 of 1 |" in table  # one seed: no spread
    assert "| + recovery + 1 self-improvement round | 0 of 3 |" in table
    # where they fail, summed over seeds and splits: oracle failed 15 + 18 + 21 + 15 + 12 + 13 of 135
    diagnostics = table.split("Where the episodes fail")[1]
    assert ("| oracle only | 94 of 135 | 88 (94 %) | 60 | 12 (20 %) | 30 (50 %) | 18 (30 %), 6 ran | "
            "filter 88 of 135 (65 %), count 6 of 12 (50 %) |") in diagnostics  # login never failed: not shown
    assert "| untrained team | 45 of 45 | 43 (96 %) | 20 |" in diagnostics
    assert "| + recovery + 1 self-improvement round | - | - |" in diagnostics
    improved = {**_record("improve", 0, 20.0, 0.0), "fit": "reused from runs/r/version_0", "training": {"steps": 99},
                "improve": [{"sample_success": 12.5, "kept": 9, "train_trajectories": 102}]}
    with_round = render_table({**cells, "improve_s0": improved}, ["oracle", "recovery", "improve"], [0, 1, 2], "x")
    assert "improve_s0 abc1234 32-true 50 min (round 1: 12.5 % of sampled train episodes passed, 9 kept, " \
           "99 more optimizer steps; fit of runs/r/version_0)" in with_round
    assert "200-202 optimizer steps" in with_round  # the round's steps are not a cell's fit
    assert "4 of 9 cells finished" in table and "200-202 optimizer steps" in table
    assert "every batch of every epoch" in table and "differs between cells" not in table
    cells["recovery_s0"]["untrained"]["test_normal"]["tgc"] = 3.3  # e.g. another machine decoding in bf16
    assert "The untrained team's TGC differs between cells" in render_table(cells, ["oracle", "recovery"], [0, 1, 2], "x")


def test_an_edited_prompt_file_keys_another_untrained_evaluation(tmp_path):
    from prost_lightning.demo import _prompts_digest

    (tmp_path / "executor_system.txt").write_text("Solve the sub-task.")
    before = _prompts_digest(str(tmp_path))
    assert before == _prompts_digest(str(tmp_path)) and before != _prompts_digest(None)
    (tmp_path / "executor_system.txt").write_text("Solve the sub-task in one block.")
    assert _prompts_digest(str(tmp_path)) != before


def test_a_missing_readme_is_refused_before_any_cell_runs(tmp_path):
    with pytest.raises(ConfigError, match="--readme .*no such file"):
        demo_table(out=str(tmp_path / "cells"), summary=str(tmp_path / "t.json"), table=str(tmp_path / "t.md"),
                   readme=str(tmp_path / "missing.md"))
    assert not (tmp_path / "cells").exists() and not (tmp_path / "t.json").exists()


def test_bad_options_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(ConfigError, match=r"--pool_size 0 \(must be >= 1\); --improve_samples 0 \(must be >= 1\)"):
        demo(out=str(out), pool_size=0, improve_samples=0)
    with pytest.raises(ConfigError, match="--size steps needs --steps_per_epoch"):
        demo(out=str(out), size="steps")
    with pytest.raises(ConfigError, match="--steps_per_epoch 4: read only with --size steps"):
        demo(out=str(out), steps_per_epoch=4)  # size auto would ignore it
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--out .*a-file is a file"):
        demo(out=str(blocker / "demo"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no folder, no placeholder report


def test_the_oracle_planner_table_averages_each_recipes_cells():
    import importlib.util

    spec = importlib.util.spec_from_file_location("oracle_planner_script", REPO / "experiments" / "oracle_planner.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def cell(team: float, under_truth: float, same_code: int) -> dict:
        after = {"errors": same_code + 1, "report": 1, "same_code": same_code, "new_code": 0, "repaired": 0, "none": 0}
        return {"test_normal": {"tasks": 30, "team_tgc": team, "oracle_planner_tgc": under_truth,
                                "diagnostics": {"after_error": after}}}

    rows = script.table({"oracle_s0": cell(10.0, 50.0, 2), "oracle_s1": cell(20.0, 40.0, 4),
                         "recovery_s0": cell(13.3, 60.0, 0)}).splitlines()
    assert len(rows) == 4  # header, rule, one row per recipe with cells
    assert rows[2] == "| oracle only (2) | 15.0 -> 45.0 | 8: 2 / 6 / 0 (0) |"
    assert rows[3].startswith("| + recovery data (1) | 13.3 -> 60.0 |")
