"""results.json (one suite per device) and the Markdown report rendered from it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from prost_lightning.bench.common import write_json
from prost_lightning.files import write_atomic

SCHEMA = 1

REPRODUCE = """\
```bash
make bench                                     # all benchmarks, full settings (CPU): bench/results.json + BENCHMARKS.md
.venv/bin/prost bench --only train_throughput  # one benchmark; the others' results are kept
.venv/bin/prost bench --quick true             # smoke-test settings (what `make test` runs via tests/test_bench.py)
.venv/bin/prost bench --device cuda            # on a GPU machine: bf16 and nf4, reported as a separate suite
.venv/bin/prost bench --help                   # all options (--world, --out, --report)
```"""


def load(path: Path) -> dict:
    """The existing results (so --only and other devices keep their figures), or an empty file."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("schema") == SCHEMA and isinstance(data.get("suites"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"schema": SCHEMA, "suites": {}}


def save(path: Path, data: dict) -> None:
    write_json(path, data)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _target_text(target: dict | None) -> str:
    if target is None:
        return ""
    return f"{target['op']} {_fmt(target['threshold'])}"


def _status_text(target: dict | None) -> str:
    if target is None:
        return ""
    return "pass" if target["pass"] else "**miss**"


def console_lines(result: dict) -> str:
    if result["status"] != "ok":
        return f"  {result['name']}: {result['status']}: {result.get('reason', '')}"
    targets = {t["figure"]: t for t in result["targets"]}
    lines = []
    for key, fig in result["figures"].items():
        t = targets.get(key)
        mark = f"  (target {_target_text(t)}: {'pass' if t['pass'] else 'MISS'})" if t else ""
        lines.append(f"  {result['name']}.{key} = {_fmt(fig['value'])} {fig['unit']}{mark}")
    lines.append(f"  ({result['seconds']} s)")
    return "\n".join(lines)


def _description(name: str) -> str:
    """The benchmark module's docstring (what is measured, against what, how), as one paragraph."""
    from prost_lightning.bench import BENCHMARKS

    try:
        doc = importlib.import_module(BENCHMARKS[name]).__doc__ or ""
    except Exception:  # a module that does not import is reported as an error elsewhere
        return ""
    return " ".join(doc.split())


def _machine_line(machine: dict) -> str:
    flags = machine.get("cpu_flags")
    flag_text = "" if flags is None else f", {' '.join(flags) if flags else 'no AVX-512'}"
    parts = [f"CPU {machine.get('cpu_model')} ({machine.get('cpu_cores_usable')} usable of "
             f"{machine.get('cpu_cores')} cores{flag_text}, torch threads {machine.get('torch_threads')})",
             f"RAM {machine.get('ram_gb')} GB"]
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']} ({machine.get('gpu_memory_gb')} GB, CUDA {machine.get('cuda')})")
    parts.append(f"Python {machine.get('python')}, torch {machine.get('torch')}, transformers "
                 f"{machine.get('transformers')}, peft {machine.get('peft')}, lightning {machine.get('lightning')}")
    parts.append(machine.get("platform", ""))
    return "; ".join(p for p in parts if p)


def _suite_markdown(device: str, suite: dict) -> list[str]:
    out = [f"## Suite: {device}", "", f"Machine of the latest run: {_machine_line(suite.get('machine', {}))}.",
           f"Last updated {suite.get('updated', '?')}. Each benchmark below says when and on which CPU it "
           "was measured.", ""]
    if suite.get("caveats"):  # free-text remarks on this suite's run (e.g. a shared, overloaded machine)
        out += ["**Caveats for this run:**", ""] + [f"- {c}" for c in suite["caveats"]] + [""]
    out += ["### Targets", "",
           "| benchmark | figure | measured | target | result |", "|---|---|---:|---|---|"]
    for name, result in suite["benchmarks"].items():
        label = name + (" (quick)" if result.get("quick") else "")
        for t in result.get("targets", []):
            out.append(f"| {label} | {t['figure']} | {_fmt(t['value'])} | {_target_text(t)} | {_status_text(t)} |")
    out += ["", "### All figures", "",
            "| benchmark | figure | value | unit | target | result |", "|---|---|---:|---|---|---|"]
    misses, details = [], []
    for name, result in suite["benchmarks"].items():
        label = name + (" (quick)" if result.get("quick") else "")
        if result["status"] != "ok":
            out.append(f"| {label} | {result['status']} | | | | {result.get('reason', '')[:200]} |")
            continue
        targets = {t["figure"]: t for t in result["targets"]}
        for key, fig in result["figures"].items():
            t = targets.get(key)
            out.append(f"| {label} | {key} | {_fmt(fig['value'])} | {fig['unit']} | {_target_text(t)} | "
                       f"{_status_text(t)} |")
            if t and not t["pass"]:
                misses.append(f"- **{name}.{key}**: {t['miss']}. {t.get('note', '')}".rstrip())
        settings = json.dumps(result.get("settings", {}), sort_keys=True)
        measured = (f" Measured {result['measured']} on {_machine_line(result['machine'])}."
                    if result.get("machine") else " Measured before machines were recorded per benchmark.")
        details.append(f"**{label}** ({result['seconds']} s).{measured} {_description(name)}\n\n"
                       f"Settings: `{settings}`")
        details.extend(f"- {n}" for n in result.get("notes", []))
        details.append("")
    out.append("")
    out.append("### Misses: by how much, why, what would close it")
    out.append("")
    out.extend(misses or ["None."])
    out.append("")
    out.append("### What each benchmark measures")
    out.append("")
    out.extend(details)
    return out


def render_markdown(data: dict, results_path: Path | str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `prost bench` from `{results_path}` (all figures, settings and machine info are there). "
        "Every ratio compares two measurements taken in the same run on the same machine; absolute times "
        "and tokens/s are shown for context only and are not comparable across machines. A shared or busy "
        "machine makes absolute figures noisy; timings are best-of-N where noted.",
        "",
        "The training benchmarks (train_throughput, curriculum_cost, memory) measure the fit a user runs: "
        "their Trainer, model and data module are built by the entry point of `prost fit` (its LightningCLI, "
        "`cli.lightning_main(..., run=False)`, in `bench/prost_fit.py`), with its Trainer defaults and callbacks; "
        "the benchmark only turns off logging and checkpoints and starts its clock after the data is rendered "
        "and the model loaded.",
        "",
        "How to reproduce:",
        "",
        REPRODUCE,
        "",
    ]
    for device, suite in data["suites"].items():
        lines.extend(_suite_markdown(device, suite))
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(path: str | Path, data: dict, results_path: Path | str) -> None:
    write_atomic(path, render_markdown(data, results_path))
