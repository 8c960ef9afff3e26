"""engines/cuda_graphs.capture drives torch's stream and graph calls in the documented order
(checked against a recording stand-in for torch.cuda: no GPU here; the engines' GPU tests run it
for real)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from carbontop.engines.cuda_graphs import capture


def recording_torch(log: list[str]) -> SimpleNamespace:
    class Stream:  # the side stream
        def wait_stream(self, _other: object) -> None:
            log.append("side waits for current")

    class CUDAGraph:
        pass

    @contextlib.contextmanager
    def stream(_s: object):
        log.append("enter side stream")
        yield
        log.append("leave side stream")

    @contextlib.contextmanager
    def graph(_g: object, pool: object = None):
        log.append(f"begin capture, pool={pool}")
        yield
        log.append("end capture")

    class Current:  # the stream the engine runs on
        def wait_stream(self, _other: object) -> None:
            log.append("current waits for side")

    def new_stream():
        log.append("new side stream")
        return Stream()

    cuda = SimpleNamespace(Stream=new_stream, current_stream=Current, stream=stream,
                           CUDAGraph=CUDAGraph, graph=graph,
                           synchronize=lambda: log.append("synchronize"))
    return SimpleNamespace(cuda=cuda)


def test_warm_up_on_a_side_stream_then_undo_then_capture_then_wait() -> None:
    log: list[str] = []
    torch = recording_torch(log)
    graph, out = capture(torch, lambda: log.append("run") or "hidden", warm=lambda: log.append("warm"),
                         warmups=2, before_capture=lambda: log.append("undo"), pool="P")
    assert out == "hidden" and graph is not None
    assert log == ["new side stream", "side waits for current", "enter side stream", "warm", "warm",
                   "leave side stream", "current waits for side", "undo", "begin capture, pool=P",
                   "run", "end capture", "synchronize"]


def test_without_a_warm_function_the_captured_one_warms_once() -> None:
    log: list[str] = []
    capture(recording_torch(log), lambda: log.append("run"))
    assert log.count("run") == 2 and "begin capture, pool=None" in log
