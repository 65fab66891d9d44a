"""ModelRunner's packing of chunks (slots, positions, tables) and its refusal of malformed chunks.

The chunks are `StepChunk`s, the plain record with the fields of `Chunk` (what a tensor-parallel
worker receives); the engine passes the scheduler's own chunks, which have the same fields."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.cache import KVCache
from fastswitch.models import ModelRunner, default_num_blocks, kv_cache_spec, load_model
from fastswitch.parallel.messages import StepChunk
from tiny_llamas import tiny_llama

BLOCK_SIZE, NUM_BLOCKS = 8, 24


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    model = load_model(tiny_llama(), progress=False).model
    cache = KVCache(NUM_BLOCKS, model.num_layers, BLOCK_SIZE, model.num_kv_heads, model.head_dim, model.dtype, "cpu")
    return ModelRunner(model, cache, backend="torch")


@st.composite
def chunk_lists(draw):
    chunks = []
    for _ in range(draw(st.integers(1, 4))):
        num_cached = draw(st.integers(0, 40))
        new = draw(st.integers(1, 20))
        needed = -(-(num_cached + new) // BLOCK_SIZE)
        table = draw(st.lists(st.integers(0, NUM_BLOCKS - 1), min_size=needed, max_size=needed + 2))
        chunks.append(StepChunk(draw(st.lists(st.integers(0, 383), min_size=new, max_size=new)), num_cached, table))
    return chunks


@given(chunks=chunk_lists())
def test_prepare_places_every_token_in_its_own_block_slot(runner, chunks):
    input_ids, positions, slot_mapping, batch = runner.prepare(chunks)
    expected_slots, expected_positions = [], []
    for chunk in chunks:
        for offset in range(len(chunk.token_ids)):
            pos = chunk.num_cached + offset
            expected_positions.append(pos)
            expected_slots.append(chunk.block_table[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE)
    assert input_ids.tolist() == [t for c in chunks for t in c.token_ids]
    assert positions.tolist() == expected_positions
    assert slot_mapping.tolist() == expected_slots
    assert batch.seq_lens == [c.num_cached + len(c.token_ids) for c in chunks]
    assert batch.seq_lens_tensor.tolist() == batch.seq_lens
    assert batch.query_start_loc == [0, *itertools.accumulate(len(c.token_ids) for c in chunks)]
    assert batch.query_start_loc_tensor.tolist() == batch.query_start_loc
    for row, chunk in enumerate(chunks):
        used = -(-batch.seq_lens[row] // BLOCK_SIZE)
        assert batch.block_tables[row, :used].tolist() == chunk.block_table[:used]


@pytest.mark.parametrize(
    "chunk, message",
    [
        (StepChunk([], 0, [0]), "chunk 0 has no new tokens"),
        (StepChunk([1], -1, [0]), "num_cached=-1"),
        (StepChunk([1] * 9, 0, [0]), "needs 2 blocks for 9 tokens but its block table has 1"),
        (StepChunk([1], 0, [NUM_BLOCKS]), "block ids outside 0..23"),
        (StepChunk([384], 0, [0]), "token ids outside the vocabulary 0..383"),
    ],
)
def test_malformed_chunks_are_refused(runner, chunk, message):
    with pytest.raises(ValueError, match=message):
        runner.forward([chunk])


def test_cache_that_does_not_fit_the_model_is_refused():
    model = load_model(tiny_llama(), progress=False).model
    wrong_heads = KVCache(4, model.num_layers, BLOCK_SIZE, model.num_kv_heads + 1, model.head_dim, model.dtype, "cpu")
    with pytest.raises(ValueError, match="does not fit the model"):
        ModelRunner(model, wrong_heads)


def test_default_pool_size_is_capped_by_the_cpu_budget():
    spec = kv_cache_spec(load_model(tiny_llama(), progress=False).model)
    assert spec.block_bytes(16) == 2 * 2 * 16 * 2 * 16 * 4  # layers, K/V, tokens, heads, dim, fp32
    assert default_num_blocks(spec, 16, max_num_seqs=4, max_model_len=100, device=torch.device("cpu")) == 4 * 7
    huge = default_num_blocks(spec, 16, max_num_seqs=10**6, max_model_len=10**5, device=torch.device("cpu"))
    assert huge * spec.block_bytes(16) <= 1 << 30
