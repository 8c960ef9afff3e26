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
    # vLLM's stream_options.continuous_usage_stats: usage with every chunk when asked; False makes
    # the server refuse the option with a 422 naming it, as a strict schema does
    running_usage: bool = True
    tokens_per_chunk: int = 1  # tokens bundled into one text chunk
    max_running: int | None = None  # generate at most this many at once; the rest wait in a queue
    hang: bool = False  # accept every connection and never answer
    tail_delay_s: float = 0.0  # between the last token and the end of the stream (usage, [DONE])


@dataclass
class Log:
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    succeeded: int = 0
    disconnected: int = 0  # streams the client closed before the end
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScriptedServer:
    """Start with `with ScriptedServer(Behaviour(...)) as server:`; `server.url` is its base URL."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.log = Log()
        self._release = threading.Event()  # lets hanging handlers go when the server stops
        handler = _make_handler(self.behaviour, self.log, self._release)
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
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client closing its keep-alive connection is normal; anything else still prints."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(b: Behaviour, log: Log, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    running = threading.BoundedSemaphore(b.max_running) if b.max_running else None

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
            if b.hang:
                release.wait(60)
                return
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": b.model, "object": "model"}]})
            elif self.path == "/health":
                self._json(b.health_status, {"status": "ok" if b.health_status < 400 else "unhealthy"})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if b.hang:
                release.wait(60)
                return
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with log.lock:
                log.requests.append((self.path, body))
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._json(404, {"detail": "Not Found"})
            chat = self.path == "/v1/chat/completions"
            if b.chat_only and not chat:
                return self._json(404, {"detail": "Not Found"})
            options = body.get("stream_options") or {}
            if not b.running_usage and "continuous_usage_stats" in options:
                return self._json(422, {"detail": [{"type": "extra_forbidden",
                                                    "loc": ["body", "stream_options", "continuous_usage_stats"],
                                                    "msg": "Extra inputs are not permitted"}]})
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
            if running is not None:
                running.acquire()  # queued: no token until a running request ends
            try:
                self._stream(body, chat, failing)
            except ConnectionError:  # the client closed the stream: an abort, as vLLM takes it
                with log.lock:
                    log.disconnected += 1
            finally:
                if running is not None:
                    running.release()
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
            running_usage = b.running_usage and bool(
                (body.get("stream_options") or {}).get("continuous_usage_stats"))
            made = 0
            while made < n_out:
                if failing and made >= 1:
                    self._event({"error": {"message": b.fail_message, "code": b.fail_status}})
                    self._chunk(b"")
                    return
                step = min(b.tokens_per_chunk, n_out - made)
                time.sleep(b.token_delay_s * step)
                word = "".join(f" w{made + j}" for j in range(step))
                made += step
                if chat:
                    event: dict[str, Any] = {"object": "chat.completion.chunk",
                                             "choices": [{"index": 0, "delta": {"content": word}}]}
                else:
                    event = {"object": "text_completion", "choices": [{"index": 0, "text": word}]}
                if running_usage:
                    event["usage"] = {"prompt_tokens": n_in, "completion_tokens": made,
                                      "total_tokens": n_in + made}
                self._event(event)
            time.sleep(b.tail_delay_s)
            if b.send_usage:
                self._event({"choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                      "total_tokens": n_in + n_out}})
            self._event("[DONE]")
            self._chunk(b"")  # the zero-length chunk ends the chunked body
            with log.lock:
                log.succeeded += 1

    return Handler
