"""One episode as a state machine: a generator that yields what it needs and is sent the answer.

An episode yields two kinds of request:

* :class:`EnvCall` (``initialize``, ``execute``, ``task_completed``, ``evaluate``): the runner
  performs it on the episode's leased AppWorld server (in a worker thread) and sends the result
  back, or throws the ``EnvError`` into the generator;
* :class:`~prost_lightning.agents.policy.GenerationRequest`: the runner batches the pending
  requests of all concurrent episodes per role, calls that role's policy once per batch, and sends
  each episode its :class:`~prost_lightning.agents.policy.Generation`.

So N episodes run concurrently on N servers while one model generates for all of them in batches.
The system (systems.py) writes the conversation logic against the helpers here
(``yield from ep.generate(...)``, ``yield from ep.execute(code)``), and the episode turns what
happened into a :class:`~prost_lightning.trajectory.Trajectory` in the training schema.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from prost_lightning.env.client import EnvError
from prost_lightning.metrics import estimate_flops
from prost_lightning.trajectory import Conversation, Message, Outcome, SubTask, Trajectory, Usage

from .known_apis import KnownApis
from .parsing import is_execution_error, truncate
from .policy import EpisodeView, Generation, GenerationRequest, PolicyError
from .prompts import PromptSet


class FailureReason:
    """Why an episode failed (``Outcome.failure_reason``); counted by rollouts and collection."""

    NO_CODE = "no_code"  # the last reply before the limit had no ```python block
    EXECUTION_ERROR = "execution_error"  # the last execution before the limit failed
    STEP_LIMIT = "step_limit"  # turns (single) or steps of a sub-task (executor) ran out
    ENV_STEP_LIMIT = "env_step_limit"  # env interactions per episode ran out
    SUBTASK_LIMIT = "subtask_limit"  # the planner kept emitting sub-tasks
    NOT_COMPLETED = "not_completed"  # the system stopped without calling complete_task
    WRONG_RESULT = "wrong_result"  # complete_task was called but evaluate() failed
    SERVER_FAULT = "server_fault"  # the AppWorld server crashed, hung or raised (EnvError)
    POLICY_ERROR = "policy_error"  # the policy raised (endpoint down, ...)
    PREAMBLE_ERROR = "preamble_error"  # the helper preamble failed to execute
    INTERNAL_ERROR = "internal_error"  # a bug in the episode loop; the run goes on


@dataclass
class Limits:
    """Budgets of one episode.

    Args:
        max_subtasks: sub-tasks the planner may emit per episode.
        max_steps_per_subtask: executor replies per sub-task (code turns + the report). The
            single agent gets ``max_steps_per_subtask * K`` turns (K from the task's plan, 1 when
            unknown), capped by ``max_env_steps``.
        max_new_tokens: generated tokens per LLM call.
        role_max_new_tokens: per-role overrides of ``max_new_tokens``, e.g. {planner: 64}.
        max_env_steps: code executions per episode (the preamble is not counted).
        max_observation_chars: longer execution outputs are cut in the middle before the model sees them.
        known_apis_only: code turns may write only APIs the world documents after ``apis.<app>.``
            (the local model policies constrain their decoding; see ``agents/known_apis.py``).
    """

    max_subtasks: int = 8
    max_steps_per_subtask: int = 4
    max_new_tokens: int = 256
    role_max_new_tokens: dict[str, int] = field(default_factory=dict)
    max_env_steps: int = 30
    max_observation_chars: int = 1500
    known_apis_only: bool = False


@dataclass
class CostModel:
    """FLOPs and price of LLM calls.

    Args:
        parameters: model parameters per role (for FLOPs ~ 2 * params * tokens processed); roles
            absent here use the policy's own ``num_parameters`` (0 when unknown, e.g. the oracle).
        prices: USD per 1k (prompt, completion) tokens per role (as in metrics.py); key ``default``
            for roles not listed; no entry = free.
    """

    parameters: dict[str, int] = field(default_factory=dict)
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)

    def price(self, role: str) -> tuple[float, float]:
        entry = self.prices.get(role, self.prices.get("default", (0.0, 0.0)))
        if isinstance(entry, dict):
            return float(entry.get("prompt", 0.0)), float(entry.get("completion", 0.0))
        return float(entry[0]), float(entry[1])


@dataclass(frozen=True)
class EnvCall:
    method: str  # initialize | execute | task_completed | evaluate
    args: tuple = ()


class EpisodeStop(Exception):
    """Raised inside a system's loop when a budget runs out; ends the play, the episode is still scored."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Request = EnvCall | GenerationRequest

