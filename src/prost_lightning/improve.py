"""Self-improvement from verified rollouts (``prost improve``): rejection-sampling fine-tuning.

    prost improve --run runs/demo/train/lightning_logs/version_0 \
        --teacher_file runs/demo/trajectories/planner_executor_train.jsonl --config experiments/demo.yaml \
        --rounds 1 --samples 4 --temperature 0.7 --out runs/improve

Each round r = 1..R:

1. **sample**: the current team plays every task of a *training* split ``samples`` times at
   ``temperature`` (the local rollout engine, ``engine: hf``; held-out splits are refused);
2. **keep**: only episodes whose ``evaluate()`` passes; a code reply whose output was an execution
   error and that the same conversation then repaired is marked ``context_only`` (trained as
   context, like the perturbing teacher's mistakes: the team learns the repair, not the error);
3. **deduplicate**: drop episodes identical (every message) to one already in the data;
4. **merge** the kept episodes of all rounds so far with the teacher data into ``round_<r>/train.jsonl``;
5. **fine-tune** on it: ``resume: true`` continues the previous run from its last checkpoint for
   ``epochs`` more epochs; ``resume: false`` trains fresh adapters with the config's schedule;
6. **evaluate** the new team on the held-out split (evaluation only, greedy).

``report.json`` lists per round: sample success on the train tasks, kept and duplicate episodes,
the size of the merged data, held-out TGC/SGC, the run folder and wall time per phase.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from prost_lightning.errors import ConfigError
from prost_lightning.files import check_writable, write_atomic
from prost_lightning.trajectory import Trajectory, read_trajectories, write_trajectories

# never sampled from: model selection and the held-out evaluation read these
HELD_OUT_PREFIXES = ("dev", "test")


def refuse_held_out(split: str) -> None:
    if split.startswith(HELD_OUT_PREFIXES):
        raise ConfigError(f"split '{split}' is held out (dev/test*): self-improvement samples training tasks only; "
                          "use --split train (held-out splits are for --eval_split)")


def mark_repaired_errors(trajectory: Trajectory) -> Trajectory:
    """A copy in which every code reply that failed and was followed by another reply of its conversation
    is context-only: a verified episode's detours are shown, never trained."""
    from prost_lightning.agents.parsing import extract_code, is_failed_observation

    marked = trajectory.model_copy(deep=True)
    for conv in marked.conversations:
        messages = conv.messages
        replies = [i for i, m in enumerate(messages) if m.role == "assistant"]
        for i in replies[:-1]:
            observation = messages[i + 1].content if i + 1 < len(messages) else ""
            if extract_code(messages[i].content) is not None and is_failed_observation(observation):
                messages[i].context_only = True
    return marked


def _fingerprint(trajectory: Trajectory) -> tuple:
    return (trajectory.task_id, trajectory.system,
            tuple((c.role, c.subtask, tuple((m.role, " ".join(m.content.split())) for m in c.messages))
                  for c in trajectory.conversations))


def keep_verified(samples: Iterable[Trajectory], existing: Iterable[Trajectory] = ()) -> tuple[list[Trajectory], int]:
    """(passing samples not identical to one in ``existing`` or kept before, marked; number of duplicates)."""
    seen = {_fingerprint(t) for t in existing}
    kept: list[Trajectory] = []
    duplicates = 0
    for trajectory in samples:
        if trajectory.outcome is None or not trajectory.outcome.success:
            continue
        marked = mark_repaired_errors(trajectory)
        key = _fingerprint(marked)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(marked)
    return kept, duplicates


def merge(teacher: Sequence[Trajectory], rollouts: Sequence[Trajectory], out: Path) -> int:
    """Write teacher data + rollouts (teacher first) to ``out`` atomically; returns the line count."""
    write_trajectories(out, [*teacher, *rollouts])
    return len(teacher) + len(rollouts)


def sample_episodes(system: str, adapters: str, tasks, samples: int, *, root: Path, base_model: str | None,
                    temperature: float, seed: int, limits, prompt_dir: str | None, pool_size: int,
                    engine: str, dtype: str, teacher: str) -> list[Trajectory]:
    """Every task played ``samples`` times by the team behind ``adapters``, sampling at ``temperature``."""
    from prost_lightning.agents import PromptSet, run_episodes, system_roles
    from prost_lightning.agents.evaluate import load_trained
    from prost_lightning.agents.factory import model_policies
    from prost_lightning.agents.runner import start_pool

    roles = system_roles(system)
    model, tokenizer, adapter_for, num_parameters = load_trained(roles, adapters=adapters, base_model=base_model,
                                                                 dtype=dtype)
    policies = model_policies(model, tokenizer, roles, adapter_for, num_parameters=num_parameters,
                              max_batch_size=pool_size, engine=engine, do_sample=temperature > 0,
                              temperature=temperature or 1.0, seed=seed)
    repeated = [task for task in tasks for _ in range(samples)]
    with start_pool(root, min(pool_size, len(repeated)), 30) as pool:
        return run_episodes(system, repeated, pool, policies, limits=limits, prompts=PromptSet(prompt_dir),
                            teacher=teacher)


