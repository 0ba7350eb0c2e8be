"""A user extends the mini-world from outside the package: a new split with a new cell, built and verified."""

from __future__ import annotations

import pytest

from prost_lightning.env.miniworld import MiniWorldBuildError, read_extension
from prost_lightning.env.runtime import appworld_available
from prost_lightning.env.tasks import load_splits
from prost_lightning.env.world import WorldError, build, verify_world

EXTENSION = """
splits: [test_custom]
cells:
  - {family: count_and_message, key: alarms-email, split: test_custom}   # not in the built-in grid
"""


def test_an_extension_file_is_read_and_checked_before_appworld_starts(tmp_path):
    good = tmp_path / "cells.yaml"
    good.write_text(EXTENSION)
    assert read_extension(good) == {"cells": [["count_and_message", "alarms-email", "test_custom"]],
                                    "splits": ["test_custom"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("cells:\n  - {family: count_flag, key: contacts, split: train}\n")
    with pytest.raises(MiniWorldBuildError, match=r"cell \(count_flag, contacts, train\): the contacts collection"):
        read_extension(bad)
    unnamed_split = tmp_path / "split.yaml"
    unnamed_split.write_text("cells:\n  - {family: count_keyword, key: notes, split: mine}\n")
    with pytest.raises(MiniWorldBuildError, match="split 'mine' is not one of"):
        read_extension(unnamed_split)
    typo = tmp_path / "typo.yaml"
    typo.write_text("cell: []\n")
    with pytest.raises(MiniWorldBuildError, match="the keys 'cells' and 'splits' only"):
        read_extension(typo)


@pytest.mark.appworld
def test_a_new_cell_and_split_build_and_verify(tmp_path):
    if not appworld_available():
        pytest.skip("AppWorld venv missing: run `make appworld`")
    extension = tmp_path / "cells.yaml"
    extension.write_text(EXTENSION)
    root = tmp_path / "world"
    summary = build(str(root), cells=str(extension))
    assert summary["tasks"] == 150 + 3
    splits = load_splits(root)
    assert splits["test_custom"] == ["camalarmsemail_1", "camalarmsemail_2", "camalarmsemail_3"]
    report = verify_world(root, size=2, splits=["test_custom"])
    assert report["tasks"] == 3 and report["oracle_tgc"] == 100.0 and report["noop_tgc"] == 0.0, report["problems"]


def test_a_broken_extension_fails_the_build_with_the_cell_named(tmp_path):
    extension = tmp_path / "cells.yaml"
    extension.write_text("cells:\n  - {family: update_keyword, key: drafts, split: train}\n")
    with pytest.raises(WorldError, match=r"cell \(update_keyword, drafts, train\)"):
        build(str(tmp_path / "world"), cells=str(extension))
