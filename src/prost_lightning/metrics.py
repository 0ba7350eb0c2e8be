"""Benchmark metrics (AppWorld's TGC/SGC) and usage aggregation. Pure Python: no torch, no appworld.

Goal completion, as AppWorld's ``evaluator.Metric`` computes it:
    TGC = 100 * mean over tasks of success
    SGC = 100 * share of scenarios (task_id.split("_")[0]) whose every task succeeded
both rounded like AppWorld (mean to 4 places, percentage to 1), and both again per difficulty
(the tasks of that difficulty only). Success always comes from ``evaluate()``, never from
``task_completed()``.

Usage: per-episode records shaped like ``trajectory.Usage`` (objects or dicts) are aggregated into
means/totals; FLOPs are estimated as 2 * parameters * tokens processed. The cost of each LLM call
is priced where the call is made, by ``agents.episode.CostModel`` (the one price rule: the role's
entry, else the table's ``default`` entry, else explicitly free), and only summed here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def scenario_of(task_id: str) -> str:
    """AppWorld's scenario (generator) id: the part before the first '_'."""
    return task_id.split("_")[0]


def _percent(values: list[float]) -> float:
    if not values:
        return 0.0
    return round(100 * round(sum(values) / len(values), 4), 1)


def task_goal_completion(successes: Mapping[str, bool]) -> float:
    """TGC in percent over {task_id: success}."""
    return _percent([float(bool(s)) for s in successes.values()])


def scenario_goal_completion(successes: Mapping[str, bool]) -> float:
    """SGC in percent: share of scenarios whose every task in ``successes`` succeeded."""
    by_scenario: dict[str, list[bool]] = defaultdict(list)
    for task_id, success in successes.items():
        by_scenario[scenario_of(task_id)].append(bool(success))
    return _percent([float(all(v)) for v in by_scenario.values()])


def goal_completion(successes: Mapping[str, bool], difficulties: Mapping[str, int | None] | None = None) -> dict:
    """{tgc, sgc, num_tasks, num_scenarios, by_difficulty: {"1": {tgc, sgc, num_tasks, num_scenarios}, ...}}.

    ``by_difficulty`` has string keys (JSON-stable) and holds only difficulties that occur.
    """
    summary = {
        "tgc": task_goal_completion(successes),
        "sgc": scenario_goal_completion(successes),
        "num_tasks": len(successes),
        "num_scenarios": len({scenario_of(t) for t in successes}),
        "by_difficulty": {},
    }
    if difficulties:
        levels = sorted({d for t, d in difficulties.items() if t in successes and d is not None})
        for level in levels:
            subset = {t: s for t, s in successes.items() if difficulties.get(t) == level}
            summary["by_difficulty"][str(level)] = {
                "tgc": task_goal_completion(subset),
                "sgc": scenario_goal_completion(subset),
                "num_tasks": len(subset),
                "num_scenarios": len({scenario_of(t) for t in subset}),
            }
    return summary


# -- usage ---------------------------------------------------------------------------------------

def estimate_flops(parameters: int | float, tokens: int | float) -> float:
    """Forward-pass FLOPs ≈ 2 * parameters * tokens processed (tokens the model actually computed)."""
    return 2.0 * float(parameters) * float(tokens)


def _as_dict(record: Any) -> dict:
    if isinstance(record, Mapping):
        return dict(record)
    if hasattr(record, "model_dump"):
        return record.model_dump()
    return dict(vars(record))


def aggregate_usage(usages: Iterable[Any]) -> dict:
    """Means and totals over episodes' usage records (``trajectory.Usage`` or dicts of its fields)."""
    records = [_as_dict(u) for u in usages]
    n = len(records)
    totals = {"llm_calls": Counter(), "prompt_tokens": Counter(), "completion_tokens": Counter()}
    scalars = Counter()
    for record in records:
        for key in totals:
            totals[key].update({role: int(v) for role, v in (record.get(key) or {}).items()})
        for key in ("flops", "cost", "env_steps", "wall_time_s"):
            scalars[key] += float(record.get(key) or 0.0)

    def mean(x: float) -> float:
        return x / n if n else 0.0

    roles = sorted(set().union(*totals.values()))
    return {
        "episodes": n,
        "mean_llm_calls": mean(sum(totals["llm_calls"].values())),
        "mean_llm_calls_per_role": {r: mean(totals["llm_calls"][r]) for r in roles},
        "mean_prompt_tokens_per_role": {r: mean(totals["prompt_tokens"][r]) for r in roles},
        "mean_completion_tokens_per_role": {r: mean(totals["completion_tokens"][r]) for r in roles},
        "mean_tokens": mean(sum(totals["prompt_tokens"].values()) + sum(totals["completion_tokens"].values())),
        "total_prompt_tokens": sum(totals["prompt_tokens"].values()),
        "total_completion_tokens": sum(totals["completion_tokens"].values()),
        "mean_flops": mean(scalars["flops"]),
        "total_flops": scalars["flops"],
        "mean_cost": mean(scalars["cost"]),
        "total_cost": scalars["cost"],
        "mean_env_steps": mean(scalars["env_steps"]),
        "mean_wall_time_s": mean(scalars["wall_time_s"]),
        "total_wall_time_s": scalars["wall_time_s"],
    }


def failure_reason_counts(outcomes: Iterable[Any]) -> dict[str, int]:
    """{reason: count} over failed episodes' outcomes (``trajectory.Outcome`` or dicts); None -> "unknown"."""
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        record = _as_dict(outcome) if outcome is not None else {"success": False}
        if not record.get("success"):
            counts[record.get("failure_reason") or "unknown"] += 1
    return dict(counts)


def subtask_error_rates(outcomes: Iterable[Any]) -> dict[int, float]:
    """For each sub-task index k: share of *all* episodes that failed while in sub-task k."""
    records = [_as_dict(o) for o in outcomes if o is not None]
    failed_at = Counter(r["failed_subtask"] for r in records if not r.get("success") and r.get("failed_subtask"))
    return {k: failed_at[k] / len(records) for k in sorted(failed_at)} if records else {}
