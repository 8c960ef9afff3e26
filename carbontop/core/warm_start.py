"""The requests an in-flight point starts with, so that its slots start in their steady mix.

At a random moment of steady state a slot is part-way through a request: requests are met in
proportion to how long they hold a slot (their output length: prefill is short beside decode)
and at a uniformly random point of their output. This is renewal theory's length-biased
sampling, the inspection paradox (Ross, "Introduction to Probability Models", 10th ed., Academic
Press 2010, section 7.7). Filling every slot with a fresh request instead starts the whole batch
at the beginning of its life at once, and the KV cache the decode steps read grows for about one
request lifetime before it settles: on an NVIDIA H200 at batch 192 (ShareGPT, Llama-2-7B's shape)
the mean context per slot rose from 142 to about 310 tokens over the window's first 8 s, and a
20 s window's J/token came out low with it.

A warm-start request is a workload prompt whose first `age` output tokens count as already made:
its input is the prompt and those tokens, and it makes the rest. Its tokens carry no text (the
engines fill them as they fill synthetic prompts: the ids change nothing of the cost, only their
count does). The window rule itself is unchanged (core/window.py): it opens once all b requests
are in flight and each has made a token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from carbontop.core.records import Prompt

WARM_ID_MARK = "~warm"  # warm-start prompt ids: "<workload prompt id>~warm<slot>"


def warm_start(prompts: Sequence[Prompt], batch_size: int, seed: int) -> tuple[Prompt, ...]:
    """b requests drawn from `prompts` in proportion to their output length, each at an age
    drawn uniformly from 0 to its output length less one (so each still makes a token)."""
    if not prompts or batch_size < 1:
        return ()
    rng = random.Random(f"{seed}:warm-start:{batch_size}")
    chosen = rng.choices(list(prompts), weights=[max(p.output_tokens, 1) for p in prompts],
                         k=batch_size)
    out = []
    for slot, p in enumerate(chosen):
        age = rng.randrange(max(p.output_tokens, 1))
        out.append(Prompt(prompt_id=f"{p.prompt_id}{WARM_ID_MARK}{slot}",
                          input_tokens=p.input_tokens + age,
                          output_tokens=max(p.output_tokens - age, 1)))
    return tuple(out)
