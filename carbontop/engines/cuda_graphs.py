"""Capturing a CUDA graph as PyTorch's documentation asks: warm-up runs on a side stream first
(library handles, workspaces and lazy kernel choices happen there, never inside the capture),
then the capture itself. Every graph the engines replay is made here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def capture(torch: Any, run: Callable[[], T], *, warm: Callable[[], object] | None = None,
            warmups: int = 1, before_capture: Callable[[], object] | None = None,
            pool: Any = None) -> tuple[Any, T]:
    """(graph, what `run` returned while captured). `warm` (default: `run`) runs `warmups` times
    on a side stream; `before_capture` runs on the current stream after them (to undo what the
    warm-up moved on); `pool` is a memory pool the graph may share with others."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            (warm or run)()
    torch.cuda.current_stream().wait_stream(side)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = run()
    torch.cuda.synchronize()
    return graph, out
