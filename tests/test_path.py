"""PathEmbeddingBag: equals a naive per-index loop, gradients, init scale, sparse grads, errors."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.partitions import (
    PartitionFamily,
    QuotientPartition,
    RemainderPartition,
    generalized_qr,
    naive,
)
from compemb.path import PathEmbeddingBag
from _bags import bag_inputs, naive_pool
from _reference import gqr_sizes

FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------- naive reference
def _naive_compose(bag: PathEmbeddingBag, x: int, classes) -> torch.Tensor:
    """The composed vector of index x, one matrix-vector product at a time."""
    v = bag.weight[classes[0]]
    for j, maps in enumerate(bag.maps):
        c = classes[j + 1]
        for layer, w in enumerate(maps.weights):
            v = torch.stack([sum(v[i] * w[c, i, o] for i in range(w.shape[1])) for o in range(w.shape[2])])
            if maps.biases is not None:
                v = v + maps.biases[layer][c]
            if layer < len(maps.weights) - 1:
                v = {"relu": torch.relu, "tanh": torch.tanh}[bag.activation](v)
    return v


def _check_against_naive(bag, inp, offsets, bags, mode, psw, classes_of):
    out = bag(inp, offsets, per_sample_weights=psw)
    flat_w = None if psw is None else psw.reshape(-1).tolist()
    expected, pos = [], 0
    for b in bags:
        vecs = [_naive_compose(bag, x, classes_of(x)) for x in b]
        ws = None if flat_w is None else flat_w[pos : pos + len(b)]
        pos += len(b)
        expected.append(naive_pool(vecs, ws, mode, bag.embedding_dim, torch.float64))
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-10, atol=1e-12)


@FAST
@given(data=st.data())
def test_default_family_equals_naive_loop(data):
    n = data.draw(st.integers(2, 40), label="n")
    m = data.draw(st.integers(1, n), label="m")
    dim = data.draw(st.integers(1, 4), label="dim")
    hidden = data.draw(st.sampled_from([(), (3,), (2, 5)]), label="hidden")
    activation = data.draw(st.sampled_from(["relu", "tanh"]), label="activation")
    mode = data.draw(st.sampled_from(["sum", "mean", "max"]), label="mode")
    inp, offsets, last, bags = data.draw(bag_inputs(n, max_len=3), label="input")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    psw = None
    if mode == "sum" and data.draw(st.booleans(), label="psw"):
        psw = torch.rand(inp.shape, dtype=torch.float64, generator=gen) * 2 - 1
    bag = PathEmbeddingBag(
        n, dim, num_collisions=m, hidden_dims=hidden, activation=activation, mode=mode,
        include_last_offset=last, dtype=torch.float64,
    )
    with torch.no_grad():  # move biases off zero so they are exercised
        for maps in bag.maps:
            for b in maps.biases or []:
                b.uniform_(-0.3, 0.3, generator=gen)
    # default family: base table by quotient x // m, map by remainder x % m (Python ints)
    _check_against_naive(bag, inp, offsets, bags, mode, psw, lambda x: (x // m, x % m))


@FAST
@given(data=st.data())
def test_three_partition_family_equals_naive_loop(data):
    n = data.draw(st.integers(8, 60), label="n")
    family = generalized_qr(n, k=3)
    hidden = data.draw(st.sampled_from([(), (3,)]), label="hidden")
    mode = data.draw(st.sampled_from(["sum", "mean", "max"]), label="mode")
    inp, offsets, last, bags = data.draw(bag_inputs(n, max_len=3), label="input")
    bag = PathEmbeddingBag(n, 3, family=family, hidden_dims=hidden, mode=mode,
                           include_last_offset=last, dtype=torch.float64)
    sizes = gqr_sizes(n, 3)
    assert family.table_sizes == tuple(sizes)

    def classes_of(x):  # mixed-radix digits, least significant first
        digits = []
        for r in sizes:
            digits.append(x % r)
            x //= r
        return digits

    # the family's own digits must be the mixed-radix digits (generalized QR's definition)
    codes = family.encode(torch.arange(n))
    assert [classes_of(x) for x in range(n)] == codes.t().tolist()
    _check_against_naive(bag, inp, offsets, bags, mode, None, classes_of)


def test_identity_family_is_the_full_table():
    n, d = 30, 5
    bag = PathEmbeddingBag(n, d, family=naive(n), mode="sum", dtype=torch.float64)
    assert len(bag.maps) == 0 and bag.weight.shape == (n, d)
    gen = torch.Generator().manual_seed(4)
    inp = torch.randint(0, n, (50,), generator=gen)
    offsets = torch.tensor([0, 7, 7, 20, 33])
    psw = torch.rand(50, dtype=torch.float64, generator=gen)
    expected = torch.nn.functional.embedding_bag(inp, bag.weight, offsets, mode="sum", per_sample_weights=psw)
    torch.testing.assert_close(bag(inp, offsets, psw), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------- gradients
# m=5 > D=3 applies the maps by gathering per index, m=2 by one matmul against all classes
@pytest.mark.parametrize("hidden,activation,m", [((), "relu", 5), ((), "tanh", 2), ((4,), "tanh", 5), ((3, 4), "relu", 2)])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gradcheck(hidden, activation, m, mode):
    torch.manual_seed(0)
    n = 23
    bag = PathEmbeddingBag(n, 3, num_collisions=m, hidden_dims=hidden, activation=activation,
                           mode=mode, dtype=torch.float64)
    with torch.no_grad():
        for maps in bag.maps:
            for b in maps.biases or []:
                b.uniform_(-0.5, 0.5)
    inp = torch.randperm(n)[:9]  # distinct indices: no ties for max
    offsets = torch.tensor([0, 2, 2, 6])
    names = [name for name, _ in bag.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in bag.parameters())
    psw = torch.rand(9, dtype=torch.float64, requires_grad=True) if mode == "sum" else None

    def fn(*args):
        tensors = dict(zip(names, args[: len(names)]))
        weights = args[len(names)] if psw is not None else None
        return torch.func.functional_call(bag, tensors, (inp, offsets), {"per_sample_weights": weights})

    inputs = params + ((psw,) if psw is not None else ())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_sparse_gradients_match_dense_and_train_with_sgd_and_sparse_adam():
    torch.manual_seed(1)
    n = 50
    dense = PathEmbeddingBag(n, 4, num_collisions=4, hidden_dims=(6,), mode="sum")
    sparse = PathEmbeddingBag(n, 4, num_collisions=4, hidden_dims=(6,), mode="sum", sparse=True)
    sparse.load_state_dict(dense.state_dict())
    inp = torch.tensor([[3, 17], [49, 0], [22, 22]])
    dense(inp).square().sum().backward()
    sparse(inp).square().sum().backward()
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        assert p.grad.is_sparse, name
        torch.testing.assert_close(p.grad.to_dense(), q.grad)
    # untouched base rows (quotients other than 0, 4, 5, 12) get no gradient
    touched = {0, 4, 5, 12}
    rows = set(sparse.weight.grad.coalesce().indices()[0].tolist())
    assert rows == touched

    before = [p.detach().clone() for p in sparse.parameters()]
    torch.optim.SGD(sparse.parameters(), lr=0.1).step()
    torch.optim.SGD(dense.parameters(), lr=0.1).step()
    for p, q in zip(sparse.parameters(), dense.parameters()):
        torch.testing.assert_close(p, q)
    assert not torch.equal(before[0], sparse.weight.detach())

    opt = torch.optim.SparseAdam(list(sparse.parameters()), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss = sparse(inp).square().sum()
        loss.backward()
        opt.step()
    assert sparse(inp).square().sum() < loss  # it trains
    untouched = sorted(set(range(sparse.weight.shape[0])) - touched)
    torch.testing.assert_close(sparse.weight.detach()[untouched], before[0][untouched], rtol=0, atol=0)


# ---------------------------------------------------------------------------- init scale
@pytest.mark.parametrize(
    "hidden,activation", [((), "relu"), ((64,), "relu"), ((16, 48), "relu"), ((32,), "tanh")]
)
def test_init_scale_matches_full_table(hidden, activation):
    torch.manual_seed(2)
    n = 4096
    bag = PathEmbeddingBag(n, 32, num_collisions=16, hidden_dims=hidden, activation=activation)
    with torch.no_grad():
        composed = bag.compose(torch.arange(n))
    target = 1.0 / (3 * n)  # variance of U(-sqrt(1/n), sqrt(1/n))
    assert 0.75 * target < composed.var().item() < 1.25 * target
    assert abs(composed.mean().item()) < 0.1 * math.sqrt(target)


def test_composed_embeddings_are_distinct():
    torch.manual_seed(3)
    for hidden in [(), (8,)]:
        n = 97
        bag = PathEmbeddingBag(n, 4, num_collisions=7, hidden_dims=hidden, dtype=torch.float64)
        with torch.no_grad():
            composed = bag.compose(torch.arange(n))
        assert torch.unique(composed, dim=0).shape[0] == n
        assert torch.cdist(composed, composed).add(torch.eye(n, dtype=torch.float64)).min() > 0


@pytest.mark.parametrize("m,sparse", [(2, False), (7, False), (2, True)])
def test_all_bags_empty(m, sparse):
    bag = PathEmbeddingBag(30, 4, num_collisions=m, hidden_dims=(5,), mode="max", sparse=sparse)
    out = bag(torch.zeros(0, dtype=torch.long), torch.tensor([0, 0, 0]))
    assert out.shape == (3, 4) and not out.any()
    out.sum().backward()
    for name, p in bag.named_parameters():  # every parameter in the graph, with a zero gradient
        assert p.grad is not None and p.grad.is_sparse == sparse, name
        assert not p.grad.to_dense().any(), name


def test_reset_parameters_redraws_and_extra_repr():
    bag = PathEmbeddingBag(100, 8, num_collisions=4, hidden_dims=(16,))
    before = bag.maps[0].weights[0].detach().clone()
    bag.reset_parameters()
    assert not torch.equal(before, bag.maps[0].weights[0])
    text = repr(bag)
    assert "100, 8" in text and "table_sizes=(25, 4)" in text and "hidden_dims=(16,)" in text
    assert bag.maps[0].weights[0].shape == (4, 8, 16) and bag.maps[0].weights[1].shape == (4, 16, 8)


# ---------------------------------------------------------------------------- errors
def test_non_complementary_family_refused_unless_allowed():
    n = 20
    family = PartitionFamily([QuotientPartition(n, 4), RemainderPartition(n, 2)])
    assert not family.is_complementary()
    with pytest.raises(ValueError, match="not complementary"):
        PathEmbeddingBag(n, 4, family=family)
    bag = PathEmbeddingBag(n, 4, family=family, allow_collisions=True)
    assert bag(torch.tensor([[0, 19]])).shape == (1, 4)


@pytest.mark.parametrize("bad", [20, 123, -1])
def test_out_of_range_index_names_module_value_and_n(bad):
    bag = PathEmbeddingBag(20, 4)
    with pytest.raises(IndexError) as info:
        bag(torch.tensor([1, bad, 2]), torch.tensor([0, 2]))
    message = str(info.value)
    assert "PathEmbeddingBag" in message and str(bad) in message and "20" in message


def test_bad_inputs_and_arguments():
    bag = PathEmbeddingBag(20, 4, mode="mean")
    with pytest.raises(TypeError, match="integer"):
        bag(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        bag(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2))
    with pytest.raises(ValueError, match="offsets"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="offsets"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="activation"):
        PathEmbeddingBag(20, 4, hidden_dims=(3,), activation="swish")
    with pytest.raises(ValueError, match="hidden_dims"):
        PathEmbeddingBag(20, 4, hidden_dims=(3, 0))
    with pytest.raises(ValueError, match="mode"):
        PathEmbeddingBag(20, 4, mode="min")
    with pytest.raises(ValueError, match="num_embeddings=21"):
        PathEmbeddingBag(21, 4, family=generalized_qr(20, k=2))
    with pytest.raises(TypeError, match="embedding_dim"):
        PathEmbeddingBag(20, 4.0)
