"""The one interface every role's policy implements: a batch of chats in, a batch of replies out.

    replies = policy.generate([GenerationRequest(role, messages, max_new_tokens, view), ...])

``messages`` is the role's chat so far (``{"role", "content"}`` dicts, ending with a user turn).
``view`` tells policies that do not read the chat (the oracle, scripted test policies) where the
episode stands: the task (with its ground-truth plan), the sub-task index and the step inside it.
Model policies (local HF, OpenAI-compatible HTTP) ignore it.

Implementations: :class:`~prost_lightning.agents.local_engine.LocalEngine` (all roles on one local
model, prefixes cached), :class:`~prost_lightning.agents.hf_policy.HFPolicy` (plain ``generate``),
:class:`~prost_lightning.agents.openai_policy.OpenAIPolicy`,
:class:`~prost_lightning.agents.oracle.OraclePolicy`, :class:`ScriptedPolicy` (tests). A
:class:`StreamingPolicy` (the local engine) also takes requests one by one and decodes them step
by step, which the runner uses for continuous batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .known_apis import KnownApis


class PolicyError(RuntimeError):
    """A policy could not produce a reply (endpoint down, bad answer); the episode fails, training goes on."""


@dataclass(frozen=True)
class EpisodeView:
    """What a non-model policy may know about the episode it answers for."""

    task: Any  # env.tasks.TaskInfo: instruction, supervisor, plan (ground truth), difficulty
    subtask: int  # sub-task index the reply belongs to (planner: the one it is about to emit)
    step: int  # 1-based reply number inside that sub-task (single agent: the turn number)
    last_observation: str | None = None


@dataclass
class GenerationRequest:
    role: str
    messages: list[dict]
    max_new_tokens: int
    view: EpisodeView | None = None
    stop_after_code: bool = False  # a code turn: the reply may end at the close of its first code block
    conversation: str | None = None  # stable id of the chat across calls (prefix caches key on it)
    known_apis: KnownApis | None = None  # a code turn may name only these APIs (local model policies)


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    cached_tokens: int = 0  # prompt tokens the policy did not recompute (served from its prefix cache)
    extra: dict = field(default_factory=dict)


class Policy:
    """Base class. ``num_parameters`` (the model's, for FLOPs) is None for policies that are not models."""

    name = "policy"
    num_parameters: int | None = None
    # False for model policies that cannot honour ``GenerationRequest.known_apis`` (an HTTP endpoint)
    constrains_known_apis: bool = True

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        raise NotImplementedError

    def release(self, conversation_prefix: str) -> None:
        """The episode whose conversations start with this id has ended (caching policies free its state)."""


class StreamingPolicy(Policy):
    """A policy that decodes requests as they come (continuous batching) instead of one batch per call.

        ticket = policy.submit(request)         # queued; joins the running batch at the next step
        for ticket, generation in policy.step(): ...   # one decode step; the replies it finished

    ``run_episodes`` drives such a policy step by step, so an episode whose reply is done goes on
    to its environment call while the other rows keep decoding. A ``step`` that raises has dropped
    every request in flight (their tickets will not come back).
    """

    def submit(self, request: GenerationRequest) -> int:
        raise NotImplementedError

    def step(self) -> list[tuple[int, Generation]]:
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """True while a submitted request has not come back from ``step``."""
        raise NotImplementedError

    def abort(self) -> list[int]:
        """Drop every request in flight; returns their tickets."""
        raise NotImplementedError

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.busy:
            raise PolicyError(f"{self.name}: generate() while streamed requests are in flight")
        tickets = [self.submit(r) for r in requests]
        replies: dict[int, Generation] = {}
        while len(replies) < len(tickets):
            replies.update(self.step())
        return [replies[t] for t in tickets]


class ScriptedPolicy(Policy):
    """Replies computed by a plain function of the request (tests, baselines such as always-wrong)."""

    def __init__(self, reply: Callable[[GenerationRequest], str], name: str = "scripted"):
        self.reply = reply
        self.name = name

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [Generation(text=self.reply(r)) for r in requests]


def always_wrong(finish_line: str = "The task is finished.") -> ScriptedPolicy:
    """Completes every task at once with a bogus answer and changes nothing: must score 0.

    Works for every role: the agent and the executor write the bogus completion (the executor then
    reports), the planner asks for it once and then says the task is finished.
    """

    def reply(request: GenerationRequest) -> str:
        step = request.view.step if request.view else 1
        sub = request.view.subtask if request.view else 1
        if request.role == "planner":
            return "Complete the task with the answer 'no idea'." if sub == 1 else finish_line
        if step == 1:
            return "I will answer without looking.\n```python\napis.supervisor.complete_task(answer='no idea')\n```"
        return "Completed the task."

    return ScriptedPolicy(reply, name="always_wrong")
