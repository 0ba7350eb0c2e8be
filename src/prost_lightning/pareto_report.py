"""`prost report RUNS...`: compare runs by goal completion and cost (table, Pareto plot, sub-task errors).

    prost report runs/sweep/cpu/* --out runs/sweep/cpu/report --x_axis flops

For every run (a run folder, or a trajectory .jsonl file) it finds the episodes it played, the
training config and the throughput summary:

* episodes: ``<run>/**/eval/*.jsonl`` when present (``prost eval --out``), else the newest
  ``<run>/**/rollouts/epoch_<n>.jsonl`` (the RolloutCallback's last validation);
* config: the ``config.yaml`` LightningCLI saved next to them (system, schedule, mode, shared
  adapter, base model); a run without one (e.g. an untrained baseline) is labelled ``untrained``;
* ``fit_summary.json``: training time and throughput.

It writes, atomically, into ``out``: ``report.md`` and ``report.json`` (one row per run: TGC, SGC,
per difficulty, mean tokens / FLOPs / cost / wall time / LLM calls / env steps per task, failure
reasons, sub-task error rates), ``pareto.png`` (TGC against the chosen cost axis, non-dominated
configurations marked and labelled) and ``subtask_errors.png`` (for each sub-task index, the share
of episodes that failed there, per schedule). With ``--wandb true`` the table and both plots are
logged to W&B (offline unless W&B is configured; upload later with ``wandb sync <out>/wandb/offline-run-*``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from prost_lightning.agents.episode_summary import summarize
from prost_lightning.agents.systems import system_for_roles
from prost_lightning.errors import ProstError
from prost_lightning.files import check_writable, write_atomic
from prost_lightning.metrics import subtask_error_rates
from prost_lightning.trajectory import read_trajectories

XAxis = Literal["flops", "tokens", "cost", "env_steps"]
Source = Literal["auto", "eval", "rollouts"]

# x-axis name -> (key of the row, axis label)
X_AXES: dict[str, tuple[str, str]] = {
    "flops": ("mean_flops", "estimated FLOPs per task"),
    "tokens": ("mean_tokens", "tokens per task (prompt + completion)"),
    "cost": ("mean_cost", "cost per task (USD, price table)"),
    "env_steps": ("mean_env_steps", "environment steps per task"),
}
UNTRAINED = "untrained"
_EPOCH = re.compile(r"epoch_(\d+)\.jsonl$")


class ReportError(ProstError, ValueError):
    """A run folder without episodes, or bad report options; the message says what to run first."""


# -- pure functions -------------------------------------------------------------------------------

def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points (lower cost and higher score are better), by rising cost.

    A point is dominated when another one costs no more and scores no less, and is strictly better
    in one of the two. Identical points do not dominate each other: both stay on the front.
    """
    if len(costs) != len(scores):
        raise ValueError(f"costs and scores differ in length ({len(costs)} != {len(scores)})")
    front = []
    for i, (ci, si) in enumerate(zip(costs, scores, strict=True)):
        dominated = any(cj <= ci and sj >= si and (cj < ci or sj > si)
                        for j, (cj, sj) in enumerate(zip(costs, scores, strict=True)) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -scores[i]))


def error_rates_by_group(outcomes_by_group: Mapping[str, Sequence[Any]]) -> dict[str, dict[int, float]]:
    """{group: {sub-task k: share of the group's episodes that failed in sub-task k}}.

    Episodes of all runs in a group (e.g. one schedule) are pooled, so a group's rates are shares
    of all its episodes; ``metrics.subtask_error_rates`` does the counting.
    """
    return {group: subtask_error_rates(outcomes) for group, outcomes in outcomes_by_group.items()}


def schedule_label(schedule: str | None, mode: str | None = None, shared_adapter: bool = False) -> str:
    """The group a run's sub-task errors count under: ``progressive``, ``full (mask)``, ``untrained``..."""
    if not schedule:
        return UNTRAINED
    extras = [x for x in (mode if mode and mode != "slice" else None, "shared adapter" if shared_adapter else None) if x]
    return f"{schedule} ({', '.join(extras)})" if extras else schedule


def system_of(config: Mapping[str, Any]) -> str | None:
    """The agent system a saved LightningCLI config trained: the RolloutCallback's, else from the roles."""
    for callback in ((config.get("trainer") or {}).get("callbacks") or []):
        if isinstance(callback, Mapping) and str(callback.get("class_path", "")).endswith("RolloutCallback"):
            system = (callback.get("init_args") or {}).get("system")
            if system:
                return system
    roles = sorted((config.get("model") or {}).get("roles") or [])
    return (system_for_roles(roles) if roles else None) or "+".join(roles) or None


