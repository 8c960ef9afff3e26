"""The openai engine against real HTTP servers on 127.0.0.1.

A full point runs against `transformers serve` on a tiny random Llama the tests build offline; the
failure modes (500, no /v1/completions, out of memory, rejected fields, timeouts) run against the
scripted server in tests/servers/scripted.py, which speaks the same protocol over a real socket.
"""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

import pytest

from carbontop.core.records import EngineRun, Prompt
from carbontop.engines.base import (
    EngineFailure,
    EngineNote,
    EngineOOM,
    EngineSpec,
    Phase,
    PhaseUpdate,
    Progress,
)
from carbontop.engines.openai import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    OpenAIEngine,
    base_url,
    filler_text,
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

    def progress(self) -> list[tuple[int, int]]:
        return [(n.done, n.total) for n in self.items if isinstance(n, Progress)]


def make_spec(url: str, model: str, **changes: Any) -> EngineSpec:
    return EngineSpec(
        engine="openai", model=model, model_config=None, model_path=None, weights="auto",
        dtype="fp32", device="cpu", url=url, seed=7, **changes,
    )


def synthetic(n: int, input_tokens: int = 12, output_tokens: int = 6) -> list[Prompt]:
    return [Prompt(prompt_id=f"p{i}", input_tokens=input_tokens, output_tokens=output_tokens) for i in range(n)]


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


@pytest.mark.parametrize("batch_size", [1, 4])
def test_full_point_against_transformers_serve(tf_server: tuple[str, str], batch_size: int) -> None:
    url, model = tf_server
    events = Events()
    engine = OpenAIEngine(make_spec(url, model), events)
    facts = engine.load()
    assert facts["served_models"] == [model]
    # transformers serve refuses fields outside OpenAI's schema with a 422 naming them
    assert {"ignore_eos", "min_tokens"} <= set(facts["rejected_fields"])
    assert facts["endpoint"] == COMPLETIONS_PATH

    prompts = synthetic(6, input_tokens=12, output_tokens=8)
    run = engine.run_point(batch_size, prompts)

    assert isinstance(run, EngineRun)
    assert run.batch_size == batch_size
    assert [r.request_index for r in run.records] == list(range(6))
    assert run.concurrency_reached == batch_size
    for rec in run.records:
        assert rec.batch_index == -1 and rec.batch_size == batch_size
        # every filler word is one token of this tokenizer, and the model has no end-of-sequence
        assert rec.input_tokens == 12
        assert rec.output_tokens == 8
        assert 0 < rec.ttft_s < rec.e2e_s
        assert run.window_start_s <= rec.start_s
        assert rec.start_s + rec.e2e_s <= run.window_end_s + 1e-6
    assert run.window_start_s == min(r.start_s for r in run.records)
    assert "output tokens are the server's usage figures" in run.notes
    assert any("filler" in n and "approximate" in n for n in run.notes)
    assert any("rejected ignore_eos, min_tokens" in n for n in run.notes)
    # the measured stream starts after the warm-up request: the sweep's ETA clock starts there
    assert events.phases()[-2:] == [Phase.WARMUP, Phase.MEASURING]
    assert events.progress()[-1] == (6, 6)
    if batch_size == 1:  # one at a time: each request starts after the previous one finished
        recs = run.records
        for a, b in zip(recs, recs[1:], strict=False):
            assert b.start_s >= a.start_s + a.e2e_s


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
            engine.run_point(2, synthetic(4))
    assert str(err.value) == f"The server at {server.url} answered 500 to /v1/completions: engine core died."


def test_error_inside_a_stream_fails_the_point() -> None:
    behaviour = Behaviour(fail_status=500, fail_after=2, fail_in_stream=True, fail_message="worker crashed")
    with ScriptedServer(behaviour) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        with pytest.raises(EngineFailure, match="worker crashed"):
            engine.run_point(1, synthetic(2))


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
            engine.run_point(4, synthetic(4))
    assert err.value.recovered  # the server's memory, not this process's


