"""`prost fit ... --ckpt_path last` after a SIGKILL: the resumed adapters are an uninterrupted run's."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prost_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "experiments" / "debug.yaml")
# batch size 1: many steps per epoch; dropout on: the resumed fit must also draw the same masks
FIT = [sys.executable, "-m", "prost_lightning.cli", "fit", "--config", DEBUG, "--trainer.max_epochs", "2",
       "--data.batch_size", "1", "--model.lora.dropout", "0.1", "--checkpoint_every_n_steps", "2"]
ENV = dict(os.environ, WANDB_MODE="offline",
           PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))


def _fit(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FIT, "--trainer.default_root_dir", str(root), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def _adapters(version: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for role in ("planner", "executor"):
        for name, tensor in load_file(version / "adapters" / role / "adapter_model.safetensors").items():
            weights[f"{role}/{name}"] = tensor
    return weights


def _rows(version: Path) -> list[dict]:
    with (version / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_sigkilled_fit_resumed_with_ckpt_path_last_gives_the_uninterrupted_adapters(tmp_path):
    whole = _fit(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    rows = _rows(tmp_path / "whole" / "lightning_logs" / "version_0")
    steps_in_epoch_0 = 1 + max(int(r["step"]) for r in rows if r.get("train/loss") and r["epoch"] == "0")
    total_steps = 1 + max(int(r["step"]) for r in rows if r.get("train/loss"))
    kill_at = steps_in_epoch_0 + 3  # the last checkpoint before it is inside epoch 1 (every 2 steps)
    assert kill_at < total_steps - 1, "the debug data must give epoch 1 enough batches to kill it midway"

    killed = _fit(tmp_path / "part", "--trainer.callbacks+=helpers.kill_at_step.KillAtStep",
                  f"--trainer.callbacks.step={kill_at}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "part" / "lightning_logs"
    saved = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and steps_in_epoch_0 < saved["global_step"] < kill_at  # mid-epoch 1
    assert all("lora_" in k for k in saved["state_dict"])  # adapter-only
    assert not list((run / "version_0").glob("adapters"))  # killed before the end

    resumed = _fit(tmp_path / "part", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_rows = _rows(run / "version_1")
    first_step = min(int(r["step"]) for r in resumed_rows if r.get("train/loss"))
    assert first_step == saved["global_step"]  # continues at the next batch, none repeated or skipped
    assert [float(r["curriculum/horizon"]) for r in resumed_rows if r.get("curriculum/horizon")] == [2.0]
    expected, got = _adapters(tmp_path / "whole" / "lightning_logs" / "version_0"), _adapters(run / "version_1")
    assert expected.keys() == got.keys() and expected
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_ckpt_path_last_without_a_checkpoint_and_a_missing_file_are_one_message(tmp_path, capsys):
    args = ["fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("prost: error:")]
    assert len(errors) == 1 and "--ckpt_path last: no checkpoint under" in errors[0]
    checkpoints = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main([*args, "--ckpt_path", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no such file" in err and str(checkpoints / "last.ckpt") in err
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoints", "last.ckpt", "lightning_logs",
                                                                      "version_0"]