def _last_checkpoint(run_dir: Path) -> tuple[Path, int]:
    """(the run's newest checkpoint, epochs it has trained)."""
    import torch

    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise ConfigError(f"{run_dir}/checkpoints: no .ckpt to resume from; use --resume false (fresh adapters) "
                          "or a run trained with checkpointing on")
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    return checkpoints[-1], int(state["epoch"]) + 1


def _run_dir(path: str | Path) -> Path:
    run = Path(path)
    if (run / "adapters").is_dir():
        return run
    if run.name == "adapters" and run.is_dir():
        return run.parent
    raise ConfigError(f"--run {run}: not a training run folder (expected {run}/adapters/<role>/); give "
                      "<train dir>/lightning_logs/version_N")


def fine_tune(config: str, train_file: Path, train_dir: Path, *, base_model: str, roles: Sequence[str],
              previous: Path, resume: bool, epochs: int, fit_args: Sequence[str]) -> Path:
    """One ``prost fit`` on the merged data; returns the new run folder."""
    from prost_lightning.cli import lightning_main
    from prost_lightning.demo import _latest_version

    args = ["fit", "--config", config, "--trainer.default_root_dir", str(train_dir), "--data.train_file", str(train_file),
            "--model.base_model", base_model, "--model.roles", json.dumps(list(roles)),
            "--data.repeated_tasks", "true", *fit_args]  # several verified episodes of one task are meant
    if resume:
        checkpoint, trained = _last_checkpoint(previous)
        args += ["--ckpt_path", str(checkpoint), "--trainer.max_epochs", str(trained + epochs)]
    lightning_main(args)
    return _latest_version(train_dir)


