"""Grouped-query attention without copying the key/value cache, for steps of several tokens.

SmolLM2 (like most small models) has fewer key/value heads than query heads (3 and 9): each key/value
head serves a group of 3 query heads. For a one-token step ``transformers`` folds the group into the
query's sequence axis and attends on the key/value heads as they are. For any longer step, a
prefill or a decode step with drafts, it repeats every key/value head of the whole cache (every row, every
cached token, every layer) so that each query head has its own copy, and only then attends. On a
CPU that copy, not the arithmetic, is the cost of a draft step: 8 rows of 2,000 cached tokens are
about 1 GB of copying per forward pass.

:func:`grouped_sdpa` folds the group into the query's sequence axis for every step length:

    query [rows, kv_heads * group, q, dim] -> [rows, kv_heads, group * q, dim]
    mask  [rows, 1, q, keys]               -> [rows, 1, group * q, keys]   (repeated per group)

attends with ``scaled_dot_product_attention`` on the cache's own key/value heads, and unfolds the
output. Each query row still attends to exactly the keys it did (its mask row is its own), so the
result is ``transformers``' up to the order of float operations. :func:`installed` makes a model use
it within a block (the engine's generation), restoring the model's own attention after, so
training is never affected.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "prost_grouped_sdpa"
FOLD_MAX_TOKENS = 32  # longer steps (prefills) are compute-bound: the copy is a small share there (measured)


def grouped_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs) -> tuple[torch.Tensor, None]:
    group = query.shape[1] // key.shape[1]
    if group == 1 or not 1 < query.shape[2] <= FOLD_MAX_TOKENS or attention_mask is None or attention_mask.dim() != 4 \
            or attention_mask.shape[1] != 1 or kwargs.get("position_bias") is not None or kwargs.get("softcap"):
        # one token (transformers folds it already), a prefill, no grouping, or a shape not covered
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    rows, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    folded = query.reshape(rows, kv_heads, group * length, dim)
    mask_rows = attention_mask.shape[0]
    mask = attention_mask[:, :, None].expand(mask_rows, 1, group, length, attention_mask.shape[-1])
    mask = mask.reshape(mask_rows, 1, group * length, attention_mask.shape[-1])
    output = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask,
                                                              dropout_p=dropout, scale=scaling)
    return output.reshape(rows, heads, length, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_sdpa)


@contextlib.contextmanager
def installed(model):
    """Within the block, ``model`` attends through :func:`grouped_sdpa` if it used ``sdpa``."""
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa":
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
