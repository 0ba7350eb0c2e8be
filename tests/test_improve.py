"""`prost improve`: keep / deduplicate / merge on real trajectories, and one whole round on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prost_lightning.errors import ConfigError
from prost_lightning.improve import improve, keep_verified, mark_repaired_errors, merge, refuse_held_out
from prost_lightning.trajectory import Message, read_trajectories

REPO = Path(__file__).resolve().parents[1]
FAILED = "Output:\nExecution failed. Traceback:\n  File \"<python-input>\", line 1\nNameError: name 'note' is not defined"


@pytest.mark.parametrize("split", ["dev", "test_normal", "test_challenge", "test_custom"])
def test_held_out_splits_are_refused(split):
    with pytest.raises(ConfigError, match="held out"):
        refuse_held_out(split)
    with pytest.raises(ConfigError, match="held out"):
        improve(run="nowhere", teacher_file="nothing.jsonl", split=split)


@pytest.fixture(scope="module")
def oracle_and_failed(mini_world_root, tmp_path_factory):
    """Real episodes: the oracle's (pass) and always_wrong's (fail) on three train tasks."""
    from prost_lightning.agents import load_tasks, make_policies, run_episodes, system_roles
    from prost_lightning.env.pool import ServerPool

    tasks = load_tasks(mini_world_root, "train")[:3]
    roles = system_roles("planner_executor")
    with ServerPool(mini_world_root, size=2) as pool:
        oracle = run_episodes("planner_executor", tasks, pool, make_policies("oracle", roles), teacher="oracle")
        wrong = run_episodes("planner_executor", tasks, pool, make_policies("always_wrong", roles), teacher="wrong")
    assert all(t.outcome.success for t in oracle) and not any(t.outcome.success for t in wrong)
    return oracle, wrong


@pytest.mark.appworld
def test_keep_drops_failures_and_duplicates_and_marks_repaired_errors(oracle_and_failed, tmp_path):
    oracle, wrong = oracle_and_failed
    # a passing episode that took a detour: an error, then the repair, in the first executor conversation
    detour = oracle[0].model_copy(deep=True)
    executor = next(c for c in detour.conversations if c.role == "executor")
    first_code = next(i for i, m in enumerate(executor.messages) if m.role == "assistant")
    bad = Message(role="assistant", content="```python\nx = note\n```", subtask=executor.subtask)
    executor.messages[first_code:first_code] = [bad, Message(role="user", content=FAILED, subtask=executor.subtask)]

    kept, duplicates = keep_verified([*wrong, oracle[0], detour, detour, oracle[1]], existing=[oracle[1]])
    assert [t.task_id for t in kept] == [oracle[0].task_id, detour.task_id]
    assert duplicates == 2  # the second detour, and oracle[1] already in the teacher data
    marked = next(c for c in kept[1].conversations if c.role == "executor").messages
    assert marked[first_code].context_only and not any(m.context_only for m in marked[first_code + 1:])
    assert not any(m.context_only for t in (kept[0],) for c in t.conversations for m in c.messages)
    # reply text differing only in whitespace is the same episode
    spaced = oracle[2].model_copy(deep=True)
    spaced.conversations[0].messages[-1].content += "  "
    assert keep_verified([spaced], existing=[oracle[2]]) == ([], 1)

    out = tmp_path / "merged.jsonl"
    assert merge(oracle, kept, out) == 5
    merged = read_trajectories(out)
    assert [t.task_id for t in merged] == [t.task_id for t in oracle] + [t.task_id for t in kept]
    assert mark_repaired_errors(oracle[0]) == oracle[0]  # nothing failed: nothing marked


@pytest.mark.appworld
def test_one_round_on_the_tiny_model_keeps_its_books(mini_world_root, tmp_path):
    from prost_lightning.cli import lightning_main
    from prost_lightning.collect import collect
    from prost_lightning.demo import _latest_version
    from prost_lightning.env.tasks import load_task_ids

    teacher_file = tmp_path / "teacher.jsonl"
    collect("oracle", "planner_executor", root=str(mini_world_root), out=str(teacher_file), max_tasks=3,
            progress=False, verbose=False)
    small = ["--trainer.max_epochs", "1", "--data.batch_size", "8", "--data.max_length", "4096",
             "--trainer.enable_progress_bar", "false"]
    config = str(REPO / "experiments" / "demo.yaml")
    lightning_main(["fit", "--config", config, "--trainer.default_root_dir", str(tmp_path / "train"),
                    "--data.train_file", str(teacher_file), "--model.base_model", "tiny", *small])
    first = _latest_version(tmp_path / "train")

    report = improve(run=str(first), teacher_file=str(teacher_file), config=config, root=str(mini_world_root),
                     out=str(tmp_path / "improve"), rounds=1, samples=2, temperature=1.0, max_tasks=2,
                     eval_max_tasks=2, base_model="tiny", fit_args=small[2:], pool_size=2, max_new_tokens=24,
                     planner_max_new_tokens=16, prompt_dir=None)
    assert report == json.loads((tmp_path / "improve" / "report.json").read_text())
    (entry,) = report["rounds"]
    train_ids = load_task_ids(mini_world_root, "train")[:2]
    samples = read_trajectories(tmp_path / "improve" / "round_1" / "samples.jsonl")
    assert sorted(t.task_id for t in samples) == sorted(train_ids * 2) and entry["episodes"] == 4
    assert entry["passed"] == sum(t.outcome.success for t in samples)
    assert entry["kept"] + entry["duplicates"] <= entry["passed"]  # a random tiny model usually keeps 0
    merged = read_trajectories(tmp_path / "improve" / "round_1" / "train.jsonl")
    assert len(merged) == entry["train_trajectories"] == 3 + entry["kept_total"]
    assert entry["held_out"]["num_tasks"] == 2
    assert not set(t.task_id for t in samples) & set(load_task_ids(mini_world_root, "test_normal"))
    # resumed: the new run continued the first one for one more epoch, with adapters exported
    run = Path(entry["run_dir"])
    assert run != first and (run / "adapters" / "executor" / "adapter_config.json").is_file()
    import torch

    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] == 1
