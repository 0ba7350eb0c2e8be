"""The local engine (prefix caches, one mixed-adapter batch) gives the plain-`generate` path's replies.

Adapters here have random, non-zero LoRA weights, so each role's rows really go through a different
adapter: a row routed through the wrong one would change its reply.
"""

from __future__ import annotations

import pytest
import torch

from prost_lightning.agents import Limits, load_tasks, run_episodes
from prost_lightning.agents.factory import model_policies
from prost_lightning.agents.hf_policy import HFPolicy
from prost_lightning.agents.local_engine import LocalEngine
from prost_lightning.agents.policy import GenerationRequest, Policy
from prost_lightning.backbone import SMOLLM2_FOLDER, models_dir
from prost_lightning.model import LoraSettings, RoleLoRAModule

ROLES = ["planner", "executor"]


def _team(base_model: str, scale: float, role_overrides: dict | None = None, dtype=torch.float32):
    module = RoleLoRAModule(base_model, roles=ROLES, lora=LoraSettings(r=4, alpha=8), role_overrides=role_overrides)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:  # zero-initialised by PEFT: give every adapter its own effect
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    module.model.to(dtype).eval()
    return module


@pytest.fixture(scope="module")
def tiny_team():
    # the planner's adapter has another rank and scaling than the executor's (stacked side by side).
    # float64: a random tiny model has near-ties between its top tokens, and the paths compared here
    # (merged vs stacked adapter weights, batches of other shapes) round differently; in float32 one
    # flipped argmax in a long greedy reply made equal paths look different (CI, 2026-12-03)
    return _team("tiny", 0.5, role_overrides={"planner": {"r": 8}}, dtype=torch.float64)


def _chat(role: str, task: int, turns: int) -> list[dict]:
    messages = [{"role": "system", "content": f"You are the {role} of a team. Reply with python code."}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Task {task}, step {t}: show the alarms of the phone."})
        if t < turns - 1:
            messages.append({"role": "assistant", "content": f"```python\nprint({task}, {t})\n```"})
    return messages


def _requests(turns: int, limits=(12,)) -> list[GenerationRequest]:
    return [GenerationRequest(role=ROLES[i % 2], messages=_chat(ROLES[i % 2], i // 2, turns),
                              max_new_tokens=limits[i % len(limits)], stop_after_code=ROLES[i % 2] == "executor",
                              conversation=f"ep{i}/0")
            for i in range(6)]


def _plain(team, requests):
    reference = model_policies(team.model, team.tokenizer, ROLES, team.adapter_name, engine="hf_generate")
    return [g for r in requests for g in reference[r.role].generate([r])]


def test_mixed_role_batches_equal_plain_generate_and_reuse_prefixes(tiny_team):
    m = tiny_team
    engine = model_policies(m.model, m.tokenizer, ROLES, m.adapter_name, engine="hf")["planner"]
    assert isinstance(engine, LocalEngine) and engine._lora is not None  # the grouped LoRA path
    for turns in (1, 2, 3):
        requests = _requests(turns)
        fast = engine.generate(requests)  # both roles in one call
        plain = _plain(m, requests)
        assert [g.text for g in fast] == [g.text for g in plain]
        assert [g.completion_tokens for g in fast] == [g.completion_tokens for g in plain]
        assert [g.prompt_tokens for g in fast] == [g.prompt_tokens for g in plain]
        if turns == 1:  # the second episode of a role starts from the first one's system prompt
            assert fast[0].cached_tokens == 0 and fast[2].cached_tokens > 0
        else:  # the conversation's own earlier turn (at least up to the previous reply)
            assert all(g.cached_tokens >= len(_chat("planner", 0, turns - 1)) for g in fast)
    # the same chat through the two adapters gives two different replies: the rows were routed
    same_chat = [GenerationRequest(role=r, messages=_chat("x", 9, 1), max_new_tokens=12) for r in ROLES]
    a, b = engine.generate(same_chat)
    assert a.text != b.text
    assert engine.stats.cached_tokens > 0 and 0 < engine.stats.cache_share < 1


def test_rows_admitted_together_share_prefill_passes(tiny_team):
    """One role's episodes starting together: the first prefills the system prompt alone, the others
    then start from it and prefill together, shorter prompts re-feeding cached tokens to line up; a
    prompt much longer than the rest has its own pass."""
    m = tiny_team
    system = {"role": "system", "content": "You are the planner of a team. Reply with python code."}
    users = ["Show the alarms.", "Show the alarms!!", "Show the alarms?", "Show all alarms.", "Show the alarms. " * 5]
    requests = [GenerationRequest(role="planner", max_new_tokens=6, conversation=f"ep{i}/0",
                                  messages=[system, {"role": "user", "content": text}]) for i, text in enumerate(users)]
    engine = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, draft_tokens=0)
    passes = []
    engine._prefill = lambda group, prefill=engine._prefill: (passes.append(len(group)), prefill(group))[1]
    fast = engine.generate(requests)
    assert [g.text for g in fast] == [g.text for g in _plain(m, requests)]
    assert passes == [1, 1, 3]  # the leader; the long prompt; the three within PREFILL_SLACK of each other
    assert fast[0].cached_tokens == 0 and all(g.cached_tokens > 0 for g in fast[1:])
    assert engine.stats.forward_passes == 3 + 5  # three prefills, then one decode pass per further token
    assert 0 < engine.stats.forward_seconds < engine.stats.seconds  # the passes are a part of the steps' time


def test_requests_joining_a_running_batch_get_plain_generate_replies(tiny_team):
    """Continuous batching: rows join while others decode, wait for a free row, leave as they finish."""
    m = tiny_team
    requests = _requests(2, limits=(3, 12, 7, 1, 12, 5))  # rows end at different steps
    engine = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, max_batch_size=3)
    tickets, replies, queue = {}, {}, list(enumerate(requests))
    while queue or engine.busy:
        if queue:  # one new request per step
            index, request = queue.pop(0)
            tickets[engine.submit(request)] = index
        for ticket, generation in engine.step():
            replies[tickets[ticket]] = generation
    fast = [replies[i] for i in range(len(requests))]
    plain = _plain(m, requests)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert [g.completion_tokens for g in fast] == [g.completion_tokens for g in plain]
    assert engine.stats.joined_running_batch >= 3 and not engine.busy
    # the conversations' caches were stored from their slots: the next turn reuses them exactly
    again = _requests(3)
    assert [g.text for g in engine.generate(again)] == [g.text for g in _plain(m, again)]


