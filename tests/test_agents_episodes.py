"""Agent systems through the real AppWorld engine on the mini-world (oracle, scripted policies, faults)."""

from __future__ import annotations

import os
import signal

import pytest

from prost_lightning.agents import (
    FINISH_LINE,
    FailureReason,
    Limits,
    PolicyError,
    ScriptedPolicy,
    always_wrong,
    load_tasks,
    make_policies,
    run_episodes,
    system_roles,
)
from prost_lightning.agents.episode_summary import summarize
from prost_lightning.agents.openai_policy import OpenAIPolicy
from prost_lightning.agents.parsing import extract_code
from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import parse_line

pytestmark = pytest.mark.appworld


@pytest.fixture(scope="module")
def pool(mini_world_root):
    from prost_lightning.env.pool import ServerPool

    with ServerPool(mini_world_root, size=2, step_timeout_s=10) as pool:
        yield pool


@pytest.fixture(scope="module")
def dev_tasks(mini_world_root):
    return load_tasks(mini_world_root, "dev")


def _roundtrip(trajectory):
    return parse_line(trajectory.model_dump_json(exclude_none=True), "<rollout>")


@pytest.mark.parametrize("system", ["single", "planner_executor"])
def test_oracle_reaches_tgc_100_on_dev(pool, dev_tasks, system):
    trajectories = run_episodes(system, dev_tasks, pool, make_policies("oracle", system_roles(system)),
                                teacher="oracle")
    assert [t.task_id for t in trajectories] == [t.task_id for t in dev_tasks]
    summary = summarize(trajectories)
    assert summary["goal"]["tgc"] == 100.0 and summary["goal"]["sgc"] == 100.0, summary["failures"]
    for traj, task in zip(trajectories, dev_tasks, strict=True):
        traj = _roundtrip(traj)  # valid in the training schema
        k = len(task.plan)
        assert traj.system == system and traj.teacher == "oracle" and traj.outcome.success
        assert traj.outcome.failure_reason is None and traj.outcome.num_tests >= 1
        assert [s.description for s in traj.subtasks] == [s.description for s in task.plan]
        assert traj.usage.env_steps == k and traj.usage.wall_time_s > 0
        if system == "single":
            (conv,) = traj.conversations
            roles = [m.role for m in conv.messages]
            assert roles == ["system", "user"] + ["assistant", "user"] * k
            assert [m.subtask for m in conv.messages] == [0, 0] + [i for i in range(1, k + 1) for _ in (0, 1)]
            assert all(m.content.startswith("Output:\n") for m in conv.messages[3::2])
            assert traj.usage.llm_calls == {"agent": k}
        else:
            planner = [c for c in traj.conversations if c.role == "planner"]
            executors = [c for c in traj.conversations if c.role == "executor"]
            assert len(planner) == 1 and [c.subtask for c in executors] == list(range(1, k + 1))
            final = planner[0].messages[-1]
            assert final.role == "assistant" and final.content == FINISH_LINE and final.subtask == k
            assert all(m.content.startswith("Report: ") for m in planner[0].messages[3:-1:2])
            for c in executors:
                assert [m.role for m in c.messages] == ["system", "user", "assistant", "user", "assistant"]
                assert [m.subtask for m in c.messages] == [0] + [c.subtask] * 4
                assert extract_code(c.messages[2].content) and extract_code(c.messages[4].content) is None
            assert traj.usage.llm_calls == {"planner": k + 1, "executor": 2 * k}


@pytest.mark.parametrize("system", ["single", "planner_executor"])
def test_always_wrong_scores_zero(pool, dev_tasks, system):
    wrong = always_wrong()
    tasks = dev_tasks[::2]
    trajectories = run_episodes(system, tasks, pool, {r: wrong for r in system_roles(system)})
    summary = summarize(trajectories)
    assert summary["goal"]["tgc"] == 0.0 and len(trajectories) == len(tasks)
    assert summary["failures"] == {FailureReason.WRONG_RESULT: len(tasks)}
    for t in trajectories:
        assert _roundtrip(t).outcome.failed_subtask == 1


