"""Drive an OpenAI-compatible server (vLLM, SGLang, trtllm-serve, transformers serve) over HTTP.

The server is already running; carbontop only sends it requests and times the streamed answers.
Batch size here is the number of requests kept in flight at once: a pool of `batch_size` workers
pulls prompts from a shared list, each sending its next request as soon as its last one finished,
which is how a server with continuous batching sees `batch_size` concurrent users.

Timing: TTFT is the first stream chunk that carries text; end-to-end is the last such chunk; the
point's window runs from the first request sent to the last stream closed. Output tokens come from
the server's usage figures (`stream_options.include_usage`) where it sends them, else from a count
of text-carrying chunks.

httpx is imported inside the methods: this module is imported only in the engine's child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carbontop.core.records import EngineRun, Prompt, RequestRecord
from carbontop.engines.base import (
    Emit,
    EngineFailure,
    EngineOOM,
    EngineSpec,
    Phase,
    PhaseUpdate,
    Progress,
    says_oom,
)

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
# GET /v1/models and /health answer from the server's memory; a server that has not answered
# them in this long is stuck (or still loading), and the sweep says so instead of waiting
STARTUP_CHECK_TIMEOUT_S = 30.0

# Fields beyond OpenAI's schema (vLLM, SGLang and trtllm-serve accept them) that force the output
# length, plus stream_options, which some older servers refuse. Each is dropped once if the server
# rejects a request naming it, and the point's notes say so.
DROPPABLE_FIELDS = ("ignore_eos", "min_tokens", "stream_options", "max_completion_tokens")


# Common English words that are a single token (with their leading space) in the GPT-2 and Llama
# BPE vocabularies, so a filler of N of them is close to N tokens for most tokenizers.
FILLER_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first water "
    "been call who its now find long down day did get come made may part over new sound take only "
    "little work know place year live me back give most very after thing our just name good man "
    "think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must "
    "big even such because turn here why ask went men read need land different home us move try"
).split()

WARMUP_OUTPUT_TOKENS = 4
PROBE_OUTPUT_TOKENS = 2
_MESSAGE_MAX_CHARS = 300


def filler_text(n_tokens: int, seed: str) -> str:
    """A deterministic text of `n_tokens` common words, different for every seed.

    Each prompt gets its own word sequence so that a server's prefix cache cannot turn identical
    prompts into free prefills.
    """
    rng = random.Random(seed)
    return " ".join(rng.choice(FILLER_WORDS) for _ in range(max(1, n_tokens)))


def base_url(url: str) -> str:
    """The server's root: users often paste `http://host:8000/v1`, which the paths already carry."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def _clean(text: str) -> str:
    """One line, no trailing full stop, short enough to sit inside a sentence."""
    line = " ".join(str(text).split()).rstrip(".")
    if len(line) > _MESSAGE_MAX_CHARS:
        line = line[: _MESSAGE_MAX_CHARS - 1] + "…"
    return line or "no message"


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


@dataclass
class _Reply:
    """One streamed answer, timed with perf_counter."""

    start_perf: float
    first_text_perf: float | None
    last_text_perf: float | None
    end_perf: float
    text_chunks: int
    usage_prompt_tokens: int | None
    usage_completion_tokens: int | None
    streamed: bool = True