def test_drafts_checked_in_the_decode_pass_keep_plain_generate_replies(tiny_team):
    m = tiny_team
    requests = _requests(3, limits=(12, 20, 7))
    engine = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, draft_tokens=4, step_tokens=64)
    assert m.model.get_base_model().config._attn_implementation == "sdpa"  # draft steps fold query groups
    fast = engine.generate(requests)
    plain = _plain(m, requests)
    assert [g.text for g in fast] == [g.text for g in plain]
    assert [g.completion_tokens for g in fast] == [g.completion_tokens for g in plain]
    assert engine.stats.draft_tokens > 0  # the chats repeat themselves: drafts were found and checked
    assert engine.stats.forward_passes < len(requests) + sum(g.completion_tokens for g in fast)


def test_a_roles_earlier_reply_drafts_the_next_episodes_reply():
    """Episodes of one role write alike: the first episode's reply, looked up as a draft, lets the
    second decode the same reply in fewer passes; without reply drafts it takes as many as the first."""
    with torch.random.fork_rng():  # PEFT draws LoRA A from the global generator: the same team in any test order
        torch.manual_seed(0)
        m = _team("tiny", 0.5, dtype=torch.float64)

    def request(role, task, episode):
        return GenerationRequest(role=role, messages=_chat(role, task, 1), max_new_tokens=24,
                                 stop_after_code=False, conversation=f"ep{episode}/0")

    # a chat the random tiny model answers at length and not with one token repeated (some it ends at once)
    probe = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES})

    def varied(reply):
        return reply.completion_tokens >= 16 and len(set(m.tokenizer(reply.text)["input_ids"])) >= 6

    role, task = next((role, task) for task in range(8) for role in ROLES
                      if varied(probe.generate([request(role, task, 0)])[0]))
    passes = {}
    for replies in (True, False):
        engine = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, drafts_from_replies=replies)
        reference = engine.generate([request(role, task, 0)])[0]
        before = engine.stats.forward_passes
        again = engine.generate([request(role, task, 1)])[0]
        assert again.text == reference.text == _plain(m, [request(role, task, 1)])[0].text
        passes[replies] = engine.stats.forward_passes - before
    assert passes[True] * 2 <= passes[False]


