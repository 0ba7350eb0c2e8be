"""Memory: peak resident memory of one base model with 1 and with 3 role adapters, while training.

Each configuration runs in a fresh child process (``python -m prost_lightning.bench.memory``),
so the peaks do not mix and the allocator starts clean. The child builds the Trainer and model
that `prost fit` builds (prost_fit.py) and fits the same number of AdamW steps on random token
batches of a fixed size, cycling through its roles the way a fit with role-homogeneous batches
does (every adapter gets gradients and optimizer state). The peak is the fit's own (reset at fit
start, as the fit summary's), so the base model and every adapter are resident in it.
Target: peak(3 adapters) <= 1.05 x peak(1 adapter): adapters are small next to the shared base.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from prost_lightning.bench.common import Context, Recorder, child_json
from prost_lightning.peak_memory import peak_bytes

ROLES = ["planner", "executor", "verifier"]
TARGET_RATIO = 1.05


def _settings(ctx: Context) -> dict:
    if ctx.quick:
        return {"model": "tiny", "steps": 3, "batch": 2, "seq": 64}
    return {"model": ctx.real_model, "steps": 3, "batch": 4, "seq": 128}


def _spawn(n_adapters: int, settings: dict, ctx: Context, quantization: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "prost_lightning.bench.memory", "--adapters", str(n_adapters),
           "--model", settings["model"], "--steps", str(settings["steps"]), "--batch", str(settings["batch"]),
           "--seq", str(settings["seq"]), "--device", ctx.device, "--dtype", ctx.dtype,
           "--quantization", quantization]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _collect(process: subprocess.Popen, timeout_s: float) -> dict:
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise RuntimeError(f"memory child ran past {timeout_s:.0f} s; output tail:\n{out[-1500:]}") from None
    if process.returncode != 0:
        raise RuntimeError(f"memory child failed (exit {process.returncode}):\n{out[-2500:]}")
    return child_json(out)


def run(ctx: Context) -> dict:
    rec = Recorder("memory", ctx)
    settings = _settings(ctx)
    rec.settings = {**settings, "adapters": [1, len(ROLES)], "dtype": ctx.dtype,
                    "quantizations": ctx.quantizations, "isolation": "one fresh process per configuration"}
    for quantization in ctx.quantizations:
        suffix = "" if quantization == "none" else f"_{quantization}"
        # The two children run at the same time: peaks are per process, and the wall time halves.
        children = {n: _spawn(n, settings, ctx, quantization) for n in (1, len(ROLES))}
        timeout = 120 if ctx.quick else 900
        one, three = (_collect(children[n], timeout) for n in (1, len(ROLES)))
        gb = 2**30
        rec.figure(f"peak_rss_1_adapter_gb{suffix}", one["peak_rss"] / gb, "GB",
                   "peak RSS, base + 1 adapter, after training steps")
        rec.figure(f"peak_rss_3_adapters_gb{suffix}", three["peak_rss"] / gb, "GB",
                   "peak RSS, base + 3 adapters, after training steps")
        rec.figure(f"rss_ratio_3_vs_1{suffix}", three["peak_rss"] / one["peak_rss"], "x",
                   "peak RSS with 3 adapters / with 1")
        rec.figure(f"adapter_params_mb{suffix}", one["adapter_bytes"] / 2**20, "MB",
                   "one adapter's parameters (fp32)")
        rec.figure(f"base_params_mb{suffix}", one["base_bytes"] / 2**20, "MB", "base model parameters in memory")
        rec.figure(f"import_rss_gb{suffix}", one["import_rss"] / gb, "GB",
                   "RSS after imports, before the model (same in both)")
        if ctx.device == "cuda":
            rec.figure(f"peak_cuda_1_adapter_gb{suffix}", one["peak_cuda"] / gb, "GB", "peak CUDA memory, 1 adapter")
            rec.figure(f"peak_cuda_3_adapters_gb{suffix}", three["peak_cuda"] / gb, "GB",
                       "peak CUDA memory, 3 adapters")
            rec.figure(f"cuda_ratio_3_vs_1{suffix}", three["peak_cuda"] / max(one["peak_cuda"], 1), "x",
                       "peak CUDA memory with 3 adapters / with 1")
        rec.target(f"rss_ratio_3_vs_1{suffix}", "<=", TARGET_RATIO,
                   "each extra adapter adds its weights, fp32 gradients and two AdamW moments (4x its "
                   "size) plus the activations of its LoRA branch; a smaller rank, fewer target modules, "
                   "or freeing a role's optimizer state when it is not being trained would close it")
    if ctx.quick:
        rec.note("quick form: tiny random model, so imports (~0.5 GB) dominate the peaks; the ratio is "
                 "only meaningful on SmolLM2 (full run)")
    return rec.result()


# ---- child process --------------------------------------------------------------------------
def _random_role_batches(roles: list[str], steps: int, batch: int, seq: int, vocab: int):
    """``steps`` batches of random tokens, cycling through the roles the way a fit with
    role-homogeneous batches does (every adapter gets gradients and optimizer state)."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(0)
    batches = []
    for step in range(steps):
        ids = torch.randint(0, vocab, (batch, seq), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
                        "role": roles[step % len(roles)]})
    return DataLoader(batches, batch_size=None)  # each item is already a batch


def _child(args: argparse.Namespace) -> dict:
    import contextlib
    import io

    from prost_lightning.bench.common import Context
    from prost_lightning.bench.prost_fit import build_fit, quiet_training_logs
    from prost_lightning.bench.trajectories import fixture_file
    from prost_lightning.model import LORA_MARK

    quiet_training_logs()
    import_rss = peak_bytes()
    roles = ROLES[: args.adapters]
    # `prost fit`'s Trainer and model; the data module is built (it is part of the CLI) but the
    # fit is fed random batches of a fixed size, so the peaks of 1 and 3 adapters compare alike
    with tempfile.TemporaryDirectory(prefix="prost-bench-memory-") as workdir:
        ctx = Context(device=args.device, workdir=Path(workdir))
        cli = build_fit(ctx, Path(workdir),
                        model={"base_model": args.model, "roles": roles, "dtype": args.dtype,
                               "quantization": args.quantization},
                        data={"train_file": str(fixture_file())},
                        trainer={"max_steps": args.steps, "max_epochs": 1})
        model = cli.model.model
        lora = [p for n, p in model.named_parameters() if LORA_MARK in n and f".{roles[0]}." in n]
        adapter_bytes = sum(p.numel() * p.element_size() for p in lora)
        base_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if LORA_MARK not in n)
        batches = _random_role_batches(roles, args.steps, args.batch, args.seq,
                                       model.get_input_embeddings().num_embeddings)
        with contextlib.redirect_stdout(io.StringIO()):  # the fit summary line
            cli.trainer.fit(cli.model, train_dataloaders=batches)  # resets the peak at fit start
        device = cli.model.device
        steps = cli.trainer.global_step
    return {"adapters": args.adapters, "steps": steps, "peak_rss": peak_bytes(), "import_rss": import_rss,
            "adapter_bytes": adapter_bytes, "base_bytes": base_bytes,
            "peak_cuda": peak_bytes(device) if args.device == "cuda" else 0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one memory-benchmark configuration (child process)")
    parser.add_argument("--adapters", type=int, required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantization", default="none")
    print(json.dumps(_child(parser.parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
