"""Training data for the training benchmarks.

Full runs use oracle trajectories of the mini-world (both systems: planner/executor and single
agent), collected once with ``prost_lightning.collect.collect`` into ``<world>/bench/`` and reused;
their lengths spread the way real data does. Quick runs, and machines without the AppWorld
runtime, use the test fixture ``tests/fixtures/trajectories.jsonl``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from prost_lightning.bench.common import Context
from prost_lightning.trajectory import read_trajectories, write_trajectories

SYSTEMS = ("planner_executor", "single")
ORACLE_TASKS = 16


def fixture_file() -> Path:
    from prost_lightning.env.runtime import project_root

    return project_root() / "tests" / "fixtures" / "trajectories.jsonl"


def oracle_files(ctx: Context, tasks: int = ORACLE_TASKS) -> list[Path] | None:
    """Oracle trajectories of ``tasks`` train tasks spread evenly over the split (the split is ordered
    by template family, so the first N would all be one family); collected once, then reused.
    None when the AppWorld runtime or the mini-world is missing."""
    from prost_lightning.env.runtime import appworld_available
    from prost_lightning.env.tasks import is_world_root

    root = Path(ctx.world)
    if not appworld_available() or not is_world_root(root):
        return None
    from prost_lightning.collect import collect
    from prost_lightning.env.tasks import load_task_ids

    ids = load_task_ids(root, "train")
    chosen = [ids[i * len(ids) // tasks] for i in range(min(tasks, len(ids)))]
    files = []
    for system in SYSTEMS:
        out = root / "bench" / f"oracle_{system}_{len(chosen)}.jsonl"
        if not out.is_file():
            print(f"[bench] collecting oracle {system} trajectories into {out}", file=sys.stderr, flush=True)
            partial = out.with_name(out.name + ".partial")  # collect appends; rename when complete
            collect(teacher="oracle", system=system, root=str(root), out=str(partial), task_ids=chosen,
                    pool_size=2, progress=False)
            os.replace(partial, out)
        files.append(out)
    return files


def roles_in(path: Path) -> list[str]:
    """Every role of the file's trajectories: what a benchmark fit trains (``model.roles``)."""
    return sorted({role for trajectory in read_trajectories(path) for role in trajectory.roles})


def training_file(ctx: Context, per_system: int | None, name: str, source: str = "oracle") -> tuple[Path, str]:
    """A JSONL file in the work dir with the first ``per_system`` trajectories of each agent system
    (all when None), from the mini-world's oracle data (``source="oracle"``, full runs only) or the
    fixture; and a line saying where they came from."""
    sources = oracle_files(ctx) if source == "oracle" and not ctx.quick else None
    origin = "mini-world oracle trajectories (train split)"
    if sources is None:
        sources, origin = [fixture_file()], "tests/fixtures/trajectories.jsonl"
    chosen, taken = [], Counter()
    for path in sources:
        for trajectory in read_trajectories(path):
            if per_system is None or taken[trajectory.system] < per_system:
                taken[trajectory.system] += 1
                chosen.append(trajectory)
    out = Path(ctx.workdir) / name
    write_trajectories(out, chosen)
    return out, f"{origin}: {len(chosen)} trajectories ({dict(taken)})"
