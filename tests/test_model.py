"""RoleLoRAModule on the tiny random models: adapters per role, isolation, export, QLoRA on CPU."""

from __future__ import annotations

import pytest
import torch

from prost_lightning import backbone
from prost_lightning.errors import ConfigError
from prost_lightning.model import SHARED_ADAPTER, LoraSettings, RoleLoRAModule


def _batch(module: RoleLoRAModule, role: str, text: str = "x = apis.spotify.login()") -> dict:
    ids = module.tokenizer(text, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "role": role}


def _adapter_state(module: RoleLoRAModule, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if f".{adapter}." in n}


def _step(module: RoleLoRAModule, batch: dict) -> None:
    optimizer = module.configure_optimizers()["optimizer"]
    module._roles_since_step.add(batch["role"])
    loss = module._loss(batch)
    loss.backward()
    module.on_before_optimizer_step(optimizer)
    optimizer.step()


def test_one_named_adapter_per_role_and_only_the_active_one_moves():
    module = RoleLoRAModule(base_model="tiny", roles=["planner", "executor"], warmup_steps=1)
    assert set(module.model.peft_config) == {"planner", "executor"}
    before_planner = _adapter_state(module, "planner")
    before_executor = _adapter_state(module, "executor")
    _step(module, _batch(module, "executor"))
    after_planner = _adapter_state(module, "planner")
    after_executor = _adapter_state(module, "executor")
    assert all(torch.equal(before_planner[k], after_planner[k]) for k in before_planner)
    assert any(not torch.equal(before_executor[k], after_executor[k]) for k in before_executor)
    # the frozen base has no gradient at all
    assert all(p.grad is None for n, p in module.model.named_parameters() if "lora_" not in n)


def test_per_role_overrides_and_shared_adapter():
    module = RoleLoRAModule(base_model="tiny", roles=["planner", "executor"], role_overrides={"planner": {"r": 4}})
    assert module.model.peft_config["planner"].r == 4
    assert module.model.peft_config["executor"].r == 16
    shared = RoleLoRAModule(base_model="tiny", roles=["planner", "executor"], shared_adapter=True)
    assert list(shared.model.peft_config) == [SHARED_ADAPTER]
    assert shared.adapter_name("planner") == shared.adapter_name("executor") == SHARED_ADAPTER


def test_role_learning_rates_give_each_adapter_its_own_rate():
    module = RoleLoRAModule(base_model="tiny", roles=["planner", "executor"], learning_rate=1e-3,
                            role_learning_rates={"planner": 4e-3}, warmup_steps=1)
    optimizer = module.configure_optimizers()["optimizer"]
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for role, rate in (("planner", 4e-3), ("executor", 1e-3)):
        params = module._adapter_params[role]
        assert params and all(rate_of[id(p)] == rate for p in params)
    # one Adam step moves every element by about lr (sign of the gradient): 4x further for the planner
    for role in ("planner", "executor"):
        for p in module._adapter_params[role]:
            p.grad = torch.ones_like(p)
    before = {r: [p.detach().clone() for p in module._adapter_params[r]] for r in ("planner", "executor")}
    optimizer.step()
    moved = {r: max(float((p - b).abs().max()) for p, b in zip(module._adapter_params[r], before[r], strict=True))
             for r in before}
    assert moved["planner"] == pytest.approx(4 * moved["executor"], rel=1e-3)
    with pytest.raises(ConfigError, match="role_learning_rates"):
        RoleLoRAModule(base_model="tiny", roles=["planner"], role_learning_rates={"verifier": 1e-3})
    with pytest.raises(ConfigError, match="shared adapter"):
        RoleLoRAModule(base_model="tiny", roles=["planner"], shared_adapter=True, role_learning_rates={"planner": 1e-3})


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="role_overrides"):
        RoleLoRAModule(base_model="tiny", roles=["planner"], role_overrides={"verifier": {"r": 4}})
    module = RoleLoRAModule(base_model="tiny", roles=["planner"])
    with pytest.raises(ConfigError, match="verifier"):
        module.adapter_name("verifier")


def test_missing_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(backbone.ModelNotFoundError, match="config.json missing"):
        RoleLoRAModule(base_model=str(tmp_path / "nope"), roles=["agent"])


def test_checkpoint_holds_adapters_only():
    module = RoleLoRAModule(base_model="tiny", roles=["planner", "executor"])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    keys = list(checkpoint["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    assert {k.split(".")[-2] for k in keys} == {"planner", "executor"}


def test_exported_adapters_reload_with_plain_peft(tmp_path):
    from peft import PeftModel

    module = RoleLoRAModule(base_model="tiny", roles=["planner", "executor"], warmup_steps=1)
    for role in ("planner", "executor"):
        _step(module, _batch(module, role))  # make the adapters differ from their zero init
    written = module.export_adapters(tmp_path / "adapters")
    assert (tmp_path / "adapters" / "planner" / "adapter_config.json").exists()
    assert "LoRA adapter `executor`" in (written["executor"] / "README.md").read_text()
    ids = _batch(module, "planner")["input_ids"]
    module.model.eval()
    for role in ("planner", "executor"):
        module.activate(role)
        with torch.no_grad():
            expected = module.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(backbone.load_base_model("tiny"), str(tmp_path / "adapters" / role))
        with torch.no_grad():
            got = reloaded.eval()(input_ids=ids).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("base", ["tiny", "tiny-qwen2"])
def test_nf4_on_cpu_trains_with_correct_gradients_after_an_eval_forward(base):
    """bitsandbytes' CPU 4-bit bug (docs/training-notes.md): an eval forward must not corrupt training."""
    def grads(module):
        batch = _batch(module, "agent")
        module.model.zero_grad()
        module._loss(batch).backward()
        return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}

    no_dropout = LoraSettings(dropout=0.0)
    torch.manual_seed(0)
    fresh = RoleLoRAModule(base_model=base, roles=["agent"], quantization="nf4", lora=no_dropout)
    torch.manual_seed(0)
    evaluated = RoleLoRAModule(base_model=base, roles=["agent"], quantization="nf4", lora=no_dropout)
    for module in (fresh, evaluated):  # non-zero B so that gradients reach the A matrices too
        for n, p in module.model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
    import bitsandbytes as bnb

    layers = [m for m in evaluated.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)  # the workaround is applied
    # On CPUs with AVX512-BF16 the eval forward below would repack the weights without the workaround;
    # elsewhere this is a plain regression check of eval -> train.
    evaluated.model.eval()
    with torch.no_grad():
        evaluated._loss(_batch(evaluated, "agent"))
    evaluated.model.train()
    expected, got = grads(fresh), grads(evaluated)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("base", ["tiny", "tiny-qwen2"])
def test_selective_logits_give_the_same_loss_and_gradients_as_full_logits(base):
    torch.manual_seed(0)
    module = RoleLoRAModule(base_model=base, roles=["agent"], lora=LoraSettings(dropout=0.0))
    for n, p in module.model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
    tok = module.tokenizer
    rows = [tok("print(apis.spotify.login())")["input_ids"], tok("x = 1")["input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "role": "agent"}

    def loss_and_grads(selective: bool):
        module.hparams.selective_logits = selective
        module.model.zero_grad()
        loss = module._loss(batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}

    full_loss, full_grads = loss_and_grads(False)
    sel_loss, sel_grads = loss_and_grads(True)
    torch.testing.assert_close(sel_loss, full_loss, rtol=1e-5, atol=1e-6)
    for name in full_grads:
        torch.testing.assert_close(sel_grads[name], full_grads[name], rtol=1e-4, atol=1e-7)
