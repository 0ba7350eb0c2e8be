"""`prost inspect`: show one rendered sample with its trained tokens marked ``[[ like this ]]``.

Everything outside ``[[ ]]`` is context (labels -100); everything inside is trained, end-of-turn
token included. Useful to check a new chat template or a curriculum horizon by eye.
"""

from __future__ import annotations

from prost_lightning.curriculum import full, progressive
from prost_lightning.data.render import IGNORE_INDEX, Mode, Sample, build_sample, render_trajectory
from prost_lightning.errors import ConfigError
from prost_lightning.trajectory import read_trajectories

OPEN, CLOSE = "[[", "]]"


def mark_trained(tokenizer, sample: Sample) -> str:
    """Decode the sample; wrap each run of trained tokens in [[ ]]."""
    pieces: list[str] = []
    run: list[int] = []
    trained_run = False
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        trained = label != IGNORE_INDEX
        if run and trained != trained_run:
            text = tokenizer.decode(run)
            pieces.append(f"{OPEN}{text}{CLOSE}" if trained_run else text)
            run = []
        run.append(token)
        trained_run = trained
    if run:
        text = tokenizer.decode(run)
        pieces.append(f"{OPEN}{text}{CLOSE}" if trained_run else text)
    return "".join(pieces)


def inspect_sample(train_file: str, tokenizer: str = "tiny", role: str | None = None, index: int = 0,
                   horizon: int | None = None, mode: Mode = "slice", max_length: int | None = None,
                   repeated_tasks: bool = False) -> str:
    """Print one training sample with its trained tokens marked [[ like this ]].

    Args:
        train_file: JSONL trajectories.
        tokenizer: model name whose tokenizer renders the sample (tiny | smollm2 | folder | hub id);
            a tokenizer object also works from Python.
        role: role whose sample to show (default: the first role in the file, alphabetically).
        index: which conversation of that role, in file order (0 = first).
        horizon: sub-tasks 1..horizon are active (default: all).
        mode: slice | mask.
        max_length: apply the over-length rule for this many tokens (default: none).
        repeated_tasks: accept a task id on several lines, as ``data.repeated_tasks`` does.
    """
    if horizon is not None and horizon < 1:
        raise ConfigError(f"horizon: must be >= 1 (or omitted for all sub-tasks), got {horizon}")
    if isinstance(tokenizer, str):
        from prost_lightning.backbone import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    trajectories = read_trajectories(train_file, training=True, repeated_tasks=repeated_tasks)
    present = sorted({r for t in trajectories for r in t.roles})
    role = role or present[0]
    if role not in present:
        raise ConfigError(f"role: unknown role '{role}'; {train_file} has roles: {', '.join(present)}")
    conversations = [(t, rc) for t in trajectories for rc in render_trajectory(tokenizer, t, {role}, max_length)]
    if not 0 <= index < len(conversations):
        raise ConfigError(f"index: {index} out of range; {train_file} has {len(conversations)} '{role}' conversations")
    traj, rc = conversations[index]
    active = full(traj.num_subtasks) if horizon is None else progressive(0, traj.num_subtasks, start=horizon)
    where = f"task {traj.task_id} | role {role}" + (f" | sub-task {rc.subtask}" if rc.subtask else "")
    where += f" | active sub-tasks {sorted(active)} of {traj.num_subtasks} | mode {mode}"
    if rc.subtask is not None and rc.subtask not in active:
        return f"{where}\n(not a sample: sub-task {rc.subtask} is inactive at this horizon)"
    sample = build_sample(rc, active, mode, max_length)
    if isinstance(sample, str):
        return f"{where}\n(skipped: {sample})"
    header = f"{where} | {len(sample.input_ids)} tokens, {sample.num_trained} trained"
    header += " | oldest context turns dropped" if sample.truncated else ""
    return f"{header}\n{mark_trained(tokenizer, sample)}"
