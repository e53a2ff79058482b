"""The `openai` generation backend: any OpenAI-compatible chat-completions server.

vLLM, SGLang, TGI, the llama.cpp server and `transformers serve` all speak this protocol. Up to
`concurrency` requests are in flight at once; a request that times out, loses its connection or
gets HTTP 408/409/429/5xx is retried with exponential backoff. A request the server refuses as
such (HTTP 400/413/422, e.g. a prompt over the server's context) is counted as rejected and its
conversation skipped; 401/403/404 (wrong key, model or URL) stop the run with a clear message.
The API key is read from the environment and never printed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import httpx

from draftheads.data.config import OpenAIBackendConfig
from draftheads.data.generate_hf import GenAnswer, GenRequest
from draftheads.decoding.sampling import SamplingConfig
from draftheads.utils.errors import DraftheadsError

RETRIED_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
REJECTED_STATUS = frozenset({400, 413, 422})


class ServerError(DraftheadsError):
    """The server cannot be used (unreachable after retries, wrong URL, key or model name)."""


class OpenAIGenerator:
    """Answers requests through `{base_url}/chat/completions`."""

    def __init__(self, cfg: OpenAIBackendConfig, model: str, sampling: SamplingConfig, tokenizer=None):
        self.cfg = cfg
        self.model = cfg.model or model
        self.sampling = sampling
        self.tokenizer = tokenizer
        """Counts answer tokens when the server reports no usage."""
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(headers=headers, timeout=cfg.timeout)
        self.requests_sent = 0
        self.retries = 0

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def generate(self, requests: list[GenRequest], on_tokens: Callable[[int], None] | None = None) -> list[GenAnswer]:
        """Answers in the order of `requests` (a request the server refuses gets finish_reason
        'rejected: ...'); `on_tokens(n)` after each answer (for progress)."""

        def one(request: GenRequest) -> GenAnswer:
            answer = self._one(request)
            if on_tokens is not None:
                on_tokens(answer.tokens)
            return answer

        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(one, requests))

    def body(self, request: GenRequest) -> dict:
        """The JSON body of one request."""
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_new_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "seed": request.seed,
            "stream": False,
        }
        if self.sampling.top_k:
            body["top_k"] = self.sampling.top_k  # vLLM/SGLang extension; others may refuse it
        return body

    def _one(self, request: GenRequest) -> GenAnswer:
        body = self.body(request)
        problem = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                time.sleep(min(60.0, self.cfg.backoff * 2 ** (attempt - 1)))
            self.requests_sent += 1
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.cfg.timeout:g} s"
                continue
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {exc})"
                continue
            if response.status_code in RETRIED_STATUS:
                problem = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code in REJECTED_STATUS:
                return GenAnswer(text="", tokens=0, finish_reason=f"rejected: HTTP {response.status_code}: {_detail(response)}")
            if response.status_code != 200:
                raise ServerError(
                    f"{self.url}: HTTP {response.status_code}: {_detail(response)} "
                    f"(check base_url, the model name '{self.model}' and ${self.cfg.api_key_env})"
                )
            return self._parse(response)
        raise ServerError(f"{self.url}: gave up after {self.cfg.max_retries + 1} attempts: {problem}")

    def _parse(self, response: httpx.Response) -> GenAnswer:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            reason = choice.get("finish_reason") or "stop"
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServerError(f"{self.url}: not a chat-completions answer ({type(exc).__name__}: {exc}): {response.text[:200]!r}") from None
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        if tokens is None:
            tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if self.tokenizer is not None else 0
        return GenAnswer(text=text, tokens=int(tokens), finish_reason="length" if reason == "length" else "stop")


def _detail(response: httpx.Response) -> str:
    """The server's error message, short (bodies can be long HTML pages)."""
    try:
        data = response.json()
        message = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except ValueError:
        return response.text[:300]
