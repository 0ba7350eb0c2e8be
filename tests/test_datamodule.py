"""TrajectoryDataModule: per-epoch sets, statistics, role-synchronised batches, and clear errors."""

import csv
import json
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from prost_lightning.curriculum import CurriculumCallback, ScheduleConfig
from prost_lightning.data import RoleBatchSampler, TrajectoryDataModule
from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import TrajectoryError, read_trajectories

FIXTURE = Path(__file__).parent / "fixtures" / "trajectories.jsonl"


def make(**kwargs) -> TrajectoryDataModule:
    kwargs.setdefault("batch_size", 2)
    dm = TrajectoryDataModule(str(FIXTURE), "tiny", **kwargs)
    dm.setup("fit")
    return dm


def expected_stats(horizon: int):
    """Samples and trained tokens per role, counted straight from the fixture (byte tokenizer: 1 token per
    byte of content, +1 for <|im_end|>)."""
    samples, tokens = Counter(), Counter()
    for t in read_trajectories(FIXTURE):
        active = set(range(1, min(horizon, t.num_subtasks) + 1))
        for conv in t.conversations:
            if conv.subtask is not None and conv.subtask not in active:
                continue
            samples[conv.role] += 1
            tokens[conv.role] += sum(len(m.content.encode()) + 1 for m in conv.messages
                                     if m.role == "assistant" and m.subtask in active)
    return samples, tokens


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_epoch_statistics_follow_the_progressive_schedule(epoch):
    dm = make()
    loader = dm.epoch_dataloader(epoch)
    samples, tokens = expected_stats(epoch + 1)
    stats = dm.epoch_stats
    assert stats.epoch == epoch and stats.horizon == min(epoch + 1, 4)
    assert dict(stats.samples) == dict(samples) and dict(stats.trained_tokens) == dict(tokens)
    assert stats.skipped_empty == stats.skipped_too_long == stats.truncated == 0
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == sum(samples.values())
    assert sum(b["num_trained_tokens"] for b in batches) == sum(tokens.values())
    assert stats.metrics()["curriculum/horizon"] == min(epoch + 1, 4)
    assert stats.metrics()["curriculum/executor/trained_tokens"] == tokens["executor"]


def test_executor_samples_grow_with_the_horizon():
    dm = make(roles=["executor"])
    counts = []
    for epoch in range(4):
        dm.epoch_dataloader(epoch)
        counts.append(dm.epoch_stats.samples["executor"])
    assert counts == [4, 7, 9, 10]  # planner_executor trajectories have K = 1, 2, 3, 4


def test_batches_are_role_homogeneous_padded_and_masked():
    dm = make(schedule=ScheduleConfig("full"), batch_size=3)
    pad = dm.tokenizer_obj.pad_token_id
    roles = []
    for b in dm.epoch_dataloader(0):
        roles.append(b["role"])
        ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
        assert ids.shape == mask.shape == labels.shape and ids.dtype == torch.long
        assert mask[:, 0].all() and mask.sum(1).max() == ids.shape[1]  # padded to the longest
        assert (ids[mask == 0] == pad).all() and (labels[mask == 0] == -100).all()
        assert b["num_real_tokens"] == int(mask.sum())
    assert set(roles) == {"agent", "planner", "executor"}


def test_batches_group_similar_lengths():
    dm = make(roles=["executor"], schedule=ScheduleConfig("full"), batch_size=3)
    widths = [sorted(b["attention_mask"].sum(1).tolist()) for b in dm.epoch_dataloader(0)]
    by_length = sorted(w for batch in widths for w in batch)
    assert sorted(widths) == [by_length[i:i + 3] for i in range(0, len(by_length), 3)]


def test_length_schedule_orders_batches_short_to_long():
    dm = make(schedule=ScheduleConfig("length"))
    widths = [b["input_ids"].shape[1] for b in dm.epoch_dataloader(0)]
    assert widths == sorted(widths)


def test_batch_order_is_seeded():
    def sampler(seed, epoch):
        return list(RoleBatchSampler(["a", "b"] * 10, list(range(20)), 2, seed=seed, epoch=epoch))

    assert sampler(0, 1) == sampler(0, 1)
    assert sampler(0, 1) != sampler(0, 2)
    assert sorted(map(tuple, sampler(0, 1))) == sorted(map(tuple, sampler(0, 2)))  # same groups, new order


def test_batches_do_not_depend_on_the_order_of_the_file(tmp_path):
    # collection appends episodes as they finish, so two collections of one split differ in order
    lines = FIXTURE.read_text().splitlines()
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("\n".join(reversed(lines)) + "\n")

    def cache_and_batches(path):
        dm = TrajectoryDataModule(str(path), "tiny", batch_size=2)
        batches = [b["input_ids"].tolist() for b in dm.epoch_dataloader(1)]
        return [(rc.task_id, rc.role, rc.subtask) for rc in dm._train], batches

    cache, batches = cache_and_batches(reversed_file)
    assert cache == sorted(cache, key=lambda key: key[0])  # the sample cache is in task-id order
    assert (cache, batches) == cache_and_batches(FIXTURE)


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_trains_the_same_role_at_each_step(world):
    roles = ["planner"] * 5 + ["executor"] * 7 + ["agent"] * 2
    lengths = [10, 50, 20, 40, 30, 5, 15, 25, 35, 45, 55, 65, 8, 9]
    ranks = [RoleBatchSampler(roles, lengths, 2, seed=7, epoch=3, num_replicas=world, rank=r) for r in range(world)]
    assert len({len(s) for s in ranks}) == 1
    assert all(s.step_roles == ranks[0].step_roles for s in ranks)
    per_step = list(zip(*[list(s) for s in ranks], strict=True))
    seen = Counter()
    for step, role in zip(per_step, ranks[0].step_roles, strict=True):
        assert len({len(b) for b in step}) == 1  # uneven batches are padded by repeats, so all ranks step
        for batch in step:
            assert {roles[i] for i in batch} == {role}
            seen.update(batch)
    assert set(seen) == set(range(len(roles)))  # every sample is trained by some rank


