"""The key/value cache of a decode batch, preallocated: one slot per row, written in place.

A ``transformers`` ``DynamicCache`` appends each step's keys and values by concatenation, which
copies the whole batch cache in every layer at every token; with a dozen rows of a few thousand
tokens that copy costs more than the step's arithmetic on a CPU. Here each layer holds one buffer
``[slots, kv_heads, capacity, head_dim]``; row ``s`` keeps its tokens at ``[0, length_s)`` of slot
``s`` (its position ids are those indices), a step writes one column per row, and attention reads
a view of the first ``max(length)`` columns with a mask hiding each row's unused tail. Rows join
(a prefix copied in, then prefilled in place) and leave (the last slot moves into the hole) between
steps; buffers double (in whole chunks) when a row outgrows them. A step may feed several tokens per
row (a token and its draft continuation); the tokens a row does not keep are cut off its length.

The model sees this object as its cache: its attention layers call :meth:`update`, and the masks
built here are 4-D, which ``transformers`` passes to attention as they are.
"""

from __future__ import annotations

import torch

GROWTH = 256  # tokens: capacity grows in multiples of this
SLOT_GROWTH = 4  # rows: slots are added four at a time


class SlotCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device,
                 boolean_mask: bool = True):
        self.shape = (layers, kv_heads, head_dim)
        self.dtype = dtype
        self.device = device
        self.boolean_mask = boolean_mask  # sdpa takes a boolean mask; eager attention an additive one
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # tokens held by each used slot
        self._write: tuple = ()  # where the next forward's keys/values go (set by a plan_* call)

    # -- rows joining and leaving ---------------------------------------------------------------
    @property
    def used(self) -> int:
        return len(self.lengths)

    def add(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, length: int) -> int:
        """A new slot holding the first ``length`` tokens of ``prefix`` (per layer [1, kv_heads, n, dim])."""
        slot = self.used
        self._reserve(slot + 1, length + 1)
        if prefix is not None and length:
            for layer, (k, v) in enumerate(prefix):
                self.keys[layer][slot, :, :length] = k[0, :, :length]
                self.values[layer][slot, :, :length] = v[0, :, :length]
        self.lengths.append(length)
        return slot

    def remove(self, slot: int) -> None:
        """Free ``slot``; the last slot moves into it (the caller moves its row the same way)."""
        last = self.used - 1
        if slot != last:
            n = self.lengths[last]
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :n] = keys[last, :, :n]
                values[slot, :, :n] = values[last, :, :n]
            self.lengths[slot] = n
        self.lengths.pop()

    def export(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the slot's first ``length`` tokens, per layer [1, kv_heads, length, dim]."""
        return [(k[slot:slot + 1, :, :length].clone(), v[slot:slot + 1, :, :length].clone())
                for k, v in zip(self.keys, self.values, strict=True)]

    def clear(self) -> None:
        self.lengths.clear()

    # -- plans of the next forward pass ----------------------------------------------------------
    def plan_prefill(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, position ids) for ``count`` new tokens of every slot from ``first`` on (rows that
        joined together), each after the tokens it holds."""
        return self._plan(first, count)

    def plan_decode(self, count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, position ids) for ``count`` new tokens of every used slot, in slot order.

        Every slot's length grows by ``count``; :meth:`truncate` takes back tokens that are not kept
        (rejected draft tokens), whose keys/values are then overwritten by later steps.
        """
        return self._plan(0, count)

    def _plan(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.lengths[first:]
        width = max(starts) + count
        self._reserve(self.used, width)
        offsets = torch.arange(count, device=self.device)
        positions = torch.tensor(starts, device=self.device)[:, None] + offsets[None, :]
        rows = torch.arange(first, self.used, device=self.device)[:, None].expand(-1, count)
        self._write = (rows, positions, first, width)
        allowed = torch.arange(width, device=self.device)[None, None, :] <= positions[:, :, None]
        self.lengths[first:] = [n + count for n in starts]
        return self._mask(allowed[:, None]), positions

    def truncate(self, slot: int, length: int) -> None:
        self.lengths[slot] = length

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        if self.boolean_mask:
            return allowed
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill(
            ~allowed, torch.finfo(self.dtype).min)

    # -- the model's side --------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows, positions, first, width = self._write
        keys[rows, :, positions] = key_states.transpose(1, 2)
        values[rows, :, positions] = value_states.transpose(1, 2)
        return keys[first:self.used, :, :width], values[first:self.used, :, :width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths, default=0)

    # -- storage ----------------------------------------------------------------------------------
    def _reserve(self, slots: int, tokens: int) -> None:
        have_slots = self.keys[0].shape[0] if self.keys else 0
        have_tokens = self.keys[0].shape[2] if self.keys else 0
        if slots <= have_slots and tokens <= have_tokens:
            return
        slots = max(have_slots, -(-slots // SLOT_GROWTH) * SLOT_GROWTH)
        if tokens > have_tokens:  # doubled: a growth writes every buffer anew (0.7 s at 12 x 768 tokens in fp32)
            tokens = max(tokens, 2 * have_tokens)
        tokens = max(have_tokens, -(-tokens // GROWTH) * GROWTH)
        layers, heads, dim = self.shape
        for layer in range(layers):
            for buffers in (self.keys, self.values):
                grown = torch.zeros((slots, heads, tokens, dim), dtype=self.dtype, device=self.device)
                if buffers and len(buffers) > layer:
                    old = buffers[layer]
                    grown[:old.shape[0], :, :old.shape[2]] = old
                    buffers[layer] = grown
                else:
                    buffers.append(grown)

    @property
    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
