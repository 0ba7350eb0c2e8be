"""The demo table's trained executors under a perfect planner: how much of the gap is the planner's?

Reproduces the "Under the ground-truth plan" table of docs/demo-table.md (about 8 minutes per
cell on 2 CPU cores):

    make oracle-planner                                  # = python experiments/oracle_planner.py
    python experiments/oracle_planner.py --cells oracle_s0,recovery_s0

Each finished cell of `prost demo-table` (``results/demo_table.json``) whose folder is on disk
(``runs/demo_table/<cell>``) is evaluated again on the same held-out tasks with the demo's
settings (budgets, prompts, precision, engine), except that the planner is the oracle: its
sub-tasks are the task's ground-truth plan (`prost eval --oracle_roles '[planner]'`). The
executor is the cell's trained adapter. Held-out plans are read for this evaluation only, never
trained on, so the figure is a diagnostic, not the team's score: a team whose trained executor
solves most tasks under the true plan is held back by its planner, one whose executor fails there
too by both roles. Episodes go to ``runs/oracle_planner/<cell>/<split>.jsonl``; a split whose file
holds all its tasks is kept, so the script resumes. The summary (``results/oracle_planner.json``)
keeps, per cell and split, the team's TGC in the table and under the true plan, and the failure
diagnostics under the true plan (``failure_diagnostics``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prost_lightning.agents import Limits
from prost_lightning.agents.evaluate import evaluate_system
from prost_lightning.demo import diagnose
from prost_lightning.demo_table import RECIPES
from prost_lightning.files import write_atomic
from prost_lightning.trajectory import read_trajectories

CELLS = Path("runs/demo_table")
OUT = Path("runs/oracle_planner")
PROMPTS = "experiments/prompts/compact"  # the demo's default prompt folder (its cells ran with it)


def played(path: Path) -> set[str]:
    return {t.task_id for t in read_trajectories(path)} if path.is_file() else set()


def evaluate_cell(name: str, root: str, pool_size: int) -> dict:
    """{split: {tasks, team_tgc, oracle_planner_tgc, diagnostics}} of one cell, evaluating what is missing."""
    report = json.loads((CELLS / name / "report.json").read_text())
    budgets = report["recipe"]["budgets"]
    limits = Limits(max_subtasks=budgets["max_subtasks"], max_steps_per_subtask=budgets["max_steps_per_subtask"],
                    max_new_tokens=budgets["max_new_tokens"],
                    role_max_new_tokens={"planner": budgets["planner_max_new_tokens"]})
    figures = {}
    for split, tasks in report["eval_tasks"].items():
        out = OUT / name / f"{split}.jsonl"
        if played(out) != set(tasks):
            started = time.perf_counter()
            evaluate_system(system=report["system"], split=None, root=root, task_ids=tasks,
                            adapters=str(Path(report["run_dir"]) / "adapters"), limits=limits,
                            pool_size=min(pool_size, len(tasks)), max_batch_size=pool_size,
                            dtype="bfloat16" if report["precision"].startswith("bf16") else "float32",
                            prompt_dir=PROMPTS, out=str(out), oracle_roles=["planner"], progress=False)
            print(f"{name} {split}: {time.perf_counter() - started:.0f} s", flush=True)
        solved = sum(t.outcome.success for t in read_trajectories(out))
        figures[split] = {"tasks": len(tasks), "team_tgc": report["trained"][split]["goal"]["tgc"],
                          "oracle_planner_tgc": round(100 * solved / len(tasks), 1),
                          "diagnostics": diagnose(out, Path(root))}
    return figures


def _mean(cells: list[dict], split: str, key: str) -> float:
    return sum(c[split][key] for c in cells) / len(cells)


def table(summary: dict) -> str:
    """Markdown: per recipe (its cells), TGC per split as the team -> under the true plan, and the executor's errors."""
    splits = list(next(iter(summary.values())))
    lines = ["| recipe (cells) | " + " | ".join(f"`{s}` TGC: team -> under the true plan" for s in splits)
             + " | failed executions under the true plan: then a report / the same code / new code (ran) |",
             "|---" * (len(splits) + 2) + "|"]
    for recipe, spec in RECIPES.items():
        cells = [summary[n] for n in summary if n.rsplit("_s", 1)[0] == recipe]
        if not cells:
            continue
        after = {k: sum(c[s]["diagnostics"]["after_error"][k] for c in cells for s in splits)
                 for k in ("errors", "report", "same_code", "new_code", "repaired")}
        lines.append(f"| {spec['label']} ({len(cells)}) | "
                     + " | ".join(f"{_mean(cells, s, 'team_tgc'):.1f} -> {_mean(cells, s, 'oracle_planner_tgc'):.1f}"
                                  for s in splits)
                     + f" | {after['errors']}: {after['report']} / {after['same_code']} / {after['new_code']} "
                       f"({after['repaired']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: every finished cell on disk)")
    parser.add_argument("--summary", default="results/demo_table.json", help="the demo table's finished cells")
    parser.add_argument("--root", default="worlds/mini", help="the world the cells were evaluated on")
    parser.add_argument("--pool_size", type=int, default=10)
    args = parser.parse_args()
    finished = json.loads(Path(args.summary).read_text())["cells"]
    names = args.cells.split(",") if args.cells else [n for n in finished if (CELLS / n / "report.json").is_file()]
    missing = [n for n in names if not (CELLS / n / "report.json").is_file()]
    if missing:
        raise SystemExit(f"no finished cell folder for {missing} under {CELLS}: run `make demo-table` first")
    summary_path = Path("results/oracle_planner.json")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name in names:
        summary[name] = evaluate_cell(name, args.root, args.pool_size)
        write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")  # after each cell
        print(name, json.dumps({s: {k: v for k, v in f.items() if k != "diagnostics"} for s, f in summary[name].items()}),
              flush=True)
    print(table(summary))


if __name__ == "__main__":
    main()
