"""The perturbing teacher: realistic executor mistakes, played in the real engine, marked context-only."""

from __future__ import annotations

import random

import pytest

from prost_lightning.agents.perturb import (
    PERTURBATIONS,
    PerturbingOracle,
    perturbing_policies,
    register_perturbation,
    resolve_kinds,
)
from prost_lightning.errors import ConfigError

COLLECT_ALARMS = "alarms = collect(apis.phone.show_alarms, access_token=phone_token)"
DELETE_EACH = 'for x in matches:\n    apis.phone.delete_alarm(alarm_id=x["alarm_id"], access_token=phone_token)'


def perturb(kind: str, code: str) -> str | None:
    return PERTURBATIONS[kind](code, random.Random(0))


def test_each_built_in_kind_makes_its_mistake_or_declines():
    assert perturb("wrong_api", COLLECT_ALARMS) == COLLECT_ALARMS.replace("show_alarms", "search_alarms")
    assert perturb("no_pagination", COLLECT_ALARMS) == (
        "alarms = apis.phone.show_alarms(access_token=phone_token)\nprint(len(alarms))")
    assert perturb("wrong_app", 'simple_note_token = login("simple_note")') == 'simple_note_token = login("notes")'
    assert perturb("wrong_field", DELETE_EACH) == DELETE_EACH.replace('x["alarm_id"]', 'x["alarm_ids"]')
    assert perturb("wrong_argument", DELETE_EACH) == DELETE_EACH.replace("(alarm_id=", "(id=")
    assert perturb("unbound_variable", "apis.supervisor.complete_task(answer=len(matches))") == (
        "apis.supervisor.complete_task(answer=len(match))")
    assert perturb("unbound_variable", COLLECT_ALARMS) == COLLECT_ALARMS.replace("=phone_token", "=access_token")
    # steps a kind does not fit are left to other kinds
    assert perturb("no_pagination", DELETE_EACH) is None
    assert perturb("wrong_field", COLLECT_ALARMS) is None
    assert perturb("wrong_argument", "apis.supervisor.complete_task()") is None


def test_which_subtasks_are_perturbed_depends_on_seed_task_and_subtask_only():
    cases = [(f"task_{i}", k) for i in range(40) for k in range(1, 5)]

    def chosen(teacher):
        return [(t, k, m.kind, m.reply) for t, k in cases
                if (m := teacher.mistake(t, k, "Collect all my phone alarms.", COLLECT_ALARMS))]

    first = chosen(PerturbingOracle(share=0.3, seed=0))
    assert first == chosen(PerturbingOracle(share=0.3, seed=0))
    assert first != chosen(PerturbingOracle(share=0.3, seed=1))
    assert 0.15 < len(first) / len(cases) < 0.45  # about the share asked for
    assert {kind for _, _, kind, _ in first} == {"wrong_api", "no_pagination", "unbound_variable"}  # those that fit
    assert chosen(PerturbingOracle(share=0.0)) == []
    assert len(chosen(PerturbingOracle(share=1.0))) == len(cases)
    only = chosen(PerturbingOracle(share=1.0, kinds=["wrong_api"]))
    assert {kind for _, _, kind, _ in only} == {"wrong_api"} and "search_alarms" in only[0][3]


def test_the_registry_is_extensible_by_decorator_or_by_import_path():
    @register_perturbation("off_by_one_page")
    def off_by_one_page(code, rng):
        return code.replace("collect(", "collect_from_page_1(") if "collect(" in code else None

    try:
        teacher = PerturbingOracle(share=1.0, kinds=["off_by_one_page"])
        assert "collect_from_page_1(apis.phone.show_alarms" in teacher.mistake("t_1", 2, "d", COLLECT_ALARMS).reply
        by_path = f"{__name__}:reverse_code"
        assert resolve_kinds([by_path]) == [by_path]
        assert PerturbingOracle(share=1.0, kinds=[by_path]).mistake("t_1", 1, "d", "abc").reply.count("cba") == 1
    finally:
        PERTURBATIONS.pop("off_by_one_page", None)
        PERTURBATIONS.pop(f"{__name__}:reverse_code", None)


def reverse_code(code: str, rng: random.Random) -> str:  # imported by name in the test above
    return code[::-1]


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="unknown kind.*typo_kind.*known"):
        PerturbingOracle(kinds=["typo_kind"])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PerturbingOracle(share=1.5)
    with pytest.raises(ConfigError, match="executor"):
        perturbing_policies(["agent"])
    with pytest.raises(ConfigError, match="max_steps_per_subtask.*at least 3"):
        perturbing_policies(["planner", "executor"], max_steps_per_subtask=2)


@pytest.mark.appworld
def test_collect_plays_mistakes_in_appworld_and_marks_them(mini_world_root, tmp_path):
    from prost_lightning.collect import collect
    from prost_lightning.env.tasks import load_task, load_task_ids
    from prost_lightning.trajectory import read_trajectories

    task_ids = [t for t in load_task_ids(mini_world_root, "train") if t.startswith(("ckw", "lsl", "dkw"))][:3]
    out = tmp_path / "recovery.jsonl"
    report = collect("oracle", "planner_executor", root=str(mini_world_root), out=str(out), task_ids=task_ids,
                     perturb=1.0, perturb_seed=0, progress=False, verbose=False)
    assert report["teacher"] == "oracle+perturb1" and report["episodes"] == 3
    kept = read_trajectories(out)
    assert report["kept"] == len(kept) >= 2  # a mistake with a side effect may fail evaluate(): rejected, counted
    mistakes = 0
    for trajectory in kept:
        plan = load_task(mini_world_root, trajectory.task_id).plan
        assert trajectory.outcome.success and trajectory.teacher == "oracle+perturb1"
        assert [s.code for s in trajectory.subtasks] == [s.code for s in plan]  # the plan, not mistake + repair
        for conv in (c for c in trajectory.conversations if c.role == "executor"):
            marked = [i for i, m in enumerate(conv.messages) if m.context_only]
            if not marked:
                continue
            mistakes += 1
            i = marked[0]
            assert marked == [i] and conv.messages[i].role == "assistant"
            observation, repair = conv.messages[i + 1].content, conv.messages[i + 2].content
            assert plan[conv.subtask - 1].code in repair and not repair == conv.messages[i].content
            # AppWorld's own error (or, for a missing pagination loop, the short page it returned)
            assert "Execution failed" in observation or observation.strip().splitlines()[-1].isdigit(), observation
    assert mistakes >= 6  # share 1.0: every sub-task a kind fits starts with a mistake
