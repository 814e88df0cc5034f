"""derta.llm.ChatClient against the local OpenAI-compatible test server."""

from __future__ import annotations

import socket
import time

import pytest

from derta.errors import ConfigError
from derta.llm import ChatClient, LLMConfig, LLMError, redact_url
from helpers_openai_server import OpenAIServer, Reply

SECRET = "sk-test-DO-NOT-LEAK-1234"


def client_for(srv: OpenAIServer, **kw) -> ChatClient:
    cfg = {"base_url": srv.url, "model": "m", "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5, **kw}
    return ChatClient(LLMConfig.from_dict(cfg))


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


def test_success_sends_openai_request():
    with OpenAIServer() as srv, client_for(srv, temperature=0.7, max_tokens=33) as cli:
        srv.push("hello there")
        assert cli.complete(msgs("hi")) == "hello there"
        assert cli.complete(msgs("echo me")) == "echo me"  # default: echo the last user turn
        req = srv.requests[0]
        assert req["path"] == "/v1/chat/completions"
        assert req["json"]["model"] == "m"
        assert req["json"]["messages"] == msgs("hi")
        assert req["json"]["temperature"] == 0.7 and req["json"]["max_tokens"] == 33
        assert "authorization" not in {k.lower() for k in req["headers"]}


def test_429_then_success_retries_and_honours_retry_after():
    with OpenAIServer() as srv, client_for(srv, max_backoff_s=5) as cli:
        srv.push(Reply(status=429, headers={"Retry-After": "0.2"}), Reply(status=503), "ok")
        t0 = time.monotonic()
        assert cli.complete(msgs("x")) == "ok"
        assert time.monotonic() - t0 >= 0.2  # waited as told by Retry-After
        assert len(srv.requests) == 3


def test_500_forever_gives_up_after_max_retries_in_bounded_time():
    with OpenAIServer(handler=lambda req: Reply(status=500)) as srv, client_for(srv, max_retries=3) as cli:
        t0 = time.monotonic()
        with pytest.raises(LLMError) as info:
            cli.complete(msgs("x"))
        elapsed = time.monotonic() - t0
        assert len(srv.requests) == 4  # first attempt + 3 retries
        assert elapsed < 2.0  # waits are capped by max_backoff_s (0.05)
        assert info.value.status == 500
        assert srv.url in str(info.value)


def test_other_4xx_fail_at_once():
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(status=400, body={"error": {"message": "bad request"}}))
        with pytest.raises(LLMError) as info:
            cli.complete(msgs("x"))
        assert info.value.status == 400
        assert len(srv.requests) == 1


def test_connection_error_is_retried_then_llmerror():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.01, timeout_s=1)
    with ChatClient(cfg) as cli, pytest.raises(LLMError) as info:
        cli.complete(msgs("x"))
    assert info.value.status is None and f":{port}/v1/chat/completions" in str(info.value)


def test_malformed_reply_is_an_llmerror():
    with OpenAIServer() as srv, client_for(srv) as cli:
        srv.push(Reply(body={"choices": []}))
        with pytest.raises(LLMError, match="malformed"):
            cli.complete(msgs("x"))


def test_complete_many_bounds_concurrency_and_preserves_order():
    with OpenAIServer(delay_s=0.02) as srv, client_for(srv, max_concurrency=3) as cli:
        batch = [msgs(f"request-{i}") for i in range(40)]
        out = cli.complete_many(batch)
        assert out == [f"request-{i}" for i in range(40)]
        assert 1 <= srv.max_in_flight <= 3
        seen = sorted(r["json"]["messages"][-1]["content"] for r in srv.requests)
        assert seen == sorted(f"request-{i}" for i in range(40))  # each sent exactly once
        assert cli.complete_many([]) == []


def test_complete_many_retries_inside_the_pool():
    calls: dict[str, int] = {}

    def flaky(req):
        text = req["messages"][-1]["content"]
        calls[text] = calls.get(text, 0) + 1
        return Reply(status=429) if calls[text] == 1 else text.upper()

    with OpenAIServer(handler=flaky) as srv, client_for(srv, max_concurrency=4) as cli:
        assert cli.complete_many([msgs(c) for c in "abcdef"]) == list("ABCDEF")
        assert len(srv.requests) == 12


def test_api_key_sent_as_bearer_but_never_shown(monkeypatch):
    monkeypatch.setenv("DERTA_TEST_KEY", SECRET)
    with OpenAIServer() as srv:
        cfg = LLMConfig(base_url=srv.url, api_key_env="DERTA_TEST_KEY", max_retries=1, backoff_s=0.01)
        assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())
        with ChatClient(cfg) as cli:
            srv.push("ok", Reply(status=401, body={"error": {"message": "invalid key"}}))
            assert cli.complete(msgs("x")) == "ok"
            assert srv.requests[0]["headers"].get("Authorization") == f"Bearer {SECRET}"
            assert SECRET not in repr(cli) and SECRET not in str(cli)
            with pytest.raises(LLMError) as info:
                cli.complete(msgs("x"))
            assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_missing_key_env_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DERTA_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="DERTA_TEST_MISSING_KEY"):
        ChatClient(LLMConfig(api_key_env="DERTA_TEST_MISSING_KEY"))


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*max_concurrency"):
        LLMConfig.from_dict({"base_url": "http://x", "api_key": SECRET})


def test_redact_url_drops_credentials():
    assert redact_url("https://user:pw@host:8443/v1/chat/completions?key=abc") == "https://host:8443/v1/chat/completions"
