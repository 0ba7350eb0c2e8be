"""Curriculum cost: wall time and trained tokens of a ProST (progressive) run against full fine-tuning
for the same number of epochs.

Both runs are fits that ``prost fit`` builds (prost_fit.py: its LightningCLI, so RoleLoRAModule,
TrajectoryDataModule rebuilding the train set every epoch, CurriculumCallback, ThroughputSummary)
on the tiny model, the same trajectories, seed and epochs; only ``schedule.name`` differs. In the
early epochs ProST trains a prefix of every trajectory (``slice`` mode), so it sees fewer tokens and
takes less time; once the horizon reaches K it trains as much as full fine-tuning.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from prost_lightning.bench.common import Context, Recorder, Timer
from prost_lightning.bench.prost_fit import build_fit, callback, quiet_training_logs
from prost_lightning.bench.trajectories import roles_in, training_file


def _settings(ctx: Context) -> dict:
    if ctx.quick:
        return {"model": "tiny", "epochs": 2, "batch": 4, "max_length": 1536, "per_system": 2, "repeats": 1}
    # K is 4-5 in the mini-world: 5 epochs take ProST through every horizon up to the full trajectory
    return {"model": "tiny", "epochs": 5, "batch": 4, "max_length": 2816, "per_system": 3, "repeats": 2}


def fit_once(schedule: str, settings: dict, train_file: Path, ctx: Context, workdir: Path,
             max_steps: int = -1) -> dict:
    from prost_lightning.curriculum import CurriculumCallback
    from prost_lightning.summary import ThroughputSummary

    cli = build_fit(ctx, workdir / schedule,
                    model={"base_model": settings["model"], "roles": roles_in(train_file)},
                    data={"train_file": str(train_file), "schedule": {"name": schedule},
                          "max_length": settings["max_length"], "batch_size": settings["batch"]},
                    trainer={"max_epochs": settings["epochs"], "max_steps": max_steps})
    cli.datamodule.setup()  # render once, outside the clock, as in the throughput benchmark
    summary, curriculum = callback(cli, ThroughputSummary), callback(cli, CurriculumCallback)
    with Timer(ctx.device) as t, contextlib.redirect_stdout(io.StringIO()):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    horizons = [int(curriculum.history[e]["curriculum/horizon"]) for e in sorted(curriculum.history)]
    return {"seconds": t.seconds, "trained_tokens": sum(summary.trained_tokens.values()),
            "real_tokens": summary.real_tokens, "steps": summary.steps, "horizons": horizons}


def run(ctx: Context) -> dict:
    quiet_training_logs()
    rec = Recorder("curriculum_cost", ctx)
    settings = _settings(ctx)
    train_file, origin = training_file(ctx, settings["per_system"], "train_curriculum.jsonl")
    rec.settings = {**settings, "data": origin, "mode": "slice", "schedules": ["progressive", "full"],
                    "progressive": "start 1, step 1, 1 epoch per stage",
                    "timing": "wall time of Trainer.fit, best of the repeats, runs in turns"}
    workdir = Path(ctx.workdir) / "curriculum"
    # untimed warm-up step: the first fit of a process pays one-off costs (lazy imports, allocator)
    fit_once("full", settings, train_file, ctx, workdir, max_steps=1)
    best: dict[str, dict] = {}
    for _ in range(settings["repeats"]):
        for schedule in ("progressive", "full"):
            result = fit_once(schedule, settings, train_file, ctx, workdir)
            if schedule not in best or result["seconds"] < best[schedule]["seconds"]:
                best[schedule] = result
    prost, full = best["progressive"], best["full"]
    rec.settings["horizons"] = {"progressive": prost["horizons"], "full": full["horizons"]}
    rec.settings["steps"] = {"progressive": prost["steps"], "full": full["steps"]}
    rec.figure("prost_seconds", prost["seconds"], "s", "ProST fit wall time")
    rec.figure("full_seconds", full["seconds"], "s", "full fine-tuning fit wall time")
    rec.figure("time_ratio_prost_vs_full", prost["seconds"] / full["seconds"], "x", "ProST / full wall time")
    rec.figure("prost_trained_tokens", prost["trained_tokens"], "tokens", "tokens with a label, all epochs")
    rec.figure("full_trained_tokens", full["trained_tokens"], "tokens", "tokens with a label, all epochs")
    rec.figure("trained_token_ratio_prost_vs_full", prost["trained_tokens"] / full["trained_tokens"], "x",
               "ProST / full trained tokens")
    rec.figure("input_token_ratio_prost_vs_full", prost["real_tokens"] / full["real_tokens"], "x",
               "ProST / full non-pad input tokens (what the forward pass pays for)")
    rec.note("no target: the figure is the price (or saving) of the curriculum at equal epochs; equal "
             "quality is not implied, the paper's claim is about effectiveness at equal epochs")
    return rec.result()
