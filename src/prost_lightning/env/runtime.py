"""Where the AppWorld interpreter lives.

AppWorld runs in its own venv (it pins pydantic<2 and freezes the process clock), so the main
project never imports it: it only needs the path of that venv's Python to start servers and
scripts with. Default: ``<project root>/.venv-appworld/bin/python``; override with the
environment variable ``PROST_APPWORLD_PYTHON``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..process import RuntimeNotInstalled, project_root, venv_python

APPWORLD_PYTHON_ENV = "PROST_APPWORLD_PYTHON"
APPWORLD_VENV_DIRNAME = ".venv-appworld"
# The tool library every episode runs in the AppWorld shell right after /initialize.
PREAMBLE_PATH = Path(__file__).with_name("preamble.py")


class AppWorldNotInstalled(RuntimeNotInstalled):
    """The AppWorld interpreter is missing; the message says how to install it."""


__all__ = ["AppWorldNotInstalled", "appworld_available", "appworld_python", "load_preamble", "project_root"]


def appworld_python() -> Path:
    """Path of the AppWorld venv's Python; raises AppWorldNotInstalled with the fix when absent."""
    try:
        return venv_python(APPWORLD_VENV_DIRNAME, APPWORLD_PYTHON_ENV, "AppWorld runtime", "make appworld")
    except RuntimeNotInstalled as missing:
        raise AppWorldNotInstalled(str(missing)) from None


def load_preamble(path: str | os.PathLike | None = None) -> str | None:
    """The source of the preamble (default: env/preamble.py); None when the file does not exist."""
    path = Path(path) if path else PREAMBLE_PATH
    return path.read_text(encoding="utf-8") if path.is_file() else None


def appworld_available() -> bool:
    """True when the AppWorld interpreter exists (for skipping tests and choosing defaults)."""
    try:
        appworld_python()
    except AppWorldNotInstalled:
        return False
    return True
