"""OpenAI-compatible chat client shared by the PAIR attacker/judge, AutoDAN
mutation, CompletingAttack's LLM rewrite, the LLM judge, AlpacaEval and
response synthesis. The transport is the official ``openai`` package.

Contract
* ``ChatClient(cfg).complete(messages) -> str`` sends one chat completion
  (``POST {base_url}/chat/completions``) and returns
  ``choices[0].message.content`` ('' when the server sends null).
* ``complete_many(list_of_messages) -> list[str]`` keeps the input order and
  never has more than ``cfg.max_concurrency`` calls in flight per client
  (a thread pool plus a client-wide semaphore, so concurrent callers share
  the bound; a call holds its slot through its own retries).
* Retries are openai's (``max_retries`` after the first attempt): 408, 409,
  429, 5xx, connection errors and timeouts are retried; any other 4xx fails
  at once. Wait before retry k (k = 0, 1, ...): ``0.5 s * 2**k``, capped at
  8 s, minus 0-25 % jitter. A ``Retry-After`` (seconds or HTTP date) or
  ``retry-after-ms`` header of more than 0 and at most 120 s replaces that
  wait; a longer one is not retried at all. ``timeout_s`` applies to each
  attempt. There is no backoff setting: openai exposes none, so the former
  ``backoff_s``/``max_backoff_s`` keys were removed rather than kept as
  settings that do nothing (an old config naming them fails with the list
  of valid keys).
* Failures raise :class:`LLMError` naming the URL (user info, query string
  and fragment removed) and the last HTTP status (None: no HTTP reply).
* The API key is read from the environment variable named by
  ``cfg.api_key_env`` when the client is built and sent as a Bearer header;
  it never appears in a config, a repr, a log line or an exception. With
  ``api_key_env: ''`` the client sends :data:`NO_KEY`, because openai refuses
  an empty key; servers started without a key (``vllm serve`` without
  ``--api-key``) ignore it. ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` are never
  read: the key and URL are always passed explicitly.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from derta.config import StepConfig
from derta.errors import ConfigError

log = logging.getLogger(__name__)

# Sent as the Bearer token when no api_key_env is configured: openai requires a
# non-empty key, and a server without authentication ignores the header.
NO_KEY = "no-key"


class LLMConfig(StepConfig):
    """Endpoint settings for an OpenAI-compatible chat completions server."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="API root; '/chat/completions' is appended")
    model: str = Field("", description="model name sent in the request body")
    api_key_env: str = Field(
        "", description=f"name of the environment variable holding the API key ('' = send the placeholder {NO_KEY!r})"
    )
    temperature: float = Field(0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, description="nucleus sampling mass")
    max_tokens: int = Field(512, ge=1, description="max new tokens per completion")
    timeout_s: float = Field(60.0, gt=0, description="timeout of each attempt in seconds")
    max_retries: int = Field(
        4, ge=0,
        description="retries after the first attempt (408/409/429/5xx/connection errors; openai's backoff: 0.5 s doubling, cap 8 s)",
    )
    max_concurrency: int = Field(4, ge=1, description="max requests in flight per client")


class LLMError(RuntimeError):
    """A chat request failed for good. Carries ``url`` (redacted) and ``status`` (None: no HTTP reply)."""

    def __init__(self, url: str, status: int | None, detail: str):
        self.url, self.status, self.detail = url, status, detail
        super().__init__(f"LLM request to {url} failed (last status {status}): {detail}")


def redact_url(url: str) -> str:
    """Drop user info, query and fragment: they may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class ChatClient:
    """Thread-safe client for one endpoint. Use as a context manager or call :meth:`close`.

    ``transport`` (tests, offline runs) is an ``httpx2`` transport for the
    HTTP client underneath openai.
    """

    def __init__(self, cfg: LLMConfig | dict[str, Any] | None = None, *, transport: Any = None):
        import openai

        self.cfg = cfg if isinstance(cfg, LLMConfig) else LLMConfig.from_dict(cfg, where="llm")
        self.url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        self._safe_url = redact_url(self.url)
        key = NO_KEY
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env, "")
            if not key:
                raise ConfigError(f"llm: environment variable {self.cfg.api_key_env!r} (api_key_env) is not set")
        self._key = key
        self._client = openai.OpenAI(
            base_url=self.cfg.base_url,
            api_key=key,
            max_retries=self.cfg.max_retries,
            timeout=self.cfg.timeout_s,
            http_client=openai.DefaultHttpxClient(transport=transport) if transport is not None else None,
        )
        self._slots = threading.BoundedSemaphore(self.cfg.max_concurrency)

    def __repr__(self) -> str:
        key = f", api_key_env={self.cfg.api_key_env!r}" if self.cfg.api_key_env else ""
        return f"ChatClient(url={self._safe_url!r}, model={self.cfg.model!r}{key})"

    __str__ = __repr__

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _error(self, status: int | None, detail: str) -> LLMError:
        detail = " ".join(detail.split())[:300]
        if self._key != NO_KEY:  # a server may echo what it was sent
            detail = detail.replace(self._key, "***")
        return LLMError(self._safe_url, status, detail)

    def complete(
        self, messages: list[dict[str, str]], *, temperature: float | None = None, max_tokens: int | None = None
    ) -> str:
        """One chat completion; ``temperature``/``max_tokens`` override the config for this call."""
        import openai

        try:
            with self._slots:
                resp = self._client.chat.completions.create(
                    model=self.cfg.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.cfg.temperature if temperature is None else temperature,
                    top_p=self.cfg.top_p,
                    max_tokens=self.cfg.max_tokens if max_tokens is None else max_tokens,
                )
        except openai.APIStatusError as err:
            raise self._error(err.status_code, f"{type(err).__name__} (max_retries={self.cfg.max_retries}): {err.message}") from None
        except openai.APIResponseValidationError as err:
            raise self._error(err.response.status_code, f"malformed reply: {err.message}") from None
        except openai.APIConnectionError as err:
            raise self._error(None, f"{type(err).__name__} after {self.cfg.max_retries} retries: {err.message}") from None
        except ValueError as err:  # a 2xx reply whose body is not JSON (error replies are read leniently)
            raise self._error(200, f"malformed reply: {type(err).__name__}") from None
        except openai.OpenAIError as err:
            raise self._error(None, f"{type(err).__name__}: {err}") from None
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError):
            raise self._error(200, f"malformed reply: no choices[0].message in {str(resp)[:200]}") from None
        if content is not None and not isinstance(content, str):
            raise self._error(200, f"malformed reply: content is {type(content).__name__}")
        return content or ""

    def complete_many(self, batch: list[list[dict[str, str]]], **overrides: Any) -> list[str]:
        """Complete every conversation in ``batch``; results keep the input order.

        The first failure (in input order) is raised once the pool is drained of
        pending work; requests not yet started are cancelled.
        """
        if not batch:
            return []
        workers = min(self.cfg.max_concurrency, len(batch))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm")
        try:
            futures = [pool.submit(self.complete, msgs, **overrides) for msgs in batch]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
