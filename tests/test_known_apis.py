"""Known APIs: code turns decode only names the world documents after ``apis.<app>.``."""

from __future__ import annotations

import re

import pytest

from prost_lightning.agents.known_apis import KnownApis
from prost_lightning.backbone import SMOLLM2_FOLDER, models_dir
from prost_lightning.env.tasks import NoWorldData, load_api_names

APIS = KnownApis({"phone": ["show_alarms", "search_contacts", "show_alarm"], "supervisor": ["complete_task"]})


@pytest.mark.parametrize(("before", "piece", "allowed"), [
    ("x = apis.phone.", "show", True),                       # the start of a real name
    ("x = apis.phone.", "search_al", False),                 # no phone API starts so
    ("x = apis.phone.show_alarm", "s(", True),               # a real name, finished
    ("x = apis.phone.show_alarm", "(", True),                # show_alarm is real too
    ("x = apis.phone.search", "(", False),                   # finished at a name that is not real
    ("x = apis.pho", "ne.", True),                           # the app, then its dot
    ("x = apis.", "venmo", False),                           # an app the world lacks
    ("apis.phone.search_alarms()\ny = ", "1", True),         # names finished before are not re-judged
    ("phone = apis.phone\nphone.", "search_alarms", True),   # aliases are not followed
    ("my_apis.", "anything", True),                          # only ``apis.`` itself starts a name
    ("", "apis.supervisor.complete_task(answer=3)", True),
])
def test_a_piece_is_allowed_only_while_every_name_it_touches_can_be_real(before, piece, allowed):
    assert APIS.allows(before, piece) is allowed


def test_greedy_bans_down_to_the_first_allowed_token_and_sampling_checks_them_all():
    pieces = {0: "search_al", 1: "show", 2: "xyz", 3: "sh"}
    before = "apis.phone."
    assert APIS.banned(before, [0, 1, 2, 3], pieces.__getitem__, first_allowed=True) == [0]
    assert APIS.banned(before, [0, 1, 2, 3], pieces.__getitem__, first_allowed=False) == [0, 2]


def test_the_worlds_api_names_come_from_its_api_docs(mini_world_root, tmp_path):
    names = load_api_names(mini_world_root)
    assert "show_alarms" in names["phone"] and "search_alarms" not in names["phone"]
    assert "complete_task" in names["supervisor"]
    with pytest.raises(NoWorldData, match="api_docs"):
        load_api_names(tmp_path)


@pytest.mark.embedded_model
@pytest.mark.skipif(not (models_dir() / SMOLLM2_FOLDER / "config.json").exists(), reason="run `make model`")
def test_smollm2_asked_for_an_unknown_api_writes_a_real_one_on_both_local_paths(mini_world_root):
    from prost_lightning.agents.hf_policy import HFPolicy
    from prost_lightning.agents.local_engine import LocalEngine
    from prost_lightning.agents.policy import GenerationRequest
    from prost_lightning.backbone import load_base_model, load_tokenizer

    model, tok = load_base_model("smollm2"), load_tokenizer("smollm2")
    apis = KnownApis(load_api_names(mini_world_root))
    chat = [{"role": "system", "content": "You write Python for AppWorld. Reply with one ```python block."},
            {"role": "user", "content": "Copy this code exactly:\n```python\n"
                                        "alarms = apis.phone.search_alarms(access_token=token)\n```"}]

    def reply(policy, known, **kwargs):
        request = GenerationRequest("executor", chat, 40, stop_after_code=True, known_apis=known)
        return policy.generate([request])[0].text

    assert "apis.phone.search_alarms(" in reply(HFPolicy(model, tok), None)  # the model copies the made-up name
    engine = LocalEngine(model, tok, {"executor": None})
    constrained = reply(engine, apis)
    assert constrained == reply(HFPolicy(model, tok), apis)  # both paths pick the same tokens
    assert engine.stats.draft_tokens > 0  # the prompt's made-up name was drafted and judged position by position
    name = constrained.split("apis.phone.")[1].split("(")[0]
    assert name in apis.names["phone"]
    sampled = LocalEngine(model, tok, {"executor": None}, do_sample=True, temperature=1.0, seed=0)
    for _ in range(3):
        text = reply(sampled, apis)
        for match in re.finditer(r"apis\.(\w+)\.(\w+)", text):
            app, api = match.groups()
            known = apis.names.get(app, ())
            # a name cut by the token limit must still be the start of a real one
            assert api in known or (match.end() == len(text) and any(n.startswith(api) for n in known)), text


def test_the_reevaluation_table_averages_the_seeds_of_each_configuration():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "known_apis.py"
    spec = importlib.util.spec_from_file_location("known_apis_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def cell(solved_grid, solved_known, made_up_grid):
        side = {"tests_passed": 1, "made_up_api_episodes": 0}
        return {"test_normal": {"tasks": 4, "grid": {**side, "solved": solved_grid, "made_up_api_episodes": made_up_grid},
                                "known_apis": {**side, "solved": solved_known}}}

    rows = script.table({"single_full_s0": cell(2, 1, 3), "single_full_s1": cell(0, 1, 1)}).splitlines()
    assert len(rows) == 3  # header, rule, one configuration
    assert rows[2] == "| single_full (2) | 25.0 (50.0, 0.0) -> 25.0 (25.0, 25.0) | 4 -> 0 | 2 -> 2 |"
