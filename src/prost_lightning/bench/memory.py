"""Memory: peak resident memory of one base model with 1 and with 3 role adapters, while training.

Each configuration runs in a fresh child process (``python -m prost_lightning.bench.memory``),
so the peaks do not mix and the allocator starts clean. The child builds a RoleLoRAModule, then
runs the same number of AdamW steps on random token batches, cycling through its roles the way a
fit with role-homogeneous batches does (every adapter gets gradients and optimizer state).
Target: peak(3 adapters) <= 1.05 x peak(1 adapter): adapters are small next to the shared base.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

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
def _child(args: argparse.Namespace) -> dict:
    import torch

    from prost_lightning.model import LORA_MARK, RoleLoRAModule

    import_rss = peak_bytes()
    roles = ROLES[: args.adapters]
    module = RoleLoRAModule(base_model=args.model, roles=roles, dtype=args.dtype, quantization=args.quantization,
                            warmup_steps=1, export_adapters=False)
    if args.device == "cuda":
        if args.quantization == "none":
            module.to("cuda")
        torch.cuda.reset_peak_memory_stats()
    device = next(module.model.parameters()).device
    lora = [p for n, p in module.model.named_parameters() if LORA_MARK in n and f".{roles[0]}." in n]
    adapter_bytes = sum(p.numel() * p.element_size() for p in lora)
    base_bytes = sum(p.numel() * p.element_size() for n, p in module.model.named_parameters() if LORA_MARK not in n)
    optimizer = module.configure_optimizers()["optimizer"]
    generator = torch.Generator().manual_seed(0)
    vocab = module.model.get_input_embeddings().num_embeddings
    module.train()
    for step in range(args.steps):
        role = roles[step % len(roles)]
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=generator).to(device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "role": role}
        module._roles_since_step.add(role)
        loss = module._loss(batch)
        loss.backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak_cuda = torch.cuda.max_memory_allocated() if args.device == "cuda" else 0
    return {"adapters": args.adapters, "peak_rss": peak_bytes(), "import_rss": import_rss,
            "adapter_bytes": adapter_bytes, "base_bytes": base_bytes, "peak_cuda": peak_cuda,
            "loss": float(loss.detach())}


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
