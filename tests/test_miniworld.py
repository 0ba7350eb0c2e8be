"""The mini-world: task definitions (pure Python), the built AppWorld data root, and episodes
run through the real AppWorld engine (oracle plans pass, no-op episodes fail)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import pytest

from prost_lightning.env.miniworld import build, families

GROUND_TRUTH_FILES = ("metadata.json", "answer.json", "public_data.json", "private_data.json",
                      "test_data.json", "evaluation.py", "plan.json")


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    return families.all_tasks(seed=0)


def _by_split(tasks, key):
    out = defaultdict(set)
    for t in tasks:
        out[t["split"]].add(key(t))
    return out


# ------------------------------------------------------------------ definitions (no AppWorld)
def test_counts_cover_the_grid(tasks):
    scenarios = {t["scenario"] for t in tasks}
    apps = {app for t in tasks for app in t["apps"]}
    assert len(tasks) >= 90 and len(scenarios) >= 30
    assert len(apps) >= 6, apps
    per_scenario = defaultdict(list)
    for t in tasks:
        per_scenario[t["scenario"]].append(t["variant"])
    assert all(sorted(v) == [1, 2, 3] for v in per_scenario.values())
    assert {t["difficulty"] for t in tasks} == {1, 2, 3}
    assert all(1 <= len(t["subtasks"]) <= 5 for t in tasks)
    assert any(t["question"] for t in tasks) and any(not t["question"] for t in tasks)
    assert any(len(t["apps"]) >= 2 for t in tasks)
    assert all(t["task_id"].count("_") == 1 for t in tasks)


def test_splits_are_by_scenario_and_hold_out_cells(tasks):
    split_of = {}
    for t in tasks:
        assert split_of.setdefault(t["scenario"], t["split"]) == t["split"]
    assert set(split_of.values()) == set(families.SPLITS)
    fams = _by_split(tasks, lambda t: t["family"])
    # test_normal: new scenarios of families seen in training.
    assert fams["test_normal"] <= fams["train"]
    # test_challenge: families absent from training.
    assert fams["test_challenge"] and not fams["test_challenge"] & fams["train"]
    # Every held-out app and sub-task kind is seen in training (a missing cell of a filled grid).
    train_apps = {a for t in tasks if t["split"] == "train" for a in t["apps"]}
    train_kinds = {k for t in tasks if t["split"] == "train"
                   for k in families.FAMILIES[t["family"]].kinds}
    for t in tasks:
        assert set(t["apps"]) <= train_apps, t["task_id"]
        assert set(families.FAMILIES[t["family"]].kinds) <= train_kinds, t["task_id"]


def test_variants_differ_and_build_is_deterministic(tasks):
    assert families.all_tasks(seed=0) == tasks
    assert families.all_tasks(seed=1) != tasks
    for scenario in {t["scenario"] for t in tasks}:
        variants = [t for t in tasks if t["scenario"] == scenario]
        assert len({t["instruction"] for t in variants}) == 3, scenario


def test_plan_code_uses_the_shared_vocabulary(tasks):
    for t in tasks:
        steps = t["subtasks"]
        assert steps[0]["code"].startswith(f'{t["apps"][0]}_token = login("')
        assert steps[-1]["code"].startswith("apis.supervisor.complete_task(")
        assert ("answer=" in steps[-1]["code"]) == t["question"]
        for s in steps:
            assert s["description"].endswith(".") and "\n" not in s["description"]
            assert len(s["code"]) < 240, s["code"]


# ------------------------------------------------------------------ the built data root
@pytest.mark.appworld
def test_built_root_has_appworld_layout(mini_world_root, tasks):
    data = mini_world_root / "data"
    assert len(list((data / "api_docs" / "standard").glob("*.json"))) >= 11
    assert len(list((data / "base_dbs").glob("*.db"))) == 12
    listed = []
    for split in families.SPLITS:
        ids = (data / "datasets" / f"{split}.txt").read_text().split()
        assert ids, split
        listed += ids
    assert sorted(listed) == sorted(t["task_id"] for t in tasks)
    for t in tasks:
        task_dir = data / "tasks" / t["task_id"]
        specs = json.loads((task_dir / "specs.json").read_text())
        assert specs["instruction"] == t["instruction"]
        assert len(list((task_dir / "dbs").glob("*.jsonl"))) == 12
        gt = task_dir / "ground_truth"
        assert all((gt / name).is_file() for name in GROUND_TRUTH_FILES)
        plan = json.loads((gt / "plan.json").read_text())
        assert set(plan) == {"subtasks", "family", "scenario", "apps"}
        assert plan["subtasks"] == t["subtasks"]
        meta = json.loads((gt / "metadata.json").read_text())
        assert meta["difficulty"] == t["difficulty"]
        requirements = [r["requirement"] for r in json.loads((gt / "test_data.json").read_text())]
        evaluation = (gt / "evaluation.py").read_text()
        assert all(json.dumps(r) in evaluation for r in requirements)


@pytest.mark.appworld
def test_build_refuses_to_replace_a_folder_that_is_not_a_mini_world(tmp_path):
    from prost_lightning.env.miniworld import MiniWorldBuildError

    (tmp_path / "data").mkdir()  # e.g. real AppWorld data the user downloaded
    with pytest.raises(MiniWorldBuildError, match="is not a mini-world"):
        build(tmp_path, seed=0)
    assert (tmp_path / "data").is_dir()


def _verify(root: Path, task_ids: list[str] | None) -> dict:
    """Oracle + no-op episodes for `task_ids` (None: all) through the shared server pool."""
    from prost_lightning.env.world import verify_world

    return verify_world(root, size=2, task_ids=task_ids)


def _assert_oracle_passes_noop_fails(report: dict, n_tasks: int) -> None:
    assert report["tasks"] == n_tasks
    assert not report["problems"], json.dumps(report["problems"], indent=1)[:3000]
    assert report["oracle_tgc"] == 100.0 and report["oracle_sgc"] == 100.0
    assert report["noop_tgc"] == 0.0


@pytest.mark.appworld
def test_oracle_passes_and_noop_fails_one_task_per_family(mini_world_root, tasks):
    first = {}
    for t in tasks:
        first.setdefault(t["family"], t["task_id"])
    _assert_oracle_passes_noop_fails(_verify(mini_world_root, sorted(first.values())), len(first))


@pytest.mark.appworld
@pytest.mark.slow
def test_oracle_passes_and_noop_fails_every_task(mini_world_root, tasks):
    report = _verify(mini_world_root, None)
    _assert_oracle_passes_noop_fails(report, len(tasks))
    assert report["apps"] >= 6 and set(report["splits"]) == set(families.SPLITS)


def _task_file_hashes(root: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted((root / "data" / "tasks").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:  # evaluation leaves .pyc files
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.mark.appworld
@pytest.mark.slow
def test_same_seed_builds_identical_task_files(mini_world_root, tmp_path):
    summary = build(tmp_path / "again", seed=0)
    assert summary["tasks"] >= 90
    assert _task_file_hashes(tmp_path / "again") == _task_file_hashes(mini_world_root)


def _episode(pool, task_id: str, codes: list[str]) -> dict:
    from prost_lightning.env.world import PREAMBLE_PATH

    with pool.lease() as env:
        env.initialize(task_id)
        for code in [PREAMBLE_PATH.read_text(), *codes]:
            assert not env.execute(code).startswith("Execution failed"), code
        result = env.evaluate()
        env.close()
    return result


@pytest.mark.appworld
def test_wrong_answer_and_collateral_damage_fail(mini_world_root, tasks):
    """The evaluation rejects a wrong answer, an over-broad delete and an extra side effect."""
    from prost_lightning.env.pool import ServerPool

    by_id = {t["task_id"]: t for t in tasks}
    count, delete, send = by_id["ckwnotes_1"], by_id["dkwnotes_1"], by_id["dsdtext_1"]
    plan = lambda t: [s["code"] for s in t["subtasks"]]  # noqa: E731
    with ServerPool(mini_world_root, size=1, experiment_name="miniworld-neg") as pool:
        wrong = _episode(pool, count["task_id"], plan(count)[:-1] + [
            "apis.supervisor.complete_task(answer=len(matches) + 1)"])
        assert not wrong["success"]
        # Deleting every note instead of the matching ones: the change is made, but more too.
        too_broad = _episode(pool, delete["task_id"], plan(delete)[:2] + [
            "matches = notes", plan(delete)[3], plan(delete)[4]])
        assert not too_broad["success"]
        failed = {f["requirement"] for f in too_broad["failures"]}
        assert failed == {"assert nothing else was changed."}
        # Doing the task twice adds a second message: collateral damage.
        twice = _episode(pool, send["task_id"], plan(send)[:-1] + plan(send))
        assert not twice["success"]


def test_the_built_in_grid_passes_its_own_checks():
    families.check_grid()


@pytest.mark.parametrize(("cell", "why"), [
    (("count_flag", "contacts", "train"), "contacts collection has no flag"),  # would ask "... are ?"
    (("update_keyword", "drafts", "train"), "drafts collection has no flag"),  # was a bare IndexError
    (("count_and_message", "notes-pay", "test_challenge"), "'pay' is not a message action"),  # became an email task
    (("direct_send", "fax", "train"), "'fax' is not a send action"),
    (("create_item", "recipes", "train"), "'recipes' is not a collection"),
    (("count_keyword", "notes", "holdout"), "split 'holdout' is not one of"),  # tasks without datasets/holdout.txt
    (("no_such_family", "notes", "train"), "no family 'no_such_family'"),
])
def test_a_cell_the_families_cannot_build_fails_before_the_build_naming_it(cell, why):
    with pytest.raises(families.CellError) as caught:
        families.check_grid([cell])
    assert f"cell ({', '.join(cell)})" in str(caught.value) and why in str(caught.value)


def test_a_cell_given_twice_is_refused():
    with pytest.raises(families.CellError, match="appears twice"):
        families.check_grid([("count_keyword", "notes", "train"), ("count_keyword", "notes", "dev")])
