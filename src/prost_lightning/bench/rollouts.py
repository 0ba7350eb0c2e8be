"""Rollouts: environment cost alone. Episodes per minute of a scripted (oracle-plan) policy with 1
and with N AppWorld server processes, and the HTTP overhead per execute against AppWorld's
in-process ``world.execute`` of the same code.

The scripted episode is what a policy-free run costs: lease a server, initialize the task, run the
tool preamble, execute the ground-truth plan's code one sub-task per call, evaluate. One pool of N
servers serves both settings (1 worker thread, then N), so server start-up is paid once and
reported apart. The in-process side runs ``bench/_appworld_execute.py`` under the AppWorld
interpreter (the main venv never imports appworld) on the same task and code. Batched generation
(the other rollout cost) is the ``generation`` benchmark. Target: overhead <= 10 ms per call.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prost_lightning.bench.common import BenchSkipped, Context, Recorder, Timer

TARGET_OVERHEAD_MS = 10.0
EXPERIMENT = "prost-bench"
# the same code on both sides: a no-op statement, and one API call with a small JSON answer
CODES = {"noop": "x = 1", "api_call": "profile = apis.supervisor.show_profile()"}
_SCRIPT = Path(__file__).with_name("_appworld_execute.py")


def world_root(ctx: Context) -> Path:
    """The mini-world to run on; built with ``prost_lightning.env.miniworld.build`` when missing."""
    from prost_lightning.env.runtime import AppWorldNotInstalled, appworld_python
    from prost_lightning.env.tasks import is_world_root

    try:
        appworld_python()
    except AppWorldNotInstalled as error:
        raise BenchSkipped(str(error)) from None
    root = Path(ctx.world)
    if not is_world_root(root):
        from prost_lightning.env import miniworld

        print(f"[bench] no mini-world at {root}: building it (once)", file=sys.stderr, flush=True)
        miniworld.build(root)
    return root


def _tasks(root: Path, count: int):
    from prost_lightning.env.tasks import load_task, load_task_ids

    tasks = [load_task(root, t) for t in load_task_ids(root, "train")]
    tasks = [t for t in tasks if t.plan]
    if not tasks:
        raise BenchSkipped(f"{root}: no train task with a ground-truth plan (data/tasks/*/ground_truth/plan.json)")
    return [tasks[i % len(tasks)] for i in range(count)]


def scripted_episode(pool, task, preamble: str | None) -> dict:
    """One policy-free episode (the oracle that `prost world verify` plays), on a leased server."""
    from prost_lightning.env.world import play_oracle

    with pool.lease() as env:
        outcome = play_oracle(env, task, preamble, experiment_name=EXPERIMENT)
        return {"success": outcome["success"], "steps": env.steps}


def episodes_per_minute(pool, tasks, workers: int, preamble: str | None) -> tuple[float, list[dict]]:
    with ThreadPoolExecutor(max_workers=workers) as executor, Timer() as t:
        episodes = list(executor.map(lambda task: scripted_episode(pool, task, preamble), tasks))
    return 60.0 * len(tasks) / t.seconds, episodes


class InProcessTimer:
    """``bench/_appworld_execute.py`` under the AppWorld interpreter, with the task's world open."""

    def __init__(self, root: Path, task_id: str):
        from prost_lightning.env.runtime import appworld_python

        self._cwd = tempfile.TemporaryDirectory(prefix="prost-bench-aw-")
        codes = Path(self._cwd.name) / "codes.json"
        codes.write_text(json.dumps(CODES))
        env = dict(os.environ, APPWORLD_ROOT=str(root.resolve()))
        self.process = subprocess.Popen(
            [str(appworld_python()), "-I", str(_SCRIPT), "--task-id", task_id, "--codes", str(codes),
             "--experiment-name", EXPERIMENT],
            cwd=self._cwd.name, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        self._read()  # {"ready": true} once the world is open

    def _read(self) -> dict:
        while True:  # skip anything else AppWorld may print
            line = self.process.stdout.readline()
            if not line:
                self.close()
                raise RuntimeError("in-process AppWorld timer exited early (run its script by hand to see "
                                   f"why: {_SCRIPT})")
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue

    def block(self, rounds: int) -> dict[str, list[float]]:
        self.process.stdin.write(f"{rounds}\n")
        self.process.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        try:
            self.process.communicate(input="\n", timeout=30)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            self.process.kill()
            self.process.wait()
        self._cwd.cleanup()


def _http_block(env, rounds: int) -> dict[str, list[float]]:
    seconds = {name: [] for name in CODES}
    for _ in range(rounds):
        for name, code in CODES.items():
            start = time.perf_counter()
            env.execute(code)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def execute_timings(pool, root: Path, task_id: str, repeats: int, block: int = 10) -> tuple[dict, dict]:
    """Per-call seconds of the same codes over HTTP and in-process, measured in alternating blocks."""
    http = {name: [] for name in CODES}
    local = {name: [] for name in CODES}
    timer = InProcessTimer(root, task_id)
    try:
        with pool.lease() as env:
            env.initialize(task_id, experiment_name=EXPERIMENT)
            _http_block(env, 1)  # warm-up, as on the in-process side
            for _ in range(max(1, repeats // block)):
                for side, seconds in ((http, _http_block(env, block)), (local, timer.block(block))):
                    for name, values in seconds.items():
                        side[name].extend(values)
    finally:
        timer.close()
    return http, local


def run(ctx: Context) -> dict:
    from prost_lightning.env.pool import ServerPool

    rec = Recorder("rollouts", ctx)
    root = world_root(ctx)
    servers = 2
    episodes = servers if ctx.quick else 8 * servers  # quick: one episode per server and setting
    repeats = 10 if ctx.quick else 200
    tasks = _tasks(root, episodes)
    from prost_lightning.env.runtime import load_preamble

    preamble = load_preamble()
    rec.settings = {"world": str(root), "servers": [1, servers], "episodes_per_setting": episodes,
                    "policy": "scripted: ground-truth plan code, one execute per sub-task",
                    "execute_repeats": repeats, "codes": CODES,
                    "timing": "median per call; HTTP and in-process timed in alternating blocks of 10 rounds"}
    with tempfile.TemporaryDirectory(prefix="prost-bench-logs-") as logs:
        with ServerPool(root, size=servers, experiment_name=EXPERIMENT, log_dir=logs) as pool:
            rec.figure("server_startup_s", max(pool.startup_s), "s", f"start of {servers} servers in parallel (slowest)")
            # warm-up, one episode per server: first-call costs (app imports, DB copies) are not timed
            episodes_per_minute(pool, tasks[:servers], servers, preamble)
            one, runs_one = episodes_per_minute(pool, tasks, 1, preamble)
            many, runs_many = episodes_per_minute(pool, tasks, servers, preamble)
            http, inproc = execute_timings(pool, root, tasks[0].task_id, repeats)

    runs = runs_one + runs_many
    rec.figure("episodes_per_min_1_server", one, "episodes/min", "scripted episodes, 1 server, 1 worker")
    rec.figure(f"episodes_per_min_{servers}_servers", many, "episodes/min",
               f"scripted episodes, {servers} servers, {servers} workers")
    rec.figure(f"scaling_{servers}_vs_1", many / one, "x", f"episodes/min with {servers} servers / with 1")
    rec.figure("oracle_success_rate", sum(r["success"] for r in runs) / len(runs), "fraction",
               "share of scripted episodes that evaluate() passed (sanity: the plans are right)")
    rec.figure("executes_per_episode", statistics.mean(r["steps"] for r in runs), "calls",
               "execute calls per episode (preamble included)")
    for name in CODES:
        http_ms = 1000 * statistics.median(http[name])
        local_ms = 1000 * statistics.median(inproc[name])
        rec.figure(f"execute_http_ms_{name}", http_ms, "ms", f"client.execute over HTTP, code '{CODES[name]}'")
        rec.figure(f"execute_inprocess_ms_{name}", local_ms, "ms", "world.execute in-process, same code")
        rec.figure(f"http_overhead_ms_{name}", http_ms - local_ms, "ms", "HTTP - in-process, per call (medians)")
        rec.figure(f"http_overhead_min_ms_{name}", 1000 * (min(http[name]) - min(inproc[name])), "ms",
                   "HTTP - in-process, fastest calls (least disturbed by other load)")
    rec.target("http_overhead_ms_noop", "<=", TARGET_OVERHEAD_MS,
               "the overhead is uvicorn + FastAPI + JSON + a new TCP connection per call (urllib); "
               "a keep-alive connection (http.client.HTTPConnection reused per server) would remove the "
               "connect cost")
    cores = os.cpu_count() or 1
    if cores <= servers:
        rec.note(f"{cores} CPU cores for {servers} servers and the driver: server scaling is bounded by the cores")
    return rec.result()
