"""Shared test helpers: nn.EmbeddingBag-style inputs drawn by hypothesis, a naive pooling and
combination, and a state dict's save / load round trip."""
import io

import torch
from hypothesis import strategies as st


def naive_pool(vectors, weights, mode, dim, dtype=torch.float64):
    """Pool a Python list of row vectors one by one: the definition, with no shortcuts."""
    if not vectors:
        return torch.zeros(dim, dtype=dtype)
    if weights is not None:
        vectors = [v * w for v, w in zip(vectors, weights)]
    stacked = torch.stack(vectors)
    if mode == "sum":
        return stacked.sum(0)
    if mode == "mean":
        return stacked.sum(0) / len(vectors)
    return stacked.max(0).values


def combine_ref(vectors, operation):
    """One vector (or one batch of rows) per table, combined: concatenated, multiplied or added."""
    if operation == "concat":
        return torch.cat(vectors, dim=-1)
    acc = vectors[0]
    for v in vectors[1:]:
        acc = acc * v if operation == "mult" else acc + v
    return acc


def round_trip(state):
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint goes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@st.composite
def bag_inputs(draw, n, max_len=4):
    """(input, offsets, include_last_offset, bags as lists of ints) in one of the torch forms."""
    form = draw(st.sampled_from(["1d", "1d_last", "2d"]))
    num_bags = draw(st.integers(1, 4))
    if form == "2d":
        length = draw(st.integers(1, 3))
        bags = [draw(st.lists(st.integers(0, n - 1), min_size=length, max_size=length)) for _ in range(num_bags)]
        return torch.tensor(bags, dtype=torch.long), None, False, bags
    bags = [draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=max_len)) for _ in range(num_bags)]
    flat = torch.tensor([i for b in bags for i in b], dtype=torch.long)
    starts = [0]
    for b in bags:
        starts.append(starts[-1] + len(b))
    if form == "1d_last":
        return flat, torch.tensor(starts), True, bags
    return flat, torch.tensor(starts[:-1]), False, bags
