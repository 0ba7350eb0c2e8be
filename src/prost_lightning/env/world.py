"""The functions behind ``prost world build | verify | download`` (CLI verbs print; library calls return).

    build(root=None, seed=0)       -> dict: builds a mini-world data root (env/miniworld, AppWorld venv)
    verify(root=None, size=2, json=False, splits=None, limit_per_split=None, strict=True)
                                   -> dict; prints JSON or a summary; WorldError unless oracle 100 / no-op 0
    verify_world(root, size=2, *, splits, task_ids, limit_per_split, preamble_path, pool_options)
                                   -> dict: the report, no printing (library form)
    download(root)                 -> runs `appworld download data --root ROOT`, refusing an existing data/
    resolve_root(root=None)        -> explicit root, else $APPWORLD_ROOT with data/tasks, else worlds/mini

``verify_world`` runs, for every selected task, through a ServerPool of ``size`` servers in parallel:
  (a) the oracle: initialize, execute env/preamble.py, each plan step's code in order, evaluate;
  (b) a no-op episode: initialize, evaluate.
Tasks without a plan (real test splits) get only (b) and are counted in ``oracle_skipped``.
Report keys: root, tasks, scenarios, apps (count), app_names, splits {split: {tasks, scenarios,
oracle_tgc, oracle_sgc, noop_tgc, noop_sgc}}, oracle_tgc, oracle_sgc, oracle_by_difficulty,
oracle_skipped, noop_tgc, noop_sgc, preamble, problems, pool, wall_s, mean_*_episode_s.
"""

from __future__ import annotations

import json as jsonlib
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ProstError
from ..files import check_writable
from ..metrics import goal_completion, scenario_of
from .client import EnvError
from .pool import ServerPool
from .runtime import PREAMBLE_PATH, appworld_python, load_preamble, project_root
from .tasks import NoWorldData, TaskInfo, is_world_root, load_splits, load_task, require_world_root

EXECUTION_FAILED = "Execution failed"


class WorldError(ProstError, RuntimeError):
    """A world command that cannot proceed; the message says why and what to do."""


