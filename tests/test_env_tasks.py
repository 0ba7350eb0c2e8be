"""Reading a data root without appworld, and the plan-derivation rule for real AppWorld tasks."""

import os
from pathlib import Path

import pytest

from prost_lightning.env.tasks import TaskDataError, derive_plan, load_splits, load_task, load_task_ids

SOLUTION = '''
from itertools import count


def helper(items):
    return len(items)


def solution(apis, requester):
    """Count songs."""
    # get the supervisor's spotify password
    passwords = apis.supervisor.show_account_passwords()
    password = [p for p in passwords if p["account_name"] == "spotify"][0]["password"]
    # log in to spotify
    token = apis.spotify.login(username="a@b.c", password=password)["access_token"]

    songs = []
    for page_index in count():
        page = apis.spotify.show_song_library(access_token=token, page_index=page_index)
        if not page:
            break
        songs += page
    total = helper(songs)

    answer = total * 1
    # finish
    apis.supervisor.complete_task(answer=answer)
    return
'''


def test_derive_plan_splits_at_blank_and_comment_lines():
    plan = derive_plan(SOLUTION)
    assert [s.description for s in plan] == [
        "Get the supervisor's spotify password.",  # leading comment
        "Log in to spotify.",
        "Call spotify.show_song_library.",  # no comment: generated from the API calls
        "Compute answer.",  # no comment, no API: from the assigned names
        "Finish.",
    ]
    # module-level helpers travel with step 1; the trailing bare return is dropped
    assert plan[0].code.startswith("from itertools import count\n\ndef helper(items):")
    assert plan[0].code.endswith('[0]["password"]')
    assert plan[2].code.splitlines()[0] == "songs = []" and plan[2].code.endswith("total = helper(songs)")
    assert plan[4].code == "apis.supervisor.complete_task(answer=answer)"
    for step in plan:
        compile(step.code, "<step>", "exec")  # every step runs at the shell's top level


def test_derive_plan_falls_back_to_one_step_on_inner_return():
    source = "def solution(apis, requester):\n    if apis:\n        return 1\n    x = 2\n"
    (only,) = derive_plan(source)
    assert only.description == "Solve the task."
    assert only.code.endswith("solution(apis, requester)") and "return 1" in only.code


def test_derive_plan_needs_a_solution_function():
    with pytest.raises(TaskDataError, match="no `def solution"):
        derive_plan("x = 1\n")


def test_load_task_reads_the_mini_world_plan(mini_world_root):
    splits = load_splits(mini_world_root)
    assert list(splits)[:4] == ["train", "dev", "test_normal", "test_challenge"]
    task = load_task(mini_world_root, splits["train"][0])
    assert task.scenario_id == task.task_id.split("_")[0]
    assert task.plan_source == "plan.json" and task.plan and all(s.code for s in task.plan)
    assert task.difficulty in (1, 2, 3) and task.apps and task.instruction
    assert set(task.supervisor) >= {"first_name", "last_name", "email", "phone_number"}


def test_bad_split_and_task_name_the_file(tmp_path):
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "train.txt").write_text("abc_1\nabc_2:tag\n\n")
    assert load_task_ids(tmp_path, "train") == ["abc_1", "abc_2"]
    with pytest.raises(TaskDataError, match=r"dev\.txt: no such split file \(splits here: \['train'\]\)"):
        load_task_ids(tmp_path, "dev")
    with pytest.raises(TaskDataError, match="no such task folder"):
        load_task(tmp_path, "abc_1")


REAL_ROOT = Path(os.environ.get("APPWORLD_ROOT", "/nonexistent"))


@pytest.mark.skipif(not (REAL_ROOT / "data" / "tasks").is_dir(), reason="needs the real AppWorld data in $APPWORLD_ROOT")
def test_real_train_tasks_get_a_derived_plan():
    ids = load_task_ids(REAL_ROOT, "train")
    assert len(ids) == 90
    for task_id in ids[:10]:
        task = load_task(REAL_ROOT, task_id)
        assert task.plan_source in ("compiled_solution.py", "solution.py") and task.plan
        for step in task.plan:
            compile(step.code, task_id, "exec")


def test_a_world_root_is_a_folder_with_task_data(tmp_path):
    from prost_lightning.env.tasks import NoWorldData, is_world_root, require_world_root
    from prost_lightning.errors import ConfigError

    assert not is_world_root(tmp_path)
    with pytest.raises(NoWorldData) as caught:
        require_world_root(tmp_path)
    # one message, wherever the check runs (collect, eval, rollouts, verify): what is missing and both fixes
    message = str(caught.value)
    assert f"no AppWorld data under {tmp_path}" in message
    assert f"prost world build --root {tmp_path}" in message and "prost world download" in message
    assert isinstance(caught.value, ConfigError)  # the CLI prints it as a usage error, no traceback
    (tmp_path / "data" / "tasks").mkdir(parents=True)
    assert is_world_root(str(tmp_path)) and require_world_root(str(tmp_path)) == tmp_path


def test_the_preamble_has_one_path():
    from prost_lightning.agents import load_preamble as agents_preamble
    from prost_lightning.env.runtime import PREAMBLE_PATH, load_preamble
    from prost_lightning.env.world import PREAMBLE_PATH as world_preamble_path

    assert PREAMBLE_PATH == world_preamble_path and PREAMBLE_PATH.name == "preamble.py"
    assert agents_preamble is load_preamble
    assert "def login(app)" in load_preamble() and "def collect(api_fn" in load_preamble()
    assert load_preamble(PREAMBLE_PATH.with_name("no_such_preamble.py")) is None