class OpenAIEngine:
    """An engine that is a running OpenAI-compatible server, reached at `spec.url`."""

    def __init__(self, spec: EngineSpec, emit: Emit) -> None:
        if not spec.url:
            raise EngineFailure("The openai engine needs the server's address: pass --url http://host:port.")
        self.spec = spec
        self._emit = emit
        self.url = base_url(spec.url)
        self.request_timeout_s = spec.request_timeout_s
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
        with httpx.Client(**self._client_kwargs(1)) as client:
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
        }

    def run_point(self, batch_size: int, prompts: Sequence[Prompt]) -> EngineRun:
        if batch_size < 1:
            raise EngineFailure(f"The batch size must be at least 1, not {batch_size}.")
        if not prompts:
            raise EngineFailure("There are no prompts to send to the server.")
        texts = [self._prompt_text(p) for p in prompts]
        return asyncio.run(self._run_point(batch_size, list(prompts), texts))

    def close(self) -> None:
        """Nothing to release: every point opens and closes its own connections."""

    # ---- load-time checks ------------------------------------------------------------------

    def _client_kwargs(self, concurrency: int) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return {
            "base_url": self.url,
            "headers": headers,
            # The per-request limit is enforced as a total in _timed(); this bounds each wait.
            "timeout": httpx.Timeout(self.request_timeout_s, connect=min(10.0, self.request_timeout_s)),
            "limits": httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2),
            # The server is on this node: a proxy from the environment would only add latency.
            "trust_env": False,
        }

    def _get(self, client: Any, path: str) -> Any:
        import httpx

        try:
            # the start-up checks have their own short limit: a server that accepts the connection
            # and never answers must not hold the sweep for a whole request timeout
            return client.get(path, timeout=min(STARTUP_CHECK_TIMEOUT_S, self.request_timeout_s))
        except httpx.ConnectError:
            raise EngineFailure(
                f"Nothing answers at {self.url}: start the server first, or check --url."
            ) from None
        except httpx.TimeoutException:
            raise EngineFailure(
                f"The server at {self.url} did not answer GET {path} within "
                f"{min(STARTUP_CHECK_TIMEOUT_S, self.request_timeout_s):g} s; is it still starting, or stuck?"
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

        async with httpx.AsyncClient(**self._client_kwargs(1)) as client:
            await self._timed(client, filler_text(8, "probe"), PROBE_OUTPUT_TOKENS)

    # ---- one point -------------------------------------------------------------------------

    def _prompt_text(self, prompt: Prompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return filler_text(prompt.input_tokens, f"{self.spec.seed}:{prompt.prompt_id}")

    async def _run_point(self, batch_size: int, prompts: list[Prompt], texts: list[str]) -> EngineRun:
        import httpx

        n = len(prompts)
        async with httpx.AsyncClient(**self._client_kwargs(batch_size)) as client:
            self._emit(PhaseUpdate(Phase.WARMUP, "one short request before the window"))
            await self._timed(client, filler_text(16, f"{self.spec.seed}:warmup"), WARMUP_OUTPUT_TOKENS)

            self._emit(PhaseUpdate(Phase.MEASURING, f"{n} requests, {batch_size} in flight"))
            replies: list[_Reply | None] = [None] * n
            order = iter(range(n))
            in_flight = max_in_flight = done = 0
            progress_step = max(1, n // 10)
            # One clock pair so that request start times in Unix seconds share perf_counter's precision.
            unix0, perf0 = time.time(), time.perf_counter()

            async def worker() -> None:
                nonlocal in_flight, max_in_flight, done
                for i in order:  # a shared iterator: each index goes to exactly one worker
                    in_flight += 1
                    max_in_flight = max(max_in_flight, in_flight)
                    try:
                        replies[i] = await self._timed(client, texts[i], prompts[i].output_tokens)
                    finally:
                        in_flight -= 1
                    done += 1
                    if done % progress_step == 0 or done == n:
                        self._emit(Progress(done=done, total=n))

            await _run_until_first_failure([worker() for _ in range(min(batch_size, n))])

        finished = [r for r in replies if r is not None]
        return self._engine_run(batch_size, prompts, finished, max_in_flight, unix0, perf0)

    def _engine_run(
        self,
        batch_size: int,
        prompts: list[Prompt],
        replies: list[_Reply],
        max_in_flight: int,
        unix0: float,
        perf0: float,
    ) -> EngineRun:
        def unix(perf: float) -> float:
            return unix0 + (perf - perf0)

        records = []
        for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
            first = reply.first_text_perf if reply.first_text_perf is not None else reply.end_perf
            last = reply.last_text_perf if reply.last_text_perf is not None else reply.end_perf
            out_tokens = (
                reply.usage_completion_tokens if reply.usage_completion_tokens is not None else reply.text_chunks
            )
            records.append(
                RequestRecord(
                    batch_size=batch_size,
                    request_index=i,
                    batch_index=-1,  # the server batches continuously
                    input_tokens=reply.usage_prompt_tokens or prompt.input_tokens,
                    output_tokens=out_tokens,
                    start_s=unix(reply.start_perf),
                    ttft_s=first - reply.start_perf,
                    e2e_s=last - reply.start_perf,
                )
            )
        return EngineRun(
            batch_size=batch_size,
            window_start_s=unix(min(r.start_perf for r in replies)),
            window_end_s=unix(max(r.end_perf for r in replies)),
            records=tuple(records),
            concurrency_reached=max_in_flight,
            notes=tuple(self._notes(prompts, replies, records)),
        )

    def _notes(self, prompts: list[Prompt], replies: list[_Reply], records: list[RequestRecord]) -> list[str]:
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
        with_usage = sum(r.usage_completion_tokens is not None for r in replies)
        if with_usage == len(replies):
            notes.append("output tokens are the server's usage figures")
        elif with_usage == 0:
            notes.append(
                "output tokens were counted from stream chunks (the server sent no usage figures); "
                "a chunk carrying several tokens counts once"
            )
        else:
            notes.append(
                f"output tokens are the server's usage figures for {with_usage} of {len(replies)} "
                "requests and a count of stream chunks for the others"
            )
        if any(not r.streamed for r in replies):
            notes.append("the server answered without streaming, so TTFT equals end-to-end time")
        synthetic = sum(p.text is None for p in prompts)
        if synthetic:
            notes.append(
                f"{synthetic} prompts had no text, so each was sent as a filler of common words, one per "
                "input token; input lengths are approximate (the server's own counts are recorded where "
                "it reports them)"
            )
        short = sum(rec.output_tokens < p.output_tokens for rec, p in zip(records, prompts, strict=True))
        if short:
            notes.append(f"{short} of {len(records)} answers were shorter than their reference length")
        return notes

    # ---- one request -----------------------------------------------------------------------

    def _body(self, text: str, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "stream": True,
            "stream_options": {"include_usage": True},
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

    async def _timed(self, client: Any, text: str, max_tokens: int) -> _Reply:
        """One request with its total time bounded by request_timeout_s."""
        try:
            return await asyncio.wait_for(self._request(client, text, max_tokens), self.request_timeout_s)
        except asyncio.TimeoutError:
            raise EngineFailure(
                f"A request to {self.url} got no complete answer within {self.request_timeout_s:g} s "
                "(raise request_timeout_s if the server is only slow)."
            ) from None

    async def _request(self, client: Any, text: str, max_tokens: int) -> _Reply:
        import httpx

        # Each pass may switch the endpoint or drop one rejected field, so a few passes suffice.
        for _ in range(len(DROPPABLE_FIELDS) + 2):
            path = self._path
            body = self._body(text, max_tokens)
            start = time.perf_counter()
            try:
                async with client.stream("POST", path, json=body) as resp:
                    if resp.status_code >= 400:
                        raw = (await resp.aread()).decode("utf-8", "replace")
                        if self._adapt(resp.status_code, raw, body, path):
                            continue
                        raise self._http_failure(resp.status_code, error_message(raw), path)
                    if "text/event-stream" not in resp.headers.get("content-type", ""):
                        return await self._read_whole(resp, start)
                    return await self._read_stream(resp, start)
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

    async def _read_stream(self, resp: Any, start: float) -> _Reply:
        first = last = None
        chunks = 0
        usage: dict[str, Any] = {}
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
            if _chunk_text(chunk):
                chunks += 1
                first = now if first is None else first
                last = now
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
        return _Reply(
            start_perf=start,
            first_text_perf=first,
            last_text_perf=last,
            end_perf=time.perf_counter(),
            text_chunks=chunks,
            usage_prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            usage_completion_tokens=_int_or_none(usage.get("completion_tokens")),
        )

    async def _read_whole(self, resp: Any, start: float) -> _Reply:
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
        return _Reply(
            start_perf=start,
            first_text_perf=end,
            last_text_perf=end,
            end_perf=end,
            text_chunks=1 if text else 0,
            usage_prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            usage_completion_tokens=_int_or_none(usage.get("completion_tokens")),
            streamed=False,
        )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _run_until_first_failure(coroutines: list[Any]) -> None:
    """Run the workers; at the first failure cancel the rest and raise it (an OOM before others)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if errors:
        raise next((e for e in errors if isinstance(e, EngineOOM)), errors[0])
