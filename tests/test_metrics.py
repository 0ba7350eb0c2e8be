"""TGC/SGC and usage aggregation (pure Python)."""

import pytest

from prost_lightning.metrics import (
    aggregate_usage,
    estimate_flops,
    failure_reason_counts,
    goal_completion,
    scenario_goal_completion,
    subtask_error_rates,
    task_goal_completion,
)
from prost_lightning.trajectory import Outcome, Usage

KNOWN = {"a_1": True, "a_2": False, "a_3": True, "b_1": True, "b_2": True, "b_3": True}


def test_known_case_matches_appworld():
    assert task_goal_completion(KNOWN) == 83.3
    assert scenario_goal_completion(KNOWN) == 50.0


def test_extremes_and_empty():
    assert task_goal_completion({"a_1": True}) == 100.0
    assert scenario_goal_completion({"a_1": False, "b_1": False}) == 0.0
    assert task_goal_completion({}) == 0.0 and scenario_goal_completion({}) == 0.0


def test_rounding_follows_appworld():
    # AppWorld rounds the mean to 4 places, then the percentage to 1: 1/3 -> 0.3333 -> 33.3
    assert task_goal_completion({"a_1": True, "a_2": False, "a_3": False}) == 33.3
    assert task_goal_completion({"a_1": True, "a_2": True, "a_3": False}) == 66.7


def test_per_difficulty_uses_only_that_difficultys_tasks():
    difficulty = {"a_1": 1, "a_2": 2, "a_3": 1, "b_1": 3, "b_2": 3, "b_3": 3}
    summary = goal_completion(KNOWN, difficulty)
    assert summary["tgc"] == 83.3 and summary["sgc"] == 50.0
    assert summary["num_tasks"] == 6 and summary["num_scenarios"] == 2
    by = summary["by_difficulty"]
    assert set(by) == {"1", "2", "3"}
    assert by["1"] == {"tgc": 100.0, "sgc": 100.0, "num_tasks": 2, "num_scenarios": 1}
    assert by["2"] == {"tgc": 0.0, "sgc": 0.0, "num_tasks": 1, "num_scenarios": 1}
    assert by["3"]["tgc"] == 100.0 and by["3"]["num_scenarios"] == 1


def test_flops_and_the_one_price_rule():
    from prost_lightning.agents.episode import CostModel

    assert estimate_flops(135e6, 1000) == 2 * 135e6 * 1000
    cost = CostModel(prices={"planner": {"prompt": 0.5, "completion": 1.5}, "default": (2.0, 4.0)})
    assert cost.price("planner") == (0.5, 1.5)
    assert cost.price("executor") == (2.0, 4.0)  # a role without an entry takes the table's default
    assert CostModel(prices={"planner": (1.0, 1.0)}).price("executor") == (0.0, 0.0)  # no default: free, by rule


def test_aggregate_usage_accepts_models_and_dicts():
    episodes = [
        Usage(llm_calls={"planner": 2, "executor": 4}, prompt_tokens={"planner": 100, "executor": 300},
              completion_tokens={"planner": 20, "executor": 60}, flops=10.0, cost=0.5, env_steps=4, wall_time_s=3.0),
        {"llm_calls": {"planner": 1}, "prompt_tokens": {"planner": 50}, "completion_tokens": {"planner": 10},
         "flops": 2.0, "cost": 0.1, "env_steps": 0, "wall_time_s": 1.0},
    ]
    agg = aggregate_usage(episodes)
    assert agg["episodes"] == 2
    assert agg["mean_llm_calls"] == 3.5
    assert agg["mean_llm_calls_per_role"] == {"executor": 2.0, "planner": 1.5}
    assert agg["mean_prompt_tokens_per_role"]["planner"] == 75.0
    assert agg["total_prompt_tokens"] == 450 and agg["total_completion_tokens"] == 90
    assert agg["mean_tokens"] == 270.0
    assert agg["mean_flops"] == 6.0 and agg["total_cost"] == pytest.approx(0.6)
    assert agg["mean_env_steps"] == 2.0 and agg["mean_wall_time_s"] == 2.0
    assert aggregate_usage([])["episodes"] == 0


def test_failure_reasons_and_subtask_error_rates():
    outcomes = [
        Outcome(success=True, passes=2, num_tests=2),
        Outcome(success=False, failure_reason="max_steps", failed_subtask=2),
        {"success": False, "failure_reason": "timeout", "failed_subtask": 2},
        {"success": False},
    ]
    assert failure_reason_counts(outcomes) == {"max_steps": 1, "timeout": 1, "unknown": 1}
    assert subtask_error_rates(outcomes) == {2: 0.5}