def test_layers_compute_each_rows_adapter_on_merged_and_stacked_weights(tiny_team):
    """One adapter for every row: its merged weights; mixed rows: the stacks; both give PEFT's logits,
    and new adapter weights (training between rollouts) are merged again before the next pass."""
    from prost_lightning.agents.grouped_lora import BASE_ADAPTER, GroupedLoRA

    m = tiny_team
    ids = torch.tensor([[5, 17, 33, 2, 9, 41], [7, 7, 12, 30, 1, 3]])
    grouped = GroupedLoRA(m.model)
    assert grouped.merging and grouped.merged_bytes() > 0

    def peft(adapters):
        return m.model(input_ids=ids, adapter_names=adapters).logits

    def ours(adapters):
        grouped.route(adapters)
        with grouped.installed():
            return m.model.get_base_model()(input_ids=ids).logits

    with torch.no_grad():
        for adapters in (["planner", "planner"], ["executor", "executor"], [BASE_ADAPTER] * 2,
                         ["planner", "executor"], ["executor", BASE_ADAPTER]):
            assert torch.allclose(ours(adapters), peft(adapters), atol=1e-4), adapters
            shared = adapters[0] if len(set(adapters)) == 1 else None
            assert grouped._shared[0] == shared and bool(grouped._routes) == (shared is None)  # the path taken
        lora_b = next(p for n, p in m.model.named_parameters() if "lora_B.executor" in n)
        before = ours(["executor", "executor"])
        saved = lora_b.clone()
        try:
            lora_b.mul_(3.0)
            after = ours(["executor", "executor"])
            assert not torch.allclose(after, before, atol=1e-3)
            assert torch.allclose(after, peft(["executor", "executor"]), atol=1e-4)
        finally:
            lora_b.copy_(saved)


def test_single_adapter_steps_run_on_merged_weights_with_plain_generate_replies(tiny_team):
    m = tiny_team
    requests = [r for r in _requests(2, limits=(12, 20)) if r.role == "executor"]  # every step one adapter
    engines = {merged: LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, merged_adapters=merged)
               for merged in (True, False)}
    replies = {merged: engine.generate(requests) for merged, engine in engines.items()}
    assert engines[True]._lora.merging and engines[True]._lora._merged
    assert not engines[False]._lora.merging and not engines[False]._lora._merged
    plain = _plain(m, requests)
    for merged in (True, False):
        assert [g.text for g in replies[merged]] == [g.text for g in plain]


def test_float32_passes_run_on_packed_weights_with_pefts_logits():
    """In float32 on a CPU the frozen base weights and the merged adapter weights are packed once
    (packed_linear): a pass of one adapter runs no F.linear at all, a mixed pass only the small LoRA
    stacks', and both give PEFT's logits, as the unpacked engine does."""
    m = _team("tiny", 0.5, role_overrides={"planner": {"r": 8}})
    ids = torch.tensor([[5, 17, 33, 2, 9, 41], [7, 7, 12, 30, 1, 3]])
    engines = {packed: LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, packed_weights=packed)
               for packed in (True, False)}
    for adapters, linear_calls in ((["planner", "planner"], 0), (["planner", "executor"], 2 * len(engines[True]._lora.layers))):
        with torch.no_grad():
            expected = m.model(input_ids=ids, adapter_names=adapters).logits
        for packed, engine in engines.items():
            with engine._inference():
                engine._lora.route(adapters)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    got = engine._base(input_ids=ids).logits
            calls = {e.key: e.count for e in prof.key_averages()}
            assert torch.allclose(got, expected, atol=1e-4), (packed, adapters)
            if packed:
                assert calls.get("aten::linear", 0) == linear_calls and calls["mkldnn::_linear_pointwise"] > 0
            else:
                assert "mkldnn::_linear_pointwise" not in calls
    packed = engines[True]._packed  # each LoRA layer's frozen base weight and the output head
    assert packed.packed == len(packed.layers) == len(engines[True]._lora.layers) + 1
    assert engines[False]._packed is None