DEFAULT_MINI_ROOT = "worlds/mini"


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The world root a command should use: ``root`` when given; else ``$APPWORLD_ROOT`` when it
    holds real data (``data/tasks``); else the mini-world at ``<project>/worlds/mini``."""
    if root is not None:
        return Path(root).resolve()
    env_root = os.environ.get("APPWORLD_ROOT")
    if env_root and is_world_root(env_root):
        return Path(env_root).resolve()
    return project_root() / DEFAULT_MINI_ROOT


# -- build --------------------------------------------------------------------------------------

def build(root: str | None = None, seed: int = 0, cells: str | None = None) -> dict:
    """Build the mini-world (our AppWorld tasks) into a data root, replacing it atomically.

    Runs the builder (env/miniworld/build.py) with the AppWorld interpreter and prints its
    summary as one JSON line.

    Args:
        root: the world root to (re)create (default: worlds/mini)
        seed: the seed the task variants are drawn with (same seed, same world)
        cells: an extension file (YAML) of new families (Python files), extra cells and new splits,
            see docs/miniworld.md
    """
    from .miniworld import MiniWorldBuildError
    from .miniworld import build as build_miniworld

    target = Path(root).resolve() if root else project_root() / DEFAULT_MINI_ROOT
    check_writable(target, "--root", folder=True)  # before AppWorld starts
    try:
        summary = build_miniworld(target, seed, extension=cells)
    except MiniWorldBuildError as error:
        raise WorldError(str(error)) from None
    print(jsonlib.dumps(summary))
    return summary


# -- download -----------------------------------------------------------------------------------

def download(root: str, timeout_s: float = 1800.0) -> Path:
    """Download the official AppWorld data (needs internet) with `appworld download data`.

    Refuses when ROOT/data exists, because the upstream command deletes data/ before it
    downloads. Then use the root with --root, or export APPWORLD_ROOT=ROOT.

    Args:
        root: the AppWorld root to download into (data/ is created inside it)
        timeout_s: give up after this many seconds
    """
    root = Path(root).resolve()
    if (root / "data").exists():
        raise WorldError(f"{root / 'data'} already exists: `appworld download data` would delete it "
                         "before downloading. Move it away or pick another --root.")
    root.mkdir(parents=True, exist_ok=True)
    command = [str(appworld_python()), "-m", "appworld.cli", "download", "data", "--root", str(root)]
    with tempfile.TemporaryDirectory(prefix="prost-download-") as cwd:  # import appworld loads ./.env
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0 or not is_world_root(root):
        scratch = root / ".tmp"  # upstream leaves its (empty) download folder behind
        if scratch.is_dir() and not any(scratch.iterdir()):
            scratch.rmdir()
        lines = [ln.strip(" │╰─╯") for ln in (result.stdout + result.stderr).splitlines() if ln.strip(" │╰─╯")]
        raise WorldError(f"AppWorld data download failed (exit {result.returncode}; it needs internet access "
                         f"to s3.us-west-2.amazonaws.com); last output:\n" + "\n".join(lines[-4:]))
    return root  # the CLI prints it


# -- verify -------------------------------------------------------------------------------------

def play_oracle(env, task: TaskInfo, preamble: str | None, experiment_name: str = "verify-oracle") -> dict:
    """The scripted oracle episode on a leased ``env``: the preamble, each plan step's code, evaluate.

    Returns success, AppWorld's evaluation, the steps whose code failed, and the wall time.
    """
    started = time.monotonic()
    env.initialize(task.task_id, experiment_name=experiment_name)
    step_errors = []
    codes = ([("preamble", preamble)] if preamble else []) + [(str(i), s.code) for i, s in enumerate(task.plan, 1)]
    for label, code in codes:
        observation = env.execute(code)
        if observation.startswith(EXECUTION_FAILED):
            step_errors.append({"step": label, "observation": observation[-600:]})
    result = env.evaluate()
    env.close()
    return {"success": bool(result["success"]), "result": result, "step_errors": step_errors,
            "wall_s": time.monotonic() - started}


def _noop(env, task: TaskInfo) -> dict:
    started = time.monotonic()
    env.initialize(task.task_id, experiment_name="verify-noop")
    result = env.evaluate()
    env.close()
    return {"success": bool(result["success"]), "result": result, "wall_s": time.monotonic() - started}


def _run_task(pool: ServerPool, task: TaskInfo, preamble: str | None) -> dict:
    outcome: dict = {"task_id": task.task_id}
    for kind in ("oracle", "noop"):
        if kind == "oracle" and not task.plan:
            outcome["oracle"] = None
            continue
        try:
            with pool.lease() as env:
                outcome[kind] = play_oracle(env, task, preamble) if kind == "oracle" else _noop(env, task)
        except EnvError as error:
            outcome[kind] = {"success": False, "error": error.reason, "message": str(error)[:600], "wall_s": None}
    return outcome


def _rates(outcomes: list[dict], kind: str) -> dict:
    """TGC/SGC of one kind of episode over the outcomes that ran it (None when none did)."""
    ran = {o["task_id"]: o[kind]["success"] for o in outcomes if o.get(kind) is not None}
    if not ran:
        return {"tgc": None, "sgc": None, "tasks": 0}
    summary = goal_completion(ran)
    return {"tgc": summary["tgc"], "sgc": summary["sgc"], "tasks": summary["num_tasks"]}


def _select_tasks(root: Path, splits: list[str] | None, task_ids: list[str] | None,
                  limit_per_split: int | None) -> tuple[dict[str, list[str]], list[TaskInfo]]:
    """Phase 1: the splits to report on and the tasks to play, in split-file order."""
    split_ids = load_splits(root)
    if splits is not None:
        unknown = sorted(set(splits) - set(split_ids))
        if unknown:
            raise WorldError(f"unknown split(s) {unknown} under {root / 'data' / 'datasets'}; known: {sorted(split_ids)}")
        split_ids = {s: split_ids[s] for s in splits}
    if limit_per_split is not None:
        split_ids = {s: ids[:limit_per_split] for s, ids in split_ids.items()}
    ordered = list(dict.fromkeys(t for ids in split_ids.values() for t in ids))
    if task_ids is not None:
        wanted = set(task_ids)
        ordered = [t for t in ordered if t in wanted] + [t for t in task_ids if t not in set(ordered)]
    return split_ids, [load_task(root, t) for t in ordered]


def _play_all(root: Path, tasks: list[TaskInfo], size: int, preamble: str | None,
              pool_options: dict | None) -> tuple[list[dict], dict, float]:
    """Phase 2: every task's oracle and no-op episode through one pool; outcomes, pool stats, wall time."""
    started = time.monotonic()
    with ServerPool(root, size=min(size, max(1, len(tasks))), experiment_name="verify", **(pool_options or {})) as pool:
        with ThreadPoolExecutor(max_workers=pool.size) as executor:
            outcomes = list(executor.map(lambda task: _run_task(pool, task, preamble), tasks))
        pool_stats = pool.stats()
    return outcomes, pool_stats, time.monotonic() - started


