"""Collect training trajectories from a teacher (``prost collect``) and evaluate a trained system (``prost eval``).

    report = collect(teacher="oracle", system="planner_executor", split="train",
                     root="worlds/mini", out="data/pe_train.jsonl")      # the CLI verb; starts servers
    report = collect_into(out, system, tasks, policies, pool, teacher="oracle")  # on a running pool

Only episodes whose ``evaluate()`` passes are kept; rejections are counted by failure reason.
Each kept trajectory is appended to ``out`` at once (flushed and fsynced), so an interrupted
collection resumes where it stopped: tasks already in the file (same system) are skipped, and a
torn last line (a crash mid-write) is dropped first.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prost_lightning.agents import (
    CostModel,
    Limits,
    Policy,
    PromptSet,
    load_tasks,
    make_policies,
    run_episodes,
    system_roles,
)
from prost_lightning.agents.episode_summary import episode_progress
from prost_lightning.agents.perturb import mark_mistakes, perturbing_policies
from prost_lightning.agents.runner import start_pool
from prost_lightning.env.tasks import TaskInfo
from prost_lightning.env.tasks import require_world_root as check_root
from prost_lightning.errors import ConfigError
from prost_lightning.files import check_writable, write_atomic
from prost_lightning.trajectory import Trajectory, append_trajectory, parse_line

log = logging.getLogger(__name__)


@dataclass
class CollectReport:
    out: str
    teacher: str
    system: str
    split: str | None
    tasks: int = 0  # tasks selected
    already_done: int = 0  # skipped: already in the file
    episodes: int = 0  # played now
    kept: int = 0
    rejected: int = 0
    rejection_reasons: dict[str, int] = field(default_factory=dict)
    dropped_torn_line: bool = False
    wall_time_s: float = 0.0


def resume_state(out: str | os.PathLike, system: str) -> tuple[set[str], bool]:
    """Task ids already collected for ``system`` in ``out``; drops a torn last line (atomic rewrite)."""
    path = Path(out)
    if not path.is_file():
        return set(), False
    data = path.read_bytes()
    keep = data
    if data and not data.endswith(b"\n"):  # the last write was cut before its newline
        keep = data[: data.rfind(b"\n") + 1]
    elif data.strip():
        last = data[:-1].rsplit(b"\n", 1)[-1]
        try:
            if last.strip():
                json.loads(last)
        except ValueError:  # a line cut and then followed by a newline: also torn
            keep = data[: len(data) - len(last) - 1]
    torn = keep != data
    if torn:
        write_atomic(path, keep)
        log.warning("%s: dropped a torn last line left by an interrupted collection", path)
    done = set()
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                t = parse_line(line, f"{path}:{lineno}")
                if t.system == system:
                    done.add(t.task_id)
    return done, torn


def collect(
    teacher: str = "oracle",
    system: str = "planner_executor",
    split: str | None = "train",
    root: str = "worlds/mini",
    out: str = "data/trajectories.jsonl",
    *,
    task_ids: list[str] | None = None,
    max_tasks: int | None = None,
    pool_size: int = 1,
    limits: Limits | None = None,
    base_url: str | dict[str, str] | None = None,
    model: str | dict[str, str] | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    prompt_dir: str | None = None,
    tools: str = "miniworld",
    prices: dict[str, list[float]] | None = None,
    step_timeout_s: int = 30,
    progress: bool = True,
    verbose: bool = True,
    perturb: float = 0.0,
    perturb_kinds: list[str] | None = None,
    perturb_seed: int = 0,
) -> dict:
    """Run ``teacher`` on the tasks and append the successful trajectories to ``out``.

    Args:
        teacher: oracle (replays the ground-truth plan) | openai (an OpenAI-compatible endpoint).
        system: single | planner_executor (or a registered system).
        split: split of ``root`` to play (ignored when ``task_ids`` is given).
        root: AppWorld data root (the mini-world by default).
        out: JSONL file of trajectories; appended to, resumable.
        max_tasks: play only the first N tasks of the split.
        pool_size: AppWorld servers (episodes in parallel).
        limits: episode budgets (sub-tasks, steps per sub-task, tokens per call, env steps).
        base_url: teacher=openai: the endpoint, e.g. http://127.0.0.1:8000/v1, or {role: endpoint}.
        model: teacher=openai: model name, or {role: name} (e.g. one LoRA per role on vLLM).
        api_key_env: teacher=openai: environment variable holding the API key.
        prompt_dir: folder whose .txt files replace the built-in prompts of the same name.
        tools: tool sheet in the prompts: miniworld | appworld.
        prices: {role: [USD per 1k prompt tokens, USD per 1k completion tokens]} for the usage records.
        step_timeout_s: AppWorld's limit per code execution.
        progress: show a rich progress bar.
        verbose: print a one-line report at the end.
        perturb: teacher=oracle, planner_executor: share of the executor's sub-tasks that start with a
            realistic mistake played in AppWorld (trained as context only), then the repair (docs/recovery.md).
        perturb_kinds: mistake kinds to draw from (default all: wrong_api, no_pagination, wrong_app,
            wrong_field, wrong_argument, unbound_variable), or package.module:function of your own.
        perturb_seed: seed of which sub-tasks get which mistake.

    Returns:
        The CollectReport as a dict: kept, rejected, rejection_reasons, already_done, ...
    """
    started = time.monotonic()
    check_writable(out, "--out")  # before any episode: their work would be lost
    root_path = check_root(root)
    roles = system_roles(system)
    prompts = PromptSet(prompt_dir, tools=tools)
    policies = make_policies(teacher, roles, prompts=prompts, base_url=base_url, model=model,
                             api_key_env=api_key_env)
    label = teacher if teacher != "openai" else "openai:" + (model if isinstance(model, str) else
                                                            ",".join(f"{r}={m}" for r, m in (model or {}).items()))
    if perturb:
        if teacher != "oracle":
            raise ConfigError(f"--perturb plays the oracle's mistakes; teacher '{teacher}' has none (use --teacher oracle)")
        policies = perturbing_policies(roles, prompts=prompts, share=perturb, kinds=perturb_kinds, seed=perturb_seed,
                                       max_steps_per_subtask=(limits or Limits()).max_steps_per_subtask)
        label = f"oracle+perturb{perturb:g}"
    tasks = load_tasks(root_path, split, task_ids, max_tasks)
    cost = CostModel(prices={k: tuple(v) for k, v in (prices or {}).items()})
    done, torn = resume_state(out, system)
    if all(t.task_id in done for t in tasks):  # nothing to play: no servers to start
        report = collect_into(out, system, tasks, policies, None, teacher=label, progress=False)
    else:
        with start_pool(root_path, pool_size, step_timeout_s) as pool:
            report = collect_into(out, system, tasks, policies, pool, teacher=label, limits=limits,
                                  prompts=prompts, cost=cost, progress=progress)
    report.split = None if task_ids else split
    report.dropped_torn_line = report.dropped_torn_line or torn
    report.wall_time_s = round(time.monotonic() - started, 2)
    if verbose:
        print(f"collect {system} with {label}: kept {report.kept}, rejected {report.rejected} "
              f"{report.rejection_reasons or ''}; {report.already_done} already in {out}; "
              f"{report.wall_time_s:.1f} s")
    return asdict(report)


def collect_into(out: str | os.PathLike, system: str, tasks: list[TaskInfo], policies: dict[str, Policy], pool,
                 *, teacher: str, limits: Limits | None = None, prompts: PromptSet | None = None,
                 cost: CostModel | None = None, progress: bool = True) -> CollectReport:
    """The library form of :func:`collect`: play ``tasks`` on a running ``pool``, append the passing ones."""
    done, torn = resume_state(out, system)
    todo = [t for t in tasks if t.task_id not in done]
    report = CollectReport(out=str(out), teacher=teacher, system=system, split=None,
                           tasks=len(tasks), already_done=len(tasks) - len(todo), dropped_torn_line=torn)
    reasons: Counter[str] = Counter()
    if not todo:
        return report
    with episode_progress(len(todo), f"collect {system} ({teacher})", progress) as bar:
        def keep(trajectory: Trajectory) -> None:
            trajectory = mark_mistakes(trajectory, policies)
            bar.advance(trajectory)
            report.episodes += 1
            if trajectory.outcome is not None and trajectory.outcome.success:
                append_trajectory(out, trajectory)
                report.kept += 1
            else:
                report.rejected += 1
                reasons[(trajectory.outcome.failure_reason if trajectory.outcome else None) or "unknown"] += 1

        run_episodes(system, todo, pool, policies, limits=limits or Limits(), prompts=prompts or PromptSet(),
                     cost=cost or CostModel(), teacher=teacher, on_episode=keep)
    report.rejection_reasons = dict(reasons)
    return report
