"""One AppWorld environment server: a uvicorn process on 127.0.0.1 serving AppWorld's own
``appworld.serve.environment:app``, started with the AppWorld interpreter.

    server = EnvServer(root).start()      # waits until it answers, bounded by startup_timeout_s
    server.client.initialize(task_id)     # an EnvClient bound to server.url
    server.stop()                         # SIGTERM to its process group, SIGKILL after a grace period

The process (a :class:`~prost_lightning.process.ManagedProcess`) runs in its own process group
(stopped by pid, children included), with ``APPWORLD_ROOT`` = the world root and a private temp
dir as cwd (``import appworld`` loads ``./.env``). Every server still alive at interpreter exit is
stopped by an atexit hook, and the launcher exits by itself when its parent process disappears.
"""

from __future__ import annotations

import os
import shutil
import time
from functools import partial
from pathlib import Path

from ..errors import ProstError
from ..process import ManagedProcess, free_port, read_tail, scratch_folder
from .client import EnvClient
from .runtime import appworld_python

_LAUNCHER = Path(__file__).with_name("_appworld_server.py")


class ServerStartError(ProstError, RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


class EnvServer:
    """One server process. Not thread-safe by itself: the pool gives each to one user at a time."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        python: str | os.PathLike | None = None,
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout_s: float = 90.0,
        call_timeout_s: float = 60.0,
        warm: bool = True,
    ):
        """``warm``: import every AppWorld app before reporting healthy (slower start, fast first episode)."""
        self.root = Path(root).resolve()
        self.python = Path(python) if python else appworld_python()
        self.requested_port = port
        self.startup_timeout_s = startup_timeout_s
        self.call_timeout_s = call_timeout_s
        self.warm = warm
        self._workdir = scratch_folder(self, "prost-appworld-")
        self.log_path = Path(log_path) if log_path else self._workdir / "server.log"
        self.port: int | None = None
        self._proc: ManagedProcess | None = None
        self.startup_s: float | None = None  # seconds the last start() took

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> EnvClient:
        return EnvClient(self.url, timeout_s=self.call_timeout_s)

    def alive(self) -> bool:
        """True while the process runs (it may still be busy or hung: see ``client.health()``)."""
        return self._proc is not None and self._proc.alive()

    def exited_within(self, timeout_s: float) -> bool:
        """True if the process has exited or does within ``timeout_s`` (a dying process closes its
        sockets a moment before its exit status can be collected)."""
        return self._proc is None or self._proc.exited_within(timeout_s)

    def start(self) -> EnvServer:
        """Start the process and wait until ``GET /`` answers. Retries a lost port race twice."""
        if not (self.root / "data").is_dir():
            raise ServerStartError(f"no AppWorld data under {self.root}: expected {self.root / 'data'}/")
        self._workdir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        for attempt in range(3):
            self.port = self.requested_port if (self.requested_port and attempt == 0) else free_port()
            self._spawn()
            healthy = partial(EnvClient(self.url).health, timeout_s=1.0)
            if self._proc.wait_until(healthy, began + self.startup_timeout_s):
                self.startup_s = time.monotonic() - began
                return self
            log = self.log_tail()
            self._terminate(grace_s=2.0)
            if "address already in use" not in log.lower():
                break
        raise ServerStartError(
            f"AppWorld server for {self.root} did not start within {self.startup_timeout_s:g} s "
            f"(log {self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after ``grace_s``) and remove the temp dir."""
        self._terminate(grace_s)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def restart(self) -> EnvServer:
        """Stop (hard if hung) and start again on a fresh port."""
        self._terminate(grace_s=2.0)
        self.requested_port = None
        return self.start()

    def log_tail(self, max_chars: int = 3000) -> str:
        return read_tail(self.log_path, max_chars)

    def __enter__(self) -> EnvServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        # -I: isolated mode, so the launcher's folder (our env/ package) is not on sys.path
        argv = [self.python, "-I", _LAUNCHER, "--port", self.port, "--parent-pid", os.getpid()]
        self._proc = ManagedProcess(argv + ([] if self.warm else ["--no-warm"]), log_path=self.log_path,
                                    cwd=self._workdir)
        self._proc.spawn(dict(os.environ, APPWORLD_ROOT=str(self.root), PYTHONUNBUFFERED="1"))

    def _terminate(self, grace_s: float) -> None:
        if self._proc is not None:
            self._proc.terminate(grace_s)