def _split_rates(split_ids: dict[str, list[str]], by_id: dict[str, dict]) -> dict:
    """Phase 3a: oracle and no-op TGC/SGC of each split."""
    report = {}
    for split, ids in split_ids.items():
        members = [by_id[t] for t in ids if t in by_id]
        report[split] = {
            "tasks": len(members),
            "scenarios": len({scenario_of(t) for t in ids if t in by_id}),
            "oracle_tgc": _rates(members, "oracle")["tgc"],
            "oracle_sgc": _rates(members, "oracle")["sgc"],
            "noop_tgc": _rates(members, "noop")["tgc"],
            "noop_sgc": _rates(members, "noop")["sgc"],
        }
    return report


def _problems(outcomes: list[dict]) -> list[dict]:
    """Phase 3b: every task where the oracle failed or erred, or the no-op passed or erred."""
    problems = []
    for o in outcomes:
        if o.get("oracle") is not None and (not o["oracle"]["success"] or o["oracle"].get("step_errors")):
            problems.append({"task_id": o["task_id"], "kind": "oracle_failed" if not o["oracle"]["success"]
                             else "oracle_step_error", **_problem_detail(o["oracle"])})
        if o["noop"]["success"]:
            problems.append({"task_id": o["task_id"], "kind": "noop_passed"})
        elif o["noop"].get("error"):
            problems.append({"task_id": o["task_id"], "kind": "noop_error", **_problem_detail(o["noop"])})
    return problems


def _mean_wall(outcomes: list[dict], kind: str) -> float | None:
    walls = [o[kind]["wall_s"] for o in outcomes if o.get(kind) and o[kind].get("wall_s")]
    return round(sum(walls) / len(walls), 3) if walls else None


def verify_world(
    root: str | os.PathLike,
    size: int = 2,
    *,
    splits: list[str] | None = None,
    task_ids: list[str] | None = None,
    limit_per_split: int | None = None,
    preamble_path: str | os.PathLike | None = PREAMBLE_PATH,
    pool_options: dict | None = None,
) -> dict:
    """Run oracle and no-op episodes for the root's tasks; return one JSON-able report.

    ``splits``/``task_ids``/``limit_per_split`` (first N tasks of each split) select a subset.
    """
    try:
        root = require_world_root(Path(root).resolve())
    except NoWorldData as error:
        raise WorldError(str(error)) from None
    split_ids, tasks = _select_tasks(root, splits, task_ids, limit_per_split)
    preamble = load_preamble(preamble_path) if preamble_path else None
    outcomes, pool_stats, wall_s = _play_all(root, tasks, size, preamble, pool_options)

    by_id = {o["task_id"]: o for o in outcomes}
    difficulty = {t.task_id: t.difficulty for t in tasks}
    oracle_ran = {t: o["oracle"]["success"] for t, o in by_id.items() if o.get("oracle") is not None}
    oracle = goal_completion(oracle_ran, difficulty)
    noop = goal_completion({t: o["noop"]["success"] for t, o in by_id.items()}, difficulty)
    apps = sorted({a for t in tasks for a in t.apps})
    return {
        "root": str(root),
        "tasks": len(tasks),
        "scenarios": len({t.scenario_id for t in tasks}),
        "apps": len(apps),
        "app_names": apps,
        "splits": _split_rates(split_ids, by_id),
        "oracle_tgc": oracle["tgc"],
        "oracle_sgc": oracle["sgc"],
        "oracle_by_difficulty": oracle["by_difficulty"],
        "oracle_skipped": len(tasks) - len(oracle_ran),
        "noop_tgc": noop["tgc"],
        "noop_sgc": noop["sgc"],
        "preamble": preamble is not None,
        "problems": _problems(outcomes),
        "pool": pool_stats,
        "wall_s": round(wall_s, 2),
        "mean_oracle_episode_s": _mean_wall(outcomes, "oracle"),
        "mean_noop_episode_s": _mean_wall(outcomes, "noop"),
    }


