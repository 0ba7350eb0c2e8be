"""RESULTS.md from the finished cells of `prost results`: estimates, bootstrap intervals, claims, plots.

Everything is recomputed from the cell folders (``cell.json``, ``eval/episodes.jsonl``,
``point.yaml``, ``fit_summary.json``); nothing is carried over. A **configuration** is a grid point
(system x schedule, or an ablation); its **cells** are its seeds.

Estimates: TGC of a configuration = mean over its seeds of the seed's TGC (100 x share of tasks
solved); SGC likewise over scenarios (a scenario counts when all its evaluated tasks are solved).
Intervals: 95 % percentile bootstrap, resampling seeds and tasks (scenarios for SGC) with
replacement, both at once; a paired difference resamples the same seeds and tasks for both sides.
The generator is seeded per statistic, so RESULTS.md is the same every time it is written from the
same folders. docs/results.md explains the choice.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from prost_lightning.errors import ProstError
from prost_lightning.files import write_atomic
from prost_lightning.metrics import aggregate_usage, scenario_of

CLAIMS = {
    "C1": "progressive sub-task training (ProST) gives a better team than standard full-trajectory fine-tuning",
    "C2": "ProST lowers the sub-task error rates (small models fail to learn later sub-tasks)",
    "C3": "fine-tuned multi-agent systems give a better effectiveness / efficiency trade-off (Pareto)",
}


class ResultsReportError(ProstError, ValueError):
    """Cell folders that cannot be compared (different tasks, missing files); the message names the cell."""


@dataclass
class Configuration:
    """One grid point and its cells (one per seed), aligned on the same tasks."""

    name: str
    system: str
    group: str  # schedule label: progressive, full, reverse, progressive (mask), ...
    base_model: str
    seeds: list[int]
    cells: list[dict[str, Any]]
    tasks: list[str]  # column order of the matrices
    split_of: dict[str, str]
    difficulty_of: dict[str, int | None]
    success: np.ndarray  # seeds x tasks, 1.0 = solved
    failed_in_subtask: np.ndarray  # seeds x tasks, 1.0 = failed while inside a sub-task
    episodes: list[Any] = field(default_factory=list)  # every trajectory of every seed


# -- loading --------------------------------------------------------------------------------------

def _read(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
        return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ResultsReportError(f"{path}: cannot read the {what} ({error}); redo the cell with `prost results`") from None


def load_cell(folder: Path) -> dict[str, Any]:
    """A finished cell: its record, saved config, training summary and episodes."""
    from prost_lightning.pareto_report import describe_config, schedule_label
    from prost_lightning.results import CELL_FILE, EPISODES_FILE
    from prost_lightning.trajectory import read_trajectories

    record = _read(folder / CELL_FILE, "cell record")
    described = describe_config(_read(folder / "point.yaml", "cell config"))
    fits = sorted(folder.glob("lightning_logs/version_*/fit_summary.json"))
    episodes = read_trajectories(folder / EPISODES_FILE)
    if not episodes:
        raise ResultsReportError(f"{folder / EPISODES_FILE}: no episodes; redo the cell with `prost results`")
    return {**record, "folder": str(folder), "episodes": episodes,
            "group": record.get("variant") if record.get("variant") in ("reverse", "random", "length") else
            schedule_label(described["schedule"], described["mode"], described["shared_adapter"]),
            "fit": _read(fits[-1], "fit summary") if fits else {}}


def group_cells(cells: Sequence[dict[str, Any]]) -> list[Configuration]:
    """Cells grouped by configuration (first-seen order), each a seeds x tasks success matrix."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        by_name.setdefault(cell["config"], []).append(cell)
    configurations = []
    for name, members in by_name.items():
        members = sorted(members, key=lambda c: (c["seed"] is None, c["seed"]))
        split_of = {t: s for s, ids in members[0]["tasks"].items() for t in ids}
        tasks = sorted(split_of, key=lambda t: (list(members[0]["tasks"]).index(split_of[t]), t))
        rows, failed, difficulty = [], [], {}
        for cell in members:
            played = {t.task_id: t for t in cell["episodes"]}
            if sorted(played) != sorted(tasks):
                raise ResultsReportError(f"{cell['folder']}: evaluated on other tasks than {members[0]['folder']}; "
                                         "cells of one configuration must share their tasks (same eval settings)")
            rows.append([float(bool(played[t].outcome and played[t].outcome.success)) for t in tasks])
            failed.append([float(bool(played[t].outcome and not played[t].outcome.success
                                      and played[t].outcome.failed_subtask)) for t in tasks])
            difficulty.update({t: played[t].difficulty for t in tasks})
        configurations.append(Configuration(
            name=name, system=members[0]["system"], group=members[0]["group"], base_model=members[0]["base_model"],
            seeds=[c["seed"] for c in members], cells=members, tasks=tasks, split_of=split_of,
            difficulty_of=difficulty, success=np.array(rows), failed_in_subtask=np.array(failed),
            episodes=[t for c in members for t in c["episodes"]]))
    return configurations


