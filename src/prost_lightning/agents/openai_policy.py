"""An OpenAI-compatible chat endpoint as a policy (stdlib HTTP; OpenAI, vLLM, llama.cpp, ...).

For a vLLM server that serves the base model with one LoRA per role (``prost serve``, or
:class:`~prost_lightning.serving.InferenceServer`, which builds these policies itself), give each
role its own ``model`` name (the LoRA's name) and the same ``base_url``.
A batch of requests is sent concurrently (one HTTP request each, ``max_concurrency`` at a time);
the server batches them itself.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from prost_lightning.errors import ConfigError

from .parsing import code_block_end
from .policy import Generation, GenerationRequest, Policy, PolicyError


class OpenAIPolicy(Policy):
    constrains_known_apis = False  # the endpoint decodes; limits.known_apis_only is refused with it

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, timeout_s: float = 120.0, retries: int = 2,
                 max_concurrency: int = 8, num_parameters: int | None = None,
                 stop: Sequence[str] | None = None):
        """
        Args:
            base_url: e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (``/chat/completions`` is appended).
            model: model name at that endpoint (for vLLM with LoRA: the LoRA module's name).
            api_key_env: environment variable holding the API key (unset or empty: no auth header).
            num_parameters: model size, only for FLOPs estimates (unknown: 0 FLOPs counted).
        """
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"openai base_url '{base_url}' must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_concurrency = max(1, max_concurrency)
        self.num_parameters = num_parameters
        self.stop = list(stop) if stop else None
        self.name = f"openai:{model}"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: GenerationRequest) -> Generation:
        body = {"model": self.model, "messages": request.messages, "max_tokens": request.max_new_tokens,
                "temperature": self.temperature}
        if self.stop:
            body["stop"] = self.stop
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last_error = ""
        for attempt in range(self.retries + 1):
            http = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(http, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read())
                generation = _parse(answer)
                if request.stop_after_code:  # the episode reads the first code block only (as local engines stop)
                    generation.text = generation.text[: code_block_end(generation.text) or len(generation.text)]
                return generation
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code}: {error.read().decode(errors='replace')[:300]}"
                if error.code < 500 and error.code != 429:
                    break  # a bad request or bad key does not get better by retrying
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, KeyError) as error:
                last_error = repr(error)
            time.sleep(min(4.0, 0.5 * 2 ** attempt))
        raise PolicyError(f"{self.url} (model {self.model}): {last_error}")


def _parse(answer: dict) -> Generation:
    choice = answer["choices"][0]
    usage = answer.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}  # vLLM with --enable-prompt-tokens-details, OpenAI
    return Generation(text=choice["message"].get("content") or "",
                      prompt_tokens=int(usage.get("prompt_tokens", 0) or 0),
                      completion_tokens=int(usage.get("completion_tokens", 0) or 0),
                      finish_reason=choice.get("finish_reason") or "stop",
                      cached_tokens=int(details.get("cached_tokens", 0) or 0))