@pytest.mark.parametrize("rows, length", [(3, 4), (1, 7), (2, 1)])
def test_grouped_attention_attends_like_transformers_repeated_heads(rows, length):
    """The fold of query groups gives transformers' sdpa result, per row its own mask (ragged lengths)."""
    import types

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from prost_lightning.agents.gqa_attention import grouped_sdpa

    torch.manual_seed(0)
    module = types.SimpleNamespace(num_key_value_groups=3, is_causal=True)
    query = torch.randn(rows, 6, length, 8)
    cache = torch.randn(2, rows + 1, 2, 30, 8)  # a preallocated cache: attention reads a strided view
    key, value = cache[0, :rows, :, :20], cache[1, :rows, :, :20]
    held = torch.tensor([12, 15, 9][:rows])  # tokens each row holds before this step
    positions = held[:, None] + torch.arange(length)[None, :]
    mask = (torch.arange(20)[None, None, :] <= positions[:, :, None])[:, None]
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = grouped_sdpa(module, query, key, value, mask, scaling=0.3)
    assert got.shape == expected.shape == (rows, length, 6, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_base_model_rows_and_the_callers_state(tiny_team):
    """A role without adapter decodes through the base model next to adapter rows; training state is kept."""
    m = tiny_team
    engine = LocalEngine(m.model, m.tokenizer, {"planner": "planner", "executor": None})
    requests = _requests(1)
    m.model.train()
    m.model.set_adapter("executor")
    attention = m.model.get_base_model().config._attn_implementation
    try:
        fast = engine.generate(requests)
        assert m.model.training and m.model.active_adapter == "executor"
        assert m.model.get_base_model().config._attn_implementation == attention  # training attends as before
    finally:
        m.model.eval()
    with m.model.disable_adapter():
        base = [HFPolicy(m.model, m.tokenizer).generate([r])[0] for r in requests if r.role == "executor"]
    planner = _plain(m, [r for r in requests if r.role == "planner"])
    assert [g.text for g in fast[1::2]] == [g.text for g in base]
    assert [g.text for g in fast[0::2]] == [g.text for g in planner]


def test_lora_layers_the_grouped_path_does_not_cover_take_pefts_path():
    """LoRA with a bias is outside the grouped computation: the engine falls back on PEFT's mixed batches."""
    from peft import LoraConfig, get_peft_model

    from prost_lightning import backbone
    from prost_lightning.agents.grouped_lora import GroupedLoRA

    tokenizer = backbone.load_tokenizer("tiny")
    config = LoraConfig(r=4, lora_alpha=8, lora_bias=True, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(backbone.load_base_model("tiny"), config, adapter_name="planner")
    model.add_adapter("executor", config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # weights and biases
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    model.eval()
    assert not GroupedLoRA.supports(model)
    engine = LocalEngine(model, tokenizer, {r: r for r in ROLES})
    assert engine._lora is None
    requests = _requests(1)
    reference = {r: HFPolicy(model, tokenizer, r) for r in ROLES}
    assert [g.text for g in engine.generate(requests)] == [reference[r.role].generate([r])[0].text for r in requests]


def test_cache_memory_is_bounded_and_released_per_episode(tiny_team):
    m = tiny_team
    engine = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, cache_tokens=150)
    engine.generate(_requests(3))
    assert engine.cached_tokens <= 150 and engine.stats.evicted_entries > 0
    roomy = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES})
    roomy.generate(_requests(2))
    conversations = [k for k in roomy._cache if k.startswith("ep")]
    assert len(conversations) == 6
    roomy.release("ep0/")
    assert "ep0/0" not in roomy._cache and len([k for k in roomy._cache if k.startswith("ep")]) == 5


def test_sampling_is_seeded(tiny_team):
    m = tiny_team
    runs = [LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}, do_sample=True, seed=3).generate(_requests(1))
            for _ in range(2)]
    assert [g.text for g in runs[0]] == [g.text for g in runs[1]]
    greedy = LocalEngine(m.model, m.tokenizer, {r: r for r in ROLES}).generate(_requests(1))
    assert [g.text for g in runs[0]] != [g.text for g in greedy]


