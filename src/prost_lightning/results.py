"""`make results` (`prost results`): the paper's claims measured, cell by cell, into RESULTS.md.

    prost results --size tiny                       # smoke run: tiny random model, a few tasks, minutes
    prost results                                   # SmolLM2-135M, the mini-world: hours (docs/results.md)
    prost results --ablations true                  # + reverse, random, length, mask, shared adapter (one seed)
    prost results --report_only true                # rewrite RESULTS.md from the finished cells

The grid is experiments/results.yaml (the sweep file format of ``prost sweep``, plus ``seeds`` and
``eval``): {single, planner_executor} x {progressive, full} x seeds. Every **cell** (one point at one
seed) is, in its own folder ``<out>/<size>/<cell>/``:

1. ``point.yaml``: the complete ``prost fit`` config (``sweep.point_config``, without the dev
   rollouts and validation loss: the cell is evaluated once, on the test splits, after training);
2. ``prost fit --config point.yaml``: the adapters, ``fit_summary.json``;
3. one ``prost eval`` of the exported adapters on every task of the test splits (``eval.splits``)
   into ``eval/episodes.jsonl`` (written atomically; one process, so the model loads once);
4. ``cell.json``, written atomically last: a cell is finished only when it exists and the eval
   file holds exactly the splits' tasks. An unfinished cell (killed, failed) is deleted and redone
   from scratch; a finished one is kept, so the grid can run across several sittings.

Before each cell it prints the cells that remain and an estimate of the time left (mean wall time
of the cells finished so far). At the end ``results_report`` writes RESULTS.md, its plots and
results.json from the cell folders (docs/results.md: the statistics and the budget).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prost_lightning.errors import ProstError
from prost_lightning.files import check_writable, write_atomic
from prost_lightning.sweep import (
    PROST,
    ROLLOUT_CLASS,
    GridPoint,
    SweepError,
    collect_commands,
    expand_grid,
    fit_command,
    load_spec,
    point_config,
    show,
    write_point_yaml,
)

CELL_FILE = "cell.json"
EPISODES_FILE = "eval/episodes.jsonl"
EVAL_KEYS = {"splits", "max_tasks", "prompt_dir", "pool_size", "max_batch_size", "engine", "dtype", "limits",
             "prices", "step_timeout_s"}


class ResultsError(ProstError, ValueError):
    """A bad results file or option, or a cell that failed; the message says which and what to do."""


# -- the results file -----------------------------------------------------------------------------

def load_results_spec(path: str | Path) -> dict[str, Any]:
    """experiments/results.yaml: a sweep file with ``seeds`` and an ``eval`` section (checked here)."""
    spec = load_spec(path)
    if not spec.get("seeds"):
        raise ResultsError(f"{path}: key 'seeds' is missing: give the seeds of every cell, e.g. [0, 1, 2]")
    for where, section in [("eval", spec.get("eval"))] + [(f"sizes.{k}.eval", v.get("eval"))
                                                          for k, v in spec["sizes"].items()]:
        if section is None and where != "eval":
            continue
        if not isinstance(section, dict):
            raise ResultsError(f"{path}: {where}: expected a mapping of evaluation settings (splits, limits, ...)")
        unknown = sorted(set(section) - EVAL_KEYS)
        if unknown:
            raise ResultsError(f"{path}: {where}: unknown key(s) {unknown}; known: {sorted(EVAL_KEYS)}")
    if not spec["eval"].get("splits"):
        raise ResultsError(f"{path}: eval.splits: name the held-out splits to evaluate on, e.g. [test_normal, test_challenge]")
    return spec


def eval_settings(spec: dict[str, Any], size: str) -> dict[str, Any]:
    """The ``eval`` section with the size's own ``eval`` entries on top (limits merged key by key)."""
    base, extra = dict(spec["eval"]), dict(spec["sizes"][size].get("eval") or {})
    limits = {**(base.get("limits") or {}), **(extra.pop("limits", None) or {})}
    return {**base, **extra, "limits": limits}


