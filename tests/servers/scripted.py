"""A small but real OpenAI-style HTTP server whose misbehaviour the tests choose.

`transformers serve` is the real server the tests run a full point against; it cannot be told to
answer 500, to lack /v1/completions or to run out of memory. This one can: it speaks HTTP/1.1 with
chunked server-sent events over a real socket on 127.0.0.1, so the engine's client code runs
exactly as it would against vLLM, and each test picks a behaviour.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    model: str = "scripted-model"
    chat_only: bool = False  # /v1/completions answers 404
    reject_fields: tuple[str, ...] = ()  # 400 "Unrecognized request argument supplied: <field>"
    send_usage: bool = True
    token_delay_s: float = 0.0
    fail_status: int | None = None  # answer generation requests with this status ...
    fail_after: int = 0  # ... once this many generation requests have succeeded
    fail_message: str = "Internal Server Error"
    fail_in_stream: bool = False  # send the failure as an error chunk in a 200 stream instead
    health_status: int = 200


@dataclass
class Log:
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    succeeded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScriptedServer:
    """Start with `with ScriptedServer(Behaviour(...)) as server:`; `server.url` is its base URL."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.log = Log()
        handler = _make_handler(self.behaviour, self.log)
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client closing its keep-alive connection is normal; anything else still prints."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(b: Behaviour, log: Log) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, as uvicorn does

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        # ---- plumbing --------------------------------------------------------------------

        def _json(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _event(self, payload: Any) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            self._chunk(f"data: {text}\n\n".encode())

        # ---- routes ----------------------------------------------------------------------

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": b.model, "object": "model"}]})
            elif self.path == "/health":
                self._json(b.health_status, {"status": "ok" if b.health_status < 400 else "unhealthy"})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with log.lock:
                log.requests.append((self.path, body))
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._json(404, {"detail": "Not Found"})
            chat = self.path == "/v1/chat/completions"
            if b.chat_only and not chat:
                return self._json(404, {"detail": "Not Found"})
            for name in b.reject_fields:
                if name in body:
                    return self._json(
                        400,
                        {"error": {"message": f"Unrecognized request argument supplied: {name}",
                                   "type": "invalid_request_error", "code": 400}},
                    )
            if body.get("model") != b.model:
                return self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                  "code": 404}})
            failing = b.fail_status is not None and log.succeeded >= b.fail_after
            if failing and not b.fail_in_stream:
                return self._json(b.fail_status, {"error": {"message": b.fail_message, "code": b.fail_status}})
            with log.lock:
                log.in_flight += 1
                log.max_in_flight = max(log.max_in_flight, log.in_flight)
            try:
                self._stream(body, chat, failing)
            finally:
                with log.lock:
                    log.in_flight -= 1

        def _stream(self, body: dict[str, Any], chat: bool, failing: bool) -> None:
            n_out = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
            prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
            n_in = len(str(prompt).split())
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if chat:  # vLLM opens a chat stream with a role-only chunk that carries no text
                self._event({"object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for k in range(n_out):
                if failing and k == 1:
                    self._event({"error": {"message": b.fail_message, "code": b.fail_status}})
                    self._chunk(b"")
                    return
                time.sleep(b.token_delay_s)
                word = f" w{k}"
                if chat:
                    self._event({"object": "chat.completion.chunk",
                                 "choices": [{"index": 0, "delta": {"content": word}}]})
                else:
                    self._event({"object": "text_completion", "choices": [{"index": 0, "text": word}]})
            if b.send_usage:
                self._event({"choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                      "total_tokens": n_in + n_out}})
            self._event("[DONE]")
            self._chunk(b"")  # the zero-length chunk ends the chunked body
            with log.lock:
                log.succeeded += 1

    return Handler
