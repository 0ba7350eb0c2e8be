"""`make sweep`: the paper's comparisons as a grid of `prost fit` runs on one machine, then `prost report`.

    python -m prost_lightning.sweep --size tiny --dry_run true      # print the plan
    python -m prost_lightning.sweep                                 # systems x schedules, CPU-sized
    python -m prost_lightning.sweep --ablations true --wandb true   # + reverse/random/length/mask/shared

The grid lives in experiments/sweep.yaml: systems {single, planner_executor} x schedules
{progressive, full} x base models of the chosen size, plus (with ``--ablations true``) the
ablations reverse, random, length, mask mode and shared adapter. It runs sequentially:

1. for each system, oracle trajectories are collected once per split (``prost collect``; it resumes,
   so a finished file costs nothing) into ``runs/trajectories/<system>_<split>.jsonl``;
2. each grid point is written out as one complete LightningCLI config
   (``<out>/<size>/<point>/point.yaml``: the system's experiment YAML with the size's and the
   point's overrides) and trained by the real CLI in a subprocess, ``prost fit --config point.yaml``,
   with its RolloutCallback on; a point whose run already finished is skipped (``--rerun true`` redoes it);
3. ``prost report`` over all points writes ``<out>/<size>/report/``.

With ``--wandb true`` every run also logs to W&B (ProstWandbLogger, group = the sweep's name, offline
unless W&B is configured; upload offline runs later with ``wandb sync runs/sweep/<size>/*/wandb/offline-run-*``).
experiments/wandb_sweep.yaml is the same grid for W&B sweep agents on many machines.
"""

from __future__ import annotations

import copy
import itertools
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prost_lightning.errors import ProstError

ROLLOUT_CLASS = "prost_lightning.rollout.RolloutCallback"
SPEC_KEYS = {"name", "root", "out", "trajectories", "collect", "systems", "schedules", "ablations",
             "ablation_systems", "sizes", "report", "seeds", "eval", "bootstrap", "results"}
# the seed of a run drives LoRA initialisation, the batch order and the random schedule's draws
SEED_KEYS = ("seed_everything", "data.seed", "data.schedule.seed")


class SweepError(ProstError, ValueError):
    """A bad sweep file or option, or failed grid points; the message names the key or the runs."""


@dataclass
class GridPoint:
    """One run of the sweep: a system's experiment YAML plus dotted-key overrides."""

    name: str
    system: str
    schedule: str
    base_model: str
    variant: str | None = None  # the ablation's name; None for the core grid
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None  # None: the experiment YAML's own seed


# -- the sweep file ---------------------------------------------------------------------------------

def load_spec(path: str | Path) -> dict[str, Any]:
    """Read and check experiments/sweep.yaml; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found (the default is experiments/sweep.yaml)")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a mapping of sweep settings")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    for key in ("name", "systems", "schedules", "sizes"):
        if not spec.get(key):
            raise SweepError(f"{path}: key '{key}' is missing or empty")
    for size, entry in spec["sizes"].items():
        if not isinstance(entry, dict) or not entry.get("base_models"):
            raise SweepError(f"{path}: sizes.{size}.base_models: give at least one base model")
    for name, overrides in (spec.get("ablations") or {}).items():
        if not isinstance(overrides, dict):
            raise SweepError(f"{path}: ablations.{name}: expected a mapping of dotted keys to values")
    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
                              or len(set(seeds)) != len(seeds)):
        raise SweepError(f"{path}: seeds: expected a list of distinct integers, e.g. [0, 1, 2]; got {seeds!r}")
    spec["_path"] = str(path)
    return spec


def _slug(model: str) -> str:
    return model.rstrip("/").split("/")[-1].lower().replace(".", "")


def expand_grid(spec: dict[str, Any], size: str = "cpu", ablations: bool = False) -> list[GridPoint]:
    """The grid points, in run order: systems x schedules x base models (x seeds), then the ablations.

    With ``seeds`` in the sweep file every core point runs once per seed (``<point>_s<seed>``) and
    every ablation once, at the first seed; without it a point keeps its experiment YAML's seed.
    """
    sizes = spec["sizes"]
    if size not in sizes:
        raise SweepError(f"--size {size!r}: choose one of {' | '.join(sizes)} (sizes in {spec.get('_path', 'the sweep file')})")
    models = list(sizes[size]["base_models"])
    seeds = spec.get("seeds") or [None]
    suffix = (lambda m: f"_{_slug(m)}") if len(models) > 1 else (lambda m: "")
    points = [
        _seeded(GridPoint(name=f"{system}_{schedule}{suffix(model)}", system=system, schedule=schedule,
                          base_model=model, overrides={"data.schedule.name": schedule}), seed)
        for model, system, schedule, seed in itertools.product(models, spec["systems"], spec["schedules"], seeds)
    ]
    if ablations:
        systems = spec.get("ablation_systems") or list(spec["systems"])
        for model, system, (variant, overrides) in itertools.product(models, systems, (spec.get("ablations") or {}).items()):
            merged = {"data.schedule.name": "progressive", **overrides}
            if variant == "shared_adapter" and system == "single":
                continue  # one role: a shared adapter is the same run
            points.append(_seeded(GridPoint(name=f"{system}_{variant}{suffix(model)}", system=system,
                                            schedule=str(merged["data.schedule.name"]), base_model=model,
                                            variant=variant, overrides=merged), seeds[0]))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SweepError(f"{spec.get('_path')}: grid point names collide: {names}")
    return points


def _seeded(point: GridPoint, seed: int | None) -> GridPoint:
    if seed is None:
        return point
    point.name, point.seed = f"{point.name}_s{seed}", seed
    point.overrides.update({key: seed for key in SEED_KEYS})
    return point


# -- configs ----------------------------------------------------------------------------------------

def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested config; ``rollout.<arg>`` addresses the RolloutCallback's init_args."""
    parts = key.split(".")
    if parts[0] == "rollout":
        callbacks = config.setdefault("trainer", {}).get("callbacks") or []
        targets = [c for c in callbacks if isinstance(c, dict) and c.get("class_path") == ROLLOUT_CLASS]
        if not targets:
            raise SweepError(f"override {key}: the base config has no {ROLLOUT_CLASS} in trainer.callbacks")
        node, parts = targets[0].setdefault("init_args", {}), parts[1:]
    else:
        node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def trajectory_file(spec: dict[str, Any], system: str, split: str) -> str:
    template = spec.get("trajectories") or "runs/trajectories/{system}_{split}.jsonl"
    return template.format(system=system, split=split)


