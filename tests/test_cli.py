"""The command line: every shipped YAML instantiates, --help documents, verbs dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prost_lightning.cli import lightning_main

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "experiments").rglob("*.yaml"))
PROST = [sys.executable, "-m", "prost_lightning.cli"]
LOCAL_MODELS = ("tiny", "tiny-llama", "tiny-qwen2", "smollm2")


def _cpu_overrides(config: dict) -> list[str]:
    """GPU recipes name hub models and several GPUs; instantiate them on CPU with the tiny model."""
    overrides = []
    base = config.get("model", {}).get("base_model", "tiny")
    if base not in LOCAL_MODELS and not (ROOT / str(base)).exists():
        overrides += ["--model.base_model", "tiny"]
    if base == "smollm2" and not (ROOT / "models" / "smollm2-135m-instruct").exists():
        overrides += ["--model.base_model", "tiny"]
    trainer = config.get("trainer", {})
    if trainer.get("accelerator") not in (None, "cpu", "auto") or trainer.get("devices") not in (None, 1, "auto"):
        overrides += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                      "--trainer.num_nodes", "1"]
    if trainer.get("precision") not in (None, "32", "32-true", "bf16-mixed", "bf16-true"):
        overrides += ["--trainer.precision", "32-true"]
    return overrides


def test_there_are_experiments():
    names = {p.name for p in YAMLS}
    assert "debug.yaml" in names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_every_experiment_yaml_parses_and_instantiates(path, tmp_path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), f"{path}: must start with a comment saying what it reproduces and how to run it"
    config = yaml.safe_load(text)
    if not isinstance(config, dict) or "model" not in config:
        return  # sweep grids and W&B sweep configs: their own tests load them
    cli = lightning_main(["--config", str(path), "--trainer.default_root_dir", str(tmp_path),
                          "--trainer.logger", "false", *_cpu_overrides(config)], run=False)
    assert cli.model.roles and cli.datamodule.schedule.name
    assert cli.datamodule.tokenizer == cli.model.hparams.base_model  # linked by the CLI


def test_help_comes_from_the_docstrings(prost):
    out = prost("fit", "--help")
    assert out.returncode == 0
    assert "one LoRA adapter per agent role" in out.stdout or "shared base model" in out.stdout
    assert "cut after the last active sub-task" in out.stdout  # TrajectoryDataModule's Args: docstring


def test_print_config_shows_the_curriculum(prost):
    out = prost("fit", "--config", "experiments/debug.yaml", "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    printed = yaml.safe_load(out.stdout)
    assert printed["data"]["schedule"]["name"] == "progressive"
    assert printed["trainer"]["reload_dataloaders_every_n_epochs"] == 1


def test_inspect_marks_the_trained_tokens(prost, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = prost("inspect", "--train_file", "tests/fixtures/trajectories.jsonl", "--tokenizer", "tiny",
                "--role", "executor")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "apis." in out.stdout


def test_unknown_verb_is_a_clear_error():
    out = subprocess.run([*PROST, "frobnicate"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown verb 'frobnicate'" in out.stderr


def test_malformed_trajectory_line_is_one_clear_error(tmp_path, prost):
    bad = tmp_path / "bad.jsonl"
    good = (ROOT / "tests" / "fixtures" / "trajectories.jsonl").read_text().splitlines()[0]
    bad.write_text(good + "\n{not json\n")
    out = prost("fit", "--config", "experiments/debug.yaml", "--data.train_file", str(bad),
                "--trainer.default_root_dir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{bad}:2" in out.stderr


def test_bare_bool_flags_mean_true():
    from prost_lightning.cli import _expand_bare_flags

    def verify(root: str = "", json: bool = False, strict: bool = True):
        """Args: root: r. json: j. strict: s."""

    assert _expand_bare_flags(["--root", "w", "--json"], [verify]) == ["--root", "w", "--json", "true"]
    assert _expand_bare_flags(["--json", "--root", "w"], [verify]) == ["--json", "true", "--root", "w"]
    assert _expand_bare_flags(["--json", "false"], [verify]) == ["--json", "false"]
