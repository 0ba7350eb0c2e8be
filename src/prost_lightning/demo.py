"""The main job (`make demo`): does ProST fine-tuning make a team of SmolLM2s better at AppWorld?

Phases (each a function below, each timed in the report):

1. ``build_world``: the mini-world (real AppWorld engine, our tasks) unless it exists;
2. ``collect``: teacher trajectories of the train split: the oracle, with ``perturb`` of its executor
   sub-tasks starting with a realistic mistake played in AppWorld and then repaired (the mistake is
   context only in training; docs/recovery.md); tasks whose perturbed episode failed are filled in
   by the plain oracle;
3. ``eval_untrained``: the untrained team (the base model behind zero-initialised adapters) on every
   task of the held-out splits (``test_normal``: unseen cells of trained families;
   ``test_challenge``: an untrained family), reported per split;
4. ``fine_tune``: the planner and executor adapters with ProST on CPU (`experiments/demo.yaml`);
5. ``improve`` (``improve_rounds`` > 0): rejection-sampling rounds on the train tasks (`prost improve`);
6. ``eval_trained``: the trained team on the same held-out tasks;
7. report.json, report.md and report.png, with the recipe, the size picked for this CPU and run
   (optimizer steps that fit the time budget after the measured first evaluation) and why, and
   the wall time per phase.

Every number in the report is measured in this run; nothing is carried over from elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from prost_lightning.backbone import fast_bf16
from prost_lightning.env.tasks import is_world_root, load_task, load_task_ids
from prost_lightning.errors import ConfigError
from prost_lightning.files import check_writable, write_atomic
from prost_lightning.metrics import scenario_of


def held_out_tasks(root: Path, split: str, scenarios: int | None) -> list[str]:
    """All variants of the first `scenarios` scenarios of the split (SGC needs whole scenarios)."""
    ids = load_task_ids(root, split)
    if scenarios is None:
        return ids
    chosen: list[str] = []
    for scenario in dict.fromkeys(scenario_of(t) for t in ids):
        if len(chosen) >= scenarios * 3:
            break
        chosen += [t for t in ids if scenario_of(t) == scenario]
    return chosen


def _train_tasks(root: Path, variants: int | None) -> list[str]:
    """``variants`` tasks of each train scenario (None = all), rotating which ones across scenarios.

    A family's instruction phrasing depends on the variant number, so taking variant 1 of every
    scenario would train one phrasing per family; rotating (scenario i takes variants i, i+1, ...
    mod 3) trains every phrasing of every family that has enough scenarios, at the same cost.
    """
    ids = load_task_ids(root, "train")
    if variants is None:
        return ids
    by_scenario: dict[str, list[str]] = {}
    for task_id in ids:
        by_scenario.setdefault(task_id.rsplit("_", 1)[0], []).append(task_id)
    chosen: list[str] = []
    for i, tasks in enumerate(by_scenario.values()):
        tasks = sorted(tasks, key=lambda t: int(t.rsplit("_", 1)[1]))
        chosen += [tasks[(i + j) % len(tasks)] for j in range(min(variants, len(tasks)))]
    return chosen


def _latest_version(train_dir: Path) -> Path:
    versions = sorted(train_dir.glob("lightning_logs/version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise ConfigError(f"{train_dir}: fit wrote no lightning_logs/version_*; see its output above")
    return versions[-1]


# Seconds per optimizer step of the demo's fit (batch 4, SmolLM2-135M, LoRA on attention + MLP, the
# recovery data, whose samples carry the mistake and its error as context): bf16-mixed on a 2-core
# AMD EPYC with AVX512-BF16, 893 s for 99 steps (plain oracle data: 7.5 s/step); 32-true on a 2-core
# AMD EPYC without AVX-512, where the demo trains fp32, 280 s for 30 steps (2026-12-06; fp32 on the
# AVX512 machine measured 17.1 s, docs/training-notes.md). Other CPUs differ: the report shows the projection.
SECONDS_PER_STEP = {"bf16-mixed": 9.0, "32-true": 9.3}
MIN_STEPS_PER_EPOCH = 10  # below this the fit teaches nothing worth evaluating: the budget gives way
REPORT_MARGIN_S = 60  # reports, plots and the model loads the projection does not count


def plan_steps(size: str, *, budget_s: float, elapsed_s: float, eval_s: float, precision: str,
               epochs: int, steps_per_epoch: int | None = None) -> dict:
    """Optimizer steps per epoch of the fit, and why.

    ``auto``: what the time budget leaves after what has run (``elapsed_s``) and a second held-out
    evaluation as long as the first one (``eval_s``, measured in this run), at this precision's
    measured seconds per step; at least MIN_STEPS_PER_EPOCH. ``full``: no cap. ``steps``: the
    given ``steps_per_epoch``.
    """
    if size == "full":
        return {"size": size, "steps_per_epoch": None, "why": "every batch of every epoch (no step cap)"}
    if size == "steps":
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ConfigError("size: 'steps' needs --steps_per_epoch N (N >= 1)")
        return {"size": size, "steps_per_epoch": steps_per_epoch, "why": f"{steps_per_epoch} steps per epoch, as asked"}
    if size != "auto":
        raise ConfigError(f"size: '{size}' is not one of auto | full | steps")
    per_step = SECONDS_PER_STEP.get(precision, SECONDS_PER_STEP["32-true"])
    left = budget_s - elapsed_s - eval_s - REPORT_MARGIN_S
    fits = int(left // (per_step * epochs)) if left > 0 else 0
    steps = max(MIN_STEPS_PER_EPOCH, fits)
    cpu = ("bf16 is fast on this CPU (AVX512-BF16/AMX)" if precision.startswith("bf16") else
           "bf16 is emulated on this CPU, so training and evaluation run fp32")
    why = (f"{cpu}; budget {budget_s:.0f} s - {elapsed_s:.0f} s spent - {eval_s:.0f} s for the trained team's "
           f"evaluation (as long as the untrained one) - {REPORT_MARGIN_S} s = {max(0.0, left):.0f} s of training "
           f"at ~{per_step} s/step over {epochs} epochs = {fits} steps per epoch")
    if fits < MIN_STEPS_PER_EPOCH:
        why += (f"; raised to the minimum of {MIN_STEPS_PER_EPOCH}, so this run will exceed the budget by about "
                f"{(MIN_STEPS_PER_EPOCH - fits) * per_step * epochs:.0f} s")
    return {"size": size, "steps_per_epoch": steps, "why": why, "budget_s": budget_s,
            "projected_fit_s": round(steps * per_step * epochs), "seconds_per_step": per_step}


def _epochs(config: str, fit_args: list[str]) -> int:
    """trainer.max_epochs the fit will run: the last --trainer.max_epochs in fit_args, else the config's."""
    import yaml

    for flag, value in reversed(list(zip(fit_args, fit_args[1:], strict=False))):
        if flag == "--trainer.max_epochs":
            return int(value)
    return int(((yaml.safe_load(Path(config).read_text()) or {}).get("trainer") or {}).get("max_epochs", 1))