def point_config(spec: dict[str, Any], point: GridPoint, size: str, run_dir: Path, wandb: bool = False,
                 group: str | None = None) -> dict[str, Any]:
    """The complete LightningCLI config of one grid point (what point.yaml holds)."""
    base_path = Path(spec["systems"][point.system])
    if not base_path.is_file():
        raise SweepError(f"{spec.get('_path')}: systems.{point.system}: {base_path} not found")
    config = yaml.safe_load(base_path.read_text())
    root = spec.get("root") or "worlds/mini"
    fixed = {
        "model.base_model": point.base_model,
        "data.train_file": trajectory_file(spec, point.system, "train"),
        "data.val_file": trajectory_file(spec, point.system, "dev"),
        "rollout.root": root,
        "trainer.default_root_dir": str(run_dir),
    }
    for key, value in {**(spec["sizes"][size].get("overrides") or {}), **point.overrides, **fixed}.items():
        set_dotted(config, key, value)
    if wandb:
        tags = [point.system, point.schedule, _slug(point.base_model)] + ([point.variant] if point.variant else []) \
            + ([f"seed{point.seed}"] if point.seed is not None else [])
        config["trainer"]["logger"] = [
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}},
            {"class_path": "prost_lightning.loggers.ProstWandbLogger",
             "init_args": {"group": group, "name": point.name, "tags": tags, "save_dir": str(run_dir)}},
        ]
    return config


# -- commands ---------------------------------------------------------------------------------------

PROST = [sys.executable, "-m", "prost_lightning.cli"]


def collect_commands(spec: dict[str, Any], systems: list[str]) -> list[list[str]]:
    """One ``prost collect`` per system and split (train for training, dev for validation loss)."""
    collect = spec.get("collect") or {}
    # the prompts are baked into the trajectories: evaluation must then use the same prompt_dir
    prompts = ["--prompt_dir", str(collect["prompt_dir"])] if collect.get("prompt_dir") else []
    commands = []
    for system in systems:
        for split in collect.get("splits", ["train", "dev"]):
            commands.append([*PROST, "collect", "--teacher", str(collect.get("teacher", "oracle")), "--system", system,
                             "--split", split, "--root", str(spec.get("root") or "worlds/mini"),
                             "--out", trajectory_file(spec, system, split),
                             "--pool_size", str(collect.get("pool_size", 2)), *prompts, "--progress", "false"])
    return commands


def fit_command(point_yaml: Path) -> list[str]:
    return [*PROST, "fit", "--config", str(point_yaml)]


def show(command: list[str]) -> str:
    """A command as the user would type it (``prost ...`` instead of ``python -m prost_lightning.cli``)."""
    if command[: len(PROST)] == PROST:
        command = ["prost", *command[len(PROST):]]
    return shlex.join(command)


def finished(run_dir: Path) -> bool:
    """A run is done when fit wrote its summary and the rollouts wrote episodes."""
    return any(run_dir.rglob("fit_summary.json")) and any(run_dir.rglob("rollouts/epoch_*.jsonl"))