def improve(
    run: str,
    teacher_file: str,
    config: str = "experiments/demo.yaml",
    root: str = "worlds/mini",
    out: str = "runs/improve",
    rounds: int = 1,
    samples: int = 4,
    temperature: float = 0.7,
    split: str = "train",
    task_ids: list[str] | None = None,
    max_tasks: int | None = None,
    resume: bool = True,
    epochs: int = 1,
    eval_split: str | None = "test_normal",
    eval_max_tasks: int | None = None,
    system: str = "planner_executor",
    base_model: str = "smollm2",
    fit_args: list[str] | None = None,
    prompt_dir: str | None = "experiments/prompts/compact",
    max_steps_per_subtask: int = 3,
    max_subtasks: int = 5,
    max_new_tokens: int = 96,
    planner_max_new_tokens: int = 40,
    pool_size: int = 8,
    engine: str = "hf",
    dtype: str = "auto",
    seed: int = 0,
) -> dict:
    """Rejection-sampling fine-tuning: sample on train tasks, keep verified episodes, fine-tune, repeat.

    Args:
        run: the trained team: a run folder <train dir>/lightning_logs/version_N (adapters/, checkpoints/).
        teacher_file: the teacher trajectories the team was trained on; merged with the kept rollouts.
        config: the LightningCLI config of the fine-tuning (the one that trained ``run``).
        root: mini-world root.
        out: output folder: round_<r>/{samples,train}.jsonl, round_<r>/train (the fit), report.json.
        rounds: improvement rounds R.
        samples: episodes per train task and round (N).
        temperature: sampling temperature T (0 = greedy: every sample of a task is the same).
        split: split to sample from; held-out splits (dev, test*) are refused.
        task_ids: sample these tasks instead of the split (refused if any is in a held-out split).
        max_tasks: sample only the first N tasks of the split.
        resume: true = continue the previous run's adapters and optimizer for ``epochs`` more epochs;
            false = fresh adapters, trained with the config's whole schedule on the merged data.
        epochs: resume=true: epochs per round.
        eval_split: held-out split evaluated after each round (evaluation only); null = none.
        eval_max_tasks: evaluate only the first N tasks of eval_split.
        system: the agent system.
        base_model: the team's base model (smollm2 | tiny | a folder).
        fit_args: extra `prost fit` arguments for every round.
        prompt_dir: prompt overrides (the same the team was trained with).
        max_steps_per_subtask: executor replies per sub-task (code attempts + report).
        max_subtasks: sub-tasks the planner may emit.
        max_new_tokens: generated tokens per executor call.
        planner_max_new_tokens: generated tokens per planner call.
        pool_size: AppWorld servers = episodes in parallel.
        engine: local rollout engine: hf | hf_generate.
        dtype: rollout weights: auto (bfloat16 where bf16 is fast, else float32) | float32 | bfloat16.
        seed: sampling seed (round r uses seed + r).
    """
    from prost_lightning.agents import load_tasks, system_roles
    from prost_lightning.agents.episode import Limits
    from prost_lightning.agents.evaluate import evaluate_system
    from prost_lightning.backbone import fast_bf16
    from prost_lightning.env.tasks import load_splits, require_world_root

    refuse_held_out(split)
    if rounds < 1 or samples < 1 or epochs < 1:
        raise ConfigError(f"rounds, samples and epochs must be >= 1 (got {rounds}, {samples}, {epochs})")
    if temperature < 0:
        raise ConfigError(f"temperature: {temperature} < 0; give 0 (greedy) or a positive temperature such as 0.7")
    root_path = require_world_root(root)
    previous = _run_dir(run)
    teacher = read_trajectories(teacher_file)
    out_dir = check_writable(out, "--out", folder=True)  # fails now, not after an hour
    roles = system_roles(system)
    held = {t for name, ids in load_splits(root_path).items() if name.startswith(HELD_OUT_PREFIXES) for t in ids}
    leaked = sorted(held & set(task_ids or []))
    if leaked:
        raise ConfigError(f"task_ids: {leaked[:5]} belong to held-out splits (dev/test*); sample training tasks only")
    tasks = load_tasks(root_path, split, task_ids, max_tasks)
    if eval_split is not None and eval_split == split:
        raise ConfigError(f"eval_split '{eval_split}' is the split sampled from; evaluate on a held-out split")
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = ("bfloat16" if fast_bf16() else "float32") if dtype == "auto" else dtype
    limits = Limits(max_subtasks=max_subtasks, max_steps_per_subtask=max_steps_per_subtask,
                    max_new_tokens=max_new_tokens, role_max_new_tokens={"planner": planner_max_new_tokens})
    rollouts: list[Trajectory] = []
    report: dict = {"split": split if task_ids is None else None, "tasks": len(tasks), "samples_per_task": samples, "temperature": temperature,
                    "resume": resume, "teacher_trajectories": len(teacher), "eval_split": eval_split, "rounds": []}
    for r in range(1, rounds + 1):
        round_dir = out_dir / f"round_{r}"
        clock, wall = time.monotonic(), {}
        sampled = sample_episodes(system, str(previous / "adapters"), tasks, samples, root=root_path,
                                  base_model=base_model, temperature=temperature, seed=seed + r, limits=limits,
                                  prompt_dir=prompt_dir, pool_size=pool_size, engine=engine, dtype=dtype,
                                  teacher=f"rollout:improve-round{r}")
        write_trajectories(round_dir / "samples.jsonl", sampled)
        wall["sample"], clock = round(time.monotonic() - clock, 1), time.monotonic()
        kept, duplicates = keep_verified(sampled, [*teacher, *rollouts])
        rollouts += kept
        train_file = round_dir / "train.jsonl"
        size = merge(teacher, rollouts, train_file)
        previous = fine_tune(config, train_file, round_dir / "train", base_model=base_model, roles=roles,
                             previous=previous, resume=resume, epochs=epochs, fit_args=fit_args or [])
        wall["fine_tune"], clock = round(time.monotonic() - clock, 1), time.monotonic()
        held_out = None
        if eval_split is not None:
            held_out = evaluate_system(system=system, split=eval_split, root=str(root_path), max_tasks=eval_max_tasks,
                                       adapters=str(previous / "adapters"), base_model=base_model, limits=limits,
                                       pool_size=pool_size, max_batch_size=pool_size, engine=engine, dtype=dtype,
                                       prompt_dir=prompt_dir, out=str(round_dir / f"eval_{eval_split}.jsonl"),
                                       progress=False)
            wall["eval"] = round(time.monotonic() - clock, 1)
        passed = sum(1 for t in sampled if t.outcome and t.outcome.success)
        entry = {"round": r, "episodes": len(sampled), "passed": passed,
                 "sample_success": round(100.0 * passed / max(1, len(sampled)), 1),
                 "tasks_solved": len({t.task_id for t in sampled if t.outcome and t.outcome.success}),
                 "kept": len(kept), "duplicates": duplicates, "kept_total": len(rollouts), "train_trajectories": size,
                 "held_out": None if held_out is None else {"tgc": held_out["goal"]["tgc"], "sgc": held_out["goal"]["sgc"],
                                                            "num_tasks": held_out["goal"]["num_tasks"]},
                 "run_dir": str(previous), "wall_time_s": wall}
        report["rounds"].append(entry)
        write_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
        print(f"[improve] round {r}: sample success {entry['sample_success']:.1f}% ({passed}/{len(sampled)}), "
              f"kept {len(kept)} (+{duplicates} duplicates), train set {size}"
              + (f", held-out TGC {entry['held_out']['tgc']:.1f}" if held_out else ""))
    return report
