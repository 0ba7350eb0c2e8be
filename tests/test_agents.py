"""Agents without AppWorld: reply parsing, prompts, the oracle's replies, local and HTTP policies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prost_lightning.agents import (
    FINISH_LINE,
    EpisodeView,
    GenerationRequest,
    OraclePolicy,
    PolicyError,
    PromptSet,
    build_system,
    system_roles,
)
from prost_lightning.agents.parsing import (
    code_block_end,
    extract_code,
    is_execution_error,
    is_finish,
    truncate,
)
from prost_lightning.env.tasks import PlanStep, TaskInfo
from prost_lightning.errors import ConfigError

TASK = TaskInfo(
    task_id="abc_1", scenario_id="abc", instruction="How many notes mention 'Garden'?",
    supervisor={"first_name": "Maya", "last_name": "Okafor", "email": "maya@example.com", "phone_number": "555"},
    difficulty=1,
    plan=[PlanStep("Log in to simple_note.", 'simple_note_token = login("simple_note")'),
          PlanStep("Complete the task.", "apis.supervisor.complete_task(answer=2)")],
)


def test_code_block_end_marks_the_close_of_the_first_block():
    reply = "Think.\n```python\nx = 1\n```\nThen more prose\n```python\ny = 2\n```"
    end = code_block_end(reply)
    assert reply[:end] == "Think.\n```python\nx = 1\n```"
    assert extract_code(reply[:end]) == extract_code(reply)  # cutting there changes nothing read
    assert code_block_end("Opened only\n```python\nx = [1,") is None
    assert code_block_end("Done: logged in.") is None


def test_code_turn_criterion_stops_only_its_own_rows_just_after_the_fence():
    import torch

    from prost_lightning.agents.hf_policy import _CodeBlockClosed
    from prost_lightning.backbone import load_tokenizer

    tok = load_tokenizer("tiny")
    text = "Plan.\n```python\nx = 1\n```\nand then a lot more text"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prompt = [7, 8, 9]
    criterion = _CodeBlockClosed(tok, len(prompt), [True, False])
    stopped_at = None
    for n in range(1, len(ids) + 1):
        row = torch.tensor([prompt + ids[:n]] * 2)
        done = criterion(row, None)
        assert not done[1]  # the row that is not a code turn never stops here
        if done[0] and stopped_at is None:
            stopped_at = n
    assert stopped_at is not None and criterion.length == {0: stopped_at}
    assert tok.decode(ids[:stopped_at]).rstrip().endswith("```")
    assert "```" not in tok.decode(ids[:stopped_at - 1]).split("x = 1")[-1]  # not one token earlier


def test_extract_code_variants():
    assert extract_code("Think.\n```python\nx = 1\nprint(x)\n```\n") == "x = 1\nprint(x)"
    assert extract_code("```\ny = 2\n```") == "y = 2"
    assert extract_code("first\n```python\na = 1\n```\n```python\nb = 2\n```") == "a = 1"
    assert extract_code("cut short\n```python\nz = [1,") == "z = [1,"  # token limit inside the block
    assert extract_code("Done: logged in.") is None
    assert extract_code("```python\n\n```") is None


def test_finish_line_and_observations():
    assert is_finish("The task is finished.", FINISH_LINE)
    assert is_finish("the task is finished", FINISH_LINE)
    assert not is_finish("Log in to spotify.", FINISH_LINE)
    assert is_execution_error("Execution failed. Traceback:\n  NameError")
    assert not is_execution_error("Execution successful.")
    long = "a" * 3000 + "END"
    cut = truncate(long, 300)
    assert len(cut) < 400 and cut.endswith("END") and "characters cut" in cut


def test_prompts_render_and_stay_short(tmp_path):
    prompts = PromptSet()
    for role in ("agent", "planner", "executor"):
        text = prompts.system(role)
        assert "{" not in text and len(text) < 2000, role  # a few hundred tokens at most
    assert FINISH_LINE in prompts.system("planner")
    assert "login(app)" in prompts.system("executor")
    task = prompts.render("task", instruction="Do X.", first_name="A", last_name="B", email="e", phone_number="1")
    assert task.startswith("Task: Do X.\nSupervisor: A B")
    (tmp_path / "planner_system.txt").write_text("Plan briefly. End with: {finish}")
    custom = PromptSet(tmp_path)
    assert custom.system("planner") == f"Plan briefly. End with: {FINISH_LINE}"
    assert custom.system("executor") == prompts.system("executor")  # falls back to the built-in
    with pytest.raises(ConfigError, match="tools_nope"):
        PromptSet(tools="nope")
    with pytest.raises(ConfigError, match="not available"):
        prompts.render("report")


def test_system_registry():
    assert system_roles("single") == ("agent",)
    assert system_roles("planner_executor") == ("planner", "executor")
    with pytest.raises(ConfigError, match="known systems"):
        build_system("committee")


def _ask(policy, role, subtask, step):
    return policy.generate([GenerationRequest(role, [], 64, EpisodeView(TASK, subtask, step))])[0].text


def test_oracle_replays_the_plan_per_role():
    oracle = OraclePolicy()
    assert _ask(oracle, "planner", 1, 1) == "Log in to simple_note."
    assert _ask(oracle, "planner", 3, 1) == FINISH_LINE
    code_turn = _ask(oracle, "executor", 2, 1)
    assert extract_code(code_turn) == "apis.supervisor.complete_task(answer=2)"
    report = _ask(oracle, "executor", 2, 2)
    assert extract_code(report) is None and "Complete the task" in report
    assert extract_code(_ask(oracle, "agent", 1, 1)) == 'simple_note_token = login("simple_note")'
    assert extract_code(_ask(oracle, "agent", 1, 2)) == "apis.supervisor.complete_task(answer=2)"
    no_plan = TaskInfo("t_1", "t", "x", {}, None)
    with pytest.raises(PolicyError, match="no ground-truth plan"):
        oracle.generate([GenerationRequest("agent", [], 8, EpisodeView(no_plan, 1, 1))])


def test_hf_policy_batched_left_padding_matches_single():
    from prost_lightning.agents.hf_policy import HFPolicy
    from prost_lightning.model import RoleLoRAModule

    module = RoleLoRAModule("tiny", roles=["planner", "executor"])
    policy = HFPolicy(module.model, module.tokenizer, module.adapter_name("planner"),
                      num_parameters=module.num_base_parameters)
    chats = [[{"role": "system", "content": "Plan."}, {"role": "user", "content": "Task: count notes"}],
             [{"role": "user", "content": "Task: a much longer instruction about playlists and notes"}]]
    requests = [GenerationRequest("planner", c, 12) for c in chats]
    batched = policy.generate(requests)
    single = [policy.generate([r])[0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in single]
    for g, chat in zip(batched, chats, strict=True):
        assert 0 < g.completion_tokens <= 12
        prompt = module.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert g.prompt_tokens == len(module.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert module.model.active_adapter in ("planner", "executor")
    assert policy.num_parameters == module.num_base_parameters


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A stdlib HTTP server speaking the chat-completions protocol (our client is the thing tested)."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if body["model"] == "broken":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "bad model"}')
            return
        last = body["messages"][-1]["content"]
        content = f"echo {body['model']}: {last}"
        if last == "code":  # a server that writes on past the first code block (as vLLM does)
            content = "I look.\n```python\nprint(1)\n```\nThen more talk\n```python\nprint(2)\n```"
        answer = {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 11, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 7}}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_policy_against_a_local_endpoint(monkeypatch):
    from prost_lightning.agents import make_policies

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("PROST_TEST_KEY", "sk-test")
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        policies = make_policies("openai", ["planner", "executor"], base_url=url,
                                 model={"planner": "lora-planner", "executor": "lora-executor"},
                                 api_key_env="PROST_TEST_KEY")
        requests = [GenerationRequest("executor", [{"role": "user", "content": f"q{i}"}], 32) for i in range(3)]
        out = policies["executor"].generate(requests)
        assert [g.text for g in out] == [f"echo lora-executor: q{i}" for i in range(3)]
        assert all(g.prompt_tokens == 11 and g.completion_tokens == 3 and g.cached_tokens == 7 for g in out)
        code = [GenerationRequest("executor", [{"role": "user", "content": "code"}], 32, stop_after_code=stop)
                for stop in (True, False)]
        cut, whole = policies["executor"].generate(code)
        assert cut.text == "I look.\n```python\nprint(1)\n```"  # the episode reads the first block only
        assert whole.text.endswith("print(2)\n```")
        seen = _FakeOpenAI.seen[-1]
        assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer sk-test"
        assert seen["max_tokens"] == 32 and seen["temperature"] == 0.0
        from prost_lightning.agents.openai_policy import OpenAIPolicy

        with pytest.raises(PolicyError, match="HTTP 400"):
            OpenAIPolicy(url, "broken", retries=3).generate([requests[0]])
    finally:
        server.shutdown()
    with pytest.raises(ConfigError, match="base_url"):
        make_policies("openai", ["agent"], model="m")


def test_episode_accounts_usage_per_role_and_limits_tokens():
    from prost_lightning.agents import CostModel, Episode, Generation, Limits

    ep = Episode(build_system("planner_executor"), TASK, prompts=PromptSet(),
                 limits=Limits(max_new_tokens=100, role_max_new_tokens={"planner": 20}),
                 cost=CostModel(prices={"planner": (1.0, 2.0), "default": (0.5, 0.5)}),
                 role_parameters={"planner": 1000, "executor": 10})
    for role, expected in (("planner", 20), ("executor", 100)):
        messages = ep.conversation(role)
        gen = ep.generate(role, messages, 1, 1)
        request = next(gen)
        assert request.role == role and request.max_new_tokens == expected
        assert request.messages[0]["role"] == "system" and request.view.task is TASK
        with pytest.raises(StopIteration) as stop:
            gen.send(Generation(text=" reply \n", prompt_tokens=1000, completion_tokens=10))
        assert stop.value.value == "reply"
    assert ep.llm_calls == {"planner": 1, "executor": 1}
    assert ep.flops == 2 * 1000 * 1010 + 2 * 10 * 1010
    assert ep.usd == pytest.approx((1000 * 1.0 + 10 * 2.0) / 1000 + (1010 * 0.5) / 1000)
