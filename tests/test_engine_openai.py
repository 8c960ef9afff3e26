"""The openai engine against real HTTP servers on 127.0.0.1.

A full point runs against `transformers serve` on a tiny random Llama the tests build offline; the
failure modes (500, no /v1/completions, out of memory, rejected fields, timeouts) run against the
scripted server in tests/servers/scripted.py, which speaks the same protocol over a real socket.
"""

from __future__ import annotations

import importlib.util
import socket
import time
from typing import Any

import pytest

from carbontop.core.records import Batching, EngineRun, PointPlan, Prompt
from carbontop.core.synthetic import filler_text
from carbontop.core.window import steady_window, tokens_between
from carbontop.engines.base import (
    EngineFailure,
    EngineKVBound,
    EngineNote,
    EngineOOM,
    EngineSpec,
    PhaseUpdate,
    Progress,
)
from carbontop.engines.openai import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    OpenAIEngine,
    base_url,
)

try:
    from servers.scripted import Behaviour, ScriptedServer
    from servers.transformers_server import start_transformers_server
except ImportError:  # tests/ is a package in this checkout
    from tests.servers.scripted import Behaviour, ScriptedServer
    from tests.servers.transformers_server import start_transformers_server


class Events:
    def __init__(self) -> None:
        self.items: list[EngineNote] = []

    def __call__(self, note: EngineNote) -> None:
        self.items.append(note)

    def phases(self) -> list[str]:
        return [n.phase for n in self.items if isinstance(n, PhaseUpdate)]

    def progress(self) -> list[Progress]:
        return [n for n in self.items if isinstance(n, Progress)]


def make_spec(url: str, model: str, **changes: Any) -> EngineSpec:
    return EngineSpec(
        engine="openai", model=model, model_config=None, model_path=None, weights="auto",
        dtype="fp32", device="cpu", url=url, seed=7, **changes,
    )


def synthetic(n: int, input_tokens: int = 12, output_tokens: int = 6) -> list[Prompt]:
    return [Prompt(prompt_id=f"p{i}", input_tokens=input_tokens, output_tokens=output_tokens) for i in range(n)]


def plan(batch_size: int, prompts: list[Prompt], *, min_window_s: float = 0.0, max_point_s: float = 30.0,
         batching: Batching = Batching.INFLIGHT) -> PointPlan:
    return PointPlan(batch_size=batch_size, batching=batching, prompts=tuple(prompts),
                     min_window_s=min_window_s, max_point_s=max_point_s)


def check_run(run: EngineRun) -> None:
    """What every run must hold: the window is the records' own, the timeline adds up."""
    window = steady_window(run.records, run.batch_size, run.batching)
    assert window is not None
    assert (run.window_start_s, run.window_end_s) == (window.start_s, window.end_s)
    assert run.timeline is not None and run.timeline.slots == run.batch_size
    assert sum(run.timeline.tokens) == sum(r.output_tokens for r in run.records)
    assert list(run.timeline.end_s) == sorted(run.timeline.end_s)
    assert all(1 <= live <= run.batch_size for live in run.timeline.live)
    assert [r.request_index for r in run.records] == sorted(r.request_index for r in run.records)
    for rec in run.records:
        assert 0 < rec.ttft_s <= rec.e2e_s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the real server: transformers serve ------------------------------------------------------

_SERVE_DEPS = ("torch", "transformers", "tokenizers", "fastapi", "uvicorn", "openai")


@pytest.fixture(scope="module")
def tf_server(tmp_path_factory: pytest.TempPathFactory):
    missing = [m for m in _SERVE_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)} (pip install 'transformers[serving]')")
    with start_transformers_server(tmp_path_factory.mktemp("tiny-llama") / "model") as (url, model):
        yield url, model


