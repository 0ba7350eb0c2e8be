"""`failure_diagnostics`: whether a failed episode's plan was wrong, and what the team did after a failed execution."""

from __future__ import annotations

from prost_lightning.agents.episode_summary import describe_diagnostics, failure_diagnostics
from prost_lightning.trajectory import Conversation, Message, Outcome, SubTask, Trajectory

FAILED = "Output:\nExecution failed. Traceback:\nKeyError: 'public'"
RAN = "Output:\nExecution successful."
TRUTH = {"t_1": ["Log in to spotify.", "Collect all my playlists into `playlists`.", "Keep the public ones."]}


def code(text: str) -> str:
    return f"Thought.\n```python\n{text}\n```"


def executor(subtask: int, *turns: str) -> Conversation:
    """An executor conversation: the sub-task, then alternating replies and observations as given."""
    roles = ["assistant", "user"] * len(turns)
    return Conversation(role="executor", subtask=subtask, messages=[
        Message(role="system", content="You are the executor."),
        Message(role="user", content=f"Sub-task {subtask}", subtask=subtask),
        *[Message(role=role, content=turn, subtask=subtask) for role, turn in zip(roles, turns, strict=False)]])


def episode(plan: list[str], outcome: Outcome, *executors: Conversation, system: str = "planner_executor",
            task_id: str = "t_1") -> Trajectory:
    planner = Conversation(role="planner" if system == "planner_executor" else "agent", messages=[
        Message(role="system", content="You are the planner."), Message(role="user", content="Task")])
    return Trajectory(task_id=task_id, system=system, instruction="Task", subtasks=[
        SubTask(index=i, description=d) for i, d in enumerate(plan, start=1)],
        conversations=[planner, *executors], outcome=outcome)


def failed_at(k: int) -> Outcome:
    return Outcome(success=False, failure_reason="wrong_result", failed_subtask=k)


def test_a_failure_is_the_planners_when_its_plan_left_the_ground_truth_by_the_failed_subtask():
    truth = TRUTH["t_1"]
    wrong_second = episode([truth[0], "Collect all my songs into `songs`.", truth[2]], failed_at(3))
    right_so_far = episode([truth[0], " Collect all my  playlists into `playlists`.", "Keep the private ones."],
                           failed_at(2))  # diverges at 3, after the sub-task it failed in; whitespace is not a change
    too_long = episode([*truth, "Delete them."], failed_at(4))  # planned on after the ground truth had ended
    solved = episode(["Something else entirely."], Outcome(success=True, passes=1, num_tests=1))
    no_truth = episode(["Anything."], failed_at(1), task_id="unknown_1")
    single = episode(["Other."], failed_at(1), system="single")  # no planner: no plan to judge
    result = failure_diagnostics([wrong_second, right_so_far, too_long, solved, no_truth, single], TRUTH)
    assert result["episodes"] == 6 and result["failed"] == 5
    assert result["plan"] == {"diverged": 2, "followed": 1, "unknown": 1}


def test_every_failed_execution_is_counted_by_what_the_next_reply_did():
    x = 'm = [p for p in playlists if p["public"]]'
    repaired = executor(3, code(x), FAILED, code('m = [p for p in playlists if p["is_public"]]'), RAN, "Done.")
    repeated = executor(3, code(x), FAILED, code("  " + x), FAILED)  # the same code again, then the budget ended
    gave_up = executor(3, code(x), FAILED, "Done: kept the public playlists.")
    still_wrong = executor(3, code(x), FAILED, code("m = playlists[0]['public']"), FAILED, "Failed.")
    clean = executor(1, code("t = login('spotify')"), RAN, "Done.")
    result = failure_diagnostics([episode(TRUTH["t_1"], failed_at(3), repaired, repeated, gave_up, still_wrong,
                                          clean)], TRUTH)
    assert result["after_error"] == {"errors": 6, "report": 2, "same_code": 1, "new_code": 2, "repaired": 1,
                                     "none": 1}
    assert result["plan"] == {"diverged": 0, "followed": 1, "unknown": 0}
    line = describe_diagnostics(result)
    assert line.startswith("1 of 1 episodes failed; the plan diverged from the ground truth by the failed sub-task "
                           "in 0, followed it in 1; 6 failed executions, then: 2 a report without code")
    assert "1 the same code again, 2 new code (1 of it ran), 1 no reply left" in line


def test_each_failure_counts_against_the_kind_of_the_true_step_where_it_failed():
    kinds = {"t_1": ["login", "collect", "filter"]}
    truth = TRUTH["t_1"]
    solved = episode(truth, Outcome(success=True, passes=1, num_tests=1))  # reached every step, failed none
    at_filter = episode(truth, failed_at(3))
    wrong_plan_at_collect = episode([truth[0], "Collect all my songs into `songs`."], failed_at(2))  # positional
    past_the_plan = episode([*truth, "Delete them."], failed_at(4))
    single = episode(["Other."], failed_at(1), system="single")  # no planner: its sub-task is not the plan's
    unknown_task = episode(["Anything."], failed_at(1), task_id="unknown_1")
    result = failure_diagnostics([solved, at_filter, wrong_plan_at_collect, past_the_plan, single, unknown_task],
                                 TRUTH, kinds)
    assert result["kinds"] == {"beyond_plan": {"reached": 0, "failed": 1}, "collect": {"reached": 4, "failed": 1},
                               "filter": {"reached": 3, "failed": 1}, "login": {"reached": 4, "failed": 0}}
    line = describe_diagnostics(result)
    # ties in failures: the higher share of those that reached the kind first; reached 0 shows the count alone
    assert "failed most at the true plan's steps of kind login" not in line
    assert "of kind filter 1 of 3 (33 %), collect 1 of 4 (25 %), beyond_plan 1 (failed there of reached)" in line
    assert failure_diagnostics([at_filter], TRUTH)["kinds"] == {}  # no kinds known: none counted