def write_point_yaml(path: Path, data: dict[str, Any]) -> None:
    from prost_lightning.files import write_atomic

    header = "# Written by prost_lightning.sweep: one grid point, complete. Rerun it with\n"
    write_atomic(path, header + f"#   prost fit --config {path}\n" + yaml.safe_dump(data, sort_keys=False))


def sweep(
    grid: str = "experiments/sweep.yaml",
    size: str = "cpu",
    ablations: bool = False,
    wandb: bool = False,
    out: str | None = None,
    only: list[str] | None = None,
    root: str | None = None,
    dry_run: bool = False,
    rerun: bool = False,
    report: bool = True,
) -> dict:
    """Run the grid of experiments/sweep.yaml sequentially on this machine, then report on it.

    Args:
        grid: the sweep file (systems, schedules, ablations, sizes); `--config` is jsonargparse's own
            option (a YAML of these arguments), hence the name.
        size: a size from the sweep file: cpu (SmolLM2-135M, a few epochs, small rollout subset),
            tiny (random tiny model, a smoke run of a few minutes), gpu (Qwen2.5, QLoRA).
        ablations: also run the ablations (reverse, random, length, mask mode, shared adapter).
        wandb: log every run to W&B, grouped by sweep (offline unless configured; `wandb sync` later).
        out: parent folder of the runs (default: the sweep file's `out`, runs/sweep); runs go to
            <out>/<size>/<point>/ and the report to <out>/<size>/report/.
        only: run only these grid points (by name), e.g. [planner_executor_progressive].
        root: AppWorld data root to collect on and play (default: the sweep file's `root`, worlds/mini).
        dry_run: print the commands and write nothing.
        rerun: train points again even when their run already finished.
        report: run `prost report` over the finished points at the end.

    Returns:
        {points: [{name, status, run_dir, command}], report: <report dir or None>}.
    """
    spec = load_spec(grid)
    if root:
        spec["root"] = root
    points = expand_grid(spec, size, ablations)
    if only:
        unknown = sorted(set(only) - {p.name for p in points})
        if unknown:
            raise SweepError(f"--only {unknown}: not in the grid; points: {[p.name for p in points]}")
        points = [p for p in points if p.name in only]
    folder = Path(out or spec.get("out") or "runs/sweep") / size
    from prost_lightning.files import check_writable
    check_writable(folder, "--out", folder=True)  # before any run
    group = f"{spec['name']}-{size}"
    plan = [(p, folder / p.name) for p in points]
    collects = collect_commands(spec, list(dict.fromkeys(p.system for p in points)))
    results = []
    print(f"sweep {group}: {len(points)} runs under {folder}")
    for command in collects:
        print(("[dry run] " if dry_run else "") + show(command))
        if not dry_run and subprocess.run(command).returncode != 0:
            raise SweepError(f"trajectory collection failed: {show(command)}; fix that first (see its message)")
    for point, run_dir in plan:
        point_yaml = run_dir / "point.yaml"
        command = fit_command(point_yaml)
        entry = {"name": point.name, "run_dir": str(run_dir), "command": show(command)}
        results.append(entry)
        if dry_run:  # build the config anyway: a broken grid fails now, not an hour in
            point_config(spec, point, size, run_dir, wandb=wandb, group=group)
            print(f"[dry run] {show(command)}")
            entry["status"] = "planned"
            continue
        if finished(run_dir) and not rerun:
            print(f"{point.name}: finished earlier, skipped (--rerun true to train it again)")
            entry["status"] = "skipped"
            continue
        write_point_yaml(point_yaml, point_config(spec, point, size, run_dir, wandb=wandb, group=group))
        print(f"\n=== {point.name} ===\n{show(command)}", flush=True)
        started = time.monotonic()
        code = subprocess.run(command).returncode
        entry["status"] = "done" if code == 0 and finished(run_dir) else f"failed (exit {code})"
        entry["wall_time_s"] = round(time.monotonic() - started, 1)
    report_dir = None
    done = [e for e in results if e["status"] in ("done", "skipped")]
    if report and not dry_run and done:
        from prost_lightning.pareto_report import report as make_report

        report_dir = str(folder / "report")
        make_report([e["run_dir"] for e in done], out=report_dir, names=[e["name"] for e in done],
                    x_axis=(spec.get("report") or {}).get("x_axis", "flops"), title=f"sweep {group}",
                    wandb=wandb, wandb_group=group)
    failed = [e["name"] for e in results if e["status"].startswith("failed")]
    if failed:
        raise SweepError(f"{len(failed)} of {len(results)} runs failed: {failed}; their logs are above, "
                         f"rerun them with --only {failed}")
    return {"points": results, "report": report_dir}


def main(argv: list[str] | None = None) -> None:
    """``python -m prost_lightning.sweep [--size tiny] [--ablations true] [--dry_run true] ...``"""
    from jsonargparse import auto_cli

    try:
        auto_cli(sweep, args=argv, as_positional=False)
    except ProstError as error:
        print(f"prost sweep: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