def test_known_apis_only_reaches_the_code_turns_of_every_role(pool, dev_tasks):
    wrong = always_wrong()
    seen = []

    def record(request):
        seen.append(request)
        return wrong.reply(request)

    recorder = ScriptedPolicy(record)
    for only in (False, True):
        seen.clear()
        run_episodes("planner_executor", dev_tasks[:1], pool, {"planner": recorder, "executor": recorder},
                     limits=Limits(known_apis_only=only))
        code_turns = [r for r in seen if r.stop_after_code]
        assert code_turns and all(r.role == "executor" for r in code_turns)
        assert all((r.known_apis is not None) == (only and r.stop_after_code) for r in seen)
    assert "show_alarms" in code_turns[0].known_apis.names["phone"]  # the world's own API docs
    endpoint = OpenAIPolicy("http://127.0.0.1:9/v1", "m", api_key_env=None)  # never called: refused first
    with pytest.raises(ConfigError, match="known_apis_only.*openai:m policy cannot"):
        run_episodes("planner_executor", dev_tasks[:1], pool, {"planner": endpoint, "executor": endpoint},
                     limits=Limits(known_apis_only=True))


def test_failure_reasons_are_recorded(pool, dev_tasks):
    task = dev_tasks[:1]

    def run(system, reply, **limits):
        policy = ScriptedPolicy(reply)
        limits = Limits(**{"max_subtasks": 2, "max_steps_per_subtask": 2, "max_env_steps": 3, **limits})
        (traj,) = run_episodes(system, task, pool, {r: policy for r in system_roles(system)}, limits=limits)
        _roundtrip(traj)
        assert not traj.outcome.success
        return traj

    prose = run("single", lambda r: "I think the answer is 3.")
    assert prose.outcome.failure_reason == FailureReason.NO_CODE and prose.usage.env_steps == 0
    assert prose.conversations[0].messages[3].content.startswith("Output:\nNo ```python block")
    crash = run("single", lambda r: "```python\nprint(undefined_name)\n```")
    assert crash.outcome.failure_reason == FailureReason.EXECUTION_ERROR
    assert "Execution failed" in crash.conversations[0].messages[-1].content
    busy = run("single", lambda r: "```python\nprint(1)\n```")
    assert busy.outcome.failure_reason == FailureReason.STEP_LIMIT and busy.usage.env_steps == 3

    def planner_then_code(r):
        return "Log in to simple_note." if r.role == "planner" else "```python\nprint(1)\n```"

    stuck = run("planner_executor", planner_then_code)
    assert stuck.outcome.failure_reason == FailureReason.STEP_LIMIT and stuck.outcome.failed_subtask == 1
    greedy = run("planner_executor", planner_then_code, max_steps_per_subtask=5)
    assert greedy.outcome.failure_reason == FailureReason.ENV_STEP_LIMIT and greedy.usage.env_steps == 3

    def endless_planner(r):
        return "Log in to simple_note." if r.role == "planner" else "Nothing to do."

    endless = run("planner_executor", endless_planner)
    assert endless.outcome.failure_reason == FailureReason.SUBTASK_LIMIT
    assert len(endless.subtasks) == 2 and endless.usage.llm_calls == {"planner": 2, "executor": 2}

    quitter = run("planner_executor", lambda r: FINISH_LINE)
    assert quitter.outcome.failure_reason == FailureReason.NOT_COMPLETED
    assert quitter.usage.llm_calls == {"planner": 1}

    def broken(r):
        raise PolicyError("endpoint down")

    failed = run("single", broken)
    assert failed.outcome.failure_reason == FailureReason.POLICY_ERROR


def test_server_killed_mid_episode_fails_that_episode_only(pool, dev_tasks):
    killed = []

    def kill_then_code(request):
        if not killed:  # kill the leased server once: the episode's execute finds it dead
            idle = set(pool._idle.queue)
            for slot, server in enumerate(pool.servers):
                if slot not in idle:
                    killed.append(server.pid)
                    os.kill(server.pid, signal.SIGKILL)
        return "```python\nprint(1)\n```"

    policy = ScriptedPolicy(kill_then_code)
    (traj,) = run_episodes("single", dev_tasks[:1], pool, {"agent": policy})
    assert len(killed) == 1
    assert traj.outcome.failure_reason == FailureReason.SERVER_FAULT and not traj.outcome.success
    _roundtrip(traj)
    # the pool restarted its servers; the next episodes play normally
    oracle = make_policies("oracle", ["agent"])
    again = run_episodes("single", dev_tasks[:2], pool, oracle)
    assert [t.outcome.success for t in again] == [True, True]
