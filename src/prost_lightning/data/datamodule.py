"""TrajectoryDataModule: trajectories -> per-role samples under the curriculum -> batches.

* ``setup()`` reads the files and renders every conversation once (the sample cache).
* ``train_dataloader()`` rebuilds the train set for ``trainer.current_epoch`` (Lightning calls it
  every epoch when ``reload_dataloaders_every_n_epochs=1``, before ``on_train_epoch_start``; see
  docs/prost.md) and stores the epoch's statistics in :attr:`epoch_stats`, which
  :class:`~prost_lightning.curriculum.CurriculumCallback` logs.
* ``val_dataloader()``: every sub-task active (the ``full`` schedule), so validation loss per role
  is comparable across epochs and schedules.

Batches are role-homogeneous and length-grouped, and identical in role across DDP ranks
(:mod:`prost_lightning.data.batching`); each is a dict ``{input_ids, attention_mask, labels,
role, num_real_tokens, num_trained_tokens}``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from prost_lightning.curriculum import ScheduleConfig
from prost_lightning.data.batching import Collator, ResumableDataLoader, RoleBatchSampler
from prost_lightning.data.epoch import EpochStats, build_epoch
from prost_lightning.data.render import MODES, Mode, RenderedConversation, render_trajectory
from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import read_trajectories

_CHANGING_SCHEDULES = ("progressive", "reverse", "random")


def _check_roles(roles: list[str] | None, present: list[str], path) -> None:
    unknown = [r for r in roles or [] if r not in present]
    if unknown:
        raise ConfigError(f"data.roles: unknown role(s) {', '.join(unknown)}; the trajectories in {path} "
                          f"have roles: {', '.join(present) or 'none'}. Fix the roles (model.roles / data.roles) "
                          "or leave data.roles empty for all")


def check_training_files(train_file: str, val_file: str | None, roles: list[str] | None,
                         repeated_tasks: bool = False) -> None:
    """Read and check the trajectory files as training will, before a model is built or a file written."""
    trajectories = read_trajectories(train_file, training=True, repeated_tasks=repeated_tasks)
    _check_roles(roles, sorted({r for t in trajectories for r in t.roles}), train_file)
    if val_file:
        read_trajectories(val_file, training=True, repeated_tasks=repeated_tasks)


def render_file(path: str | Path, tokenizer, roles: list[str] | None, max_length: int | None,
                repeated_tasks: bool = False) -> tuple[list[RenderedConversation], list[str]]:
    """Render every conversation of the chosen roles; returns them and the roles present in the file.

    Trajectories are taken in task-id order (stable for repeated ids): collection runs episodes
    concurrently and appends them as they finish, so the file's order, and with it the seeded batch
    order, would otherwise change from one collection to the next.
    """
    trajectories = sorted(read_trajectories(path, training=True, repeated_tasks=repeated_tasks), key=lambda t: t.task_id)
    present = sorted({r for t in trajectories for r in t.roles})
    _check_roles(roles, present, path)
    chosen = set(roles) if roles else None
    rendered = [rc for t in trajectories for rc in render_trajectory(tokenizer, t, chosen, max_length)]
    return rendered, present


class TrajectoryDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_file: str,
        tokenizer: str = "tiny",
        val_file: str | None = None,
        roles: list[str] | None = None,
        schedule: ScheduleConfig | None = None,
        mode: Mode = "slice",
        max_length: int = 2048,
        batch_size: int = 4,
        seed: int = 0,
        num_workers: int = 0,
        repeated_tasks: bool = False,
    ) -> None:
        """Per-role training samples from a trajectory file, under a sub-task curriculum.

        Args:
            train_file: JSONL trajectories to train on (one per line; see prost_lightning.trajectory).
            tokenizer: model name whose tokenizer and chat template render the samples (tiny | smollm2 |
                a local folder | a hub id); use the base model's name.
            val_file: optional JSONL trajectories for validation loss (all sub-tasks active).
            roles: roles to train (e.g. [planner, executor]); empty or null = every role in train_file.
            schedule: the curriculum: name (progressive | full | reverse | random | length), start,
                step, epochs_per_stage, seed.
            mode: slice (cut after the last active sub-task) or mask (keep all, train active only).
            max_length: longest sample in tokens; longer ones drop their oldest untrained turns, or
                are skipped and counted (never cut inside trained tokens).
            batch_size: samples per batch and per process; all of one role, of similar length.
            seed: seed of the batch order (shared by all processes).
            num_workers: DataLoader worker processes.
            repeated_tasks: accept a task id on several lines, each trained (``prost improve``'s merged
                teacher and verified own episodes); off, a repeat is refused as a likely mistake.
        """
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"data.mode: '{mode}' is not one of {' | '.join(MODES)}")
        if max_length < 2:
            raise ConfigError(f"data.max_length: must be >= 2, got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {batch_size}")
        self.train_file, self.val_file, self.tokenizer = train_file, val_file, tokenizer
        self.roles = list(roles) if roles else None
        self.schedule = schedule or ScheduleConfig()
        self.mode, self.max_length, self.batch_size = mode, max_length, batch_size
        self.seed, self.num_workers, self.repeated_tasks = seed, num_workers, repeated_tasks
        self.epoch_stats: EpochStats | None = None  # of the last train set built
        self.val_stats: EpochStats | None = None
        self.roles_in_data: list[str] = []
        self._train: list[RenderedConversation] | None = None
        self._val: list[RenderedConversation] = []
        self._tok = None

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def tokenizer_obj(self):
        if self._tok is None:
            from prost_lightning.backbone import load_tokenizer

            self._tok = load_tokenizer(self.tokenizer)
        return self._tok

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:  # render once; epochs only re-cut the cache
            return
        self._train, self.roles_in_data = render_file(self.train_file, self.tokenizer_obj, self.roles,
                                                         self.max_length, self.repeated_tasks)
        if self.val_file:
            roles = self.roles or self.roles_in_data
            self._val = render_file(self.val_file, self.tokenizer_obj, None, self.max_length, self.repeated_tasks)[0]
            self._val = [rc for rc in self._val if rc.role in roles]

    @property
    def trained_roles(self) -> list[str]:
        """The roles this module yields batches for (after setup)."""
        return self.roles or self.roles_in_data

    # -- loaders --------------------------------------------------------------------------------
    def _distributed(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return 1, 0
        connector = getattr(trainer, "_accelerator_connector", None)
        if getattr(connector, "use_distributed_sampler", False):
            raise ConfigError("trainer.use_distributed_sampler: must be false with TrajectoryDataModule, "
                              "which shards role-synchronised batches itself; set it to false")
        return trainer.world_size, trainer.global_rank

    def _loader(self, samples, *, epoch: int, shuffle: bool, order_by_length: bool, replicas: int, rank: int):
        sampler = RoleBatchSampler(
            [s.role for s in samples], [len(s.input_ids) for s in samples], self.batch_size, seed=self.seed,
            epoch=epoch, shuffle=shuffle, order_by_length=order_by_length, num_replicas=replicas, rank=rank,
        )
        pad = self.tokenizer_obj.pad_token_id
        # its own generator: a loader drawing its worker seed from the global one would shift the
        # dropout masks of a resumed fit (which restores the global state) against an uninterrupted one
        return ResumableDataLoader(samples, batch_sampler=sampler, collate_fn=Collator(pad),
                                   num_workers=self.num_workers, epoch=epoch, generator=torch.Generator())

    def epoch_dataloader(self, epoch: int, num_replicas: int = 1, rank: int = 0) -> DataLoader:
        """The train loader of one epoch (what train_dataloader() returns for trainer.current_epoch)."""
        self.setup()
        samples, self.epoch_stats = build_epoch(self._train, self.schedule, epoch, self.mode, self.max_length)
        if not samples:
            raise ConfigError(f"{self.train_file}: no trainable sample at epoch {epoch} (roles {self.trained_roles}, "
                              f"{self.epoch_stats.skipped_too_long} too long for max_length {self.max_length}, "
                              f"{self.epoch_stats.skipped_empty} without assistant turns); check data.roles and data.max_length")
        return self._loader(samples, epoch=epoch, shuffle=not self.schedule.orders_by_length,
                            order_by_length=self.schedule.orders_by_length, replicas=num_replicas, rank=rank)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if (trainer is not None and self.schedule.name in _CHANGING_SCHEDULES
                and trainer.reload_dataloaders_every_n_epochs != 1):
            raise ConfigError(f"trainer.reload_dataloaders_every_n_epochs: must be 1 for the '{self.schedule.name}' "
                              f"schedule (the train set changes every epoch), got {trainer.reload_dataloaders_every_n_epochs}")
        replicas, rank = self._distributed()
        return self.epoch_dataloader(trainer.current_epoch if trainer is not None else 0, replicas, rank)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if not self._val:
            return []
        samples, self.val_stats = build_epoch(self._val, ScheduleConfig("full"), 0, "slice", self.max_length)
        replicas, rank = self._distributed()
        return self._loader(samples, epoch=0, shuffle=False, order_by_length=False, replicas=replicas, rank=rank)
