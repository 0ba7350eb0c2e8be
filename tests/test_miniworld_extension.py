"""A user extends the mini-world from outside the package: a new family, a new cell of a built-in
family and a new split, built and verified; bad extensions fail before the build, named."""

from __future__ import annotations

import re

import pytest

from prost_lightning.env.miniworld import MiniWorldBuildError, families, read_extension
from prost_lightning.env.runtime import appworld_available
from prost_lightning.env.tasks import load_splits
from prost_lightning.env.world import WorldError, build, verify_world

# A new task shape, written as a user would: it imports nothing of the package and gets the
# building blocks through the `families` argument.
COUNT_ALL = '''
"""count_all: how many items one collection holds."""

PHRASINGS = ("How many {plural} do I have in {app}?",
             "Count all my {app} {plural} and tell me the number.",
             "Tell me the total number of {plural} in my {app} account.")


def register(families):
    st = families.subtasks

    def make(key, rng, variant):
        coll = families.catalog.COLLECTIONS[key]
        keyword, n_match, items, seed = families.draw_items(coll, rng)   # seeded items of the collection
        return dict(instruction=PHRASINGS[variant].format(plural=coll.plural, app=coll.app_title),
                    apps=[coll.app], seed=seed, question=True, answer=len(items),
                    subtasks=[st.login(coll.app), st.collect(coll),
                              st.complete_with(f"len({coll.plural})", f"the number of items in `{coll.plural}`")])

    def check(key):
        if key == "contacts":
            return "the supervisor's phone contacts already hold the cast, so the count is not the seeded one"
        return families.collection_problem(key)

    families.add_family(families.Family("count_all", "cal", ("login", "collect", "count"), 1, make, check))
'''

EXTENSION = """
families: [count_all.py]
splits: [test_custom]
cells:
  - {family: count_all, key: notes, split: test_custom}                  # the new family
  - {family: count_and_message, key: alarms-email, split: test_custom}   # not in the built-in grid
"""


@pytest.fixture
def extension(tmp_path):
    (tmp_path / "count_all.py").write_text(COUNT_ALL)
    path = tmp_path / "extension.yaml"
    path.write_text(EXTENSION)
    return path


def _extension_error(tmp_path, yaml_text: str, family_code: str | None = None) -> str:
    if family_code is not None:
        (tmp_path / "family.py").write_text(family_code)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MiniWorldBuildError) as caught:
        read_extension(path)
    return str(caught.value)


def test_an_extension_file_is_read_and_checked_before_appworld_starts(extension):
    read = read_extension(extension)
    assert read == {"families": [str(extension.parent / "count_all.py")],
                    "cells": [["count_all", "notes", "test_custom"], ["count_and_message", "alarms-email", "test_custom"]],
                    "splits": ["test_custom"]}
    assert "count_all" not in families.FAMILIES  # the check leaves the registry as it found it
    with families.family_files(read["families"]):
        tasks = families.all_tasks(0, read["cells"], read["splits"])
    custom = [t for t in tasks if t["split"] == "test_custom"]
    assert [t["task_id"] for t in custom] == ["calnotes_1", "calnotes_2", "calnotes_3",
                                              "camalarmsemail_1", "camalarmsemail_2", "camalarmsemail_3"]
    new = custom[0]
    assert new["family"] == "count_all" and new["question"] and new["answer"] == len(new["seed"])
    assert new["subtasks"][-1]["code"] == "apis.supervisor.complete_task(answer=len(notes))"


@pytest.mark.parametrize("yaml_text, why", [
    ("cells:\n  - {family: count_flag, key: contacts, split: train}\n",
     r"cell \(count_flag, contacts, train\): the contacts collection"),
    ("cells:\n  - {family: count_keyword, key: notes, split: mine}\n", "split 'mine' is not one of"),
    ("cell: []\n", "the keys 'families', 'splits', 'cells' only"),
    ("families: [nowhere.py]\n", r"families\[0\]: no file .*nowhere.py"),
])
def test_a_bad_extension_file_is_refused_naming_what(tmp_path, yaml_text, why):
    message = _extension_error(tmp_path, yaml_text)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: ") and re.search(why, message), message


FAMILY_HEAD = "def register(families):\n    st = families.subtasks\n"
BAD_FAMILIES = [
    ("x = 1\n", r"defines register\(families\)"),
    ("def register(families):\n    pass\n", r"register\(\) added no family"),
    ("import nothing_such\n", r"cannot load the family file \(ModuleNotFoundError"),
    (FAMILY_HEAD + "    families.add_family(families.Family('count_keyword', 'xyz', ('login',), 1, print))\n",
     "family 'count_keyword': a family of that name is already registered"),
    (FAMILY_HEAD + "    families.add_family(families.Family('mine', 'ckw', ('login',), 1, print))\n",
     "its code 'ckw' is taken by 'count_keyword'"),
    (FAMILY_HEAD + "    families.add_family(families.Family('mine', 'my_code', ('login',), 0, print))\n",
     "must be lower-case letters and digits.*difficulty must be an integer >= 1"),
]


@pytest.mark.parametrize("code, why", BAD_FAMILIES)
def test_a_bad_family_file_is_refused_with_the_file_named(tmp_path, code, why):
    message = _extension_error(tmp_path, "families: [family.py]\n", code)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: {tmp_path / 'family.py'}: ")
    assert re.search(why, message), message
    assert "mine" not in families.FAMILIES


@pytest.mark.parametrize("make_body, why", [
    ("    raise KeyError('flag')", r"cell \(mine, notes, train\): mine.make failed \(KeyError: 'flag'\)"),
    ("    return {'instruction': 'Do it.'}", r"cell \(mine, notes, train\): mine.make returned no apps, seed"),
    ("    return dict(instruction='x', apps=['simple_note'], seed=[], question=True, answer=1,\n"
     "                subtasks=[st.login('simple_note')])", "one subtasks.step\\(description, code\\) per kind \\(2: login, count\\)"),
])
def test_a_family_that_makes_broken_tasks_fails_at_build_time_naming_the_cell(tmp_path, make_body, why):
    code = (FAMILY_HEAD + "    def make(key, rng, variant):\n" + "\n".join("    " + line for line in make_body.splitlines())
            + "\n    families.add_family(families.Family('mine', 'mne', ('login', 'count'), 1, make))\n")
    message = _extension_error(tmp_path, "families: [family.py]\ncells:\n  - {family: mine, key: notes, split: train}\n",
                               code)
    assert re.search(why, message), message


@pytest.mark.appworld
def test_a_new_family_cell_and_split_build_and_verify(tmp_path, extension):
    if not appworld_available():
        pytest.skip("AppWorld venv missing: run `make appworld`")
    root = tmp_path / "world"
    summary = build(str(root), cells=str(extension))
    assert summary["tasks"] == 150 + 6
    splits = load_splits(root)
    assert splits["test_custom"] == ["calnotes_1", "calnotes_2", "calnotes_3",
                                     "camalarmsemail_1", "camalarmsemail_2", "camalarmsemail_3"]
    report = verify_world(root, size=2, splits=["test_custom"])
    assert report["tasks"] == 6 and report["oracle_tgc"] == 100.0 and report["noop_tgc"] == 0.0, report["problems"]


def test_a_broken_extension_fails_the_build_with_the_cell_named(tmp_path):
    extension = tmp_path / "cells.yaml"
    extension.write_text("cells:\n  - {family: update_keyword, key: drafts, split: train}\n")
    with pytest.raises(WorldError, match=r"cell \(update_keyword, drafts, train\)"):
        build(str(tmp_path / "world"), cells=str(extension))
