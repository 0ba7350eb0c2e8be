"""Plain Hugging Face ``generate``, one role per policy: the reference path of local rollouts.

Rollouts use :class:`~prost_lightning.agents.local_engine.LocalEngine` by default (prefixes cached,
all roles in one batch); this policy is the plain path it is checked against (same greedy
actions) and benchmarked against (``prost bench --only rollout_engines``), chosen with
``engine: hf_generate``. Each call re-reads the whole conversation.

The requests of one call are rendered with the tokenizer's chat template (generation prompt
added), left-padded into one batch and generated together with the KV cache; greedy by default.
Several roles share one ``PeftModel``: each policy activates its adapter before generating.
A request marked ``stop_after_code`` stops at the close of its first code block (its row only; the
rest of the batch goes on), so a code turn costs the tokens of the action, not of the token limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from prost_lightning.backbone import base_parameter_count

from .known_apis import CANDIDATES, KnownApis, TokenPieces
from .parsing import code_block_end
from .policy import Generation, GenerationRequest, Policy


class HFPolicy(Policy):
    name = "hf"

    def __init__(self, model, tokenizer, adapter: str | None = None, *, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_batch_size: int = 8,
                 num_parameters: int | None = None):
        """
        Args:
            model: a causal LM; a ``peft.PeftModel`` when ``adapter`` is given.
            tokenizer: its tokenizer (chat template required).
            adapter: PEFT adapter to activate before generating (None: use the model as is).
            do_sample: sample instead of greedy decoding.
            max_batch_size: requests generated together (more are split into several batches).
            num_parameters: base parameters, for FLOPs (default: counted from the model).
        """
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.max_batch_size = max(1, max_batch_size)
        self.num_parameters = num_parameters or base_parameter_count(model)
        self.name = f"hf:{adapter}" if adapter else "hf"
        self.stop_ids = stop_token_ids(tokenizer)
        self.pieces = TokenPieces(tokenizer, self.stop_ids)  # kept: its index of the vocabulary is built once

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(requests), self.max_batch_size):
            out.extend(self._generate_batch(list(requests[start:start + self.max_batch_size])))
        return out

    @torch.no_grad()
    def _generate_batch(self, requests: list[GenerationRequest]) -> list[Generation]:
        tok = self.tokenizer
        prompts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]
        padding_side = tok.padding_side
        tok.padding_side = "left"
        try:
            batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = padding_side
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        limit = max(r.max_new_tokens for r in requests)
        prompt_width = batch["input_ids"].shape[1]
        code_stop = _CodeBlockClosed(tok, prompt_width, [r.stop_after_code for r in requests])
        kwargs = dict(max_new_tokens=limit, do_sample=self.do_sample, use_cache=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=self.stop_ids)
        if any(code_stop.enabled):  # no per-step decoding for batches without a code turn (the planner's)
            kwargs["stopping_criteria"] = StoppingCriteriaList([code_stop])
        if any(r.known_apis is not None for r in requests):
            kwargs["logits_processor"] = LogitsProcessorList([_KnownApisOnly(self.pieces, prompt_width, requests,
                                                                             greedy=not self.do_sample)])
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        with self._adapter_active(), eval_mode(self.model):
            sequences = self.model.generate(**batch, **kwargs)
        new = sequences[:, prompt_width:]
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        results = []
        for i, (row, request, n_prompt) in enumerate(zip(new.tolist(), requests, prompt_lengths, strict=True)):
            tokens, finish = [], "length"
            for t in row[: min(request.max_new_tokens, code_stop.length.get(i, len(row)))]:
                if t in self.stop_ids:
                    tokens.append(t)  # the end-of-turn token is generated, so it is counted
                    finish = "stop"
                    break
                if t == tok.pad_token_id and t not in self.stop_ids:
                    finish = "stop"
                    break
                tokens.append(t)
            text = self.pieces.text(tokens)
            if i in code_stop.length:
                finish = "stop"
                text = text[: code_block_end(text) or len(text)]
            results.append(Generation(text=text, prompt_tokens=int(n_prompt), completion_tokens=len(tokens),
                                      finish_reason=finish))
        return results

    @contextlib.contextmanager
    def _adapter_active(self):
        if self.adapter is None or not hasattr(self.model, "set_adapter"):
            yield
            return
        previous = getattr(self.model, "active_adapter", None)
        self.model.set_adapter(self.adapter)
        try:
            yield
        finally:
            if isinstance(previous, str) and previous != self.adapter:
                self.model.set_adapter(previous)


def stop_token_ids(tokenizer) -> list[int]:
    """The end-of-sequence and end-of-turn tokens of the usual chat templates that the tokenizer knows."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@contextlib.contextmanager
def eval_mode(model):
    """Generation without dropout; the training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _CodeBlockClosed(StoppingCriteria):
    """Stops the rows whose request is a code turn once their new text holds a closed code block.

    ``length[i]`` records how many tokens row i had generated when it stopped; generate pads the
    row after that, so those tokens are not the model's and are not counted.
    """

    def __init__(self, tokenizer, prompt_width: int, enabled: list[bool]):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.enabled = enabled
        self.length: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        generated = input_ids.shape[1] - self.prompt_width
        for i, wanted in enumerate(self.enabled):
            if i in self.length:
                done[i] = True
            elif wanted and code_block_end(self.tokenizer.decode(input_ids[i, self.prompt_width:],
                                                                  skip_special_tokens=True)) is not None:
                self.length[i] = generated
                done[i] = True
        return done


def mask_unknown_apis(scores: torch.Tensor, apis: KnownApis, before: str, pieces: TokenPieces, *, greedy: bool) -> None:
    """Set to -inf, in place, the tokens of one row's ``scores`` that would name an API ``apis`` lacks.

    Inside a name every token that cannot continue it is dropped. Elsewhere only a token that
    writes a whole name can break one: greedy drops every token ranked above the first allowed
    one, sampling the refused ones among the ``CANDIDATES`` likeliest.
    """
    allowed = apis.allowed_tokens(before, pieces)
    if allowed is not None:
        if allowed:
            kept = scores[allowed].clone()
            scores.fill_(float("-inf"))
            scores[allowed] = kept
        return
    if greedy and apis.allows(before, pieces(int(scores.argmax()))):
        return  # the usual case: the pick already keeps every name real, no ranking needed
    # stable: equal scores keep token order, as argmax breaks ties, so greedy picks the first allowed
    order = scores.sort(descending=True, stable=True).indices
    ranked = order[:CANDIDATES].tolist()
    banned = apis.banned(before, ranked, pieces, first_allowed=greedy)
    if len(banned) == len(ranked):
        banned = apis.banned(before, order.tolist(), pieces, first_allowed=True)
    if banned and len(banned) < scores.numel():
        scores[banned] = float("-inf")


class _KnownApisOnly(LogitsProcessor):
    """``generate``'s side of known APIs: rows whose request has ``known_apis`` decode only real API names."""

    def __init__(self, pieces: TokenPieces, prompt_width: int, requests: list[GenerationRequest], greedy: bool):
        self.pieces = pieces
        self.prompt_width = prompt_width
        self.apis = [r.known_apis for r in requests]
        self.greedy = greedy

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, apis in enumerate(self.apis):
            if apis is not None:
                before = self.pieces.text(input_ids[i, self.prompt_width:].tolist())
                mask_unknown_apis(scores[i], apis, before, self.pieces, greedy=self.greedy)
        return scores
