"""RoleLoRAModule: one shared base model, one LoRA adapter per agent role.

Every batch belongs to one role (the data module guarantees it); the step activates that role's
adapter and only that adapter is updated. Checkpoints hold the adapters alone (plus the optimizer and
the curriculum state), and at the end of fit each adapter is exported as a plain PEFT folder:
``<run dir>/adapters/<role>/`` loadable by ``peft.PeftModel.from_pretrained`` and vLLM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

from prost_lightning import backbone
from prost_lightning.data.render import IGNORE_INDEX
from prost_lightning.errors import ConfigError
from prost_lightning.rundir import run_dir

SHARED_ADAPTER = "shared"
LORA_MARK = backbone.LORA_MARK


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (per-role overrides use the same keys).

    Args:
        r: rank of the update matrices.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: module names that get an adapter (attention and MLP learn far faster than
            attention alone on small models, see docs/training-notes.md).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class RoleLoRAModule(L.LightningModule):
    def __init__(
        self,
        base_model: str = "tiny",
        roles: list[str] | None = None,
        dtype: backbone.DType = "float32",
        quantization: backbone.Quantization = "none",
        lora: LoraSettings | None = None,
        role_overrides: dict[str, dict] | None = None,
        shared_adapter: bool = False,
        learning_rate: float = 5e-4,
        role_learning_rates: dict[str, float] | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 10,
        gradient_checkpointing: bool = False,
        selective_logits: bool = True,
        export_adapters: bool = True,
    ):
        """A shared base model with one LoRA adapter per agent role.

        Args:
            base_model: 'tiny' (random, built in code), 'smollm2' (embedded SmolLM2-135M-Instruct),
                a local Hugging Face folder, or a hub id such as Qwen/Qwen2.5-1.5B-Instruct.
            roles: agent roles that get an adapter, e.g. [planner, executor] or [agent].
            dtype: weight / compute dtype: float32 | bfloat16 | float16.
            quantization: none | nf4 (QLoRA) | int8, through bitsandbytes.
            lora: LoRA hyper-parameters shared by all roles.
            role_overrides: per-role changes to `lora`, e.g. {planner: {r: 8}}.
            shared_adapter: ablation: one adapter trained on every role's samples.
            learning_rate: AdamW learning rate for the adapters.
            role_learning_rates: per-role rates, e.g. {planner: 2.5e-3}: a role with few samples
                per epoch (the planner has one per trajectory, the executor one per sub-task) takes
                far fewer optimizer steps, and a higher rate makes up for it.
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps, then a constant rate (the curriculum changes the
                epoch length, so a schedule tied to the total step count would be wrong).
            gradient_checkpointing: trade compute for activation memory.
            selective_logits: compute vocabulary logits only at trained positions (same loss, far
                less memory and time; needs a model whose forward takes a boolean logits_to_keep).
            export_adapters: write <run dir>/adapters/<role>/ PEFT folders at the end of fit.
        """
        super().__init__()
        self.save_hyperparameters()
        self.roles = list(roles or ["planner", "executor"])
        if not self.roles:
            raise ConfigError("model.roles: give at least one role, e.g. [planner, executor]")
        self.lora = lora or LoraSettings()
        self.role_overrides = role_overrides or {}
        for key, table in (("role_overrides", self.role_overrides), ("role_learning_rates", role_learning_rates or {})):
            unknown = sorted(set(table) - set(self.roles))
            if unknown:
                raise ConfigError(f"model.{key}: unknown role(s) {unknown}; model.roles is {self.roles}")
        for key, rate in (("learning_rate", learning_rate), *((f"role_learning_rates.{role}", r)
                                                              for role, r in (role_learning_rates or {}).items())):
            if not rate > 0:
                raise ConfigError(f"model.{key}: must be > 0, got {rate}; e.g. 5.0e-4")
        if weight_decay < 0 or warmup_steps < 0:
            raise ConfigError(f"model.weight_decay and model.warmup_steps: must be >= 0, got {weight_decay} and {warmup_steps}")
        if shared_adapter and role_learning_rates:
            raise ConfigError("model.role_learning_rates: one shared adapter has one rate; use model.learning_rate")
        self.shared_adapter = shared_adapter
        self.tokenizer = backbone.load_tokenizer(base_model)
        self.model = self._build_peft_model(base_model, dtype, quantization, gradient_checkpointing)
        self.num_base_parameters = backbone.base_parameter_count(self.model)
        self._adapter_params = {
            name: [p for n, p in self.model.named_parameters() if f".{name}." in n and LORA_MARK in n]
            for name in self.adapter_names
        }
        self._roles_since_step: set[str] = set()
        # adapter-only checkpoints: the frozen base is not in the state dict, so loading is not strict
        self.strict_loading = False

    # ---- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return [SHARED_ADAPTER] if self.shared_adapter else list(self.roles)

    def adapter_name(self, role: str) -> str:
        if role not in self.roles:
            raise ConfigError(f"role '{role}' has no adapter; model.roles is {self.roles}")
        return SHARED_ADAPTER if self.shared_adapter else role

    def _lora_config(self, adapter: str):
        from peft import LoraConfig

        settings = dataclasses.replace(self.lora, **self.role_overrides.get(adapter, {}))
        return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                          target_modules=list(settings.target_modules), task_type="CAUSAL_LM")

    def _build_peft_model(self, base_model, dtype, quantization, gradient_checkpointing):
        from peft import get_peft_model, prepare_model_for_kbit_training

        base = backbone.load_base_model(base_model, dtype=dtype, quantization=quantization)
        if quantization != "none":
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            base.gradient_checkpointing_enable()
            base.enable_input_require_grads()
        first, *rest = self.adapter_names
        model = get_peft_model(base, self._lora_config(first), adapter_name=first)
        for name in rest:
            model.add_adapter(name, self._lora_config(name))
        for n, p in model.named_parameters():
            p.requires_grad_(LORA_MARK in n)
        return model.train()  # from_pretrained returns eval mode; Lightning toggles it from here on

    def activate(self, role: str) -> str:
        """Route the forward pass through this role's adapter (all adapters stay trainable)."""
        adapter = self.adapter_name(role)
        self.model.set_adapter(adapter)
        # PEFT freezes inactive adapters in set_adapter; keep requires_grad fixed so DDP sees a
        # constant parameter set. Inactive adapters simply get no gradient (see on_before_optimizer_step).
        for params in self._adapter_params.values():
            for p in params:
                p.requires_grad_(True)
        return adapter

    # ---- training ---------------------------------------------------------------------------
    def _loss(self, batch) -> torch.Tensor:
        """Mean next-token cross-entropy over the trained tokens of the batch's role."""
        self.activate(batch["role"])
        labels = batch["labels"]
        if not self.hparams.selective_logits:
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=labels).loss
        # Position t predicts token t+1: project onto the vocabulary only where that token is trained.
        # Agent samples train ~10-20 % of their tokens, and the vocabulary projection (and its
        # logits) is the largest activation of a small model.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            logits_to_keep=keep).logits
        if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
            raise ConfigError(f"model.selective_logits: {type(self.model.get_base_model()).__name__} ignores a "
                              "boolean logits_to_keep; set model.selective_logits false for this architecture")
        return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]])

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self._roles_since_step.add(batch["role"])
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log(f"train/{batch['role']}/loss", loss, batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        loss = self._loss(batch)
        bs = batch["input_ids"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, add_dataloader_idx=False, sync_dist=True)
        self.log(f"val/{batch['role']}/loss", loss, batch_size=bs, add_dataloader_idx=False, sync_dist=True)

    def on_before_optimizer_step(self, optimizer):
        # Adapters of roles not trained since the last step must not move: drop whatever gradient
        # (e.g. zeros from DDP's unused-parameter handling) they carry, so AdamW skips them.
        active = {self.adapter_name(r) for r in self._roles_since_step}
        for name, params in self._adapter_params.items():
            if name not in active:
                for p in params:
                    p.grad = None
        self._roles_since_step.clear()

    def configure_optimizers(self):
        rates = self.hparams.role_learning_rates or {}
        groups = [{"params": params, "lr": rates.get(name, self.hparams.learning_rate)}
                  for name, params in self._adapter_params.items()]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        warmup = max(1, self.hparams.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints and export -----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if LORA_MARK in k}
        checkpoint["prost_adapters"] = self.adapter_names

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("prost_adapters")
        if saved is not None and saved != self.adapter_names:
            raise ConfigError(f"checkpoint has adapters {saved} but the model is configured with "
                              f"{self.adapter_names}; set model.roles / model.shared_adapter to match")

    def on_fit_end(self):
        if self.hparams.export_adapters and self.trainer.is_global_zero:
            self.export_adapters(run_dir(self.trainer) / "adapters")

    def export_adapters(self, folder: str | Path) -> dict[str, Path]:
        """One PEFT folder per adapter (``folder/<adapter>/``) with a model card."""
        folder = Path(folder)
        self.model.save_pretrained(str(folder), selected_adapters=self.adapter_names)
        written = {}
        for name in self.adapter_names:
            target = folder / name if (folder / name / "adapter_config.json").exists() else folder
            (target / "README.md").write_text(_model_card(self, name))
            written[name] = target
        return written


def _model_card(module: RoleLoRAModule, adapter: str) -> str:
    hp = module.hparams
    roles = module.roles if adapter == SHARED_ADAPTER else [adapter]
    return (
        f"# LoRA adapter `{adapter}` (ProST-Lightning)\n\n"
        f"- base model: `{hp.base_model}` ({module.num_base_parameters:,} parameters), dtype {hp.dtype}, "
        f"quantization {hp.quantization}\n"
        f"- agent role(s): {', '.join(roles)}\n"
        f"- LoRA: r={module.lora.r}, alpha={module.lora.alpha}, dropout={module.lora.dropout}, "
        f"targets {module.lora.target_modules}; overrides {module.role_overrides.get(adapter, {})}\n\n"
        "Load with:\n\n```python\nfrom peft import PeftModel\n"
        f"model = PeftModel.from_pretrained(base, '<this folder>', adapter_name='{adapter}')\n```\n"
    )
