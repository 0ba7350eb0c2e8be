"""The main job (`make demo`): does ProST fine-tuning make a team of SmolLM2s better at AppWorld?

1. build the mini-world (real AppWorld engine, our tasks) unless it exists;
2. collect oracle trajectories of the planner_executor system on the train split;
3. evaluate the untrained team (the base model behind zero-initialised adapters) on held-out tasks;
4. fine-tune the planner and executor adapters with ProST on CPU (`experiments/demo.yaml`);
5. evaluate the trained team on the same held-out tasks;
6. write report.json, report.md and report.png to the output folder.

Every number in the report is measured in this run; nothing is carried over from elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from prost_lightning.backbone import fast_bf16
from prost_lightning.env.tasks import is_world_root
from prost_lightning.errors import ConfigError
from prost_lightning.files import write_atomic


def held_out_tasks(root: Path, split: str, scenarios: int | None) -> list[str]:
    """All variants of the first `scenarios` scenarios of the split (SGC needs whole scenarios)."""
    from prost_lightning.env.tasks import load_task_ids

    ids = load_task_ids(root, split)
    if scenarios is None:
        return ids
    chosen: list[str] = []
    for scenario in dict.fromkeys(t.split("_")[0] for t in ids):
        if len(chosen) >= scenarios * 3:
            break
        chosen += [t for t in ids if t.split("_")[0] == scenario]
    return chosen


def _train_tasks(root: Path, variants: int | None) -> list[str]:
    """``variants`` tasks of each train scenario (None = all), rotating which ones across scenarios.

    A family's instruction phrasing depends on the variant number, so taking variant 1 of every
    scenario would train one phrasing per family; rotating (scenario i takes variants i, i+1, ...
    mod 3) trains every phrasing of every family that has enough scenarios, at the same cost.
    """
    from prost_lightning.env.tasks import load_task_ids

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


def demo(
    out: str = "runs/demo",
    root: str = "worlds/mini",
    config: str = "experiments/demo.yaml",
    base_model: str = "smollm2",
    fit_args: list[str] | None = None,
    system: str = "planner_executor",
    eval_split: str = "test_normal",
    eval_scenarios: int | None = 3,
    train_variants: int | None = 2,
    prompt_dir: str | None = "experiments/prompts/compact",
    pool_size: int = 10,
    precision: str = "auto",
    max_new_tokens: int = 96,
    planner_max_new_tokens: int = 40,
    max_steps_per_subtask: int = 2,
    max_subtasks: int = 5,
    engine: str = "hf",
) -> dict:
    """Run the main job end to end on the embedded defaults and write the report.

    Args:
        out: output folder (report.json, report.md, report.png, trajectories, the training run).
        root: mini-world root; built when missing.
        config: the LightningCLI config of the fine-tuning step.
        base_model: the team's base model (smollm2 = the embedded SmolLM2-135M-Instruct; tiny for a smoke run).
        fit_args: extra `prost fit` arguments for the fine-tuning step, e.g. [--trainer.max_epochs, "1"].
        system: the agent system to train and evaluate.
        eval_split: held-out split for the before/after comparison (never trained or tuned on).
        eval_scenarios: evaluate the first N scenarios of the split (all 3 variants each); null = all.
        train_variants: train on N of the 3 variants of each train scenario (rotated so every
            phrasing is trained; null = all); keeps CPU time in budget.
        prompt_dir: prompt overrides used for collection, training data and both evaluations alike.
        pool_size: AppWorld servers, i.e. episodes in parallel (generation is batched across them).
        precision: training precision; auto = bf16-mixed on CPUs where bf16 is fast (AVX512-BF16 /
            AMX), else 32-true. Evaluation uses bf16 weights in the same cases, fp32 otherwise.
        max_new_tokens: generated tokens per executor call (an oracle step is at most ~80 SmolLM2 tokens).
        planner_max_new_tokens: generated tokens per planner call (a sub-task is one short sentence).
        max_steps_per_subtask: executor replies per sub-task (code turns + report).
        max_subtasks: sub-tasks the planner may emit per episode.
        engine: rollout engine of both evaluations: hf (prefix caches, every role in one batch; the
            fastest on CPU, `prost bench --only rollout_engines`) | hf_generate (plain generate).
    """
    from prost_lightning.agents import system_roles
    from prost_lightning.agents.episode import Limits
    from prost_lightning.agents.evaluate import evaluate_system
    from prost_lightning.cli import lightning_main
    from prost_lightning.collect import collect
    from prost_lightning.env import world
    from prost_lightning.model import RoleLoRAModule

    started = time.monotonic()
    out_dir, root_dir = Path(out), Path(root)
    out_dir.mkdir(parents=True, exist_ok=True)
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

    train_file = out_dir / "trajectories" / f"{system}_train.jsonl"
    train_tasks = _train_tasks(root_dir, train_variants)
    collect(teacher="oracle", system=system, root=str(root_dir), out=str(train_file),
            task_ids=train_tasks, prompt_dir=prompt_dir,
            # the oracle generates nothing, so collection is bound by the servers' CPU: one per core
            pool_size=min(pool_size, os.cpu_count() or 1))
    t = phase("collect", t)

    limits = Limits(max_subtasks=max_subtasks, max_steps_per_subtask=max_steps_per_subtask,
                    max_new_tokens=max_new_tokens, role_max_new_tokens={"planner": planner_max_new_tokens})
    held_out = held_out_tasks(root_dir, eval_split, eval_scenarios)
    bf16 = fast_bf16() if precision == "auto" else precision.startswith("bf16")
    precision = precision if precision != "auto" else ("bf16-mixed" if bf16 else "32-true")

    def episodes_file(name: str) -> Path:
        return out_dir / "eval" / f"{name}_{eval_split}.jsonl"

    def evaluate(adapters: Path, name: str) -> dict:
        return evaluate_system(system=system, split=None, root=str(root_dir), task_ids=held_out, adapters=str(adapters),
                               base_model=base_model, limits=limits, pool_size=min(pool_size, len(held_out)),
                               max_batch_size=pool_size, engine=engine, dtype="bfloat16" if bf16 else "float32",
                               prompt_dir=prompt_dir, out=str(episodes_file(name)))

    untrained_dir = out_dir / "untrained_adapters"
    # zero-initialised LoRA B matrices: exactly the base model's outputs, through the same code path
    RoleLoRAModule(base_model=base_model, roles=list(system_roles(system))).export_adapters(untrained_dir)
    before = evaluate(untrained_dir, "untrained")
    t = phase("eval_untrained", t)

    train_dir = out_dir / "train"
    lightning_main(["fit", "--config", config, "--trainer.default_root_dir", str(train_dir),
                    "--data.train_file", str(train_file), "--trainer.precision", precision,
                    "--model.base_model", base_model, "--model.roles", json.dumps(list(system_roles(system))),
                    *(fit_args or [])])
    version = _latest_version(train_dir)
    t = phase("fine_tune", t)

    after = evaluate(version / "adapters", "trained")
    phase("eval_trained", t)

    fit_summary_path = version / "fit_summary.json"
    report = {
        "system": system,
        "base_model": "SmolLM2-135M-Instruct" if base_model == "smollm2" else base_model,
        "eval_split": eval_split,
        "eval_tasks": held_out,
        "train_tasks": len(train_tasks),
        "precision": precision,
        "untrained": before,
        "trained": after,
        "episodes": _episode_outcomes(held_out, {name: episodes_file(name) for name in ("untrained", "trained")}),
        "training": json.loads(fit_summary_path.read_text()) if fit_summary_path.exists() else None,
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
    before, after = report["untrained"], report["trained"]
    rows = [("untrained", before), ("ProST-trained", after)]
    lines = [
        f"# Demo: {report['system']} on {report['base_model']}, held-out split `{report['eval_split']}`",
        "",
        f"{len(report['eval_tasks'])} held-out tasks, trained on {report['train_tasks']} oracle trajectories.",
        "",
        "| system | TGC | SGC | LLM calls / task | tokens / task | FLOPs / task | env steps / task |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, summary in rows:
        goal, usage = summary["goal"], summary["usage"]
        lines.append(f"| {name} | {goal['tgc']:.1f} | {goal['sgc']:.1f} | {usage['mean_llm_calls']:.1f} | "
                     f"{usage['mean_tokens']:.0f} | {usage['mean_flops']:.3g} | {usage['mean_env_steps']:.1f} |")
    lines += ["", "Failure reasons: untrained " + json.dumps(before["failures"]) +
              "; trained " + json.dumps(after["failures"]), ""]
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
    for task_id, outcomes in report["episodes"].items():
        lines.append(f"| {task_id} | " + " | ".join(outcomes.get(r, "-") for r in runs) + " |")
    wall = report["wall_time_s"]
    lines.append("Wall time (s): " + ", ".join(f"{k} {v}" for k, v in wall.items()))
    return "\n".join(lines) + "\n"


def plot_before_after(report: dict, path: Path) -> None:
    """Three panels: TGC/SGC (overall, per difficulty), cost per task, wall time per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("untrained", report["untrained"]), ("ProST-trained", report["trained"])]
    levels = sorted(report["trained"]["goal"]["by_difficulty"])
    labels = ["TGC", "SGC"] + [f"TGC d{level}" for level in levels]

    def goal_values(goal: dict) -> list[float]:
        return [goal["tgc"], goal["sgc"]] + [goal["by_difficulty"].get(level, {}).get("tgc", 0.0) for level in levels]

    fig, (ax_goal, ax_cost, ax_time) = plt.subplots(1, 3, figsize=(14, 4), width_ratios=[3, 2, 2])
    xs = range(len(labels))
    for offset, (name, summary) in zip((-0.2, 0.2), runs, strict=True):
        bars = ax_goal.bar([x + offset for x in xs], goal_values(summary["goal"]), width=0.4, label=name)
        ax_goal.bar_label(bars, fmt="%.0f", fontsize=8)  # a 0 must read as measured, not as missing
    ax_goal.set_xticks(list(xs), labels)
    ax_goal.set_ylim(0, 100)
    ax_goal.set_ylabel("% of held-out tasks / scenarios")
    ax_goal.set_title(f"{len(report['eval_tasks'])} held-out tasks ({report['eval_split']})")
    ax_goal.legend()

    cost_labels = ["tokens (k)", "LLM calls", "env steps"]
    for offset, (name, summary) in zip((-0.2, 0.2), runs, strict=True):
        usage = summary["usage"]
        values = [usage["mean_tokens"] / 1000, usage["mean_llm_calls"], usage["mean_env_steps"]]
        ax_cost.bar_label(ax_cost.bar([x + offset for x in range(3)], values, width=0.4, label=name),
                          fmt="%.1f", fontsize=8)
    ax_cost.set_xticks(range(3), cost_labels)
    ax_cost.set_title("cost per task (mean)")

    wall = {k: v for k, v in report["wall_time_s"].items() if k != "total"}
    ax_time.barh(list(wall), [v / 60 for v in wall.values()], color="gray")
    ax_time.invert_yaxis()
    ax_time.set_xlabel("minutes")
    training = report.get("training") or {}
    throughput = f", training {training['tokens_per_s']} tok/s" if training else ""
    ax_time.set_title(f"wall time {report['wall_time_s']['total'] / 60:.1f} min{throughput}")

    fig.suptitle(f"{report['system']} ({report['base_model']}): before and after ProST fine-tuning")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, image.getvalue())
