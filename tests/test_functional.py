"""Tests of the functional core (compemb.functional) and the torch reference backend."""
from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torch.nn.functional as F

from compemb import functional as CF
from compemb.kernels import get_backend, resolve_backend
from compemb.options import BagOptions
from _bags import combine_ref
from _reference import crt_sizes

OPS = CF.OPERATIONS
MODES = CF.MODES
COMPOSES = CF.COMPOSES


# ----------------------------------------------------------------------------------------------
# a naive per-index Python loop: the definition, written as plainly as possible


def naive_bag(codes, offsets, weights, operation, mode, compose, psw=None):
    """Loop over bags and indices; float64; empty bags give zeros."""
    k = len(weights)
    ws = [w.detach().double() for w in weights]
    width = sum(w.shape[1] for w in ws) if operation == "concat" else ws[0].shape[1]
    out = torch.zeros(len(offsets) - 1, width, dtype=torch.float64)

    def pool(vectors):
        if not vectors:
            return None
        if mode == "max":
            acc = vectors[0].clone()
            for v in vectors[1:]:
                acc = torch.maximum(acc, v)
            return acc
        acc = torch.zeros_like(vectors[0])
        for v in vectors:
            acc = acc + v
        return acc / len(vectors) if mode == "mean" else acc

    for b in range(len(offsets) - 1):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        if lo == hi:
            continue
        scale = [1.0 if psw is None else float(psw[j]) for j in range(lo, hi)]
        if compose == "before_pool":
            vectors = [
                combine_ref([ws[i][int(codes[i, j])] for i in range(k)], operation) * scale[j - lo]
                for j in range(lo, hi)
            ]
            out[b] = pool(vectors)
        else:
            pooled = [pool([ws[i][int(codes[i, j])] * scale[j - lo] for j in range(lo, hi)]) for i in range(k)]
            out[b] = combine_ref(pooled, operation)
    return out


@st.composite
def bag_problems(draw, fixed_length=None):
    """Random codes, offsets, tables and configuration (shapes drawn by hypothesis)."""
    operation = draw(st.sampled_from(OPS))
    mode = draw(st.sampled_from(MODES))
    compose = draw(st.sampled_from(COMPOSES))
    k = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 6)) for _ in range(k)]
    if operation == "concat":
        dims = [draw(st.integers(1, 3)) for _ in range(k)]
    else:
        dims = [draw(st.integers(1, 4))] * k
    num_bags = draw(st.integers(0, 5))
    if fixed_length is None:
        lengths = [draw(st.integers(0, 4)) for _ in range(num_bags)]
    elif fixed_length == "any":
        lengths = [draw(st.integers(1, 4))] * num_bags
    else:
        lengths = [fixed_length] * num_bags
    use_psw = mode == "sum" and draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    n_idx = sum(lengths)
    if n_idx:
        codes = torch.stack([torch.randint(0, s, (n_idx,), generator=gen) for s in sizes])
    else:
        codes = torch.zeros(k, 0, dtype=torch.long)
    offsets = torch.tensor([0] + list(itertools.accumulate(lengths)), dtype=torch.long)
    weights = [torch.randn(s, d, generator=gen, dtype=torch.float64) for s, d in zip(sizes, dims)]
    psw = torch.randn(n_idx, generator=gen, dtype=torch.float64) if use_psw else None
    return codes, offsets, weights, operation, mode, compose, psw


@settings(max_examples=150)
@given(bag_problems())
def test_reference_equals_naive_loop(problem):
    codes, offsets, weights, operation, mode, compose, psw = problem
    got = CF.embedding_bag_codes(codes, offsets, weights, operation, mode, compose, psw)
    want = naive_bag(codes, offsets, weights, operation, mode, compose, psw)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@settings(max_examples=60)
@given(bag_problems(fixed_length="any"))
def test_reference_equals_naive_loop_fixed_length_bags(problem):
    # every bag has the same length: the reshape fast path
    codes, offsets, weights, operation, mode, compose, psw = problem
    got = CF.embedding_bag_codes(codes, offsets, weights, operation, mode, compose, psw)
    torch.testing.assert_close(got, naive_bag(codes, offsets, weights, operation, mode, compose, psw))


