"""The fused Triton backend equals the torch reference (forward and every gradient).

Runs on CPU under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it before triton is imported).
"""
import zlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compemb.kernels import BackendUnavailableError, resolve_backend
from compemb.kernels import _triton
from compemb.kernels._triton import BACKEND, triton_embedding_bag
from compemb.functional import embedding_bag_codes as reference_embedding_bag
from compemb.options import BagOptions

pytestmark = pytest.mark.triton_cpu


@pytest.fixture(autouse=True)
def _interpreter_on():
    assert _triton.INTERPRETED, "compemb.kernels._triton was imported before TRITON_INTERPRET=1 was set"


OPS = ["mult", "add", "concat"]
MODES = ["sum", "mean", "max"]
COMPOSES = ["before_pool", "after_pool"]


@st.composite
def problems(draw, dtype=torch.float32):
    k = draw(st.integers(1, 4))
    operation = draw(st.sampled_from(OPS))
    mode = draw(st.sampled_from(MODES))
    compose = draw(st.sampled_from(COMPOSES))
    sizes = [draw(st.integers(1, 6)) for _ in range(k)]
    if operation == "concat":
        dims = [draw(st.integers(1, 9)) for _ in range(k)]
    else:
        dims = [draw(st.integers(1, 12))] * k
    lengths = draw(st.lists(st.integers(0, 7), min_size=1, max_size=5))
    use_psw = mode == "sum" and draw(st.booleans())
    deterministic = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(r, d, generator=gen).to(dtype).requires_grad_() for r, d in zip(sizes, dims)]
    offsets = torch.tensor([0] + lengths).cumsum(0)
    n = int(offsets[-1])
    if mode == "max":
        # no ties: within a bag every table's codes are distinct (a tie's gradient may go to
        # any copy; test_max_with_a_repeated_index_matches_torch_embedding_bag covers ties)
        lengths = [min(n_b, min(sizes)) for n_b in lengths]
        offsets = torch.tensor([0] + lengths).cumsum(0)
        n = int(offsets[-1])
        codes = torch.stack([
            torch.cat([torch.randperm(r, generator=gen)[:n_b] for n_b in lengths]) for r in sizes
        ]).reshape(k, n)
    else:
        codes = torch.stack([torch.randint(0, r, (n,), generator=gen) for r in sizes]).reshape(k, n)
        if n >= 2:  # a repeated index inside a bag
            codes[:, 1] = codes[:, 0]
    psw = torch.rand(n, generator=gen).requires_grad_() if use_psw else None
    return dict(codes=codes, offsets=offsets, weights=weights, operation=operation, mode=mode,
                compose=compose, per_sample_weights=psw), deterministic


def _inputs(p):
    return list(p["weights"]) + ([p["per_sample_weights"]] if p["per_sample_weights"] is not None else [])


@settings(max_examples=40, deadline=None)
@given(problems())
def test_forward_and_gradients_equal_reference(case):
    p, deterministic = case
    out = triton_embedding_bag(**p, deterministic=deterministic)
    ref = reference_embedding_bag(**p)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, _inputs(p), g, allow_unused=True)
    if ref.requires_grad:
        want = torch.autograd.grad(ref, _inputs(p), g, allow_unused=True)
    else:  # the reference leaves the graph when there are no indices at all: zero gradients
        want = [None] * len(got)
    for a, b in zip(got, want):
        b = torch.zeros_like(a) if b is None else b
        # a table's gradient sums products of the other tables' rows in another order than the
        # reference: with k = 4 and cancelling terms the fp32 rounding reaches ~1.5e-6 absolute
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_half_precision_forward(dtype, tol, data):
    p, _ = data.draw(problems(dtype=dtype))
    out = triton_embedding_bag(**p)
    assert out.dtype == dtype
    # the reference in fp32 on the same (rounded) tables; the kernel accumulates in fp32
    p32 = dict(p, weights=[w.detach().float() for w in p["weights"]])
    ref = reference_embedding_bag(**p32)
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("pre_reduce", [True, False], ids=["pre_reduce", "per_index_atomics"])
@pytest.mark.parametrize("operation, compose, mode", [("mult", "before_pool", "sum"), ("mult", "after_pool", "mean"),
                                                      ("add", "before_pool", "max"), ("concat", "before_pool", "sum")])