@pytest.mark.parametrize("batch_size", [1, 3])
def test_in_flight_point_against_transformers_serve(tf_server: tuple[str, str], batch_size: int) -> None:
    url, model = tf_server
    events = Events()
    engine = OpenAIEngine(make_spec(url, model), events)
    facts = engine.load()
    assert facts["served_models"] == [model]
    # transformers serve refuses fields outside OpenAI's schema with a 422 naming them
    assert {"ignore_eos", "min_tokens"} <= set(facts["rejected_fields"])
    assert facts["endpoint"] == COMPLETIONS_PATH

    prompts = [Prompt(f"p{i}", 12, n) for i, n in enumerate([8, 3])]
    run = engine.run_point(plan(batch_size, prompts, min_window_s=0.5))

    check_run(run)
    assert run.batching is Batching.INFLIGHT and run.batch_size == batch_size
    assert run.concurrency_reached == batch_size
    assert run.window_end_s - run.window_start_s >= 0.5  # admission went on until it had lasted that long
    finished = [r for r in run.records if r.finished]
    assert len(finished) >= batch_size and len(run.records) - len(finished) <= batch_size - 1
    for rec in run.records:
        assert rec.batch_index == -1 and rec.batch_size == batch_size
        # every filler word is one token of this tokenizer, and the model has no end-of-sequence
        assert rec.input_tokens == 12
        expected = prompts[rec.request_index % 2].output_tokens
        assert rec.output_tokens == expected if rec.finished else 0 < rec.output_tokens <= expected
    assert len(run.records) > len(prompts)  # the stream wrapped around the two prompts
    # a slot is refilled as soon as its request ends: never more than b at once, and with b = 1
    # each request starts after the last one ended
    starts = sorted(r.start_s for r in run.records)
    if batch_size == 1:
        recs = sorted(run.records, key=lambda r: r.start_s)
        for x, y in zip(recs, recs[1:], strict=False):
            assert y.start_s >= x.start_s + x.e2e_s
    assert starts[0] <= run.window_start_s
    assert "output tokens are the server's usage figures" in run.notes
    assert any("filler" in n and "approximate" in n for n in run.notes)
    assert any("rejected ignore_eos, min_tokens" in n for n in run.notes)
    phases = events.phases()
    assert phases[-2:] == ["warmup", "measuring"]
    last = events.progress()[-1]
    assert last.done == len(finished) and last.window_target_s == 0.5
    assert last.tokens >= sum(r.output_tokens for r in run.records) - batch_size  # live count


def test_static_batches_against_transformers_serve(tf_server: tuple[str, str]) -> None:
    url, model = tf_server
    engine = OpenAIEngine(make_spec(url, model), Events())
    engine.load()
    prompts = [Prompt(f"p{i}", 10, n) for i, n in enumerate([6, 2, 4])]
    run = engine.run_point(plan(2, prompts, min_window_s=0.3, batching=Batching.STATIC))

    check_run(run)
    assert run.batching is Batching.STATIC and all(r.finished for r in run.records)
    batches: dict[int, list] = {}
    for rec in run.records:
        batches.setdefault(rec.batch_index, []).append(rec)
    assert sorted(batches) == list(range(len(batches))) and len(batches) >= 2
    assert all(len(recs) == 2 for recs in batches.values())  # the stream wraps: every batch is full
    for k in range(1, len(batches)):  # the next batch only once the whole last one has ended
        assert min(r.start_s for r in batches[k]) >= max(r.start_s + r.e2e_s for r in batches[k - 1])
    # the window: first batch start to the end of the last batch, which ran to its end
    assert run.window_start_s == min(r.start_s for r in run.records)
    assert run.window_end_s == max(r.start_s + r.e2e_s for r in run.records)
    # admission stopped at the first batch boundary after 0.3 s: the batch before the last ended
    # inside 0.3 s (so the last was admitted; its requests are sent a moment after that end, so
    # their start may fall past 0.3 s), and the last ended past it (so none followed)
    def ended_s(k: int) -> float:
        return max(r.start_s + r.e2e_s for r in batches[k]) - run.window_start_s

    last = len(batches) - 1
    assert ended_s(last - 1) < 0.3 <= ended_s(last)


