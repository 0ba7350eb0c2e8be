"""`prost bench --quick`: every benchmark runs end to end and reports well-formed, positive figures.

Smoke tests only: no timing thresholds (the machine may be shared and slow); pass/miss of the
targets is recorded, not asserted. Each quick form takes 10-40 s on a 2-core machine (model
loading, child processes, AppWorld servers); `make test` runs them all.
"""

from __future__ import annotations

import gc
import json
import math
import tempfile
from unittest.mock import patch

import pytest

from prost_lightning.bench import BENCHMARKS, run
from prost_lightning.bench.results_markdown import load, render_markdown
from prost_lightning.bench.rollout_engines import VARIANTS as ENGINE_VARIANTS
from prost_lightning.errors import ConfigError

# figures that may legitimately be zero or negative (a difference, a share)
_SIGNED = ("http_overhead_", "max_difference_")  # timing differences (noise), output differences (0 when equal)
# untrained teams may solve nothing; one short episode may offer no draft; bf16 may round to other replies
_MAY_BE_ZERO = ("oracle_success_rate", "hf_tgc", "hf_generate_tgc", "hf_bf16_tgc", "hf_draft_acceptance",
                "hf_bf16_draft_acceptance", "identical_episodes_hf_bf16",
                *(name for v in ENGINE_VARIANTS for name in (f"{v}_tgc", f"{v}_draft_acceptance", f"identical_episodes_{v}")),
                "team_transformers_attention_same_replies", "single_transformers_attention_same_replies")


def _check_result(result: dict, name: str) -> None:
    assert result["name"] == name
    assert result["status"] == "ok", result.get("reason")
    assert result["quick"] is True and result["device"] == "cpu"
    assert result["figures"], "a benchmark must report figures"
    for key, fig in result["figures"].items():
        assert set(fig) == {"value", "unit", "description"}
        assert math.isfinite(fig["value"]), key
        if not key.startswith(_SIGNED) and key not in _MAY_BE_ZERO:
            assert fig["value"] > 0, f"{key} = {fig['value']}"
    for target in result["targets"]:
        assert target["figure"] in result["figures"]
        assert target["op"] in (">=", "<=") and isinstance(target["pass"], bool)
        assert ("miss" in target) == (not target["pass"])


def _run_quick(tmp_path, name: str, **kwargs) -> dict:
    out, report, scratch = tmp_path / "bench", tmp_path / "BENCHMARKS.md", tmp_path / "tmp"
    scratch.mkdir()
    with patch.object(tempfile, "tempdir", str(scratch)):
        returned = run(quick=True, only=[name], out=str(out), report=str(report), **kwargs)
        gc.collect()
    # the run's scratch folders (checkpoints, servers' working folders) are gone with it
    assert sorted(p.name for p in scratch.glob("prost-*")) == []
    result = returned["benchmarks"][name]
    _check_result(result, name)
    # the files agree with the return value and carry the machine info
    saved = json.loads((out / "results.json").read_text())
    suite = saved["suites"]["cpu"]
    assert suite["benchmarks"][name]["figures"] == result["figures"]
    for key in ("cpu_model", "cpu_cores", "ram_gb", "torch", "transformers"):
        assert suite["machine"][key], key
    entry = suite["benchmarks"][name]  # each benchmark says when and on which machine it ran
    assert entry["machine"] == suite["machine"] and entry["measured"] == suite["updated"]
    assert isinstance(entry["machine"]["cpu_flags"], list)
    text = report.read_text()
    assert "| benchmark | figure |" in text and name in text and suite["machine"]["cpu_model"] in text
    assert f"Measured {entry['measured']} on CPU" in text
    return result


def test_memory_quick(tmp_path):
    result = _run_quick(tmp_path, "memory")
    assert {"peak_rss_1_adapter_gb", "peak_rss_3_adapters_gb", "rss_ratio_3_vs_1"} <= set(result["figures"])
    assert result["targets"][0]["figure"] == "rss_ratio_3_vs_1"


def test_generation_quick(tmp_path):
    result = _run_quick(tmp_path, "generation")
    for batch in (4, 8):
        assert f"gen_speedup_b{batch}" in result["figures"]
    assert result["targets"][0]["figure"] == "gen_speedup_b4"


def test_train_throughput_quick(tmp_path):
    result = _run_quick(tmp_path, "train_throughput")
    figures = result["figures"]
    assert {"speedup_tiny", "real_token_fraction_ours_tiny", "real_token_fraction_naive_tiny"} <= set(figures)
    assert 0 < figures["real_token_fraction_ours_tiny"]["value"] <= 1
    # same samples on both sides: grouping by length never pads more than random order
    assert figures["real_token_fraction_ours_tiny"]["value"] >= figures["real_token_fraction_naive_tiny"]["value"]
    assert not result["notes"], result["notes"]  # a note here means the two sides trained different tokens


