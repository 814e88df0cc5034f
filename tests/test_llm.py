"""derta.llm.ChatClient (on the openai package) against the local OpenAI-compatible test server.

openai's retry wait before retry k is 0.5 s * 2**k (cap 8 s) minus 0-25 % jitter,
unless the server sends Retry-After / retry-after-ms (0 < wait <= 120 s). Tests
that only need a retry to happen use ``retry-after-ms`` so they stay fast.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from derta.errors import ConfigError
from derta.llm import NO_KEY, ChatClient, LLMConfig, LLMError, redact_url
from helpers_openai_server import OpenAIServer, Reply

SECRET = "sk-test-DO-NOT-LEAK-1234"
FAST = {"retry-after-ms": "10"}  # server-directed 10 ms wait: a retry without openai's 0.5 s backoff


def client_for(srv: OpenAIServer, **kw) -> ChatClient:
    cfg = {"base_url": srv.url, "model": "m", "timeout_s": 5, **kw}
    return ChatClient(LLMConfig.from_dict(cfg))


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


def header(req: dict, name: str) -> str | None:
    return {k.lower(): v for k, v in req["headers"].items()}.get(name.lower())


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_success_sends_openai_request(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # never read: the key comes only from api_key_env
    with OpenAIServer() as srv, client_for(srv, temperature=0.7, top_p=0.9, max_tokens=33) as cli:
        srv.push("hello there")
        assert cli.complete(msgs("hi")) == "hello there"
        assert cli.complete(msgs("echo me")) == "echo me"  # default: echo the last user turn
        assert cli.complete(msgs("x"), temperature=0.0, max_tokens=5) == "x"
        req = srv.requests[0]
        assert req["path"] == "/v1/chat/completions"
        assert req["json"]["model"] == "m"
        assert req["json"]["messages"] == msgs("hi")
        assert req["json"]["temperature"] == 0.7 and req["json"]["top_p"] == 0.9 and req["json"]["max_tokens"] == 33
        assert srv.requests[2]["json"]["temperature"] == 0.0 and srv.requests[2]["json"]["max_tokens"] == 5
        # no api_key_env: the documented placeholder, which a server without auth ignores
        assert all(header(r, "Authorization") == f"Bearer {NO_KEY}" for r in srv.requests)


def test_null_content_is_empty_string():
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(body={"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}))
        assert cli.complete(msgs("x")) == ""


def test_429_then_503_then_success_honours_retry_after():
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(status=429, headers={"Retry-After": "0.2"}), Reply(status=503, headers={"retry-after-ms": "50"}), "ok")
        t0 = time.monotonic()
        assert cli.complete(msgs("x")) == "ok"
        elapsed = time.monotonic() - t0
        assert len(srv.requests) == 3
        assert elapsed >= 0.25  # waited 0.2 s + 50 ms as the server said
        assert elapsed < 1.0  # ... instead of openai's own schedule (>= 0.375 s + 0.75 s)


def test_retry_after_beyond_two_minutes_is_not_retried():
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(status=429, headers={"Retry-After": "500"}))
        t0 = time.monotonic()
        with pytest.raises(LLMError) as info:
            cli.complete(msgs("x"))
        assert info.value.status == 429 and len(srv.requests) == 1 and time.monotonic() - t0 < 1.0


def test_500_forever_gives_up_after_max_retries_on_openai_backoff():
    with OpenAIServer(handler=lambda req: Reply(status=500)) as srv, client_for(srv, max_retries=3) as cli:
        t0 = time.monotonic()
        with pytest.raises(LLMError) as info:
            cli.complete(msgs("x"))
        elapsed = time.monotonic() - t0
        assert len(srv.requests) == 4  # first attempt + 3 retries
        # waits 0.5 + 1 + 2 s, each minus 0-25 % jitter: bounded, and really backing off
        assert 0.75 * 3.5 <= elapsed < 3.5 + 1.5, elapsed
        assert [header(r, "x-stainless-retry-count") for r in srv.requests] == ["0", "1", "2", "3"]
        assert info.value.status == 500
        assert srv.url + "/chat/completions" in str(info.value) and "max_retries=3" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_fail_at_once(status):
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(status=status, body={"error": {"message": "bad request"}}))
        with pytest.raises(LLMError) as info:
            cli.complete(msgs("x"))
        assert info.value.status == status and "bad request" in info.value.detail
        assert len(srv.requests) == 1


def test_connection_error_is_retried_then_llmerror_with_redacted_url():
    port = free_port()
    cfg = LLMConfig(base_url=f"http://user:pw@127.0.0.1:{port}/v1", max_retries=2, timeout_s=1)
    t0 = time.monotonic()
    with ChatClient(cfg) as cli, pytest.raises(LLMError) as info:
        cli.complete(msgs("x"))
    elapsed = time.monotonic() - t0
    assert info.value.status is None
    assert info.value.url == f"http://127.0.0.1:{port}/v1/chat/completions" and info.value.url in str(info.value)
    assert "pw" not in str(info.value) and "user" not in str(info.value)
    assert elapsed >= 0.75 * (0.5 + 1.0)  # two retries with backoff happened


@pytest.mark.parametrize("body", [{"choices": []}, {"foo": 1}, [1, 2], "not json",
                                  {"choices": [{"message": {"content": ["a", "list"]}}]}])
def test_malformed_reply_is_an_llmerror_and_not_retried(body):
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(body=body))
        with pytest.raises(LLMError, match="malformed") as info:
            cli.complete(msgs("x"))
        assert info.value.status == 200 and len(srv.requests) == 1


def test_complete_many_bounds_concurrency_and_preserves_order():
    with OpenAIServer(delay_s=0.02) as srv, client_for(srv, max_concurrency=3) as cli:
        batch = [msgs(f"request-{i}") for i in range(40)]
        out = cli.complete_many(batch)
        assert out == [f"request-{i}" for i in range(40)]
        assert 1 < srv.max_in_flight <= 3
        seen = sorted(r["json"]["messages"][-1]["content"] for r in srv.requests)
        assert seen == sorted(f"request-{i}" for i in range(40))  # each sent exactly once
        assert cli.complete_many([]) == []


def test_complete_many_retries_inside_the_pool():
    calls: dict[str, int] = {}

    def flaky(req):
        text = req["messages"][-1]["content"]
        calls[text] = calls.get(text, 0) + 1
        return Reply(status=429, headers=FAST) if calls[text] == 1 else text.upper()

    with OpenAIServer(handler=flaky) as srv, client_for(srv, max_concurrency=4) as cli:
        assert cli.complete_many([msgs(c) for c in "abcdef"]) == list("ABCDEF")
        assert len(srv.requests) == 12 and set(calls.values()) == {2}


def test_complete_many_raises_the_first_failure():
    def some_bad(req):
        text = req["messages"][-1]["content"]
        return Reply(status=400, body={"error": {"message": f"bad {text}"}}) if text in ("q3", "q7") else text

    with OpenAIServer(handler=some_bad) as srv, client_for(srv, max_concurrency=2) as cli:
        with pytest.raises(LLMError, match="bad q3") as info:
            cli.complete_many([msgs(f"q{i}") for i in range(10)])
        assert info.value.status == 400


def test_api_key_sent_as_bearer_but_never_shown(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DERTA_TEST_KEY", SECRET)
    with OpenAIServer() as srv:
        cfg = LLMConfig(base_url=srv.url, api_key_env="DERTA_TEST_KEY", max_retries=1)
        assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())
        with ChatClient(cfg) as cli:
            srv.push("ok", Reply(status=401, body={"error": {"message": f"invalid key {SECRET}"}}))
            assert cli.complete(msgs("x")) == "ok"
            assert header(srv.requests[0], "Authorization") == f"Bearer {SECRET}"
            assert SECRET not in repr(cli) and SECRET not in str(cli)
            with pytest.raises(LLMError) as info:
                cli.complete(msgs("x"))
            assert len(srv.requests) == 2  # 401 is not retried
            assert "invalid key ***" in str(info.value)  # a key the server echoes back is masked
            assert SECRET not in str(info.value) and SECRET not in repr(info.value)
            assert info.value.__cause__ is None and info.value.__suppress_context__
    assert SECRET not in caplog.text


def test_transport_replaces_the_network():
    import httpx2

    seen = []

    def handler(request):
        seen.append(str(request.url))
        return httpx2.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "offline"}}]})

    cfg = LLMConfig(base_url="http://judge.invalid/v1", model="m")
    with ChatClient(cfg, transport=httpx2.MockTransport(handler)) as cli:
        assert cli.complete(msgs("x")) == "offline"
    assert seen == ["http://judge.invalid/v1/chat/completions"]


def test_missing_key_env_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DERTA_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="DERTA_TEST_MISSING_KEY"):
        ChatClient(LLMConfig(api_key_env="DERTA_TEST_MISSING_KEY"))


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*max_concurrency"):
        LLMConfig.from_dict({"base_url": "http://x", "api_key": SECRET})
    # openai owns the backoff schedule: the former keys are errors, not silently ignored
    for gone in ("backoff_s", "max_backoff_s"):
        with pytest.raises(ConfigError, match=gone):
            LLMConfig.from_dict({gone: 0.1})


def test_redact_url_drops_credentials():
    assert redact_url("https://user:pw@host:8443/v1/chat/completions?key=abc") == "https://host:8443/v1/chat/completions"
