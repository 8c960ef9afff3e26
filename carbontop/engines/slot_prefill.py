"""Packed prefill for the slot engine (hf_slots): how new prompts are laid out, padded and, on a
GPU, replayed from CUDA graphs.

New requests are prefilled together: their prompts packed into one sequence with a block-diagonal
causal mask, in chunks of at most PREFILL_CHUNK_TOKENS; logits are computed only at each prompt's
last token. A packed sequence is padded up to a power of two (prefill_bucket), so a point meets
only a handful of shapes, each run once in warm-up: on an H200 the first prefill of each new
length cost 0.07-1.1 s (kernel selection per shape), which at batch 1 stalled the window on every
admission. Padding tokens attend only to each other and write their keys and values to a scratch
position past every row's reach.

On a GPU each bucket's forward is captured once per point as a CUDA graph and replayed. Launched
eagerly, a packed prefill of Llama-2-7B took 25-35 ms whatever its length (H200, mean per prefill
at b = 1..170 in a default sweep): the host's time to launch a few hundred kernels, during which
the GPU mostly waited. In flight, a prefill comes with nearly every finished request, so at b=64
eager prefills filled half of each window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from carbontop.engines.cuda_graphs import capture

PREFILL_CHUNK_TOKENS = 4096  # prompt tokens per packed prefill (its mask is chunk^2 booleans)
PREFILL_MIN_BUCKET = 16  # the smallest padded prefill length; buckets double up to the chunk size

# The packed inputs' rows, in the order PackedPrompts.rows() lays them out.
INPUT_ROWS = ("token id", "slot", "cache position", "rope position", "segment")


def prefill_bucket(n_tokens: int) -> int:
    """The padded length of a packed prefill of n_tokens: a power of two from PREFILL_MIN_BUCKET
    up to PREFILL_CHUNK_TOKENS; a single prompt longer than that rounds up to a whole chunk."""
    if n_tokens > PREFILL_CHUNK_TOKENS:
        return -(-n_tokens // PREFILL_CHUNK_TOKENS) * PREFILL_CHUNK_TOKENS
    n = PREFILL_MIN_BUCKET
    while n < n_tokens:
        n *= 2
    return n


def prefill_buckets(up_to: int) -> list[int]:
    """Every bucket from the smallest to `up_to` (itself a bucket)."""
    out = [PREFILL_MIN_BUCKET]
    while out[-1] < min(up_to, PREFILL_CHUNK_TOKENS):
        out.append(out[-1] * 2)
    if up_to > out[-1]:
        out.append(up_to)
    return out


T = TypeVar("T")


def chunks(items: Sequence[T], tokens: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive runs of items whose tokens add up to at most PREFILL_CHUNK_TOKENS (an item
    longer than that is a chunk of its own)."""
    chunk: list[T] = []
    size = 0
    for item in items:
        n = tokens(item)
        if chunk and size + n > PREFILL_CHUNK_TOKENS:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


@dataclass(frozen=True)
class PackedPrompts:
    """Prompts laid out as one padded sequence: token t belongs to slot `slot[t]`, is cached at
    `cache_pos[t]` of that slot and rotated as position `rope_pos[t]`; `segment[t]` is its
    prompt's index (-1 for padding). `ends[k]` is prompt k's last token, whose logits give the
    slot `slots[k]` its first output token; `lengths[k]` is that prompt's length."""

    ids: list[int]
    slot: list[int]
    cache_pos: list[int]
    rope_pos: list[int]
    segment: list[int]
    ends: list[int]
    slots: list[int]
    lengths: list[int]

    @property
    def length(self) -> int:
        return len(self.ids)

    def rows(self) -> list[list[int]]:
        """The per-token lists in INPUT_ROWS order."""
        return [self.ids, self.slot, self.cache_pos, self.rope_pos, self.segment]


def pack(prompts: Sequence[Sequence[int]], slots: Sequence[int], scratch_pos: int,
         length: int | None = None) -> PackedPrompts:
    """Pack prompts (token ids) bound for `slots`, padded to their bucket or to `length`. Padding
    is its own segment at rope position 0, cached at the scratch position of slot 0."""
    ids: list[int] = []
    slot_of: list[int] = []
    pos: list[int] = []
    seg: list[int] = []
    ends: list[int] = []
    for k, (row, slot) in enumerate(zip(prompts, slots, strict=True)):
        ids.extend(row)
        slot_of.extend([slot] * len(row))
        pos.extend(range(len(row)))
        seg.extend([k] * len(row))
        ends.append(len(ids) - 1)
    rope = list(pos)
    pad = (length if length is not None else prefill_bucket(len(ids))) - len(ids)
    if pad < 0:
        raise ValueError(f"{len(ids)} prompt tokens do not fit a prefill of {length}")
    ids.extend([0] * pad)
    slot_of.extend([0] * pad)
    pos.extend([scratch_pos] * pad)
    rope.extend([0] * pad)
    seg.extend([-1] * pad)
    return PackedPrompts(ids, slot_of, pos, rope, seg, ends, list(slots), [len(r) for r in prompts])


@dataclass
class Prefill:
    """What the attention function reads during a packed prefill (device tensors)."""

    slot: Any  # [T] long: the slot each packed token belongs to
    pos: Any  # [T] long: its position in that slot
    mask: Any  # [1, 1, T, T] bool: block-diagonal causal


def prefill_inputs(inputs: Any) -> tuple[Any, Any, Prefill]:
    """(token ids [1, T], rope positions [1, T], Prefill) from the [5, T] device tensor of
    INPUT_ROWS: the mask is built on the device, so a captured graph rebuilds it each replay."""
    ids, slot, cache_pos, rope, seg = inputs
    causal = rope.view(-1, 1) >= rope.view(1, -1)
    mask = (seg.view(-1, 1) == seg.view(1, -1)) & causal
    n = ids.shape[0]
    return ids.view(1, -1), rope.view(1, -1), Prefill(slot=slot, pos=cache_pos, mask=mask.view(1, 1, n, n))


class PrefillGraphs:
    """One point's captured prefill forwards, a CUDA graph per bucket, sharing one memory pool.

    A graph holds the addresses of the point's KV cache, so graphs live as long as the point.
    Sharing the pool is safe because replays are serialised on one stream and each replay's
    output is read before the next replay starts.
    """

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # bucket -> (graph, inputs, hidden)

    def capture(self, n: int, scratch_pos: int, forward: Callable[[Any], Any]) -> None:
        """Capture forward(inputs [5, n]) -> hidden for bucket n, with padding-only inputs."""
        torch = self.torch
        inputs = torch.tensor(pack([], [], scratch_pos, length=n).rows(), dtype=torch.long,
                              device=self.device)
        graph, hidden = capture(torch, lambda: forward(inputs), pool=self.pool)
        self._graphs[n] = (graph, inputs, hidden)

    def __contains__(self, n: int) -> bool:
        return n in self._graphs

    def replay(self, n: int, inputs: Any) -> Any:
        """Copy `inputs` [5, n] (device) into bucket n's graph, replay it, return its hidden states."""
        graph, static_inputs, hidden = self._graphs[n]
        static_inputs.copy_(inputs)
        graph.replay()
        return hidden
