"""Reading model replies: the code block of an action, the planner's finish line."""

from __future__ import annotations

import re

_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_CLOSED = re.compile(r"```(?:python|py)?[ \t]*\n.*?```", re.DOTALL | re.IGNORECASE)
_EXECUTION_FAILED = "Execution failed"


def extract_code(reply: str) -> str | None:
    """The first fenced code block of a reply (```python ... ```), or None when there is none.

    An unclosed block (the generation hit its token limit) still counts: its text up to the end
    is the code, so the execution error, not a missing block, is what the episode records.
    """
    match = _FENCED.search(reply)
    if match is None:
        return None
    code = match.group(1).strip("\n")
    return code if code.strip() else None


def code_block_end(reply: str) -> int | None:
    """Character offset just past the closing fence of the reply's first code block, or None.

    A code turn is read only up to there (``extract_code`` takes the first block), so generation
    can stop at that point without changing what the episode does.
    """
    match = _CLOSED.search(reply)
    return match.end() if match else None


def is_finish(reply: str, finish_line: str) -> bool:
    """True when the planner's reply says the task is finished (case and punctuation relaxed)."""
    def norm(text: str) -> str:
        return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()

    return bool(norm(finish_line)) and norm(finish_line) in norm(reply)


def is_execution_error(observation: str) -> bool:
    """AppWorld prefixes every failed execution (syntax, exception, blocked call, timeout) with this."""
    return observation.lstrip().startswith(_EXECUTION_FAILED)


def is_failed_observation(turn: str) -> bool:
    """True when an observation turn reports a failed execution, with or without its header line ("Output:")."""
    return is_execution_error(turn) or is_execution_error(turn.split("\n", 1)[-1])


def truncate(text: str, max_chars: int) -> str:
    """Keep the head and the tail of a long observation (errors are at the end, data at the start)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}\n...[{len(text) - max_chars} characters cut]...\n{text[-tail:]}"
