"""Inference engines. Each runs inside a child process started by `carbontop.engines.host`.

Engine modules import their heavy libraries (torch, transformers, tensorrt_llm, httpx) inside
the child only, so choosing an engine costs the parent nothing.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"; resolved lazily in the child
ENGINE_CLASSES = {
    "hf": "carbontop.engines.hf:HFEngine",
    "trtllm": "carbontop.engines.trtllm:TRTLLMEngine",
    "openai": "carbontop.engines.openai:OpenAIEngine",
}


def load_engine_class(name: str) -> type:
    """A built-in engine by name, or any class given as "package.module:Class"."""
    module_name, _, class_name = ENGINE_CLASSES.get(name, name).partition(":")
    return getattr(importlib.import_module(module_name), class_name)
