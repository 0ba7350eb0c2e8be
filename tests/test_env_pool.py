"""The server pool through the real AppWorld engine: episodes, error paths, restarts, shutdown.

Uses the session fixture ``mini_world_root`` (tests/conftest.py): a built mini-world data root.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from prost_lightning.env import (
    AppWorldNotInstalled,
    EnvError,
    ServerPool,
    appworld_python,
    load_splits,
    load_task,
)
from prost_lightning.env.client import SERVER_CRASHED, SERVER_FAULT, TIMEOUT
from prost_lightning.env.world import PREAMBLE_PATH

pytestmark = pytest.mark.appworld

STEP_TIMEOUT_S = 3  # AppWorld's own per-execute limit inside the server
GRACE_S = 2.0  # the HTTP call gives up after STEP_TIMEOUT_S + GRACE_S


@pytest.fixture(scope="module")
def pool(mini_world_root):
    # two servers: the isolation test needs two concurrent episodes
    with ServerPool(mini_world_root, size=2, step_timeout_s=STEP_TIMEOUT_S, execute_grace_s=GRACE_S) as pool:
        yield pool


@pytest.fixture(scope="module")
def task(mini_world_root):
    return load_task(mini_world_root, load_splits(mini_world_root)["train"][0])


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it is gone for our purpose once it is not running
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except OSError:
        return True


def test_missing_runtime_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PROST_APPWORLD_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(AppWorldNotInstalled, match=r"AppWorld runtime not installed: run `make appworld`"):
        appworld_python()


def test_oracle_episode_passes(pool, task):
    with pool.lease() as env:
        info = env.initialize(task.task_id)
        assert info["task_id"] == task.task_id and info["instruction"] == task.instruction
        assert info["supervisor"]["email"] == task.supervisor["email"]
        assert not env.execute(PREAMBLE_PATH.read_text()).startswith("Execution failed")
        for step in task.plan:
            observation = env.execute(step.code)
            assert not observation.startswith("Execution failed"), (step.description, observation)
        assert env.task_completed() is True
        result = env.evaluate()
    assert result["success"] is True
    assert result["num_tests"] == len(result["passes"]) >= 1 and result["failures"] == []
    assert env.failure is None


def test_noop_episode_fails(pool, task):
    with pool.lease() as env:
        env.initialize(task.task_id)
        assert env.task_completed() is False
        result = env.evaluate()
    assert result["success"] is False and result["failures"]


def test_code_errors_are_observations_and_state_survives(pool, task):
    with pool.lease() as env:
        env.initialize(task.task_id)
        assert env.execute("x = 41") == "Execution successful."
        syntax = env.execute("def broken(:\n    pass")
        assert syntax.startswith("Execution failed") and "Syntax error" in syntax
        unknown = env.execute("apis.supervisor.no_such_api()")
        assert unknown.startswith("Execution failed") and "No API named 'no_such_api'" in unknown
        blocked = env.execute("import subprocess")
        assert blocked.startswith("Execution failed") and "not allowed: subprocess" in blocked
        assert env.execute("print(x + 1)").strip() == "42"  # the shell survived every error
    assert env.failure is None and pool.stats()["restarts"] == 0


def test_infinite_loop_hits_the_step_timeout(pool, task):
    with pool.lease() as env:
        env.initialize(task.task_id)
        started = time.monotonic()
        observation = env.execute("while True:\n    pass")
        assert time.monotonic() - started < STEP_TIMEOUT_S + GRACE_S
        assert f"Execution timed out after {STEP_TIMEOUT_S} seconds" in observation
        assert env.execute("print('alive')").strip() == "alive"
    assert env.failure is None


def test_unknown_task_is_a_server_fault_without_restart(pool, task):
    before = len(pool.events)
    with pool.lease() as env:
        with pytest.raises(EnvError) as caught:
            env.initialize("nosuchtask_1")
        assert caught.value.reason == SERVER_FAULT and env.failure == SERVER_FAULT
        assert "nosuchtask_1" in caught.value.detail  # the server log tail names the cause
    event = pool.events[before]
    assert event["reason"] == SERVER_FAULT and event["restarted"] is False
    with pool.lease() as env:
        env.initialize(task.task_id)
        assert env.execute("print('ok')").strip() == "ok"


def test_hung_server_ends_episode_and_is_restarted(pool, task):
    before = len(pool.events)
    with pool.lease() as env:
        # AppWorld's own limit (60 s) is longer than the HTTP wait (5 s): the server looks hung
        env.initialize(task.task_id, timeout_seconds=60)
        old_pid = env.pid
        with pytest.raises(EnvError) as caught:
            env.execute("while True:\n    pass")
        assert caught.value.reason == TIMEOUT and env.failure == TIMEOUT
        with pytest.raises(EnvError, match="failed earlier"):  # the episode is over
            env.evaluate()
    assert pool.wait_for_restarts(timeout_s=180)  # restarts run in the background
    event = pool.events[before]
    assert event["reason"] == TIMEOUT and event["task_id"] == task.task_id and event["restarted"] is True
    assert _pid_gone(old_pid)
    with pool.lease() as env:  # the pool keeps serving
        assert env.pid != old_pid
        env.initialize(task.task_id)
        assert env.execute("print(1 + 1)").strip() == "2"


def test_killed_server_ends_episode_and_is_restarted(pool, task):
    before = len(pool.events)
    with pool.lease() as env:
        env.initialize(task.task_id)
        env.execute("x = 1")
        old_pid = env.pid
        os.kill(old_pid, signal.SIGKILL)
        with pytest.raises(EnvError) as caught:
            env.execute("print(x)")
        assert caught.value.reason == SERVER_CRASHED and env.failure == SERVER_CRASHED
    assert pool.wait_for_restarts(timeout_s=180)
    event = pool.events[before]
    assert event["reason"] == SERVER_CRASHED and event["restarted"] is True
    with pool.lease() as env:
        env.initialize(task.task_id)
        assert env.evaluate()["success"] is False
    assert pool.stats()["failure_reasons"].get(SERVER_CRASHED, 0) >= 1


def test_concurrent_episodes_of_one_task_are_isolated(pool, task, mini_world_root):
    # AppWorld's evaluate reads the episode's saved state back from its experiment folder: two
    # concurrent episodes of one task must not share it (nested leases = two servers at once).
    with pool.lease() as solver, pool.lease() as idler:
        solver.initialize(task.task_id, experiment_name="iso")
        idler.initialize(task.task_id, experiment_name="iso")
        assert solver.experiment_name != idler.experiment_name
        assert (mini_world_root / "experiments" / "outputs" / solver.experiment_name).is_dir()
        solver.execute(PREAMBLE_PATH.read_text())
        for step in task.plan:
            solver.execute(step.code)
        assert solver.evaluate()["success"] is True
        assert idler.evaluate()["success"] is False


def test_shutdown_stops_every_server_by_pid_and_drops_outputs(mini_world_root):
    outputs = mini_world_root / "experiments" / "outputs"
    with ServerPool(mini_world_root, size=1, warm=False) as pool:
        pids = [s.pid for s in pool.servers]
        assert all(not _pid_gone(p) for p in pids)
        mine = outputs / pool.unique_experiment_name("episode", 0)
        mine.mkdir(parents=True)  # stands for an episode's AppWorld output folder
        other = outputs / "someone-elses-run"
        other.mkdir(parents=True, exist_ok=True)
    assert all(_pid_gone(p) for p in pids)
    assert not mine.exists() and other.is_dir()  # keep_outputs=False drops only this pool's folders
    other.rmdir()


def test_server_exits_when_its_parent_dies(mini_world_root, tmp_path):
    # A parent killed with SIGKILL cannot run atexit hooks; the launcher's watchdog must notice.
    script = textwrap.dedent(f"""
        import sys, time
        from prost_lightning.env.server import EnvServer
        server = EnvServer({str(mini_world_root)!r}, warm=False).start()
        print(server.pid, flush=True)
        time.sleep(120)
    """)
    # the parent's temporary folders go to tmp_path: a parent killed outright cannot remove the
    # server's working folder (docs/runtime.md), and the suite must not leave it in /tmp
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        server_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _pid_gone(server_pid):
            time.sleep(0.2)
        assert _pid_gone(server_pid)
        assert any(p.name.startswith("prost-appworld-") for p in tmp_path.iterdir())  # with its log
    finally:
        parent.kill()


def test_sigterm_unwinds_the_pool_and_stops_its_servers(mini_world_root):
    script = textwrap.dedent(f"""
        import time
        from prost_lightning.env import ServerPool
        with ServerPool({str(mini_world_root)!r}, size=1, warm=False) as pool:
            print(pool.servers[0].pid, flush=True)
            time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        parent.send_signal(signal.SIGTERM)
        # 143 = SystemExit(128 + SIGTERM) raised by the pool's handler, i.e. the `with` unwound
        assert parent.wait(timeout=20) == 143
        assert _pid_gone(server_pid)
    finally:
        parent.kill()
