"""RESULTS.md as text (and the same tables for W&B), rendered from results_report.build_results.

"What this shows" is generated from the intervals by fixed rules (``reading``), so it can only say
what the numbers say: a difference whose 95 % interval includes 0 is reported as not shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prost_lightning.results_report import CLAIMS


def interval(e: Mapping[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{e['value']:{sign}.1f} [{e['low']:{sign}.1f}, {e['high']:{sign}.1f}]"


def reading(e: Mapping[str, float], lower_is_better: bool = False) -> str:
    """better | worse | no difference shown: from the interval alone."""
    if e["low"] > 0:
        return "worse" if lower_is_better else "better"
    if e["high"] < 0:
        return "better" if lower_is_better else "worse"
    return "no difference shown"


def _num(value: float | None, kind: str = ".1f") -> str:
    return "–" if value is None else format(value, kind)


def _subset_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r["goal"]["tgc"]))


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(line) + " |" for line in lines]]


def goal_table(result: Mapping[str, Any], metric: str) -> list[str]:
    rows = result["runs"]
    subsets = _subset_columns(rows)
    header = ["configuration", "system", "schedule", "seeds", "tasks",
              *[("overall" if s == "all" else s) for s in subsets]]
    lines = [[r["name"], r["system"], r["group"], str(len(r["seeds"])), str(r["num_tasks"]),
              *[interval(r["goal"][metric][s]) if s in r["goal"][metric] else "–" for s in subsets]] for r in rows]
    return _table(header, lines)


def differences_table(result: Mapping[str, Any]) -> list[str]:
    splits = [k for k in dict.fromkeys(k for c in result["comparisons"] for k in c["tgc"]) if k != "all"]
    header = ["claim", "a − b", "seeds", "ΔTGC", *[f"ΔTGC {s}" for s in splits], "ΔSGC",
              "Δ share failing inside a sub-task", "reading (TGC)"]
    lines = [[c["claim"], f"{c['a']} − {c['b']}", str(len(c["seeds"])), interval(c["tgc"]["all"], True),
              *[interval(c["tgc"][s], True) if s in c["tgc"] else "–" for s in splits], interval(c["sgc"], True),
              interval(c["failed_in_subtask"], True),
              {"better": "a better", "worse": "b better"}.get(reading(c["tgc"]["all"]), "no difference shown")]
             for c in result["comparisons"]]
    return _table(header, lines)


def subtask_table(result: Mapping[str, Any]) -> list[str]:
    rates = result["subtask_error_rates"]
    episodes = {f"{r['system']} · {r['group']}": r["episodes"] for r in result["runs"]}
    failing = {int(k) for group in rates.values() for k in group}
    indices = list(range(1, max(failing) + 1)) if failing else []
    header = ["system · schedule", "episodes", *[f"k={k}" for k in indices], "any sub-task"]
    lines = [[group, str(episodes.get(group, "–")), *[f"{100 * r.get(str(k), 0.0):.1f}%" for k in indices],
              f"{100 * sum(r.values()):.1f}%"] for group, r in rates.items()]
    return _table(header, lines)


def cost_table(result: Mapping[str, Any]) -> list[str]:
    front = set(result["pareto_front"])
    header = ["configuration", "Pareto", "tokens/task", "FLOPs/task", "LLM calls/task", "env steps/task",
              "eval s/task", "USD/task", "train steps", "trained tokens", "train s", "cell wall s"]
    lines = [[r["name"], "★" if r["name"] in front else "", _num(r["mean_tokens"], ".0f"), _num(r["mean_flops"], ".3g"),
              _num(r["mean_llm_calls"]), _num(r["mean_env_steps"]), _num(r["mean_wall_time_s"]),
              _num(r["mean_cost"], ".2e"), _num(r["train_steps"], ".0f"), _num(r["trained_tokens"], ",.0f"),
              _num(r["train_seconds"]), _num(r["cell_wall_s"], ".0f")] for r in result["runs"]]
    return _table(header, lines)


def cells_table(result: Mapping[str, Any]) -> list[str]:
    header = ["cell", "seed", "tasks", "TGC", "train steps", "trained tokens", "fit s", "eval s", "wall s", "finished"]
    lines = [[c["cell"], str(c["seed"]), str(c["tasks"]), f"{c['tgc']:.1f}", _num(c["train_steps"], ".0f"),
              f"{c['trained_tokens']:,}", _num(c["fit_s"]), _num(c["eval_s"]), _num(c["wall_s"]),
              str(c.get("finished_at") or "–")] for c in result["cells"]]
    return _table(header, lines)


def where_episodes_fail(result: Mapping[str, Any]) -> list[str]:
    """Where each system · schedule's episodes most often failed: when nothing is solved, the one
    figure that still differs between schedules (a description, not a claim)."""
    peaks = [f"{group} inside sub-task {k} ({100 * rate:.1f} % of its episodes)"
             for group, rates in (result.get("subtask_error_rates") or {}).items() if rates
             for k, rate in [max(rates.items(), key=lambda item: item[1])]]
    if not peaks:
        return []
    return [f"- Where the episodes failed most often: {'; '.join(peaks)} (sub-task error table). With every "
            "episode failing, this says where each team stops, not that one schedule is better."]


def what_this_shows(result: Mapping[str, Any]) -> list[str]:
    """Sober sentences, one per comparison, from the intervals (rules in ``reading``)."""
    rows = result["runs"]
    out = []
    if all(r["tgc"] == 0 for r in rows):
        return ["- No configuration solved any evaluated task (TGC 0 in every cell). This run cannot tell "
                "the schedules or systems apart: none of the claims is supported by it.", *where_episodes_fail(result)]
    seeds = min(len(r["seeds"]) for r in rows)
    for c in result["comparisons"]:
        d, verdict = c["tgc"]["all"], reading(c["tgc"]["all"])
        width = d["high"] - d["low"]
        if c["claim"] == "C1":
            held = {"better": "supported at this size", "worse": "contradicted at this size (full fine-tuning is better)",
                    "no difference shown": "not supported at this size"}[verdict]
            out.append(f"- C1 ({c['a'].split('_progressive')[0]}): ProST − full = {interval(d, True)} TGC points; "
                       f"the interval is {width:.1f} points wide against a difference of {abs(d['value']):.1f}: {held}.")
            fail = c["failed_in_subtask"]
            held2 = {"better": "fewer episodes fail inside a sub-task with ProST: C2 supported at this size",
                     "worse": "more episodes fail inside a sub-task with ProST: C2 contradicted at this size",
                     "no difference shown": "no difference in episodes failing inside a sub-task: C2 not supported at this size"}
            out.append(f"- C2 ({c['a'].split('_progressive')[0]}): share of episodes failing inside a sub-task, "
                       f"ProST − full = {interval(fail, True)} points: {held2[reading(fail, lower_is_better=True)]}.")
        elif c["claim"] == "C3":
            out.append(f"- C3: {c['a']} − {c['b']} = {interval(d, True)} TGC points "
                       f"({'the team is better' if verdict == 'better' else 'the single agent is better' if verdict == 'worse' else 'no difference shown'}).")
        else:
            out.append(f"- Ablation {c['a']} − {c['b']} = {interval(d, True)} TGC points ({verdict}; "
                       f"{len(c['seeds'])} seed: the interval covers task sampling only).")
    front = result["pareto_front"]
    teams = [n for n in front if any(r["name"] == n and r["system"] == "planner_executor" for r in rows)]
    out.append(f"- Pareto front (TGC vs {result['x_axis']} per task, means over seeds): {', '.join(front)}. "
               + ("A planner/executor configuration is on it." if teams else "No planner/executor configuration is on it.")
               + " The front uses point estimates; differences inside the intervals above do not make a point dominant.")
    if seeds < 3:
        few = [r["name"] for r in rows if len(r["seeds"]) == seeds]
        out.append(f"- Only {seeds} seed(s) for {', '.join(few)}: intervals involving "
                   f"{'it' if len(few) == 1 else 'them'} understate the variation between training runs.")
    return out


def _cell_commits(cells: Sequence[Mapping[str, Any]], report_commit: str) -> str:
    """The commits the cells ran on, when any differs from the one writing the report (a grid that
    spans sittings): cells of older records carry none."""
    commits: dict[str, list[str]] = {}
    for cell in cells:
        commits.setdefault(cell.get("commit") or "an unrecorded commit", []).append(cell["cell"])
    if set(commits) == {report_commit}:
        return ""
    return " (this report); the cells ran on " + "; ".join(f"{c} ({', '.join(names)})" for c, names in commits.items())


def to_markdown(result: Mapping[str, Any], images: str = "results/") -> str:
    head = result["header"]
    cells = result["cells"]
    wall = sum(c["wall_s"] or 0 for c in cells)
    fit = sum(c["fit_s"] or 0 for c in cells)
    finished = sorted(c["finished_at"] for c in cells if c.get("finished_at"))
    evaluation = head.get("eval") or {}
    lines = [
        f"# Results: {result['title']}",
        "",
        "Written by `prost results`; do not edit by hand: run the command again (docs/results.md).",
        "",
        f"- **Command**: `{head['command']}` (grid `{head['grid']}`, size `{head['size']}`)",
        f"- **Commit**: {head['commit']}" + _cell_commits(cells, head["commit"]),
        f"- **Machine**: {head['machine']}",
        f"- **Wall time**: {wall / 3600:.2f} h over {len(cells)} cells (fit {fit / 3600:.2f} h, evaluation "
        f"{(wall - fit) / 3600:.2f} h; cells finished {finished[0] if finished else '–'} to {finished[-1] if finished else '–'}); "
        f"this invocation {head['invocation_s']:.0f} s. Written {head['written_at']}.",
        f"- **Training**: overrides `{head['overrides']}`; the same oracle data (per system) and the same "
        "optimizer steps for every cell (docs/results.md: why steps, not tokens)",
        "- **Evaluation**: " + (f"the first {evaluation['max_tasks']} tasks of each of " if evaluation.get("max_tasks")
                                 else "every task of ") + ", ".join(evaluation.get("splits") or [])
        + f", once after training, greedy decoding (never trained or tuned on); limits `{evaluation.get('limits')}`, "
        f"prompts `{evaluation.get('prompt_dir') or 'built-in'}`, engine `{evaluation.get('engine', 'hf')}`",
        f"- **Statistics**: mean over seeds; [95 % interval]: percentile bootstrap ({result['bootstrap']['samples']} "
        f"resamples, seed {result['bootstrap']['seed']}) over seeds and tasks (scenarios for SGC) jointly; "
        "differences are paired by seed and task. Figures in percent (points for differences).",
        *([f"- **Unfinished grid**: {len(cells)} of {len(cells) + len(head['unfinished'])} cells; not run yet: "
           f"{', '.join(head['unfinished'])}. `prost results` runs them (finished cells are kept); until then "
           "every figure below covers the finished cells only."] if head.get("unfinished") else []),
        "",
        "Claims tested (the paper's, as we read them):",
        "",
        *[f"- **{k}**: {v}." for k, v in CLAIMS.items()],
        "",
        "## Task goal completion (TGC) per configuration — C1, C3",
        "",
        *goal_table(result, "tgc"),
        "",
        "## Scenario goal completion (SGC) per configuration — C1, C3",
        "",
        *goal_table(result, "sgc"),
        "",
        "## Paired differences — C1 (ProST − full), C3 (team − single), ablations (− ProST)",
        "",
        *differences_table(result),
        "",
        "## Sub-task error rates per schedule — C2",
        "",
        "Share of all episodes (seeds and splits pooled) that failed while inside sub-task k.",
        "",
        *subtask_table(result),
        "",
        f"![Sub-task error rates]({images}subtask_errors.png)",
        "",
        "## Cost per task and per cell — C3",
        "",
        "Inference figures are means per evaluated task (all seeds); training figures are means per cell. "
        f"★ = not dominated on TGC against {result['x_axis']} per task.",
        "",
        *cost_table(result),
        "",
        f"![TGC against cost, non-dominated configurations starred]({images}pareto.png)",
        "",
        "## What this shows",
        "",
        *what_this_shows(result),
        "",
        "## Cells",
        "",
        *cells_table(result),
        "",
    ]
    return "\n".join(lines)


def wandb_tables(result: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list]]]:
    """The TGC/SGC and paired-difference tables as W&B tables (numbers, not strings)."""
    goal_cols = ["configuration", "system", "schedule", "seeds", "metric", "subset", "value", "low", "high"]
    goal = [[r["name"], r["system"], r["group"], len(r["seeds"]), m, s, e["value"], e["low"], e["high"]]
            for r in result["runs"] for m in ("tgc", "sgc") for s, e in r["goal"][m].items()]
    diff_cols = ["claim", "a", "b", "seeds", "metric", "value", "low", "high"]
    diffs = [[c["claim"], c["a"], c["b"], len(c["seeds"]), f"tgc_{s}", e["value"], e["low"], e["high"]]
             for c in result["comparisons"] for s, e in c["tgc"].items()]
    diffs += [[c["claim"], c["a"], c["b"], len(c["seeds"]), key, c[key]["value"], c[key]["low"], c[key]["high"]]
              for c in result["comparisons"] for key in ("sgc", "failed_in_subtask")]
    return {"results/goal": (goal_cols, goal), "results/differences": (diff_cols, diffs)}