def _play_both(team, root, task_ids, limits):
    from prost_lightning.env.pool import ServerPool

    tasks = load_tasks(root, task_ids=task_ids)
    played = {}
    # one pool for both engines (every episode initializes its task afresh), as the benchmark does
    with ServerPool(root, size=len(tasks), step_timeout_s=10) as pool:
        for engine in ("hf_generate", "hf"):
            policies = model_policies(team.model, team.tokenizer, ROLES, team.adapter_name, engine=engine,
                                      num_parameters=team.num_base_parameters)
            played[engine] = run_episodes("planner_executor", tasks, pool, policies, limits=limits)
    return played


def _actions(trajectory):
    return [(c.role, m.role, m.content) for c in trajectory.conversations for m in c.messages]


@pytest.mark.appworld
def test_episodes_play_identically_through_both_local_paths(tiny_team, mini_world_root):
    ids = load_tasks(mini_world_root, "dev", max_tasks=3)
    played = _play_both(tiny_team, mini_world_root, [t.task_id for t in ids],
                        Limits(max_subtasks=2, max_steps_per_subtask=2, max_new_tokens=24))
    for plain, fast in zip(played["hf_generate"], played["hf"], strict=True):
        assert _actions(fast) == _actions(plain)
        assert fast.outcome == plain.outcome
        assert fast.usage.completion_tokens == plain.usage.completion_tokens
        assert fast.usage.flops < plain.usage.flops  # cached prompt tokens are not recomputed


class _InRounds(Policy):
    """The same engine behind the plain batch interface: the runner plays it in rounds."""

    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self.num_parameters = engine.num_parameters

    def generate(self, requests):
        return self.engine.generate(requests)

    def release(self, conversation_prefix):
        self.engine.release(conversation_prefix)


@pytest.mark.appworld
def test_continuous_batching_plays_the_round_loops_episodes(tiny_team, mini_world_root):
    from prost_lightning.env.pool import ServerPool

    tasks = load_tasks(mini_world_root, "dev", max_tasks=3)
    limits = Limits(max_subtasks=2, max_steps_per_subtask=2, max_new_tokens=24)
    engines = {mode: LocalEngine(tiny_team.model, tiny_team.tokenizer, {r: r for r in ROLES})
               for mode in ("rounds", "continuous")}
    played = {}
    with ServerPool(mini_world_root, size=len(tasks), step_timeout_s=10) as pool:
        for mode, engine in engines.items():
            policy = _InRounds(engine) if mode == "rounds" else engine
            played[mode] = run_episodes("planner_executor", tasks, pool, {r: policy for r in ROLES}, limits=limits)
    assert [t.task_id for t in played["continuous"]] == [t.task_id for t in tasks]
    for rounds, continuous in zip(played["rounds"], played["continuous"], strict=True):
        assert _actions(continuous) == _actions(rounds)
        assert continuous.outcome == rounds.outcome
        # FLOPs are not compared: which prefix is already cached when a request arrives (the shared
        # system prompt, a sibling's turn) depends on thread timing, so computed tokens may differ
        assert continuous.usage.prompt_tokens == rounds.usage.prompt_tokens
        assert continuous.usage.completion_tokens == rounds.usage.completion_tokens
    assert engines["continuous"].stats.joined_running_batch > 0  # replies did join running batches
    assert engines["rounds"].stats.joined_running_batch == 0  # each round's batch started together
    assert not engines["continuous"].busy


@pytest.mark.slow
@pytest.mark.embedded_model
@pytest.mark.appworld
@pytest.mark.skipif(not (models_dir() / SMOLLM2_FOLDER / "config.json").exists(), reason="run `make model`")
def test_smollm2_episodes_play_identically_through_both_local_paths(mini_world_root):
    team = _team("smollm2", 0.02)
    ids = [t.task_id for t in load_tasks(mini_world_root, "dev", max_tasks=2)]
    played = _play_both(team, mini_world_root, ids, Limits(max_subtasks=2, max_steps_per_subtask=2,
                                                           max_new_tokens=48, role_max_new_tokens={"planner": 32}))
    for plain, fast in zip(played["hf_generate"], played["hf"], strict=True):
        assert _actions(fast) == _actions(plain)
        assert fast.outcome == plain.outcome
