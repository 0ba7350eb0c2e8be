"""The training benchmarks' fits, built by the entry point of `prost fit`.

A benchmark must measure the Trainer a user runs, not one assembled for the benchmark: the same
LightningCLI (:func:`prost_lightning.cli.lightning_main` with ``run=False``), so the same Trainer
defaults, callbacks (curriculum, throughput summary), argument links and logger rule. The
benchmark only sets options a user could pass on the command line (no logger, checkpoint or
progress bar, so that nothing but training is timed) and then calls ``trainer.fit`` itself,
which lets it render the data and load the model before its clock starts.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from prost_lightning.bench.common import Context

LEARNING_RATE = 5e-4

# what a benchmark fit leaves out: it writes nothing and prints nothing while it is timed
QUIET_TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                 "enable_model_summary": False, "num_sanity_val_steps": 0}


def quiet_training_logs() -> None:
    import lightning  # noqa: F401  (its import sets its loggers to INFO: import first, then lower them)

    os.environ.setdefault("WANDB_MODE", "disabled")
    for name in ("lightning.pytorch", "lightning.fabric", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


def command_line(options: dict, prefix: str = "") -> list[str]:
    """``{"trainer": {"max_epochs": 2}}`` -> ``["--trainer.max_epochs=2"]`` (what a user would type)."""
    import json

    args = []
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            args += command_line(value, f"{name}.")
        else:
            args.append(f"--{name}={value if isinstance(value, str) else json.dumps(value)}")
    return args


def build_fit(ctx: Context, root_dir: Path, *, model: dict, data: dict, trainer: dict | None = None):
    """The LightningCLI of ``prost fit`` for these options (seed 0, the context's device, dtype and
    precision, no logger or checkpoints), instantiated but not run: ``cli.trainer``, ``cli.model``,
    ``cli.datamodule``."""
    from prost_lightning.cli import lightning_main

    options = {
        "seed_everything": 0,
        "trainer": {"accelerator": ctx.device, "devices": 1, "precision": ctx.precision,
                    "default_root_dir": str(root_dir), **QUIET_TRAINER, **(trainer or {})},
        "model": {"dtype": ctx.dtype, "learning_rate": LEARNING_RATE, "warmup_steps": 1,
                  "export_adapters": False, **model},
        "data": {"seed": 0, **data},
    }
    return lightning_main(command_line(options), run=False)


def callback(cli, kind: type):
    """The trainer's callback of this type (the CLI adds the curriculum and the throughput summary)."""
    return next(c for c in cli.trainer.callbacks if isinstance(c, kind))
