"""`transformers serve` on a tiny random Llama built offline: the real server of the openai tests.

Run as a script (the tests do, in a subprocess):

    python tests/servers/transformers_server.py MODEL_DIR [--host 127.0.0.1] [--port 0]

It writes MODEL_DIR if it is missing (a 2-layer Llama with random weights from a small LlamaConfig,
and a word-level tokenizer built with the `tokenizers` package, wrapped as PreTrainedTokenizerFast),
then serves it pinned to that folder, with continuous batching (`--continuous-batching`): without
it, `transformers serve` generates one request at a time however many are sent, and an in-flight
point beyond batch 1 never reaches a steady state. Building and serving in one process pays for importing torch
and transformers once. Uvicorn logs "Uvicorn running on http://HOST:PORT", which is how a caller
learns the port when it asked for port 0. Nothing is downloaded: the hub is forced offline.

`start_transformers_server()` does all that from a test and returns the URL and model name.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The filler words plus three specials: every word of the engine's filler text is one token.
SPECIALS = ("<unk>", "<s>", "</s>")


def build_tiny_model(path: Path) -> None:
    """A random 2-layer Llama and a word-level tokenizer, saved as an ordinary model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for the word list
    from carbontop.core.synthetic import FILLER_WORDS

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in FILLER_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces when decoding
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        pad_token_id=0,
        eos_token_id=None,  # no end-of-sequence: answers run to max_tokens, as ignore_eos would force
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, pad_token_id=0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.model_dir / "config.json").exists():
        build_tiny_model(args.model_dir)

    from transformers.cli.transformers import main as transformers_cli

    sys.argv = [
        "transformers", "serve", str(args.model_dir),
        "--host", args.host, "--port", str(args.port),
        "--device", "cpu", "--log-level", "info", "--continuous-batching",
    ]
    transformers_cli()


# ---- used from the tests ---------------------------------------------------------------------

_RUNNING = re.compile(r"Uvicorn running on (http://[\w.\-]+:\d+)")


@contextmanager
def start_transformers_server(model_dir: Path, timeout_s: float = 90.0) -> Iterator[tuple[str, str]]:
    """Run the server in a subprocess; yield (base URL, model name); stop it afterwards."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        CUDA_VISIBLE_DEVICES="",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # a 32-wide model gains nothing from threads; the machine may have 2 cores
        PYTHONUNBUFFERED="1",
    )
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(model_dir), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # read the log on a thread so that a silent server cannot block the test
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    url = None
    deadline = time.monotonic() + timeout_s
    try:
        while url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("transformers serve did not start in time:\n" + "".join(seen[-30:]))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("transformers serve exited:\n" + "".join(seen[-30:]))
            seen.append(line)
            match = _RUNNING.search(line)
            if match:
                url = match.group(1)
        yield url, str(model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
