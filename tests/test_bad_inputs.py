"""The bad-input corpus: each case is the bytes of a trajectory file, accept or reject, and the words
a rejection must name. Each runs through the loading path of `prost inspect` and `prost fit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prost_lightning.errors import ProstError
from prost_lightning.trajectory import read_trajectories

GOOD = (Path(__file__).parent / "fixtures" / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()[0]


def _edit(change) -> bytes:
    record = json.loads(GOOD)
    change(record)
    return json.dumps(record).encode()


def _set(path: str, value):
    def change(record):
        *head, last = path.split(".")
        node = record
        for key in head:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return _edit(change)


def _assistant_content(record, text):
    for conv in record["conversations"]:
        for msg in conv["messages"]:
            if msg["role"] == "assistant":
                msg["content"] = text
                return


g = GOOD.encode()
CORPUS = [
    # (name, bytes, accepted, words the message must contain)
    ("crlf", g + b"\r\n", True, []),
    ("no final newline", g, True, []),
    ("blank lines between", b"\n" + g + b"\n\n   \n", True, []),
    ("chat markup in content", _edit(lambda r: _assistant_content(r, "<|im_start|>user ü 漢字 <|im_end|>")), True, []),
    ("5 MB message", _edit(lambda r: _assistant_content(r, "x" * 5_000_000)), True, []),
    ("latin-1", g.replace(b"}", b', "x": "\xe9"}', 1), False, [":1:", "UTF-8"]),
    ("utf-16 bom", GOOD.encode("utf-16"), False, [":1:", "UTF-8"]),
    ("deep json", b"[" * 5000 + b"]" * 5000, False, [":1:", "nested"]),
    ("huge int", b'{"version": ' + b"9" * 5000 + b"}", False, [":1:", "regenerate"]),
    ("lone surrogate", _edit(lambda r: _assistant_content(r, "a")).replace(b'"a"', b'"\\ud800"'), False, [":1:", "surrogate"]),
    ("empty file", b"", False, ["no trajectory"]),
    ("blank lines only", b"\n  \n\r\n", False, ["no trajectory"]),
    ("duplicate task id", g + b"\n" + g + b"\n", False, [":2:", "task_id", "line 1"]),
    ("success as string", _set("outcome.success", "false") if "outcome" in json.loads(GOOD) else _edit(
        lambda r: r.__setitem__("outcome", {"success": "false"})), False, [":1:", "success"]),
    ("success as number", _edit(lambda r: r.__setitem__("outcome", {"success": 0})), False, [":1:", "success"]),
    ("version true", _set("version", True), False, [":1:", "version"]),
    ("negative tokens", _edit(lambda r: r.__setitem__("usage", {"prompt_tokens": {"planner": -3}})), False,
     [":1:", "prompt_tokens"]),
    ("passes > num_tests", _edit(lambda r: r.__setitem__("outcome", {"success": True, "passes": 3, "num_tests": 2})),
     False, [":1:", "passes"]),
    ("failed_subtask beyond plan", _edit(lambda r: r.__setitem__("outcome", {"success": False, "failed_subtask": 99})),
     False, [":1:", "failed_subtask"]),
    ("empty assistant message", _edit(lambda r: _assistant_content(r, "  ")), False, [":1:", "content", "empty"]),
]


@pytest.mark.parametrize("name,data,accepted,words", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(tmp_path, name, data, accepted, words):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    if accepted:
        assert read_trajectories(path, training=True)
    else:
        with pytest.raises(ProstError) as e:
            read_trajectories(path, training=True)
        message = str(e.value)
        assert str(path) in message and "Traceback" not in message
        for word in words:
            assert word in message, (word, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_not_a_regular_file(tmp_path):
    with pytest.raises(ProstError, match="is not a regular file"):
        read_trajectories(tmp_path, training=True)
    link = tmp_path / "dev.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(ProstError, match="is not a regular file"):
        read_trajectories(link, training=True)
