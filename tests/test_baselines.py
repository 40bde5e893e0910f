"""HashEmbeddingBag, md_dims and MixedDimEmbeddingBag."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.baselines import HashEmbeddingBag, MixedDimEmbeddingBag, md_dims
from compemb.partitions import HashPartition
from _bags import bag_inputs, naive_pool
from _reference import sparse_adam_first_step

FAST = settings(max_examples=30, deadline=None)


def _expected(bags, psw, mode, dim, vector_of):
    flat_w = None if psw is None else psw.reshape(-1).tolist()
    rows, pos = [], 0
    for b in bags:
        ws = None if flat_w is None else flat_w[pos : pos + len(b)]
        pos += len(b)
        rows.append(naive_pool([vector_of(x) for x in b], ws, mode, dim))
    return torch.stack(rows)


def _draw_mode_and_weights(data, inp):
    mode = data.draw(st.sampled_from(["sum", "mean", "max"]), label="mode")
    psw = None
    if mode == "sum" and data.draw(st.booleans(), label="psw"):
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="psw_seed"))
        psw = torch.rand(inp.shape, dtype=torch.float64, generator=gen) * 2 - 1
    return mode, psw


# ---------------------------------------------------------------------------- hashing trick
@FAST
@given(data=st.data())
def test_hash_equals_naive_loop(data):
    n = data.draw(st.integers(1, 50), label="n")
    buckets = data.draw(st.integers(1, n), label="buckets")
    kind = data.draw(st.sampled_from(["remainder", "universal"]), label="hash")
    seed = data.draw(st.integers(0, 5), label="seed")
    inp, offsets, last, bags = data.draw(bag_inputs(n), label="input")
    mode, psw = _draw_mode_and_weights(data, inp)
    bag = HashEmbeddingBag(n, 3, num_buckets=buckets, hash=kind, seed=seed, mode=mode,
                           include_last_offset=last, dtype=torch.float64)
    if kind == "remainder":
        row_of = lambda x: x % buckets  # noqa: E731
    else:
        part = HashPartition(n, buckets, seed)
        row_of = lambda x: int(part(torch.tensor([x]))[0])  # noqa: E731
    expected = _expected(bags, psw, mode, 3, lambda x: bag.weight[row_of(x)])
    torch.testing.assert_close(bag(inp, offsets, per_sample_weights=psw), expected, rtol=1e-12, atol=1e-14)


def test_hash_sizes_init_and_universal_spread():
    torch.manual_seed(0)
    n = 10_000
    bag = HashEmbeddingBag(n, 16, num_collisions=3)
    assert bag.weight.shape == (math.ceil(n / 3), 16) and bag.num_buckets == 3334
    bound = math.sqrt(1 / n)
    assert bag.weight.abs().max() <= bound
    target = 1 / (3 * n)
    assert 0.75 * target < bag.weight.var().item() < 1.25 * target
    # a universal hash fills the buckets about evenly (unlike nothing in particular: a bug that
    # sends everything to a few rows would fail this)
    uni = HashEmbeddingBag(n, 2, num_buckets=100, hash="universal", seed=7)
    counts = torch.bincount(uni.buckets(torch.arange(n)), minlength=100)
    assert counts.min() > 50 and counts.max() < 150
    other = HashEmbeddingBag(n, 2, num_buckets=100, hash="universal", seed=8)
    assert not torch.equal(uni.buckets(torch.arange(n)), other.buckets(torch.arange(n)))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_hash_and_md_gradcheck(mode):
    torch.manual_seed(1)
    n = 30
    inp = torch.randperm(n)[:8]
    offsets = torch.tensor([0, 3, 3, 5])
    for bag in (
        HashEmbeddingBag(n, 3, num_buckets=11, mode=mode, dtype=torch.float64),
        MixedDimEmbeddingBag(n, 5, md_dim=2, mode=mode, dtype=torch.float64),
    ):
        names = [name for name, _ in bag.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in bag.parameters())
        psw = torch.rand(8, dtype=torch.float64, requires_grad=True) if mode == "sum" else None

        def fn(*args):
            weights = args[len(names)] if psw is not None else None
            return torch.func.functional_call(
                bag, dict(zip(names, args[: len(names)])), (inp, offsets), {"per_sample_weights": weights}
            )

        inputs = params + ((psw,) if psw is not None else ())
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_hash_sparse_gradients_sgd_and_sparse_adam():
    torch.manual_seed(2)
    bag = HashEmbeddingBag(100, 4, num_buckets=10, mode="sum", sparse=True)
    inp = torch.tensor([3, 13, 57, 99])
    bag(inp, torch.tensor([0, 2])).square().sum().backward()
    assert bag.weight.grad.is_sparse
    assert set(bag.weight.grad.coalesce().indices()[0].tolist()) == {3, 7, 9}
    before = bag.weight.detach().clone()
    torch.optim.SGD(bag.parameters(), lr=0.5).step()
    changed = (bag.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 7, 9]
    opt = torch.optim.SparseAdam(list(bag.parameters()), lr=0.01)
    opt.zero_grad()
    bag(inp, torch.tensor([0, 2])).square().sum().backward()
    before = bag.weight.detach().clone()
    opt.step()
    want = sparse_adam_first_step(before, bag.weight.grad.to_dense(), lr=0.01)
    torch.testing.assert_close(bag.weight.detach(), want)
    assert (bag.weight.detach() != before).any(1).nonzero().flatten().tolist() == [3, 7, 9]


def test_hash_errors():
    with pytest.raises(ValueError, match="exactly one"):
        HashEmbeddingBag(10, 4)
    with pytest.raises(ValueError, match="exactly one"):
        HashEmbeddingBag(10, 4, num_buckets=2, num_collisions=5)
    with pytest.raises(ValueError, match="num_buckets=11"):
        HashEmbeddingBag(10, 4, num_buckets=11)
    with pytest.raises(ValueError, match="'md5'"):
        HashEmbeddingBag(10, 4, num_buckets=5, hash="md5")
    bag = HashEmbeddingBag(10, 4, num_buckets=5)
    for bad in (10, -3):
        with pytest.raises(IndexError) as info:
            bag(torch.tensor([[1, bad]]))
        assert "HashEmbeddingBag" in str(info.value) and str(bad) in str(info.value) and "10" in str(info.value)
    with pytest.raises(TypeError, match="HashEmbeddingBag: input must be an integer tensor.*float32"):
        bag(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        HashEmbeddingBag(10, 4, num_buckets=5, mode="max")(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2))
    assert "num_buckets=5" in repr(bag)


# ---------------------------------------------------------------------------- md_dims
def test_md_dims_hand_computed():
    # smallest table (n=10) gets base 16; n=1000: 16 * (10/1000)^0.5 = 1.6 -> 2;
    # n=100000: 16 * (10/1e5)^0.5 = 0.16 -> clamped to 1
    assert md_dims([1000, 10, 100000], alpha=0.5, base_dim=16) == [2, 16, 1]
    # alpha 0.25 without power-of-two rounding: 16 * 0.1^0.5 = 5.06 -> 5; 16 * 0.01^0.5 = 1.6 -> 2
    assert md_dims([10, 1000, 100000], alpha=0.25, base_dim=16, round_dims=False) == [16, 5, 2]
    # with rounding 5.06 -> 5 -> 4 (2^round(log2 5) = 2^2)
    assert md_dims([10, 1000, 100000], alpha=0.25, base_dim=16) == [16, 4, 2]
    # frequencies divide the proxy: table 1 queried 100x as often looks 100x smaller
    assert md_dims([10, 1000], alpha=0.5, base_dim=16, frequencies=[1, 100]) == [16, 16]
    assert md_dims([10, 1000, 100000], alpha=1.0, base_dim=16, min_dim=2) == [16, 2, 2]


@FAST
@given(
    cards=st.lists(st.integers(1, 10**8), min_size=1, max_size=8),
    alpha=st.floats(0, 2),
    base_log=st.integers(0, 7),
    round_dims=st.booleans(),
)
def test_md_dims_properties(cards, alpha, base_log, round_dims):
    base = 2**base_log
    dims = md_dims(cards, alpha, base, round_dims=round_dims)
    assert len(dims) == len(cards)
    assert all(1 <= d <= base for d in dims)
    assert dims[cards.index(min(cards))] == base
    order = sorted(range(len(cards)), key=lambda i: cards[i])
    assert all(dims[a] >= dims[b] for a, b in zip(order, order[1:]))  # bigger table, no wider
    if round_dims:
        assert all(d & (d - 1) == 0 for d in dims)
    else:
        for n, d in zip(cards, dims):  # the power rule before rounding, within rounding error
            ideal = base * (min(cards) / n) ** alpha
            assert d == max(1, math.floor(ideal + 0.5))
    assert md_dims(cards, 0.0, base, round_dims=round_dims) == [base] * len(cards)


def test_md_dims_errors():
    with pytest.raises(ValueError, match="empty"):
        md_dims([], 0.5, 16)
    with pytest.raises(ValueError, match="-0.5"):
        md_dims([10], -0.5, 16)
    with pytest.raises(ValueError, match="0"):
        md_dims([10, 0], 0.5, 16)
    with pytest.raises(ValueError, match="min_dim=8"):
        md_dims([10], 0.5, 4, min_dim=8)
    with pytest.raises(ValueError, match="frequencies"):
        md_dims([10, 20], 0.5, 4, frequencies=[1.0])


# ---------------------------------------------------------------------------- mixed dimension
@FAST
@given(data=st.data())
def test_mixed_dim_equals_naive_loop(data):
    n = data.draw(st.integers(1, 40), label="n")
    dim = data.draw(st.integers(1, 5), label="dim")
    md = data.draw(st.integers(1, dim), label="md_dim")
    inp, offsets, last, bags = data.draw(bag_inputs(n), label="input")
    mode, psw = _draw_mode_and_weights(data, inp)
    bag = MixedDimEmbeddingBag(n, dim, md_dim=md, mode=mode, include_last_offset=last, dtype=torch.float64)
    assert (bag.projection is None) == (md == dim)

    def vector_of(x):  # project each row: P @ w_x (identity when md == dim)
        row = bag.weight[x]
        if bag.projection is None:
            return row
        return torch.stack([sum(bag.projection[o, i] * row[i] for i in range(md)) for o in range(dim)])

    expected = _expected(bags, psw, mode, dim, vector_of)
    torch.testing.assert_close(bag(inp, offsets, per_sample_weights=psw), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("md_dim", [1, 4, 16])
def test_mixed_dim_init_scale(md_dim):
    torch.manual_seed(3)
    n = 4096
    bag = MixedDimEmbeddingBag(n, 16, md_dim=md_dim, mode="sum")
    with torch.no_grad():
        out = bag(torch.arange(n).unsqueeze(1))
    target = 1 / (3 * n)
    assert out.shape == (n, 16)
    assert 0.75 * target < out.var().item() < 1.25 * target


def test_mixed_dim_sparse_weight_dense_projection():
    torch.manual_seed(4)
    bag = MixedDimEmbeddingBag(50, 8, md_dim=2, mode="sum", sparse=True)
    sparse_opt = torch.optim.SparseAdam([bag.weight], lr=0.01)
    dense_opt = torch.optim.Adam([bag.projection], lr=0.01)
    inp = torch.tensor([[1, 2], [40, 49]])
    before = bag.weight.detach().clone()
    for _ in range(2):
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        bag(inp).square().sum().backward()
        assert bag.weight.grad.is_sparse and not bag.projection.grad.is_sparse
        sparse_opt.step()
        dense_opt.step()
    changed = (bag.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [1, 2, 40, 49]


def test_mixed_dim_errors():
    with pytest.raises(ValueError, match="md_dim=9"):
        MixedDimEmbeddingBag(10, 8, md_dim=9)
    with pytest.raises(ValueError, match="md_dim"):
        MixedDimEmbeddingBag(10, 8, md_dim=0)
    bag = MixedDimEmbeddingBag(10, 8, md_dim=2)
    with pytest.raises(IndexError) as info:
        bag(torch.tensor([0, 10]), torch.tensor([0]))
    assert "MixedDimEmbeddingBag" in str(info.value) and "10" in str(info.value)
    assert "md_dim=2" in repr(bag)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_all_bags_empty_give_zeros(mode):
    for bag in (HashEmbeddingBag(30, 4, num_buckets=7, mode=mode), MixedDimEmbeddingBag(30, 4, md_dim=2, mode=mode)):
        out = bag(torch.zeros(0, dtype=torch.long), torch.tensor([0, 0]))
        assert out.shape == (2, 4) and not out.any()
        out.sum().backward()
        for name, p in bag.named_parameters():  # every parameter in the graph, with a zero gradient
            assert p.grad is not None and not p.grad.any(), (type(bag).__name__, name)


def test_hash_and_mixed_dim_from_pretrained():
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(7, 3, dtype=torch.float64, generator=gen)
    bag = HashEmbeddingBag.from_pretrained(table, num_embeddings=30, mode="sum")
    assert bag.num_buckets == 7 and bag.weight is not None and not bag.weight.requires_grad
    x = torch.tensor([[3, 29], [0, 14]])
    want = table[x % 7].sum(1)
    torch.testing.assert_close(bag(x), want)
    uni = HashEmbeddingBag.from_pretrained(table, num_embeddings=30, hash="universal", seed=3, freeze=False)
    assert uni.weight.requires_grad
    torch.testing.assert_close(uni(x), table[uni.buckets(x)].mean(1))
    with pytest.raises(ValueError, match="2-D"):
        HashEmbeddingBag.from_pretrained(torch.randn(7), num_embeddings=30)

    weight, proj = torch.randn(30, 2, dtype=torch.float64, generator=gen), torch.randn(5, 2, dtype=torch.float64, generator=gen)
    md = MixedDimEmbeddingBag.from_pretrained(weight, proj, mode="sum")
    assert (md.num_embeddings, md.embedding_dim, md.md_dim) == (30, 5, 2)
    torch.testing.assert_close(md(x), weight[x].sum(1) @ proj.t())
    plain = MixedDimEmbeddingBag.from_pretrained(weight, freeze=False)
    assert plain.projection is None and plain.embedding_dim == 2 and plain.weight.requires_grad
    with pytest.raises(ValueError, match=r"projection.*\(5, 3\)"):
        MixedDimEmbeddingBag.from_pretrained(weight, torch.randn(5, 3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_dim_honours_half_precision_dtypes(dtype):
    # nn.init.orthogonal_ has no CPU QR for half types: the projection used to fail to initialise
    bag = MixedDimEmbeddingBag(50, 8, md_dim=2, mode="sum", dtype=dtype)
    assert bag.weight.dtype == dtype and bag.projection.dtype == dtype
    gram = bag.projection.float().t() @ bag.projection.float()
    torch.testing.assert_close(gram, torch.eye(2) * 4.0, rtol=0, atol=0.05)  # orthogonal columns, gain^2 = 8/2
    assert bag(torch.tensor([[1, 49]])).dtype == dtype


def test_hash_seed_is_validated_for_every_hash():
    with pytest.raises(TypeError, match="seed"):
        HashEmbeddingBag(10, 4, num_buckets=3, seed="a")


@pytest.mark.parametrize("kind", ["hash", "md", "md_full_width"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_scale_grad_by_freq_divides_by_the_row_count(kind, mode):
    # F.embedding_bag miscounts (torch 2.13 CPU: rows 1 and 2 of [0, 0, 1, 2, 0, 3] in one-index
    # bags get a third of their gradient); the baselines must divide by the true count, as
    # F.embedding and the compositional modules do
    gen = torch.Generator().manual_seed(3)
    make = {"hash": lambda s: HashEmbeddingBag(40, 3, num_buckets=4, mode=mode, scale_grad_by_freq=s,
                                               dtype=torch.float64),
            "md": lambda s: MixedDimEmbeddingBag(40, 3, md_dim=2, mode=mode, scale_grad_by_freq=s, dtype=torch.float64),
            "md_full_width": lambda s: MixedDimEmbeddingBag(40, 3, mode=mode, scale_grad_by_freq=s,
                                                            dtype=torch.float64)}[kind]
    plain, scaled = make(False), make(True)
    scaled.load_state_dict(plain.state_dict())
    x = torch.tensor([0, 0, 1, 2, 0, 3, 6, 6])
    rows = x % 4 if kind == "hash" else x
    for offsets in (torch.arange(8), torch.tensor([0, 3, 3, 5])):
        for bag in (plain, scaled):
            bag.zero_grad()
        out = plain(x, offsets)
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        out.backward(g)
        scaled(x, offsets).backward(g)
        counts = torch.bincount(rows, minlength=plain.weight.shape[0]).clamp(min=1).double().unsqueeze(1)
        torch.testing.assert_close(scaled.weight.grad, plain.weight.grad / counts)
