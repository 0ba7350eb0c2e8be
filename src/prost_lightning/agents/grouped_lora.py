"""Every row of a batch through its own LoRA adapter in one pass per layer.

PEFT serves a mixed-adapter batch (``adapter_names``) by looping over the adapters in every LoRA
layer: gather the rows of one adapter, run its two small matrices, scatter the result back, next
adapter. On a CPU that loop, not the arithmetic, is the cost (a decode step of a mixed batch was
measured twice as slow as a single-adapter step). Here the adapters of a layer are stacked once:

    h = x @ [A_1; A_2; ...]^T          every row through every adapter's A (r columns each)
    h = h * route                      row b keeps only its adapter's block, times its scaling
    y = base(x) + h @ [B_1, B_2, ...]^T

which is two matrix products per layer whatever the mix of adapters; a row of the base model
(no adapter) has an all-zero route. For one row this is the LoRA output of PEFT's own path
(``base(x) + B(A(x)) * scaling``): the other adapters' blocks add exact zeros; only the order of
float additions differs, as it does between any two batch shapes.

Only plain LoRA layers at inference are covered (``nn.Linear`` base, no DoRA or other variant,
no LoRA bias, not merged); :meth:`GroupedLoRA.supports` says whether a model qualifies, and the
engine falls back on PEFT's own path when it does not. Dropout is skipped: the engine generates in
eval mode, where PEFT's dropout is the identity as well.

A batch whose rows all share one adapter (every prefill, and every step of a single-agent system)
takes a shorter path: each layer's weight with that adapter merged in, ``W + scaling * B @ A``,
computed once per adapter after the adapters change, so the step costs what the base model costs
(float32 on a CPU: kept only as a packed copy, :mod:`~prost_lightning.agents.packed_linear`).
The merged copies hold one set of the adapted layers' weights per adapter (SmolLM2-135M: 0.2 GB per
role in bf16); past ``MERGE_LIMIT_BYTES`` they are not made. In bf16 a merged weight is rounded
once more than ``base(x) + lora(x)`` is, as PEFT's own ``merge_and_unload`` rounds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .packed_linear import Product, packed_product

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MERGE_LIMIT_BYTES = 4 << 30  # merged copies of the adapted weights beyond this are not made


@dataclass
class _Stack:
    names: tuple[str, ...]  # the adapters this layer has, in block order
    ranks: tuple[int, ...]
    scalings: tuple[float, ...]
    lora_a: torch.Tensor  # [sum(ranks), in]
    lora_b: torch.Tensor  # [out, sum(ranks)]

    @property
    def signature(self) -> tuple:
        return self.names, self.ranks, self.scalings


class GroupedLoRA:
    """The LoRA layers of a PEFT model, ready to run mixed-adapter batches in one pass each."""

    def __init__(self, model, merge: bool = True, pack: bool = True):
        """``merge``: run batches whose rows share one adapter on merged weights (within ``MERGE_LIMIT_BYTES``);
        ``pack``: keep those as packed copies where they can be (:mod:`~prost_lightning.agents.packed_linear`)."""
        self.layers = [m for _, m in model.named_modules() if _is_lora_linear(m)]
        self._stacks: dict[int, _Stack] = {}
        self._fingerprint: tuple = ()
        self._adapters: tuple = ()  # each layer's adapter names, when _weights were listed
        self._weights: list[torch.Tensor] = []  # every adapter weight, in fingerprint order
        self._routes: dict[tuple, torch.Tensor] = {}
        self.merging = merge and self.merged_bytes() <= MERGE_LIMIT_BYTES
        self.pack = pack
        self._merged: dict[int, dict[str, Product]] = {}  # layer -> adapter -> product with W + scaling * B @ A
        self._shared: list[str | None] = [None]  # the adapter every row of the batch has, or None (mixed)

    def merged_bytes(self) -> int:
        """Memory the merged weights of every adapter take."""
        return sum(m.base_layer.weight.nelement() * m.base_layer.weight.element_size() * len(m.lora_A)
                   for m in self.layers)

    @staticmethod
    def supports(model) -> bool:
        """True when every LoRA layer of ``model`` is one this class computes exactly."""
        from peft.tuners.lora.layer import LoraLayer

        layers = [m for _, m in model.named_modules() if isinstance(m, LoraLayer)]
        return bool(layers) and all(_is_lora_linear(m) and _plain(m) for m in layers)

    def refresh(self) -> None:
        """Re-stack (and re-merge) the adapter weights if any changed since (training between rollouts)."""
        adapters = tuple(tuple(m.lora_A) for m in self.layers)
        if adapters != self._adapters:  # looked up again only when adapters come or go: a step cannot spare it
            self._adapters = adapters
            self._weights = [p for m in self.layers for name in m.lora_A
                             for p in (m.lora_A[name].weight, m.lora_B[name].weight)]
        fingerprint = tuple((id(p), p.data_ptr(), p._version) for p in self._weights)
        if fingerprint == self._fingerprint:
            return
        self._stacks = {id(m): _stack(m) for m in self.layers}
        self._merged = {id(m): {name: packed_product(weight, self.pack) for name, weight in _merge(m).items()}
                        for m in self.layers} if self.merging else {}
        self._fingerprint = fingerprint

    def route(self, adapters: Sequence[str]) -> None:
        """Set the adapter of each batch row for the next forward passes."""
        shared = adapters[0] if len(set(adapters)) == 1 else None
        # the base model's rows need no adapter at all; one adapter's rows its merged weights
        self._shared[0] = shared if shared == BASE_ADAPTER or (shared is not None and self.merging) else None
        self._routes.clear()  # in place: the installed forwards hold this dict
        if self._shared[0] is not None:
            return
        for stack in self._stacks.values():
            if stack.signature not in self._routes:
                self._routes[stack.signature] = _route(stack, adapters)

    @contextlib.contextmanager
    def installed(self):
        """Within the block, the LoRA layers compute through the stacks (PEFT's forward is restored after)."""
        self.refresh()
        for layer in self.layers:
            stack = self._stacks[id(layer)]
            layer.__dict__["forward"] = _grouped_forward(layer.base_layer, stack, self._routes, stack.signature,
                                             self._merged.get(id(layer), {}), self._shared)
        try:
            yield self
        finally:
            for layer in self.layers:
                layer.__dict__.pop("forward", None)


def _is_lora_linear(module) -> bool:
    from peft.tuners.lora.layer import Linear

    return isinstance(module, Linear) and isinstance(module.base_layer, torch.nn.Linear)


def _plain(layer) -> bool:
    return (not layer.merged and not getattr(layer, "lora_variant", {}) and not any(layer.use_dora.values())
            and all(layer.lora_B[n].bias is None for n in layer.lora_B))


def _stack(layer) -> _Stack:
    names = tuple(layer.lora_A.keys())
    a = [layer.lora_A[n].weight.detach() for n in names]
    b = [layer.lora_B[n].weight.detach() for n in names]
    return _Stack(names, tuple(w.shape[0] for w in a), tuple(float(layer.scaling[n]) for n in names),
                  torch.cat(a, dim=0).contiguous(), torch.cat(b, dim=1).contiguous())


def _route(stack: _Stack, adapters: Sequence[str]) -> torch.Tensor:
    """[rows, 1, sum(ranks)]: row b's scaling on its adapter's block, zero elsewhere."""
    route = torch.zeros((len(adapters), 1, sum(stack.ranks)), dtype=stack.lora_a.dtype, device=stack.lora_a.device)
    offsets = [0]
    for r in stack.ranks:
        offsets.append(offsets[-1] + r)
    for row, adapter in enumerate(adapters):
        if adapter in stack.names:
            i = stack.names.index(adapter)
            route[row, 0, offsets[i]:offsets[i + 1]] = stack.scalings[i]
    return route


def _merge(layer) -> dict[str, torch.Tensor]:
    weight = layer.base_layer.weight.detach()
    merged = {}
    for name in layer.lora_A:
        delta = layer.lora_B[name].weight.detach().float() @ layer.lora_A[name].weight.detach().float()
        merged[name] = (weight.float() + float(layer.scaling[name]) * delta).to(weight.dtype)
    return merged


def _grouped_forward(base_layer, stack: _Stack, routes: dict, signature: tuple, merged: dict, shared: list):
    lora_a, lora_b = stack.lora_a, stack.lora_b

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if shared[0] is not None:  # one adapter (or none) for every row
            product = merged.get(shared[0])
            return base_layer(x, *args, **kwargs) if product is None else product(x, base_layer.bias)
        result = base_layer(x, *args, **kwargs)
        hidden = F.linear(x.to(lora_a.dtype), lora_a) * routes[signature]
        return (result + F.linear(hidden, lora_b)).to(result.dtype)

    return forward
