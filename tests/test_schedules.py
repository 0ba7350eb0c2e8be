"""Curriculum schedules: exact active sets per epoch, determinism of `random`, config validation."""

import pytest

from prost_lightning.curriculum import (
    CurriculumCallback,
    ScheduleConfig,
    full,
    progressive,
    progressive_horizon,
    random_subset,
    reverse,
)
from prost_lightning.errors import ConfigError


@pytest.mark.parametrize(
    "epoch, k, start, step, per_stage, expected",
    [
        (0, 4, 1, 1, 1, 1),
        (1, 4, 1, 1, 1, 2),
        (2, 4, 1, 1, 1, 3),
        (3, 4, 1, 1, 1, 4),
        (9, 4, 1, 1, 1, 4),  # capped at K
        (0, 4, 2, 1, 1, 2),  # start
        (1, 5, 1, 2, 1, 3),  # step
        (1, 4, 1, 1, 2, 1),  # epochs_per_stage: two epochs per horizon
        (2, 4, 1, 1, 2, 2),
        (5, 4, 1, 1, 2, 3),
        (0, 1, 1, 1, 1, 1),
    ],
)
def test_progressive_horizon(epoch, k, start, step, per_stage, expected):
    assert progressive_horizon(epoch, k, start, step, per_stage) == expected
    assert progressive(epoch, k, start, step, per_stage) == frozenset(range(1, expected + 1))


def test_full_and_reverse():
    assert full(3) == {1, 2, 3}
    assert [sorted(reverse(e, 4)) for e in range(5)] == [[4], [3, 4], [2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]
    assert reverse(0, 4, start=2) == {3, 4}


def test_random_is_seeded_and_has_the_horizon_size():
    draws = {e: random_subset(e, 6, "task_1", seed=3) for e in range(6)}
    for e, active in draws.items():
        assert len(active) == min(6, 1 + e)
        assert active <= set(range(1, 7))
        assert random_subset(e, 6, "task_1", seed=3) == active  # deterministic given seed, epoch, task id
    # the draw depends on the task id and the seed (over many tasks, not all equal)
    by_task = {random_subset(1, 6, f"t{i}", seed=3) for i in range(20)}
    by_seed = {random_subset(1, 6, "task_1", seed=s) for s in range(20)}
    assert len(by_task) > 1 and len(by_seed) > 1


def test_schedule_config_dispatch():
    assert ScheduleConfig("progressive").active_subtasks(1, 4, "t") == {1, 2}
    assert ScheduleConfig("full").active_subtasks(0, 4, "t") == {1, 2, 3, 4}
    assert ScheduleConfig("length").active_subtasks(0, 4, "t") == {1, 2, 3, 4}
    assert ScheduleConfig("reverse", start=2).active_subtasks(0, 4, "t") == {3, 4}
    assert ScheduleConfig("random", seed=5).active_subtasks(2, 4, "t") == random_subset(2, 4, "t", seed=5)
    assert ScheduleConfig("length").orders_by_length and not ScheduleConfig("progressive").orders_by_length


@pytest.mark.parametrize("kwargs, field", [({"name": "zigzag"}, "schedule.name"), ({"start": 0}, "schedule.start"),
                                           ({"epochs_per_stage": 0}, "schedule.epochs_per_stage")])
def test_schedule_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ScheduleConfig(**kwargs)


def test_callback_state_round_trip():
    cb = CurriculumCallback()
    cb.history = {0: {"curriculum/horizon": 1.0}, 1: {"curriculum/horizon": 2.0}}
    cb.schedule = {"name": "progressive", "start": 1, "step": 1, "epochs_per_stage": 1, "seed": 0}
    restored = CurriculumCallback()
    restored.load_state_dict(cb.state_dict())
    assert restored.history == cb.history and restored.schedule == cb.schedule
