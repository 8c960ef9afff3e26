"""Counting tokens: a model's own tokenizer where one is on disk, else a documented estimate.

Two numbers come out of a counter, and they differ on purpose:

- ``encode(text)`` is what a model is fed for ``text`` as a prompt: the tokenizer's special
  tokens included (Llama's BOS, for instance), so ``len(encode(text))`` is the prompt's input
  length as the engine processes it.
- ``count(text)`` is how many tokens ``text`` itself is, special tokens excluded: the number of
  steps a model needs to generate it. The workload uses it for output lengths, and for input
  lengths where there are no ids (the estimate).

The estimate (used when there is no tokenizer; ``exact`` is False): split the text with the
GPT-2 pre-tokenizer's pattern (contractions, runs of letters, runs of digits and runs of other
symbols, each optionally led by one space, and whitespace runs) and take
``max(pieces, ceil(characters / 4))``. A BPE tokenizer never yields fewer tokens than pre-tokenizer
pieces, and OpenAI's rule of thumb for English BPE is about 4 characters per token
(https://help.openai.com/en/articles/4936856), which catches long words and non-English text that
the piece count alone would undercount. It is deterministic and needs nothing installed. It
undercounts scripts without spaces (Chinese, Japanese), where real tokenizers spend about a token
per character; lengths from it are marked as estimated wherever they are shown.

Nothing here imports `tokenizers` or `transformers` at module level: the core stays light.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TokenCounter(Protocol):
    name: str  # what counts, e.g. "tokenizer.json of /models/llama" or "estimate: ..."
    exact: bool  # False for the estimate

    def encode(self, text: str) -> list[int] | None:
        """Token ids as a model is fed them (special tokens included), or None for the estimate."""
        ...

    def count(self, text: str) -> int:
        """The number of tokens of `text` itself, special tokens excluded."""
        ...


# GPT-2's pre-tokenizer pattern (openai/gpt-2, src/encoder.py) written for the stdlib `re`:
# \p{L} becomes [^\W\d_] (word characters that are neither digits nor underscore), \p{N} becomes
# \d, and "neither space, letter nor number" becomes [^\s\w] plus the underscore.
_GPT2_PIECE_RE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)
# OpenAI: "one token generally corresponds to ~4 characters of text for common English text".
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """max(GPT-2 pre-tokenizer pieces, ceil(characters / 4)); see the module docstring."""
    if not text:
        return 0
    pieces = sum(1 for _ in _GPT2_PIECE_RE.finditer(text))
    return max(pieces, math.ceil(len(text) / CHARS_PER_TOKEN))


class EstimateCounter:
    """The documented estimate, for when no tokenizer is available."""

    exact = False

    def __init__(self, reason: str) -> None:
        self.reason = reason  # why there is no real tokenizer, as a phrase
        self.name = f"estimate: max(GPT-2 pre-tokenizer pieces, chars/4); {reason}"

    def encode(self, text: str) -> list[int] | None:
        return None

    def count(self, text: str) -> int:
        return estimate_tokens(text)


class TokenizersCounter:
    """A tokenizer.json loaded with the `tokenizers` package (Rust, no torch)."""

    exact = True

    def __init__(self, tokenizer: Any, name: str) -> None:
        # Some tokenizer.json files ship with truncation or padding switched on; either would
        # change the counts, so both go off.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.name = name

    def encode(self, text: str) -> list[int] | None:
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


class TransformersCounter:
    """Any tokenizer transformers can load from local files (sentencepiece models and the like)."""

    exact = True

    def __init__(self, tokenizer: Any, name: str) -> None:
        self._tok = tokenizer
        self.name = name

    def encode(self, text: str) -> list[int] | None:
        # verbose=False: long texts are counted, not fed to a model, so the length warning is noise.
        return list(self._tok.encode(text, add_special_tokens=True, verbose=False))

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False, verbose=False))


# Files whose presence means transformers may find a tokenizer in the folder.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _load_tokenizer_json(path: Path) -> TokenizersCounter | None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed or too-new file
        return None
    return TokenizersCounter(tok, f"tokenizer.json of {path.parent}")


def _load_transformers(where: str) -> TransformersCounter | None:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer files, no sentencepiece, not cached: each its own type
        return None
    return TransformersCounter(tok, f"transformers tokenizer of {where}")


def load_token_counter(model_path: str | None) -> TokenCounter:
    """A real tokenizer from a local model folder, else the documented estimate (exact=False).

    Tried in order: the folder's tokenizer.json through the `tokenizers` package (no torch
    needed); transformers' AutoTokenizer with local_files_only=True (folders with only a
    sentencepiece model, or a hub id already in the local cache). With no folder, or no
    tokenizer that loads, the estimate of `estimate_tokens`, whose `reason` says why.
    Never raises: a sweep can always run on estimated lengths, and the workload says so.
    """
    if not model_path:
        return EstimateCounter("no model folder given")
    path = Path(model_path).expanduser()
    if path.is_dir():
        tj = path / "tokenizer.json"
        if tj.is_file():
            counter: TokenCounter | None = _load_tokenizer_json(tj)
            if counter is not None:
                return counter
        if any((path / name).is_file() for name in _TOKENIZER_FILES):
            counter = _load_transformers(str(path))
            if counter is not None:
                return counter
            return EstimateCounter(f"the tokenizer in {path} could not be loaded")
        return EstimateCounter(f"no tokenizer in the model folder {path}")
    from carbontop.core.hub import hub_snapshot, looks_like_hub_id
    from carbontop.errors import ConfigError

    if looks_like_hub_id(model_path):
        # a hub id: its snapshot in the local Hugging Face cache (fetched where online)
        try:
            folder = hub_snapshot(model_path, "dummy")
        except ConfigError:
            counter = _load_transformers(model_path)
            if counter is not None:
                return counter
            return EstimateCounter(f"no local tokenizer for {model_path}")
        counter = load_token_counter(str(folder))
        if counter.exact:
            counter.name = f"{counter.name} ({model_path})"
        return counter
    return EstimateCounter(f"no model folder at {model_path}")