def test_datamodule_shards_across_ranks():
    dm = make(schedule=ScheduleConfig("full"))
    loaders = [dm.epoch_dataloader(0, num_replicas=2, rank=r) for r in range(2)]
    steps = list(zip(*loaders, strict=True))
    assert len(steps) == len(loaders[0]) == len(loaders[1])
    assert all(a["role"] == b["role"] for a, b in steps)


def test_over_length_samples_are_skipped_and_counted():
    dm = make(roles=["agent"], schedule=ScheduleConfig("full"), max_length=500)
    dm.epoch_dataloader(0)
    # one agent trajectory (K = 1) fits; the three longer ones cannot keep their trained turns
    assert dm.epoch_stats.samples["agent"] == 1 and dm.epoch_stats.skipped_too_long == 3
    assert dm.epoch_stats.metrics()["curriculum/skipped_too_long"] == 3


def test_validation_uses_every_subtask():
    dm = TrajectoryDataModule(str(FIXTURE), "tiny", val_file=str(FIXTURE), roles=["planner"], batch_size=8)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    samples, tokens = expected_stats(horizon=4)
    assert [b["role"] for b in batches] == ["planner"]
    assert dm.val_stats.trained_tokens["planner"] == tokens["planner"] == batches[0]["num_trained_tokens"]
    assert make().val_dataloader() == []


def test_unknown_role_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown role\(s\) critic;.*have roles: agent, executor, planner"):
        make(roles=["planner", "critic"])


def test_max_length_shorter_than_the_prompt_is_a_clear_error():
    # trajectories are read in task-id order, so the first offending task is always the same one
    with pytest.raises(ConfigError, match=r"max_length 100 is too short for task 5e1f7aa_1, role agent"):
        make(max_length=100)


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ConfigError, match="data.mode"):
        TrajectoryDataModule(str(FIXTURE), mode="window")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(FIXTURE.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(TrajectoryError, match=rf"{bad}:2: not valid JSON"):
        TrajectoryDataModule(str(bad)).setup("fit")


def test_trajectory_without_subtasks_names_file_line_and_field(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    record = json.loads(lines[1])
    record["subtasks"] = []
    bad = tmp_path / "nosub.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    with pytest.raises(TrajectoryError, match=rf"{bad}:2: .*subtasks.*at least one sub-task"):
        TrajectoryDataModule(str(bad)).setup("fit")


def test_curriculum_needs_per_epoch_reload():
    dm = make()
    dm.trainer = L.Trainer(reload_dataloaders_every_n_epochs=0, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="reload_dataloaders_every_n_epochs"):
        dm.train_dataloader()


class _TinyLM(L.LightningModule):
    """A bag-of-embeddings LM: enough to run a real Trainer over the data module."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = torch.nn.Embedding(300, 8), torch.nn.Linear(8, 300)
        self.trained = []

    def training_step(self, batch, _):
        self.trained.append((self.current_epoch, batch["role"], batch["num_trained_tokens"]))
        logits = self.out(self.emb(batch["input_ids"]))[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 300), batch["labels"][:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_logs_the_horizon_of_every_epoch(tmp_path):
    dm = TrajectoryDataModule(str(FIXTURE), "tiny", roles=["planner", "executor"], batch_size=4)
    model, callback = _TinyLM(), CurriculumCallback()
    trainer = L.Trainer(max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[callback],
                        logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_checkpointing=False, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("curriculum/horizon")]
    assert [float(r["curriculum/horizon"]) for r in rows] == [1.0, 2.0, 3.0]
    for epoch, row in enumerate(rows):
        _, tokens = expected_stats(epoch + 1)
        assert float(row["curriculum/executor/trained_tokens"]) == tokens["executor"]
        trained = sum(n for e, role, n in model.trained if e == epoch and role == "executor")
        assert trained == tokens["executor"]  # what was trained really changed with the epoch
    assert sorted(callback.state_dict()["history"]) == [0, 1, 2]


def test_train_loader_resumes_after_the_batches_already_trained():
    dm = make()
    whole = [b["input_ids"] for b in dm.epoch_dataloader(1)]
    loader = dm.epoch_dataloader(1)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    rebuilt = dm.epoch_dataloader(1)  # what train_dataloader() builds again on resume
    rebuilt.load_state_dict(state)
    rest = [b["input_ids"] for b in rebuilt]
    assert len(rest) == len(whole) - 2 and all(torch.equal(x, y) for x, y in zip(rest, whole[2:], strict=True))
    assert len(rebuilt) == len(whole)  # Lightning counts the epoch's batches from the full length
    assert len(list(rebuilt)) == len(whole)  # the skip applies to one iteration only
    other_epoch = dm.epoch_dataloader(2)
    other_epoch.load_state_dict(state)  # a state from another epoch is ignored
    assert len(list(other_epoch)) == len(other_epoch)


def test_random_schedule_is_reproducible_across_data_modules():
    def labels(epoch):
        dm = make(schedule=ScheduleConfig("random", seed=11))
        return [b["labels"].tolist() for b in dm.epoch_dataloader(epoch)], dm.epoch_stats.horizon

    first, horizon = labels(1)
    assert labels(1) == (first, horizon) and horizon == 2