def test_small_and_large_tables_with_many_bags_on_few_rows(operation, compose, mode, pre_reduce):
    # tables of 40 and 17 rows (one atomic per index) and of 4 and 16 rows (pre-reduced per bag
    # when SMALL_ROWS = 16); every index of every bag is one of three values, so all bags hit the
    # same rows, with repeats inside a bag
    gen = torch.Generator().manual_seed(zlib.crc32(f"{operation} {compose} {mode}".encode()))
    rows = [40, 4, 17, 16]
    dims = [3, 4, 2, 5] if operation == "concat" else [6] * 4
    weights = [torch.randn(r, d, generator=gen).requires_grad_() for r, d in zip(rows, dims)]
    assert _triton._small_tables(weights, pre_reduce) == ((0b1010, 16) if pre_reduce else (0, 1))
    lengths = torch.randint(0, 5 if mode == "max" else 9, (10,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    n = int(offsets[-1])
    pool = torch.tensor([3, 18, 39])
    x = pool[torch.randint(0, 3, (n,), generator=gen)]
    codes = torch.stack([x % r for r in rows])
    if mode == "max":  # no ties (see test_max_with_a_repeated_index_matches_torch_embedding_bag)
        codes = torch.stack([torch.cat([torch.randperm(r, generator=gen)[:int(L)] for L in lengths]) for r in rows])
    psw = torch.rand(n, generator=gen).requires_grad_() if mode == "sum" else None
    p = dict(codes=codes, offsets=offsets, weights=weights, operation=operation, mode=mode, compose=compose,
             per_sample_weights=psw)
    out = triton_embedding_bag(**p, max_bag_length=int(lengths.max()), pre_reduce_small=pre_reduce)
    ref = reference_embedding_bag(**p)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, _inputs(p), g)
    want = torch.autograd.grad(ref, _inputs(p), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_max_with_a_repeated_index_matches_torch_embedding_bag():
    # a tie: torch.nn.functional.embedding_bag gives the gradient to one copy, and so do we
    # (the reference's segment_reduce path gives it to every copy)
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(5, 6, generator=gen, requires_grad=True)
    codes = torch.tensor([[3, 1, 3, 3, 0]])
    offsets = torch.tensor([0, 0, 4, 5])
    out = triton_embedding_bag(codes, offsets, [w], "add", "max")
    want = torch.nn.functional.embedding_bag(codes[0], w, offsets, mode="max", include_last_offset=True)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn(want.shape, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(out, w, g)[0], torch.autograd.grad(want, w, g)[0])


def test_deterministic_backward_is_bitwise_repeatable_and_matches_atomics():
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(3, 8, generator=gen, requires_grad=True) for _ in range(2)]
    offsets = torch.tensor([0, 6, 6, 12])
    codes = torch.randint(0, 3, (2, 12), generator=gen)  # many repeated rows
    g = torch.randn(3, 8, generator=gen)
    runs = []
    for det in (True, True, False):
        out = triton_embedding_bag(codes, offsets, weights, "mult", "sum", "before_pool", deterministic=det)
        runs.append(torch.autograd.grad(out, weights, g))
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    for a, b in zip(runs[0], runs[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_all_empty_bags_give_zeros_and_zero_gradients():
    weights = [torch.randn(4, 5, requires_grad=True), torch.randn(2, 5, requires_grad=True)]
    codes = torch.zeros(2, 0, dtype=torch.long)
    offsets = torch.zeros(4, dtype=torch.long)
    for mode in MODES:
        out = triton_embedding_bag(codes, offsets, weights, "mult", mode, "before_pool")
        assert torch.equal(out, torch.zeros(3, 5))
        grads = torch.autograd.grad(out.sum(), weights)
        assert all(torch.equal(gr, torch.zeros_like(gr)) for gr in grads)


def test_backend_refuses_by_name():
    base = dict(operation="mult", mode="sum", compose="before_pool", k=2,
                dtype=torch.float32, device=torch.device("cpu"))
    assert BACKEND.unsupported_reason(BagOptions(**base)) is None  # interpreter is on in this file
    assert resolve_backend("triton", BagOptions(**base)) is BACKEND
    for change, word in [(dict(k=5), "k=5"), (dict(sparse=True), "sparse"),
                         (dict(max_norm=1.0), "max_norm"), (dict(dtype=torch.float64), "float64"),
                         (dict(mode="max", per_sample_weights=True), "per_sample_weights")]:
        reason = BACKEND.unsupported_reason(BagOptions(**dict(base, **change)))
        assert reason is not None and word in reason, (change, reason)
        with pytest.raises(BackendUnavailableError, match=word):
            resolve_backend("triton", BagOptions(**dict(base, **change)))


def test_auto_never_prefers_the_interpreter():
    config = dict(operation="mult", mode="sum", compose="before_pool", k=2, dtype=torch.float32,
                  device=torch.device("cpu"))
    assert resolve_backend("auto", BagOptions(**config)).name != "triton"


def test_cpu_refused_without_interpreter(monkeypatch):
    monkeypatch.setattr(_triton, "INTERPRETED", False)
    reason = BACKEND.unsupported_reason(BagOptions(operation="add", mode="sum", compose="before_pool", k=2,
                                                   dtype=torch.float32, device=torch.device("cpu")))
    assert "TRITON_INTERPRET" in reason


def test_bad_input_fails_early_naming_the_value():
    w = [torch.randn(3, 4), torch.randn(3, 5)]
    codes = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_bag_length=1 but a bag holds 2"):
        triton_embedding_bag(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0, 2]), w[:1], "add",
                             max_bag_length=1)
    with pytest.raises(ValueError, match="equal widths"):
        triton_embedding_bag(codes, torch.tensor([0, 1]), w, "mult")
    with pytest.raises(ValueError, match="k=5"):
        triton_embedding_bag(torch.zeros(5, 1, dtype=torch.long), torch.tensor([0, 1]),
                             [torch.randn(2, 4)] * 5, "add")
    with pytest.raises(ValueError, match="'median'"):
        triton_embedding_bag(codes, torch.tensor([0, 1]), [w[0], w[0]], "add", "median")


def test_module_with_triton_backend_equals_torch_backend():
    from compemb import CompositionalEmbeddingBag
    from compemb.partitions import generalized_qr

    family = generalized_qr(200, k=3)
    tri = CompositionalEmbeddingBag(200, 6, family=family, operation="mult", mode="sum", backend="triton")
    ref = CompositionalEmbeddingBag(200, 6, family=family, operation="mult", mode="sum")
    ref.load_state_dict(tri.state_dict())
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 200, (12,), generator=gen)
    offsets = torch.tensor([0, 4, 4, 9])
    psw = torch.rand(12, generator=gen)
    out, want = tri(x, offsets, psw), ref(x, offsets, psw)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn(want.shape, generator=gen)
    out.backward(g)
    want.backward(g)
    for a, b in zip(tri.weights, ref.weights):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert "triton" in tri.extra_repr()
