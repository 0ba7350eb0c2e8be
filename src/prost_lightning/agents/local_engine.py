"""The local rollout engine: every role of a team on one in-process model, prefixes reused.

An agent conversation grows by a few hundred tokens a turn, and every turn re-sends all of it;
the episodes of one role also open with the same system prompt. Re-reading those tokens is what
made local rollouts slow (each call paid for the whole conversation). This engine keeps the key/value
cache of every conversation after each call and, on the next call, feeds only the tokens that
follow the longest cached prefix (of the same adapter, since LoRA changes the keys and values):

    engine = LocalEngine(peft_model, tokenizer, {"planner": "planner", "executor": "executor"})
    replies = engine.generate(requests)          # requests of any roles, one call
    engine.stats.cache_share                     # prompt tokens served from cache / prompt tokens

It is also a :class:`~prost_lightning.agents.policy.StreamingPolicy`: ``submit`` queues a request
and each ``step`` admits queued requests into the running batch (prefilled on their new tokens only,
straight into a free slot of the batch cache, requests of one adapter that arrive together in one
pass) and decodes one token for every row.
A finished row leaves at once and a new one can take its place on the next step (continuous
batching: ``run_episodes`` sends a finished reply to its environment call while the other rows
keep decoding). Each row goes through its own adapter in the same forward pass
(:mod:`~prost_lightning.agents.grouped_lora`; PEFT's ``adapter_names`` when a model has LoRA
layers that module does not cover); a step whose rows share one adapter runs on its merged
weights. The batch cache is preallocated and written in place
(:mod:`~prost_lightning.agents.kv_slots`), and steps of several tokens attend on its key/value heads
as they are (:mod:`~prost_lightning.agents.gqa_attention`). Code turns stop at the close of their first code block
(and, with ``known_apis``, name only real APIs: :mod:`~prost_lightning.agents.known_apis`);
other turns at their end-of-turn token or token limit. Memory is bounded: caches of released
episodes are dropped and the least recently used entries are evicted past ``cache_tokens``.

Greedy replies are those of :class:`~prost_lightning.agents.hf_policy.HFPolicy` (plain
``generate``, the reference path), up to float rounding in near-ties; ``tests/test_local_engine.py``
plays the same episodes through both and compares every action.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from prost_lightning.backbone import base_parameter_count

from .drafts import NgramIndex, ReplyIndex, draft
from .gqa_attention import installed as grouped_attention
from .grouped_lora import BASE_ADAPTER, GroupedLoRA
from .hf_policy import mask_unknown_apis, stop_token_ids
from .known_apis import TokenPieces
from .kv_slots import SlotCache
from .packed_linear import PackedLinears
from .parsing import code_block_end
from .policy import Generation, GenerationRequest, StreamingPolicy

SHARED_PREFIX = "shared:"  # cache keys of system-prompt prefixes, kept across episodes
# tokens a row may re-feed to share another row's prefill pass: a pass's fixed cost (a read of every
# weight) is about what 30 prefill tokens cost on a 2-core CPU in fp32 (profiled, docs/rollouts.md)
PREFILL_SLACK = 24

@dataclass
class EngineStats:
    """Token accounting of an engine since it was built (or since ``reset()``)."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the cache
    generated_tokens: int = 0
    forward_passes: int = 0
    seconds: float = 0.0  # within step(): the forward passes and the engine's own bookkeeping around them
    forward_seconds: float = 0.0  # of those, within the model's forward passes
    evicted_entries: int = 0
    draft_tokens: int = 0  # guessed tokens checked in decode steps
    accepted_draft_tokens: int = 0  # of those, the ones the model itself picked (kept)
    joined_running_batch: int = 0  # requests admitted while other rows were mid-reply (continuous batching)

    @property
    def cache_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "cache_share": round(self.cache_share, 4), "generated_tokens": self.generated_tokens,
                "forward_passes": self.forward_passes, "seconds": round(self.seconds, 3),
                "forward_seconds": round(self.forward_seconds, 3),
                "generated_tokens_per_s": round(self.generated_tokens / self.seconds, 2) if self.seconds else None,
                "evicted_entries": self.evicted_entries, "draft_tokens": self.draft_tokens,
                "accepted_draft_tokens": self.accepted_draft_tokens, "joined_running_batch": self.joined_running_batch}


