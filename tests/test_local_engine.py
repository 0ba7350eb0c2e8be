"""The local engine (prefix caches, one mixed-adapter batch) gives the plain-`generate` path's replies.

Adapters here have random, non-zero LoRA weights, so each role's rows really go through a different
adapter: a row routed through the wrong one would change its reply.
"""

from __future__ import annotations

import pytest
import torch

from prost_lightning.agents import Limits, load_tasks, run_episodes
from prost_lightning.agents.factory import model_policies
from prost_lightning.agents.local_engine import LocalEngine
from prost_lightning.agents.policy import GenerationRequest
from prost_lightning.backbone import SMOLLM2_FOLDER, models_dir
from prost_lightning.model import LoraSettings, RoleLoRAModule

ROLES = ["planner", "executor"]


def _team(base_model: str, scale: float):
    module = RoleLoRAModule(base_model, roles=ROLES, lora=LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:  # zero-initialised by PEFT: give every adapter its own effect
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    module.model.eval()
    return module


@pytest.fixture(scope="module")
def tiny_team():
    return _team("tiny", 0.5)


def _chat(role: str, task: int, turns: int) -> list[dict]:
    messages = [{"role": "system", "content": f"You are the {role} of a team. Reply with python code."}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Task {task}, step {t}: show the alarms of the phone."})
        if t < turns - 1:
            messages.append({"role": "assistant", "content": f"```python\nprint({task}, {t})\n```"})
    return messages


def _requests(turns: int) -> list[GenerationRequest]:
    return [GenerationRequest(role=ROLES[i % 2], messages=_chat(ROLES[i % 2], i // 2, turns), max_new_tokens=12,
                              stop_after_code=ROLES[i % 2] == "executor", conversation=f"ep{i}/0")
            for i in range(6)]


def test_mixed_role_batches_equal_plain_generate_and_reuse_prefixes(tiny_team):
    m = tiny_team
    engine = model_policies(m.model, m.tokenizer, ROLES, m.adapter_name, engine="hf")["planner"]
    reference = model_policies(m.model, m.tokenizer, ROLES, m.adapter_name, engine="hf_generate")
    assert isinstance(engine, LocalEngine)
    for turns in (1, 2, 3):
        requests = _requests(turns)
        fast = engine.generate(requests)  # both roles in one call
        plain = [g for r in requests for g in reference[r.role].generate([r])]
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