def collect_phase(root: Path, out_dir: Path, system: str, train_tasks: list[str], *, perturb: float,
                  perturb_seed: int, prompt_dir: str | None, pool_size: int) -> tuple[Path, dict]:
    """Perturbed oracle episodes, then the plain oracle for any task whose perturbed episode failed."""
    from prost_lightning.collect import collect
    from prost_lightning.trajectory import read_trajectories

    train_file = out_dir / "trajectories" / f"{system}_train.jsonl"
    # the oracle generates nothing, so collection is bound by the servers' CPU: one per core
    servers = min(pool_size, os.cpu_count() or 1)
    perturbed = collect(teacher="oracle", system=system, root=str(root), out=str(train_file), task_ids=train_tasks,
                        prompt_dir=prompt_dir, pool_size=servers, perturb=perturb, perturb_seed=perturb_seed)
    filled = collect(teacher="oracle", system=system, root=str(root), out=str(train_file), task_ids=train_tasks,
                     prompt_dir=prompt_dir, pool_size=servers) if perturb else perturbed
    trajectories = read_trajectories(train_file)
    executor = [c for t in trajectories for c in t.conversations if c.role == "executor"]
    with_mistake = sum(1 for c in executor if any(m.context_only for m in c.messages))
    return train_file, {
        "trajectories": len(trajectories), "executor_subtasks": len(executor), "subtasks_with_mistake": with_mistake,
        "mistake_share": round(with_mistake / max(1, len(executor)), 3),
        "perturbed_rejected": perturbed["rejection_reasons"], "filled_by_plain_oracle": filled["kept"] if perturb else 0,
    }


