"""Rollout engines side by side: the demo's held-out episodes through each local engine in one run.

The same episodes (the demo's held-out tasks, limits and compact prompts, the same adapters) are
played on one server pool, one engine after the other:

- ``hf_generate``: plain ``generate`` in fp32, one role per batch, every call re-reads its
  conversation, the runner's rounds: the path rollouts used before, and the reference;
- ``hf``: :class:`LocalEngine` as shipped (prefix caches across turns and episodes, every role in one
  batch, continuous batching, drafts checked in the decode pass) in fp32, so the ratio to
  ``hf_generate`` is the engine's alone;
- ``hf_bf16``: the same in bf16 weights and caches, the dtype ``prost demo`` evaluates in on CPUs
  with AVX512-BF16 or AMX (skipped on others, where bf16 is emulated and slow);
- ``hf_unpacked`` and ``hf_draft_tokens_4``, run last: the default engine with one argument
  changed, what it saves on the same episodes: weights as they are (``F.linear``) instead of
  packed once for oneDNN (:mod:`~prost_lightning.agents.packed_linear`); drafts of up to 4 tokens
  a row instead of 8.

Reported per engine: episodes/min, prompt tokens processed vs served from cache, generated
tokens/s, TGC, and whether every action of every episode was the one ``hf_generate`` played; for
the local engines also the shares of the wall time spent within the model's forward passes and
in the engine's bookkeeping around them (the rest is the runner's: waiting on environment calls, its loop). Target:
the default CPU path (``hf`` in the demo's dtype) >= 4x the episodes/min of ``hf_generate`` at equal TGC.

The adapters are the untrained team's (zero-initialised LoRA = the base model), as in the demo's
first evaluation, unless ``PROST_BENCH_ADAPTERS`` names the ``adapters/`` folder of a trained run.
vLLM is not in this comparison: on a CPU its decode is slower than HF's (see docs/rollouts.md).
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
from pathlib import Path

from prost_lightning.backbone import fast_bf16
from prost_lightning.bench.common import Context, Recorder
from prost_lightning.bench.rollouts import world_root

TARGET_SPEEDUP = 4.0
ENGINES = ("hf_generate", "hf", "hf_bf16")
# the default engine with one LocalEngine argument changed
VARIANTS = {"hf_unpacked": {"packed_weights": False}, "hf_draft_tokens_4": {"draft_tokens": 4}}
SCENARIOS = 3  # the first 3 scenarios of the demo's held-out split: 9 episodes, as measured since the start
COMPACT_PROMPTS = Path("experiments/prompts/compact")


def _demo_setting():
    from prost_lightning.agents.episode import Limits
    from prost_lightning.demo import demo

    d = {k: p.default for k, p in inspect.signature(demo).parameters.items()}
    limits = Limits(max_subtasks=d["max_subtasks"], max_steps_per_subtask=d["max_steps_per_subtask"],
                    max_new_tokens=d["max_new_tokens"], role_max_new_tokens={"planner": d["planner_max_new_tokens"]})
    return d, limits


def run(ctx: Context) -> dict:
    from prost_lightning.agents import load_tasks, run_episodes, system_roles
    from prost_lightning.agents.evaluate import load_trained
    from prost_lightning.agents.factory import model_policies
    from prost_lightning.agents.local_engine import LocalEngine
    from prost_lightning.agents.prompts import PromptSet
    from prost_lightning.demo import held_out_tasks
    from prost_lightning.env.pool import ServerPool
    from prost_lightning.metrics import task_goal_completion
    from prost_lightning.model import RoleLoRAModule

    rec = Recorder("rollout_engines", ctx)
    root = world_root(ctx)
    d, limits = _demo_setting()
    system = d["system"]
    roles = list(system_roles(system))
    ids = held_out_tasks(root, d["eval_split"], 1 if ctx.quick else SCENARIOS)
    if ctx.quick:
        ids = ids[:1]  # one episode (one server) is enough to compare the engines' messages
    tasks = load_tasks(root, task_ids=ids)
    model_name = ctx.real_model
    prompts = PromptSet(str(COMPACT_PROMPTS) if COMPACT_PROMPTS.is_dir() else None)
    with tempfile.TemporaryDirectory(prefix="prost-bench-adapters-") as tmp:
        adapters = os.environ.get("PROST_BENCH_ADAPTERS")
        if not adapters:
            adapters = str(Path(tmp) / "adapters")
            RoleLoRAModule(base_model=model_name, roles=roles).export_adapters(adapters)
        model, tokenizer, adapter_for, params = load_trained(roles, adapters=adapters, base_model=model_name)
        engines = ENGINES if fast_bf16() else ENGINES[:2]
        models = {engine: model for engine in engines}
        if "hf_bf16" in engines:
            models["hf_bf16"] = load_trained(roles, adapters=adapters, base_model=model_name, dtype="bfloat16")[0]
        default = engines[-1]  # the demo's dtype: bf16 where it is fast
        models.update({name: models[default] for name in VARIANTS})
    rec.settings = {"world": str(root), "tasks": ids, "system": system, "model": model_name,
                    "adapters": os.environ.get("PROST_BENCH_ADAPTERS") or "untrained (zero-initialised LoRA)",
                    "limits": vars(limits), "prompts": str(COMPACT_PROMPTS), "servers": len(tasks),
                    "order": [*engines, *VARIANTS], "greedy": True}
    played, seconds, stats = {}, {}, {}
    with ServerPool(root, size=len(tasks)) as pool:
        for engine in [*engines, *VARIANTS]:
            batch = len(tasks) * len(roles)
            if engine in VARIANTS:
                local = LocalEngine(models[engine], tokenizer, {r: adapter_for(r) for r in roles}, max_batch_size=batch,
                                    num_parameters=params, **VARIANTS[engine])
                policies = {r: local for r in roles}
            else:
                policies = model_policies(models[engine], tokenizer, roles, adapter_for, num_parameters=params,
                                          max_batch_size=batch, engine=engine.removesuffix("_bf16"))
            started = time.perf_counter()
            played[engine] = run_episodes(system, tasks, pool, policies, limits=limits, prompts=prompts)
            seconds[engine] = time.perf_counter() - started
            shared = policies[roles[0]]
            stats[engine] = shared.stats.as_dict() if hasattr(shared, "stats") else None

    engines = [*engines, *VARIANTS]
    for engine in engines:
        trajectories = played[engine]
        prompt = sum(sum(t.usage.prompt_tokens.values()) for t in trajectories)
        generated = sum(sum(t.usage.completion_tokens.values()) for t in trajectories)
        cached = (stats[engine] or {}).get("cached_tokens", 0)
        rec.figure(f"{engine}_seconds", seconds[engine], "s", f"{len(tasks)} episodes through {engine}")
        rec.figure(f"{engine}_episodes_per_min", 60 * len(tasks) / seconds[engine], "episodes/min", engine)
        rec.figure(f"{engine}_prompt_tokens", prompt, "tokens", "prompt tokens of all calls")
        rec.figure(f"{engine}_prompt_tokens_processed", prompt - cached, "tokens", "prompt tokens computed")
        if engine != "hf_generate":  # plain generate has no cache across calls, no drafts, no streaming
            rec.figure(f"{engine}_cache_share", cached / prompt, "fraction", "prompt tokens served from the prefix cache")
            rec.figure(f"{engine}_forward_passes", stats[engine]["forward_passes"], "passes", "prefills + decode steps")
            # where the episodes' wall time went: the model's passes, the engine's bookkeeping around
            # them, and the rest (waiting on env calls with no row to decode, the runner's loop)
            rec.figure(f"{engine}_forward_share", stats[engine]["forward_seconds"] / seconds[engine], "fraction",
                       "of the episodes' wall time, within the model's forward passes")
            rec.figure(f"{engine}_bookkeeping_share",
                       (stats[engine]["seconds"] - stats[engine]["forward_seconds"]) / seconds[engine], "fraction",
                       "of the wall time, in the engine's steps outside the forward passes")
            drafted = stats[engine]["draft_tokens"]
            rec.figure(f"{engine}_draft_acceptance", stats[engine]["accepted_draft_tokens"] / drafted if drafted else 0.0,
                       "fraction", f"draft tokens the model kept, of {drafted} checked")
        rec.figure(f"{engine}_generated_tokens_per_s", generated / seconds[engine], "tokens/s",
                   "generated tokens / wall time of the episodes")
        rec.figure(f"{engine}_tgc", task_goal_completion({t.task_id: t.outcome.success for t in trajectories}), "%", "TGC")
    for engine in engines[1:]:
        same = sum(_actions(a) == _actions(b) for a, b in zip(played[engine], played["hf_generate"], strict=True))
        rec.figure(f"identical_episodes_{engine}", same / len(tasks), "fraction",
                   f"episodes whose every message is the same through {engine} and hf_generate")
        rec.figure(f"speedup_{engine}_vs_hf_generate", seconds["hf_generate"] / seconds[engine], "x",
                   f"episodes/min of {engine} / of hf_generate, same episodes, same run")
        # bf16 episodes may differ in length from hf_generate's: the rate per generated token is the
        # ratio on equal work
        rec.figure(f"token_rate_{engine}_vs_hf_generate", rec.figures[f"{engine}_generated_tokens_per_s"]["value"]
                   / rec.figures["hf_generate_generated_tokens_per_s"]["value"], "x",
                   f"generated tokens/s of {engine} / of hf_generate")
    rec.target(f"speedup_{default}_vs_hf_generate", ">=", TARGET_SPEEDUP,
               "see docs/rollouts.md for what bounds the ratio on 2 cores")
    if any(rec.figures[f"{e}_tgc"]["value"] != rec.figures["hf_generate_tgc"]["value"] for e in engines):
        rec.note("TGC differs between the engines: greedy near-ties resolved differently by float rounding or bf16")
    return rec.result()


def _actions(trajectory):
    return [(c.role, m.role, m.content) for c in trajectory.conversations for m in c.messages]