def cell_config(spec: dict[str, Any], point: GridPoint, size: str, folder: Path, wandb: bool,
                group: str) -> dict[str, Any]:
    """The cell's ``prost fit`` config: the sweep's point config without dev rollouts or validation."""
    config = point_config(spec, point, size, folder, wandb=wandb, group=group)
    trainer = config["trainer"]
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or []
                            if not (isinstance(c, dict) and c.get("class_path") == ROLLOUT_CLASS)]
    trainer["limit_val_batches"] = 0  # the cell is judged on the test splits, once, after training
    config["data"]["val_file"] = None
    return config


# -- one cell -------------------------------------------------------------------------------------

def expected_tasks(root: str, settings: dict[str, Any]) -> dict[str, str]:
    """{task id: split} of every task a cell is evaluated on (each split's first ``max_tasks``, or all)."""
    from prost_lightning.env.tasks import load_task_ids

    limit = settings.get("max_tasks")
    return {task: split for split in settings["splits"]
            for task in (load_task_ids(root, split)[:limit] if limit else load_task_ids(root, split))}


def eval_command(point: GridPoint, task_ids: list[str], adapters: Path, out_file: Path, settings: dict[str, Any],
                 root: str) -> list[str]:
    """``prost eval`` of a cell's adapters on the given tasks (all splits in one process)."""
    from prost_lightning.backbone import fast_bf16

    options = {
        "system": point.system, "split": "null", "task_ids": json.dumps(task_ids), "root": root, "adapters": str(adapters),
        "base_model": point.base_model, "out": str(out_file),
        "pool_size": settings.get("pool_size", 4), "max_batch_size": settings.get("max_batch_size", 8),
        "engine": settings.get("engine", "hf"),
        # bf16 weights only where bf16 is fast (AVX512-BF16 / AMX); emulated bf16 is far slower
        "dtype": settings.get("dtype") or ("bfloat16" if fast_bf16() else "float32"),
        "step_timeout_s": settings.get("step_timeout_s", 30), "progress": "false",
    }
    if settings.get("prompt_dir"):
        options["prompt_dir"] = settings["prompt_dir"]
    if settings.get("limits"):
        options["limits"] = json.dumps(settings["limits"])
    if settings.get("prices"):
        options["prices"] = json.dumps(settings["prices"])
    return [*PROST, "eval", *[token for key, value in options.items() for token in (f"--{key}", str(value))]]


def _task_ids(path: Path) -> list[str] | None:
    from prost_lightning.trajectory import read_trajectories

    try:
        return [t.task_id for t in read_trajectories(path)]
    except (OSError, ProstError, ValueError):
        return None


