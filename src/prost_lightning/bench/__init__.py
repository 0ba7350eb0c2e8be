"""`prost bench`: what the framework costs against the obvious alternative, measured side by side.

Each benchmark is one module here with ``run(ctx) -> dict`` (see common.py); this package runs the
chosen ones, merges their results into ``<out>/results.json`` (one suite per device, machine info
included) and renders ``BENCHMARKS.md`` from it. Heavy imports happen inside the benchmarks, so
``prost bench --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

from prost_lightning.errors import ConfigError, ProstError

# name -> module; the order is the report's order
BENCHMARKS: dict[str, str] = {
    "train_throughput": "prost_lightning.bench.train_throughput",
    "curriculum_cost": "prost_lightning.bench.curriculum_cost",
    "rollouts": "prost_lightning.bench.rollouts",
    "generation": "prost_lightning.bench.generation",
    "rollout_engines": "prost_lightning.bench.rollout_engines",
    "engine_passes": "prost_lightning.bench.engine_passes",
    "attention": "prost_lightning.bench.attention",
    "memory": "prost_lightning.bench.memory",
}


def _chosen(only: list[str] | str | None) -> list[str]:
    if only is None:
        return list(BENCHMARKS)
    names = [only] if isinstance(only, str) else list(only)
    names = [n for name in names for n in name.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"--only: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return names


def run_one(name: str, ctx) -> dict:
    """Run one benchmark; a missing runtime gives status 'skipped', a failure status 'error'."""
    from prost_lightning.bench.common import BenchSkipped

    started = time.perf_counter()
    try:
        result = importlib.import_module(BENCHMARKS[name]).run(ctx)
    except BenchSkipped as e:
        result = {"name": name, "status": "skipped", "reason": str(e)}
    except Exception as e:  # one broken benchmark must not lose the others' figures
        result = {"name": name, "status": "error", "reason": f"{e.__class__.__name__}: {e}",
                  "traceback": traceback.format_exc()[-4000:]}
    result.setdefault("quick", ctx.quick)
    result.setdefault("device", ctx.device)
    result.setdefault("seconds", round(time.perf_counter() - started, 2))
    return result


def run(quick: bool = False, only: list[str] | str | None = None, out: str = "bench",
        report: str = "BENCHMARKS.md", device: str = "cpu", world: str = "worlds/mini") -> dict:
    """Run the benchmarks and write <out>/results.json and the Markdown report.

    Every figure is a ratio of two measurements taken in the same run (absolute times are shown
    too, but are not comparable across machines); targets are printed next to the measured values
    with pass/miss. Results of other devices and of benchmarks not run now are kept in results.json.

    Args:
        quick: small settings (tiny model, a few steps): seconds per benchmark; a smoke test, not figures to quote.
        only: run only these benchmarks, one name or a comma-separated list (train_throughput,
            curriculum_cost, rollouts, generation, rollout_engines, engine_passes, attention,
            memory); default all.
        out: folder for results.json.
        report: the Markdown report to (re)write from results.json; empty string to skip.
        device: cpu, or cuda (bf16 weights, and nf4 QLoRA as a second configuration), reported as a separate suite.
        world: mini-world root for the rollout benchmark; built there (prost world build) when missing.
    """
    from prost_lightning.bench import results_markdown
    from prost_lightning.bench.common import Context, check_device, machine_info

    names = _chosen(only)
    check_device(device)
    results_path = Path(out) / "results.json"
    data = results_markdown.load(results_path)
    suite = data["suites"].setdefault(device, {"benchmarks": {}})
    suite["machine"] = machine_info(device)
    with tempfile.TemporaryDirectory(prefix="prost-bench-") as workdir:
        ctx = Context(workdir=Path(workdir), quick=quick, device=device, world=world)
        for name in names:
            print(f"[bench] {name}{' (quick)' if quick else ''} on {device} ...", file=sys.stderr, flush=True)
            result = run_one(name, ctx)
            suite["updated"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            # each benchmark keeps the machine and time of its own run: a suite mixes runs of several days
            suite["benchmarks"][name] = {**result, "machine": suite["machine"], "measured": suite["updated"]}
            results_markdown.save(results_path, data)  # after each benchmark: a later crash keeps the earlier figures
            print(results_markdown.console_lines(result), file=sys.stderr, flush=True)
    suite["benchmarks"] = {n: suite["benchmarks"][n] for n in BENCHMARKS if n in suite["benchmarks"]}
    results_markdown.save(results_path, data)
    if report:
        results_markdown.write_markdown(report, data, results_path)
    failed = {n: suite["benchmarks"][n]["reason"] for n in names if suite["benchmarks"][n]["status"] == "error"}
    if failed:
        details = "; ".join(f"{n}: {r}" for n, r in failed.items())
        raise ProstError(f"benchmark(s) failed: {details} (tracebacks in {results_path})")
    return {"machine": suite["machine"], "benchmarks": {n: suite["benchmarks"][n] for n in names}}
