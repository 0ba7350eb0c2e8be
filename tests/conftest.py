"""Shared fixtures.

`mini_world_root`: the mini-world built once per source version into a cache folder
(worlds/.test-cache/<hash of the mini-world sources + seed>/, git-ignored), so repeated test
runs reuse it. A file lock keeps parallel sessions from building the same world twice.

`prost`: runs a `prost ...` command line in the test process (the console script's own
`cli.main`, from the repository root), for tests of what a command prints and exits with. A fresh
interpreter costs ~6 s of torch/Lightning imports on 2 cores; the tests that need a real process
(the console entry, DDP, `--help` loading no torch) still start one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MINIWORLD_DIR = REPO / "src" / "prost_lightning" / "env" / "miniworld"
TEST_CACHE = REPO / "worlds" / ".test-cache"
MINI_WORLD_SEED = 0


def miniworld_source_hash(seed: int = MINI_WORLD_SEED) -> str:
    digest = hashlib.sha256(f"seed={seed}\n".encode())
    for path in sorted(MINIWORLD_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cached_mini_world(seed: int = MINI_WORLD_SEED) -> Path:
    """Path of a complete mini-world for `seed`, building it under a lock if missing."""
    from prost_lightning.env import miniworld

    root = TEST_CACHE / miniworld_source_hash(seed)
    marker = root / "miniworld.json"
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    with open(TEST_CACHE / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not marker.exists():
            miniworld.build(root, seed=seed)
    assert json.loads(marker.read_text())["seed"] == seed
    return root


@pytest.fixture(scope="session")
def mini_world_root() -> Path:
    from prost_lightning.env.runtime import appworld_available

    if not appworld_available():
        pytest.skip("AppWorld venv missing: run `make appworld`")
    return cached_mini_world()


@pytest.fixture
def prost(capsys, monkeypatch):
    """``prost(*argv)`` -> CompletedProcess(returncode, stdout, stderr) of ``cli.main(argv)``."""
    from prost_lightning.cli import main

    monkeypatch.chdir(REPO)

    def run(*argv: str) -> subprocess.CompletedProcess:
        capsys.readouterr()  # only this command's output
        try:
            main(list(argv))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["prost", *argv], code, out.out, out.err)

    return run