@settings(max_examples=40)
@given(bag_problems(fixed_length=1))
def test_reference_equals_naive_loop_one_hot_bags(problem):
    # one index per bag: before_pool is computed as after_pool (per-sample weight applied once)
    codes, offsets, weights, operation, mode, compose, psw = problem
    got = CF.embedding_bag_codes(codes, offsets, weights, operation, mode, compose, psw)
    torch.testing.assert_close(got, naive_bag(codes, offsets, weights, operation, mode, compose, psw))


@settings(max_examples=40)
@given(bag_problems(), st.booleans())
def test_sparse_and_low_precision_paths_agree(problem, bf16):
    codes, offsets, weights, operation, mode, compose, psw = problem
    want = naive_bag(codes, offsets, weights, operation, mode, compose, psw)
    if bf16:
        ws = [w.to(torch.bfloat16) for w in weights]
        p = None if psw is None else psw.to(torch.bfloat16)
        got = CF.embedding_bag_codes(codes, offsets, ws, operation, mode, compose, p)
        assert got.dtype == torch.bfloat16
        want = naive_bag(codes, offsets, ws, operation, mode, compose, p)
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)
    else:
        ws = [w.clone().requires_grad_() for w in weights]
        got = CF.embedding_bag_codes(codes, offsets, ws, operation, mode, compose, psw, sparse=True)
        torch.testing.assert_close(got, want)
        got.sum().backward()
        for w in ws:
            assert w.grad is not None and w.grad.is_sparse


# ----------------------------------------------------------------------------------------------
# composition semantics


@settings(max_examples=60)
@given(bag_problems())
def test_add_and_concat_commute_with_sum_and_mean_pooling(problem):
    codes, offsets, weights, operation, mode, _, psw = problem
    if mode == "max":
        mode = "sum"
    if operation == "mult":  # (mult tables all have one width)
        operation = "add"
    before = naive_bag(codes, offsets, weights, operation, mode, "before_pool", psw)
    after = naive_bag(codes, offsets, weights, operation, mode, "after_pool", psw)
    torch.testing.assert_close(before, after)
    got_before = CF.embedding_bag_codes(codes, offsets, weights, operation, mode, "before_pool", psw)
    got_after = CF.embedding_bag_codes(codes, offsets, weights, operation, mode, "after_pool", psw)
    torch.testing.assert_close(got_before, got_after)


def test_mult_differs_between_composes_on_multi_index_bags():
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    codes = torch.tensor([[0, 1, 2, 3], [4, 2, 0, 1]])
    offsets = torch.tensor([0, 2, 4])
    for mode in ("sum", "mean"):
        before = CF.embedding_bag_codes(codes, offsets, weights, "mult", mode, "before_pool")
        after = CF.embedding_bag_codes(codes, offsets, weights, "mult", mode, "after_pool")
        # a sum of products is not a product of sums
        assert not torch.allclose(before, after)
        manual = weights[0][codes[0, :2]] * weights[1][codes[1, :2]]
        manual = manual.sum(0) if mode == "sum" else manual.mean(0)
        torch.testing.assert_close(before[0], manual)
    # ... while for single-index bags they coincide
    one = torch.tensor([0, 1, 2, 3, 4])
    b1 = CF.embedding_bag_codes(codes, one, weights, "mult", "sum", "before_pool")
    a1 = CF.embedding_bag_codes(codes, one, weights, "mult", "sum", "after_pool")
    torch.testing.assert_close(b1, a1)


# ----------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compose", COMPOSES)
def test_gradcheck(operation, mode, compose):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{operation} {mode} {compose}".encode()))
    sizes, dims = (3, 4), ((2, 3) if operation == "concat" else (3, 3))
    weights = [torch.randn(s, d, generator=gen, dtype=torch.float64, requires_grad=True) for s, d in zip(sizes, dims)]
    # bags of length 2, 0, 3, 1 (variable length), indices drawn without ties for max
    codes = torch.stack([torch.randint(0, s, (6,), generator=gen) for s in sizes])
    offsets = torch.tensor([0, 2, 2, 5, 6])
    inputs = list(weights)
    psw = None
    if mode == "sum":
        psw = torch.rand(6, generator=gen, dtype=torch.float64).add_(0.5).requires_grad_()
        inputs.append(psw)

    def fn(*args):
        ws = args[: len(weights)]
        p = args[len(weights)] if psw is not None else None
        return CF.embedding_bag_codes(codes, offsets, list(ws), operation, mode, compose, p)

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-5)
    # fixed-length bags (the reshape path)
    offsets_fixed = torch.tensor([0, 3, 6])

    def fn_fixed(*args):
        ws = args[: len(weights)]
        p = args[len(weights)] if psw is not None else None
        return CF.embedding_bag_codes(codes, offsets_fixed, list(ws), operation, mode, compose, p)

    assert torch.autograd.gradcheck(fn_fixed, tuple(inputs), eps=1e-6, atol=1e-5)


