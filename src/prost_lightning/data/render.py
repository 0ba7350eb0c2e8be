"""Chat rendering and loss masks: one role's conversation -> token ids + which tokens are trained.

Two steps, so that re-building the train set every epoch is only index arithmetic:

1. :func:`render_conversation` (once per conversation, cached): render with the tokenizer's own
   chat template and record every message's token span.
2. :func:`build_sample` (every epoch): given the active sub-tasks and the mode, cut/mask the cached
   tokens into ``input_ids`` + ``labels``.

How message spans are found. The template is applied to growing prefixes of the conversation
(``messages[:i]``, and for an assistant message also ``messages[:i]`` with the generation prompt);
each prefix text must be a prefix of the next one (checked; a template that rewrites earlier turns
is refused with a clear error). The text between two prefixes is one segment; each segment is
tokenized on its own and the token ids concatenated. An assistant message is two segments: its
header (what ``add_generation_prompt`` adds, e.g. ``<|im_start|>assistant\\n``) and its body. This
is exactly what a policy sees at generation time: a prompt ending in the header, then the tokens it
generates itself.

What is trained (labels != -100): the body of each assistant message of an active sub-task, i.e.
the content and the end-of-turn token (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3),
minus trailing whitespace-only tokens. Decision: the ``\\n`` that ChatML puts after
``<|im_end|>`` is NOT trained: generation stops at the end-of-turn token, so the model never
produces that newline; it stays in ``input_ids`` as context. System, user (task, observations,
reports) and header tokens are never trained, nor is an assistant message marked
``context_only`` (a teacher's deliberate mistake: the model sees it and the error it caused, and
learns the repair that follows, never the mistake itself).

Modes (docs/prost.md), for an active set A of sub-task indices:

* ``slice``: the sample ends after the last message of sub-task max(A); trailing non-assistant
  messages are dropped (they carry no label). Messages of inactive sub-tasks before that stay as
  untrained context (this matters for the ``reverse`` and ``random`` schedules).
* ``mask``: the whole conversation stays; assistant messages of inactive sub-tasks are untrained.

Note: for a causal LM, tokens after the last trained token cannot change the loss, so both modes
give the same loss and gradients unless the over-length rule below kicks in; ``slice`` is cheaper.

A per-sub-task conversation (the executor's, ``Conversation.subtask = k``) takes part only when k
is active; otherwise it is not a sample this epoch (not counted as skipped).

Over-length rule (``max_length``), never cutting trained tokens silently:

1. The *prompt* (messages before the first assistant message: system + task) must fit with room
   for at least one more token; otherwise :class:`~prost_lightning.errors.ConfigError` names the
   task id, role and lengths (raised when the conversation is rendered, i.e. at set-up).
2. If the sample is too long, messages after the last trained message are dropped (they cannot
   change a causal LM's loss), then the oldest untrained turns between the prompt and the first
   trained message, a whole turn (assistant message + the messages up to the next assistant
   message) at a time. A sample that lost context turns is counted as ``truncated``.
3. If it still does not fit, the sample is skipped and counted as ``too_long``.

A sample with no trained token (e.g. an active sub-task with no assistant message of this role)
is skipped and counted as ``empty``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import Conversation, Trajectory

IGNORE_INDEX = -100
Mode = Literal["slice", "mask"]
MODES = ("slice", "mask")


class TemplateError(ConfigError):
    """The tokenizer's chat template cannot be split into per-message spans."""


@dataclass(frozen=True)
class MessageSpan:
    start: int  # first token of the message (header included)
    end: int  # one past its last token
    subtask: int
    trained: tuple[int, int] | None  # assistant messages not marked context_only: the trainable token range (body)
    context_only: bool = False  # an assistant message kept as untrained context (Message.context_only)


@dataclass(frozen=True)
class RenderedConversation:
    """One conversation tokenized once; samples are cut from it by index arithmetic."""

    task_id: str
    role: str
    subtask: int | None  # set for per-sub-task conversations (the executor's)
    num_subtasks: int
    token_ids: tuple[int, ...]
    spans: tuple[MessageSpan, ...]
    prompt_len: int  # tokens before the first assistant message (system + task)


