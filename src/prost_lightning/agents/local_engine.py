"""The local rollout engine: every role of a team on one in-process model, prefixes reused.

An agent conversation grows by a few hundred tokens a turn, and every turn re-sends all of it;
the episodes of one role also open with the same system prompt. Re-reading those tokens is what
made local rollouts slow (each call paid for the whole conversation). This engine keeps the key/value
cache of every conversation after each call and, on the next call, feeds only the tokens that
follow the longest cached prefix (of the same adapter, since LoRA changes the keys and values):

    engine = LocalEngine(peft_model, tokenizer, {"planner": "planner", "executor": "executor"})
    replies = engine.generate(requests)          # requests of any roles, one call
    engine.stats.cache_share                     # prompt tokens served from cache / prompt tokens

Each request is prefilled alone (its new tokens only; no padding), then all rows decode together
in one forward pass per token, each row through its own adapter (PEFT mixed-adapter batches,
``adapter_names``), so a planner turn does not wait for executor turns. A finished row leaves the
batch at once. Code turns stop at the close of their first code block; other turns at their
end-of-turn token or token limit. Memory is bounded: caches of released episodes are dropped and
the least recently used entries are evicted past ``cache_tokens``.

Greedy replies are those of :class:`~prost_lightning.agents.hf_policy.HFPolicy` (plain
``generate``, the reference path), up to float rounding in near-ties; ``tests/test_local_engine.py``
plays the same episodes through both and compares every action.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .hf_policy import eval_mode, stop_token_ids
from .parsing import code_block_end
from .policy import Generation, GenerationRequest, Policy

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
SHARED_PREFIX = "shared:"  # cache keys of system-prompt prefixes, kept across episodes


@dataclass
class EngineStats:
    """Token accounting of an engine since it was built (or since ``reset()``)."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the cache
    generated_tokens: int = 0
    forward_passes: int = 0
    seconds: float = 0.0
    evicted_entries: int = 0

    @property
    def cache_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "cache_share": round(self.cache_share, 4), "generated_tokens": self.generated_tokens,
                "forward_passes": self.forward_passes, "seconds": round(self.seconds, 3),
                "generated_tokens_per_s": round(self.generated_tokens / self.seconds, 2) if self.seconds else None,
                "evicted_entries": self.evicted_entries}


@dataclass
class _Entry:
    adapter: str
    ids: list[int]  # the tokens whose keys/values are held (fed through the model, in order)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, kv_heads, len(ids), head_dim]


@dataclass
class _Row:
    index: int  # position in the caller's request list
    request: GenerationRequest
    adapter: str
    ids: list[int]  # prompt tokens
    reused: int = 0
    fed: list[int] = field(default_factory=list)  # prompt + generated tokens whose kv exist
    generated: list[int] = field(default_factory=list)
    finish: str = ""
    code_stop: bool = False
    pending: int = 0  # the next token, picked but not yet fed