def test_sparse_gradient_equals_dense_gradient():
    gen = torch.Generator().manual_seed(3)
    codes = torch.stack([torch.randint(0, 7, (9,), generator=gen), torch.randint(0, 5, (9,), generator=gen)])
    offsets = torch.tensor([0, 4, 4, 9])
    for operation, mode, compose in itertools.product(OPS, MODES, COMPOSES):
        base = [torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)]
        dense = [w.clone().requires_grad_() for w in base]
        sparse = [w.clone().requires_grad_() for w in base]
        CF.embedding_bag_codes(codes, offsets, dense, operation, mode, compose).sum().backward()
        CF.embedding_bag_codes(codes, offsets, sparse, operation, mode, compose, sparse=True).sum().backward()
        for d, s in zip(dense, sparse):
            assert s.grad.is_sparse, (operation, mode, compose)
            torch.testing.assert_close(s.grad.to_dense(), d.grad)


def test_max_norm_renormalises_referenced_rows():
    w = [torch.full((4, 3), 2.0), torch.full((3, 3), 0.1)]
    codes = torch.tensor([[0, 1], [0, 0]])
    out = CF.embedding_bag_codes(codes, torch.tensor([0, 1, 2]), w, "mult", "sum", "before_pool", max_norm=1.0)
    assert torch.allclose(w[0][:2].norm(dim=1), torch.ones(2))
    assert torch.equal(w[0][2:], torch.full((2, 3), 2.0))  # untouched rows stay
    torch.testing.assert_close(out, (w[0][:2] * w[1][0]))


# ----------------------------------------------------------------------------------------------
# input normalisation


def test_normalize_two_d_and_include_last_offset():
    flat, offs, psw = CF.normalize_bag_input(torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int32),
                                             num_embeddings=7)
    assert flat.dtype == torch.long and flat.tolist() == [1, 2, 3, 4, 5, 6]
    assert offs.tolist() == [0, 3, 6] and psw is None
    flat, offs, _ = CF.normalize_bag_input(torch.zeros(2, 0, dtype=torch.long))
    assert flat.numel() == 0 and offs.tolist() == [0, 0, 0]
    x = torch.tensor([1, 2, 3, 4, 5])
    flat, offs, _ = CF.normalize_bag_input(x, torch.tensor([0, 2]))
    assert offs.tolist() == [0, 2, 5] and torch.equal(flat, x)
    # include_last_offset: indices after the last offset belong to no bag (as in torch)
    w = torch.rand(5, dtype=torch.float64)
    flat, offs, psw = CF.normalize_bag_input(x, torch.tensor([0, 2, 3]), w, include_last_offset=True, mode="sum")
    assert offs.tolist() == [0, 2, 3] and flat.tolist() == [1, 2, 3] and torch.equal(psw, w[:3])