def evaluate_phase(name: str, adapters: Path, held_out: dict[str, list[str]], out_dir: Path, *, system: str,
                   root: Path, base_model: str, limits, pool_size: int, engine: str, bf16: bool,
                   prompt_dir: str | None) -> dict[str, dict]:
    """{split: summary + sub-task error rates} of the team behind ``adapters`` on every held-out task."""
    from prost_lightning.agents.evaluate import evaluate_system
    from prost_lightning.metrics import subtask_error_rates
    from prost_lightning.trajectory import read_trajectories

    results = {}
    for split, task_ids in held_out.items():
        episodes = episodes_file(out_dir, name, split)
        summary = evaluate_system(system=system, split=None, root=str(root), task_ids=task_ids, adapters=str(adapters),
                                  base_model=base_model, limits=limits, pool_size=min(pool_size, len(task_ids)),
                                  max_batch_size=pool_size, engine=engine, dtype="bfloat16" if bf16 else "float32",
                                  prompt_dir=prompt_dir, out=str(episodes))
        outcomes = [t.outcome for t in read_trajectories(episodes)]
        summary["subtask_error_rates"] = {str(k): round(v, 3) for k, v in subtask_error_rates(outcomes).items()}
        results[split] = summary  # with the failure diagnostics `evaluate_system` counted
    return results


def episodes_file(out_dir: Path, team: str, split: str) -> Path:
    """Where a demo run keeps a team's (untrained | trained) episodes of one held-out split."""
    return out_dir / "eval" / f"{team}_{split}.jsonl"


def _check_counts(options: dict[str, tuple[float | None, float]]) -> None:
    """Refuse, before any work, options below their minimum ({name: (value, minimum)}; None = not given)."""
    bad = [f"--{name} {value} (must be >= {low})" for name, (value, low) in options.items()
           if value is not None and value < low]
    if bad:
        raise ConfigError("; ".join(bad))


def diagnostics_outdated(summary: dict) -> bool:
    """True for a split's summary recorded before the failure diagnostics, or their per-kind counts, existed."""
    return "kinds" not in (summary.get("diagnostics") or {})


def diagnose(episodes: Path, root: Path) -> dict:
    """``failure_diagnostics`` of an episodes file, against the ground-truth plans of the world's tasks
    (what `prost eval` counts as it plays, for episodes already on disk)."""
    from prost_lightning.agents.evaluate import diagnose_against
    from prost_lightning.trajectory import read_trajectories

    trajectories = read_trajectories(episodes)
    return diagnose_against(trajectories, [load_task(root, task_id) for task_id in {t.task_id for t in trajectories}])


def untrained_phase(untrained_dir: Path, held_out: dict[str, list[str]], out_dir: Path, *, roles: list[str],
                    shared: Path | None, evaluation: dict) -> tuple[dict[str, dict], float | None]:
    """The untrained team's evaluation, and the seconds it took when ``shared`` already held it (else None).

    The untrained team is the base model behind zero-initialised adapters, decoded greedily, so its
    evaluation depends on the evaluation settings alone, never on the fit's seed or data: runs that
    share them (`prost demo-table`'s cells) evaluate it once into ``shared`` and copy it from there.
    """
    from dataclasses import asdict

    from prost_lightning.model import RoleLoRAModule

    plain = {k: asdict(v) if k == "limits" else str(v) if isinstance(v, Path) else v for k, v in evaluation.items()}
    settings = {"held_out": held_out, "roles": roles, "prompts": _prompts_digest(evaluation["prompt_dir"]), **plain}
    files = {split: episodes_file(out_dir, "untrained", split).name for split in held_out}
    record = shared / "untrained.json" if shared else None
    if record and record.is_file():
        kept = json.loads(record.read_text())
        if kept.get("settings") == settings and all((shared / f).is_file() for f in files.values()):
            for split, name in files.items():
                write_atomic(episodes_file(out_dir, "untrained", split), (shared / name).read_bytes())
            print(f"[demo] eval_untrained: reused from {shared} (same settings; measured in {kept['seconds']:.0f} s)")
            for split, summary in kept["summaries"].items():
                if diagnostics_outdated(summary):
                    summary["diagnostics"] = diagnose(episodes_file(out_dir, "untrained", split), evaluation["root"])
            return kept["summaries"], kept["seconds"]
    started = time.monotonic()
    # zero-initialised LoRA B matrices: exactly the base model's outputs, through the same code path
    RoleLoRAModule(base_model=evaluation["base_model"], roles=roles).export_adapters(untrained_dir)
    summaries = evaluate_phase("untrained", untrained_dir, held_out, out_dir, **evaluation)
    if record:
        for split, name in files.items():
            write_atomic(shared / name, episodes_file(out_dir, "untrained", split).read_bytes())
        write_atomic(record, json.dumps({"settings": settings, "seconds": round(time.monotonic() - started, 1),
                                         "summaries": summaries}, indent=2) + "\n")  # last: the files are complete
    return summaries, None