def cell_finished(folder: Path, root: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's record when it is finished: cell.json present and the eval file complete."""
    try:
        record = json.loads((folder / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    expected = expected_tasks(root, settings)
    by_split = {split: [t for t in expected if expected[t] == split] for split in settings["splits"]}
    played = _task_ids(folder / EPISODES_FILE)
    if record.get("tasks") != by_split or played is None or sorted(played) != sorted(expected):
        return None  # another task set (settings changed) or a torn cell: redo it
    return record


def _latest_version(folder: Path) -> Path:
    versions = sorted(folder.glob("lightning_logs/version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions or not (versions[-1] / "adapters").is_dir():
        raise ResultsError(f"{folder}: fit exported no adapters (lightning_logs/version_*/adapters); see its output above")
    return versions[-1]


def _run(command: list[str], what: str, again: str = "prost results") -> float:
    print(f"$ {show(command)}", flush=True)
    started = time.monotonic()
    code = subprocess.run(command).returncode
    if code != 0:
        raise ResultsError(f"{what} failed (exit {code}): {show(command)}; its output is above. "
                           f"Run `{again}` again to redo this cell (finished cells are kept)")
    return round(time.monotonic() - started, 1)


def run_cell(spec: dict[str, Any], point: GridPoint, size: str, folder: Path, settings: dict[str, Any],
             wandb: bool, group: str) -> dict[str, Any]:
    """Train and evaluate one cell from scratch; returns (and writes, last) its cell.json record."""
    shutil.rmtree(folder, ignore_errors=True)  # whatever a killed attempt left is redone, not trusted
    root = str(spec.get("root") or "worlds/mini")
    started = time.monotonic()
    commit = git_commit()  # the code the fit and the eval below start from
    point_yaml = folder / "point.yaml"
    write_point_yaml(point_yaml, cell_config(spec, point, size, folder, wandb, group))
    fit_s = _run(fit_command(point_yaml), f"{point.name}: prost fit")
    adapters = _latest_version(folder) / "adapters"
    expected = expected_tasks(root, settings)
    tasks = list(expected)
    eval_s = _run(eval_command(point, tasks, adapters, folder / EPISODES_FILE, settings, root), f"{point.name}: prost eval")
    record = {
        "cell": point.name, "config": point.name.removesuffix(f"_s{point.seed}") if point.seed is not None else point.name,
        "system": point.system, "schedule": point.schedule, "variant": point.variant, "seed": point.seed,
        "base_model": point.base_model, "adapters": str(adapters), "splits": list(settings["splits"]),
        "tasks": {split: [t for t in tasks if expected[t] == split] for split in settings["splits"]},
        "fit_s": fit_s, "eval_s": eval_s, "wall_s": round(time.monotonic() - started, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,  # a grid may span sittings and commits: RESULTS.md lists each cell's
    }
    write_atomic(folder / CELL_FILE, json.dumps(record, indent=2) + "\n")
    return record


def git_commit(outputs: Sequence[str | os.PathLike] = ()) -> str:
    """The checkout's short HEAD, marked when tracked files differ from it; ``outputs`` (tracked files
    the run itself rewrites, such as a summary committed with its results) do not count."""
    excluded = [f":(exclude){Path(path)}" for path in outputs]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")


def progress_line(done: list[dict[str, Any]], remaining: list[tuple[str, str]]) -> str:
    """What remains and the time left: each remaining (cell, system) is priced at the mean wall time
    of the finished cells of its system (a single-agent cell costs about twice a team's), else of all."""
    if not remaining:
        return f"all {len(done)} cells finished"
    line = f"{len(done)} of {len(done) + len(remaining)} cells finished; remaining: {', '.join(n for n, _ in remaining)}"
    timed = [(r.get("system"), r["wall_s"]) for r in done if r.get("wall_s")]
    if not timed:
        return line + "; no cell finished yet, so no time estimate"
    overall = sum(w for _, w in timed) / len(timed)

    def mean_of(system: str) -> float:
        same = [w for s, w in timed if s == system]
        return sum(same) / len(same) if same else overall

    left = sum(mean_of(system) for _, system in remaining)
    rates = ", ".join(f"{system} {mean_of(system) / 60:.1f}" for system in sorted({s for _, s in remaining}))
    return line + f"; about {left / 60:.0f} min left (min per cell: {rates})"


# -- the verb -------------------------------------------------------------------------------------

def results(
    grid: str = "experiments/results.yaml",
    size: str = "cpu",
    ablations: bool = False,
    wandb: bool = False,
    out: str | None = None,
    root: str | None = None,
    results_md: str | None = None,
    only: list[str] | None = None,
    report_only: bool = False,
    dry_run: bool = False,
) -> dict:
    """Train and evaluate the grid cell by cell (resumable), then write RESULTS.md from the cell folders.

    Args:
        grid: the results file (sweep format plus seeds and eval); `--config` is jsonargparse's own.
        size: a size of the results file: cpu (SmolLM2-135M, all test tasks; ~6 h on 2 cores with
            today's rollout engine, docs/results.md) |
            tiny (random tiny model, a few tasks, minutes: a smoke run, its TGC stays 0).
        ablations: also run reverse, random, length, mask mode and shared adapter, at the first seed.
        wandb: log every cell's training and the results table and plot to one W&B group
            (<name>-<size>; offline unless W&B is configured; `wandb sync` later).
        out: parent of the cell folders (default: the results file's `out`); cells go to <out>/<size>/<cell>/.
        root: AppWorld data root (default: the results file's `root`, worlds/mini).
        results_md: where RESULTS.md goes (default: the file's `results.<size>`, else <out>/<size>/RESULTS.md);
            its plots and results.json go to a `results/` folder beside it.
        only: run only these cells (by name, e.g. [single_full_s0]): split the grid across machines,
            then copy the cell folders into one <out>/<size>/ and run `--report_only true` there.
        report_only: train nothing: rewrite RESULTS.md from the cells finished so far.
        dry_run: print the plan (cells, commands, what is finished) and change nothing.

    Returns:
        {cells: [{name, status, folder}], results_md: <path or None>}.
    """
    spec = load_results_spec(grid)
    if root:
        spec["root"] = root
    root = str(spec.get("root") or "worlds/mini")
    points = expand_grid(spec, size, ablations)
    if only:
        unknown = sorted(set(only) - {p.name for p in points})
        if unknown:
            raise ResultsError(f"--only {unknown}: not in the grid; cells: {[p.name for p in points]}")
    settings = eval_settings(spec, size)
    folder = Path(out or spec.get("out") or "runs/results") / size
    group = f"{spec['name']}-{size}"
    target = Path(results_md or (spec.get("results") or {}).get(size) or folder / "RESULTS.md")
    check_writable(target, "--results_md")  # before hours of training, not after
    started = time.monotonic()
    if not dry_run and not report_only:
        _collect(spec, [p for p in points if not only or p.name in only])
    cells, done = [], []
    records = {p.name: cell_finished(folder / p.name, root, settings) if Path(root).is_dir() else None for p in points}
    for index, point in enumerate(points):
        cell_dir = folder / point.name
        record = records[point.name]
        entry = {"name": point.name, "folder": str(cell_dir)}
        cells.append(entry)
        if only and point.name not in only and not record:
            entry["status"] = "missing"  # another machine's cell
            continue
        if record:
            entry["status"] = "finished earlier"
            done.append(record)
            continue
        if dry_run or report_only:
            entry["status"] = "planned" if dry_run else "missing"
            if dry_run:  # build the config anyway: a broken grid fails now, not an hour in
                cell_config(spec, point, size, cell_dir, wandb, group)
                print(f"[dry run] {point.name}: prost fit --config {cell_dir / 'point.yaml'}, then prost eval on "
                      f"{', '.join(settings['splits'])}")
            continue
        finished = done + [records[p.name] for p in points[index:] if records[p.name]]
        remaining = [(p.name, p.system) for p in points[index:] if (not only or p.name in only) and not records[p.name]]
        print(f"\n=== {point.name} === {progress_line(finished, remaining)}", flush=True)
        done.append(run_cell(spec, point, size, cell_dir, settings, wandb, group))
        entry["status"] = "done"
    systems = {p.name: p.system for p in points}
    print(progress_line(done, [(c["name"], systems[c["name"]]) for c in cells
                               if not c["status"].startswith(("finished", "done"))]))
    if dry_run:
        return {"cells": cells, "results_md": None}
    if not done:
        raise ResultsError(f"no finished cell under {folder}: run `prost results --size {size}` first")
    from prost_lightning.results_report import write_results

    command = " ".join(["prost results", *sys.argv[2:]]) if sys.argv[1:2] == ["results"] else f"prost results --size {size}"
    write_results([Path(c["folder"]) for c in cells if c["status"] not in ("missing", "planned")], target,
                  spec=spec, size=size, command=command, invocation_s=time.monotonic() - started,
                  wandb=wandb, group=group, unfinished=[c["name"] for c in cells if c["status"] in ("missing", "planned")])
    return {"cells": cells, "results_md": str(target)}


def _collect(spec: dict[str, Any], points: list[GridPoint]) -> None:
    for command in collect_commands(spec, list(dict.fromkeys(p.system for p in points))):
        print(f"$ {show(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            raise SweepError(f"trajectory collection failed: {show(command)}; fix that first (see its message)")