def describe_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """System, schedule, mode, shared adapter, base model, quantization and epochs of a saved config."""
    config = config or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    schedule = (data.get("schedule") or {}).get("name") if config else None
    return {
        "system": system_of(config) if config else None,
        "schedule": schedule,
        "mode": data.get("mode"),
        "shared_adapter": bool(model.get("shared_adapter", False)),
        "base_model": model.get("base_model"),
        "quantization": model.get("quantization"),
        "max_epochs": (config.get("trainer") or {}).get("max_epochs"),
    }


def summarize_episodes(trajectories: Sequence[Any]) -> dict[str, Any]:
    """Goal completion, usage means, failure reasons and sub-task error rates of one run's episodes."""
    outcomes = [t.outcome for t in trajectories]
    summary = summarize(trajectories)  # the same figures the rollouts and `prost eval` print
    goal, usage = summary["goal"], summary["usage"]
    return {
        "episodes": len(trajectories),
        "tgc": goal["tgc"], "sgc": goal["sgc"], "num_tasks": goal["num_tasks"],
        "by_difficulty": goal["by_difficulty"],
        **{k: usage[k] for k in ("mean_tokens", "mean_flops", "mean_cost", "mean_wall_time_s",
                                 "mean_llm_calls", "mean_env_steps", "mean_llm_calls_per_role")},
        "failures": summary["failures"],
        "subtask_error_rates": {str(k): v for k, v in subtask_error_rates(outcomes).items()},
    }


# -- finding a run's files ------------------------------------------------------------------------

def _epoch(path: Path) -> int:
    match = _EPOCH.search(path.name)
    return int(match.group(1)) if match else -1


def find_episodes(run: Path, source: Source = "auto", split: str | None = None) -> Path:
    """The episodes file of a run folder (see the module docstring), or ``run`` itself if it is a file."""
    if run.is_file():
        return run
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder or episodes file")
    evals = [p for p in run.rglob("eval/*.jsonl") if split is None or p.stem == split]
    rollouts = list(run.rglob("rollouts/epoch_*.jsonl"))
    candidates = {"auto": evals or rollouts, "eval": evals, "rollouts": rollouts}[source]
    if not candidates:
        wanted = {"auto": "eval/*.jsonl or rollouts/epoch_*.jsonl", "eval": f"eval/{split or '*'}.jsonl",
                  "rollouts": "rollouts/epoch_*.jsonl"}[source]
        raise ReportError(f"{run}: no episodes found ({wanted}); train with a RolloutCallback "
                          "(trainer.callbacks) or run `prost eval ... --out <run>/eval/<split>.jsonl` first")
    return max(candidates, key=lambda p: (p.stat().st_mtime, _epoch(p)))