def test_module_bag_input_takes_the_module_options_and_dtype():
    bag = torch.nn.EmbeddingBag(6, 3, mode="sum", include_last_offset=True)
    x, offsets = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 3])
    w = torch.rand(5)
    flat, offs, psw = CF.module_bag_input(bag, x, offsets, w)
    assert flat.tolist() == [1, 2, 3] and offs.tolist() == [0, 2, 3] and torch.equal(psw, w[:3])
    with pytest.raises(IndexError, match="EmbeddingBag"):  # num_embeddings and the class name
        CF.module_bag_input(bag, torch.tensor([6]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="float64"):  # the weights' dtype, as nn.EmbeddingBag requires
        CF.module_bag_input(bag, x, offsets, w.double())


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(input=torch.tensor([1.0, 2.0]), offsets=torch.tensor([0])), TypeError, ["float"]),
        (dict(input=torch.tensor([1, 9]), offsets=torch.tensor([0]), num_embeddings=9), IndexError,
         ["mybag", "9", "num_embeddings=9"]),
        (dict(input=torch.tensor([1, -3]), offsets=torch.tensor([0]), num_embeddings=9), IndexError, ["mybag", "-3", "9"]),
        (dict(input=torch.tensor([1, 2, 3]), offsets=torch.tensor([1, 2])), ValueError, ["offsets[0]", "1"]),
        (dict(input=torch.tensor([1, 2, 3]), offsets=torch.tensor([0, 2, 1])), ValueError,
         ["non-decreasing", "offsets[1]=2", "offsets[2]=1"]),
        (dict(input=torch.tensor([1, 2, 3]), offsets=torch.tensor([0, 4])), ValueError, ["4", "N=3"]),
        (dict(input=torch.tensor([1, 2]), offsets=torch.tensor([0]), per_sample_weights=torch.ones(2), mode="mean"),
         ValueError, ["per_sample_weights", "mean"]),
        (dict(input=torch.tensor([1, 2]), offsets=torch.tensor([0]), per_sample_weights=torch.ones(3), mode="sum"),
         ValueError, ["per_sample_weights", "(2,)", "(3,)"]),
        (dict(input=torch.tensor([1, 2]), offsets=torch.tensor([0]), per_sample_weights=torch.ones(2, dtype=torch.long),
              mode="sum"), TypeError, ["per_sample_weights"]),
        (dict(input=torch.tensor([[1, 2]]), offsets=torch.tensor([0])), ValueError, ["2-D", "offsets"]),
        (dict(input=torch.tensor([1, 2])), ValueError, ["offsets"]),
        (dict(input=torch.tensor([1, 2]), offsets=torch.tensor([0.0])), TypeError, ["offsets"]),
        (dict(input=torch.tensor(3), offsets=torch.tensor([0])), ValueError, ["1-D or 2-D"]),
        (dict(input=torch.tensor([1, 2]), offsets=torch.tensor([0]), mode="median"), ValueError, ["median"]),
    ],
)
def test_normalize_rejects_bad_input(kwargs, error, words):
    kwargs.setdefault("name", "mybag")
    with pytest.raises(error) as info:
        CF.normalize_bag_input(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_embedding_bag_codes_rejects_bad_configuration():
    w = [torch.randn(3, 2), torch.randn(3, 4)]
    codes = torch.zeros(2, 2, dtype=torch.long)
    offs = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="one width"):
        CF.embedding_bag_codes(codes, offs, w, "mult", "sum", "before_pool")
    with pytest.raises(ValueError, match="operation"):
        CF.embedding_bag_codes(codes, offs, w, "xor", "sum", "before_pool")
    with pytest.raises(ValueError, match="compose"):
        CF.embedding_bag_codes(codes, offs, w, "concat", "sum", "during_pool")
    with pytest.raises(ValueError, match=r"\(k=2, N\)"):
        CF.embedding_bag_codes(codes[:1], offs, w, "concat", "sum", "before_pool")
    with pytest.raises(ValueError, match="per_sample_weights"):
        CF.embedding_bag_codes(codes, offs, w, "concat", "mean", "before_pool", torch.ones(2))
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        CF.embedding_bag_codes(codes, offs, w, "concat", "sum", "before_pool", sparse=True, scale_grad_by_freq=True)


def test_empty_batches_and_empty_bags():
    w = [torch.randn(3, 2), torch.randn(4, 2)]
    for operation, mode, compose in itertools.product(OPS, MODES, COMPOSES):
        out = CF.embedding_bag_codes(torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0, 0]), w, operation, mode, compose)
        width = 4 if operation == "concat" else 2
        assert out.shape == (2, width) and not out.any()
        out = CF.embedding_bag_codes(torch.zeros(2, 0, dtype=torch.long), torch.tensor([0]), w, operation, mode, compose)
        assert out.shape == (0, width)


# ----------------------------------------------------------------------------------------------
# initialisation rule and the backend object


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_init_bound_gives_full_table_variance(operation, k):
    n = 10_000
    a = CF.init_bound(n, k, operation)
    var_one = a * a / 3  # variance of U(-a, a)
    var = {"concat": var_one, "add": k * var_one, "mult": var_one ** k}[operation]
    assert var == pytest.approx(1 / (3 * n), rel=1e-9)


