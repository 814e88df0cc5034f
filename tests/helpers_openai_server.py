"""A tiny OpenAI-compatible chat server for tests (stdlib only).

It binds 127.0.0.1 on a free port, serves ``POST /v1/chat/completions`` from a
background thread, and answers, in this order of precedence:

1. the next scripted :class:`Reply` pushed with :meth:`OpenAIServer.push`;
2. ``handler(request_json) -> Reply | str`` if one was given;
3. an echo of the last user message.

It records every request (path, headers, JSON body) and the largest number
of requests in flight at once, so tests can check retries, auth headers and
concurrency bounds.

    with OpenAIServer() as srv:
        srv.push(Reply(status=429), Reply(content="hi"))
        client = ChatClient({"base_url": srv.url})
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # chat text, wrapped in an OpenAI response body
    body: Any = None  # raw body (dict -> JSON, str -> as is); overrides ``content``
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def chat_body(content: str, model: str = "test") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


class OpenAIServer:
    def __init__(
        self,
        handler: Callable[[dict[str, Any]], Reply | str] | None = None,
        delay_s: float = 0.0,
    ):
        self.handler = handler
        self.delay_s = delay_s  # added to every reply; makes concurrency observable
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------
    def push(self, *replies: Reply | str) -> None:
        with self._lock:
            for r in replies:
                self._script.append(Reply(content=r) if isinstance(r, str) else r)

    def _next_reply(self, req: dict[str, Any]) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.handler is not None:
            out = self.handler(req)
            return Reply(content=out) if isinstance(out, str) else out
        users = [m.get("content", "") for m in req.get("messages", []) if m.get("role") == "user"]
        return Reply(content=users[-1] if users else "")

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- lifecycle -------------------------------------------------------
    def start(self) -> OpenAIServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    req = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    req = {"_raw": raw.decode("utf-8", "replace")}
                with outer._lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "json": req})
                try:
                    if self.path.rstrip("/") != "/v1/chat/completions":
                        reply = Reply(status=404, body={"error": {"message": "not found"}})
                    else:
                        try:
                            reply = outer._next_reply(req)
                        except Exception as err:  # a broken test handler is a 500, not a hang
                            reply = Reply(status=500, body={"error": {"message": repr(err)}})
                    time.sleep(outer.delay_s + reply.delay_s)
                    if reply.body is not None:
                        payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                    elif reply.status == 200:
                        payload = json.dumps(chat_body(reply.content or "", req.get("model", "test")))
                    else:
                        payload = json.dumps({"error": {"message": f"scripted status {reply.status}"}})
                    data = payload.encode("utf-8")
                finally:
                    # Leave "in flight" before the reply is sent: once the client
                    # has the reply it may start its next request at once.
                    with outer._lock:
                        outer.in_flight -= 1
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="openai-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