# -- statistics -----------------------------------------------------------------------------------

def _rng(seed: int, label: str) -> np.random.Generator:
    """One generator per statistic: the same interval whatever else is computed, in whatever order."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def scenario_matrix(tasks: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    """seeds x scenarios: 1.0 when every task of the scenario (among ``tasks``) is solved."""
    scenarios = list(dict.fromkeys(scenario_of(t) for t in tasks))
    columns = [[i for i, t in enumerate(tasks) if scenario_of(t) == s] for s in scenarios]
    return np.stack([matrix[:, c].min(axis=1) for c in columns], axis=1)


def bootstrap(matrices: Sequence[np.ndarray], weights: Sequence[float], rng: np.random.Generator,
              samples: int) -> tuple[float, float]:
    """95 % percentile interval of 100 x sum_i w_i * mean(M_i), resampling rows and columns jointly.

    All matrices share their shape and are resampled with the same row (seed) and column (task)
    indices: one matrix gives a mean's interval, two with weights (1, -1) a paired difference's.
    """
    seeds, columns = matrices[0].shape
    rows = rng.integers(0, seeds, size=(samples, seeds))
    cols = rng.integers(0, columns, size=(samples, columns))
    total = np.zeros(samples)
    for matrix, weight in zip(matrices, weights, strict=True):
        total += weight * matrix[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    low, high = np.percentile(100 * total, [2.5, 97.5])
    return float(low), float(high)


def estimate(matrices: Sequence[np.ndarray], weights: Sequence[float], samples: int, seed: int,
             label: str) -> dict[str, float]:
    """{value, low, high}: the point estimate (means over seeds and columns) and its interval."""
    value = 100 * sum(w * m.mean() for m, w in zip(matrices, weights, strict=True))
    low, high = bootstrap(matrices, weights, _rng(seed, label), samples)
    return {"value": float(value), "low": low, "high": high}


def subsets(configuration: Configuration) -> dict[str, list[int]]:
    """Column indices of every reported subset: all, each split, each difficulty."""
    tasks = configuration.tasks
    out = {"all": list(range(len(tasks)))}
    for split in dict.fromkeys(configuration.split_of[t] for t in tasks):
        out[split] = [i for i, t in enumerate(tasks) if configuration.split_of[t] == split]
    for level in sorted({d for d in configuration.difficulty_of.values() if d is not None}):
        out[f"d{level}"] = [i for i, t in enumerate(tasks) if configuration.difficulty_of[t] == level]
    return out


def goal_estimates(configuration: Configuration, samples: int, seed: int) -> dict[str, dict[str, dict]]:
    """{tgc|sgc: {subset: {value, low, high}}} of one configuration."""
    out: dict[str, dict[str, dict]] = {"tgc": {}, "sgc": {}}
    for subset, columns in subsets(configuration).items():
        matrix = configuration.success[:, columns]
        tasks = [configuration.tasks[i] for i in columns]
        out["tgc"][subset] = estimate([matrix], [1.0], samples, seed, f"tgc:{configuration.name}:{subset}")
        out["sgc"][subset] = estimate([scenario_matrix(tasks, matrix)], [1.0], samples, seed,
                                      f"sgc:{configuration.name}:{subset}")
    return out


def paired_difference(a: Configuration, b: Configuration, samples: int, seed: int) -> dict[str, Any] | None:
    """a - b on TGC (overall, per split), SGC and the share of episodes failing inside a sub-task.

    Paired by task and by seed (the seeds both have); None when they share no seed or no task set.
    """
    shared = [s for s in a.seeds if s in b.seeds]
    if not shared or a.tasks != b.tasks:
        return None
    rows_a, rows_b = [a.seeds.index(s) for s in shared], [b.seeds.index(s) for s in shared]
    label = f"{a.name}-{b.name}"
    out = {"a": a.name, "b": b.name, "seeds": shared, "tgc": {}}
    for subset, columns in subsets(a).items():
        if subset.startswith("d"):
            continue
        pair = [a.success[rows_a][:, columns], b.success[rows_b][:, columns]]
        out["tgc"][subset] = estimate(pair, [1.0, -1.0], samples, seed, f"dtgc:{label}:{subset}")
    out["sgc"] = estimate([scenario_matrix(a.tasks, a.success[rows_a]), scenario_matrix(b.tasks, b.success[rows_b])],
                          [1.0, -1.0], samples, seed, f"dsgc:{label}")
    out["failed_in_subtask"] = estimate([a.failed_in_subtask[rows_a], b.failed_in_subtask[rows_b]], [1.0, -1.0],
                                        samples, seed, f"dfail:{label}")
    return out


def comparisons(configurations: Sequence[Configuration]) -> list[tuple[str, str, str]]:
    """(claim, a, b) pairs: ProST - full per system, team - single per schedule, ablation - ProST."""
    by_key = {(c.system, c.group): c.name for c in configurations}
    systems = list(dict.fromkeys(c.system for c in configurations))
    out = [("C1", by_key[(s, "progressive")], by_key[(s, "full")]) for s in systems
           if (s, "progressive") in by_key and (s, "full") in by_key]
    for schedule in ("progressive", "full"):
        if ("planner_executor", schedule) in by_key and ("single", schedule) in by_key:
            out.append(("C3", by_key[("planner_executor", schedule)], by_key[("single", schedule)]))
    core = {"progressive", "full"}
    for c in configurations:
        if c.group not in core and (c.system, "progressive") in by_key:
            out.append(("ablation", c.name, by_key[(c.system, "progressive")]))
    return out


# -- the whole report -----------------------------------------------------------------------------

def cost_row(configuration: Configuration) -> dict[str, Any]:
    """Per-task inference cost (pooled over seeds) and per-cell training cost (mean over seeds)."""
    usage = aggregate_usage([t.usage for t in configuration.episodes])
    fits = [c["fit"] for c in configuration.cells]

    def mean(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {
        **{k: usage[k] for k in ("mean_tokens", "mean_flops", "mean_cost", "mean_wall_time_s", "mean_llm_calls",
                                 "mean_env_steps")},
        "train_steps": mean([f.get("steps") for f in fits]),
        "trained_tokens": mean([sum((f.get("trained_tokens") or {}).values()) or None for f in fits]),
        "train_seconds": mean([f.get("train_seconds") for f in fits]),
        "cell_wall_s": mean([c.get("wall_s") for c in configuration.cells]),
    }


def build_results(cells: Sequence[dict[str, Any]], samples: int = 2000, seed: int = 0, x_axis: str = "flops",
                  title: str = "ProST results") -> dict[str, Any]:
    """Everything results.json holds; also the `result` the Pareto report's plots and W&B logging read."""
    from prost_lightning.pareto_report import build_report

    configurations = group_cells(cells)
    rows = []
    for c in configurations:
        goal = goal_estimates(c, samples, seed)
        levels = {k[1:]: {"tgc": goal["tgc"][k]["value"], "sgc": goal["sgc"][k]["value"]}
                  for k in goal["tgc"] if k.startswith("d")}
        rows.append({"name": c.name, "system": c.system, "group": c.group, "base_model": c.base_model,
                     "seeds": c.seeds, "num_tasks": len(c.tasks), "episodes": len(c.episodes),
                     "tgc": goal["tgc"]["all"]["value"], "sgc": goal["sgc"]["all"]["value"],
                     "tgc_interval": [goal["tgc"]["all"]["low"], goal["tgc"]["all"]["high"]],
                     "goal": goal, "by_difficulty": levels, **cost_row(c)})
    result = build_report(rows, [[t.outcome for t in c.episodes] for c in configurations], x_axis, title)
    by_name = {c.name: c for c in configurations}
    result["comparisons"] = [{"claim": claim, **diff} for claim, a, b in comparisons(configurations)
                             if (diff := paired_difference(by_name[a], by_name[b], samples, seed))]
    result["cells"] = [{"cell": c["cell"], "config": c["config"], "seed": c["seed"],
                        "tgc": 100 * float(np.mean([bool(t.outcome and t.outcome.success) for t in c["episodes"]])),
                        "tasks": len(c["episodes"]), "fit_s": c.get("fit_s"), "eval_s": c.get("eval_s"),
                        "wall_s": c.get("wall_s"), "train_steps": c["fit"].get("steps"),
                        "trained_tokens": sum((c["fit"].get("trained_tokens") or {}).values()),
                        "finished_at": c.get("finished_at"), "commit": c.get("commit")} for c in cells]
    result["bootstrap"] = {"samples": samples, "seed": seed}
    return result