def test_model_not_served_by_transformers_serve(tf_server: tuple[str, str]) -> None:
    url, model = tf_server
    with pytest.raises(EngineFailure) as err:
        OpenAIEngine(make_spec(url, "meta-llama/Llama-2-7b-hf"), Events()).load()
    assert str(err.value) == (
        f"The server at {url} does not serve 'meta-llama/Llama-2-7b-hf' (it serves '{model}'); "
        "pass one of those as --model."
    )


# ---- failures, against the scripted server ----------------------------------------------------


def test_server_down_is_one_clear_sentence() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineFailure) as err:
        OpenAIEngine(make_spec(url, "m"), Events()).load()
    assert str(err.value) == f"Nothing answers at {url}: start the server first, or check --url."


def test_model_not_served() -> None:
    with ScriptedServer(Behaviour(model="served-a")) as server:
        with pytest.raises(EngineFailure, match=r"does not serve 'other' \(it serves 'served-a'\)"):
            OpenAIEngine(make_spec(server.url, "other"), Events()).load()


def test_unhealthy_server() -> None:
    with ScriptedServer(Behaviour(health_status=503)) as server:
        with pytest.raises(EngineFailure, match=r"reports it is not healthy \(503\)"):
            OpenAIEngine(make_spec(server.url, "scripted-model"), Events()).load()


def test_server_answering_500_fails_the_point_with_its_message() -> None:
    # the probe (load) and the warm-up succeed; the measured requests get 500
    behaviour = Behaviour(fail_status=500, fail_after=2, fail_message="engine core died")
    with ScriptedServer(behaviour) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        with pytest.raises(EngineFailure) as err:
            engine.run_point(plan(2, synthetic(4)))
    assert str(err.value) == f"The server at {server.url} answered 500 to /v1/completions: engine core died."


def test_error_inside_a_stream_fails_the_point() -> None:
    behaviour = Behaviour(fail_status=500, fail_after=2, fail_in_stream=True, fail_message="worker crashed")
    with ScriptedServer(behaviour) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        with pytest.raises(EngineFailure, match="worker crashed"):
            engine.run_point(plan(1, synthetic(2)))


