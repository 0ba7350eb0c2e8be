"""Re-evaluate the results grid's trained cells with known API names (``limits.known_apis_only``).

Reproduces the "Known APIs" table of docs/results.md (about 5 minutes per cell on 2 cores):

    make known-apis                                                   # = python experiments/known_apis.py
    python experiments/known_apis.py                                  # every finished cell
    python experiments/known_apis.py --cells planner_executor_full_s0,planner_executor_full_s1

Each cell's adapters (``runs/results/cpu/<cell>``) go through the grid's own ``prost eval`` command
(``results.eval_command``: the same tasks, engine, dtype, prompts and budgets) with
``known_apis_only: true`` added, into ``runs/known_apis/<cell>/episodes.jsonl``. A cell whose file
holds all its tasks is kept, so the script resumes after an interruption. It then prints, per
cell and split, the solved tasks, passed tests and episodes that met a made-up API ("No API
named ...") of the grid's evaluation and of this one, and writes ``runs/known_apis/summary.json``.
Nothing is trained here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from prost_lightning.files import write_atomic
from prost_lightning.results import EPISODES_FILE, eval_command, eval_settings, load_results_spec
from prost_lightning.sweep import GridPoint
from prost_lightning.trajectory import read_trajectories

GRID = Path("runs/results/cpu")
OUT = Path("runs/known_apis")


MADE_UP = "No API named"  # AppWorld's error for an API the app does not have


def played(path: Path) -> set[str]:
    return {t.task_id for t in read_trajectories(path)} if path.is_file() else set()


def episode_figures(path: Path, tasks: list[str]) -> dict[str, int]:
    """Solved tasks, passed tests and episodes that met a made-up API, over ``tasks``."""
    wanted = set(tasks)
    episodes = [t for t in read_trajectories(path) if t.task_id in wanted]
    return {"solved": sum(t.outcome.success for t in episodes),
            "tests_passed": sum(t.outcome.passes for t in episodes),
            "made_up_api_episodes": sum(any(MADE_UP in m.content for c in t.conversations for m in c.messages
                                            if m.role == "user") for t in episodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: every finished cell)")
    parser.add_argument("--spec", default="experiments/results.yaml")
    parser.add_argument("--root", default="worlds/mini", help="the world the grid was evaluated on")
    args = parser.parse_args()
    settings = eval_settings(load_results_spec(args.spec), "cpu")
    settings = {**settings, "limits": {**settings["limits"], "known_apis_only": True}}
    names = args.cells.split(",") if args.cells else sorted(p.parent.name for p in GRID.glob("*/cell.json"))
    summary = {}
    for name in names:
        cell = json.loads((GRID / name / "cell.json").read_text())
        tasks = [t for split in cell["splits"] for t in cell["tasks"][split]]
        out = OUT / name / "episodes.jsonl"
        if played(out) != set(tasks):
            out.parent.mkdir(parents=True, exist_ok=True)
            point = GridPoint(name=name, system=cell["system"], schedule=cell["schedule"],
                              base_model=cell["base_model"], seed=cell["seed"])
            command = eval_command(point, tasks, Path(cell["adapters"]), out, settings, args.root)
            print(f"{name}: {' '.join(command)}", flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        summary[name] = {split: {"tasks": len(cell["tasks"][split]),
                                 "grid": episode_figures(GRID / name / EPISODES_FILE, cell["tasks"][split]),
                                 "known_apis": episode_figures(out, cell["tasks"][split])}
                         for split in cell["splits"]}
        print(name, json.dumps(summary[name]), flush=True)
    write_atomic(OUT / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(table(summary))


def _tgc(cells: list[dict], split: str, side: str) -> str:
    values = [100 * c[split][side]["solved"] / c[split]["tasks"] for c in cells]
    return f"{sum(values) / len(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def table(summary: dict) -> str:
    """Markdown: per configuration (cells of every seed), TGC per split and the episode counts, grid -> known APIs."""
    configs: dict[str, list[str]] = {}
    for name in summary:
        configs.setdefault(name.rsplit("_s", 1)[0], []).append(name)
    splits = list(next(iter(summary.values())))
    lines = ["| configuration (seeds) | " + " | ".join(f"{s} TGC, grid -> known APIs" for s in splits)
             + " | episodes meeting a made-up API | tests passed |", "|---" * (len(splits) + 3) + "|"]
    for config, names in configs.items():
        cells = [summary[n] for n in names]
        columns = [f"{_tgc(cells, s, 'grid')} -> {_tgc(cells, s, 'known_apis')}" for s in splits]
        for key in ("made_up_api_episodes", "tests_passed"):
            grid, known = (sum(c[s][side][key] for c in cells for s in splits) for side in ("grid", "known_apis"))
            columns.append(f"{grid} -> {known}")
        lines.append(f"| {config} ({len(names)}) | " + " | ".join(columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