def _prompts_digest(prompt_dir: str | None) -> str:
    """A hash of every prompt file an episode may read (built-in and overrides): an edited prompt is another team."""
    import hashlib

    folders = [Path(__file__).parent / "agents" / "prompts", *([Path(prompt_dir)] if prompt_dir else [])]
    digest = hashlib.sha256()
    for path in sorted(f for folder in folders for f in folder.rglob("*.txt")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def finished_fit(version: Path) -> bool:
    """A fit folder (lightning_logs/version_N) with exported adapters and a checkpoint to resume from."""
    return (version / "adapters").is_dir() and any((version / "checkpoints").glob("*.ckpt"))


def fine_tune_phase(config: str, train_file: Path, train_dir: Path, *, precision: str, base_model: str,
                    roles: list[str], steps_per_epoch: int | None, fit_args: list[str]) -> Path:
    from prost_lightning.cli import lightning_main

    cap = ["--trainer.limit_train_batches", str(steps_per_epoch)] if steps_per_epoch else []
    lightning_main(["fit", "--config", config, "--trainer.default_root_dir", str(train_dir),
                    "--data.train_file", str(train_file), "--trainer.precision", precision,
                    "--model.base_model", base_model, "--model.roles", json.dumps(roles), *cap, *fit_args])
    return _latest_version(train_dir)


def improve_phase(version: Path, train_file: Path, out_dir: Path, *, config: str, root: Path, train_tasks: list[str],
                  rounds: int, samples: int, temperature: float, system: str, base_model: str,
                  prompt_dir: str | None, limits, pool_size: int, engine: str, fit_args: list[str]) -> dict:
    """``rounds`` of `prost improve` on the train tasks, resuming the fit; no held-out evaluation inside."""
    from prost_lightning.improve import improve

    planner_tokens = limits.role_max_new_tokens.get("planner", limits.max_new_tokens)
    return improve(run=str(version), teacher_file=str(train_file), config=config, root=str(root),
                   out=str(out_dir / "improve"), rounds=rounds, samples=samples, temperature=temperature,
                   task_ids=train_tasks, eval_split=None, system=system, base_model=base_model, prompt_dir=prompt_dir,
                   max_steps_per_subtask=limits.max_steps_per_subtask, max_subtasks=limits.max_subtasks,
                   max_new_tokens=limits.max_new_tokens, planner_max_new_tokens=planner_tokens,
                   pool_size=pool_size, engine=engine, fit_args=fit_args)


def _recipe(perturb: float, improve_rounds: int, improve_samples: int, limits) -> dict:
    """What the team was trained with, in words and numbers (the report's ``recipe``)."""
    data = ["oracle trajectories"]
    if perturb:
        data.append(f"recovery: {perturb:g} of executor sub-tasks start with a mistake (context only) and its repair")
    if improve_rounds:
        data.append(f"{improve_rounds} self-improvement round(s)")
    return {
        "data": data, "perturb": perturb, "improve_rounds": improve_rounds,
        "improve_samples": improve_samples if improve_rounds else 0,
        "budgets": {"max_subtasks": limits.max_subtasks, "max_steps_per_subtask": limits.max_steps_per_subtask,
                    "max_new_tokens": limits.max_new_tokens,
                    "planner_max_new_tokens": limits.role_max_new_tokens.get("planner", limits.max_new_tokens)},
        "replanning": "the planner sees every sub-task's report and may issue another sub-task, but a sub-task "
                      "whose executor runs out of replies ends the episode (docs/recovery.md)",
    }


def demo(
    out: str = "runs/demo",
    root: str = "worlds/mini",
    config: str = "experiments/demo.yaml",
    base_model: str = "smollm2",
    fit_args: list[str] | None = None,
    system: str = "planner_executor",
    eval_split: str = "test_normal",
    challenge_split: str | None = "test_challenge",
    eval_scenarios: int | None = None,
    train_variants: int | None = None,
    perturb: float = 0.3,
    perturb_seed: int = 0,
    improve_rounds: int = 0,
    improve_samples: int = 2,
    improve_temperature: float = 0.7,
    size: str = "auto",
    time_budget_s: float = 1800,
    steps_per_epoch: int | None = None,
    prompt_dir: str | None = "experiments/prompts/compact",
    pool_size: int = 10,
    precision: str = "auto",
    max_new_tokens: int = 96,
    planner_max_new_tokens: int = 40,
    max_steps_per_subtask: int = 3,
    max_subtasks: int = 5,
    engine: str = "hf",
    seed: int = 0,
    untrained_eval: str | None = None,
    fit_from: str | None = None,
) -> dict:
    """Run the main job end to end on the embedded defaults and write the report.

    Args:
        out: output folder (report.json, report.md, report.png, trajectories, the training run).
        root: mini-world root; built when missing.
        config: the LightningCLI config of the fine-tuning step.
        base_model: the team's base model (smollm2 = the embedded SmolLM2-135M-Instruct; tiny for a smoke run).
        fit_args: extra `prost fit` arguments for the fine-tuning step, e.g. [--trainer.max_epochs, "1"].
        system: the agent system to train and evaluate.
        eval_split: held-out split of unseen cells of trained families (never trained or tuned on).
        challenge_split: held-out split of a family absent from training, reported separately; null = skip.
        eval_scenarios: evaluate the first N scenarios of each held-out split (all 3 variants each);
            null = every task.
        train_variants: train on N of the 3 variants of each train scenario (rotated so every
            phrasing is trained); null = all.
        perturb: share of the teacher's executor sub-tasks that start with a realistic mistake played
            in AppWorld, then the repair (the mistake is context only in training); 0 = plain oracle.
        perturb_seed: seed of which sub-tasks get which mistake.
        improve_rounds: rejection-sampling rounds after fine-tuning (`prost improve`; each samples
            every train task ``improve_samples`` times: about an hour per round on 2 CPU cores).
        improve_samples: episodes per train task and round.
        improve_temperature: sampling temperature of the improve rounds.
        size: optimizer steps per epoch of the fit: auto = what ``time_budget_s`` leaves after the
            untrained team's measured evaluation (a CPU without fast bf16 trains and evaluates
            fp32) | full = no cap | steps = ``steps_per_epoch``. The
            report says what was picked and the arithmetic.
        time_budget_s: size auto: the wall time the whole run should fit in.
        steps_per_epoch: size steps: optimizer steps per epoch.
        prompt_dir: prompt overrides used for collection, training data and both evaluations alike.
        pool_size: AppWorld servers, i.e. episodes in parallel (generation is batched across them).
        precision: training precision; auto = bf16-mixed on CPUs where bf16 is fast (AVX512-BF16 /
            AMX), else 32-true. Evaluation uses bf16 weights in the same cases, fp32 otherwise.
        max_new_tokens: generated tokens per executor call (an oracle step is at most ~80 SmolLM2 tokens).
        planner_max_new_tokens: generated tokens per planner call (a sub-task is one short sentence).
        max_steps_per_subtask: executor replies per sub-task: code attempts + the report (3 = a retry).
        max_subtasks: sub-tasks the planner may emit per episode.
        engine: rollout engine of both evaluations: hf (prefix caches, every role in one batch; the
            fastest on CPU, `prost bench --only rollout_engines`) | hf_generate (plain generate) |
            vllm (a managed vLLM server, `make serve-venv`; for GPUs).
        seed: seed of the fit (LoRA initialisation and batch order); the teacher data stays the same
            (``perturb_seed``), so runs of several seeds differ by training alone (`prost demo-table`).
        untrained_eval: a folder shared by runs of the same evaluation settings: the untrained team
            is evaluated into it once and copied from it after (it depends on those settings alone:
            greedy decoding, zero-initialised adapters); null = evaluate it in this run.
        fit_from: a finished fit of this run's data, config, size and seed (a lightning_logs/version_N
            folder) to take instead of fitting again: `prost demo-table` gives an improve cell the
            fit of the recovery cell of its seed, so the two differ by the self-improvement round alone.
    """
    from prost_lightning.agents import system_roles
    from prost_lightning.agents.episode import Limits
    from prost_lightning.env import world

    started = time.monotonic()
    out_dir, root_dir = Path(out), Path(root)
    check_writable(out_dir, "--out", folder=True)  # an unwritable output fails now, not after 30 minutes
    if size not in ("auto", "full", "steps"):
        raise ConfigError(f"size: '{size}' is not one of auto | full | steps")
    _check_counts({"pool_size": (pool_size, 1), "improve_rounds": (improve_rounds, 0),
                   "improve_samples": (improve_samples, 1), "time_budget_s": (time_budget_s, 1),
                   "max_new_tokens": (max_new_tokens, 1), "planner_max_new_tokens": (planner_max_new_tokens, 1),
                   "max_steps_per_subtask": (max_steps_per_subtask, 1), "max_subtasks": (max_subtasks, 1),
                   "eval_scenarios": (eval_scenarios, 1), "train_variants": (train_variants, 1),
                   "steps_per_epoch": (steps_per_epoch, 1)})
    if (size == "steps") != (steps_per_epoch is not None):  # found now, not after the untrained evaluation
        raise ConfigError("--size steps needs --steps_per_epoch N" if size == "steps" else
                          f"--steps_per_epoch {steps_per_epoch}: read only with --size steps (here --size {size}); "
                          "add --size steps or leave --steps_per_epoch out")
    if fit_from and not finished_fit(Path(fit_from)):
        raise ConfigError(f"--fit_from {fit_from}: not a finished fit (it needs adapters/ and checkpoints/*.ckpt); "
                          "give a lightning_logs/version_N folder of `prost fit`, or leave --fit_from out")
    out_dir.mkdir(parents=True, exist_ok=True)
    bf16 = fast_bf16() if precision == "auto" else precision.startswith("bf16")
    precision = precision if precision != "auto" else ("bf16-mixed" if bf16 else "32-true")
    roles = list(system_roles(system))
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        phases[name] = round(now - since, 1)
        print(f"[demo] {name}: {phases[name]:.0f} s")
        return now

    t = time.monotonic()
    if not is_world_root(root_dir):
        world.build(str(root_dir))
    t = phase("build_world", t)

    train_tasks = _train_tasks(root_dir, train_variants)
    train_file, data = collect_phase(root_dir, out_dir, system, train_tasks, perturb=perturb,
                                     perturb_seed=perturb_seed, prompt_dir=prompt_dir, pool_size=pool_size)
    t = phase("collect", t)

    limits = Limits(max_subtasks=max_subtasks, max_steps_per_subtask=max_steps_per_subtask,
                    max_new_tokens=max_new_tokens, role_max_new_tokens={"planner": planner_max_new_tokens})
    splits = [eval_split] + ([challenge_split] if challenge_split else [])
    held_out = {split: held_out_tasks(root_dir, split, eval_scenarios) for split in splits}
    evaluation = dict(system=system, root=root_dir, base_model=base_model, limits=limits, pool_size=pool_size,
                      engine=engine, bf16=bf16, prompt_dir=prompt_dir)

    before, reused_s = untrained_phase(out_dir / "untrained_adapters", held_out, out_dir, roles=roles,
                                       shared=Path(untrained_eval) if untrained_eval else None, evaluation=evaluation)
    t = phase("eval_untrained", t)
    sizing = plan_steps(size, budget_s=time_budget_s, elapsed_s=time.monotonic() - started,
                        eval_s=reused_s or phases["eval_untrained"], precision=precision, steps_per_epoch=steps_per_epoch,
                        epochs=_epochs(config, list(fit_args or [])) + improve_rounds)  # a round resumes for one epoch
    print(f"[demo] size {sizing['size']}: {sizing['steps_per_epoch'] or 'all'} steps per epoch ({sizing['why']})")

    seeded = ["--seed_everything", str(seed), "--data.seed", str(seed), *(fit_args or [])]
    if fit_from:
        version = Path(fit_from)
        print(f"[demo] fine_tune: reused from {version}")
    else:
        version = fine_tune_phase(config, train_file, out_dir / "train", precision=precision, base_model=base_model,
                                  roles=roles, steps_per_epoch=sizing["steps_per_epoch"], fit_args=seeded)
    t = phase("fine_tune", t)

    improved = None
    if improve_rounds:
        improved = improve_phase(version, train_file, out_dir, config=config, root=root_dir, train_tasks=train_tasks,
                                 rounds=improve_rounds, samples=improve_samples, temperature=improve_temperature,
                                 system=system, base_model=base_model, prompt_dir=prompt_dir, limits=limits,
                                 pool_size=pool_size, engine=engine, fit_args=[
                                     "--trainer.precision", precision,
                                     *(["--trainer.limit_train_batches", str(sizing["steps_per_epoch"])]
                                       if sizing["steps_per_epoch"] else []), *seeded])
        version = Path(improved["rounds"][-1]["run_dir"])
        t = phase("improve", t)

    after = evaluate_phase("trained", version / "adapters", held_out, out_dir, **evaluation)
    phase("eval_trained", t)

    fit_summary_path = version / "fit_summary.json"
    recipe = {**_recipe(perturb, improve_rounds, improve_samples, limits), "perturb_seed": perturb_seed, **data,
              "untrained_eval": f"reused from {untrained_eval}" if reused_s is not None else "measured in this run",
              "fit": f"reused from {fit_from}" if fit_from else "trained in this run",
              "seed": seed, "train_tasks": len(train_tasks), "train_variants": train_variants or 3, "size": sizing["size"],
              "size_reason": sizing["why"], "steps_per_epoch": sizing["steps_per_epoch"]}
    report = {
        "system": system,
        "base_model": "SmolLM2-135M-Instruct" if base_model == "smollm2" else base_model,
        "precision": precision,
        "recipe": recipe,
        "eval_splits": splits,
        "eval_tasks": held_out,
        "train_tasks": len(train_tasks),
        "untrained": before,
        "trained": after,
        "episodes": {split: _episode_outcomes(ids, {name: episodes_file(out_dir, name, split)
                                                    for name in ("untrained", "trained")})
                     for split, ids in held_out.items()},
        "training": json.loads(fit_summary_path.read_text()) if fit_summary_path.exists() else None,
        "improve": improved,
        "run_dir": str(version),
        "wall_time_s": {**phases, "total": round(time.monotonic() - started, 1)},
    }
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out_dir / "report.md", render_markdown(report))
    plot_before_after(report, out_dir / "report.png")
    print(render_markdown(report))
    return report