def test_init_bound_rejects_bad_arguments():
    with pytest.raises(ValueError, match="operation"):
        CF.init_bound(10, 2, "sub")
    with pytest.raises(ValueError, match="num_embeddings"):
        CF.init_bound(0, 2, "add")


def test_torch_backend_is_the_reference():
    backend = get_backend("torch")
    assert backend.name == "torch" and backend.priority == 0
    assert resolve_backend("auto", BagOptions(operation="mult", mode="max", compose="before_pool", k=3,
                           dtype=torch.float64, device=torch.device("cpu"), per_sample_weights=False,
                           sparse=True, max_norm=1.0, requires_grad=True)) is not None
    gen = torch.Generator().manual_seed(5)
    w = [torch.randn(4, 3, generator=gen), torch.randn(5, 3, generator=gen)]
    codes = torch.stack([torch.randint(0, 4, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)])
    offs = torch.tensor([0, 1, 4, 6])
    torch.testing.assert_close(
        backend.embedding_bag(codes, offs, w, "mult", "mean", "before_pool"),
        CF.embedding_bag_codes(codes, offs, w, "mult", "mean", "before_pool"),
    )
    assert backend.unsupported_reason(BagOptions(operation="mult", mode="sum", compose="after_pool", k=2,
                                                 dtype=torch.float32, device=torch.device("cpu"))) is None
    with pytest.raises(ValueError, match="operation"):  # an unknown operation is refused before any backend
        BagOptions(operation="sub", mode="sum", compose="after_pool", k=2)


def test_compositional_embedding_bag_pipeline():
    from compemb.partitions import chinese_remainder

    family = chinese_remainder(30, k=2)
    moduli = crt_sizes(30, 2)  # (6, 5): the codes of x are x % 6 and x % 5
    gen = torch.Generator().manual_seed(9)
    weights = [torch.randn(m, 3, generator=gen, dtype=torch.float64) for m in moduli]
    x = torch.randint(0, 30, (4, 3), generator=gen)
    for backend in (None, "torch", "auto", get_backend("torch")):
        out = CF.compositional_embedding_bag(x, None, weights, family, "mult", "sum", backend=backend)
        codes = torch.stack([x.reshape(-1) % m for m in moduli])
        want = naive_bag(codes, torch.arange(0, 13, 3), weights, "mult", "sum", "before_pool")
        torch.testing.assert_close(out, want)
    with pytest.raises(IndexError, match="compositional_embedding_bag: index 30"):
        CF.compositional_embedding_bag(torch.tensor([[30]]), None, weights, family)
    with pytest.raises(ValueError, match="k=2"):
        CF.compositional_embedding_bag(x, None, weights[:1], family)


# ----------------------------------------------------------------------------------------------
# gradients against a differentiable per-index loop; max ties; no indices at all


def naive_bag_autograd(codes, offsets, weights, operation, mode, compose, psw=None):
    """:func:`naive_bag` with autograd: the weights (and ``psw``) are used as they are. ``max``
    pools with ``torch.stack(...).max(0)``, whose gradient goes to the first maximum in bag order
    (the ``F.embedding_bag`` rule)."""
    k = len(weights)
    width = sum(w.shape[1] for w in weights) if operation == "concat" else weights[0].shape[1]
    zero = sum(w.sum() for w in weights) * 0  # keeps every table in the graph

    def pool(vectors):
        stacked = torch.stack(vectors)
        if mode == "max":
            return stacked.max(0).values
        return stacked.mean(0) if mode == "mean" else stacked.sum(0)

    out = []
    for b in range(len(offsets) - 1):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        if lo == hi:
            out.append(torch.zeros(width, dtype=weights[0].dtype) + zero)
            continue
        scale = [1.0 if psw is None else psw[j] for j in range(lo, hi)]
        if compose == "before_pool":
            out.append(pool([combine_ref([weights[i][int(codes[i, j])] for i in range(k)], operation) * scale[j - lo]
                             for j in range(lo, hi)]))
        else:
            out.append(combine_ref([pool([weights[i][int(codes[i, j])] * scale[j - lo] for j in range(lo, hi)])
                                    for i in range(k)], operation))
    if not out:
        return torch.zeros(0, width, dtype=weights[0].dtype) + zero
    return torch.stack(out)