def verify(
    root: str | None = None,
    size: int = 2,
    json: bool = False,
    splits: list[str] | None = None,
    limit_per_split: int | None = None,
    strict: bool = True,
) -> dict:
    """Check a world root through the real AppWorld engine: every task's oracle plan must pass
    and a no-op episode must fail (reported per split).

    Args:
        root: the world root (default: $APPWORLD_ROOT when it holds data/tasks, else worlds/mini)
        size: AppWorld servers run in parallel
        json: print the report as one JSON object (else a short summary)
        splits: only these splits (default: all under data/datasets/)
        limit_per_split: only the first N tasks of each split (a quick check)
        strict: fail (exit 2) unless oracle TGC is 100 and no-op TGC is 0
    """
    report = verify_world(resolve_root(root), size, splits=splits, limit_per_split=limit_per_split)
    if json:
        print(jsonlib.dumps(report))
    else:
        print(_summary_text(report))
    if strict and report["oracle_skipped"] < report["tasks"] and (
            report["oracle_tgc"] != 100.0 or report["noop_tgc"] != 0.0):
        first = report["problems"][:3]
        raise WorldError(f"world check failed for {report['root']}: oracle TGC {report['oracle_tgc']} "
                         f"(want 100.0), no-op TGC {report['noop_tgc']} (want 0.0); "
                         f"{len(report['problems'])} problem(s), first: {jsonlib.dumps(first)[:1500]}")
    return report


def _summary_text(report: dict) -> str:
    lines = [f"{report['root']}: {report['tasks']} tasks, {report['scenarios']} scenarios, "
             f"{report['apps']} apps; oracle TGC {report['oracle_tgc']} SGC {report['oracle_sgc']}, "
             f"no-op TGC {report['noop_tgc']} ({report['wall_s']} s)"]
    for split, entry in report["splits"].items():
        lines.append(f"  {split:15s} {entry['tasks']:4d} tasks  oracle TGC {entry['oracle_tgc']}  "
                     f"SGC {entry['oracle_sgc']}  no-op TGC {entry['noop_tgc']}")
    for problem in report["problems"][:10]:
        lines.append(f"  problem: {problem['task_id']} {problem['kind']}")
    return "\n".join(lines)


def _problem_detail(episode: dict) -> dict:
    if episode.get("error"):
        return {"error": episode["error"], "message": episode.get("message")}
    detail = {}
    result = episode.get("result") or {}
    if result.get("failures"):
        detail["failed_requirements"] = [f.get("requirement") for f in result["failures"]][:5]
        detail["trace"] = (result["failures"][0].get("trace") or "")[-600:]
    if episode.get("step_errors"):
        detail["step_errors"] = episode["step_errors"][:3]
    return detail


__all__ = ["build", "verify", "verify_world", "download", "resolve_root", "play_oracle", "WorldError", "PREAMBLE_PATH",
           "DEFAULT_MINI_ROOT"]
