"""Drive an OpenAI-compatible server (vLLM, SGLang, trtllm-serve, transformers serve) over HTTP.

The server is already running; carbontop only sends it requests and times the streamed answers.
A point is a concurrency level b run against the request stream of its PointPlan:

- in flight (the default): b workers, each sending the stream's next prompt as soon as its last
  request ended, which is how a server with continuous batching sees b concurrent users. The
  steady-state window (core/window.py) opens once b requests are in flight and each has streamed
  a token; the workers stop taking prompts when `keep_admitting` says so, and the point ends at
  the window's close: requests still streaming then are cancelled (the connection closes, which
  vLLM, SGLang and trtllm-serve take as an abort) and recorded with finished=False and the tokens
  they streamed.
- static (the paper's): batches of b sent together, the next batch only once every request of the
  last one has ended, until the window (first batch start -> latest batch end) has lasted
  min_window_s or the point's cap has passed; the last batch always runs to its end.

Timing: TTFT is the first stream chunk that carries text; end-to-end is the last such chunk. Every
text chunk is an entry of the point's StepTimeline (when its tokens arrived, how many, how many
requests were in flight). A chunk's token count is the growth of the server's running usage
figures where it sends them with every chunk (vLLM's `stream_options.continuous_usage_stats`),
else 1; a finished request whose final usage figure differs from its chunk count has its count
shared out over its chunks (a server that sends several tokens in one chunk). Output tokens are
the server's usage figures where it sends them, else the count of text-carrying chunks.

A server that accepts connections and never answers must not hold a sweep for the request
timeout: the start-up checks have their own short limits (STARTUP_CHECK_TIMEOUT_S, PROBE_TIMEOUT_S).

httpx is imported inside the methods: this module is imported only in the engine's child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from carbontop.core.records import EngineRun, PointPlan, Prompt
from carbontop.core.synthetic import filler_text, prompt_seed
from carbontop.engines.base import (
    Emit,
    EngineFailure,
    EngineOOM,
    EngineSpec,
    Phase,
    PhaseUpdate,
    check_kv_bound,
    says_oom,
)
from carbontop.engines.stream_point import OnChunk, StreamedRequest, StreamPoint
from carbontop.errors import quoted

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
# GET /v1/models and /health answer from the server's memory; a server that has not answered
# them in this long is stuck (or still loading), and the sweep says so instead of waiting
STARTUP_CHECK_TIMEOUT_S = 30.0

# Fields beyond OpenAI's schema (vLLM, SGLang and trtllm-serve accept them) that force the output
# length, plus stream_options, which some older servers refuse. Each is dropped once if the server
# rejects a request naming it, and the point's notes say so.
DROPPABLE_FIELDS = ("ignore_eos", "min_tokens", "stream_options", "max_completion_tokens")
# Inside stream_options: usage figures with every chunk (vLLM), so each chunk's token count is
# known; dropped like the fields above where a server refuses it.
CONTINUOUS_USAGE = "continuous_usage_stats"


WARMUP_OUTPUT_TOKENS = 4
PROBE_OUTPUT_TOKENS = 2
# Start-up limits, far below the request timeout: a server that accepts and never answers is
# reported in seconds. GET /v1/models and /health answer at once on a live server; the probe is
# the first generation, which some servers (transformers serve) answer only after loading the
# model, so it gets longer.
PROBE_TIMEOUT_S = 120.0


def base_url(url: str) -> str:
    """The server's root: users often paste `http://host:8000/v1`, which the paths already carry."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def _clean(text: object) -> str:
    """A server's message inside one of our sentences (errors.quoted), or "no message"."""
    return quoted(text) or "no message"


