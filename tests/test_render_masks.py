"""Loss masks on the fixture: exactly the role's own active assistant turns (+ <|im_end|>) are trained."""

import copy
from pathlib import Path

import pytest

from prost_lightning.backbone import ModelNotFoundError, load_tokenizer
from prost_lightning.data.inspect import inspect_sample, mark_trained
from prost_lightning.data.render import (
    IGNORE_INDEX,
    TemplateError,
    build_sample,
    is_active,
    render_conversation,
    render_trajectory,
)
from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import Trajectory, read_trajectories

FIXTURE = Path(__file__).parent / "fixtures" / "trajectories.jsonl"
END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def trajectories():
    return read_trajectories(FIXTURE)


def trained_runs(tok, sample):
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the input ids themselves (the model shifts)
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def chat(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


def cases(trajectories):
    for t in trajectories:
        for conv in t.conversations:
            for h in range(1, 5):
                yield t, conv, frozenset(range(1, min(h, t.num_subtasks) + 1))


def test_fixture_covers_both_systems_and_1_to_4_subtasks(trajectories):
    assert len(trajectories) >= 6
    assert {t.system for t in trajectories} == {"single", "planner_executor"}
    for system in ("single", "planner_executor"):
        assert {t.num_subtasks for t in trajectories if t.system == system} == {1, 2, 3, 4}


@pytest.mark.parametrize("mode", ["slice", "mask"])
def test_exact_masks_on_every_fixture_conversation(tok, trajectories, mode):
    checked = 0
    for t, conv, active in cases(trajectories):
        rc = render_conversation(tok, conv, t.task_id, t.num_subtasks)
        if not is_active(rc, active):
            assert conv.subtask not in active
            continue
        sample = build_sample(rc, active, mode)
        expected = [m.content + END for m in conv.messages if m.role == "assistant" and m.subtask in active]
        assert trained_runs(tok, sample) == expected, (t.task_id, conv.role, sorted(active))
        last = max(i for i, m in enumerate(conv.messages) if m.role == "assistant" and m.subtask in active)
        context = conv.messages[: last + 1] if mode == "slice" else conv.messages
        assert tok.decode(sample.input_ids) == tok.apply_chat_template(chat(context), tokenize=False)
        checked += 1
    assert checked > 40


def test_planner_sample_marked_exactly(tok):
    text = inspect_sample(str(FIXTURE), tok, role="planner", index=2, horizon=2)
    assert text.splitlines()[0] == (
        "task 9c04be2_1 | role planner | active sub-tasks [1, 2] of 3 | mode slice | 410 tokens, 84 trained")
    body = text.split("\n", 1)[1]
    assert body.endswith(
        "<|im_start|>assistant\n[[Log in to Venmo and keep the access token.<|im_end|>]]\n"
        "<|im_start|>user\nReport: Logged in to Venmo.<|im_end|>\n"
        "<|im_start|>assistant\n[[Find Carl's email in the phone contacts.<|im_end|>]]\n"
    )
    assert body.count("[[") == 2  # system, task, report: never trained


def test_newline_after_end_of_turn_is_context(tok, trajectories):
    rc = render_trajectory(tok, trajectories[2])[0]  # planner, K = 3
    sample = build_sample(rc, {1, 2, 3}, "mask")
    end_id = tok.convert_tokens_to_ids(END)
    ends = [i for i, x in enumerate(sample.input_ids) if x == end_id and sample.labels[i] != IGNORE_INDEX]
    assert len(ends) == 4  # three sub-task turns + the final "finished" turn (tagged K)
    for i in ends[:-1]:
        assert tok.decode([sample.input_ids[i + 1]]) == "\n" and sample.labels[i + 1] == IGNORE_INDEX


def test_reverse_active_set_keeps_earlier_subtasks_as_context(tok, trajectories):
    agent = next(t for t in trajectories if t.system == "single" and t.num_subtasks == 4)
    conv = agent.conversations[0]
    rc = render_trajectory(tok, agent)[0]
    sample = build_sample(rc, {3, 4}, "slice")
    assert trained_runs(tok, sample) == [m.content + END for m in conv.messages if m.role == "assistant" and m.subtask >= 3]
    assert conv.messages[2].content in tok.decode(sample.input_ids)  # sub-task 1's code is context


def test_inactive_executor_conversation_is_not_a_sample(tok, trajectories):
    pe = next(t for t in trajectories if t.system == "planner_executor" and t.num_subtasks == 4)
    executors = [rc for rc in render_trajectory(tok, pe, {"executor"})]
    assert [is_active(rc, {1, 2}) for rc in executors] == [True, True, False, False]


def test_over_length_drops_oldest_untrained_turns(tok, trajectories):
    agent = next(t for t in trajectories if t.system == "single" and t.num_subtasks == 4)
    conv = agent.conversations[0]
    rc = render_trajectory(tok, agent)[0]
    whole = build_sample(rc, {4}, "slice")  # last sub-task only: sub-tasks 1-3 are context
    assert not whole.truncated
    cut = build_sample(rc, {4}, "slice", max_length=len(whole.input_ids) - 1)
    assert cut.truncated and len(cut.input_ids) <= len(whole.input_ids) - 1
    assert trained_runs(tok, cut) == trained_runs(tok, whole)
    # exactly the oldest turn (sub-task 1's code + its output) went; system + task stay
    kept = [conv.messages[i] for i in (0, 1, 4, 5, 6, 7, 8, 9, 10)]
    assert tok.decode(cut.input_ids) == tok.apply_chat_template(chat(kept), tokenize=False)


def test_over_length_skips_when_trained_tokens_cannot_fit(tok, trajectories):
    rc = render_trajectory(tok, trajectories[7])[0]
    assert build_sample(rc, {1, 2, 3, 4}, "slice", max_length=rc.prompt_len + 5) == "too_long"


def test_max_length_shorter_than_prompt_names_task_role_and_lengths(tok, trajectories):
    rc = render_trajectory(tok, trajectories[1])[0]
    with pytest.raises(ConfigError) as err:
        render_trajectory(tok, trajectories[1], max_length=rc.prompt_len)
    msg = str(err.value)
    assert "task 5e1f7aa_2" in msg and "role planner" in msg
    assert f"max_length {rc.prompt_len}" in msg and f"{rc.prompt_len} tokens" in msg


def test_sample_without_trainable_tokens_is_empty(tok):
    traj = Trajectory.model_validate({
        "task_id": "x_1", "system": "single", "instruction": "do it",
        "subtasks": [{"index": 1, "description": "a"}, {"index": 2, "description": "b"}],
        "conversations": [{"role": "agent", "messages": [
            {"role": "system", "content": "sys"}, {"role": "user", "content": "task"},
            {"role": "assistant", "content": "step one", "subtask": 1},
            {"role": "user", "content": "Output:\nnull", "subtask": 2},
        ]}],
    })
    rc = render_trajectory(tok, traj)[0]
    assert build_sample(rc, {2}, "slice") == "empty"
    assert trained_runs(tok, build_sample(rc, {1, 2}, "slice")) == ["step one" + END]


def test_template_that_rewrites_earlier_turns_is_refused(tok, trajectories):
    odd = copy.deepcopy(tok)
    odd.chat_template = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TemplateError, match="prefix by prefix"):
        render_trajectory(odd, trajectories[0])


