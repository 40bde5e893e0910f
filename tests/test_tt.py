"""Tensor-train tables (compemb.tt) against a dense reconstruction of the TT matrix."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.tt import TTEmbeddingBag, balanced_factors, tt_num_parameters, tt_shapes
from _bags import bag_inputs, round_trip

FAST = settings(max_examples=25, deadline=None)


def dense_table(bag: TTEmbeddingBag) -> torch.Tensor:
    """The TT matrix from the definition: one einsum over all cores, rows ``i_0 + p_0 i_1 + ...``
    (``i_0`` least significant), columns row-major in ``(a_0, ..., a_{c-1})``."""
    p, q, r = bag.tt_p_shapes, bag.tt_q_shapes, bag.tt_ranks
    cores = [c.detach().view(p[k], r[k], q[k], r[k + 1]) for k, c in enumerate(bag.cores)]
    c = len(cores)
    letters = "abcdefgh"
    ins = [f"i{k}R{k}a{k}R{k + 1}" for k in range(c)]
    # einsum wants single letters: digit k -> "ijkl"[k], rank k -> "RSTUV"[k], column k -> letters[k]
    sub = {f"i{k}": "ijkl"[k] for k in range(c)}
    sub.update({f"R{k}": "RSTUV"[k] for k in range(c + 1)})
    sub.update({f"a{k}": letters[k] for k in range(c)})

    def spell(term: str) -> str:
        out, pos = "", 0
        while pos < len(term):
            key = term[pos:pos + 2]
            out += sub[key]
            pos += 2
        return out

    rows = "".join("ijkl"[k] for k in reversed(range(c)))  # most significant digit first
    cols = "".join(letters[k] for k in range(c))
    spec = ",".join(spell(t) for t in ins) + "->" + rows + cols
    full = torch.einsum(spec, *cores)
    return full.reshape(math.prod(p), math.prod(q))[: bag.num_embeddings, : bag.embedding_dim]


@st.composite
def tt_problems(draw):
    n = draw(st.integers(1, 200))
    d = draw(st.integers(1, 12))
    c = draw(st.integers(1, 4))
    given_shapes = draw(st.booleans())
    ranks = draw(st.lists(st.integers(1, 4), min_size=c - 1, max_size=c - 1))
    kwargs = {}
    if given_shapes:  # any factorisations that cover n and d
        p = draw(st.lists(st.integers(1, 8), min_size=c, max_size=c))
        q = draw(st.lists(st.integers(1, 4), min_size=c, max_size=c))
        while math.prod(p) < n:
            p[0] += 1
        while math.prod(q) < d:
            q[-1] += 1
        kwargs = {"tt_p_shapes": p, "tt_q_shapes": q}
    else:
        kwargs = {"num_cores": c}
    return n, d, ranks, kwargs


@FAST
@given(tt_problems())
def test_lookups_equal_the_dense_tt_matrix(problem):
    n, d, ranks, kwargs = problem
    bag = TTEmbeddingBag(n, d, tt_rank=ranks if ranks else 1, dtype=torch.float64, mode="sum", **kwargs)
    full = dense_table(bag)
    torch.testing.assert_close(bag.materialize(chunk_size=7), full)
    ids = torch.arange(n)
    torch.testing.assert_close(bag(ids.view(-1, 1)), full)
    assert sum(p.numel() for p in bag.parameters()) == tt_num_parameters(bag.tt_p_shapes, bag.tt_q_shapes,
                                                                          bag.tt_ranks)


@FAST
@given(st.data())
def test_forward_equals_nn_embedding_bag_on_the_dense_table(data):
    n = data.draw(st.integers(1, 60))
    mode = data.draw(st.sampled_from(["sum", "mean", "max"]))
    x, offsets, include_last, _ = data.draw(bag_inputs(n))
    bag = TTEmbeddingBag(n, 6, tt_rank=3, mode=mode, include_last_offset=include_last, dtype=torch.float64)
    psw = torch.rand(x.shape, dtype=torch.float64) if mode == "sum" else None
    expected = F.embedding_bag(x, dense_table(bag), offsets, mode=mode, per_sample_weights=psw,
                               include_last_offset=include_last)
    torch.testing.assert_close(bag(x, offsets, psw), expected)


def test_gradients_match_the_dense_reference():
    torch.manual_seed(0)
    bag = TTEmbeddingBag(30, 4, tt_rank=[2, 3], dtype=torch.float64, mode="sum")
    x = torch.tensor([[1, 29, 1], [0, 7, 7]])
    bag(x).pow(2).sum().backward()
    # the reference: the same loss through the dense table, built by one einsum from leaf copies
    cores = [c.detach().clone().requires_grad_(True) for c in bag.cores]
    p, q, r = bag.tt_p_shapes, bag.tt_q_shapes, bag.tt_ranks
    full = torch.einsum("iaxR,jRyS,kSzb->kjixyz",
                        *[c.view(p[k], r[k], q[k], r[k + 1]) for k, c in enumerate(cores)]).reshape(-1, 4)[:30]
    F.embedding_bag(x, full, mode="sum").pow(2).sum().backward()
    for got, want in zip(bag.cores, cores):
        torch.testing.assert_close(got.grad, want.grad)

    def forward(*values):
        return torch.func.functional_call(bag, {f"cores.{i}": v for i, v in enumerate(values)}, (x,))

    assert torch.autograd.gradcheck(forward, tuple(c.detach().clone().requires_grad_() for c in bag.cores))


@pytest.mark.parametrize("n, d, ranks, cores", [(4000, 16, 8, 3), (3000, 8, [2, 5], 3), (2500, 12, 16, 2),
                                                (5000, 16, 3, 4)])
def test_initialisation_matches_a_full_tables_variance(n, d, ranks, cores):
    # entries of a full table U(-sqrt(1/n), sqrt(1/n)) have variance 1 / (3 n)
    variances, means = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        w = TTEmbeddingBag(n, d, tt_rank=ranks, num_cores=cores).materialize()
        variances.append(float(w.var()) * 3 * n)
        means.append(float(w.mean()) * math.sqrt(3 * n))
    assert 0.8 < sum(variances) / len(variances) < 1.2
    assert abs(sum(means) / len(means)) < 0.1


def test_automatic_shapes_and_balanced_factors():
    assert tt_shapes(1000, 16) == ((10, 10, 10), (4, 2, 2))
    p, q = tt_shapes(10131227, 16)
    assert math.prod(p) >= 10131227 and max(p) - min(p) <= 1 and math.prod(q) == 16
    for value in range(1, 65):
        for k in range(1, 5):
            got = balanced_factors(value, k)
            assert math.prod(got) == value and len(got) == k and list(got) == sorted(got, reverse=True)
            divisors = [f for f in range(1, value + 1) if value % f == 0]
            best = min(max(f) for f in itertools.product(divisors, repeat=k) if math.prod(f) == value)
            assert max(got) == best


def test_constructor_errors_name_the_value():
    with pytest.raises(ValueError, match=r"tt_p_shapes \(2, 2\) have product 4 < num_embeddings = 5"):
        TTEmbeddingBag(5, 4, tt_p_shapes=(2, 2), tt_q_shapes=(2, 2))
    with pytest.raises(ValueError, match="tt_q_shapes"):
        TTEmbeddingBag(5, 5, tt_p_shapes=(3, 2), tt_q_shapes=(2, 2))
    with pytest.raises(ValueError, match="both have num_cores = 2"):
        TTEmbeddingBag(5, 4, tt_p_shapes=(3, 2), tt_q_shapes=(2, 1, 2))
    with pytest.raises(ValueError, match="tt_rank must be >= 1"):
        TTEmbeddingBag(5, 4, tt_rank=0)
    with pytest.raises(ValueError, match="3 cores need 2"):
        TTEmbeddingBag(5, 4, tt_rank=[2])
    bag = TTEmbeddingBag(5, 4)
    with pytest.raises(IndexError, match="5"):
        bag(torch.tensor([[5]]))
    with pytest.raises(TypeError, match="per_sample_weights"):
        TTEmbeddingBag(5, 4, mode="sum")(torch.tensor([[1]]), per_sample_weights=torch.ones(1, 1, dtype=torch.float64))


def test_state_round_trip_mapping_check_sparse_and_empty_bags():
    torch.manual_seed(0)
    a = TTEmbeddingBag(100, 8, tt_rank=3, tt_p_shapes=(5, 5, 4), mode="sum")
    b = TTEmbeddingBag(100, 8, tt_rank=3, tt_p_shapes=(5, 5, 4), mode="sum")
    b.load_state_dict(round_trip(a.state_dict()))
    x = torch.randint(0, 100, (4, 3))
    torch.testing.assert_close(b(x), a(x))
    c = TTEmbeddingBag(90, 8, tt_rank=3, tt_p_shapes=(5, 5, 4), mode="sum")  # the same cores, another n
    with pytest.raises(RuntimeError, match="num_embeddings differs"):
        c.load_state_dict(a.state_dict())
    sparse = TTEmbeddingBag(100, 8, tt_rank=3, sparse=True)
    sparse(x).sum().backward()
    assert all(p.grad.is_sparse for p in sparse.cores)
    out = a(torch.tensor([], dtype=torch.long), torch.tensor([0, 0]))
    assert out.shape == (2, 8) and not out.any()