@dataclass
class _Entry:
    adapter: str
    ids: list[int]  # the tokens whose keys/values are held (fed through the model, in order)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, kv_heads, len(ids), head_dim]


@dataclass
class _Row:
    ticket: int
    request: GenerationRequest
    adapter: str
    ids: list[int]  # prompt tokens
    reused: int = 0
    fed: list[int] = field(default_factory=list)  # prompt + generated tokens whose kv exist
    generated: list[int] = field(default_factory=list)
    finish: str = ""
    code_stop: bool = False
    pending: int = 0  # the next token, picked but not yet fed
    context: NgramIndex = field(default_factory=NgramIndex)  # prompt + generated tokens (drafts are looked up here)


class LocalEngine(StreamingPolicy):
    """One local (PEFT) model serving several roles, with prefix reuse and continuous mixed-adapter batches."""

    name = "local"

    def __init__(self, model, tokenizer, adapters: Mapping[str, str | None], *, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_batch_size: int = 16,
                 cache_tokens: int = 131_072, num_parameters: int | None = None, seed: int = 0,
                 draft_tokens: int = 8, step_tokens: int = 32, drafts_from_replies: bool = True,
                 merged_adapters: bool = True, fold_query_groups: bool = True, packed_weights: bool = True):
        """
        Args:
            model: a causal LM; a ``peft.PeftModel`` when any role has an adapter.
            tokenizer: its tokenizer (chat template required).
            adapters: role -> PEFT adapter name (None: the base model without adapter).
            do_sample: sample (``temperature``, ``top_p``) instead of greedy decoding.
            max_batch_size: rows decoded together; more requests wait for a free row.
            cache_tokens: cap on the tokens held in the prefix cache (least recently used evicted).
            num_parameters: base parameters, for FLOPs (default: counted from the model).
            seed: seed of the sampling generator (sampling only).
            draft_tokens: greedy decoding: up to this many tokens per row guessed by lookup
                (:mod:`~prost_lightning.agents.drafts`) and checked in the same forward pass (replies
                unchanged; 1.99x vs 1.71x over plain generate with none, docs/rollouts.md); 0: none.
                ``step_tokens`` leaves a full batch 2-3 a row; the few rows at the end of a run,
                whose steps cost about what one token's does, take up to 8 (4 before: the
                ``hf_draft_tokens_4`` row of ``prost bench --only rollout_engines``).
            step_tokens: cap on the tokens one decode step feeds (rows x (1 + drafts)): drafts are
                near free for a few rows, not for a full batch. 32 lets a batch of 9-10 rows draft 2
                tokens each (16 allowed none): the demo's 9 held-out episodes took 49.1 s instead of
                55.9 s on a 2-core AVX2 CPU in fp32 (``prost bench --only rollout_engines`` at 9e34aec, which ran
                the 16-token cap as its variant).
            drafts_from_replies: drafts are also looked up in the replies the row's adapter finished
                before (other episodes of the same role), not only in the row's own context.
            merged_adapters: a step whose rows share one adapter runs on that adapter's merged
                weights (one copy of the adapted weights per role in memory; see grouped_lora).
            fold_query_groups: steps of several tokens per row attend on the cache's key/value heads
                as they are (gqa_attention); False: transformers' attention, which copies them.
            packed_weights: float32 on a CPU, frozen and merged weights are packed once for oneDNN
                (packed_linear): few-row products cost near what one row's does. One more copy of
                the base weights in memory; False: ``F.linear`` on the weights as they are.
        """
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = dict(adapters)
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.max_batch_size = max(1, max_batch_size)
        self.cache_tokens = cache_tokens
        self.draft_tokens = 0 if do_sample else max(0, draft_tokens)
        self._replies: dict[str, ReplyIndex] | None = {} if drafts_from_replies and self.draft_tokens else None
        self.step_tokens = step_tokens
        self.fold_query_groups = fold_query_groups
        self.num_parameters = num_parameters or base_parameter_count(model)
        self.stop_ids = set(stop_token_ids(tokenizer))
        self._pieces = TokenPieces(tokenizer, self.stop_ids)
        self.mixed = hasattr(model, "peft_config")
        self.stats = EngineStats()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._generator = torch.Generator().manual_seed(seed)
        self._system_ids: dict[str, list[int]] = {}
        self._base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # transformers 5 renamed the cache argument; older releases only know past_key_values
        self._cache_arg = "cache" if "cache" in inspect.signature(self._base.forward).parameters else "past_key_values"
        self._lora = (GroupedLoRA(model, merge=merged_adapters, pack=packed_weights)
                      if self.mixed and GroupedLoRA.supports(model) else None)
        self._packed = PackedLinears(self._base) if packed_weights else None
        self._slots = _slot_cache(self._base)
        self._rows: list[_Row] = []  # the running batch, in slot order
        self._waiting: deque[_Row] = deque()
        self._tickets = itertools.count()

    # -- the Policy interface ---------------------------------------------------------------------
    def release(self, conversation_prefix: str) -> None:
        """Drop the caches of conversations whose key starts with ``conversation_prefix`` (an episode's)."""
        for key in [k for k in self._cache if k.startswith(conversation_prefix)]:
            del self._cache[key]

    def clear(self) -> None:
        self._cache.clear()
        if self._replies is not None:
            self._replies.clear()

    @property
    def cached_tokens(self) -> int:
        return sum(len(e.ids) for e in self._cache.values())

    # -- the StreamingPolicy interface -------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> int:
        adapter = self.adapters.get(request.role)
        prompt = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        row = _Row(next(self._tickets), request, adapter or BASE_ADAPTER, list(ids), code_stop=request.stop_after_code)
        self._waiting.append(row)
        return row.ticket

    @property
    def busy(self) -> bool:
        return bool(self._rows or self._waiting)

    def step(self) -> list[tuple[int, Generation]]:
        started = time.monotonic()
        try:
            with self._inference():
                done = self._admit()
                if self._rows:
                    done += self._decode()
        except BaseException:
            self.abort()
            raise
        finally:
            self.stats.seconds += time.monotonic() - started
        self._evict()
        return [(row.ticket, self._generation(row)) for row in done]

    def abort(self) -> list[int]:
        tickets = [r.ticket for r in self._rows] + [r.ticket for r in self._waiting]
        self._rows.clear()
        self._waiting.clear()
        self._slots.clear()
        return tickets

    # -- one step -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self):
        """No gradients, no dropout, every LoRA layer routed per row, frozen weights packed,
        grouped-query attention without copies of the cache; the model's own state after."""
        previous = getattr(self.model, "active_adapter", None) if self.mixed else None
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.no_grad(), (self._lora.installed() if self._lora else contextlib.nullcontext()), \
                    (self._packed.installed() if self._packed else contextlib.nullcontext()), \
                    (grouped_attention(self._base) if self.fold_query_groups else contextlib.nullcontext()):
                yield
        finally:
            if was_training:
                self.model.train()
            # training (RolloutCallback) goes on with the adapter it had
            if isinstance(previous, str) and self.model.active_adapter != previous:
                self.model.set_adapter(previous)

    def _admit(self) -> list[_Row]:
        """Prefill waiting rows into free slots; returns those whose first token already ends them."""
        admitted = []
        while self._waiting and len(self._rows) + len(admitted) < self.max_batch_size:
            admitted.append(self._waiting.popleft())
        self.stats.joined_running_batch += len(admitted) if self._rows else 0  # rows of earlier steps are decoding
        first = len(self._rows)
        # the first row of each system prompt not cached yet goes first: the others then start from it
        leaders, seen = [], set()
        for row in admitted:
            prefix = self._system_prefix(row)
            if prefix is not None and prefix[0] not in self._cache and prefix[0] not in seen:
                seen.add(prefix[0])
                leaders.append(row)
        led = {row.ticket for row in leaders}
        for rows in (leaders, [row for row in admitted if row.ticket not in led]):
            for group in self._prefill_groups(rows):
                self._prefill(group)
        finished = [slot for slot in range(first, len(self._rows)) if self._accept(self._rows[slot], self._rows[slot].pending)]
        done = [self._rows[slot] for slot in finished]
        for slot in reversed(finished):  # from the end: a removed slot is refilled by the last one
            self._finish(slot)
        return done

    def _prefill_groups(self, rows: list[_Row]) -> list[list[tuple[_Row, _Entry | None, int]]]:
        """Rows admitted together, in groups that share one prefill pass: (row, cached entry, new tokens).

        A pass costs a weight read whatever it feeds, so rows of one adapter go together when their
        new tokens are within ``PREFILL_SLACK`` of the group's most: every row of a group feeds that
        many tokens, a row with fewer re-feeding the last of its cached ones, so that each row's last
        prompt token (whose logits give its first reply token) is the pass's last position.
        """
        planned = []
        for row in rows:
            entry, reused = self._lookup(row)
            # at least one prompt token is fed: its logits give the first reply token
            planned.append((row, entry, len(row.ids) - min(reused, len(row.ids) - 1)))
        groups: list[list] = []
        for item in sorted(planned, key=lambda p: -p[2]):
            row, _, new = item
            group = next((g for g in groups if g[0][0].adapter == row.adapter and new >= g[0][2] - PREFILL_SLACK
                          and len(row.ids) >= g[0][2]), None)
            if group is None:
                groups.append([item])
            else:
                group.append(item)
        return groups

    def _prefill(self, group: list[tuple[_Row, _Entry | None, int]]) -> None:
        count = group[0][2]  # the group's most new tokens
        first = len(self._rows)
        for row, entry, _ in group:
            row.reused = len(row.ids) - count
            self._slots.add(entry.kv if row.reused else None, row.reused)
            self._rows.append(row)
        rows = [row for row, _, _ in group]
        mask, positions = self._slots.plan_prefill(first, count)
        logits = self._forward(torch.tensor([row.ids[row.reused:] for row in rows], device=self._slots.device),
                               mask, positions, [row.adapter for row in rows])
        for slot, (row, pick) in enumerate(zip(rows, self._pick(logits, rows), strict=True), start=first):
            row.fed = list(row.ids)
            row.context = NgramIndex(list(row.ids))
            row.pending = pick
            self.stats.calls += 1
            self.stats.prompt_tokens += len(row.ids)
            self.stats.cached_tokens += row.reused
            self._remember_system_prefix(row, slot)

    def _decode(self) -> list[_Row]:
        """One forward pass for every running row; returns the rows it finished (they have left the batch).

        Each row feeds its pending token and, greedy, a draft of the tokens that followed the same
        n-gram before (:mod:`~prost_lightning.agents.drafts`); the model's own pick at every position
        decides how much of the draft is kept, so the reply is the one token-by-token decoding gives.
        """
        rows = self._rows
        per_row = min(self.draft_tokens, self.step_tokens // len(rows) - 1)
        drafts = [self._draft(row, min(per_row, row.request.max_new_tokens - len(row.generated) - 1)) for row in rows]
        count = 1 + max(len(d) for d in drafts)
        pad = rows[0].pending  # fills short rows; its outputs are not read
        feed = [[r.pending, *d] + [pad] * (count - 1 - len(d)) for r, d in zip(rows, drafts, strict=True)]
        mask, positions = self._slots.plan_decode(count)
        logits = self._forward(torch.tensor(feed, device=self._slots.device), mask, positions,
                               [r.adapter for r in rows], keep=count)
        picks = self._pick(logits, rows) if count == 1 else logits.argmax(dim=-1).tolist()
        finished = [slot for slot, row in enumerate(rows)
                    if self._take(slot, row, drafts[slot], picks[slot], logits[slot] if count > 1 else None)]
        done = [rows[slot] for slot in finished]
        for slot in reversed(finished):  # from the end: a removed slot is refilled by the last one
            self._finish(slot)
        return done

    def _take(self, slot: int, row: _Row, draft: list[int], picks, logits: torch.Tensor | None) -> bool:
        """Accept the row's picks up to the first that differs from its draft; True when the row is finished.

        ``logits`` ([positions, vocab], multi-token steps): a row with known APIs picks again at each
        position, since what it may write there depends on the tokens accepted before it.
        """
        picks = picks if isinstance(picks, list) else [picks]
        row.fed.append(row.pending)
        self.stats.draft_tokens += len(draft)
        finished = False
        for i, token in enumerate(picks):
            if logits is not None and row.request.known_apis is not None:
                token = self._pick(logits[i:i + 1], [row])[0]
            row.pending = token
            finished = self._accept(row, token)
            if finished or i >= len(draft) or draft[i] != token:
                break
            row.fed.append(token)  # the draft token fed at i + 1 was the model's pick: its keys/values hold
            self.stats.accepted_draft_tokens += 1
        self._slots.truncate(slot, len(row.fed))
        return finished

    def _draft(self, row: _Row, limit: int) -> list[int]:
        replies = self._replies.get(row.adapter) if self._replies is not None else None
        return draft(row.context, replies, limit, reply_start=len(row.ids))

    def _finish(self, slot: int) -> None:
        row = self._rows[slot]
        self._store(row, slot)
        if self._replies is not None:
            self._replies.setdefault(row.adapter, ReplyIndex()).add(row.generated)
        self._slots.remove(slot)
        self._rows[slot] = self._rows[-1]
        self._rows.pop()

    def _forward(self, input_ids, mask, positions, adapters: list[str], keep: int = 1) -> torch.Tensor:
        """Logits of the last ``keep`` positions ([rows, vocab] when ``keep`` is 1, else [rows, keep, vocab])."""
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions,
                  self._cache_arg: self._slots, "use_cache": True, "logits_to_keep": keep}
        started = time.monotonic()
        logits = self._logits(kwargs, adapters)
        self.stats.forward_seconds += time.monotonic() - started
        return logits[:, -1] if keep == 1 else logits

    def _logits(self, kwargs: dict, adapters: list[str]) -> torch.Tensor:
        self.stats.forward_passes += 1
        if not self.mixed:
            return self.model(**kwargs).logits.float()
        if self._lora is not None:
            self._lora.route(adapters)
            return self._base(**kwargs).logits.float()
        if len(set(adapters)) > 1:
            return self.model(**kwargs, adapter_names=adapters).logits.float()
        if adapters[0] == BASE_ADAPTER:
            with self.model.disable_adapter():
                return self.model(**kwargs).logits.float()
        if self.model.active_adapter != adapters[0]:
            self.model.set_adapter(adapters[0])
        return self.model(**kwargs).logits.float()

    def _pick(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """The next token of each row ([rows, vocab] logits), within the row's known APIs if it has them."""
        for scores, row in zip(logits, rows, strict=True):
            if row.request.known_apis is not None:
                mask_unknown_apis(scores, row.request.known_apis, self._text(row), self._pieces,
                                  greedy=not self.do_sample)
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
        row.context.tokens.append(token)
        self.stats.generated_tokens += 1
        if token in self.stop_ids:
            row.finish = "stop"
        elif row.code_stop and code_block_end(self._text(row)) is not None:
            row.finish = "stop"
        elif len(row.generated) >= row.request.max_new_tokens:
            row.finish = "length"
        return bool(row.finish)

    def _text(self, row: _Row) -> str:
        return self._pieces.text(row.generated)

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

    def _store(self, row: _Row, slot: int) -> None:
        key = row.request.conversation
        if not key:
            return
        self._cache[key] = _Entry(row.adapter, list(row.fed), self._slots.export(slot, len(row.fed)))
        self._cache.move_to_end(key)

    def _system_prefix(self, row: _Row) -> tuple[str, list[int]] | None:
        """(cache key, tokens) of the row's system prompt, if it opens with one that is worth keeping."""
        messages = row.request.messages
        if not messages or messages[0].get("role") != "system":
            return None
        text = messages[0]["content"]
        ids = self._system_ids.get(text)
        if ids is None:
            rendered = self.tokenizer.apply_chat_template(messages[:1], tokenize=False)
            ids = self._system_ids[text] = list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        if len(ids) >= len(row.ids) or row.ids[:len(ids)] != ids:
            return None
        return f"{SHARED_PREFIX}{row.adapter}:{hash(text)}", ids

    def _remember_system_prefix(self, row: _Row, slot: int) -> None:
        """Keep the system prompt's keys/values so later episodes of the role start from them."""
        prefix = self._system_prefix(row)
        if prefix is not None and prefix[0] not in self._cache:
            self._cache[prefix[0]] = _Entry(row.adapter, prefix[1], self._slots.export(slot, len(prefix[1])))

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


def _slot_cache(base) -> SlotCache:
    config = base.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    weight = base.get_input_embeddings().weight
    sdpa = getattr(config, "_attn_implementation", "sdpa") == "sdpa"
    return SlotCache(config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim,
                     weight.dtype, weight.device, boolean_mask=sdpa)