def _find_message(data: Any) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}."""
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data and data[key]:
                return _find_message(data[key])
        return json.dumps(data)
    if isinstance(data, list):
        return "; ".join(_find_message(item) for item in data)
    return str(data)


def error_message(raw: str) -> str:
    try:
        return _clean(_find_message(json.loads(raw)))
    except ValueError:
        return _clean(raw)


def _chunk_text(chunk: dict[str, Any]) -> str:
    """Generated text in one stream chunk, for /v1/completions (text) and chat (delta)."""
    parts: list[str] = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            parts.append(str(choice["text"]))
        delta = choice.get("delta") or {}
        if isinstance(delta, dict):
            # Reasoning models stream their thinking under its own key; it is generated all the same.
            for key in ("content", "reasoning_content", "reasoning"):
                if delta.get(key):
                    parts.append(str(delta[key]))
    return "".join(parts)


class OpenAIEngine:
    """An engine that is a running OpenAI-compatible server, reached at `spec.url`."""

    def __init__(self, spec: EngineSpec, emit: Emit) -> None:
        if not spec.url:
            raise EngineFailure("The openai engine needs the server's address: pass --url http://host:port.")
        self.spec = spec
        self._emit = emit
        self.url = base_url(spec.url)
        self.request_timeout_s = spec.request_timeout_s
        self.startup_timeout_s = min(STARTUP_CHECK_TIMEOUT_S, self.request_timeout_s)
        self.probe_timeout_s = min(PROBE_TIMEOUT_S, self.request_timeout_s)
        # Never read OPENAI_API_KEY: that would send a user's OpenAI key to whatever server is named.
        self._api_key: str | None = os.environ.get("CARBONTOP_API_KEY")
        self._path = COMPLETIONS_PATH
        self._dropped: set[str] = set()
        self._served_models: list[str] | None = None
        self._load_notes: list[str] = []

    # ---- the contract ----------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """Check that the server is up and serves the model; find the endpoint and fields it takes."""
        import httpx

        self._emit(PhaseUpdate(Phase.LOADING, f"checking the server at {self.url}"))
        with httpx.Client(**self._client_kwargs(1, self.startup_timeout_s)) as client:
            self._served_models = self._check_models(client)
            self._check_health(client)
        self._emit(PhaseUpdate(Phase.LOADING, "one short request to learn what the server accepts"))
        asyncio.run(self._probe())
        return {
            "url": self.url,
            "model": self.spec.model,
            "served_models": self._served_models,
            "endpoint": self._path,
            "rejected_fields": sorted(self._dropped),
            "request_timeout_s": self.request_timeout_s,
            "startup_timeout_s": self.startup_timeout_s,
        }

    def run_point(self, plan: PointPlan) -> EngineRun:
        if plan.batch_size < 1:
            raise EngineFailure(f"The batch size must be at least 1, not {plan.batch_size}.")
        if not plan.prompts:
            raise EngineFailure("There are no prompts to send to the server.")
        run, steady = asyncio.run(self._run_point(plan))
        return check_kv_bound(plan, run, steady, lambda reached: (
            f"The server kept at most {reached} of the {plan.batch_size} requests in flight generating "
            "at once (the others waited in its queue), so the window of a full batch never opened."))

    def close(self) -> None:
        """Nothing to release: every point opens and closes its own connections."""

    # ---- load-time checks ------------------------------------------------------------------

    def _client_kwargs(self, concurrency: int, timeout_s: float | None = None) -> dict[str, Any]:
        import httpx

        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return {
            "base_url": self.url,
            "headers": headers,
            # The per-request limit is enforced as a total in _timed(); this bounds each wait.
            "timeout": httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            "limits": httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2),
            # The server is on this node: a proxy from the environment would only add latency.
            "trust_env": False,
        }

    def _get(self, client: Any, path: str) -> Any:
        import httpx

        try:
            # the start-up checks have their own short limit: a server that accepts the connection
            # and never answers must not hold the sweep for a whole request timeout
            return client.get(path, timeout=self.startup_timeout_s)
        except httpx.ConnectError:
            raise EngineFailure(
                f"Nothing answers at {self.url}: start the server first, or check --url."
            ) from None
        except httpx.TimeoutException:
            raise EngineFailure(
                f"The server at {self.url} did not answer GET {path} within "
                f"{self.startup_timeout_s:g} s; is it still starting, or stuck?"
            ) from None
        except httpx.HTTPError as exc:
            raise EngineFailure(f"The server at {self.url} cannot be reached: {_clean(exc)}.") from None

    def _check_models(self, client: Any) -> list[str] | None:
        resp = self._get(client, "/v1/models")
        if resp.status_code in (401, 403):
            raise self._auth_failure(resp.status_code)
        if resp.status_code == 404:
            self._load_notes.append("the server has no /v1/models, so the model name was not checked")
            return None
        if resp.status_code >= 400:
            raise EngineFailure(
                f"The server at {self.url} answered {resp.status_code} to GET /v1/models: "
                f"{error_message(resp.text)}."
            )
        try:
            models = [str(entry["id"]) for entry in resp.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise EngineFailure(
                f"The server at {self.url} is not OpenAI-compatible: GET /v1/models returned no model list."
            ) from None
        if models and self.spec.model not in models:
            served = ", ".join(f"'{m}'" for m in models)
            raise EngineFailure(
                f"The server at {self.url} does not serve '{self.spec.model}' (it serves {served}); "
                "pass one of those as --model."
            )
        return models

    def _check_health(self, client: Any) -> None:
        """/health where the server has one (vLLM, SGLang, trtllm-serve do); absent is fine."""
        resp = self._get(client, "/health")
        if resp.status_code >= 500:
            raise EngineFailure(
                f"The server at {self.url} reports it is not healthy ({resp.status_code}): "
                f"{error_message(resp.text)}."
            )

    async def _probe(self) -> None:
        import httpx

        async with httpx.AsyncClient(**self._client_kwargs(1, self.probe_timeout_s)) as client:
            await self._timed(client, filler_text(8, "probe"), PROBE_OUTPUT_TOKENS,
                              timeout_s=self.probe_timeout_s, during="the first request (the probe)")

    # ---- one point -------------------------------------------------------------------------

    def _prompt_text(self, prompt: Prompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return filler_text(prompt.input_tokens, prompt_seed(self.spec.seed, prompt))

    async def _run_point(self, plan: PointPlan) -> tuple[EngineRun, bool]:
        """The point's EngineRun, and whether its steady-state window opened."""
        import httpx

        texts: dict[str, str] = {}

        def text_of(prompt: Prompt) -> str:
            if prompt.prompt_id not in texts:
                texts[prompt.prompt_id] = self._prompt_text(prompt)
            return texts[prompt.prompt_id]

        async with httpx.AsyncClient(**self._client_kwargs(plan.batch_size)) as client:
            self._emit(PhaseUpdate(Phase.WARMUP, "one short request before the window"))
            await self._timed(client, filler_text(16, f"{self.spec.seed}:warmup"), WARMUP_OUTPUT_TOKENS)

            async def send(request: StreamedRequest, on_chunk: OnChunk) -> None:
                # cancelled at the window's close: leaving the stream closes the connection, which
                # vLLM, SGLang and trtllm-serve take as an abort
                assert request.prompt is not None
                await self._timed(client, text_of(request.prompt), request.prompt.output_tokens,
                                  request, on_chunk)

            point = StreamPoint(plan, self._emit, send)
            await point.run()
        if not point.started:
            raise EngineFailure(f"The server at {self.url} streamed no token during the point.")
        return point.result(self._notes(point.started))

    def _notes(self, replies: list[StreamedRequest]) -> list[str]:
        notes = list(self._load_notes)
        notes.append(f"requests streamed from {self.url}{self._path}")
        if self._path == CHAT_PATH:
            notes.append(
                "the server has no /v1/completions, so prompts went through its chat template "
                "(input counts include the template's tokens)"
            )
        forcing = self._dropped & {"ignore_eos", "min_tokens"}
        if forcing:
            notes.append(
                f"the server rejected {', '.join(sorted(forcing))}, so an answer may end early at "
                "end-of-sequence instead of at its reference length"
            )
        finished = [r for r in replies if r.finished]
        with_usage = sum(r.reported_output_tokens is not None for r in finished)
        if finished and with_usage == len(finished):
            notes.append("output tokens are the server's usage figures")
        elif finished and with_usage == 0:
            notes.append(
                "output tokens were counted from stream chunks (the server sent no usage figures); "
                "a chunk carrying several tokens counts once"
            )
        elif finished:
            notes.append(
                f"output tokens are the server's usage figures for {with_usage} of {len(finished)} "
                "requests and a count of stream chunks for the others"
            )
        if any(r.exact_chunks for r in replies):
            notes.append("each stream chunk's tokens come from the server's running usage figures")
        else:
            notes.append(
                "the server sent no running usage figures, so each stream chunk counts as one token "
                "in the step timeline (finished answers are corrected to their final usage figure)"
            )
        if any(not r.streamed for r in replies):
            notes.append("the server answered without streaming, so TTFT equals end-to-end time")
        prompts = [r.prompt for r in replies if r.prompt is not None]
        synthetic = sum(p.text is None for p in prompts)
        if synthetic:
            notes.append(
                f"{synthetic} prompts had no text, so each was sent as a filler of common words, one per "
                "input token; input lengths are approximate (the server's own counts are recorded where "
                "it reports them)"
            )
        short = sum(r.output_tokens() < r.prompt.output_tokens for r in finished if r.prompt is not None)
        if short:
            notes.append(f"{short} of {len(finished)} answers were shorter than their reference length")
        return notes

    # ---- one request -----------------------------------------------------------------------

    def _body(self, text: str, max_tokens: int) -> dict[str, Any]:
        stream_options: dict[str, Any] = {"include_usage": True}
        if CONTINUOUS_USAGE not in self._dropped:
            stream_options[CONTINUOUS_USAGE] = True
        body: dict[str, Any] = {
            "model": self.spec.model,
            "stream": True,
            "stream_options": stream_options,
            "temperature": 0,
            "ignore_eos": True,
            "min_tokens": max_tokens,
            "max_tokens": max_tokens,
        }
        if self._path == COMPLETIONS_PATH:
            body["prompt"] = text
        else:
            body["messages"] = [{"role": "user", "content": text}]
            body["max_completion_tokens"] = max_tokens
        for name in self._dropped:
            body.pop(name, None)
        return body

    async def _timed(
        self,
        client: Any,
        text: str,
        max_tokens: int,
        reply: StreamedRequest | None = None,
        on_chunk: OnChunk | None = None,
        *,
        timeout_s: float | None = None,
        during: str = "a request",
    ) -> StreamedRequest:
        """One request with its total time bounded (request_timeout_s unless given)."""
        limit_s = self.request_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(self._request(client, text, max_tokens, reply, on_chunk), limit_s)
        except asyncio.TimeoutError:
            if timeout_s is not None:
                raise EngineFailure(
                    f"The server at {self.url} gave no complete answer to {during} within {limit_s:g} s; "
                    "is it still loading the model, or stuck?"
                ) from None
            raise EngineFailure(
                f"A request to {self.url} got no complete answer within {limit_s:g} s "
                "(raise request_timeout_s if the server is only slow)."
            ) from None

    async def _request(
        self, client: Any, text: str, max_tokens: int, reply: StreamedRequest | None, on_chunk: OnChunk | None
    ) -> StreamedRequest:
        import httpx

        # Each pass may switch the endpoint or drop one rejected field, so a few passes suffice.
        for _ in range(len(DROPPABLE_FIELDS) + 3):
            path = self._path
            body = self._body(text, max_tokens)
            start = time.perf_counter()
            if reply is None:
                current = StreamedRequest(start_perf=start)
            else:
                current = reply  # a retry after a refusal starts the clock again
                current.start_perf = start
            try:
                async with client.stream("POST", path, json=body) as resp:
                    if resp.status_code >= 400:
                        raw = (await resp.aread()).decode("utf-8", "replace")
                        if self._adapt(resp.status_code, raw, body, path):
                            continue
                        raise self._http_failure(resp.status_code, error_message(raw), path)
                    if "text/event-stream" not in resp.headers.get("content-type", ""):
                        await self._read_whole(resp, current, on_chunk)
                    else:
                        await self._read_stream(resp, current, on_chunk)
                    current.finished = True
                    return current
            except httpx.ConnectError:
                raise EngineFailure(
                    f"Nothing answers at {self.url} any more: the server may have stopped."
                ) from None
            except httpx.TimeoutException:
                raise EngineFailure(
                    f"The server at {self.url} went silent for {self.request_timeout_s:g} s in the middle "
                    "of an answer."
                ) from None
            except httpx.HTTPError as exc:
                raise EngineFailure(
                    f"The connection to {self.url} broke in the middle of an answer: {_clean(exc)}."
                ) from None
        raise EngineFailure(f"The server at {self.url} kept rejecting requests however they were worded.")

    def _adapt(self, status: int, raw: str, body: dict[str, Any], path: str) -> bool:
        """Learn from a rejection that a retry can fix; True means: send the request again."""
        if status == 404 and path == COMPLETIONS_PATH:
            self._path = CHAT_PATH
            return True
        if status in (400, 422):
            if CONTINUOUS_USAGE in raw and CONTINUOUS_USAGE not in self._dropped:
                self._dropped.add(CONTINUOUS_USAGE)  # before stream_options, which the message names too
                return True
            named = {f for f in DROPPABLE_FIELDS if f in body and f in raw and f not in self._dropped}
            if named:
                self._dropped |= named
                return True
        return False

    def _auth_failure(self, status: int) -> EngineFailure:
        return EngineFailure(
            f"The server at {self.url} refused the request ({status}): put its API key in the "
            "CARBONTOP_API_KEY environment variable."
        )

    def _http_failure(self, status: int, message: str, path: str) -> Exception:
        if says_oom(message):
            # The memory was the server's; this process holds none and can go on to the next point.
            return EngineOOM(f"The server ran out of memory: {message}.", recovered=True)
        if status in (401, 403):
            return self._auth_failure(status)
        return EngineFailure(f"The server at {self.url} answered {status} to {path}: {message}.")

    def _stream_failure(self, chunk: dict[str, Any], path: str) -> Exception:
        error = chunk.get("error", chunk)
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and code >= 400 else 500
        return self._http_failure(status, _clean(_find_message(error)), path)

    async def _read_stream(self, resp: Any, reply: StreamedRequest, on_chunk: OnChunk | None) -> None:
        running = 0  # completion tokens so far by the server's running usage figures
        async for line in resp.aiter_lines():
            line = line.strip()
            if not line.startswith("data:"):
                continue  # SSE comments, event names, blank separators
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise EngineFailure(
                    f"The server at {self.url} sent a stream line that is not JSON: {_clean(data)[:80]}."
                ) from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error") or chunk.get("object") == "error":
                raise self._stream_failure(chunk, self._path)
            now = time.perf_counter()
            usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else None
            completion = _int_or_none(usage.get("completion_tokens")) if usage else None
            if _chunk_text(chunk):
                if completion is not None:
                    reply.exact_chunks = True
                    tokens = max(0, completion - running)
                else:
                    tokens = 1
                reply.add_chunk(now, tokens)
                if on_chunk is not None:
                    on_chunk(reply, now, tokens)
            if completion is not None:
                running = max(running, completion)
            if usage:
                reply.reported_input_tokens = _int_or_none(usage.get("prompt_tokens"))
                reply.reported_output_tokens = completion
        reply.end_perf = time.perf_counter()

    async def _read_whole(self, resp: Any, reply: StreamedRequest, on_chunk: OnChunk | None) -> None:
        """A server that ignored stream=true and sent one JSON answer."""
        raw = (await resp.aread()).decode("utf-8", "replace")
        end = time.perf_counter()
        try:
            data = json.loads(raw)
        except ValueError:
            raise EngineFailure(f"The server at {self.url} answered with something that is not JSON.") from None
        if not isinstance(data, dict):
            raise EngineFailure(f"The server at {self.url} answered with something that is not a completion.")
        if data.get("error") or data.get("object") == "error":
            raise self._stream_failure(data, self._path)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        text = "".join(
            str(c.get("text") or (c.get("message") or {}).get("content") or "")
            for c in data.get("choices") or ()
            if isinstance(c, dict)
        )
        reply.streamed = False
        reply.reported_input_tokens = _int_or_none(usage.get("prompt_tokens"))
        reply.reported_output_tokens = _int_or_none(usage.get("completion_tokens"))
        if text:
            tokens = reply.reported_output_tokens or 1
            reply.add_chunk(end, tokens)
            if on_chunk is not None:
                on_chunk(reply, end, tokens)
        reply.end_perf = end


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
