"""The main job end to end on the tiny model: every phase runs on the real mini-world and writes the report.

`make demo` runs the same code on SmolLM2 (minutes); here the team is a random tiny model, so the
test checks the pipeline and the report's bookkeeping, not that training helps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prost_lightning.demo import _train_tasks, demo
from prost_lightning.env.tasks import load_task_ids

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.appworld


def test_train_tasks_rotate_the_variants_across_scenarios(mini_world_root):
    train = load_task_ids(mini_world_root, "train")
    scenarios = {t.rsplit("_", 1)[0] for t in train}
    one = _train_tasks(mini_world_root, 1)
    assert len(one) == len(scenarios) and {t.rsplit("_", 1)[0] for t in one} == scenarios
    assert {t.rsplit("_", 1)[1] for t in one} == {"1", "2", "3"}  # every phrasing is trained
    two = _train_tasks(mini_world_root, 2)
    assert len(two) == 2 * len(scenarios) and set(one) <= set(two)
    assert _train_tasks(mini_world_root, None) == train


def test_demo_runs_every_phase_and_writes_a_consistent_report(mini_world_root, tmp_path):
    report = demo(out=str(tmp_path), root=str(mini_world_root), config=str(REPO / "experiments" / "demo.yaml"),
                  base_model="tiny", train_variants=1, eval_scenarios=1, pool_size=3, size="steps", steps_per_epoch=3,
                  fit_args=["--trainer.max_epochs", "2", "--data.batch_size", "8",
                            "--data.max_length", "4096"],  # the tiny tokenizer is byte-level
                  prompt_dir=str(REPO / "experiments" / "prompts" / "compact"))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))

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


def _seed_report(folder: Path, seed: int, trained_tgc: dict[str, float]) -> None:
    split_tasks = {"test_normal": ["a_1", "a_2"], "test_challenge": ["b_1"]}
    goal = lambda tgc: {"goal": {"tgc": tgc, "sgc": tgc / 2}}  # noqa: E731
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({
        "eval_splits": list(split_tasks), "eval_tasks": split_tasks, "recipe": {"seed": seed},
        "untrained": {s: goal(0.0) for s in split_tasks}, "trained": {s: goal(v) for s, v in trained_tgc.items()},
        "wall_time_s": {"total": 1500.0 + 60 * seed}}))


def test_seeds_table_gives_mean_spread_and_the_runs_that_beat_the_untrained_team(tmp_path):
    from prost_lightning.demo import seeds_table
    from prost_lightning.errors import ConfigError

    for seed, normal, challenge in ((0, 50.0, 0.0), (1, 40.0, 20.0), (2, 30.0, 10.0)):
        _seed_report(tmp_path / f"s{seed}", seed, {"test_normal": normal, "test_challenge": challenge})
    table = seeds_table([str(tmp_path / f"s{s}") for s in range(3)], out=str(tmp_path / "seeds.md"))
    assert (tmp_path / "seeds.md").read_text() == table
    normal = next(line for line in table.splitlines() if line.startswith("| `test_normal`"))
    assert "| 40.0 ± 10.0 (50.0, 40.0, 30.0) |" in normal and normal.endswith("| 3 of 3 |")
    challenge = next(line for line in table.splitlines() if line.startswith("| `test_challenge`"))
    assert "| 10.0 ± 10.0 (0.0, 20.0, 10.0) |" in challenge and challenge.endswith("| 2 of 3 |")
    assert "seeds 0, 1, 2" in table and "26.0 ± 1.0" in table  # wall time in minutes

    with pytest.raises(ConfigError, match="does not exist"):
        seeds_table([str(tmp_path / "s0"), str(tmp_path / "missing")])
