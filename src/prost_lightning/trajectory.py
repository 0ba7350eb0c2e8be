"""The trajectory schema: the one record that collection writes, rollouts produce and training reads.

A trajectory is one agent system solving one task. Every message carries the index of the sub-task
it belongs to (0 = context before sub-task 1), which is what the ProST curriculum slices on.
Files are JSON Lines, one trajectory per line; errors name ``file:line`` and the field.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prost_lightning.errors import ProstError
from prost_lightning.files import write_atomic

SCHEMA_VERSION = 1

ChatRole = Literal["system", "user", "assistant"]

# The roles of the built-in agent systems (agents/systems.py takes its roles from here). A trajectory
# of a built-in system with another role is a mistake; a system of your own may have any roles.
BUILTIN_SYSTEM_ROLES: dict[str, tuple[str, ...]] = {
    "single": ("agent",),
    "planner_executor": ("planner", "executor"),
}


class TrajectoryError(ProstError, ValueError):
    """Bad trajectory input; the message says where (file:line, field) and how to fix it."""


class _Strict(BaseModel):
    # strict: "false" or 0 for a bool is a mistake in the file, not a value to coerce
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(_Strict):
    role: ChatRole
    content: str
    subtask: int = Field(0, ge=0, description="sub-task this message belongs to; 0 = context before sub-task 1")
    context_only: bool | None = Field(None, description="true: never trained, context only (e.g. a teacher's "
                                      "deliberate mistake before its repair); None/false: the usual rules")


class Conversation(_Strict):
    """One role's chat. The executor has one per sub-task (``subtask`` set); other roles have one."""

    role: str = Field(min_length=1, description="agent role: agent | planner | executor | ...")
    subtask: int | None = Field(None, ge=1, description="for per-sub-task conversations: the sub-task solved")
    messages: list[Message] = Field(min_length=1)


class SubTask(_Strict):
    index: int = Field(ge=1)
    description: str = Field(min_length=1)
    code: str | None = Field(None, description="ground-truth solution code of this step, when known")


class Outcome(_Strict):
    success: bool
    passes: int = Field(0, ge=0)
    num_tests: int = Field(0, ge=0)
    failure_reason: str | None = Field(None, description="why the episode failed: see agents.FailureReason")
    failed_subtask: int | None = Field(None, ge=1, description="sub-task the episode was in when it failed")


class Usage(_Strict):
    llm_calls: dict[str, int] = Field(default_factory=dict, description="per role")
    prompt_tokens: dict[str, int] = Field(default_factory=dict, description="per role")
    completion_tokens: dict[str, int] = Field(default_factory=dict, description="per role")
    flops: float = Field(0.0, ge=0, description="estimated: 2 * params * tokens processed, summed over roles")
    cost: float = Field(0.0, ge=0, description="from the configured price table")
    env_steps: int = Field(0, ge=0)
    wall_time_s: float = Field(0.0, ge=0)


class Trajectory(_Strict):
    version: Literal[1] = SCHEMA_VERSION
    task_id: str = Field(min_length=1)
    system: str = Field(min_length=1, description="agent system: single | planner_executor | ...")
    instruction: str
    difficulty: int | None = Field(None, ge=1, le=3)
    subtasks: list[SubTask] = Field(description="the plan, sub-tasks 1..K")
    conversations: list[Conversation] = Field(min_length=1)
    outcome: Outcome | None = None
    usage: Usage = Field(default_factory=Usage)
    teacher: str = Field("unknown", description="who produced it: oracle | openai:<model> | rollout:<run> | hand")

    @field_validator("version", mode="before")
    @classmethod
    def _version_not_bool(cls, value):
        # True == 1 in Python, so Literal[1] alone would take `version: true`
        if isinstance(value, bool):
            raise ValueError(f"must be the integer {SCHEMA_VERSION}, not a boolean")
        return value

    @property
    def num_subtasks(self) -> int:
        return len(self.subtasks)

    @property
    def roles(self) -> list[str]:
        return sorted({c.role for c in self.conversations})

    @model_validator(mode="after")
    def _consistent(self) -> Trajectory:
        if self.outcome is not None and self.outcome.passes > self.outcome.num_tests:
            raise ValueError(f"outcome.passes: {self.outcome.passes} > outcome.num_tests {self.outcome.num_tests}")
        if not self.subtasks:
            raise ValueError("subtasks: a trajectory needs at least one sub-task (the plan); add one per step")
        indices = [s.index for s in self.subtasks]
        if indices != list(range(1, len(indices) + 1)):
            raise ValueError(f"subtasks: indices must be 1..K in order, got {indices}")
        k = len(indices)
        if self.outcome is not None and (self.outcome.failed_subtask or 0) > k:
            raise ValueError(f"outcome.failed_subtask: {self.outcome.failed_subtask} > number of sub-tasks {k}")
        for name in ("llm_calls", "prompt_tokens", "completion_tokens"):
            for role, n in getattr(self.usage, name).items():
                if n < 0:
                    raise ValueError(f"usage.{name}.{role}: must be >= 0, got {n}")
        for ci, conv in enumerate(self.conversations):
            if conv.subtask is not None and conv.subtask > k:
                raise ValueError(f"conversations.{ci}.subtask: {conv.subtask} > number of sub-tasks {k}")
            last = 0
            for mi, msg in enumerate(conv.messages):
                where = f"conversations.{ci}.messages.{mi}.subtask"
                if msg.subtask > k:
                    raise ValueError(f"{where}: {msg.subtask} > number of sub-tasks {k}")
                if msg.subtask < last:
                    raise ValueError(f"{where}: sub-task indices must not decrease along a conversation")
                last = msg.subtask
        expected = BUILTIN_SYSTEM_ROLES.get(self.system)
        for ci, conv in enumerate(self.conversations):
            if expected is not None and conv.role not in expected:
                raise ValueError(f"conversations.{ci}.role: '{conv.role}' is not a role of the '{self.system}' system "
                                 f"(its roles: {', '.join(expected)})")
        return self

    def training_problem(self) -> str | None:
        """Why this record must not be trained on, though it is a faithful record; None when it may.

        An evaluated model may well have answered nothing, and ``prost eval`` keeps that turn as it
        happened; training on it would teach the model to say nothing.
        """
        for ci, conv in enumerate(self.conversations):
            for mi, msg in enumerate(conv.messages):
                if msg.role == "assistant" and not msg.content.strip():
                    return (f"field 'conversations.{ci}.messages.{mi}.content': an assistant message is empty; "
                            "training on it would teach the model to say nothing. Remove that trajectory from the "
                            "training file (or drop the empty turn)")
        return None


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<trajectory>"
    return f"field '{field}': {first['msg']}"