def test_curriculum_cost_quick(tmp_path):
    result = _run_quick(tmp_path, "curriculum_cost")
    figures = result["figures"]
    # ProST trains a prefix of each trajectory in epoch 0, so fewer tokens than full fine-tuning
    assert figures["trained_token_ratio_prost_vs_full"]["value"] < 1
    assert result["settings"]["horizons"]["progressive"][0] == 1


@pytest.mark.appworld
def test_rollouts_quick(tmp_path, mini_world_root):
    result = _run_quick(tmp_path, "rollouts", world=str(mini_world_root))
    figures = result["figures"]
    assert figures["oracle_success_rate"]["value"] == 1.0
    assert {"episodes_per_min_1_server", "episodes_per_min_2_servers", "http_overhead_ms_noop"} <= set(figures)


@pytest.mark.appworld
def test_rollout_engines_quick(tmp_path, mini_world_root):
    result = _run_quick(tmp_path, "rollout_engines", world=str(mini_world_root))
    figures = result["figures"]
    assert figures["identical_episodes_hf"]["value"] == 1.0  # greedy fp32: both engines play the same actions
    if "hf_bf16" not in result["settings"]["order"]:  # the variants run in the default dtype: fp32 here
        for variant in ENGINE_VARIANTS:  # packing and the draft cap change speed, not replies
            assert figures[f"identical_episodes_{variant}"]["value"] == 1.0
    assert figures["hf_tgc"]["value"] == figures["hf_generate_tgc"]["value"]
    assert figures["hf_cache_share"]["value"] > 0.3
    # the wall time's split: passes and bookkeeping are parts of it, both measured
    assert 0 < figures["hf_forward_share"]["value"] and 0 < figures["hf_bookkeeping_share"]["value"]
    assert figures["hf_forward_share"]["value"] + figures["hf_bookkeeping_share"]["value"] <= 1
    assert figures["hf_prompt_tokens"]["value"] == figures["hf_generate_prompt_tokens"]["value"]
    assert figures["hf_prompt_tokens_processed"]["value"] < 0.7 * figures["hf_prompt_tokens"]["value"]
    assert result["targets"][0]["figure"] in ("speedup_hf_vs_hf_generate", "speedup_hf_bf16_vs_hf_generate")


def test_attention_quick(tmp_path):
    figures = _run_quick(tmp_path, "attention")["figures"]
    assert figures["max_difference_8x5"]["value"] < 0.05  # the fold attends like transformers' copy
    assert figures["grouped_ms_8x5"]["value"] > 0 and figures["transformers_ms_8x5"]["value"] > 0


def test_engine_passes_quick(tmp_path):
    result = _run_quick(tmp_path, "engine_passes")
    figures = result["figures"]
    for workload in ("team", "single"):
        # zero-initialised adapters: merged weights, stacks and the base model pick the same tokens
        assert figures[f"{workload}_unmerged_same_replies"]["value"] == 1.0
        assert figures[f"{workload}_no_drafts_same_replies"]["value"] == 1.0
        # the fixed work: each request decodes exactly its budget; without drafts one token per row and pass
        tokens = result["settings"]["workloads"][workload]["tokens"]
        produced = figures[f"{workload}_no_drafts_generated_tokens_per_s"]["value"] * \
            figures[f"{workload}_no_drafts_seconds"]["value"]
        assert produced == pytest.approx(tokens, rel=1e-3)
        assert figures[f"{workload}_engine_forward_passes"]["value"] <= \
            figures[f"{workload}_no_drafts_forward_passes"]["value"]


def test_only_rejects_unknown_names_and_results_merge(tmp_path):
    with pytest.raises(ConfigError, match="unknown benchmark"):
        run(quick=True, only=["nope"], out=str(tmp_path))
    # results of other suites and benchmarks are kept when one benchmark is re-run
    out = tmp_path / "bench"
    out.mkdir()
    previous = {"schema": 1, "suites": {"cuda": {"machine": {"gpu": "X"}, "benchmarks": {}}}}
    (out / "results.json").write_text(json.dumps(previous))
    data = load(out / "results.json")
    assert data["suites"]["cuda"]["machine"]["gpu"] == "X"
    assert "## Suite: cuda" in render_markdown(data, out / "results.json")
    assert set(BENCHMARKS) == {"train_throughput", "curriculum_cost", "rollouts", "generation", "rollout_engines",
                               "engine_passes", "attention", "memory"}