def machine() -> str:
    """CPU model, cores, memory and the CPU flags that decide the bf16 path."""
    from prost_lightning.backbone import fast_bf16

    model, flags, memory = "unknown CPU", set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
        memory = next(int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags] or ["none of avx2/avx512/amx"]
    ram = f", {memory:.0f} GB RAM" if memory else ""
    return (f"{model}, {os.cpu_count()} cores{ram}, flags {' '.join(shown)} "
            f"(bf16 {'fast: bf16 training and eval' if fast_bf16() else 'emulated: fp32 used'}), no GPU used")


def write_results(folders: Sequence[Path], target: Path, *, spec: Mapping[str, Any], size: str, command: str,
                  invocation_s: float, wandb: bool = False, group: str | None = None,
                  unfinished: Sequence[str] = ()) -> dict[str, Any]:
    """RESULTS.md at ``target``; pareto.png, subtask_errors.png and results.json in ``<target dir>/results/``.
    ``unfinished``: the grid's cells not run yet (a grid spanning sittings): the header names them."""
    from prost_lightning.pareto_plots import plot_pareto, plot_subtask_errors
    from prost_lightning.results import eval_settings, git_commit
    from prost_lightning.results_markdown import to_markdown

    cells = [load_cell(Path(f)) for f in folders]
    settings = spec.get("bootstrap") or {}
    result = build_results(cells, samples=int(settings.get("samples", 2000)), seed=int(settings.get("seed", 0)),
                           x_axis=(spec.get("report") or {}).get("x_axis", "flops"), title=f"{spec['name']} ({size})")
    result["header"] = {"command": command, "commit": git_commit(), "machine": machine(), "size": size,
                        "grid": spec.get("_path"), "written_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "invocation_s": round(invocation_s, 1), "eval": eval_settings(spec, size),
                        "overrides": spec["sizes"][size].get("overrides"), "unfinished": list(unfinished)}
    folder = target.parent / "results"
    write_atomic(folder / "pareto.png", plot_pareto(result))
    write_atomic(folder / "subtask_errors.png", plot_subtask_errors(result))
    write_atomic(folder / "results.json", json.dumps(result, indent=2, default=_plain) + "\n")
    write_atomic(target, to_markdown(result, images=f"{folder.name}/"))
    if wandb:
        from prost_lightning.pareto_report import log_to_wandb
        from prost_lightning.results_markdown import wandb_tables

        log_to_wandb(result, folder, project="prost-lightning", group=group, tables=wandb_tables(result))
    print(f"results: {target} (+ {folder}/pareto.png, subtask_errors.png, results.json)")
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
