"""Build one policy per role from a short description (teacher name, endpoint, or a trained module)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prost_lightning.errors import ConfigError

from .oracle import OraclePolicy
from .policy import Policy, always_wrong
from .prompts import PromptSet


def make_policies(kind: str, roles: Sequence[str], *, prompts: PromptSet | None = None,
                  base_url: str | Mapping[str, str] | None = None, model: str | Mapping[str, str] | None = None,
                  api_key_env: str = "OPENAI_API_KEY", num_parameters: int | None = None,
                  temperature: float = 0.0) -> dict[str, Policy]:
    """Policies for ``roles``: ``oracle`` | ``always_wrong`` | ``openai``.

    For ``openai``: ``base_url`` and ``model``, each one value for every role or {role: value}
    (e.g. one vLLM server with one LoRA name per role, or one endpoint per role).
    """
    if kind == "oracle":
        oracle = OraclePolicy(prompts)
        return {r: oracle for r in roles}
    if kind == "always_wrong":
        wrong = always_wrong((prompts or PromptSet()).finish)
        return {r: wrong for r in roles}
    if kind == "openai":
        from .openai_policy import OpenAIPolicy

        if not base_url or not model:
            raise ConfigError("teacher 'openai' needs --base_url (e.g. http://127.0.0.1:8000/v1) and --model")
        names = {r: model for r in roles} if isinstance(model, str) else dict(model)
        urls = {r: base_url for r in roles} if isinstance(base_url, str) else dict(base_url)
        for what, table in (("model", names), ("base_url", urls)):
            missing = [r for r in roles if r not in table]
            if missing:
                raise ConfigError(f"openai: no {what} for role(s) {missing}; give one value or {{role: value}}")
        return {r: OpenAIPolicy(urls[r], names[r], api_key_env=api_key_env, num_parameters=num_parameters,
                                temperature=temperature) for r in roles}
    raise ConfigError(f"policy kind '{kind}' is unknown; use oracle | openai | always_wrong")


LOCAL_ENGINES = ("hf", "hf_generate")


def model_policies(model, tokenizer, roles: Sequence[str], adapter_for=None, *,
                   num_parameters: int | None = None, max_batch_size: int = 8,
                   do_sample: bool = False, temperature: float = 1.0, engine: str = "hf",
                   seed: int = 0) -> dict[str, Policy]:
    """Local policies sharing one (PEFT) model: ``adapter_for(role)`` names each role's adapter.

    ``engine``: ``hf`` (default) = one :class:`LocalEngine` for all roles (prefix caches, one
    mixed-adapter batch); ``hf_generate`` = one plain-``generate`` :class:`HFPolicy` per role
    (the reference path). With a RoleLoRAModule: ``model_policies(m.model, m.tokenizer, roles,
    m.adapter_name, num_parameters=m.num_base_parameters)``.
    """
    if engine == "hf":
        from .local_engine import LocalEngine

        shared = LocalEngine(model, tokenizer, {r: adapter_for(r) if adapter_for else None for r in roles},
                             do_sample=do_sample, temperature=temperature, max_batch_size=max_batch_size,
                             num_parameters=num_parameters, seed=seed)
        return {r: shared for r in roles}
    if engine == "hf_generate":
        from .hf_policy import HFPolicy

        return {r: HFPolicy(model, tokenizer, adapter_for(r) if adapter_for else None, do_sample=do_sample,
                            temperature=temperature, max_batch_size=max_batch_size, num_parameters=num_parameters)
                for r in roles}
    raise ConfigError(f"engine '{engine}' is not a local engine; use one of {LOCAL_ENGINES} "
                      "(or engine: vllm with a served model)")
