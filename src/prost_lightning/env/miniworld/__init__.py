"""The mini-world: our own AppWorld tasks, built into an AppWorld data root.

`build(root, seed=0)` runs build.py with the AppWorld interpreter (this package's other modules
are plain data and templates; the main venv never imports appworld).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.py"
BUILD_TIMEOUT_S = 600


class MiniWorldBuildError(RuntimeError):
    """The builder failed; the message carries its stderr tail."""


EXTENSION_KEYS = ("families", "splits", "cells")


def read_extension(path: str | Path) -> dict:
    """An extension file (YAML or JSON) -> {"families": [absolute paths], "cells": [[family, key,
    split], ...], "splits": [...]}, checked before the AppWorld builder starts: the family files
    load and register, the grid passes ``check_grid`` and every task of it is made once.

        families: [my_families.py]           # Python files (relative to this file) with register(families)
        splits: [test_custom]                # new split names (each gets datasets/<name>.txt)
        cells:                               # (family, cell key, split) added to SCENARIOS
          - {family: count_and_message, key: alarms-email, split: test_custom}
    """
    import yaml

    from . import families

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise MiniWorldBuildError(f"{path}: cannot read the extension file ({error})") from None
    if not isinstance(raw, dict) or set(raw) - set(EXTENSION_KEYS):
        raise MiniWorldBuildError(f"{path}: an extension file has the keys {', '.join(map(repr, EXTENSION_KEYS))} only")
    family_files = []
    for i, name in enumerate(raw.get("families") or []):
        file = (path.parent / str(name)).resolve()
        if not file.is_file():
            raise MiniWorldBuildError(f"{path}: families[{i}]: no file {file} (paths are relative to the extension file)")
        family_files.append(str(file))
    splits = [str(s) for s in raw.get("splits") or []]
    cells = []
    for i, cell in enumerate(raw.get("cells") or []):
        if not isinstance(cell, dict) or set(cell) != {"family", "key", "split"}:
            raise MiniWorldBuildError(f"{path}: cells[{i}] must have exactly family, key and split; got {cell!r}")
        cells.append([str(cell["family"]), str(cell["key"]), str(cell["split"])])
    try:
        with families.family_files(family_files):
            families.all_tasks(0, cells, splits)  # pure Python, a fraction of a second: every cell made once
    except (families.CellError, families.FamilyError) as error:
        raise MiniWorldBuildError(f"{path}: {error}") from None
    return {"families": family_files, "cells": cells, "splits": splits}


def build(root: str | Path, seed: int = 0, timeout_s: float = BUILD_TIMEOUT_S,
          extension: str | Path | None = None) -> dict:
    """Build the mini-world data root at `root` (replaced atomically); returns the build summary.

    The summary is the builder's JSON line: root, tasks, scenarios and timings. ``extension``: a
    file of extra families, cells and splits (:func:`read_extension`).
    """
    import tempfile

    from prost_lightning.env.runtime import appworld_python

    cells = read_extension(extension) if extension is not None else None  # a bad file fails before AppWorld
    command = [str(appworld_python()), str(BUILD_SCRIPT), "--root", str(root), "--seed", str(seed)]
    with tempfile.TemporaryDirectory(prefix="prost-miniworld-") as scratch:
        if cells is not None:
            extension_json = Path(scratch) / "extension.json"
            extension_json.write_text(json.dumps(cells))
            command += ["--extension", str(extension_json)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise MiniWorldBuildError(f"mini-world build timed out after {timeout_s:g} s") from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise MiniWorldBuildError(f"mini-world build failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])
