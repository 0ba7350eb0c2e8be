"""The managed inference server (vLLM, its own venv) and the processes it shares code with.

Fast tests check the parts that need no vLLM: the process manager on a real child process, the
server's command line and its refusals. The `slow` tests (`make test-all`, which installs
.venv-serve) start real vLLM on the embedded SmolLM2 with adapters exported by `prost fit` and play
mini-world episodes through ``engine: vllm``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import textwrap
import time
import urllib.request

import pytest

from prost_lightning.errors import ConfigError
from prost_lightning.process import ManagedProcess, RuntimeNotInstalled, free_port
from prost_lightning.serving import InferenceServer, serving_available
from prost_lightning.serving.server import serve_python

HTTP_CHILD = textwrap.dedent("""
    import http.server, subprocess, sys
    # a grandchild in the same process group: stopping the server must take it along
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(grandchild.pid, flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
""")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): read its state
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] == "Z"


def test_managed_process_serves_until_terminated_with_its_whole_group(tmp_path):
    port = free_port()
    proc = ManagedProcess([sys.executable, "-c", HTTP_CHILD, port], log_path=tmp_path / "logs" / "child.log",
                          cwd=tmp_path)
    proc.spawn()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1.0) as response:
                return response.status == 200
        except OSError:
            return False

    assert proc.wait_until(answers, time.monotonic() + 30)
    grandchild = int((tmp_path / "logs" / "child.log").read_text().split()[0])
    assert proc.alive() and not proc.exited_within(0.2)
    pid = proc.pid
    proc.terminate(grace_s=2.0)
    assert not proc.alive() and proc.pid is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (_gone(pid) and _gone(grandchild)):
        time.sleep(0.1)
    assert _gone(pid) and _gone(grandchild)


def test_wait_until_gives_up_when_the_process_dies(tmp_path):
    proc = ManagedProcess([sys.executable, "-c", "import sys; print('bye'); sys.exit(3)"], log_path=tmp_path / "l")
    proc.spawn()
    assert not proc.wait_until(lambda: False, time.monotonic() + 30)
    assert proc.exited_within(5) and "bye" in proc.log_tail()
    proc.terminate()


def test_missing_serving_venv_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setenv("PROST_SERVE_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(RuntimeNotInstalled, match=r"make serve-venv.*PROST_SERVE_PYTHON"):
        serve_python()
    assert not serving_available()


def _adapter(folder, rank: int = 8):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "x"}))
    return folder


def test_server_command_binds_loopback_with_one_lora_per_role(tmp_path):
    planner, executor = _adapter(tmp_path / "a" / "planner"), _adapter(tmp_path / "a" / "executor")
    server = InferenceServer(tmp_path, {"planner": planner, "executor": executor}, python=sys.executable,
                             memory_fraction=0.3)
    server.port = 8123
    args = server.command()
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8123"
    assert "--enable-lora" in args and "--enable-prefix-caching" in args
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.3"
    modules = args[args.index("--lora-modules") + 1:][:2]
    assert modules == [f"planner={planner.resolve()}", f"executor={executor.resolve()}"]
    assert args[args.index("--model") + 1] == str(tmp_path.resolve())  # a local folder becomes absolute
    assert server.base_url.endswith(":8123/v1")
    policies = server.policies({"planner": "planner", "executor": "executor"})
    assert policies["executor"].model == "executor" and policies["planner"].url == server.base_url + "/chat/completions"
    with pytest.raises(ConfigError, match="no adapter named"):
        server.policies({"planner": "planner-v9"})
    server.stop()


def test_server_refuses_missing_or_too_large_adapters_before_starting(tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json does not exist"):
        InferenceServer(tmp_path, {"planner": tmp_path / "missing"}, python=sys.executable).start()
    big = _adapter(tmp_path / "big", rank=128)
    with pytest.raises(ConfigError, match="rank 128 > max_lora_rank 64"):
        InferenceServer(tmp_path, {"planner": big}, python=sys.executable).start()



def test_servers_leave_no_temp_folder_behind_even_when_never_started_or_stopped(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    idle = InferenceServer(tmp_path, {}, python=sys.executable)  # made, never started
    assert [folder.name.startswith("prost-serve-") for folder in scratch.iterdir()] == [True]
    with pytest.raises(ConfigError, match="does not exist"):  # refused before starting: stop() never runs
        InferenceServer(tmp_path, {"planner": tmp_path / "missing"}, python=sys.executable).start()
    stopped = InferenceServer(tmp_path, {}, python=sys.executable)
    stopped.stop()
    assert len(list(scratch.iterdir())) == 1  # stop() removed its own; the idle one's is still in use
    del idle, stopped
    gc.collect()
    assert list(scratch.iterdir()) == []

# ---- real vLLM (make test-all) ---------------------------------------------------------------
needs_vllm = pytest.mark.skipif(not serving_available(), reason="no .venv-serve: `make serve-venv`")


@pytest.fixture(scope="module")
def exported_adapters(tmp_path_factory):
    """Adapters exported by a real `prost fit` (two steps on SmolLM2)."""
    from prost_lightning.cli import main

    root = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", "experiments/debug.yaml", "--model.base_model", "smollm2", "--trainer.max_steps", "2",
          "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(root)])
    return root / "lightning_logs" / "version_0" / "adapters"


@pytest.mark.slow
@pytest.mark.appworld
@needs_vllm
def test_eval_through_vllm_plays_episodes_with_the_served_adapters(exported_adapters, mini_world_root, tmp_path):
    from prost_lightning.agents import Limits
    from prost_lightning.agents.evaluate import evaluate_system
    from prost_lightning.trajectory import read_trajectories

    out = tmp_path / "episodes.jsonl"
    summary = evaluate_system("planner_executor", "dev", str(mini_world_root), adapters=str(exported_adapters),
                              engine="vllm", max_tasks=2, pool_size=2, progress=False, out=str(out),
                              limits=Limits(max_subtasks=2, max_steps_per_subtask=2, max_new_tokens=48))
    assert summary["goal"]["num_tasks"] == 2
    for trajectory in read_trajectories(out):
        assert trajectory.usage.llm_calls["planner"] >= 1
        assert trajectory.usage.prompt_tokens["planner"] > 0 and trajectory.usage.completion_tokens["planner"] > 0


@pytest.mark.slow
@pytest.mark.appworld
@needs_vllm
def test_rollout_callback_swaps_the_current_adapters_into_the_server(mini_world_root, tmp_path):
    import csv
    from pathlib import Path

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from prost_lightning.agents import Limits
    from prost_lightning.curriculum import CurriculumCallback
    from prost_lightning.data.datamodule import TrajectoryDataModule
    from prost_lightning.model import LoraSettings, RoleLoRAModule
    from prost_lightning.rollout import RolloutCallback

    served: list[list[str]] = []

    class Recording(RolloutCallback):
        def _served_policies(self, trainer, pl_module, roles, epoch):
            policies = super()._served_policies(trainer, pl_module, roles, epoch)
            served.append(sorted(self._server.served_models()))
            return policies

    fixture = Path(__file__).parent / "fixtures" / "trajectories.jsonl"
    roles = ["planner", "executor"]
    callback = Recording(root=str(mini_world_root), split="dev", max_tasks=1, engine="vllm", progress=False,
                         limits=Limits(max_subtasks=1, max_steps_per_subtask=1, max_new_tokens=16))
    module = RoleLoRAModule("smollm2", roles=roles, lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                            export_adapters=False)
    data = TrajectoryDataModule(str(fixture), tokenizer="smollm2", val_file=str(fixture), roles=roles,
                                max_length=1024, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=1, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        callbacks=[CurriculumCallback(), callback], enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False)
    trainer.fit(module, data)
    assert served == [["base", "executor-v1", "planner-v1"], ["base", "executor-v2", "planner-v2"]]
    run = Path(trainer.logger.log_dir)
    assert (run / "rollouts" / "adapters" / "epoch_1" / "planner" / "adapter_config.json").is_file()
    with open(run / "metrics.csv") as f:
        errors = [float(r["rollout/error"]) for r in csv.DictReader(f) if r.get("rollout/error")]
    assert errors == [0.0, 0.0]
    assert callback._server is None  # stopped at teardown


def test_the_serving_side_loads_no_training_stack():
    """The server side speaks HTTP to another venv: importing it must not pay for torch."""
    import subprocess

    probe = ("import sys, prost_lightning.serving, prost_lightning.process, prost_lightning.adapters\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'transformers', 'peft'}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