def test_unknown_mode_is_refused(tok, trajectories):
    rc = render_trajectory(tok, trajectories[0])[0]
    with pytest.raises(ConfigError, match="mode"):
        build_sample(rc, {1}, "window")


def test_real_chat_template_smollm2(trajectories):
    try:
        real = load_tokenizer("smollm2")
    except ModelNotFoundError:
        pytest.skip("SmolLM2 folder not prepared (make model)")
    for t, conv, active in cases(trajectories):
        rc = render_conversation(real, conv, t.task_id, t.num_subtasks)
        full_text = real.apply_chat_template(chat(conv.messages), tokenize=False)
        # segment-wise tokenization equals tokenizing the whole text on this template
        assert list(rc.token_ids) == real(full_text, add_special_tokens=False)["input_ids"]
        if is_active(rc, active):
            sample = build_sample(rc, active, "slice")
            expected = [m.content + END for m in conv.messages if m.role == "assistant" and m.subtask in active]
            assert trained_runs(real, sample) == expected
    assert "[[" in mark_trained(real, build_sample(render_trajectory(real, trajectories[0])[0], {1}))


def test_mask_mode_over_length_first_drops_the_untrained_tail(tok, trajectories):
    rc = render_trajectory(tok, trajectories[3])[0]  # planner, K = 4
    sliced, masked = build_sample(rc, {1, 2}, "slice"), build_sample(rc, {1, 2}, "mask")
    assert len(masked.input_ids) > len(sliced.input_ids)
    assert masked.labels[: len(sliced.labels)] == sliced.labels  # same trained tokens, same positions
    fitted = build_sample(rc, {1, 2}, "mask", max_length=len(sliced.input_ids))
    assert fitted == sliced  # nothing of the context before the trained tokens was lost


