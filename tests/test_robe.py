"""ROBE (compemb.robe) against the definition: windows of one circular array at hashed offsets."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.partitions import HashPartition
from compemb.robe import ROBEEmbeddingBag
from _bags import bag_inputs, naive_pool

FAST = settings(max_examples=25, deadline=None)


def reference_row(bag: ROBEEmbeddingBag, x: int) -> torch.Tensor:
    w = bag.weight.detach().double()
    blocks = math.ceil(bag.embedding_dim / bag.block_size)
    h = HashPartition(bag.num_embeddings * blocks, bag.size, bag.seed)
    values = []
    for j in range(blocks):
        start = h(x * blocks + j)
        values += [w[(start + t) % bag.size] for t in range(bag.block_size)]
    return torch.stack(values[: bag.embedding_dim])


@FAST
@given(st.data())
def test_forward_equals_the_definition(data):
    n = data.draw(st.integers(1, 40))
    d = data.draw(st.integers(1, 9))
    size = data.draw(st.integers(1, 3 * n * d))
    z = data.draw(st.integers(1, d))
    mode = data.draw(st.sampled_from(["sum", "mean", "max"]))
    x, offsets, include_last, bags = data.draw(bag_inputs(n))
    bag = ROBEEmbeddingBag(n, d, size, block_size=z, seed=data.draw(st.integers(0, 9)), mode=mode,
                           include_last_offset=include_last, dtype=torch.float64)
    psw = torch.rand(x.shape, dtype=torch.float64) if mode == "sum" else None
    flat_w = psw.reshape(-1).tolist() if psw is not None else None
    expected, pos = [], 0
    for b in bags:
        weights = flat_w[pos:pos + len(b)] if flat_w is not None else None
        pos += len(b)
        expected.append(naive_pool([reference_row(bag, i) for i in b], weights, mode, d))
    torch.testing.assert_close(bag(x, offsets, psw), torch.stack(expected))
    assert sum(p.numel() for p in bag.parameters()) == size


def test_sizes_init_state_and_errors():
    torch.manual_seed(0)
    bag = ROBEEmbeddingBag(1000, 16, num_collisions=7)
    assert bag.size == math.ceil(16000 / 7) and bag.weight.abs().max() <= math.sqrt(1 / 1000)
    other_seed = ROBEEmbeddingBag(1000, 16, num_collisions=7, seed=1)
    with pytest.raises(RuntimeError, match="seed differs"):
        other_seed.load_state_dict(bag.state_dict())
    same = ROBEEmbeddingBag(1000, 16, num_collisions=7)
    same.load_state_dict(bag.state_dict())
    x = torch.randint(0, 1000, (3, 2))
    torch.testing.assert_close(same(x), bag(x))
    with pytest.raises(ValueError, match="exactly one of size and num_collisions"):
        ROBEEmbeddingBag(10, 4)
    with pytest.raises(ValueError, match="block_size=5 exceeds embedding_dim=4"):
        ROBEEmbeddingBag(10, 4, 8, block_size=5)
    with pytest.raises(IndexError, match="10"):
        ROBEEmbeddingBag(10, 4, 8)(torch.tensor([[10]]))