def test_chat_only_server_falls_back_to_chat_completions() -> None:
    with ScriptedServer(Behaviour(chat_only=True, token_delay_s=0.005)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        assert engine.load()["endpoint"] == CHAT_PATH
        run = engine.run_point(3, synthetic(5, output_tokens=5))
        measured = server.log.requests[-5:]
    assert all(path == CHAT_PATH for path, _ in measured)
    body = measured[0][1]
    assert body["messages"][0]["role"] == "user"
    assert body["max_completion_tokens"] == body["max_tokens"] == 5
    assert body["ignore_eos"] is True and body["min_tokens"] == 5
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0
    assert [r.output_tokens for r in run.records] == [5] * 5
    # the role-only first chunk carries no text, so it does not count as the first token
    assert all(0 < r.ttft_s <= r.e2e_s for r in run.records)
    assert run.concurrency_reached == 3
    assert server.log.max_in_flight == 3
    assert any("chat template" in n for n in run.notes)


def test_rejected_fields_are_dropped_once_and_noted() -> None:
    with ScriptedServer(Behaviour(reject_fields=("ignore_eos", "min_tokens"))) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        facts = engine.load()
        run = engine.run_point(2, synthetic(3))
        bodies = [body for _, body in server.log.requests]
    assert facts["rejected_fields"] == ["ignore_eos", "min_tokens"]
    # the server names one field at a time: the probe is refused twice, then nothing carries them
    assert "ignore_eos" in bodies[0] and "min_tokens" in bodies[0]
    assert "ignore_eos" not in bodies[1] and "min_tokens" in bodies[1]
    assert all("ignore_eos" not in b and "min_tokens" not in b for b in bodies[2:])
    assert len(bodies) == 2 + 1 + 1 + 3  # two refusals, the probe, the warm-up, the measured requests
    assert any("rejected ignore_eos, min_tokens" in n for n in run.notes)


def test_tokens_counted_from_the_stream_without_usage() -> None:
    with ScriptedServer(Behaviour(send_usage=False)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        prompts = [Prompt("a", 3, 4, text="hello there you"), Prompt("b", 5, 7, text="one two three four five")]
        run = engine.run_point(2, prompts)
    assert [r.output_tokens for r in run.records] == [4, 7]
    assert [r.input_tokens for r in run.records] == [3, 5]  # the workload's counts, lacking the server's
    assert any("counted from stream chunks" in n for n in run.notes)
    assert not any("filler" in n for n in run.notes)


def test_concurrency_is_the_number_kept_in_flight() -> None:
    # batch 8 over 3 prompts: never more than 3 at once; batch 2 over 6: exactly 2
    with ScriptedServer(Behaviour(token_delay_s=0.005)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model"), Events())
        engine.load()
        assert engine.run_point(8, synthetic(3)).concurrency_reached == 3
        server.log.max_in_flight = 0
        run = engine.run_point(2, synthetic(6))
        assert run.concurrency_reached == 2 and server.log.max_in_flight == 2
    # 6 requests of 6 tokens at 5 ms a token, 2 at a time: the window is at least 3 x 30 ms
    assert run.window_end_s - run.window_start_s >= 3 * 6 * 0.005


def test_a_slow_server_times_out_with_a_sentence() -> None:
    with ScriptedServer(Behaviour(token_delay_s=0.5)) as server:
        engine = OpenAIEngine(make_spec(server.url, "scripted-model", request_timeout_s=0.3), Events())
        with pytest.raises(EngineFailure, match=r"got no complete answer within 0\.3 s"):
            engine.load()


def test_helpers() -> None:
    assert base_url("http://h:8000/v1/") == "http://h:8000"
    assert base_url("http://h:8000") == "http://h:8000"
    text = filler_text(50, "0:p1")
    assert len(text.split()) == 50
    assert text == filler_text(50, "0:p1") and text != filler_text(50, "0:p2")
