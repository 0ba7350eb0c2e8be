"""The bad-input corpus: each case is the bytes of a trajectory file, accept or reject, and the words
a rejection must name. Each runs through `prost inspect` and the loading path of `prost fit`
(`main()` in-process): a rejection is exit 2 and one `prost: error:` line, no traceback, nothing
written. Then configuration mistakes of `prost fit` and output paths of the other verbs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch  # noqa: F401  (now: its log handlers then write to the session's stderr, not a closed capsys)
import pytest

from prost_lightning.cli import lightning_main, main
from prost_lightning.errors import ProstError
from prost_lightning.trajectory import read_trajectories

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "experiments" / "debug.yaml")
GOOD = (ROOT / "tests" / "fixtures" / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()[0]


def _edit(change) -> bytes:
    record = json.loads(GOOD)
    change(record)
    return json.dumps(record).encode()


def _set(**fields):
    return _edit(lambda r: r.update(fields))


def _assistant_content(record, text):
    for conv in record["conversations"]:
        for msg in conv["messages"]:
            if msg["role"] == "assistant":
                msg["content"] = text
                return


def _role(record, role):
    record["conversations"][0]["role"] = role


g = GOOD.encode()
assert json.loads(GOOD)["system"] == "planner_executor"
CORPUS = [
    # (name, bytes, accepted, words the message must contain)
    ("crlf", g + b"\r\n", True, []),
    ("no final newline", g, True, []),
    ("blank lines between", b"\n" + g + b"\n\n   \n" + g.replace(b'"task_id": "', b'"task_id": "other') + b"\n",
     True, []),
    ("chat markup in content", _edit(lambda r: _assistant_content(r, "<|im_start|>user ü 漢字 <|im_end|>")), True, []),
    ("5 MB message", _edit(lambda r: _assistant_content(r, "x" * 5_000_000)), True, []),
    ("latin-1", g.replace(b"}", b', "x": "\xe9"}', 1), False, [":1:", "UTF-8"]),
    ("utf-16 bom", GOOD.encode("utf-16"), False, [":1:", "UTF-8"]),
    ("utf-8 bom", b"\xef\xbb\xbf" + g, False, [":1:", "byte-order mark"]),
    ("deep json", b"[" * 5000 + b"]" * 5000, False, [":1:", "nested"]),
    ("huge int", b'{"version": ' + b"9" * 5000 + b"}", False, [":1:", "regenerate"]),
    ("lone surrogate", _edit(lambda r: _assistant_content(r, "a")).replace(b'"a"', b'"\\ud800"'), False,
     [":1:", "surrogate"]),
    ("not json", b"{this is not json}\n", False, [":1:", "not valid JSON"]),
    ("empty file", b"", False, ["no trajectory"]),
    ("blank lines only", b"\n  \n\r\n", False, ["no trajectory"]),
    ("duplicate task id", g + b"\n" + g + b"\n", False, [":2:", "task_id", "line 1"]),
    ("success as string", _set(outcome={"success": "false"}), False, [":1:", "success"]),
    ("success as number", _set(outcome={"success": 0}), False, [":1:", "success"]),
    ("subtask as string", _edit(lambda r: r["conversations"][0]["messages"][0].update(subtask="0")), False,
     [":1:", "subtask"]),
    ("version true", _set(version=True), False, [":1:", "version"]),
    ("version 2", _set(version=2), False, [":1:", "version"]),
    ("unknown field", _set(sucess=True), False, [":1:", "sucess"]),
    ("negative tokens", _set(usage={"prompt_tokens": {"planner": -3}}), False, [":1:", "prompt_tokens"]),
    ("negative env steps", _set(usage={"env_steps": -1}), False, [":1:", "env_steps"]),
    ("passes > num_tests", _set(outcome={"success": True, "passes": 3, "num_tests": 2}), False, [":1:", "passes"]),
    ("failed_subtask beyond plan", _set(outcome={"success": False, "failed_subtask": 99}), False,
     [":1:", "failed_subtask"]),
    ("empty assistant message", _edit(lambda r: _assistant_content(r, "  ")), False, [":1:", "content", "empty"]),
    ("role the system lacks", _edit(lambda r: _role(r, "wizard")), False, [":1:", "wizard", "planner_executor"]),
    ("no conversations", _set(conversations=[]), False, [":1:", "conversations"]),
]
IDS = [c[0] for c in CORPUS]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_message(code: int, out: str, err: str, words: list[str]) -> str:
    errors = [line for line in err.splitlines() if line.startswith("prost: error:")]
    assert code == 2, (code, err[-2000:])
    assert len(errors) == 1 and "Traceback" not in err + out, err[-2000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.mark.parametrize("name,data,accepted,words", CORPUS, ids=IDS)
def test_corpus_through_the_loader(tmp_path, name, data, accepted, words):
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


@pytest.mark.parametrize("name,data,accepted,words", CORPUS, ids=IDS)
def test_corpus_through_prost_inspect(tmp_path, capsys, name, data, accepted, words):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    code, out, err = _run(["inspect", "--train_file", str(path), "--tokenizer", "tiny", "--role", "planner"], capsys)
    if accepted:
        assert code == 0 and "task " in out and "[[" in out, err[-2000:]
    else:
        assert str(path) in _assert_one_message(code, out, err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


@pytest.mark.parametrize("name,data,accepted,words", CORPUS, ids=IDS)
def test_corpus_through_prost_fit_loading(tmp_path, capsys, name, data, accepted, words):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    args = ["--config", DEBUG, "--data.train_file", str(path), "--data.val_file", "null",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    if accepted:  # the same loading path, without the training: build the config, then render the data
        cli = lightning_main(args, run=False)
        cli.datamodule.setup("fit")
        assert set(cli.datamodule.trained_roles) == {"executor", "planner"}
    else:
        code, out, err = _run(["fit", *args], capsys)
        assert str(path) in _assert_one_message(code, out, err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_a_repeated_task_is_trained_only_when_asked(tmp_path, capsys):
    """`prost improve` merges several verified episodes of one task: data.repeated_tasks lets them in."""
    from prost_lightning.data.datamodule import TrajectoryDataModule

    path = tmp_path / "merged.jsonl"
    path.write_bytes(g + b"\n" + g + b"\n")
    with pytest.raises(ProstError, match="data.repeated_tasks"):
        read_trajectories(path, training=True)
    assert len(read_trajectories(path, training=True, repeated_tasks=True)) == 2
    data = TrajectoryDataModule(str(path), repeated_tasks=True)
    data.setup("fit")
    alone = TrajectoryDataModule(str(ROOT / "tests" / "fixtures" / "trajectories.jsonl"))
    alone.setup("fit")
    first_only = [c for c in alone._train if c.task_id == json.loads(GOOD)["task_id"]]
    assert len(data._train) == 2 * len(first_only) > 0  # both copies rendered and trained


def test_eval_records_an_empty_reply_that_training_refuses(tmp_path):
    """What `prost eval` writes (a model may answer nothing) reads back; only training refuses it."""
    path = tmp_path / "episodes.jsonl"
    path.write_bytes(_edit(lambda r: _assistant_content(r, "")) + b"\n")
    (record,) = read_trajectories(path)
    assert record.training_problem() and "empty" in record.training_problem()
    with pytest.raises(ProstError, match=r"episodes.jsonl:1: .*empty"):
        read_trajectories(path, training=True)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device symlink"])
def test_a_path_that_is_not_a_regular_file(tmp_path, capsys, kind):
    path = tmp_path / "t.jsonl"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    code, out, err = _run(["inspect", "--train_file", str(path)], capsys)
    _assert_one_message(code, out, err, [str(path), "is not a regular file"])


# -- configuration mistakes of `prost fit` ------------------------------------------------------
CONFIG_CASES = [
    # (YAML text of an extra --config file or None, command-line arguments, words)
    ("trainer:\n  max_epochs: 1\n  max_epoch: 3\n", [], ["extra.yaml:3:", "trainer.max_epoch", "trainer.max_epochs"]),
    ("model:\n  lora:\n    rr: 3\n", [], ["extra.yaml:", "rr"]),
    ("trainer:\n  max_epochs: 1\n   bad: [1, 2\n", [], ["extra.yaml:3:", "YAML"]),
    (None, ["--trainer.max_epochz", "3"], ["trainer.max_epochz", "trainer.max_epochs"]),
    (None, ["--data.schedule.name", "nonsense"], ["data.schedule.name", "progressive | full"]),
    (None, ["--model.dtype", "float64"], ["model.dtype", "float32"]),
    (None, ["--model.learning_rate", "abc"], ["model.learning_rate", "float"]),
    (None, ["--model.learning_rate", "0"], ["model.learning_rate", "> 0"]),
    (None, ["--model.learning_rate=-1e-3"], ["model.learning_rate", "> 0"]),
    (None, ["--model.learning_rate", "-1e-3"], ["model.learning_rate", "="]),
    (None, ["--ckpt_path", "missing.ckpt"], ["missing.ckpt", "no such file"]),
    (None, ["--ckpt_path", "last"], ["--ckpt_path last", "no checkpoint"]),
    (None, ["--data.roles", "[wizard]"], ["model.roles"]),
    (None, ["--model.roles", "[planner, wizard]"], ["wizard"]),
    (None, ["--checkpoint_every_n_steps", "0"], ["checkpoint_every_n_steps", ">= 1"]),
]


@pytest.mark.parametrize("yaml_text,args,words", CONFIG_CASES, ids=[" ".join(c[1]) or c[0][:20] for c in CONFIG_CASES])
def test_configuration_mistakes_are_one_message_and_write_nothing(tmp_path, capsys, yaml_text, args, words):
    extra = []
    if yaml_text is not None:
        (tmp_path / "extra.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "extra.yaml")]
    run = tmp_path / "run"
    code, out, err = _run(["fit", "--config", DEBUG, *extra, "--trainer.default_root_dir", str(run), *args], capsys)
    _assert_one_message(code, out, err, words)
    assert not run.exists()


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_default_root_dir_that_cannot_be_a_folder(tmp_path, capsys, kind):
    (tmp_path / "a_file").write_text("x")
    root = tmp_path / "a_file" if kind == "file" else tmp_path / "a_file" / "run"
    code, out, err = _run(["fit", "--config", DEBUG, "--trainer.default_root_dir", str(root)], capsys)
    _assert_one_message(code, out, err, ["trainer.default_root_dir", "a_file", "is a file"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# -- outputs are checked before the work --------------------------------------------------------
def _output_cases(tmp: Path) -> list[tuple[list[str], list[str]]]:
    folder, regular = tmp / "a_folder", tmp / "a_file"
    return [
        (["collect", "--out", str(folder)], ["--out", "is a folder"]),
        (["collect", "--out", str(regular / "t.jsonl")], ["--out", "is a file"]),
        (["eval", "--system", "single", "--adapters", str(tmp), "--out", str(folder)], ["--out", "is a folder"]),
        (["report", str(tmp), "--out", str(regular)], ["--out", "is a file, not a folder"]),
        (["sweep", "--out", str(regular)], ["--out", "is a file"]),
        (["world", "build", "--root", str(regular)], ["--root", "is a file, not a folder"]),
    ]


@pytest.mark.parametrize("case", range(6))
def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, case):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    argv, words = _output_cases(tmp_path)[case]
    code, out, err = _run(argv, capsys)
    _assert_one_message(code, out, err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]
    assert not list((tmp_path / "a_folder").iterdir())
