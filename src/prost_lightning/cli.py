"""`prost`: LightningCLI for training (fit / validate / test) plus the project's other verbs.

    prost fit --config experiments/debug.yaml            # train adapters with the curriculum
    prost validate --config ... --ckpt_path ...          # validation loss (+ rollouts if configured)
    prost world build --root worlds/mini                 # AppWorld runtime and the mini-world
    prost collect | eval | report | inspect | model | bench | sweep | demo

Each verb is a typed function whose `Args:` docstring is its --help. Errors a user can fix
(ProstError) print one message and exit 2, without a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings

from prost_lightning.errors import ProstError

LIGHTNING_VERBS = ("fit", "validate", "test", "predict")

# verb -> "module:function" (or a nested table); imported only when used, so `prost world` does not
# pay for torch and `prost fit` does not pay for matplotlib.
VERBS: dict[str, str | dict[str, str]] = {
    "world": {
        "build": "prost_lightning.env.world:build",
        "verify": "prost_lightning.env.world:verify",
        "download": "prost_lightning.env.world:download",
    },
    "collect": "prost_lightning.collect:collect",
    "eval": "prost_lightning.agents.evaluate:evaluate_system",
    "report": "prost_lightning.pareto_report:report",
    "inspect": "prost_lightning.data.inspect:inspect_sample",
    "model": "prost_lightning.backbone:prepare_smollm2",
    "bench": "prost_lightning.bench:run",
    "sweep": "prost_lightning.sweep:sweep",
    "results": "prost_lightning.results:results",
    "demo": "prost_lightning.demo:demo",
}


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def lightning_main(args: list[str] | None = None, run: bool = True):
    """Build the LightningCLI (also used by tests with run=False to instantiate a config)."""
    from jsonargparse import Namespace
    from lightning.pytorch.cli import LightningCLI

    from prost_lightning.curriculum import CurriculumCallback
    from prost_lightning.data.datamodule import TrajectoryDataModule
    from prost_lightning.model import RoleLoRAModule
    from prost_lightning.summary import ThroughputSummary

    class ProstCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            # one name for the base model: the tokenizer and the roles follow the model
            parser.link_arguments("model.base_model", "data.tokenizer")
            parser.link_arguments("model.roles", "data.roles")

        def before_instantiate_classes(self):
            # `logger: true` means CSV under default_root_dir, whatever else is installed
            # (Lightning would pick TensorBoard when present); W&B is added explicitly.
            config = self.config.get(self.subcommand, self.config)
            if config.trainer.logger in (None, True):
                root = config.trainer.default_root_dir or "."
                config.trainer.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                                  init_args=Namespace(save_dir=root))

    return ProstCLI(
        RoleLoRAModule,
        TrajectoryDataModule,
        trainer_defaults={
            # the curriculum rebuilds the train set every epoch
            "reload_dataloaders_every_n_epochs": 1,
            # the data module shards role-synchronised batches across ranks itself
            "use_distributed_sampler": False,
            "callbacks": [CurriculumCallback(), ThroughputSummary()],
        },
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _expand_bare_flags(argv: list[str], functions) -> list[str]:
    """`--json` alone means `--json true` for a bool parameter (jsonargparse wants the value)."""
    bools = {f"--{name}" for fn in functions for name, p in inspect.signature(fn).parameters.items()
             if p.annotation in (bool, "bool")}
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in bools and (following is None or following.startswith("--")):
            out.append("true")
    return out


def _verb_main(verb: str, argv: list[str]):
    from jsonargparse import auto_cli

    entry = VERBS[verb]
    if isinstance(entry, dict):
        components = {name: _load(target) for name, target in entry.items()}
        functions = list(components.values())
    else:
        components = _load(entry)
        functions = [components]
    if verb == "report":  # `prost report RUN [RUN ...]`: jsonargparse has no nargs='+'
        from prost_lightning.pareto_report import expand_positional_runs

        argv = expand_positional_runs(argv)
    result = auto_cli(components, args=_expand_bare_flags(argv, functions), as_positional=False)
    if isinstance(result, str):
        print(result)
    elif result is not None and not isinstance(result, dict | list):
        print(result)


def _usage() -> str:
    verbs = " | ".join([*LIGHTNING_VERBS[:3], *VERBS])
    return f"usage: prost {{{verbs}}} [--help] ...\n\n" + (__doc__ or "")


def _quiet() -> None:
    """Keep the console for our own progress bars and summaries."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*tensorboardX.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def main(argv: list[str] | None = None) -> None:
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    verb = argv[0]
    try:
        if verb in LIGHTNING_VERBS:
            lightning_main(None if from_sys else argv)
        elif verb in VERBS:
            _verb_main(verb, argv[1:])
        else:
            print(f"prost: error: unknown verb '{verb}'\n\n{_usage()}", file=sys.stderr)
            sys.exit(2)
    except ProstError as e:
        print(f"prost: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("prost: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
