"""Shared pieces of the benchmarks: the run context, the result recorder, machine info, file writes.

Every benchmark is a module with ``run(ctx: Context) -> dict``; the dict comes from
:class:`Recorder.result`. Figures are ratios measured in the same run (absolute times are
reported too, but only ratios are comparable across machines); each target names the figure it
checks, the comparison and the threshold, and records pass/miss.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prost_lightning.backbone import cpu_flags
from prost_lightning.errors import ProstError
from prost_lightning.files import write_atomic


class BenchSkipped(Exception):
    """A benchmark cannot run here (missing runtime or data); the message says what to install."""


@dataclass
class Context:
    """What one suite run is asked to do.

    ``device`` picks the settings: on ``cpu`` float32 weights and no quantisation (bitsandbytes 4-bit
    gives no speed on CPU, see docs/training-notes.md); on ``cuda`` bf16 weights and, where a benchmark
    trains, nf4 (QLoRA) as well. Suites of different devices are reported separately.
    """

    workdir: Path  # scratch folder of this run (checkpoints, trajectories); its owner removes it
    quick: bool = False
    device: str = "cpu"
    world: str = "worlds/mini"  # mini-world root for the rollout benchmark (built when missing)

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.device == "cuda" else "float32"

    @property
    def precision(self) -> str:
        """Lightning precision matching the HF baseline's ``bf16=True`` (autocast) on CUDA."""
        return "bf16-mixed" if self.device == "cuda" else "32-true"

    @property
    def quantizations(self) -> list[str]:
        return ["none", "nf4"] if self.device == "cuda" else ["none"]

    @property
    def real_model(self) -> str:
        """The tiny random model in quick runs, the embedded SmolLM2 otherwise."""
        return "tiny" if self.quick else "smollm2"


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ProstError(f"--device: '{device}' is not one of cpu | cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ProstError("--device cuda: no CUDA device visible to torch; run on a GPU machine or use --device cpu")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Wall-clock seconds of a block (the device is synchronised on both ends)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


_OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t}


class Recorder:
    """Collects one benchmark's figures, targets and notes into a JSON-able dict."""

    def __init__(self, name: str, ctx: Context):
        self.name = name
        self.ctx = ctx
        self.settings: dict = {}
        self.figures: dict[str, dict] = {}
        self.targets: list[dict] = []
        self.notes: list[str] = []
        self._started = time.perf_counter()

    def figure(self, key: str, value: float, unit: str, description: str) -> float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"benchmark {self.name}: figure {key} is not finite ({value})")
        self.figures[key] = {"value": round(value, 4), "unit": unit, "description": description}
        return value

    def target(self, key: str, op: str, threshold: float, miss_note: str = "") -> bool:
        """Check figure ``key`` against ``threshold``; ``miss_note`` explains a miss (why, what would close it)."""
        value = self.figures[key]["value"]
        passed = bool(_OPS[op](value, threshold))
        entry = {"figure": key, "op": op, "threshold": threshold, "value": value, "pass": passed}
        if not passed:
            gap = value / threshold if threshold else float("nan")
            entry["miss"] = f"{value:g} vs target {op} {threshold:g} ({gap:.2f}x of the target)"
            if miss_note:
                entry["note"] = miss_note
        self.targets.append(entry)
        return passed

    def note(self, text: str) -> None:
        self.notes.append(text)

    def result(self) -> dict:
        return {
            "name": self.name,
            "status": "ok",
            "quick": self.ctx.quick,
            "device": self.ctx.device,
            "seconds": round(time.perf_counter() - self._started, 2),
            "settings": self.settings,
            "figures": self.figures,
            "targets": self.targets,
            "notes": self.notes,
        }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


FAST_PATH_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")  # they change CPU figures severalfold


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu_model": _cpu_model(),
        "cpu_flags": [f for f in FAST_PATH_FLAGS if f in cpu_flags()],
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "lightning": _version("lightning"),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["bitsandbytes"] = _version("bitsandbytes")
    return info


def write_json(path: str | os.PathLike, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def child_json(stdout: str) -> dict:
    """The last line of a child process's stdout that parses as a JSON object (its result)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise RuntimeError(f"child process printed no JSON result; its output ends with:\n{stdout[-1500:]}")
