"""float32 linear layers on a CPU through oneDNN, each weight reordered once into oneDNN's layout.

A decode step multiplies a handful of rows (the running batch, a few draft positions) by every
weight of the model. For such products torch's default CPU ``linear`` grows almost linearly with the
rows, while oneDNN on a weight packed ahead of time (the path ``torch.compile``'s CPU backend takes
for frozen weights) does not: one SmolLM2 MLP weight (1536 x 576) on 2 AVX2 cores, 1 / 2 / 8 rows:
95 / 166 / 259 us plain, 79 / 82 / 152 us packed (``prost bench --only engine_passes`` measures the
whole engine with and without it). The engine packs its merged weights and, for mixed-adapter
steps, the base weights (one more copy of them in memory), and only where :func:`supported` says.
The products are not bit-identical to the plain ones (another order of float additions).
"""

from __future__ import annotations

import torch


def supported(weight: torch.Tensor) -> bool:
    """True for a float32 CPU weight where this torch build has oneDNN's packed linear."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight ``W`` packed by :func:`pack`."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