def _nearest(name: str, start: Path, run: Path) -> Path | None:
    """``name`` in ``start`` or its parents up to ``run``, else the newest one anywhere under ``run``."""
    folder = start
    while True:
        if (folder / name).is_file():
            return folder / name
        if folder == run or folder.parent == folder or run not in folder.parents:
            break
        folder = folder.parent
    found = list(run.rglob(name)) if run.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _read_yaml(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ReportError(f"{path}: not valid YAML ({error}); delete it or fix it") from None
    return data if isinstance(data, dict) else None


def _read_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON (line {error.lineno}); delete it or fix it") from None


def load_run(run: str | os.PathLike, name: str | None = None, source: Source = "auto",
             split: str | None = None) -> tuple[dict[str, Any], list]:
    """One report row for a run folder or episodes file, and its episodes' outcomes."""
    run = Path(run)
    episodes = find_episodes(run, source, split)
    trajectories = read_trajectories(episodes)
    if not trajectories:
        raise ReportError(f"{episodes}: no episodes in the file")
    version_dir = episodes.parent.parent
    folder = run if run.is_dir() else episodes.parent
    config = _read_yaml(_nearest("config.yaml", version_dir, folder)) if run.is_dir() else None
    fit = _read_json(_nearest("fit_summary.json", version_dir, folder)) if run.is_dir() else None
    described = describe_config(config)
    if not described["system"]:
        described["system"] = Counter(t.system for t in trajectories).most_common(1)[0][0]
    row = {
        "name": name or (run.name if run.is_dir() else run.stem),
        "run": str(run),
        "episodes_file": str(episodes),
        **described,
        "group": schedule_label(described["schedule"], described["mode"], described["shared_adapter"]),
        **summarize_episodes(trajectories),
        "train_seconds": (fit or {}).get("train_seconds"),
        "train_tokens_per_s": (fit or {}).get("tokens_per_s"),
    }
    return row, [t.outcome for t in trajectories]


# -- output ----------------------------------------------------------------------------------------

def _num(value: float | None, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "sci":
        return f"{value:.3g}"
    if kind == "cost":
        return f"{value:.5f}"
    return f"{value:.1f}"


def to_markdown(result: Mapping[str, Any]) -> str:
    """The report as Markdown: runs table (★ = on the Pareto front), sub-task errors, failures, plots."""
    rows, levels = result["runs"], result["difficulties"]
    front = set(result["pareto_front"])
    header = (["", "config", "system", "schedule", "base model", "tasks", "TGC", "SGC"]
              + [f"TGC d{lv}" for lv in levels]
              + ["tokens/task", "FLOPs/task", "cost/task", "wall s/task", "LLM calls", "env steps", "train s"])
    lines = [f"# {result['title']}", "",
             f"Pareto front on TGC against {X_AXES[result['x_axis']][1]}: ★. "
             "TGC/SGC in percent (AppWorld's definitions); per-task figures are means over episodes.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ["★" if row["name"] in front else "", row["name"], row["system"] or "–", row["group"],
                 str(row["base_model"] or "–"), str(row["num_tasks"]), _num(row["tgc"]), _num(row["sgc"])]
        cells += [_num(row["by_difficulty"].get(lv, {}).get("tgc")) for lv in levels]
        cells += [f"{row['mean_tokens']:.0f}", _num(row["mean_flops"], "sci"), _num(row["mean_cost"], "cost"),
                  _num(row["mean_wall_time_s"]), _num(row["mean_llm_calls"]), _num(row["mean_env_steps"]),
                  _num(row["train_seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    groups = result["subtask_error_rates"]
    failing = {int(k) for rates in groups.values() for k in rates}
    indices = list(range(1, max(failing) + 1)) if failing else []
    lines += ["", "## Sub-task error rates per schedule", "",
              "Share of episodes that failed while in sub-task k (episodes of all runs of one system and schedule pooled).", ""]
    if indices:
        lines += ["| system · schedule | " + " | ".join(f"k={k}" for k in indices) + " |", "|---|" + "---|" * len(indices)]
        for group, rates in groups.items():
            lines.append(f"| {group} | " + " | ".join(f"{100 * rates.get(str(k), 0.0):.1f}%" for k in indices) + " |")
    else:
        lines.append("No episode failed inside a sub-task.")
    lines += ["", "## Failure reasons", ""]
    for row in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(row["failures"].items())) or "none"
        lines.append(f"- {row['name']}: {reasons} (episodes: `{row['episodes_file']}`)")
    lines += ["", "![Pareto plot](pareto.png)", "", "![Sub-task error rates](subtask_errors.png)", ""]
    return "\n".join(lines)


def build_report(rows: list[dict[str, Any]], outcomes: list[list], x_axis: XAxis = "flops",
                 title: str = "ProST report") -> dict[str, Any]:
    """Everything report.json holds: rows, the Pareto front (names), error rates per schedule."""
    if x_axis not in X_AXES:
        raise ReportError(f"--x_axis {x_axis!r}: choose one of {' | '.join(X_AXES)}")
    x_key = X_AXES[x_axis][0]
    front = pareto_front([r[x_key] for r in rows], [r["tgc"] for r in rows])
    pooled: dict[str, list] = {}  # per system and schedule: systems fail at different sub-tasks
    for row, outs in zip(rows, outcomes, strict=True):
        pooled.setdefault(f"{row['system']} · {row['group']}", []).extend(outs)
    rates = {g: {str(k): v for k, v in r.items()} for g, r in error_rates_by_group(pooled).items()}
    levels = sorted({lv for r in rows for lv in r["by_difficulty"]}, key=int)
    return {"title": title, "x_axis": x_axis, "runs": rows, "difficulties": levels,
            "pareto_front": [rows[i]["name"] for i in front], "subtask_error_rates": rates}


def _unique_names(runs: Sequence[str], names: Sequence[str] | None) -> list[str | None]:
    if names:
        if len(names) != len(runs):
            raise ReportError(f"--names: give one name per run ({len(runs)} runs, {len(names)} names)")
        return list(names)
    base = [Path(r).name if Path(r).is_dir() else Path(r).stem for r in runs]
    counts = Counter(base)
    return [f"{Path(r).parent.name}/{b}" if counts[b] > 1 else b for r, b in zip(runs, base, strict=True)]


def report(
    runs: list[str],
    out: str = "runs/report",
    x_axis: XAxis = "flops",
    names: list[str] | None = None,
    source: Source = "auto",
    split: str | None = None,
    title: str = "ProST report",
    wandb: bool = False,
    wandb_project: str = "prost-lightning",
    wandb_group: str | None = None,
) -> dict:
    """Aggregate runs into report.md, report.json, pareto.png and subtask_errors.png under ``out``.

    Args:
        runs: run folders (``--trainer.default_root_dir`` of ``prost fit``) or episode .jsonl files.
        out: folder for the report files.
        x_axis: cost axis of the Pareto plot: flops | tokens | cost | env_steps (means per task).
        names: one label per run (default: the folder or file name).
        source: which episodes to read from a run folder: auto (eval/*.jsonl if present, else the
            newest rollouts/epoch_<n>.jsonl) | eval | rollouts.
        split: with eval files, read eval/<split>.jsonl only.
        title: heading of report.md and the plots.
        wandb: also log the table and plots to W&B (offline unless configured; `wandb sync` later).
        wandb_project: W&B project.
        wandb_group: W&B group, e.g. the sweep name.

    Returns:
        The content of report.json.
    """
    from prost_lightning.pareto_plots import plot_pareto, plot_subtask_errors

    if not runs:
        raise ReportError("give at least one run folder or episodes file: prost report RUN [RUN ...]")
    check_writable(out, "--out", folder=True)
    labels = _unique_names(runs, names)
    loaded = [load_run(r, name=n, source=source, split=split) for r, n in zip(runs, labels, strict=True)]
    result = build_report([row for row, _ in loaded], [outs for _, outs in loaded], x_axis, title)
    folder = Path(out)
    write_atomic(folder / "pareto.png", plot_pareto(result))
    write_atomic(folder / "subtask_errors.png", plot_subtask_errors(result))
    write_atomic(folder / "report.json", json.dumps(result, indent=2) + "\n")
    write_atomic(folder / "report.md", to_markdown(result))
    if wandb:
        log_to_wandb(result, folder, project=wandb_project, group=wandb_group)
    for row in result["runs"]:
        star = "*" if row["name"] in result["pareto_front"] else " "
        print(f"{star} {row['name']:<32} TGC {row['tgc']:5.1f}  SGC {row['sgc']:5.1f}  "
              f"{X_AXES[x_axis][0]} {row[X_AXES[x_axis][0]]:.3g}")
    print(f"report: {folder / 'report.md'} (+ report.json, pareto.png, subtask_errors.png)")
    return result


def log_to_wandb(result: Mapping[str, Any], folder: Path, project: str, group: str | None,
                 tables: Mapping[str, tuple[list[str], list[list]]] | None = None) -> str:
    """Log the runs table, both plots (``folder``'s PNGs) and any extra ``{key: (columns, rows)}``
    tables to one W&B run (job_type=report); returns the run's folder."""
    import wandb as wb

    from prost_lightning.loggers import wandb_configured

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")
    columns = ["name", "system", "schedule", "base_model", "tasks", "tgc", "sgc", "mean_tokens", "mean_flops",
               "mean_cost", "mean_wall_time_s", "mean_llm_calls", "mean_env_steps", "pareto"]
    data = [[r["name"], r["system"], r["group"], r["base_model"], r["num_tasks"], r["tgc"], r["sgc"],
             r["mean_tokens"], r["mean_flops"], r["mean_cost"], r["mean_wall_time_s"], r["mean_llm_calls"],
             r["mean_env_steps"], r["name"] in result["pareto_front"]] for r in result["runs"]]
    run = wb.init(project=project, group=group, job_type="report", name=f"report-{folder.name}",
                  dir=str(folder), mode=mode, config={"x_axis": result["x_axis"]}, reinit=True)
    try:
        run.log({"report/runs": wb.Table(columns=columns, data=data),
                 "report/pareto": wb.Image(str(folder / "pareto.png")),
                 "report/subtask_errors": wb.Image(str(folder / "subtask_errors.png")),
                 **{key: wb.Table(columns=cols, data=rows) for key, (cols, rows) in (tables or {}).items()}})
        where = run.dir
    finally:
        run.finish()
    if mode == "offline":
        print(f"W&B offline run written under {folder / 'wandb'}; upload it with "
              f"`wandb sync {folder / 'wandb'}/offline-run-*`")
    return where


def expand_positional_runs(argv: list[str]) -> list[str]:
    """``prost report A B --out X`` -> ``--runs+=A --runs+=B --out X`` (jsonargparse has no nargs='+').

    Every option of :func:`report` takes one value (``--key value`` or ``--key=value``), so a bare
    token that is not an option's value is a run.
    """
    flags = {"-h", "--help", "--print_config"}
    out: list[str] = []
    runs: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token.startswith("-"):
            out.append(token)
            if "=" not in token and token not in flags:
                value = next(tokens, None)
                if value is not None:
                    out.append(value)
        else:
            runs.append(token)
    return [f"--runs+={r}" for r in runs] + out