def _recovery_trajectory() -> Trajectory:
    """An executor sub-task that starts with a teacher's mistake (context only), then the repair and the report."""
    mistake = "Collect the alarms.\n```python\nalarms = collect(apis.phone.search_alarms, access_token=phone_token)\n```"
    repair = "Collect the alarms.\n```python\nalarms = collect(apis.phone.show_alarms, access_token=phone_token)\n```"
    return Trajectory.model_validate({
        "task_id": "ckwalarms_1", "system": "planner_executor", "instruction": "count alarms",
        "subtasks": [{"index": 1, "description": "Log in."}, {"index": 2, "description": "Collect the alarms."}],
        "conversations": [{"role": "executor", "subtask": 2, "messages": [
            {"role": "system", "content": "sys"}, {"role": "user", "content": "Sub-task 2: Collect the alarms.", "subtask": 2},
            {"role": "assistant", "content": mistake, "subtask": 2, "context_only": True},
            {"role": "user", "content": "Output:\nException: No API named 'search_alarms' found in the phone app.",
             "subtask": 2},
            {"role": "assistant", "content": repair, "subtask": 2},
            {"role": "user", "content": "Output:\nExecution successful.", "subtask": 2},
            {"role": "assistant", "content": "Done: collected the alarms.", "subtask": 2},
        ]}],
    })


@pytest.mark.parametrize("mode", ["slice", "mask"])
def test_a_teachers_mistake_is_context_only_its_error_is_context_and_the_repair_is_trained(tok, mode):
    traj = _recovery_trajectory()
    conv = traj.conversations[0]
    rc = render_trajectory(tok, traj)[0]
    sample = build_sample(rc, {1, 2}, mode)
    assert trained_runs(tok, sample) == [conv.messages[4].content + END, conv.messages[6].content + END]
    text = tok.decode(sample.input_ids)
    assert conv.messages[2].content in text and "No API named 'search_alarms'" in text  # both seen as context
    assert tok.decode(sample.input_ids) == tok.apply_chat_template(chat(conv.messages), tokenize=False)
    # the same conversation without the marker trains the mistake too: the marker is what keeps it out
    unmarked = traj.model_copy(deep=True)
    unmarked.conversations[0].messages[2].context_only = None
    plain = build_sample(render_trajectory(tok, unmarked)[0], {1, 2}, mode)
    assert trained_runs(tok, plain)[0] == conv.messages[2].content + END
    assert plain.num_trained > sample.num_trained


def test_over_length_never_keeps_a_repair_without_its_mistake(tok):
    traj = _recovery_trajectory()
    rc = render_trajectory(tok, traj)[0]
    whole = build_sample(rc, {2}, "slice")
    # too short for the whole sample: the mistake and its error are the repair's context, never dropped alone
    assert build_sample(rc, {2}, "slice", max_length=len(whole.input_ids) - 1) == "too_long"
    assert rc.prompt_len == rc.spans[2].start  # the prompt ends where the mistake starts


def test_context_only_round_trips_and_old_files_read_unchanged(tmp_path):
    from prost_lightning.trajectory import write_trajectories

    path = tmp_path / "t.jsonl"
    write_trajectories(path, [_recovery_trajectory()])
    assert [m.context_only for m in read_trajectories(path)[0].conversations[0].messages][2:5] == [True, None, None]
    assert path.read_text().count("context_only") == 1  # unmarked messages are written as before
    fixture_lines = FIXTURE.read_text().splitlines()
    rewritten = tmp_path / "f.jsonl"
    write_trajectories(rewritten, read_trajectories(FIXTURE))
    assert rewritten.read_text().splitlines() == [
        Trajectory.model_validate_json(line).model_dump_json(exclude_none=True) for line in fixture_lines]
    assert "context_only" not in rewritten.read_text()