_MAX_DEPTH = 64  # real trajectories nest about 6 deep; far deeper is garbage, and recursion would crash


def _depth_ok(data, limit: int = _MAX_DEPTH) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return True


def _has_surrogate(data) -> bool:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def parse_line(line: str, where: str) -> Trajectory:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise TrajectoryError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
    except RecursionError:
        raise TrajectoryError(f"{where}: JSON nested too deep to read; this is not a trajectory, "
                              "regenerate the file with `prost collect`") from None
    except ValueError as e:
        # ValueError here: an integer beyond Python's digit limit
        raise TrajectoryError(f"{where}: not a usable JSON record ({str(e).split(';')[0][:120]}); "
                              "fix that line or regenerate the file with `prost collect`") from None
    if not _depth_ok(data):
        raise TrajectoryError(f"{where}: JSON nested deeper than {_MAX_DEPTH} levels; this is not a trajectory, "
                              "regenerate the file with `prost collect`")
    if _has_surrogate(data):
        raise TrajectoryError(f"{where}: a string holds a lone UTF-16 surrogate (like \\ud800), which no tokenizer "
                              "can encode; fix the escape in that line")
    try:
        return Trajectory.model_validate(data)
    except ValidationError as e:
        raise TrajectoryError(f"{where}: {_describe(e)}; fix that line or regenerate the file with `prost collect`") from None


def _check_regular_file(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        raise TrajectoryError(f"{path}: trajectory file not found; collect one with `prost collect ... --out {path}`")
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise TrajectoryError(f"{path}: cannot be read ({e.strerror}); point to a trajectory file") from None
    if not stat.S_ISREG(mode):
        # a FIFO would block forever and a device streams without end; only files are trajectories
        raise TrajectoryError(f"{path}: is not a regular file; point to a JSONL trajectory file")


def iter_trajectories(path: str | os.PathLike) -> Iterator[Trajectory]:
    path = Path(path)
    _check_regular_file(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TrajectoryError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                      "re-save the file as UTF-8 without a byte-order mark") from None
            if lineno == 1 and line.startswith("\ufeff"):
                raise TrajectoryError(f"{where}: starts with a byte-order mark; re-save the file as UTF-8 without one")
            if line.strip():
                yield parse_line(line, where)


def read_trajectories(path: str | os.PathLike, training: bool = False,
                      repeated_tasks: bool = False) -> list[Trajectory]:
    """Every trajectory of the file.

    ``training`` also refuses what a faithful record may hold but training must not take: an empty
    file, empty assistant turns and, unless ``repeated_tasks``, a repeated task id (by mistake it
    would silently double that task's weight; ``prost improve`` means it: several verified episodes
    of one task).
    """
    trajectories = list(iter_trajectories(path))
    if not training:
        return trajectories
    if not trajectories:
        raise TrajectoryError(f"{path}: holds no trajectory (empty or only blank lines); "
                              f"collect some with `prost collect ... --out {path}`")
    seen: dict[str, int] = {}
    with Path(path).open("rb") as f:
        lines = [n for n, raw in enumerate(f, 1) if raw.strip()]
    for lineno, t in zip(lines, trajectories, strict=True):
        problem = t.training_problem()
        if problem:
            raise TrajectoryError(f"{path}:{lineno}: {problem}")
        if t.task_id in seen and not repeated_tasks:
            # a repeat would silently double that task's weight in training
            raise TrajectoryError(f"{path}:{lineno}: field 'task_id': '{t.task_id}' already on line {seen[t.task_id]}; "
                                  "remove one of the two lines (or set data.repeated_tasks: true if both are meant)")
        seen[t.task_id] = lineno
    return trajectories


def write_trajectories(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> None:
    write_atomic(path, (t.model_dump_json(exclude_none=True) + "\n" for t in trajectories))


def append_trajectory(path: str | os.PathLike, trajectory: Trajectory) -> None:
    """Append one line, flushed and fsynced, for resumable collection (a torn last line is dropped on resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(trajectory.model_dump_json(exclude_none=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