def _grads(out, inputs, g):
    got = torch.autograd.grad(out, inputs, g, allow_unused=True)
    return [torch.zeros_like(x) if d is None else (d.to_dense() if d.is_sparse else d) for x, d in zip(inputs, got)]


@st.composite
def tie_problems(draw, fixed_length=None):
    """bag_problems with small integer-valued tables (so maxima tie, also between distinct rows)
    and repeated indices."""
    codes, offsets, weights, operation, mode, compose, psw = draw(bag_problems(fixed_length))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randint(-2, 3, w.shape, generator=gen).double() for w in weights]
    if codes.shape[1] >= 2:  # a repeated index
        codes[:, 1] = codes[:, 0]
    return codes, offsets, weights, operation, mode, compose, psw


@settings(max_examples=120, deadline=None)
@given(st.one_of(tie_problems(), tie_problems("any"), tie_problems(1)), st.booleans())
def test_gradients_equal_differentiable_loop(problem, sparse):
    # every path (fused, _MultPool, _MultRows, reshape, segmented max) against plain autograd on a
    # per-index loop, with ties: max back-propagates to the first maximum only
    codes, offsets, weights, operation, mode, compose, psw = problem
    ws = [w.clone().requires_grad_() for w in weights]
    p = None if psw is None else psw.clone().requires_grad_()
    inputs = ws + ([p] if p is not None else [])
    want = naive_bag_autograd(codes, offsets, ws, operation, mode, compose, p)
    g = torch.randn(want.shape, dtype=torch.float64)
    want_grads = _grads(want, inputs, g)
    for bag_len in ("computed", "given"):
        if bag_len == "computed":
            got = CF.embedding_bag_codes(codes, offsets, ws, operation, mode, compose, p, sparse=sparse)
        else:  # what the modules pass: the bag length learnt from their validation
            known = CF.fixed_bag_length(offsets, codes.shape[1])
            got = CF.embedding_bag_codes(
                list(codes), offsets, ws, operation, mode, compose, p, sparse=sparse, trusted=True, bag_len=known)
        torch.testing.assert_close(got, want.detach())
        for a, b in zip(_grads(got, inputs, g), want_grads):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lengths", [[3, 3, 3, 3], [2, 0, 4, 1, 3]], ids=["equal", "unequal"])
@pytest.mark.parametrize("path", ["dense", "sparse", "bfloat16", "scale_grad_by_freq"])
def test_max_identity_family_matches_torch_embedding_bag_with_ties(lengths, path):
    # repeated indices and equal rows: F.embedding_bag gives each output coordinate's gradient to
    # the first maximum of the bag; so must every one of our max paths
    gen = torch.Generator().manual_seed(sum(lengths) + len(path))
    table = torch.randint(-2, 3, (6, 4), generator=gen).float()
    table[5] = table[1]  # two distinct rows, equal
    offsets = torch.tensor([0] + lengths).cumsum(0)
    idx = torch.randint(0, 6, (int(offsets[-1]),), generator=gen)
    idx[1] = idx[0]
    idx[2] = 5
    idx[3] = 1
    g = torch.randn(len(lengths), 4, generator=gen)
    ref_w = table.clone().requires_grad_()
    ref = F.embedding_bag(idx, ref_w, offsets, mode="max", include_last_offset=True)
    ref.backward(g)
    dtype = torch.bfloat16 if path == "bfloat16" else torch.float32
    w = table.to(dtype).requires_grad_()
    extra = {"sparse": path == "sparse", "scale_grad_by_freq": path == "scale_grad_by_freq"}
    for compose in COMPOSES:
        w.grad = None
        out = CF.embedding_bag_codes(idx.unsqueeze(0), offsets, [w], "mult", "max", compose, **extra)
        assert torch.equal(out.float(), ref.detach())
        out.backward(g.to(dtype))
        grad = w.grad.to_dense().float()
        if path == "scale_grad_by_freq":  # the same rows, each scaled by 1 / its count in the batch
            counts = torch.bincount(idx, minlength=6).clamp(min=1).float().unsqueeze(1)
            torch.testing.assert_close(grad, ref_w.grad / counts)
        else:
            torch.testing.assert_close(grad, ref_w.grad, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 0)


