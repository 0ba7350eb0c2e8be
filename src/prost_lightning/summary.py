"""End-of-fit throughput and memory summary (printed, logged, and written to <run dir>/fit_summary.json)."""

from __future__ import annotations

import json
import time
from collections import Counter

import lightning as L
import torch

from prost_lightning.data.render import IGNORE_INDEX
from prost_lightning.files import write_atomic
from prost_lightning.peak_memory import peak_bytes, reset_peak
from prost_lightning.rundir import run_dir


class ThroughputSummary(L.Callback):
    """Counts tokens per role while training and reports tokens/s, real-token fraction and peak memory.

    The peak is the fit's own (reset at fit start, see :mod:`prost_lightning.peak_memory`), so a fit
    that follows collection and evaluation in one process does not report their peak.
    """

    def __init__(self):
        self.trained_tokens: Counter[str] = Counter()
        self.real_tokens = 0
        self.total_tokens = 0
        self.steps = 0
        self._seconds = 0.0
        self._started: float | None = None

    def on_fit_start(self, trainer, pl_module):
        reset_peak(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module):
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if self._started is not None:
            self._seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.trained_tokens[batch["role"]] += int((batch["labels"] != IGNORE_INDEX).sum())
        self.real_tokens += int(batch["attention_mask"].sum())
        self.total_tokens += batch["attention_mask"].numel()
        self.steps += 1

    def summary(self, device: torch.device | None = None) -> dict:
        seconds = max(self._seconds, 1e-9)
        return {
            "steps": self.steps,
            "train_seconds": round(self._seconds, 2),
            "trained_tokens": dict(self.trained_tokens),
            "tokens_per_s": round(self.real_tokens / seconds, 1),
            "trained_tokens_per_s": round(sum(self.trained_tokens.values()) / seconds, 1),
            "real_token_fraction": round(self.real_tokens / max(self.total_tokens, 1), 4),
            "peak_memory_gb": round(peak_bytes(device) / 2**30, 3),
        }

    def on_fit_end(self, trainer, pl_module):
        if not trainer.is_global_zero or self.steps == 0:
            return
        report = self.summary(pl_module.device)
        write_atomic(run_dir(trainer) / "fit_summary.json", json.dumps(report, indent=2) + "\n")
        per_role = ", ".join(f"{role} {n:,}" for role, n in sorted(report["trained_tokens"].items()))
        print(
            f"fit summary: {report['steps']} steps in {report['train_seconds']} s | trained tokens: {per_role} | "
            f"{report['tokens_per_s']} tok/s | real-token fraction {report['real_token_fraction']} | "
            f"peak memory {report['peak_memory_gb']} GB"
        )
