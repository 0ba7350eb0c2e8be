"""Summaries of a batch of episodes (TGC/SGC, usage, failure reasons, failure diagnostics) and a rich progress bar."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from prost_lightning.metrics import aggregate_usage, failure_reason_counts, goal_completion
from prost_lightning.trajectory import Trajectory

from .episode import FailureReason
from .parsing import extract_code, is_failed_observation

log = logging.getLogger(__name__)

FAILURE_REASONS = sorted(v for k, v in vars(FailureReason).items() if k.isupper())


def summarize(trajectories: Sequence[Trajectory]) -> dict:
    """{goal: goal_completion(...), usage: aggregate_usage(...), failures: {reason: n}}."""
    successes = {t.task_id: bool(t.outcome and t.outcome.success) for t in trajectories}
    difficulties = {t.task_id: t.difficulty for t in trajectories}
    return {
        "goal": goal_completion(successes, difficulties),
        "usage": aggregate_usage([t.usage for t in trajectories]),
        "failures": failure_reason_counts([t.outcome for t in trajectories]),
    }


def failure_diagnostics(trajectories: Sequence[Trajectory], plans: dict[str, list[str]],
                        kinds: dict[str, list[str] | None] | None = None) -> dict:
    """Three counts of why episodes fail that TGC cannot show, as plain counts (they add up over seeds and splits).

    ``plan``: of the failed episodes of a system with a planner (and a known failed sub-task k),
    ``diverged`` when the planner's sub-tasks 1..k differ from the task's ground-truth plan
    (``plans``: task id -> step descriptions; compared as text with whitespace normalised, so a
    paraphrase counts as a divergence), else ``followed`` (the plan was right: the code failed);
    ``unknown`` without a plan or sub-task.
    ``after_error``: every failed execution (AppWorld's "Execution failed"), by the same
    conversation's next reply: ``report`` (no code: it gave up or claimed success), ``same_code``
    (the failing code again), ``new_code`` (of which ``repaired``: ran without error), ``none``
    (the budget ended the sub-task first).
    ``kinds``: for each sub-task kind of the ground-truth plans (``kinds``: task id -> the kind of each
    plan step, e.g. login, collect, filter), in how many episodes of a system with a planner the team
    ``reached`` the step at that position and how many ``failed`` there; positional, so a failed
    episode whose plan diverged counts against the kind the true plan has where it failed. A failure
    past the true plan's last step counts as ``beyond_plan``.
    """
    def norm(text: str) -> str:
        return " ".join(text.split())

    def step(steps: list[str], i: int) -> str | None:
        return norm(steps[i]) if i < len(steps) else None

    plan = {"diverged": 0, "followed": 0, "unknown": 0}
    by_kind: dict[str, dict[str, int]] = {}
    after = {"errors": 0, "report": 0, "same_code": 0, "new_code": 0, "repaired": 0, "none": 0}
    failed = 0
    for trajectory in trajectories:
        outcome = trajectory.outcome
        solved = bool(outcome and outcome.success)
        k = None if solved or not outcome else outcome.failed_subtask  # the sub-task it failed in
        planned = any(c.role == "planner" for c in trajectory.conversations)
        failed += not solved
        if not solved and planned:
            truth = plans.get(trajectory.task_id)
            if not truth or not k:
                plan["unknown"] += 1
            else:
                emitted = [s.description for s in trajectory.subtasks]
                plan["diverged" if any(step(emitted, i) != step(truth, i) for i in range(k)) else "followed"] += 1
        steps = (kinds or {}).get(trajectory.task_id)
        if steps and planned and (solved or k):
            for kind in steps[:k]:  # solved (k None): every step was reached
                by_kind.setdefault(kind, {"reached": 0, "failed": 0})["reached"] += 1
            if k:
                failed_kind = steps[k - 1] if k <= len(steps) else "beyond_plan"
                by_kind.setdefault(failed_kind, {"reached": 0, "failed": 0})["failed"] += 1
        for conversation in trajectory.conversations:
            messages = conversation.messages
            replies = [i for i, m in enumerate(messages) if m.role == "assistant"]
            for position, i in enumerate(replies):
                code = extract_code(messages[i].content)
                if code is None or i + 1 >= len(messages) or not is_failed_observation(messages[i + 1].content):
                    continue
                after["errors"] += 1
                if position + 1 == len(replies):
                    after["none"] += 1
                    continue
                j = replies[position + 1]
                retry = extract_code(messages[j].content)
                if retry is None:
                    after["report"] += 1
                elif norm(retry) == norm(code):
                    after["same_code"] += 1
                else:
                    after["new_code"] += 1
                    after["repaired"] += int(j + 1 < len(messages) and not is_failed_observation(messages[j + 1].content))
    return {"episodes": len(trajectories), "failed": failed, "plan": plan, "after_error": after,
            "kinds": dict(sorted(by_kind.items()))}


def worst_kinds(by_kind: dict[str, dict[str, int]], most: int = 3) -> str:
    """The sub-task kinds with the most failures (ties: the higher share of those that reached the kind
    first), as 'filter 12 of 30 (40 %)' (failed there of reached), or ''."""
    def share(n: dict[str, int]) -> float:
        return n["failed"] / n["reached"] if n["reached"] else -1.0

    ranked = sorted((kind for kind, n in by_kind.items() if n["failed"]),
                    key=lambda kind: (-by_kind[kind]["failed"], -share(by_kind[kind]), kind))[:most]
    return ", ".join(f"{kind} {by_kind[kind]['failed']} of {by_kind[kind]['reached']} ({100 * share(by_kind[kind]):.0f} %)"
                     if by_kind[kind]["reached"] else f"{kind} {by_kind[kind]['failed']}" for kind in ranked)


def describe_diagnostics(diagnostics: dict) -> str:
    """One line of ``failure_diagnostics`` counts (possibly summed over runs) for a report."""
    plan, after = diagnostics["plan"], diagnostics["after_error"]
    line = f"{diagnostics['failed']} of {diagnostics['episodes']} episodes failed"
    if plan["diverged"] or plan["followed"]:
        line += (f"; the plan diverged from the ground truth by the failed sub-task in {plan['diverged']}, "
                 f"followed it in {plan['followed']}")
    worst = worst_kinds(diagnostics.get("kinds") or {})
    if worst:
        line += f"; failed most at the true plan's steps of kind {worst} (failed there of reached)"
    line += f"; {after['errors']} failed executions"
    if after["errors"]:
        line += (f", then: {after['report']} a report without code, {after['same_code']} the same code again, "
                 f"{after['new_code']} new code ({after['repaired']} of it ran), {after['none']} no reply left")
    return line


def flat_metrics(summary: dict, prefix: str = "rollout/") -> dict[str, float]:
    """Scalars for a logger: tgc, sgc, per difficulty, usage means, a count per failure reason."""
    goal, usage = summary["goal"], summary["usage"]
    out = {f"{prefix}tgc": goal["tgc"], f"{prefix}sgc": goal["sgc"], f"{prefix}episodes": goal["num_tasks"]}
    for level, sub in goal["by_difficulty"].items():
        out[f"{prefix}tgc_difficulty_{level}"] = sub["tgc"]
        out[f"{prefix}sgc_difficulty_{level}"] = sub["sgc"]
    out[f"{prefix}llm_calls"] = usage["mean_llm_calls"]
    for role, value in usage["mean_llm_calls_per_role"].items():
        out[f"{prefix}llm_calls/{role}"] = value
    for role, value in usage["mean_prompt_tokens_per_role"].items():
        out[f"{prefix}prompt_tokens/{role}"] = value
    for role, value in usage["mean_completion_tokens_per_role"].items():
        out[f"{prefix}completion_tokens/{role}"] = value
    out[f"{prefix}flops"] = usage["mean_flops"]
    out[f"{prefix}cost"] = usage["mean_cost"]
    out[f"{prefix}env_steps"] = usage["mean_env_steps"]
    out[f"{prefix}wall_time_s"] = usage["mean_wall_time_s"]
    failures = summary["failures"]
    for reason in sorted(set(FAILURE_REASONS) | set(failures)):
        out[f"{prefix}failures/{reason}"] = failures.get(reason, 0)
    return {k: float(v) for k, v in out.items()}


def format_summary(summary: dict, title: str = "rollout") -> str:
    goal, usage = summary["goal"], summary["usage"]
    lines = [f"{title}: TGC {goal['tgc']:.1f}  SGC {goal['sgc']:.1f}  ({goal['num_tasks']} tasks, "
             f"{goal['num_scenarios']} scenarios)"]
    for level, sub in goal["by_difficulty"].items():
        lines.append(f"  difficulty {level}: TGC {sub['tgc']:.1f}  SGC {sub['sgc']:.1f}  ({sub['num_tasks']} tasks)")
    lines.append(f"  per episode: {usage['mean_llm_calls']:.1f} LLM calls, {usage['mean_tokens']:.0f} tokens, "
                 f"{usage['mean_flops']:.3g} FLOPs, cost {usage['mean_cost']:.4f}, "
                 f"{usage['mean_env_steps']:.1f} env steps, {usage['mean_wall_time_s']:.1f} s")
    if summary["failures"]:
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items())))
    return "\n".join(lines)


class _Bar:
    def __init__(self, progress, task_id):
        self.progress, self.task_id = progress, task_id
        self.done = self.ok = 0

    def advance(self, trajectory: Trajectory) -> None:
        self.done += 1
        self.ok += bool(trajectory.outcome and trajectory.outcome.success)
        if self.progress is not None:
            self.progress.update(self.task_id, advance=1, status=f"success {self.ok}/{self.done}")


@contextlib.contextmanager
def episode_progress(total: int, description: str, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar over episodes; silently absent when disabled or another live display runs."""
    if not enabled:
        yield _Bar(None, None)
        return
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False)
    try:
        progress.start()
    except LiveError:  # e.g. Lightning's RichProgressBar is live: do without our bar
        yield _Bar(None, None)
        return
    try:
        yield _Bar(progress, progress.add_task(description, total=total, status=""))
    finally:
        progress.stop()
