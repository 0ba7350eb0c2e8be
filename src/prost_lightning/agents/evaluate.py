"""Evaluate a trained system on any split (``prost eval``), from exported adapters or a checkpoint.

    prost eval --system planner_executor --split dev --root worlds/mini --adapters runs/x/lightning_logs/version_0

prints TGC/SGC (overall and per difficulty), usage, cost, failure reasons and failure diagnostics
(``failure_diagnostics``), and returns the same as a dict. (``prost validate --ckpt_path ...``
with a RolloutCallback in the config does the same inside Lightning.)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from prost_lightning.adapters import adapters_base_model, role_adapter_folders
from prost_lightning.agents import CostModel, Limits, PromptSet, load_tasks, run_episodes, system_roles
from prost_lightning.agents.episode_summary import (
    describe_diagnostics,
    episode_progress,
    failure_diagnostics,
    format_summary,
    summarize,
)
from prost_lightning.agents.oracle import OraclePolicy
from prost_lightning.agents.runner import start_pool
from prost_lightning.env.tasks import TaskInfo, require_world_root
from prost_lightning.errors import ConfigError
from prost_lightning.files import check_writable
from prost_lightning.trajectory import Trajectory, write_trajectories


def evaluate_system(
    system: str = "planner_executor",
    split: str | None = "dev",
    root: str = "worlds/mini",
    *,
    adapters: str | None = None,
    ckpt_path: str | None = None,
    base_model: str | None = None,
    task_ids: list[str] | None = None,
    max_tasks: int | None = None,
    pool_size: int = 1,
    limits: Limits | None = None,
    prices: dict | None = None,
    dtype: str = "float32",
    device: str = "auto",
    max_batch_size: int = 8,
    engine: str = "hf",
    serve_args: list[str] | None = None,
    prompt_dir: str | None = None,
    tools: str = "miniworld",
    out: str | None = None,
    step_timeout_s: int = 30,
    progress: bool = True,
    oracle_roles: list[str] | None = None,
) -> dict:
    """Play a trained system on a split; returns (and prints) TGC/SGC, per difficulty, usage and cost.

    Args:
        system: single | planner_executor (or a registered system).
        split: split of ``root`` to play (ignored when ``task_ids`` is given).
        root: AppWorld data root (the mini-world by default).
        adapters: ``<run dir>/adapters`` (or the run dir): one PEFT folder per role, or ``shared/``.
        ckpt_path: a Lightning checkpoint of a RoleLoRAModule (instead of ``adapters``).
        base_model: base model name/path (default: read from the adapters' adapter_config.json).
        task_ids: explicit task ids instead of a split.
        max_tasks: play only the first N tasks.
        pool_size: AppWorld servers = episodes in parallel (generation is batched across them).
        limits: episode budgets (sub-tasks, steps per sub-task, tokens per call, env steps).
        prices: {role: [USD per 1k prompt tokens, USD per 1k completion tokens]} for the cost column.
        dtype: float32 | bfloat16 | float16 (adapters only; a checkpoint keeps its own).
        device: auto (cuda when available) | cpu | cuda | cuda:N.
        max_batch_size: rows generated together (all roles share one batch with ``engine: hf``).
        engine: hf (in-process, prefix caches, one mixed-adapter batch for all roles) | hf_generate
            (plain ``generate`` per role, the reference path) | vllm (a managed vLLM server with one
            LoRA per role, `make serve-venv`; needs --adapters).
        serve_args: engine vllm: more vLLM server arguments, e.g. [--gpu-memory-utilization, "0.5"].
        prompt_dir: folder whose .txt files replace the built-in prompts of the same name.
        tools: tool sheet in the prompts: miniworld | appworld.
        out: optionally write every episode's trajectory here (atomic).
        step_timeout_s: AppWorld's limit per code execution.
        progress: show a rich progress bar.
        oracle_roles: roles played by the oracle (the task's ground-truth plan) instead of the
            trained adapters, e.g. [planner]: the trained executor under a perfect planner. A
            diagnostic, not the team's score: it tells how much of the gap is each role's.
    """
    if out:
        check_writable(out, "--out")  # before any episode: their work would be lost
    root_path = require_world_root(root)
    roles = system_roles(system)
    prompts = PromptSet(prompt_dir, tools=tools)
    tasks = load_tasks(root_path, split, task_ids, max_tasks)
    oracle_roles = list(oracle_roles or [])
    unknown = [r for r in oracle_roles if r not in roles]
    unplanned = [t.task_id for t in tasks if not t.plan][:3]
    if unknown or (oracle_roles and unplanned):
        raise ConfigError(f"--oracle_roles {unknown}: not roles of {system} ({roles})" if unknown else
                          f"--oracle_roles: tasks without a ground-truth plan ({', '.join(unplanned)}): the oracle "
                          "cannot play them (AppWorld's test splits have none; the mini-world has one for every task)")
    trajectories: list[Trajectory] = []
    team = trained_team(roles, engine, adapters=adapters, ckpt_path=ckpt_path, base_model=base_model, dtype=dtype,
                        device=device, max_batch_size=max_batch_size, serve_args=serve_args)
    with team as trained, start_pool(root_path, pool_size, step_timeout_s, None) as pool, \
            episode_progress(len(tasks), f"eval {system} on {split or 'tasks'}", progress) as bar:
        oracle = OraclePolicy(prompts)
        policies = {role: oracle if role in oracle_roles else policy for role, policy in trained.items()}

        def seen(trajectory: Trajectory) -> None:
            bar.advance(trajectory)
            trajectories.append(trajectory)

        run_episodes(system, tasks, pool, policies, limits=limits or Limits(), prompts=prompts,
                     cost=CostModel(prices={k: tuple(v) for k, v in (prices or {}).items()}),
                     teacher=f"eval:{adapters or ckpt_path}" + "".join(f"+oracle:{r}" for r in oracle_roles),
                     on_episode=seen)
    if out:
        write_trajectories(out, trajectories)
    summary = summarize(trajectories)
    summary["diagnostics"] = diagnose_against(trajectories, tasks)
    print(format_summary(summary, title=f"{system} on {split or 'tasks'}"))
    print(f"  diagnostics: {describe_diagnostics(summary['diagnostics'])}")
    return summary


def diagnose_against(trajectories: list[Trajectory], tasks: list[TaskInfo]) -> dict:
    """``failure_diagnostics`` of played episodes against their tasks' ground-truth plans and sub-task kinds."""
    return failure_diagnostics(trajectories, {t.task_id: [step.description for step in t.plan] for t in tasks},
                               {t.task_id: t.plan_kinds for t in tasks})


@contextmanager
def trained_team(roles, engine: str = "hf", *, adapters: str | None = None, ckpt_path: str | None = None,
                 base_model: str | None = None, dtype: str = "float32", device: str = "auto",
                 max_batch_size: int = 8, serve_args: list[str] | None = None):
    """{role: policy} for trained adapters on ``engine`` (hf | hf_generate in process, vllm served)."""
    if engine == "vllm":
        if not adapters:
            raise ConfigError("engine vllm serves exported adapters: give --adapters <run>/adapters, not --ckpt_path")
        from prost_lightning.serving import served_team

        with served_team(adapters, roles, base_model=base_model, extra_args=serve_args or ()) as policies:
            yield policies
        return
    from prost_lightning.agents.factory import model_policies

    model, tokenizer, adapter_for, num_parameters = load_trained(roles, adapters=adapters, ckpt_path=ckpt_path,
                                                                 base_model=base_model, dtype=dtype)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not getattr(model, "is_loaded_in_4bit", False) and not getattr(model, "is_loaded_in_8bit", False):
        model.to(device)
    yield model_policies(model, tokenizer, roles, adapter_for, num_parameters=num_parameters,
                         max_batch_size=max_batch_size, engine=engine)


def load_trained(roles, *, adapters: str | None = None, ckpt_path: str | None = None,
                 base_model: str | None = None, dtype: str = "float32"):
    """(model, tokenizer, adapter_for(role), num_base_parameters) from exported adapters or a checkpoint."""
    if bool(adapters) == bool(ckpt_path):
        raise ConfigError("give exactly one of --adapters (<run>/adapters) or --ckpt_path (a .ckpt file)")
    if ckpt_path:
        from prost_lightning.model import RoleLoRAModule

        if not Path(ckpt_path).is_file():
            raise ConfigError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        with warnings.catch_warnings():  # adapter-only checkpoints: the frozen base is rebuilt, not loaded
            warnings.filterwarnings("ignore", message=".*not in the checkpoint.*")
            module = RoleLoRAModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=False)
        missing = [r for r in roles if r not in module.roles]
        if missing:
            raise ConfigError(f"{ckpt_path}: the checkpoint has no adapter for role(s) {missing} (roles {module.roles})")
        return module.model, module.tokenizer, module.adapter_name, module.num_base_parameters

    from peft import PeftModel

    from prost_lightning import backbone

    folders = role_adapter_folders(adapters, roles)
    names = {role: path.name for role, path in folders.items()}
    if base_model is None:
        base_model = adapters_base_model(folders)
    tokenizer = backbone.load_tokenizer(base_model)
    base = backbone.load_base_model(base_model, dtype=dtype)
    num_parameters = sum(p.numel() for p in base.parameters())
    folders_by_name = {path.name: path for path in folders.values()}
    model = None
    for name in folders_by_name:
        if model is None:
            model = PeftModel.from_pretrained(base, str(folders_by_name[name]), adapter_name=name)
        else:
            model.load_adapter(str(folders_by_name[name]), adapter_name=name)
    model.eval()
    return model, tokenizer, names.__getitem__, num_parameters

