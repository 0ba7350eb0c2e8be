"""Files written so that nothing half-written is ever left behind.

Every output of the framework (reports, trajectory files, benchmark results) goes through
:func:`write_atomic`: a temporary file in the same folder, then a rename, so a reader or a killed
process sees the old file or the new one, never a torn one. Every verb that writes an output calls
:func:`check_writable` on it first, before the work whose result it keeps.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prost_lightning.errors import ConfigError


def write_atomic(path: str | os.PathLike, data: bytes | str | Iterable[str]) -> None:
    """Write ``data`` (bytes, text, or an iterable of text chunks) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            elif isinstance(data, str):
                f.write(data.encode("utf-8"))
            else:
                for chunk in data:
                    f.write(chunk.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = False) -> Path:
    """Refuse, before any work is done, an output path that could not be written; creates nothing.

    ``option`` names the setting in the message (``--out``, ``--root``); ``folder`` says the output is
    a folder rather than a file. Without this check a wrong path fails after the episodes or the
    build it was meant to keep, and their work is lost.
    """
    path = Path(path)
    where = f"{option} {path}"
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{where}: is a file, not a folder; give a folder path (or move the file away)")
        if not folder and path.is_dir():
            raise ConfigError(f"{where}: is a folder; give a file path, e.g. {path / 'out.jsonl'}")
        if not folder and not path.is_file():
            raise ConfigError(f"{where}: is not a regular file; give the path of a file to write")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{where}: is not writable; fix its permissions or choose another path")
    ancestor = path if folder and path.is_dir() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{where}: {ancestor} is a file, so nothing can be created under it; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: the folder {ancestor} is not writable; choose another path")
    return path