@pytest.mark.parametrize("lengths", [[3, 3, 3], [2, 0, 4, 1]], ids=["equal", "unequal"])
@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("sparse", [False, True])
def test_max_composed_matches_torch_embedding_bag_with_ties(lengths, operation, sparse):
    # k = 2: before_pool is F.embedding_bag over the composed table (built with autograd from the
    # components); after_pool is F.embedding_bag per table, then combined
    gen = torch.Generator().manual_seed(len(lengths))
    dims = (2, 3) if operation == "concat" else (3, 3)
    base = [torch.randint(-1, 2, (s, d), generator=gen).double() for s, d in zip((3, 4), dims)]
    offsets = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randint(0, 12, (int(offsets[-1]),), generator=gen)
    x[1] = x[0]
    codes = torch.stack([x % 3, x // 3])
    for compose in COMPOSES:
        ref_w = [w.clone().requires_grad_() for w in base]
        if compose == "before_pool":
            all_codes = torch.stack([torch.arange(12) % 3, torch.arange(12) // 3])
            composed = combine_ref([ref_w[i][all_codes[i]] for i in range(2)], operation)
            ref = F.embedding_bag(x, composed, offsets, mode="max", include_last_offset=True)
        else:
            ref = combine_ref([F.embedding_bag(codes[i], ref_w[i], offsets, mode="max", include_last_offset=True)
                               for i in range(2)], operation)
        ws = [w.clone().requires_grad_() for w in base]
        out = CF.embedding_bag_codes(codes, offsets, ws, operation, "max", compose, sparse=sparse)
        torch.testing.assert_close(out, ref)
        g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        for a, b in zip(_grads(out, ws, g), _grads(ref, ref_w, g)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compose", COMPOSES)
def test_no_indices_at_all_stays_in_the_graph(operation, mode, compose):
    # N = 0 (all bags empty, or no bags): the output requires grad like the tables, and backward
    # gives zero gradients (dense or sparse, any dtype, with or without per-sample weights)
    width = 4 if operation == "concat" else 2
    for num_bags, sparse, dtype, k in itertools.product((0, 3), (False, True), (torch.float32, torch.bfloat16), (1, 2)):
        ws = [torch.randn(3 + i, 2, dtype=dtype, requires_grad=True) for i in range(k)]
        psw = torch.zeros(0, dtype=dtype, requires_grad=True) if mode == "sum" else None
        codes = torch.zeros(k, 0, dtype=torch.long)
        for bag_len in ("computed", None):
            if bag_len == "computed":
                out = CF.embedding_bag_codes(codes, torch.zeros(num_bags + 1, dtype=torch.long), ws, operation,
                                             mode, compose, psw, sparse=sparse)
            else:
                out = CF.embedding_bag_codes(list(codes), torch.zeros(num_bags + 1, dtype=torch.long), ws, operation,
                                             mode, compose, psw, sparse=sparse, trusted=True, bag_len=None)
            assert out.shape == (num_bags, width if k == 2 else 2) and out.dtype == dtype
            assert out.requires_grad, (num_bags, sparse, dtype, k)
            grads = torch.autograd.grad(out.sum(), ws, allow_unused=True)
            for w, grad in zip(ws, grads):
                assert grad is not None and grad.shape == w.shape and not grad.to_dense().any()
        with torch.no_grad():
            assert not CF.embedding_bag_codes(codes, torch.zeros(num_bags + 1, dtype=torch.long), ws, operation,
                                              mode, compose).requires_grad


# ----------------------------------------------------------------------------------------------
# the one-fetch validation and the bag length it reports


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=0, max_size=6),
    st.sampled_from(["offsets", "last_offset", "last_offset_tail", "2d"]),
)
def test_normalize_reports_the_bag_length(lengths, form):
    if form == "2d":
        lengths = [lengths[0]] * len(lengths) if lengths else []
    n_idx = sum(lengths)
    x = torch.arange(n_idx) % 5
    starts = torch.tensor([0] + lengths, dtype=torch.long).cumsum(0)
    if form == "2d":
        args = (x.view(len(lengths), lengths[0] if lengths else 0), None, None, False)
    elif form == "offsets":
        args = (x, starts[:-1], None, False)
    elif form == "last_offset":
        args = (x, starts, None, True)
    else:  # indices after the last offset are dropped
        args = (torch.cat([x, torch.tensor([1, 2])]), starts, None, True)
    flat, offs, _, bag_len = CF.bag_input(*args, "sum", 5, "t")
    assert torch.equal(offs, starts) and torch.equal(flat, x)
    want = lengths[0] if lengths and lengths[0] > 0 and len(set(lengths)) == 1 else None
    assert bag_len == want == CF.fixed_bag_length(offs, flat.shape[0])


def test_validation_is_one_fetch_and_keeps_every_check(monkeypatch):
    calls = []
    real = CF._inputs._fetch
    monkeypatch.setattr(CF._inputs, "_fetch", lambda stats: calls.append(len(stats)) or real(stats))
    one_hot = torch.arange(6)
    for args in [(torch.tensor([1, 2, 3, 4, 5, 6]), one_hot), (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1])),
                 (torch.tensor([[1, 2], [3, 4]]), None)]:
        calls.clear()
        CF.normalize_bag_input(*args, num_embeddings=9)
        assert len(calls) == 1
    # the one-hot shortcut (offsets == arange) still checks the index range
    for bad, words in [(torch.tensor([1, 2, 3, 4, 5, 9]), ["9", "num_embeddings=9"]),
                       (torch.tensor([1, -2, 3, 4, 5, 6]), ["-2", "9"])]:
        with pytest.raises(IndexError) as info:
            CF.normalize_bag_input(bad, one_hot, num_embeddings=9, name="mybag")
        assert all(w in str(info.value) for w in words + ["mybag"])
    # B == N but not arange: the shortcut fails over to the full offsets checks
    with pytest.raises(ValueError, match="non-decreasing"):
        CF.normalize_bag_input(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        CF.normalize_bag_input(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compose", COMPOSES)
def test_scale_grad_by_freq_divides_by_the_code_count(operation, mode, compose):
    # each table's gradient row r is divided by how often code r occurs in the batch (as
    # F.embedding does), on every path
    gen = torch.Generator().manual_seed(8)
    dims = (2, 3) if operation == "concat" else (3, 3)
    base = [torch.randn(s, d, generator=gen, dtype=torch.float64) for s, d in zip((3, 4), dims)]
    codes = torch.stack([torch.tensor([0, 0, 1, 2, 0, 2, 1]), torch.tensor([3, 1, 1, 0, 2, 2, 3])])
    for offsets in (torch.tensor([0, 3, 3, 7]), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])):
        plain = [w.clone().requires_grad_() for w in base]
        scaled = [w.clone().requires_grad_() for w in base]
        out = CF.embedding_bag_codes(codes, offsets, plain, operation, mode, compose)
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        out.backward(g)
        CF.embedding_bag_codes(codes, offsets, scaled, operation, mode, compose, scale_grad_by_freq=True).backward(g)
        for i in range(2):
            counts = torch.bincount(codes[i], minlength=base[i].shape[0]).clamp(min=1).double().unsqueeze(1)
            torch.testing.assert_close(scaled[i].grad, plain[i].grad / counts)


def test_training_after_an_evaluation_under_inference_mode():
    # the shared offsets cache used to hold inference tensors after a forward under
    # torch.inference_mode(), and every later training step on the same shapes failed with
    # "Inference tensors cannot be saved for backward"
    from compemb.baselines import HashEmbeddingBag, MixedDimEmbeddingBag
    from compemb.modules import CompositionalEmbeddingBag, QREmbeddingBag
    from compemb.path import PathEmbeddingBag

    gen = torch.Generator().manual_seed(0)
    inputs = [(torch.randint(0, 90, (7, 3), generator=gen),),
              (torch.randint(0, 90, (5,), generator=gen), torch.arange(5))]
    for make in (lambda: CompositionalEmbeddingBag(90, 4, mode="sum"), lambda: QREmbeddingBag(90, 4, 4, mode="max"),
                 lambda: PathEmbeddingBag(90, 4), lambda: HashEmbeddingBag(90, 4, num_buckets=7),
                 lambda: MixedDimEmbeddingBag(90, 4, md_dim=2)):
        for args in inputs:
            CF._inputs._OFFSETS_CACHE.clear()
            bag = make()
            with torch.inference_mode():
                evaluated = bag(*args)
            out = bag(*args)
            out.sum().backward()
            torch.testing.assert_close(out.detach(), evaluated)
            assert all(p.grad is not None for p in bag.parameters())