_episode_ids = itertools.count()


class Episode:
    """State of one task being solved by one system; ``run()`` is the generator the runner drives."""

    def __init__(self, system, task, *, prompts: PromptSet, limits: Limits, cost: CostModel | None = None,
                 role_parameters: dict[str, int | None] | None = None, preamble: str | None = None,
                 teacher: str = "unknown", known_apis: KnownApis | None = None):
        self.system = system
        self.known_apis = known_apis  # given to code-turn requests
        self.task = task
        self.prompts = prompts
        self.limits = limits
        self.cost = cost or CostModel()
        self.role_parameters = role_parameters or {}
        self.preamble = preamble
        self.teacher = teacher
        self.key = f"ep{next(_episode_ids)}:{task.task_id}/"  # prefix of its conversations' cache ids
        self.conversations: list[Conversation] = []
        self.subtasks: list[SubTask] = []  # the system fills it (the plan it followed)
        self.env_steps = 0
        self.current_subtask = 1
        self.completed = False
        self.stop_reason: str | None = None  # budget that ended the play, if any
        self.last_reply_had_code = True
        self.last_observation: str | None = None
        self.error: str | None = None  # server / policy / internal failure
        self.error_detail = ""
        self.evaluation: dict | None = None
        self.llm_calls: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.completion_tokens: dict[str, int] = {}
        self.flops = 0.0
        self.usd = 0.0
        self.started = time.monotonic()
        self.wall_time_s = 0.0

    # -- helpers for systems ----------------------------------------------------------------
    @property
    def task_fields(self) -> dict[str, Any]:
        sup = self.task.supervisor
        return {"instruction": self.task.instruction, "first_name": sup.get("first_name", ""),
                "last_name": sup.get("last_name", ""), "email": sup.get("email", ""),
                "phone_number": sup.get("phone_number", "")}

    def conversation(self, role: str, subtask: int | None = None) -> list[Message]:
        conv = Conversation(role=role, subtask=subtask,
                            messages=[Message(role="system", content=self.prompts.system(role), subtask=0)])
        self.conversations.append(conv)
        return conv.messages

    def generate(self, role: str, messages: list[Message], subtask: int, step: int, *,
                 code_turn: bool = False) -> Generator[Request, Any, str]:
        """Ask ``role``'s policy for the next reply to ``messages``; accounts usage.

        ``code_turn``: the reply is read as a code action, so a policy may stop generating at the
        close of its first code block (``GenerationRequest.stop_after_code``).
        """
        number = next((i for i, c in enumerate(self.conversations) if c.messages is messages), len(self.conversations))
        request = GenerationRequest(
            role=role, messages=[{"role": m.role, "content": m.content} for m in messages],
            max_new_tokens=self.limits.role_max_new_tokens.get(role, self.limits.max_new_tokens),
            view=EpisodeView(self.task, subtask, step, self.last_observation), stop_after_code=code_turn,
            conversation=f"{self.key}{number}", known_apis=self.known_apis if code_turn else None)
        generation: Generation = yield request
        self._account(role, generation)
        return generation.text.strip()

    def execute(self, code: str) -> Generator[Request, Any, str]:
        """Run the agent's code; returns the observation as the model will see it (cut if long)."""
        if self.env_steps >= self.limits.max_env_steps:
            raise EpisodeStop(FailureReason.ENV_STEP_LIMIT)
        self.env_steps += 1
        raw = yield EnvCall("execute", (code,))
        self.last_observation = raw
        return truncate(raw, self.limits.max_observation_chars)

    def check_completed(self) -> Generator[Request, Any, bool]:
        self.completed = bool((yield EnvCall("task_completed")))
        return self.completed

    def observation_turn(self, observation: str) -> str:
        return self.prompts.render("observation", observation=observation)

    # -- the whole episode ---------------------------------------------------------------------
    def run(self) -> Generator[Request, Any, Trajectory]:
        try:
            yield EnvCall("initialize", (self.task.task_id,))
            if self.preamble:
                out = yield EnvCall("execute", (self.preamble,))
                if is_execution_error(out):
                    self.error, self.error_detail = FailureReason.PREAMBLE_ERROR, out[-500:]
            if self.error is None:
                try:
                    yield from self.system.play(self)
                except EpisodeStop as stop:
                    self.stop_reason = stop.reason
                except PolicyError as error:
                    self.error, self.error_detail = FailureReason.POLICY_ERROR, str(error)[:500]
            self.evaluation = yield EnvCall("evaluate")
        except EnvError as error:
            self.error, self.error_detail = FailureReason.SERVER_FAULT, f"{error.reason}: {error}"[:500]
        self.wall_time_s = time.monotonic() - self.started
        return self.trajectory()

    # -- results ----------------------------------------------------------------------------------
    def _account(self, role: str, generation: Generation) -> None:
        self.llm_calls[role] = self.llm_calls.get(role, 0) + 1
        self.prompt_tokens[role] = self.prompt_tokens.get(role, 0) + generation.prompt_tokens
        self.completion_tokens[role] = self.completion_tokens.get(role, 0) + generation.completion_tokens
        params = self.cost.parameters.get(role) or self.role_parameters.get(role) or 0
        # tokens processed = the prompt tokens not served from the policy's prefix cache + one forward
        # step per generated token (the KV cache within a call)
        processed = generation.prompt_tokens - generation.cached_tokens + generation.completion_tokens
        self.flops += estimate_flops(params, processed)
        p_in, p_out = self.cost.price(role)
        self.usd += (generation.prompt_tokens * p_in + generation.completion_tokens * p_out) / 1000

    def failure_reason(self) -> str | None:
        if self.evaluation is not None and self.evaluation.get("success"):
            return None
        if self.error is not None:
            return self.error
        if self.completed:
            return FailureReason.WRONG_RESULT
        if self.stop_reason is not None:
            if not self.last_reply_had_code:
                return FailureReason.NO_CODE
            if self.last_observation is not None and is_execution_error(self.last_observation):
                return FailureReason.EXECUTION_ERROR
            return self.stop_reason
        return FailureReason.NOT_COMPLETED

    def trajectory(self) -> Trajectory:
        subtasks = self.subtasks or [SubTask(index=1, description="Solve the task.")]
        k = len(subtasks)
        for conv in self.conversations:  # a budget stop may leave a tag past the last recorded sub-task
            for m in conv.messages:
                m.subtask = min(m.subtask, k)
            if conv.subtask is not None:
                conv.subtask = min(conv.subtask, k)
        conversations = [c for c in self.conversations if len(c.messages) > 0]
        if not conversations:  # the env failed before the system started: keep the task prompt only
            conversations = [Conversation(role=self.system.roles[0], messages=[
                Message(role="user", content=self.prompts.render("task", **self.task_fields), subtask=0)])]
        evaluation = self.evaluation or {}
        success = bool(evaluation.get("success", False))
        passes = evaluation.get("passes", [])
        num_tests = int(evaluation.get("num_tests", 0) or 0)
        outcome = Outcome(
            success=success,
            passes=len(passes) if isinstance(passes, list) else int(passes or 0),
            num_tests=num_tests,
            failure_reason=self.failure_reason(),
            failed_subtask=None if success else max(1, min(self.current_subtask, k)),
        )
        difficulty = self.task.difficulty or evaluation.get("difficulty")
        return Trajectory(
            task_id=self.task.task_id,
            system=self.system.name,
            instruction=self.task.instruction,
            difficulty=difficulty if difficulty in (1, 2, 3) else None,
            subtasks=subtasks,
            conversations=conversations,
            outcome=outcome,
            usage=Usage(llm_calls=dict(self.llm_calls), prompt_tokens=dict(self.prompt_tokens),
                        completion_tokens=dict(self.completion_tokens), flops=self.flops,
                        cost=self.usd, env_steps=self.env_steps, wall_time_s=round(self.wall_time_s, 3)),
            teacher=self.teacher,
        )
