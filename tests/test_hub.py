"""Hub ids resolved against a local Hugging Face cache built here (HF_HUB_CACHE layout), offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbontop.cli import main
from carbontop.config import RunConfig, tomllib
from carbontop.core.hub import looks_like_hub_id
from carbontop.core.modelspec import PRESETS, resolve_model
from carbontop.core.tokenize import load_token_counter
from carbontop.errors import ConfigError
from carbontop.sweep.runner import SweepRunner

REV = "0123456789abcdef0123456789abcdef01234567"
WORDS = ["[UNK]", "hello", "world", "how", "are", "you", "fine", "thanks"]


def _tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(path))


def add_to_cache(cache: Path, repo_id: str, config: dict, *, tokenizer: bool = False) -> Path:
    """models--ORG--NAME/snapshots/REV/config.json and refs/main, as huggingface_hub lays them."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REV
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    if tokenizer:
        _tokenizer_json(snapshot / "tokenizer.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return snapshot


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the network in a test
    monkeypatch.chdir(tmp_path)
    return root


def test_what_looks_like_a_hub_id(tmp_path: Path) -> None:
    assert looks_like_hub_id("meta-llama/Llama-2-7b-hf")
    assert looks_like_hub_id("openai-community/gpt2-xl")
    assert not looks_like_hub_id("tiny") and not looks_like_hub_id("/models/llama")
    assert not looks_like_hub_id("a/b/c") and not looks_like_hub_id("./x")


def test_dummy_weights_need_only_config_json(cache: Path) -> None:
    snapshot = add_to_cache(cache, "meta-llama/Llama-2-7b-hf", PRESETS["llama2-7b"])
    spec = resolve_model("meta-llama/Llama-2-7b-hf", "dummy")
    assert spec.name == "meta-llama/Llama-2-7b-hf"
    assert spec.total_params == 6_738_415_616  # the architecture comes from the cached config
    assert Path(spec.path) == snapshot.resolve()


def test_auto_weights_without_weights_in_the_cache_is_one_sentence(cache: Path) -> None:
    add_to_cache(cache, "meta-llama/Llama-2-7b-hf", PRESETS["llama2-7b"])
    with pytest.raises(ConfigError, match="no config.json and weights in the Hugging Face cache") as err:
        resolve_model("meta-llama/Llama-2-7b-hf", "auto")
    assert "hf download meta-llama/Llama-2-7b-hf" in str(err.value)


def test_a_model_missing_from_the_cache_is_one_sentence(cache: Path) -> None:
    with pytest.raises(ConfigError, match="has no config.json in the Hugging Face cache") as err:
        resolve_model("meta-llama/Llama-3.1-8B")
    assert str(cache) in str(err.value)


def test_the_hub_models_tokenizer_counts_tokens(cache: Path) -> None:
    add_to_cache(cache, "carbontop-test/tiny-llama", PRESETS["tiny"], tokenizer=True)
    counter = load_token_counter("carbontop-test/tiny-llama")
    assert counter.exact and "carbontop-test/tiny-llama" in counter.name
    assert counter.count("hello world how are you") == 5


def _prepared_meta(cfg: RunConfig) -> dict:
    """Everything a sweep resolves before its engine starts, as run.toml records it."""
    runner = SweepRunner(cfg)
    runner.prepare()
    runner.sampler.stop()
    return tomllib.loads((Path(cfg.out) / "run.toml").read_text())


def test_sweep_a_hub_id_and_a_preset_with_its_tokenizer(cache: Path, tmp_path: Path, capsys) -> None:
    add_to_cache(cache, "carbontop-test/tiny-llama", PRESETS["tiny"], tokenizer=True)
    dataset = tmp_path / "chats.json"
    chats = [{"id": f"c{i}", "conversations": [
        {"from": "human", "value": "hello world how are you " * (i + 1)},
        {"from": "gpt", "value": "fine thanks " * (i + 2)}]} for i in range(4)]
    dataset.write_text(json.dumps(chats))
    common = {"device": "cpu", "num_prompts": 2, "batch_sizes": "2", "dataset": str(dataset)}

    meta = _prepared_meta(RunConfig(model="carbontop-test/tiny-llama", out=str(tmp_path / "by-id"),
                                    **common))
    assert meta["model"]["name"] == "carbontop-test/tiny-llama"
    assert meta["workload"]["lengths_exact"] is True
    assert "tokenizer.json" in meta["workload"]["tokenizer"]

    meta = _prepared_meta(RunConfig(model="tiny", tokenizer="carbontop-test/tiny-llama",
                                    out=str(tmp_path / "preset"), **common))
    assert meta["workload"]["lengths_exact"] is True
    assert "(carbontop-test/tiny-llama)" in meta["workload"]["tokenizer"]

    code = main(["sweep", "--model", "tiny", "--tokenizer", "nobody/nothing", "--device", "cpu",
                 "--dataset", str(dataset)])
    err = capsys.readouterr().err
    assert code != 0 and "--tokenizer nobody/nothing gave no tokenizer" in err
    assert len(err.strip().splitlines()) == 1


def test_a_hub_id_sweeps_end_to_end(cache: Path, tmp_path: Path) -> None:
    add_to_cache(cache, "carbontop-test/tiny-llama", PRESETS["tiny"])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "carbontop", "sweep", "--model", "carbontop-test/tiny-llama",
         "--device", "cpu", "--dataset", "synthetic", "--num-prompts", "1", "--max-input-len", "8",
         "--max-output-len", "4", "--batch-sizes", "1", "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "carbontop-test/tiny-llama" in proc.stdout