@dataclass(frozen=True)
class Sample:
    task_id: str
    role: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _template(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _is_blank(tokenizer, token_id: int) -> bool:
    return tokenizer.decode([token_id]).strip() == ""


def _segment(longer: str, prefix: str, where: str) -> str:
    if not longer.startswith(prefix):
        raise TemplateError(
            f"{where}: the chat template does not render this conversation prefix by prefix (a later "
            "turn changes the text of earlier ones), so message spans cannot be found; use a model whose "
            "template is prefix-stable (ChatML, Llama 3, SmolLM2 are) or set a ChatML template on the tokenizer"
        )
    return longer[len(prefix):]


def render_conversation(tokenizer, conv: Conversation, task_id: str, num_subtasks: int,
                        max_length: int | None = None) -> RenderedConversation:
    """Tokenize one conversation with the tokenizer's chat template and find every message's span."""
    where = f"task {task_id}, role {conv.role}" + (f", sub-task {conv.subtask}" if conv.subtask else "")
    chat = [{"role": m.role, "content": m.content} for m in conv.messages]
    ids: list[int] = []
    spans: list[MessageSpan] = []
    previous = ""
    for i, msg in enumerate(conv.messages):
        start = len(ids)
        trained = None
        context_only = bool(msg.context_only)
        if msg.role == "assistant":
            with_header = _template(tokenizer, chat[:i], generation_prompt=True)
            ids += _encode(tokenizer, _segment(with_header, previous, where))
            previous = with_header
            rendered = _template(tokenizer, chat[: i + 1])
            body = _encode(tokenizer, _segment(rendered, previous, where))
            keep = len(body)
            while keep > 0 and _is_blank(tokenizer, body[keep - 1]):
                keep -= 1
            trained = None if context_only else (len(ids), len(ids) + keep)
            ids += body
        else:
            rendered = _template(tokenizer, chat[: i + 1])
            ids += _encode(tokenizer, _segment(rendered, previous, where))
        previous = rendered
        spans.append(MessageSpan(start, len(ids), msg.subtask, trained, context_only and msg.role == "assistant"))
    first_assistant = next((s for s in spans if s.trained is not None or s.context_only), None)
    prompt_len = first_assistant.start if first_assistant else len(ids)
    if max_length is not None and prompt_len >= max_length:
        raise ConfigError(
            f"max_length {max_length} is too short for {where}: its prompt (system + task) alone is "
            f"{prompt_len} tokens, leaving no room for a trained token; raise data.max_length above {prompt_len}"
        )
    return RenderedConversation(task_id, conv.role, conv.subtask, num_subtasks, tuple(ids), tuple(spans), prompt_len)


def render_trajectory(tokenizer, traj: Trajectory, roles: Collection[str] | None = None,
                      max_length: int | None = None) -> list[RenderedConversation]:
    return [
        render_conversation(tokenizer, c, traj.task_id, traj.num_subtasks, max_length)
        for c in traj.conversations
        if roles is None or c.role in roles
    ]


def is_active(rc: RenderedConversation, active: Collection[int]) -> bool:
    """Per-sub-task conversations take part only when their sub-task is active."""
    return rc.subtask is None or rc.subtask in active


def _turns(spans: Sequence[MessageSpan]) -> list[list[int]]:
    """Group message indices into turns: an assistant message and the messages up to the next one.

    A context-only assistant message and the messages after it open no turn of their own: they
    join the next turn, so the over-length rule never keeps a repair without the mistake it repairs.
    """
    turns: list[list[int]] = []
    carried: list[int] = []
    for i, s in enumerate(spans):
        if s.context_only or (carried and s.trained is None):
            carried.append(i)
        elif s.trained is not None or not turns:
            turns.append(carried + [i])
            carried = []
        else:
            turns[-1].append(i)
    if carried:  # a mistake with no trained turn after it stays with the turn before
        if turns:
            turns[-1].extend(carried)
        else:
            turns.append(carried)
    return turns


def build_sample(rc: RenderedConversation, active: Collection[int], mode: Mode = "slice",
                 max_length: int | None = None) -> Sample | Literal["empty", "too_long"]:
    """Cut one sample for the active sub-tasks; returns the skip reason instead when it has none to train."""
    if mode not in MODES:
        raise ConfigError(f"mode: '{mode}' is not one of {' | '.join(MODES)}")
    active = frozenset(active)
    spans = list(rc.spans)
    is_trained = [s.trained is not None and s.subtask in active and s.trained[1] > s.trained[0] for s in spans]
    if not any(is_trained):
        return "empty"
    last_trained = max(i for i, t in enumerate(is_trained) if t)
    # slice: sub-task indices never decrease along a conversation, so "up to the last message of
    # max(A), minus trailing unlabelled messages" is "up to the last trained message"
    keep = list(range(last_trained + 1 if mode == "slice" else len(spans)))

    def length(indices: list[int]) -> int:
        return sum(spans[i].end - spans[i].start for i in indices)

    truncated = False
    if max_length is not None and length(keep) > max_length:
        keep = keep[: last_trained + 1]  # tokens after the last label cannot change a causal LM's loss
        first_trained = is_trained.index(True)
        # turn 0 is the prompt (system + task): never dropped
        droppable = [t for t in _turns(spans)[1:] if t[-1] < first_trained]
        while length(keep) > max_length and droppable:
            dropped = set(droppable.pop(0))
            keep = [i for i in keep if i not in dropped]
            truncated = True
        if length(keep) > max_length:
            return "too_long"

    input_ids: list[int] = []
    labels: list[int] = []
    for i in keep:
        s = spans[i]
        input_ids += rc.token_ids[s.start:s.end]
        message_labels = [IGNORE_INDEX] * (s.end - s.start)
        if is_trained[i]:
            a, b = s.trained
            message_labels[a - s.start:b - s.start] = rc.token_ids[a:b]
        labels += message_labels
    return Sample(rc.task_id, rc.role, input_ids, labels, truncated)
