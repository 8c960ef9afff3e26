"""The one test of an error's text for running out of memory, used by the host and every engine."""

from __future__ import annotations

import pytest

from carbontop.engines.base import says_oom


@pytest.mark.parametrize("text", [
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)",  # torch
    "RuntimeError: CUDA error: cudaErrorMemoryAllocation",  # CUDA runtime
    "CUDA_ERROR_OUT_OF_MEMORY: out of memory",  # CUDA driver
    "cudaMallocAsync failed to allocate 512 bytes",  # torch's async allocator
    "[TensorRT-LLM][ERROR] Insufficient GPU memory for the KV cache",  # TensorRT-LLM's executor
    "torch.OutOfMemoryError",
])
def test_every_wording_of_running_out_of_memory(text: str) -> None:
    assert says_oom(text)


@pytest.mark.parametrize("text", [
    "CUDA error: an illegal memory access was encountered",
    "Connection refused",
    "Request timed out after 600 s",
])
def test_other_failures_are_not_memory(text: str) -> None:
    assert not says_oom(text)
