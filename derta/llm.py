"""OpenAI-compatible chat client shared by the PAIR attacker/judge, AutoDAN
mutation, the LLM judge and response synthesis.

Contract
* ``ChatClient(cfg).complete(messages) -> str`` posts one
  ``POST {base_url}/chat/completions`` request and returns
  ``choices[0].message.content``.
* ``complete_many(list_of_messages) -> list[str]`` keeps the input order and
  never has more than ``cfg.max_concurrency`` requests in flight per client
  (a thread pool plus a client-wide semaphore, so concurrent callers share
  the bound).
* Only 429, 5xx and connection/timeout errors are retried, at most
  ``max_retries`` times after the first attempt, with exponential backoff and
  jitter (``backoff_s * 2**k``, capped by ``max_backoff_s``); a ``Retry-After``
  header (seconds) replaces the computed wait, capped the same way. Any other
  4xx fails at once. Failures raise :class:`LLMError` naming the URL (user
  info and query string removed) and the last status.
* The API key is read from the environment variable named by
  ``cfg.api_key_env`` when the client is built. It is sent as a Bearer header
  and never appears in a config, a repr, a log line or an exception.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from derta.config import StepConfig
from derta.errors import ConfigError

log = logging.getLogger(__name__)



def retryable(status: int) -> bool:
    """429 (rate limit) and 5xx are transient; every other status is final."""
    return status == 429 or 500 <= status < 600


class LLMConfig(StepConfig):
    """Endpoint settings for an OpenAI-compatible chat completions server."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="API root; '/chat/completions' is appended")
    model: str = Field("", description="model name sent in the request body")
    api_key_env: str = Field(
        "", description="name of the environment variable holding the API key ('' = send no key)"
    )
    temperature: float = Field(0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, description="nucleus sampling mass")
    max_tokens: int = Field(512, ge=1, description="max new tokens per completion")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(4, ge=0, description="retries after the first attempt (429/5xx/connection errors only)")
    backoff_s: float = Field(0.5, ge=0, description="first backoff; doubles each retry, with jitter")
    max_backoff_s: float = Field(30.0, ge=0, description="cap on one wait, also applied to Retry-After")
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """Thread-safe client for one endpoint. Use as a context manager or call :meth:`close`."""

    def __init__(self, cfg: LLMConfig | dict[str, Any] | None = None, *, transport: Any = None):
        import httpx

        self.cfg = cfg if isinstance(cfg, LLMConfig) else LLMConfig.from_dict(cfg, where="llm")
        self.url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        self._safe_url = redact_url(self.url)
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key_env:
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise ConfigError(f"llm: environment variable {self.cfg.api_key_env!r} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=self.cfg.timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=self.cfg.max_concurrency),
        )
        self._slots = threading.BoundedSemaphore(self.cfg.max_concurrency)
        self._jitter = random.Random()  # jitter only spreads retries; it never changes results

    def __repr__(self) -> str:
        key = f", api_key_env={self.cfg.api_key_env!r}" if self.cfg.api_key_env else ""
        return f"ChatClient(url={self._safe_url!r}, model={self.cfg.model!r}{key})"

    __str__ = __repr__

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.max_backoff_s)
        base = self.cfg.backoff_s * (2**attempt)
        return min(base * (0.5 + self._jitter.random()), self.cfg.max_backoff_s)

    def complete(
        self, messages: list[dict[str, str]], *, temperature: float | None = None, max_tokens: int | None = None
    ) -> str:
        """One chat completion; ``temperature``/``max_tokens`` override the config for this call."""
        import httpx

        body = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature if temperature is None else temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_tokens if max_tokens is None else max_tokens,
        }
        status: int | None = None
        detail = ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                with self._slots:
                    resp = self._http.post(self.url, json=body)
            except httpx.TransportError as err:
                status, detail = None, f"{type(err).__name__}"
            else:
                status = resp.status_code
                if status == 200:
                    return self._content(resp)
                detail = resp.text[:200]
                if not retryable(status):
                    raise LLMError(self._safe_url, status, f"not retried: {detail}")
                retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt < self.cfg.max_retries:
                wait = self._wait(attempt, retry_after)
                log.info("LLM %s: status %s, retry %d in %.2fs", self._safe_url, status, attempt + 1, wait)
                time.sleep(wait)
        raise LLMError(self._safe_url, status, f"gave up after {self.cfg.max_retries} retries: {detail}")

    def _content(self, resp: Any) -> str:
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(self._safe_url, resp.status_code, f"malformed reply: {resp.text[:200]}") from None
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
