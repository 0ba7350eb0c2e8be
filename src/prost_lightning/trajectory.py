"""The trajectory schema: the one record that collection writes, rollouts produce and training reads.

A trajectory is one agent system solving one task. Every message carries the index of the sub-task
it belongs to (0 = context before sub-task 1), which is what the ProST curriculum slices on.
Files are JSON Lines, one trajectory per line; errors name ``file:line`` and the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prost_lightning.errors import ProstError

SCHEMA_VERSION = 1

ChatRole = Literal["system", "user", "assistant"]


class TrajectoryError(ProstError, ValueError):
    """Bad trajectory input; the message says where (file:line, field) and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    @property
    def num_subtasks(self) -> int:
        return len(self.subtasks)

    @property
    def roles(self) -> list[str]:
        return sorted({c.role for c in self.conversations})

    @model_validator(mode="after")
    def _consistent(self) -> Trajectory:
        if not self.subtasks:
            raise ValueError("subtasks: a trajectory needs at least one sub-task (the plan); add one per step")
        indices = [s.index for s in self.subtasks]
        if indices != list(range(1, len(indices) + 1)):
            raise ValueError(f"subtasks: indices must be 1..K in order, got {indices}")
        k = len(indices)
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
        return self


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<trajectory>"
    return f"field '{field}': {first['msg']}"


def parse_line(line: str, where: str) -> Trajectory:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise TrajectoryError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
    try:
        return Trajectory.model_validate(data)
    except ValidationError as e:
        raise TrajectoryError(f"{where}: {_describe(e)}; fix that line or regenerate the file with `prost collect`") from None


def iter_trajectories(path: str | os.PathLike) -> Iterator[Trajectory]:
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"{path}: trajectory file not found; collect one with `prost collect ... --out {path}`")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_line(line, f"{path}:{lineno}")


def read_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    return list(iter_trajectories(path))


def write_trajectories(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for t in trajectories:
                f.write(t.model_dump_json(exclude_none=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_trajectory(path: str | os.PathLike, trajectory: Trajectory) -> None:
    """Append one line, flushed and fsynced, for resumable collection (a torn last line is dropped on resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(trajectory.model_dump_json(exclude_none=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
