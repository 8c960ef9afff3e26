"""What a prompt without text is sent as: the synthetic workload's prompts (and warm-up requests)
carry only their lengths, and each engine needs something of exactly that many tokens.

Engines that take token ids get seeded random ids; servers that take text get a filler of common
words. Both are deterministic for a seed, and different for every prompt, so that a prefix cache
cannot turn identical prompts into free prefills. The ids do not change the cost, only their count.
"""

from __future__ import annotations

import random

from carbontop.core.records import Prompt


def prompt_seed(run_seed: int, prompt: Prompt) -> str:
    """The seed of one prompt's ids or text: the run's seed and the prompt's id."""
    return f"{run_seed}:{prompt.prompt_id}"


def synthetic_token_ids(n_tokens: int, vocab_size: int | None, seed: str) -> list[int]:
    """Deterministic token ids for a prompt that has no text, different for every seed.

    Ids come from the middle of the vocabulary: special tokens sit at its two ends in the common
    tokenizers (Llama's <unk>/<s>/</s> at 0-2, GPT-2's <|endoftext|> and Llama 3's specials last).
    """
    top = int((vocab_size or 1000) * 0.9)
    low = min(100, top // 10)
    rng = random.Random(seed)
    return [rng.randrange(low, top) for _ in range(max(1, n_tokens))]


# Common English words that are a single token (with their leading space) in the GPT-2 and Llama
# BPE vocabularies, so a filler of N of them is close to N tokens for most tokenizers.
FILLER_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first water "
    "been call who its now find long down day did get come made may part over new sound take only "
    "little work know place year live me back give most very after thing our just name good man "
    "think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must "
    "big even such because turn here why ask went men read need land different home us move try"
).split()


def filler_text(n_tokens: int, seed: str) -> str:
    """A deterministic text of `n_tokens` common words, different for every seed.

    Each prompt gets its own word sequence so that a server's prefix cache cannot turn identical
    prompts into free prefills.
    """
    rng = random.Random(seed)
    return " ".join(rng.choice(FILLER_WORDS) for _ in range(max(1, n_tokens)))
