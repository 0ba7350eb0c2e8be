"""Real Trainer.fit runs of the debug experiment: curriculum per epoch, resume, export, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prost_lightning.cli import lightning_main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "experiments" / "debug.yaml")
PROST = [sys.executable, "-m", "prost_lightning.cli"]


def _fit(args: list[str]):
    cli = lightning_main(["--config", DEBUG, *args], run=False)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=getattr(cli, "_ckpt", None))
    return cli


def _rows(run: Path) -> list[dict]:
    """Metrics of the run's newest version (a resumed fit logs into a new version)."""
    metrics = max(run.glob("lightning_logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    with metrics.open() as f:
        return list(csv.DictReader(f))


def _per_epoch(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_cli_fit_debug_experiment_meets_the_issue_checks(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline")
    out = subprocess.run([*PROST, "fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path)
    assert _per_epoch(rows, "curriculum/horizon") == [1.0, 2.0, 3.0]
    # what is trained grows with the horizon
    executor_tokens = _per_epoch(rows, "curriculum/executor/trained_tokens")
    assert executor_tokens[0] < executor_tokens[1] < executor_tokens[2]
    (version,) = tmp_path.glob("lightning_logs/version_*")
    for role in ("planner", "executor"):
        assert (version / "adapters" / role / "adapter_config.json").exists()
    summary = json.loads((version / "fit_summary.json").read_text())
    assert set(summary["trained_tokens"]) == {"planner", "executor"}
    assert 0 < summary["real_token_fraction"] <= 1 and summary["tokens_per_s"] > 0
    assert summary["peak_memory_gb"] > 0  # the fit's own peak (reset at fit start)
    assert "fit summary:" in out.stdout
    # the loss goes down on the tiny model even in 9 steps
    losses = _per_epoch(rows, "val/loss")
    assert losses[-1] < losses[0]


def test_the_train_set_really_changes_every_epoch(tmp_path):
    seen: dict[int, list[tuple[str, int]]] = {}
    import lightning as L

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).append(
                (batch["role"], int((batch["labels"] != -100).sum()))
            )

    cli = lightning_main(["--config", DEBUG, "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.trainer.callbacks.append(Capture())
    cli.trainer.fit(cli.model, cli.datamodule)
    assert sorted(seen) == [0, 1, 2]
    trained = [sum(n for _, n in seen[e]) for e in range(3)]
    assert trained[0] < trained[1] < trained[2]
    assert seen[0] != seen[1] != seen[2]


def _adapter_weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_" in n}


def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run(tmp_path):
    full = lightning_main(["--config", DEBUG, "--trainer.default_root_dir", str(tmp_path / "full")], run=False)
    full.trainer.fit(full.model, full.datamodule)

    first = lightning_main(["--config", DEBUG, "--trainer.default_root_dir", str(tmp_path / "part"),
                            "--trainer.max_epochs", "2"], run=False)
    first.trainer.fit(first.model, first.datamodule)
    (ckpt,) = (tmp_path / "part").glob("lightning_logs/version_0/checkpoints/*.ckpt")
    saved = torch.load(ckpt, weights_only=False)
    assert all("lora_" in k for k in saved["state_dict"])  # adapter-only checkpoint

    resumed = lightning_main(["--config", DEBUG, "--trainer.default_root_dir", str(tmp_path / "part")], run=False)
    resumed.trainer.fit(resumed.model, resumed.datamodule, ckpt_path=str(ckpt))
    rows = _rows(tmp_path / "part")
    assert _per_epoch(rows, "curriculum/horizon")[-1] == 3.0  # the resumed epoch trains 3 sub-tasks
    expected, got = _adapter_weights(full.model), _adapter_weights(resumed.model)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_ddp_two_cpu_processes_train_the_same_role_at_every_step(tmp_path):
    trace = tmp_path / "trace"
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT / "tests"))
    out = subprocess.run(
        [*PROST, "fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path),
         "--trainer.devices", "2", "--trainer.strategy", "ddp_find_unused_parameters_true",
         "--data.batch_size", "2",
         "--trainer.callbacks+=helpers.role_trace.RoleTrace", f"--trainer.callbacks.path={trace}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [[json.loads(line) for line in Path(f"{trace}.rank{r}").read_text().splitlines()] for r in (0, 1)]
    assert ranks[0][0]["pid"] != ranks[1][0]["pid"]
    steps = [[(e["step"], e["role"]) for e in rank] for rank in ranks]
    assert steps[0] == steps[1] and len(steps[0]) >= 3
    assert {role for _, role in steps[0]} == {"planner", "executor"}
    (version,) = tmp_path.glob("lightning_logs/version_*")
    assert (version / "adapters" / "executor" / "adapter_config.json").exists()


@pytest.mark.parametrize("args,needle", [
    (["--model.roles", "[planner, verifier]"], "verifier"),
    (["--data.train_file", "does/not/exist.jsonl"], "does/not/exist.jsonl"),
    (["--model.base_model", "./no/such/model"], "no/such/model"),
    (["--data.max_length", "40"], "max_length"),
])
def test_user_errors_are_one_clear_message(tmp_path, args, needle, prost):
    out = prost("fit", "--config", DEBUG, "--trainer.default_root_dir", str(tmp_path), *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "prost: error:" in out.stderr and needle in out.stderr
