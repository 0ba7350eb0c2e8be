"""Servers this project starts as child processes, and the venvs they run in.

The AppWorld environment servers (env/server.py) and the vLLM inference server (serving/) are
both a Python script run by another venv's interpreter, listening on 127.0.0.1, that must die with
the process that started it. This module is that shared part, stdlib only:

    proc = ManagedProcess([python, "-I", launcher, "--port", "8000"], log_path=..., cwd=...)
    proc.spawn(env)                       # own session: the whole group is stopped as one
    proc.wait_until(probe, deadline)      # False when the process died or the deadline passed
    proc.terminate(grace_s=5)             # SIGTERM to the group, SIGKILL after the grace period

Every process still alive at interpreter exit is stopped by an atexit hook. A killed parent runs
no atexit hook, so each launcher (a script run by the other venv, importing nothing of this
package) also exits by itself when its parent pid disappears.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from prost_lightning.errors import ProstError

_LIVE: set[ManagedProcess] = set()
_LIVE_LOCK = threading.Lock()


class RuntimeNotInstalled(ProstError, RuntimeError):
    """A venv this project drives (AppWorld, the inference server) is missing; the message says how to install it."""


def project_root() -> Path:
    """The repository root: the folder holding src/ (this file is src/prost_lightning/process.py)."""
    return Path(__file__).resolve().parents[2]


def venv_python(venv_dirname: str, override_env: str, what: str, install: str) -> Path:
    """The Python of ``<project root>/<venv_dirname>`` (or of ``$override_env``), or a clear error.

    ``what`` names the runtime and ``install`` the command that installs it, for the message.
    """
    override = os.environ.get(override_env)
    if override:
        path, where = Path(override), f"${override_env}={override}"
    else:
        path = project_root() / venv_dirname / "bin" / "python"
        where = str(path)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeNotInstalled(f"{what} not installed: run `{install}` (looked for {where}; "
                                  f"set {override_env} to use another interpreter)")
    return path


def scratch_folder(owner: object, prefix: str) -> Path:
    """A new folder in the system temp dir for ``owner`` (a server's working folder and default log).

    Removed when ``owner`` is garbage-collected or at interpreter exit, whichever comes first, so a
    server object that is never started or never stopped leaves nothing behind; ``stop()`` removes
    it earlier.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    weakref.finalize(owner, shutil.rmtree, path, ignore_errors=True)
    return path


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (callers retry if another process wins it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_tail(path: Path, max_chars: int = 3000) -> str:
    """The last ``max_chars`` of a log file ("" when it cannot be read)."""
    try:
        return Path(path).read_text(errors="replace")[-max_chars:]
    except OSError:
        return ""


class ManagedProcess:
    """One child process in its own session, logging to a file, stopped as a group."""

    def __init__(self, argv: Sequence[str], *, log_path: str | os.PathLike, cwd: str | os.PathLike | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stopped as a unit, immune to the terminal's Ctrl-C
            )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def wait_until(self, ready: Callable[[], bool], deadline: float, poll_s: float = 0.1) -> bool:
        """Poll ``ready()`` until it is true (True), or the process exits or ``deadline`` passes (False)."""
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if ready():
                return True
            time.sleep(poll_s)
        return False

    def exited_within(self, timeout_s: float) -> bool:
        """True if the process has exited or does within ``timeout_s``."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def log_tail(self, max_chars: int = 3000) -> str:
        return read_tail(self.log_path, max_chars)

    def terminate(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s``; reaps the process."""
        process, self.process = self.process, None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)  # the group is the child's own session: pgid == pid
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            process.wait(timeout=1.0)  # reap
        except subprocess.TimeoutExpired:
            pass


def stop_all_processes() -> None:
    """Stop every process started here and not stopped yet (atexit / signal path)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        proc.terminate(grace_s=1.0)


atexit.register(stop_all_processes)