class LocalEngine(Policy):
    """One local (PEFT) model serving several roles, with prefix reuse and mixed-adapter batches."""

    name = "local"

    def __init__(self, model, tokenizer, adapters: Mapping[str, str | None], *, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_batch_size: int = 16,
                 cache_tokens: int = 131_072, num_parameters: int | None = None, seed: int = 0):
        """
        Args:
            model: a causal LM; a ``peft.PeftModel`` when any role has an adapter.
            tokenizer: its tokenizer (chat template required).
            adapters: role -> PEFT adapter name (None: the base model without adapter).
            do_sample: sample (``temperature``, ``top_p``) instead of greedy decoding.
            max_batch_size: rows decoded together; more requests decode in several groups.
            cache_tokens: cap on the tokens held in the prefix cache (least recently used evicted).
            num_parameters: base parameters, for FLOPs (default: counted from the model).
            seed: seed of the sampling generator (sampling only).
        """
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = dict(adapters)
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.max_batch_size = max(1, max_batch_size)
        self.cache_tokens = cache_tokens
        self.num_parameters = num_parameters or sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
        self.stop_ids = set(stop_token_ids(tokenizer))
        self.mixed = hasattr(model, "peft_config")
        self.stats = EngineStats()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._generator = torch.Generator().manual_seed(seed)
        self._system_ids: dict[str, list[int]] = {}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # transformers 5 renamed the cache argument; older releases only know past_key_values
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    # -- the Policy interface ---------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        started = time.monotonic()
        out: list[Generation | None] = [None] * len(requests)
        rows = [self._row(i, r) for i, r in enumerate(requests)]
        previous = getattr(self.model, "active_adapter", None) if self.mixed else None
        try:
            with eval_mode(self.model), torch.no_grad():
                for start in range(0, len(rows), self.max_batch_size):
                    group = rows[start:start + self.max_batch_size]
                    for row, generation in zip(group, self._generate_group(group), strict=True):
                        out[row.index] = generation
        finally:  # training (RolloutCallback) goes on with the adapter it had
            if isinstance(previous, str) and self.model.active_adapter != previous:
                self.model.set_adapter(previous)
        self._evict()
        self.stats.seconds += time.monotonic() - started
        return out  # type: ignore[return-value]

    def release(self, conversation_prefix: str) -> None:
        """Drop the caches of conversations whose key starts with ``conversation_prefix`` (an episode's)."""
        for key in [k for k in self._cache if k.startswith(conversation_prefix)]:
            del self._cache[key]

    def clear(self) -> None:
        self._cache.clear()

    @property
    def cached_tokens(self) -> int:
        return sum(len(e.ids) for e in self._cache.values())

    # -- one group of rows -------------------------------------------------------------------------
    def _row(self, index: int, request: GenerationRequest) -> _Row:
        adapter = self.adapters.get(request.role)
        prompt = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return _Row(index, request, adapter or BASE_ADAPTER, list(ids), code_stop=request.stop_after_code)

    def _generate_group(self, rows: list[_Row]) -> list[Generation]:
        device = next(self.model.parameters()).device
        firsts = [self._prefill(row, device) for row in rows]
        # the batch cache: each row's keys/values right-aligned, zero-masked on the left
        width = max(len(r.fed) for r in rows)
        layers = len(firsts[0][1])
        batch_kv = []
        for layer in range(layers):
            k0, v0 = firsts[0][1][layer]
            keys = k0.new_zeros((len(rows), k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((len(rows), v0.shape[1], width, v0.shape[3]))
            for b, (_, kv) in enumerate(firsts):
                n = kv[layer][0].shape[2]
                keys[b, :, width - n:] = kv[layer][0][0]
                values[b, :, width - n:] = kv[layer][1][0]
            batch_kv.append((keys, values))
        del firsts[:]  # per-row prefill caches are copied: free them
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for b, r in enumerate(rows):
            mask[b, width - len(r.fed):] = 1
        cache = _dynamic_cache(batch_kv)
        active = list(range(len(rows)))  # batch position -> row index
        next_tokens = [r.pending for r in rows]
        while True:
            keep = []
            for b, ri in enumerate(active):
                row = rows[ri]
                if not self._accept(row, next_tokens[b]):
                    keep.append(b)
            finished = [b for b in range(len(active)) if b not in keep]
            for b in finished:
                self._store(rows[active[b]], cache, b, mask)
            if not keep:
                break
            if finished:
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask = mask[index]
                active = [active[b] for b in keep]
                next_tokens = [next_tokens[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            positions = torch.tensor([[len(rows[ri].fed)] for ri in active], device=device)
            for ri, token in zip(active, next_tokens, strict=True):
                rows[ri].fed.append(token)
            logits = self._forward(torch.tensor([[t] for t in next_tokens], device=device), mask, positions,
                                   cache, [rows[ri].adapter for ri in active])
            next_tokens = self._pick(logits[:, -1])
        return [self._generation(r) for r in rows]

    def _prefill(self, row: _Row, device) -> tuple[int, list]:
        entry, reused = self._lookup(row)
        # at least one prompt token is fed: its logits give the first reply token
        reused = min(reused, len(row.ids) - 1)
        row.reused = reused
        past = [(k[:, :, :reused].to(device), v[:, :, :reused].to(device)) for k, v in entry.kv] if reused else None
        cache = _dynamic_cache(past) if past else _dynamic_cache(None)
        new = torch.tensor([row.ids[reused:]], device=device)
        mask = torch.ones((1, len(row.ids)), dtype=torch.long, device=device)
        positions = torch.arange(reused, len(row.ids), device=device)[None]
        logits = self._forward(new, mask, positions, cache, [row.adapter])
        row.fed = list(row.ids)
        row.pending = self._pick(logits[:, -1])[0]
        self.stats.calls += 1
        self.stats.prompt_tokens += len(row.ids)
        self.stats.cached_tokens += reused
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        self._remember_system_prefix(row, kv)
        return row.pending, kv

    def _forward(self, input_ids, mask, positions, cache, adapters: list[str]) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions, self._cache_arg: cache,
                  "use_cache": True, "logits_to_keep": 1}
        self.stats.forward_passes += 1
        if not self.mixed:
            return self.model(**kwargs).logits.float()
        if len(set(adapters)) > 1:
            return self.model(**kwargs, adapter_names=adapters).logits.float()
        # one adapter for every row: PEFT's mixed-batch path loops over adapters in every layer and
        # was measured twice as slow per decode step as the plain path, so use the plain path
        if adapters[0] == BASE_ADAPTER:
            with self.model.disable_adapter():
                return self.model(**kwargs).logits.float()
        if self.model.active_adapter != adapters[0]:
            self.model.set_adapter(adapters[0])
        return self.model(**kwargs).logits.float()

    def _pick(self, logits: torch.Tensor) -> list[int]:
        if not self.do_sample:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits / max(self.temperature, 1e-5), dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs.cpu(), 1, generator=self._generator).squeeze(-1).tolist()

    def _accept(self, row: _Row, token: int) -> bool:
        """Take the row's next token; True when the row is finished."""
        row.generated.append(token)
        self.stats.generated_tokens += 1
        if token in self.stop_ids:
            row.finish = "stop"
        elif row.code_stop and code_block_end(self._text(row)) is not None:
            row.finish = "stop"
        elif len(row.generated) >= row.request.max_new_tokens:
            row.finish = "length"
        return bool(row.finish)

    def _text(self, row: _Row) -> str:
        return self.tokenizer.decode([t for t in row.generated if t not in self.stop_ids], skip_special_tokens=True)

    def _generation(self, row: _Row) -> Generation:
        text = self._text(row)
        if row.code_stop:
            text = text[: code_block_end(text) or len(text)]
        return Generation(text=text, prompt_tokens=len(row.ids), completion_tokens=len(row.generated),
                          finish_reason=row.finish or "length", cached_tokens=row.reused)

    # -- the prefix cache --------------------------------------------------------------------------
    def _lookup(self, row: _Row) -> tuple[_Entry | None, int]:
        best, best_len = None, 0
        for key, entry in self._cache.items():
            if entry.adapter != row.adapter or len(entry.ids) <= best_len:
                continue
            n = _common_prefix(entry.ids, row.ids)
            if n > best_len:
                best, best_len = key, n
        if best is None:
            return None, 0
        self._cache.move_to_end(best)
        return self._cache[best], best_len

    def _store(self, row: _Row, cache, b: int, mask: torch.Tensor) -> None:
        key = row.request.conversation
        if not key:
            return
        n = len(row.fed)
        width = mask.shape[1]
        kv = [(layer.keys[b:b + 1, :, width - n:].clone(), layer.values[b:b + 1, :, width - n:].clone())
              for layer in cache.layers]
        self._cache[key] = _Entry(row.adapter, list(row.fed), kv)
        self._cache.move_to_end(key)

    def _remember_system_prefix(self, row: _Row, kv) -> None:
        """Keep the system prompt's keys/values so later episodes of the role start from them."""
        messages = row.request.messages
        if not messages or messages[0].get("role") != "system":
            return
        text = messages[0]["content"]
        ids = self._system_ids.get(text)
        if ids is None:
            rendered = self.tokenizer.apply_chat_template(messages[:1], tokenize=False)
            ids = self._system_ids[text] = list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        key = f"{SHARED_PREFIX}{row.adapter}:{hash(text)}"
        if key in self._cache or len(ids) >= len(row.ids) or row.ids[:len(ids)] != ids:
            return
        n = len(ids)
        self._cache[key] = _Entry(row.adapter, ids, [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in kv])

    def _evict(self) -> None:
        total = self.cached_tokens
        while total > self.cache_tokens and self._cache:
            _, entry = self._cache.popitem(last=False)
            total -= len(entry.ids)
            self.stats.evicted_entries += 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n and a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the first mismatch (list slices compare in C)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _dynamic_cache(kv):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()
