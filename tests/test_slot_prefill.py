"""Packing prompts for the slot engine's prefill: layout, padding, buckets and mask, by hand."""

from __future__ import annotations

import pytest

from carbontop.engines.slot_prefill import (
    PREFILL_CHUNK_TOKENS,
    PREFILL_MIN_BUCKET,
    chunks,
    pack,
    prefill_bucket,
    prefill_buckets,
    prefill_inputs,
)


def test_buckets_double_from_the_smallest_to_the_chunk() -> None:
    assert prefill_bucket(1) == PREFILL_MIN_BUCKET == 16
    assert prefill_bucket(16) == 16
    assert prefill_bucket(17) == 32
    assert prefill_bucket(PREFILL_CHUNK_TOKENS) == PREFILL_CHUNK_TOKENS
    # a single prompt longer than a chunk rounds up to whole chunks
    assert prefill_bucket(PREFILL_CHUNK_TOKENS + 1) == 2 * PREFILL_CHUNK_TOKENS
    assert prefill_buckets(64) == [16, 32, 64]
    assert prefill_buckets(2 * PREFILL_CHUNK_TOKENS)[-2:] == [PREFILL_CHUNK_TOKENS, 2 * PREFILL_CHUNK_TOKENS]


def test_two_prompts_packed_and_padded_by_hand() -> None:
    packed = pack([[7, 8, 9], [5, 6]], slots=[4, 1], scratch_pos=99)
    assert packed.length == 16  # 5 tokens pad to the smallest bucket
    assert packed.ids == [7, 8, 9, 5, 6] + [0] * 11
    assert packed.slot == [4, 4, 4, 1, 1] + [0] * 11  # padding belongs to slot 0...
    assert packed.cache_pos == [0, 1, 2, 0, 1] + [99] * 11  # ...at its scratch position
    assert packed.rope_pos == [0, 1, 2, 0, 1] + [0] * 11
    assert packed.segment == [0, 0, 0, 1, 1] + [-1] * 11
    assert packed.ends == [2, 4]  # each prompt's last token gives its first output token
    assert packed.slots == [4, 1] and packed.lengths == [3, 2]
    assert [len(r) for r in packed.rows()] == [16] * 5


def test_padding_only_pack_and_a_length_too_short() -> None:
    empty = pack([], [], scratch_pos=7, length=32)
    assert empty.ids == [0] * 32 and empty.segment == [-1] * 32 and empty.ends == []
    with pytest.raises(ValueError, match="do not fit"):
        pack([[1] * 20], [0], scratch_pos=7, length=16)


def test_chunks_keep_each_prefill_within_the_chunk_size() -> None:
    sizes = [3000, 1000, 96, 1, 5000, 10]
    out = list(chunks(sizes, lambda n: n))
    assert out == [[3000, 1000, 96], [1], [5000], [10]]  # an over-long prompt is a chunk of its own


def test_mask_is_block_diagonal_and_causal() -> None:
    torch = pytest.importorskip("torch")
    packed = pack([[7, 8], [5]], slots=[0, 1], scratch_pos=9)
    ids, rope, prefill = prefill_inputs(torch.tensor(packed.rows()))
    mask = prefill.mask[0, 0]
    assert ids.shape == rope.shape == (1, 16)
    assert mask[1].tolist()[:3] == [True, True, False]  # prompt 0's 2nd token sees prompt 0 only
    assert mask[2].tolist()[:3] == [False, False, True]  # prompt 1 sees itself, not prompt 0
    assert not mask[0, 1]  # causal
    assert mask[3, 3] and mask[3, 4] and not mask[3, 0]  # padding attends only to padding
    assert prefill.slot.tolist()[:3] == [0, 0, 1] and prefill.pos.tolist()[:3] == [0, 1, 0]
