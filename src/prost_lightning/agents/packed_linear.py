"""Linear layers on weights packed once for oneDNN: few-row products on a CPU at near one-row cost.

A decode step multiplies a few rows (batch rows x drafted tokens) by every weight matrix. Through
``F.linear`` (MKL's GEMM on a CPU) a product of 2-8 rows costs up to twice what one row does, though
both read each weight once: the GEMM lays the weight out for its kernel on every call. oneDNN can
lay a weight out once (``mkldnn._reorder_linear_weight``) and then run every product on that copy.
On the 2-core AVX2 CPU of docs/rollouts.md a decode pass of SmolLM2-135M through the local engine
took 59 ms instead of 111 for 1 row x 3 tokens, 103 ms instead of 141 for 9 rows x 3 tokens, and
the same for a 120-token prefill (a scratch timer, alternating; the figure of record is the
``hf_unpacked`` row of ``prost bench --only rollout_engines``).

    product = packed_product(weight)          # packs a float32 CPU weight once
    y = product(x, bias)                      # = F.linear(x, weight, bias) up to float rounding

Only float32 weights on a CPU are packed, where the op exists: oneDNN's bfloat16 kernels need
AVX-512 and were not measured here; other dtypes and devices keep ``F.linear``. Products round
differently from MKL's (relative 1e-6), as any other batch shape does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

PACK_ROWS = 8  # the row count oneDNN lays a weight out for: as fast as its default for 1-27 rows, 1 was slower
MIN_FEATURES = 32  # narrower weights (LoRA's low-rank factors) are not worth a packed copy

Product = Callable[..., torch.Tensor]  # (x, bias=None) -> x @ weight.T + bias


@functools.cache
def _op_available() -> bool:
    """True when this torch build packs weights for oneDNN (CPU builds with mkldnn do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2), PACK_ROWS)
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return True


def packable(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.device.type == "cpu" and weight.dtype == torch.float32 and _op_available()


def packed_product(weight: torch.Tensor, pack: bool = True) -> Product:
    """``(x, bias=None) -> F.linear(x, weight, bias)``, on a packed copy of ``weight`` when it is packable.

    The packed copy is taken now: the product does not follow later changes of ``weight``.
    """
    if not (pack and packable(weight)):
        return lambda x, bias=None: F.linear(x, weight, bias)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)

    def product(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return product


class PackedLinears:
    """The frozen ``nn.Linear`` layers of a model, computed on packed weights within :meth:`installed`.

    A layer is packed when its weight is packable, at least ``MIN_FEATURES`` wide both ways, and not
    trained (``requires_grad`` off: the base weights under LoRA), once, and again only after the
    weight changed (its version counter moves on any in-place update). Subclasses of ``nn.Linear``
    (bitsandbytes' quantized layers) are left alone. Only for inference: the packed op has no backward.
    """

    def __init__(self, model: torch.nn.Module):
        self.layers = [m for m in model.modules() if type(m) is torch.nn.Linear and packable(m.weight)
                       and min(m.weight.shape) >= MIN_FEATURES]
        self._forwards: dict[int, tuple[tuple, Product]] = {}  # id(layer) -> (weight's identity, forward)

    @property
    def packed(self) -> int:
        """Layers with a packed weight (as of the last :meth:`installed`)."""
        return len(self._forwards)

    def _forward(self, layer: torch.nn.Linear) -> Product | None:
        weight = layer.weight
        if weight.requires_grad:
            self._forwards.pop(id(layer), None)
            return None
        identity = (weight.data_ptr(), weight._version)
        known = self._forwards.get(id(layer))
        if known is None or known[0] != identity:
            known = self._forwards[id(layer)] = (identity, functools.partial(packed_product(weight), bias=layer.bias))
        return known[1]

    @contextlib.contextmanager
    def installed(self):
        """Within the block, packed layers compute on their packed weights (their forward is restored after)."""
        try:  # a packing that fails half-way leaves no layer on a packed forward (it has no backward)
            for layer in self.layers:
                forward = self._forward(layer)
                if forward is not None:
                    layer.__dict__["forward"] = forward  # not nn.Module.__setattr__: its checks, every layer, every step
            yield self
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)
