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
                  base_model="tiny", train_variants=1, eval_scenarios=1, pool_size=3,
                  fit_args=["--trainer.max_epochs", "2", "--data.batch_size", "8",
                            "--data.max_length", "4096"],  # the tiny tokenizer is byte-level
                  prompt_dir=str(REPO / "experiments" / "prompts" / "compact"))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))

    held_out = report["eval_tasks"]
    assert len(held_out) == 3 and len({t.rsplit("_", 1)[0] for t in held_out}) == 1
    assert set(held_out) <= set(load_task_ids(mini_world_root, "test_normal"))
    trained_on = [json.loads(line)["task_id"] for line in
                  (tmp_path / "trajectories" / "planner_executor_train.jsonl").read_text().splitlines()]
    assert len(trained_on) == report["train_tasks"] and not set(trained_on) & set(held_out)

    for name in ("untrained", "trained"):
        episodes = (tmp_path / "eval" / f"{name}_test_normal.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["task_id"] for line in episodes) == sorted(held_out)
        assert report[name]["goal"]["num_tasks"] == 3
        assert report[name]["usage"]["mean_llm_calls"] > 0  # the model really played
    assert report["training"]["steps"] > 0 and report["training"]["trained_tokens"]
    assert (Path(report["run_dir"]) / "adapters" / "executor" / "adapter_config.json").is_file()
    assert set(report["wall_time_s"]) == {"build_world", "collect", "eval_untrained", "fine_tune",
                                          "eval_trained", "total"}

    assert sorted(report["episodes"]) == sorted(held_out)
    assert all(set(runs) == {"untrained", "trained"} for runs in report["episodes"].values())
    markdown = (tmp_path / "report.md").read_text()
    assert "| untrained |" in markdown and "| ProST-trained |" in markdown
    assert all(f"| {task_id} |" in markdown for task_id in held_out)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes left nothing behind
