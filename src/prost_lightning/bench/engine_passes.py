"""Engine passes: what one forward pass of the local engine costs, on work that is the same every run.

``rollout_engines`` plays episodes, and in bf16 their length changes from run to run (a near-tie
rounded another way writes another episode), so its times mix the engine's speed with the work
done. Here the work is fixed. Two workloads from oracle trajectories of train tasks: ``team``
(the planner/executor team's turns, both roles) and ``single`` (the single agent's turns). A
request is the conversation before one reply, decoded for exactly as many tokens as that reply has
(4 to 96; end-of-turn tokens and code-block stops ignored), ``REQUESTS`` requests per workload in one
engine call of ``BATCH`` rows (the evaluation's batch), so rows finish at different steps and a
run ends in a tail of few rows, as episodes do. Every variant decodes the same number of tokens, and
the adapters are zero-initialised, so merged and stacked adapters pick the same tokens; in bf16 the
attention and draft variants can round a near-tie another way (their ``same_replies`` figures say how
often), which changes only how many drafts are kept. The variants differ in how a pass is computed:

- ``engine``: the local engine as shipped (merged weights for steps whose rows share one adapter,
  stacked adapters for mixed steps, query groups folded in multi-token steps, drafts);
- ``unmerged``: every step through the stacked adapters (what merging saves);
- ``transformers_attention``: multi-token steps through ``transformers``' sdpa, which copies the
  cache's key/value heads (what the fold saves);
- ``no_drafts``: one token per row and step (what drafts save, in passes and in time);
- ``own_drafts``: drafts looked up in the row's own context only, not in the replies other rows of
  its role finished before (what those save).

The variants run in turns, ``ROUNDS`` times, and each keeps its fastest round. Reported per workload
and variant: seconds, forward passes, ms per pass, generated tokens/s, the ratio of its time to the
engine's, and whether its replies equal the engine's. No target: this explains ``rollout_engines``,
whose episodes are the measure. The dtype is the one rollouts use on this machine (bf16 with
AVX512-BF16 or AMX).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from prost_lightning.backbone import fast_bf16
from prost_lightning.bench.common import Context, Recorder
from prost_lightning.bench.trajectories import fixture_file, oracle_files

WORKLOADS = {"team": "planner_executor", "single": "single"}  # workload -> the trajectories' system
VARIANTS = {  # name -> LocalEngine arguments
    "engine": {},
    "unmerged": {"merged_adapters": False},
    "transformers_attention": {"fold_query_groups": False},
    "no_drafts": {"draft_tokens": 0},
    "own_drafts": {"drafts_from_replies": False},
}
REQUESTS, BATCH, ROUNDS = 24, 8, 2
MIN_TOKENS, MAX_TOKENS = 4, 96  # a request decodes its reply's length, within these


def fixed_requests(paths, system: str, count: int, tokenizer) -> list:
    """``count`` requests spread over every reply of ``system``'s conversations: the conversation
    before the reply, decoding as many tokens as the reply has."""
    from prost_lightning.agents.policy import GenerationRequest
    from prost_lightning.trajectory import read_trajectories

    requests = []
    for path in paths:
        for trajectory in read_trajectories(path):
            if trajectory.system != system:
                continue
            for conversation in trajectory.conversations:
                messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
                for i, message in enumerate(messages):
                    if message["role"] != "assistant":
                        continue
                    length = len(tokenizer(message["content"], add_special_tokens=False)["input_ids"]) + 1
                    requests.append(GenerationRequest(role=conversation.role, messages=messages[:i],
                                                      max_new_tokens=min(max(length, MIN_TOKENS), MAX_TOKENS),
                                                      stop_after_code=False))
    step = max(1, len(requests) // count)
    return requests[::step][:count]


def run(ctx: Context) -> dict:
    from prost_lightning.agents import system_roles
    from prost_lightning.agents.evaluate import load_trained
    from prost_lightning.agents.local_engine import LocalEngine
    from prost_lightning.model import RoleLoRAModule

    rec = Recorder("engine_passes", ctx)
    sources = None if ctx.quick else oracle_files(ctx)
    origin = "mini-world oracle trajectories (train split)"
    if sources is None:
        sources, origin = [fixture_file()], "tests/fixtures/trajectories.jsonl"
    count, rounds = (4, 1) if ctx.quick else (REQUESTS, ROUNDS)
    roles = [role for system in WORKLOADS.values() for role in system_roles(system)]
    # quick runs check that the variants agree: in fp32, where no rounding of bf16 can tell them apart
    dtype = "bfloat16" if ctx.device == "cuda" or (fast_bf16() and not ctx.quick) else "float32"
    with tempfile.TemporaryDirectory(prefix="prost-bench-adapters-") as tmp:
        RoleLoRAModule(base_model=ctx.real_model, roles=roles).export_adapters(str(Path(tmp) / "adapters"))
        model, tokenizer, adapter_for, params = load_trained(roles, adapters=str(Path(tmp) / "adapters"),
                                                             base_model=ctx.real_model, dtype=dtype)
    if ctx.device == "cuda":
        model = model.to("cuda")
    workloads = {name: fixed_requests(sources, system, count, tokenizer) for name, system in WORKLOADS.items()}
    rec.settings = {"model": ctx.real_model, "dtype": dtype, "prompts": origin, "rounds": rounds,
                    "batch": BATCH, "adapters": "zero-initialised LoRA",
                    "workloads": {name: {"requests": len(requests), "roles": dict(Counter(r.role for r in requests)),
                                         "tokens": sum(r.max_new_tokens for r in requests)}
                                  for name, requests in workloads.items()},
                    "variants": VARIANTS}
    for workload, requests in workloads.items():
        seconds, stats, replies = {}, {}, {}
        for _ in range(rounds):
            for name, args in VARIANTS.items():
                engine = LocalEngine(model, tokenizer, {r: adapter_for(r) for r in roles}, max_batch_size=BATCH,
                                     num_parameters=params, **args)
                engine.stop_ids = set()  # fixed work: every request decodes exactly its token limit
                replies[name] = [g.text for g in engine.generate(requests)]
                if engine.stats.seconds < seconds.get(name, float("inf")):
                    seconds[name], stats[name] = engine.stats.seconds, engine.stats
        for name in VARIANTS:
            key, st = f"{workload}_{name}", stats[name]
            rec.figure(f"{key}_seconds", seconds[name], "s", f"{workload}: {len(requests)} requests, {name}")
            rec.figure(f"{key}_forward_passes", st.forward_passes, "passes", "prefills + decode steps")
            rec.figure(f"{key}_ms_per_pass", 1000 * seconds[name] / st.forward_passes, "ms", "mean over the passes")
            rec.figure(f"{key}_generated_tokens_per_s", st.generated_tokens / seconds[name], "tokens/s", key)
            if name != "engine":
                rec.figure(f"{key}_vs_engine", seconds[name] / seconds["engine"], "x",
                           f"time of {name} / of the engine, {workload}")
                same = sum(a == b for a, b in zip(replies[name], replies["engine"], strict=True))
                rec.figure(f"{key}_same_replies", same / len(requests), "fraction",
                           "requests whose reply equals the engine's")
    return rec.result()
