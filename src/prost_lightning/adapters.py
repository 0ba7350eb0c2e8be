"""The on-disk layout of exported adapters, read by every engine that serves them.

``prost fit`` writes ``<run dir>/adapters/<role>/`` (one PEFT folder per role) or
``<run dir>/adapters/shared/`` (one adapter for every role); each folder's adapter_config.json
names the base model. The local engines load them with PEFT, the inference server with vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from prost_lightning.errors import ConfigError


def role_adapter_folders(adapters: str | Path, roles: Sequence[str]) -> dict[str, Path]:
    """{role: PEFT folder} of an export (``<run>/adapters`` or the run dir): one per role, or ``shared/``."""
    folder = Path(adapters)
    if (folder / "adapters").is_dir():
        folder = folder / "adapters"
    if (folder / "shared" / "adapter_config.json").is_file():
        return {r: folder / "shared" for r in roles}
    missing = [r for r in roles if not (folder / r / "adapter_config.json").is_file()]
    if missing:
        raise ConfigError(f"--adapters {folder}: no PEFT folder for role(s) {missing} "
                          f"(expected {folder}/<role>/adapter_config.json)")
    return {r: folder / r for r in roles}


def adapters_base_model(folders: dict[str, Path]) -> str:
    """The base model the adapters were trained on (their adapter_config.json's)."""
    first = next(iter(folders.values()))
    base_model = json.loads((first / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_model:
        raise ConfigError(f"{first}: adapter_config.json names no base model; pass --base_model")
    return base_model
