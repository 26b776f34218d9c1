"""A real local OpenAI-compatible chat endpoint for tests (stdlib only).

``openai_stub(reply)`` serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) in a daemon thread and
yields a :class:`StubEndpoint` whose ``base_url`` (``"http://127.0.0.1:PORT/v1"``) is what the ``openai``
client takes. ``reply(messages, body)`` scripts the behaviour: it returns the assistant's text, a
``(status_code, error_json)`` pair to answer with an HTTP error, or an :class:`Answer` for anything else (a
body that is not JSON, extra headers such as ``Retry-After``, a delay before answering). Every request (body,
and headers with lower-case names) is recorded in ``requests``. The server is bounded: after ``max_requests`` it
answers 503 to everything, and it shuts itself down after ``lifetime_s`` seconds even if the ``with`` block never
exits.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ReplyFn = Callable[[list[dict[str, Any]], dict[str, Any]], "str | tuple[int, dict[str, Any]] | Answer"]


@dataclass
class StubEndpoint:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.base_url

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]


@dataclass(frozen=True)
class Answer:
    """A scripted HTTP answer: a completion of ``text`` when it is given, else ``status`` with ``body`` (a dict is
    sent as JSON, a string as it is, under ``content_type``); ``headers`` are added; the answer is sent after
    ``delay_s`` seconds (a client that gave up by then is ignored)."""

    text: str | None = None
    status: int = 200
    body: dict[str, Any] | str = ""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay_s: float = 0.0


def _completion(body: dict[str, Any], text: str, n: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-stub-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "stub"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _handler(endpoint: StubEndpoint, reply: ReplyFn, lock: threading.Lock, max_requests: int) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: dict[str, Any] | str, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                return
            with lock:
                n = len(endpoint.requests)
                headers = {k.lower(): v for k, v in self.headers.items()}
                endpoint.requests.append({"body": body, "headers": headers, "path": self.path})
            if n >= max_requests:
                self._send(503, {"error": {"message": "stub request budget spent", "type": "server_error"}})
                return
            try:
                out = reply(body.get("messages", []), body)
            except Exception as exc:  # a broken script is a server error, visible to the test
                self._send(500, {"error": {"message": f"stub reply raised {exc!r}", "type": "server_error"}})
                return
            if isinstance(out, Answer):
                time.sleep(out.delay_s)
                if out.text is not None:
                    self._send(200, _completion(body, out.text, n), headers=out.headers)
                else:
                    self._send(out.status, out.body, out.content_type, out.headers)
            elif isinstance(out, tuple):
                status, payload = out
                self._send(status, payload)
            else:
                self._send(200, _completion(body, out, n))

    return Handler


@contextmanager
def openai_stub(reply: ReplyFn, max_requests: int = 500, lifetime_s: float = 60.0) -> Iterator[StubEndpoint]:
    """Serve the scripted chat endpoint for the duration of the ``with`` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    endpoint = StubEndpoint(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    server.RequestHandlerClass = _handler(endpoint, reply, threading.Lock(), max_requests)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(lifetime_s, server.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield endpoint
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