@pytest.mark.parametrize("in_stream", [False, True])
def test_out_of_memory_message_is_an_oom(in_stream: bool) -> None:
    behaviour = Behaviour(
        fail_status=500, fail_after=2, fail_in_stream=in_stream,
        fail_message="CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    with ScriptedServer(behaviour) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        with pytest.raises(EngineOOM, match="The server ran out of memory: CUDA out of memory") as err:
            engine.run_point(plan(4, synthetic(4)))
    assert err.value.recovered  # the server's memory, not this process's


def test_chat_only_server_falls_back_to_chat_completions() -> None:
    with ScriptedServer(Behaviour(chat_only=True, token_delay_s=0.005)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        assert engine.load()["endpoint"] == CHAT_PATH
        run = engine.run_point(plan(3, synthetic(5, output_tokens=5), min_window_s=0.1))
        measured = [body for path, body in server.log.requests[3:]]
        paths = {path for path, _ in server.log.requests[3:]}
    check_run(run)
    assert paths == {CHAT_PATH}
    body = measured[0]
    assert body["messages"][0]["role"] == "user"
    assert body["max_completion_tokens"] == body["max_tokens"] == 5
    assert body["ignore_eos"] is True and body["min_tokens"] == 5
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["temperature"] == 0
    assert all(r.output_tokens == 5 for r in run.records if r.finished)
    # the role-only first chunk carries no text, so it does not count as the first token
    assert run.concurrency_reached == 3
    assert server.log.max_in_flight == 3
    assert any("chat template" in n for n in run.notes)


def test_rejected_fields_are_dropped_once_and_noted() -> None:
    behaviour = Behaviour(reject_fields=("ignore_eos", "min_tokens"), running_usage=False)
    with ScriptedServer(behaviour) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        facts = engine.load()
        run = engine.run_point(plan(2, synthetic(3), batching=Batching.STATIC))
        bodies = [body for _, body in server.log.requests]
    assert facts["rejected_fields"] == ["continuous_usage_stats", "ignore_eos", "min_tokens"]
    # the server names one field at a time: the probe is refused three times, then nothing
    # carries them
    assert "continuous_usage_stats" in bodies[0]["stream_options"]
    assert bodies[1]["stream_options"] == {"include_usage": True} and "ignore_eos" in bodies[1]
    assert "ignore_eos" not in bodies[2] and "min_tokens" in bodies[2]
    assert all("ignore_eos" not in b and "min_tokens" not in b for b in bodies[3:])
    assert len(bodies) == 3 + 1 + 1 + 2  # three refusals, the probe, the warm-up, one batch of 2
    assert any("rejected ignore_eos, min_tokens" in n for n in run.notes)
    assert any("no running usage figures" in n for n in run.notes)


def test_tokens_counted_from_the_stream_without_usage() -> None:
    with ScriptedServer(Behaviour(send_usage=False, running_usage=False)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        prompts = [Prompt("a", 3, 4, text="hello there you"), Prompt("b", 5, 7, text="one two three four five")]
        run = engine.run_point(plan(2, prompts, batching=Batching.STATIC))
    check_run(run)
    assert [r.output_tokens for r in run.records] == [4, 7]
    assert [r.input_tokens for r in run.records] == [3, 5]  # the workload's counts, lacking the server's
    assert any("counted from stream chunks" in n for n in run.notes)
    assert not any("filler" in n for n in run.notes)


@pytest.mark.parametrize("running_usage", [True, False])
def test_chunks_carrying_several_tokens(running_usage: bool) -> None:
    # 3 tokens in each chunk (the last one of a 7-token answer carries 1)
    behaviour = Behaviour(tokens_per_chunk=3, running_usage=running_usage, token_delay_s=0.002)
    with ScriptedServer(behaviour) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        run = engine.run_point(plan(1, synthetic(1, output_tokens=7), batching=Batching.STATIC))
    check_run(run)
    assert run.records[0].output_tokens == 7
    assert run.timeline is not None
    if running_usage:  # each chunk's own count, from the running usage figures
        assert run.timeline.tokens == (3, 3, 1)
    else:  # three chunks, the usage figure 7 shared out over them
        assert run.timeline.tokens == (2, 2, 3)
    assert tokens_between(run.window_start_s - 1, run.window_end_s, run.timeline, run.records) == 7


def test_a_freed_slot_takes_the_next_prompt_at_once() -> None:
    # varied lengths, 2 in flight: each worker sends its next request when its last one ends
    lengths = [3, 12, 4, 9, 2, 7]
    with ScriptedServer(Behaviour(token_delay_s=0.004)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        run = engine.run_point(plan(2, [Prompt(f"p{i}", 6, n) for i, n in enumerate(lengths)], min_window_s=0.2))
    check_run(run)
    assert server.log.max_in_flight == 2 and run.concurrency_reached == 2
    ends = sorted(r.start_s + r.e2e_s for r in run.records if r.finished)
    # every request after the first two started within a few ms of some request's end
    for rec in sorted(run.records, key=lambda r: r.start_s)[2:]:
        assert min(abs(rec.start_s - end) for end in ends if end <= rec.start_s + 1e-3) < 0.05
    assert run.window_end_s - run.window_start_s >= 0.2


def test_the_window_close_cancels_what_still_streams() -> None:
    # one long answer (400 tokens, 2 s) beside short ones: the window closes at a short one's end
    # once it has lasted 0.15 s, and the long one is cut off there, not waited for
    prompts = [Prompt("long", 6, 400)] + [Prompt(f"s{i}", 6, 5) for i in range(30)]
    with ScriptedServer(Behaviour(token_delay_s=0.005)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        started = time.monotonic()
        run = engine.run_point(plan(2, prompts, min_window_s=0.15))
        took = time.monotonic() - started
        time.sleep(0.1)  # the server notices the closed stream at its next write
        disconnected = server.log.disconnected
    check_run(run)
    assert took < 1.5
    long = next(r for r in run.records if r.request_index == 0)
    assert not long.finished and 0 < long.output_tokens < 400
    assert disconnected >= 1
    assert all(r.finished for r in run.records if r.request_index != 0)
    # the window closed at the end of the last short request
    assert run.window_end_s == max(r.start_s + r.e2e_s for r in run.records if r.finished)
    assert any("were cancelled" in n for n in run.notes)


def test_finishes_learnt_late_still_give_the_window_the_runner_finds() -> None:
    # each stream ends 30 ms after its last token, so the engine learns of a finish only after
    # other requests have been admitted and made tokens: the window it reports must still be the
    # one steady_window finds in its records, and must have opened
    lengths = [9, 3, 14, 6, 4, 11]
    with ScriptedServer(Behaviour(token_delay_s=0.005, tail_delay_s=0.03)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        run = engine.run_point(plan(3, [Prompt(f"p{i}", 6, n) for i, n in enumerate(lengths)],
                                    min_window_s=0.3))
    check_run(run)
    assert run.concurrency_reached == 3
    # and it lasted min_window_s, though each slot freed 30 ms before the engine heard of it
    assert run.window_end_s - run.window_start_s >= 0.3


def test_a_server_that_runs_fewer_than_asked_is_kv_bound_after_the_cap() -> None:
    # the server generates one request at a time: with 2 in flight the window never opens, and
    # the point stops admitting at its cap
    with ScriptedServer(Behaviour(token_delay_s=0.004, max_running=1)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        started = time.monotonic()
        with pytest.raises(EngineKVBound) as err:
            engine.run_point(plan(2, synthetic(4, output_tokens=5), min_window_s=5.0, max_point_s=0.3))
        took = time.monotonic() - started
    assert err.value.concurrency_reached == 1
    assert "kept at most 1 of the 2 requests in flight generating at once" in str(err.value)
    assert took < 2.0  # the cap, not the 5 s window target
    run = err.value.run
    assert run.concurrency_reached == 1 and any("no steady state" in n for n in run.notes)


def test_a_server_that_never_answers_fails_the_start_up_check_quickly() -> None:
    with ScriptedServer(Behaviour(hang=True)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.startup_timeout_s = 0.5
        started = time.monotonic()
        with pytest.raises(EngineFailure) as err:
            engine.load()
        took = time.monotonic() - started
    assert str(err.value) == (
        f"The server at {server.url} did not answer GET /v1/models within "
        "0.5 s; is it still starting, or stuck?"
    )
    assert took < 3.0
    # and the default: 30 s, not the 600 s request timeout
    assert OpenAIEngine(make_spec("http://127.0.0.1:1", "m"), Events()).startup_timeout_s == 30.0


def test_a_slow_first_answer_times_out_with_a_sentence() -> None:
    with ScriptedServer(Behaviour(token_delay_s=0.5)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model", request_timeout_s=0.3), Events())
        with pytest.raises(EngineFailure, match=r"no complete answer to the first request \(the probe\) within 0\.3 s"):
            engine.load()


def test_helpers() -> None:
    assert base_url("http://h:8000/v1/") == "http://h:8000"
    assert base_url("http://h:8000") == "http://h:8000"
    text = filler_text(50, "0:p1")
    assert len(text.split()) == 50
    assert text == filler_text(50, "0:p1") and text != filler_text(50, "0:p2")
