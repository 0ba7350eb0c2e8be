"""prost report: Pareto front, sub-task error rates, and a report over hand-made run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prost_lightning.pareto_report import (
    ReportError,
    describe_config,
    error_rates_by_group,
    expand_positional_runs,
    find_episodes,
    pareto_front,
    report,
    schedule_label,
)
from prost_lightning.trajectory import (
    Conversation,
    Message,
    Outcome,
    SubTask,
    Trajectory,
    Usage,
    write_trajectories,
)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- pure functions ---------------------------------------------------------------------------------

def test_pareto_front_keeps_only_non_dominated_points_by_rising_cost():
    costs = [1.0, 2.0, 3.0, 2.5, 0.5]
    scores = [10.0, 30.0, 50.0, 20.0, 0.0]
    # (2.5, 20) is dominated by (2.0, 30); the rest trade cost for score
    assert pareto_front(costs, scores) == [4, 0, 1, 2]


def test_pareto_front_ties_and_strict_domination():
    assert pareto_front([1.0, 1.0], [5.0, 5.0]) == [0, 1]  # identical: neither dominates
    assert pareto_front([1.0, 1.0], [5.0, 6.0]) == [1]  # same cost, higher score wins
    assert pareto_front([1.0, 2.0], [5.0, 5.0]) == [0]  # same score, lower cost wins
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


def test_error_rates_pool_the_episodes_of_a_group():
    outcomes = {
        "progressive": [Outcome(success=True), Outcome(success=False, failed_subtask=2),
                        Outcome(success=False, failed_subtask=2), Outcome(success=False, failed_subtask=1)],
        "full": [Outcome(success=False, failed_subtask=3), {"success": True}],
        "untrained": [],
    }
    rates = error_rates_by_group(outcomes)
    assert rates["progressive"] == {1: 0.25, 2: 0.5}
    assert rates["full"] == {3: 0.5}
    assert rates["untrained"] == {}


def test_config_description_and_labels():
    config = {"model": {"roles": ["planner", "executor"], "base_model": "smollm2", "shared_adapter": True},
              "data": {"schedule": {"name": "progressive"}, "mode": "mask"}, "trainer": {"max_epochs": 4}}
    info = describe_config(config)
    assert info["system"] == "planner_executor" and info["schedule"] == "progressive" and info["max_epochs"] == 4
    assert schedule_label(info["schedule"], info["mode"], info["shared_adapter"]) == "progressive (mask, shared adapter)"
    assert describe_config({"model": {"roles": ["agent"]}})["system"] == "single"
    callback = {"class_path": "prost_lightning.rollout.RolloutCallback", "init_args": {"system": "single"}}
    assert describe_config({"model": {"roles": ["x"]}, "trainer": {"callbacks": [callback]}})["system"] == "single"
    assert schedule_label(None) == "untrained" and schedule_label("full", "slice") == "full"


def test_the_system_of_a_config_comes_from_the_system_registry():
    """A system registered from outside the package is recognised by its roles, no edit of the report."""
    from prost_lightning.agents.systems import SYSTEMS, AgentSystem, register_system

    @register_system("critic_team_for_test")
    class CriticTeam(AgentSystem):
        roles = ("critic", "writer")

    try:
        assert describe_config({"model": {"roles": ["writer", "critic"]}})["system"] == "critic_team_for_test"
        assert describe_config({"model": {"roles": ["reader", "critic"]}})["system"] == "critic+reader"
    finally:
        del SYSTEMS["critic_team_for_test"]


# -- hand-made runs ------------------------------------------------------------------------------------

def _episode(task_id: str, success: bool, failed_subtask: int | None, tokens: int, difficulty: int = 1) -> Trajectory:
    return Trajectory(
        task_id=task_id, system="planner_executor", instruction="do it", difficulty=difficulty,
        subtasks=[SubTask(index=1, description="a"), SubTask(index=2, description="b")],
        conversations=[Conversation(role="planner", messages=[Message(role="user", content="task"),
                                                               Message(role="assistant", content="a", subtask=1)])],
        outcome=Outcome(success=success, failed_subtask=None if success else failed_subtask,
                        failure_reason=None if success else "execution_error"),
        usage=Usage(llm_calls={"planner": 2, "executor": 4}, prompt_tokens={"planner": tokens, "executor": tokens},
                    completion_tokens={"planner": 10, "executor": 20}, flops=1e9 * tokens, cost=1e-5 * tokens,
                    env_steps=3, wall_time_s=1.5),
    )


def _make_run(folder: Path, schedule: str | None, successes: list[bool], tokens: int) -> Path:
    version = folder / "lightning_logs" / "version_0"
    episodes = [_episode(f"s{i // 3}_{i % 3 + 1}", ok, 1 + i % 2, tokens, difficulty=1 + i % 2)
                for i, ok in enumerate(successes)]
    # an older epoch file that must be ignored in favour of the newest
    write_trajectories(version / "rollouts" / "epoch_0.jsonl", [_episode("old_1", False, 1, 1)])
    write_trajectories(version / "rollouts" / "epoch_3.jsonl", episodes)
    if schedule:
        config = {"model": {"base_model": "smollm2", "roles": ["planner", "executor"]},
                  "data": {"schedule": {"name": schedule}, "mode": "slice"}, "trainer": {"max_epochs": 4}}
        (version / "config.yaml").write_text(yaml.safe_dump(config))
        (version / "fit_summary.json").write_text(json.dumps({"train_seconds": 12.5, "tokens_per_s": 200.0}))
    return folder


@pytest.fixture()
def two_runs(tmp_path) -> list[Path]:
    progressive = _make_run(tmp_path / "pe_progressive", "progressive", [True, True, True, False, True, True], 100)
    full = _make_run(tmp_path / "pe_full", "full", [True, False, False, False, True, False], 300)
    return [progressive, full]


def test_report_over_two_runs_writes_table_json_and_pngs(two_runs, tmp_path):
    out = tmp_path / "report"
    result = report([str(r) for r in two_runs], out=str(out), x_axis="tokens")
    rows = {r["name"]: r for r in result["runs"]}
    assert rows["pe_progressive"]["tgc"] == pytest.approx(83.3) and rows["pe_full"]["tgc"] == pytest.approx(33.3)
    assert rows["pe_progressive"]["episodes"] == 6  # epoch_3, not the older epoch_0
    assert rows["pe_progressive"]["system"] == "planner_executor" and rows["pe_full"]["group"] == "full"
    assert rows["pe_progressive"]["mean_tokens"] == pytest.approx(230)  # 100 + 100 + 10 + 20
    assert rows["pe_progressive"]["train_seconds"] == 12.5
    assert set(rows["pe_progressive"]["by_difficulty"]) == {"1", "2"}
    # cheaper and better: progressive dominates full
    assert result["pareto_front"] == ["pe_progressive"]
    # full: failures at indices 1+i%2 for i = 1, 2, 3, 5 -> k=2 three times, k=1 once, of 6 episodes
    assert result["subtask_error_rates"]["planner_executor · full"] == {"1": pytest.approx(1 / 6), "2": pytest.approx(3 / 6)}
    for name in ("pareto.png", "subtask_errors.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "report.json").read_text())["pareto_front"] == ["pe_progressive"]
    md = (out / "report.md").read_text()
    assert "| ★ | pe_progressive |" in md and "| planner_executor · full |" in md and "pareto.png" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_report_prefers_eval_files_and_accepts_episode_files(tmp_path, two_runs):
    run = two_runs[0]
    write_trajectories(run / "eval" / "test_normal.jsonl", [_episode("t1_1", False, 2, 50)])
    assert find_episodes(run) == run / "eval" / "test_normal.jsonl"
    assert find_episodes(run, source="rollouts").name == "epoch_3.jsonl"
    untrained = tmp_path / "before.jsonl"
    write_trajectories(untrained, [_episode("t1_1", False, 1, 50), _episode("t1_2", False, 2, 50)])
    result = report([str(untrained), str(run)], out=str(tmp_path / "r2"), names=["before", "after"], x_axis="cost")
    rows = {r["name"]: r for r in result["runs"]}
    assert rows["before"]["group"] == "untrained" and rows["before"]["tgc"] == 0.0
    assert rows["after"]["group"] == "progressive" and rows["after"]["episodes"] == 1


def test_report_errors_are_one_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no episodes found"):
        report([str(tmp_path / "empty")], out=str(tmp_path / "r"))
    with pytest.raises(ReportError, match="one name per run"):
        report([str(tmp_path / "empty")], out=str(tmp_path / "r"), names=["a", "b"])
    out = subprocess.run([sys.executable, "-m", "prost_lightning.cli", "report", f"--runs+={tmp_path / 'missing'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no such run folder" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # wandb.init spawns its service process: ~20 s
def test_report_logs_to_wandb_offline(two_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "report"
    report([str(r) for r in two_runs], out=str(out), wandb=True, wandb_group="test-sweep")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


def test_positional_runs_become_list_options():
    argv = ["runs/a", "--out", "r", "runs/b", "--x_axis=cost", "--wandb", "true", "runs/c"]
    assert expand_positional_runs(argv) == ["--runs+=runs/a", "--runs+=runs/b", "--runs+=runs/c",
                                            "--out", "r", "--x_axis=cost", "--wandb", "true"]
    assert expand_positional_runs(["--help"]) == ["--help"]