def _episode_outcomes(task_ids: list[str], files: dict[str, Path]) -> dict[str, dict[str, str]]:
    """{task_id: {run: "success" | failure reason (sub-task where it failed)}} from the eval trajectories."""
    from prost_lightning.trajectory import read_trajectories

    table: dict[str, dict[str, str]] = {t: {} for t in task_ids}
    for name, path in files.items():
        for trajectory in read_trajectories(path):
            outcome = trajectory.outcome
            table[trajectory.task_id][name] = ("success" if outcome.success else
                                               f"{outcome.failure_reason} (sub-task {outcome.failed_subtask})")
    return table


def render_markdown(report: dict) -> str:
    from prost_lightning.agents.episode_summary import describe_diagnostics

    recipe = report["recipe"]
    lines = [
        f"# Demo: {report['system']} on {report['base_model']}, held-out splits "
        + ", ".join(f"`{s}`" for s in report["eval_splits"]),
        "",
        f"Recipe: {'; '.join(recipe['data'])}. {recipe['trajectories']} trajectories of {recipe['train_tasks']} train "
        f"tasks ({recipe['subtasks_with_mistake']} of {recipe['executor_subtasks']} executor sub-tasks start with a "
        f"mistake). Size `{recipe['size']}`: {recipe['size_reason']}. Budgets: {json.dumps(recipe['budgets'])}. "
        f"Re-planning: {recipe['replanning']}. Untrained team's evaluation: "
        f"{recipe.get('untrained_eval', 'measured in this run')}; fit: {recipe.get('fit', 'trained in this run')}.",
        "",
    ]
    for split in report["eval_splits"]:
        before, after = report["untrained"][split], report["trained"][split]
        levels = sorted(set(before["goal"]["by_difficulty"]) | set(after["goal"]["by_difficulty"]))
        ks = sorted({int(k) for s in (before, after) for k in s["subtask_error_rates"]})
        lines += [f"## `{split}`: {len(report['eval_tasks'][split])} held-out tasks", "",
                  "| team | TGC | SGC | " + " | ".join(f"TGC d{lv}" for lv in levels)
                  + "".join(f" | err k={k}" for k in ks) + " | LLM calls / task | env steps / task |",
                  "|---|---|---|" + "---|" * (len(levels) + len(ks) + 2)]
        for name, summary in (("untrained", before), ("ProST-trained", after)):
            goal, usage = summary["goal"], summary["usage"]
            cells = [f"{goal['by_difficulty'].get(lv, {}).get('tgc', 0.0):.1f}" for lv in levels]
            cells += [f"{summary['subtask_error_rates'].get(str(k), 0.0):.2f}" for k in ks]
            lines.append(f"| {name} | {goal['tgc']:.1f} | {goal['sgc']:.1f} | " + " | ".join(cells)
                         + f" | {usage['mean_llm_calls']:.1f} | {usage['mean_env_steps']:.1f} |")
        lines += ["", "Failure reasons: untrained " + json.dumps(before["failures"]) +
                  "; trained " + json.dumps(after["failures"]), ""]
        lines += [f"Diagnostics, {name}: {describe_diagnostics(summary['diagnostics'])}."
                  for name, summary in (("untrained", before), ("trained", after)) if "diagnostics" in summary]
        lines += [""] if "diagnostics" in after else []
    training = report.get("training")
    if training:
        lines += [
            f"Training: {training['steps']} steps in {training['train_seconds']} s, "
            f"{training['tokens_per_s']} tokens/s, real-token fraction {training['real_token_fraction']}, "
            f"peak memory {training['peak_memory_gb']} GB; trained tokens {training['trained_tokens']}.",
            "",
        ]
    runs = ("untrained", "trained")
    lines += ["| task | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for split in report["eval_splits"]:
        for task_id, outcomes in report["episodes"][split].items():
            lines.append(f"| {task_id} | " + " | ".join(outcomes.get(r, "-") for r in runs) + " |")
    wall = report["wall_time_s"]
    lines.append("")
    lines.append("Wall time (s): " + ", ".join(f"{k} {v}" for k, v in wall.items()))
    return "\n".join(lines) + "\n"


def plot_before_after(report: dict, path: Path) -> None:
    """One panel per held-out split (TGC, SGC, TGC per difficulty, untrained vs trained) and the wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = report["eval_splits"]
    fig, axes = plt.subplots(1, len(splits) + 1, figsize=(5 * len(splits) + 4, 4))
    for ax, split in zip(axes, splits, strict=False):
        runs = [("untrained", report["untrained"][split]), ("ProST-trained", report["trained"][split])]
        levels = sorted(set(runs[0][1]["goal"]["by_difficulty"]) | set(runs[1][1]["goal"]["by_difficulty"]))
        labels = ["TGC", "SGC"] + [f"TGC d{level}" for level in levels]
        xs = range(len(labels))
        for offset, (name, summary) in zip((-0.2, 0.2), runs, strict=True):
            goal = summary["goal"]
            values = [goal["tgc"], goal["sgc"]] + [goal["by_difficulty"].get(lv, {}).get("tgc", 0.0) for lv in levels]
            bars = ax.bar([x + offset for x in xs], values, width=0.4, label=name)
            ax.bar_label(bars, fmt="%.0f", fontsize=8)  # a 0 must read as measured, not as missing
        ax.set_xticks(list(xs), labels)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% of held-out tasks / scenarios")
        ax.set_title(f"{split}: {len(report['eval_tasks'][split])} tasks")
        ax.legend()

    ax_time = axes[-1]
    wall = {k: v for k, v in report["wall_time_s"].items() if k != "total"}
    ax_time.barh(list(wall), [v / 60 for v in wall.values()], color="gray")
    ax_time.invert_yaxis()
    ax_time.set_xlabel("minutes")
    training = report.get("training") or {}
    throughput = f", training {training['tokens_per_s']} tok/s" if training else ""
    ax_time.set_title(f"wall time {report['wall_time_s']['total'] / 60:.1f} min{throughput}")

    fig.suptitle(f"{report['system']} ({report['base_model']}): before and after ProST fine-tuning "
                 f"(size {report['recipe']['size']})")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, image.getvalue())
