"""Engine passes: what one forward pass of the local engine costs, on work that is the same every run.

``rollout_engines`` plays episodes, and in bf16 their length changes from run to run (a near-tie
rounded another way writes another episode), so its times mix the engine's speed with the work
done. Here the work is fixed: one request per conversation of oracle trajectories of train tasks
(both roles of the planner/executor team; the prompt is the conversation before its last reply),
each decoded for exactly ``NEW_TOKENS`` tokens (end-of-turn tokens and code-block stops ignored),
all in one engine call. The adapters are zero-initialised, so every variant picks the same tokens;
the variants differ only in how a pass is computed:

- ``engine``: the local engine as shipped (merged weights for steps whose rows share one adapter,
  stacked adapters for mixed steps, query groups folded in multi-token steps, drafts);
- ``unmerged``: every step through the stacked adapters (what merging saves);
- ``transformers_attention``: multi-token steps through ``transformers``' sdpa, which copies the
  cache's key/value heads (what the fold saves);
- ``no_drafts``: one token per row and step (what drafts save, in passes and in time).

The variants run in turns, twice, and each keeps its faster round. Reported per variant: seconds,
forward passes, ms per pass, generated tokens/s, the ratio of its time to the engine's, and whether
its replies equal the engine's. No target: this explains ``rollout_engines``, whose episodes are
the measure. The dtype is the one rollouts use on this machine (bf16 with AVX512-BF16 or AMX).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from prost_lightning.backbone import fast_bf16
from prost_lightning.bench.common import Context, Recorder
from prost_lightning.bench.trajectories import fixture_file, oracle_files

ROLES = ("planner", "executor")
VARIANTS = {  # name -> LocalEngine arguments
    "engine": {},
    "unmerged": {"merged_adapters": False},
    "transformers_attention": {"fold_query_groups": False},
    "no_drafts": {"draft_tokens": 0},
}
REQUESTS, NEW_TOKENS, ROUNDS = 32, 48, 2


def fixed_requests(paths, count: int, new_tokens: int) -> list:
    """The prompt before the last reply of each team conversation, up to ``count`` requests."""
    from prost_lightning.agents.policy import GenerationRequest
    from prost_lightning.trajectory import read_trajectories

    requests = []
    for path in paths:
        for trajectory in read_trajectories(path):
            if trajectory.system != "planner_executor":
                continue
            for conversation in trajectory.conversations:
                replies = [i for i, m in enumerate(conversation.messages) if m.role == "assistant"]
                if conversation.role not in ROLES or not replies:
                    continue
                messages = [{"role": m.role, "content": m.content} for m in conversation.messages[:replies[-1]]]
                requests.append(GenerationRequest(role=conversation.role, messages=messages,
                                                  max_new_tokens=new_tokens, stop_after_code=False))
    return requests[:count]


def run(ctx: Context) -> dict:
    from prost_lightning.agents.evaluate import load_trained
    from prost_lightning.agents.local_engine import LocalEngine
    from prost_lightning.model import RoleLoRAModule

    rec = Recorder("engine_passes", ctx)
    sources = None if ctx.quick else oracle_files(ctx)
    origin = "mini-world oracle trajectories (train split)"
    if sources is None:
        sources, origin = [fixture_file()], "tests/fixtures/trajectories.jsonl"
    count, new_tokens, rounds = (4, 8, 1) if ctx.quick else (REQUESTS, NEW_TOKENS, ROUNDS)
    requests = fixed_requests(sources, count, new_tokens)
    # quick runs check that the variants agree: in fp32, where no rounding of bf16 can tell them apart
    dtype = "bfloat16" if ctx.device == "cuda" or (fast_bf16() and not ctx.quick) else "float32"
    with tempfile.TemporaryDirectory(prefix="prost-bench-adapters-") as tmp:
        RoleLoRAModule(base_model=ctx.real_model, roles=list(ROLES)).export_adapters(str(Path(tmp) / "adapters"))
        model, tokenizer, adapter_for, params = load_trained(list(ROLES), adapters=str(Path(tmp) / "adapters"),
                                                             base_model=ctx.real_model, dtype=dtype)
    if ctx.device == "cuda":
        model = model.to("cuda")
    rec.settings = {"model": ctx.real_model, "dtype": dtype, "requests": len(requests),
                    "roles": dict(Counter(r.role for r in requests)),
                    "new_tokens_per_request": new_tokens, "prompts": origin, "rounds": rounds,
                    "adapters": "zero-initialised LoRA (every variant picks the same tokens)",
                    "variants": {name: args for name, args in VARIANTS.items()}}
    seconds, stats, replies = {}, {}, {}
    for _ in range(rounds):
        for name, args in VARIANTS.items():
            engine = LocalEngine(model, tokenizer, {r: adapter_for(r) for r in ROLES}, num_parameters=params, **args)
            engine.stop_ids = set()  # fixed work: every request decodes exactly its token limit
            replies[name] = [g.text for g in engine.generate(requests)]
            if engine.stats.seconds < seconds.get(name, float("inf")):
                seconds[name], stats[name] = engine.stats.seconds, engine.stats
    for name in VARIANTS:
        st = stats[name]
        rec.figure(f"{name}_seconds", seconds[name], "s", f"{len(requests)} requests x {new_tokens} tokens")
        rec.figure(f"{name}_forward_passes", st.forward_passes, "passes", "prefills + decode steps")
        rec.figure(f"{name}_ms_per_pass", 1000 * seconds[name] / st.forward_passes, "ms", "mean over the passes")
        rec.figure(f"{name}_generated_tokens_per_s", st.generated_tokens / seconds[name], "tokens/s", name)
        if name != "engine":
            rec.figure(f"{name}_vs_engine", seconds[name] / seconds["engine"], "x", f"time of {name} / of the engine")
            rec.figure(f"{name}_same_replies", sum(a == b for a, b in zip(replies[name], replies["engine"], strict=True))
                       / len(requests), "fraction", "requests whose reply equals the engine's")
    return rec.result()
