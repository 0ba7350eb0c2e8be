"""Sub-task curricula (docs/prost.md): which sub-tasks of a trajectory are trained at epoch e.

Schedules are pure functions of (config, epoch, number of sub-tasks K, task id); the data module
asks :meth:`ScheduleConfig.active_subtasks` for every trajectory when it rebuilds the train set,
which it does in ``train_dataloader()`` from ``trainer.current_epoch`` (docs/prost.md:
a callback hook would be one epoch late).

| name          | active sub-tasks at epoch e (0-based), h = min(K, start + step * (e // epochs_per_stage)) |
|---------------|--------------------------------------------------------------------------------------------|
| `progressive` | 1..h (ProST)                                                                               |
| `full`        | 1..K every epoch (standard fine-tuning)                                                    |
| `reverse`     | the last h: K-h+1..K                                                                       |
| `random`      | h distinct sub-tasks drawn with a RNG seeded by (seed, epoch, task id): same on every rank |
|               | and every run                                                                              |
| `length`      | 1..K, and the data module orders the epoch's batches short -> long (:attr:`orders_by_length`) |

:class:`CurriculumCallback` logs what the data module built for the epoch and keeps a history in
checkpoints. The horizon after a resume comes from ``trainer.current_epoch``, which Lightning
restores; the callback's state lets it check that the schedule did not change under a resumed run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from prost_lightning.errors import ConfigError

ScheduleName = Literal["progressive", "full", "reverse", "random", "length"]
SCHEDULES = ("progressive", "full", "reverse", "random", "length")


def progressive_horizon(epoch: int, num_subtasks: int, start: int = 1, step: int = 1, epochs_per_stage: int = 1) -> int:
    """h = min(K, start + step * floor(epoch / epochs_per_stage))."""
    return min(num_subtasks, start + step * (epoch // epochs_per_stage))


def progressive(epoch: int, num_subtasks: int, start: int = 1, step: int = 1, epochs_per_stage: int = 1) -> frozenset[int]:
    return frozenset(range(1, progressive_horizon(epoch, num_subtasks, start, step, epochs_per_stage) + 1))


def full(num_subtasks: int) -> frozenset[int]:
    return frozenset(range(1, num_subtasks + 1))


def reverse(epoch: int, num_subtasks: int, start: int = 1, step: int = 1, epochs_per_stage: int = 1) -> frozenset[int]:
    h = progressive_horizon(epoch, num_subtasks, start, step, epochs_per_stage)
    return frozenset(range(num_subtasks - h + 1, num_subtasks + 1))


def random_subset(epoch: int, num_subtasks: int, task_id: str, seed: int = 0, start: int = 1, step: int = 1,
                  epochs_per_stage: int = 1) -> frozenset[int]:
    h = progressive_horizon(epoch, num_subtasks, start, step, epochs_per_stage)
    # A string seed is hashed with SHA-512 by `random`: stable across processes and Python runs.
    rng = random.Random(f"{seed}:{epoch}:{task_id}")
    return frozenset(rng.sample(range(1, num_subtasks + 1), h))


@dataclass
class ScheduleConfig:
    """Which sub-tasks are trained at each epoch.

    Args:
        name: progressive (ProST) | full | reverse | random | length.
        start: horizon at epoch 0 (progressive, reverse, random).
        step: sub-tasks added per stage.
        epochs_per_stage: epochs spent at each horizon.
        seed: RNG seed of the random schedule.
    """

    name: ScheduleName = "progressive"
    start: int = 1
    step: int = 1
    epochs_per_stage: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"schedule.name: '{self.name}' is not one of {' | '.join(SCHEDULES)}")
        for key in ("start", "step", "epochs_per_stage"):
            if getattr(self, key) < 1:
                raise ConfigError(f"schedule.{key}: must be >= 1, got {getattr(self, key)}")

    @property
    def orders_by_length(self) -> bool:
        """True when the epoch's batches go short -> long instead of being shuffled."""
        return self.name == "length"

    def active_subtasks(self, epoch: int, num_subtasks: int, task_id: str = "") -> frozenset[int]:
        stage = dict(start=self.start, step=self.step, epochs_per_stage=self.epochs_per_stage)
        if self.name == "progressive":
            return progressive(epoch, num_subtasks, **stage)
        if self.name == "reverse":
            return reverse(epoch, num_subtasks, **stage)
        if self.name == "random":
            return random_subset(epoch, num_subtasks, task_id, self.seed, **stage)
        return full(num_subtasks)


class CurriculumCallback(L.Callback):
    """Logs the curriculum of every epoch and keeps its history in checkpoints.

    Logged once per epoch (on_epoch), from the statistics that ``TrajectoryDataModule`` computed
    when it built the epoch's train set (global figures, before sharding across ranks):

    * ``curriculum/horizon``: the largest number of active sub-tasks over the epoch's trajectories
      (the schedule's horizon capped by the longest trajectory; K_max for full/length),
    * ``curriculum/<role>/samples`` and ``curriculum/<role>/trained_tokens``,
    * ``curriculum/skipped_empty``, ``curriculum/skipped_too_long``, ``curriculum/truncated``.
    """

    def __init__(self) -> None:
        self.history: dict[int, dict[str, float]] = {}
        self.schedule: dict[str, Any] | None = None
        self._logged_epoch: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_epoch(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # Lightning skips on_train_epoch_start when a fit resumes mid-epoch: log that epoch here
        if self._logged_epoch != trainer.current_epoch:
            self._log_epoch(trainer, pl_module)

    def _log_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged_epoch = trainer.current_epoch
        stats = getattr(trainer.datamodule, "epoch_stats", None) if trainer.datamodule is not None else None
        if stats is None:
            rank_zero_warn("CurriculumCallback: the data module has no epoch_stats (not a TrajectoryDataModule?); nothing to log")
            return
        schedule = asdict(trainer.datamodule.schedule)
        if self.schedule is not None and self.schedule != schedule:
            rank_zero_warn(f"CurriculumCallback: the schedule changed since the checkpoint "
                           f"({self.schedule} -> {schedule}); the horizon follows the new one")
        self.schedule = schedule
        metrics = stats.metrics()
        self.history[stats.epoch] = metrics
        # identical on every rank (global statistics); sync_dist keeps Lightning's DDP epoch-logging happy
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history), "schedule": self.schedule}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): v for k, v in state_dict.get("history", {}).items()}
        self.schedule = state_dict.get("schedule")
