"""Attention of a draft step: ``transformers``' sdpa path against the engine's grouped fold.

One attention call of SmolLM2-135M's shape (9 query heads, 3 key/value heads, head dim 64) over a
preallocated batch cache, as the local engine's decode steps make it: R rows of T new tokens each
(a token and its drafts) over C cached tokens, every row with its own mask. ``transformers`` copies
every key/value head of the cache 3x for steps longer than one token; ``gqa_attention.grouped_sdpa``
folds the query groups instead (docs/rollouts.md). Both are timed on the same tensors, in turns,
best of the repeats, and checked to give the same output. Times are per layer (the model has 30).
No target: this explains a part of ``rollout_engines``, whose episodes are the measure.
"""

from __future__ import annotations

import types

import torch

from prost_lightning.backbone import fast_bf16
from prost_lightning.bench.common import Context, Recorder
from prost_lightning.bench.generation import best_seconds

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30
SHAPES = ((8, 5, 2000), (2, 5, 2000))  # rows, new tokens per row, cached tokens


def run(ctx: Context) -> dict:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from prost_lightning.agents.gqa_attention import grouped_sdpa

    rec = Recorder("attention", ctx)
    dtype = torch.bfloat16 if ctx.device == "cuda" or fast_bf16() else torch.float32
    device = "cuda" if ctx.device == "cuda" else "cpu"
    repeats = 3 if ctx.quick else 20
    shapes = SHAPES[:1] if ctx.quick else SHAPES
    rec.settings = {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": str(dtype).split(".")[1],
                    "shapes": [{"rows": r, "tokens": t, "cached": c} for r, t, c in shapes], "repeats": repeats,
                    "timing": "best of the repeats, the two paths in turns, per layer"}
    module = types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True)
    generator = torch.Generator().manual_seed(0)
    for rows, tokens, cached in shapes:
        width = cached + tokens
        cache = torch.randn(2, rows + 4, KV_HEADS, width + 256, HEAD_DIM, generator=generator).to(device, dtype)
        key, value = cache[0, :rows, :, :width], cache[1, :rows, :, :width]  # a view, as the slot cache gives
        query = torch.randn(rows, HEADS, tokens, HEAD_DIM, generator=generator).to(device, dtype)
        positions = torch.arange(cached, width, device=device)
        mask = (torch.arange(width, device=device)[None, :] <= positions[:, None]).expand(rows, tokens, width)[:, None]

        def copied(query=query, key=key, value=value, mask=mask):
            return sdpa_attention_forward(module, query, key, value, mask, scaling=HEAD_DIM ** -0.5)[0]

        def folded(query=query, key=key, value=value, mask=mask):
            return grouped_sdpa(module, query, key, value, mask, scaling=HEAD_DIM ** -0.5)[0]

        difference = (copied().float() - folded().float()).abs().max().item()
        with torch.no_grad():
            plain, grouped = best_seconds([copied, folded], repeats, ctx.device)
        label = f"{rows}x{tokens}"
        rec.figure(f"transformers_ms_{label}", 1000 * plain, "ms", f"per layer, {rows} rows x {tokens} tokens over {cached} cached")
        rec.figure(f"grouped_ms_{label}", 1000 * grouped, "ms", f"per layer, same tensors (x{LAYERS} layers per pass)")
        rec.figure(f"speedup_{label}", plain / grouped, "x", "transformers / grouped")
        rec.figure(f"max_difference_{label}", difference, "abs", "largest output difference between the paths")
    return rec.result()
