"""`prost`: LightningCLI for training (fit / validate / test) plus the project's other verbs.

    prost fit --config experiments/debug.yaml            # train adapters with the curriculum
    prost validate --config ... --ckpt_path ...          # validation loss (+ rollouts if configured)
    prost world build --root worlds/mini                 # AppWorld runtime and the mini-world
    prost collect | eval | report | inspect | model | bench | sweep | demo | serve

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
    "demo-table": "prost_lightning.demo_table:demo_table",
    "serve": "prost_lightning.serving.server:serve",
    "improve": "prost_lightning.improve:improve",
}


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def lightning_main(args: list[str] | None = None, run: bool = True):
    """Build the LightningCLI (also used by tests with run=False to instantiate a config).

    Every configuration mistake ends as one ConfigError before anything is written: config files
    are checked first, parse errors become one line, and the data, run folder and checkpoint are
    checked before the model is built.
    """
    from argparse import ArgumentError

    from jsonargparse import Namespace
    from lightning.pytorch.cli import LightningCLI

    from prost_lightning.config_errors import check_config_files, describe_argument_error
    from prost_lightning.curriculum import CurriculumCallback
    from prost_lightning.data.datamodule import TrajectoryDataModule, check_training_files
    from prost_lightning.errors import ConfigError
    from prost_lightning.files import check_writable
    from prost_lightning.model import RoleLoRAModule
    from prost_lightning.resume import resolve_ckpt_path
    from prost_lightning.summary import ThroughputSummary

    argv = list(sys.argv[1:] if args is None else args)
    check_config_files(argv)

    class ProstCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            # one name for the base model: the tokenizer and the roles follow the model
            parser.link_arguments("model.base_model", "data.tokenizer")
            parser.link_arguments("model.roles", "data.roles")
            parser.add_argument("--checkpoint_every_n_steps", type=int | None, default=None,
                                help="save checkpoints/last.ckpt every N optimizer steps (default: every epoch)")

        def parse_arguments(self, parser, args):
            try:
                super().parse_arguments(parser, args)
            except ArgumentError as error:
                raise ConfigError(describe_argument_error(str(error), argv, _option_names(parser, argv))) from None
            config = self.config.get(self.config.get("subcommand") or "", self.config)
            root = config.trainer.default_root_dir or "."
            if "ckpt_path" in config:
                config.ckpt_path = resolve_ckpt_path(config.ckpt_path, root)

        def _parse_ckpt_path(self):
            # Lightning would merge the checkpoint's hyper-parameters into the config, loading it with
            # weights_only=True, which refuses ours (they hold LoraSettings); the model checks instead
            # that the checkpoint's adapters match the configured roles (RoleLoRAModule.on_load_checkpoint).
            pass

        def before_instantiate_classes(self):
            config = self.config.get(self.subcommand, self.config)
            root = config.trainer.default_root_dir or "."
            check_writable(root, "trainer.default_root_dir", folder=True)
            if self.subcommand is not None:  # a command to run: its data before the model (run=False reads at setup)
                check_training_files(config.data.train_file, config.data.val_file,
                                     config.data.get("roles") or config.model.get("roles"),
                                     bool(config.data.get("repeated_tasks")))
            # `logger: true` means CSV under default_root_dir, whatever else is installed
            # (Lightning would pick TensorBoard when present); W&B is added explicitly.
            if config.trainer.logger in (None, True):
                config.trainer.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                                  init_args=Namespace(save_dir=root))
            if self.subcommand in (None, "fit"):
                _add_resume_checkpoint(config)

    try:
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
            parser_kwargs={"exit_on_error": False, **{verb: {"exit_on_error": False} for verb in LIGHTNING_VERBS}},
            args=args,
            run=run,
        )
    except ArgumentError as error:  # raised outside parse_arguments (e.g. by a subcommand's own parser)
        raise ConfigError(describe_argument_error(str(error), argv, [])) from None


def _option_names(parser, argv: list[str]) -> list[str]:
    """The dotted keys the chosen subcommand accepts (for 'did you mean')."""
    verb = next((a for a in argv if a in LIGHTNING_VERBS), None)
    action = getattr(parser, "_subcommands_action", None)
    chosen = (action._name_parser_map.get(verb) if action is not None and verb else None) or parser
    return [a.dest for a in chosen._actions if a.dest and a.dest not in ("help", "config", "print_config")]


def _add_resume_checkpoint(config) -> None:
    """The checkpoint `--ckpt_path last` resumes, unless checkpointing is off or configured by the user."""
    from jsonargparse import Namespace
    from lightning.pytorch.callbacks import ModelCheckpoint

    from prost_lightning.errors import ConfigError

    every = config.get("checkpoint_every_n_steps")
    if every is not None and every < 1:
        raise ConfigError(f"checkpoint_every_n_steps: must be >= 1 (or null for every epoch), got {every}")
    if config.trainer.get("enable_checkpointing") is False:
        return
    callbacks = config.trainer.callbacks or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    for callback in callbacks:
        if isinstance(callback, Namespace):
            module, _, name = str(callback.get("class_path", "")).rpartition(".")
            callback = getattr(importlib.import_module(module), name, None) if module else None
        if isinstance(callback, ModelCheckpoint) or (isinstance(callback, type) and issubclass(callback, ModelCheckpoint)):
            return
    callbacks.append(Namespace(class_path="prost_lightning.resume.ResumeCheckpoint",
                               init_args=Namespace(every_n_train_steps=every)))
    config.trainer.callbacks = callbacks


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
