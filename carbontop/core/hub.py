"""Models named by their Hugging Face hub id ("meta-llama/Llama-2-7b-hf").

The id resolves to a snapshot folder of the local Hugging Face cache (HF_HUB_CACHE, else
$HF_HOME/hub, else ~/.cache/huggingface/hub: the layout models--ORG--NAME/snapshots/REV/ with
refs/main naming the revision), which then serves exactly as a model folder does. What the
snapshot must hold depends on the weights: with `--weights dummy` only config.json (and the
tokenizer where there is one, for exact token counts); with `--weights auto` the weights too.
Where the cache lacks them and the machine is online (HF_HUB_OFFLINE unset), they are downloaded
with huggingface_hub; otherwise the user gets one sentence saying how to get them.

`huggingface_hub` is imported inside the functions: it comes with transformers (carbontop[hf]).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from carbontop.errors import ConfigError

# org/name as the hub allows them: letters, digits, '-', '_', '.'; neither part starts with '.'
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
CONFIG_FILES = ["config.json", "generation_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "vocab.json", "merges.txt"]
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json"]


def looks_like_hub_id(name: str) -> bool:
    """'org/name' that is not a path on this machine."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps its cache, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _complete(folder: Path, weights: str) -> bool:
    if not (folder / "config.json").is_file():
        return False
    return weights != "auto" or any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def hub_snapshot(repo_id: str, weights: str, cache_dir: Path | None = None) -> Path:
    """The snapshot folder of `repo_id` holding what `weights` needs; ConfigError (one sentence)
    where it is neither in the cache nor downloadable."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise ConfigError(
            f"A hub id ('{repo_id}') needs huggingface_hub: pip install 'carbontop[hf]'.", "model"
        ) from None
    cache = cache_dir or hub_cache_dir()
    patterns = CONFIG_FILES + TOKENIZER_FILES + (WEIGHT_FILES if weights == "auto" else [])
    what = "config.json and weights" if weights == "auto" else "config.json"
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True,
                                        allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - any miss in the cache means: download, or say how
        folder = None
    if folder is not None and _complete(folder, weights):
        return folder
    if _offline():
        raise ConfigError(
            f"'{repo_id}' has no {what} in the Hugging Face cache at {cache}, and HF_HUB_OFFLINE is "
            f"set; download it where there is internet (hf download {repo_id}) into that cache.",
            "model")
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns))
    except GatedRepoError:
        raise ConfigError(
            f"'{repo_id}' is gated on the hub: accept its licence on its page, log in with "
            "hf auth login, and run again.", "model") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"There is no model '{repo_id}' on the Hugging Face hub.", "model") from None
    except Exception as exc:  # noqa: BLE001 - network, disk, permissions: one sentence
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise ConfigError(
            f"'{repo_id}' is not in the Hugging Face cache at {cache} and could not be downloaded "
            f"({first}).", "model") from None
    if not _complete(folder, weights):
        raise ConfigError(f"The hub model '{repo_id}' has no {what} carbontop can use.", "model")
    return folder
