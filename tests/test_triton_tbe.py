"""The table-batched Triton path equals the torch reference, feature by feature.

Runs on CPU under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it before triton is imported).
"""
import zlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compemb import partitions as P
from compemb.collection import CompositionalEmbeddingBagCollection
from compemb.functional import embedding_bag_codes as reference
from compemb.kernels import _triton_tbe
from compemb.kernels import launch_plan
from compemb.kernels._triton_tbe import tbe_embedding_bags, tbe_layout, validate_tbe_input
from _reference import split_widths

pytestmark = pytest.mark.triton_cpu


@pytest.fixture(autouse=True)
def _interpreter_on():
    assert _triton_tbe.INTERPRETED, "compemb.kernels._triton_tbe was imported before TRITON_INTERPRET=1 was set"


@st.composite
def families(draw):
    n = draw(st.integers(1, 400))
    kind = draw(st.sampled_from(["qr", "gqr", "crt", "full"]))
    if kind == "full" or n < 2:
        return P.naive(n)
    if kind == "qr":
        return P.quotient_remainder(n, draw(st.integers(1, n)))
    k = draw(st.integers(2, 4))
    if kind == "gqr":
        return P.generalized_qr(n, k=k)
    return P.chinese_remainder(n, k=k)


@st.composite
def problems(draw):
    F = draw(st.integers(1, 4))
    operation = draw(st.sampled_from(["mult", "add", "concat"]))
    compose = draw(st.sampled_from(["before_pool", "after_pool"]))
    fams = [draw(families()) for _ in range(F)]
    d = draw(st.integers(4, 10) if operation == "concat" else st.integers(1, 10))
    modes = [draw(st.sampled_from(["sum", "mean"])) for _ in range(F)]
    B = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    idx, offs = [], [0]
    for fam in fams:
        for _ in range(B):
            L = int(torch.randint(0, 6, (), generator=gen))  # empty bags included
            x = torch.randint(0, fam.n, (L,), generator=gen)
            if L >= 2:
                x[1] = x[0]  # a repeated index inside a bag
            idx.append(x)
            offs.append(offs[-1] + L)
    widths = [split_widths(d, len(f)) for f in fams] if operation == "concat" else None
    layout = tbe_layout([f"f{i}" for i in range(F)], fams, d, operation, modes, compose, widths)
    weight = torch.randn(layout.numel, generator=gen)
    return layout, fams, torch.cat(idx), torch.tensor(offs), weight


def _tables(layout, f, weight):
    return [weight[b: b + r * w].view(r, w) for b, (r, w) in zip(layout.table_bases[f], layout.table_shapes[f])]


def _reference(layout, fams, idx, offs, weight):
    F = layout.num_features
    B = (offs.numel() - 1) // F
    outs = []
    for f, fam in enumerate(fams):
        o = offs[f * B: (f + 1) * B + 1]
        x = idx[o[0]: o[-1]]
        outs.append(reference(fam.encode(x), o - o[0], _tables(layout, f, weight), layout.operation,
                              layout.modes[f], layout.compose))
    return torch.cat(outs, dim=1)


@settings(max_examples=25, deadline=None)
@given(problems())
def test_forward_and_gradient_equal_reference(case):
    layout, fams, idx, offs, w0 = case
    w = w0.clone().requires_grad_()
    out = tbe_embedding_bags(idx, offs, w, layout)
    wr = w0.clone().requires_grad_()
    ref = _reference(layout, fams, idx, offs, wr)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    (got,) = torch.autograd.grad(out, w, g)
    want = torch.autograd.grad(ref, wr, g)[0] if ref.requires_grad else torch.zeros_like(w0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# every component small; one large component per feature (mult: the large ones are updated in
# place while the small ones go through the scratch); a feature with two large components (mult:
# accumulate, then apply); SMALL_ROWS = 16 in the kernel module
FAMILY_SETS = {
    "all_small": lambda: [P.quotient_remainder(50, 4), P.generalized_qr(300, k=3), P.chinese_remainder(120, k=2),
                          P.naive(5)],
    "one_large": lambda: [P.quotient_remainder(200, 4), P.naive(40), P.quotient_remainder(30, 3),
                          P.chinese_remainder(120, k=2)],
    "two_large": lambda: [P.generalized_qr(1000, k=2), P.quotient_remainder(100, 4), P.naive(3),
                          P.generalized_qr(2000, k=3)],
}


# (pre_reduce, R, has_large, one_large) by hand from the moduli above: all_small [4, 13] [7, 7, 7]
# [11, 12] [5]; one_large [4, 50] [40] [3, 10] [11, 12]; two_large [32, 32] [4, 25] [3] [13, 13, 12].
# Pre-reduced, R is the power of two at or above the largest modulus <= 16 (13 -> 16) and only
# larger moduli are large; without pre-reduction every component is large (R = 1), so every
# feature of two or more components has two large ones.
PLANS = {("all_small", True): (True, 16, False, True), ("one_large", True): (True, 16, True, True),
         ("two_large", True): (True, 16, True, False), ("one_large", False): (False, 1, True, False)}


def _plan_is(layout, fam_set, pre_reduce):
    plan = launch_plan(layout, 1, pre_reduce_small=pre_reduce)
    assert (plan.pre_reduce, plan.small_bound, plan.has_large, plan.one_large) == PLANS[fam_set, pre_reduce]


def _sgd_case(operation, compose, fam_set, seed, B=4, max_len=6, pool=None):
    gen = torch.Generator().manual_seed(seed)
    fams = FAMILY_SETS[fam_set]()
    d = 6
    widths = [split_widths(d, len(f)) for f in fams] if operation == "concat" else None
    layout = tbe_layout(list("abcd"), fams, d, operation, ["sum", "mean", "sum", "mean"], compose, widths)
    F = len(fams)
    lengths = torch.randint(0, max_len, (F * B,), generator=gen)
    offs = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    parts = []
    for i, L in enumerate(lengths):
        n = fams[i // B].n
        if pool is None:
            parts.append(torch.randint(0, n, (int(L),), generator=gen))
        else:  # every bag draws from the same few indices: all of them hit the same rows
            few = torch.tensor([x % n for x in pool])
            parts.append(few[torch.randint(0, len(pool), (int(L),), generator=gen)])
    idx = torch.cat(parts)
    if offs[2] - offs[1] >= 3:
        idx[offs[1]: offs[1] + 3] = idx[offs[1]]  # repeated rows across bags and inside one
    w0 = torch.randn(layout.numel, generator=gen)
    return layout, fams, idx, offs, w0, gen


@pytest.mark.parametrize("fam_set, pre_reduce", [("all_small", True), ("one_large", True), ("two_large", True),
                                                 ("one_large", False)],
                         ids=["all_small", "one_large", "two_large", "per_index_atomics"])
@pytest.mark.parametrize("operation, compose", [("mult", "before_pool"), ("mult", "after_pool"),
                                                ("add", "before_pool"), ("concat", "before_pool")])
def test_fused_sgd_step_equals_torch_sgd(operation, compose, fam_set, pre_reduce):
    layout, fams, idx, offs, w0, gen = _sgd_case(operation, compose, fam_set,
                                                 zlib.crc32(f"{operation} {compose} {fam_set}".encode()))
    _plan_is(layout, fam_set, pre_reduce)
    lr = 0.3
    # torch: reference gradients, then torch.optim.SGD
    wr = torch.nn.Parameter(w0.clone())
    ref = _reference(layout, fams, idx, offs, wr)
    g = torch.randn(ref.shape, generator=gen)
    ref.backward(g)
    torch.optim.SGD([wr], lr=lr).step()
    # fused
    w = w0.clone()
    scratch = torch.zeros(layout.numel)
    placeholder = torch.zeros(0, requires_grad=True)
    out = tbe_embedding_bags(idx, offs, w, layout, optimizer="exact_sgd", learning_rate=lr,
                             scratch=scratch, placeholder=placeholder, pre_reduce_small=pre_reduce)
    out.backward(g)
    torch.testing.assert_close(w, wr.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(scratch, torch.zeros_like(scratch)), "the SGD scratch must be left all-zero"
    assert not torch.equal(w, w0)
    # and the dense gradient of the same lookup
    wd = w0.clone().requires_grad_()
    (got,) = torch.autograd.grad(tbe_embedding_bags(idx, offs, wd, layout, pre_reduce_small=pre_reduce), wd, g)
    torch.testing.assert_close(got, wr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_b", [2, None])
@pytest.mark.parametrize("operation, compose", [("mult", "before_pool"), ("mult", "after_pool"), ("add", "before_pool")])
def test_many_bags_hitting_the_same_few_rows(operation, compose, block_b):
    # 8 bags per feature, up to 8 indices each, all drawn from 3 values: every program and every
    # index add into the same few rows of every table, small (pre-reduced) and large alike
    layout, fams, idx, offs, w0, gen = _sgd_case(operation, compose, "one_large", 11 + (block_b or 0),
                                                 B=8, max_len=9, pool=(7, 7 + 4 * 17, 2))
    wr = w0.clone().requires_grad_()
    ref = _reference(layout, fams, idx, offs, wr)
    g = torch.randn(ref.shape, generator=gen)
    (want,) = torch.autograd.grad(ref, wr, g)
    w = w0.clone().requires_grad_()
    out = tbe_embedding_bags(idx, offs, w, layout, block_b=block_b)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    (got,) = torch.autograd.grad(out, w, g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    lr = 0.05
    ws = w0.clone()
    tbe_embedding_bags(idx, offs, ws, layout, optimizer="exact_sgd", learning_rate=lr, block_b=block_b,
                       placeholder=torch.zeros(0, requires_grad=True)).backward(g)
    torch.testing.assert_close(ws, w0 - lr * want, rtol=1e-5, atol=1e-5)


def test_small_rows_boundary_and_threshold():
    # modulus SMALL_ROWS is pre-reduced, SMALL_ROWS + 1 is not; a lower threshold moves the line
    fams = [P.naive(16), P.naive(17), P.quotient_remainder(64, 4)]
    layout = tbe_layout(["a", "b", "c"], fams, 5, "add", ["sum"] * 3)
    assert _triton_tbe.SMALL_ROWS == 16
    plans = [launch_plan(layout, 1, small_rows=rows) for rows in (16, 4)]
    assert [(p.pre_reduce, p.small_bound, p.has_large, p.one_large) for p in plans] == [(True, 16, True, True),
                                                                                    (True, 4, True, True)]
    B = 6
    gen = torch.Generator().manual_seed(5)
    idx = torch.cat([torch.randint(0, f.n, (3 * B,), generator=gen) for f in fams])
    offs = torch.arange(0, idx.numel() + 1, 3)
    w0 = torch.randn(layout.numel, generator=gen)
    g = torch.randn(B, 15, generator=gen)
    wr = w0.clone().requires_grad_()
    (want,) = torch.autograd.grad(_reference(layout, fams, idx, offs, wr), wr, g)
    for small_rows in (4, 16, 0):
        w = w0.clone().requires_grad_()
        (got,) = torch.autograd.grad(tbe_embedding_bags(idx, offs, w, layout, small_rows=small_rows), w, g)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_collection_triton_equals_torch_backend_for_every_input_form():
    cfg = [("a", 1000, 8, 4, "mult", "sum"), ("b", 3, 8, None, "mult", "mean"),
           ("c", 500, 8, P.generalized_qr(500, k=3), "mult", "mean"),
           ("d", 700, 8, P.chinese_remainder(700, k=4), "mult", "sum")]
    torch_coll = CompositionalEmbeddingBagCollection(cfg, backend="torch", seed=3)
    tri = CompositionalEmbeddingBagCollection(cfg, backend="triton", seed=3)
    gen = torch.Generator().manual_seed(7)
    x = [(torch.randint(0, 1000, (7,), generator=gen), torch.tensor([0, 2, 2])),
         (torch.randint(0, 3, (3, 2), generator=gen), None),
         (torch.randint(0, 500, (3, 4), generator=gen), None),
         (torch.randint(0, 700, (5,), generator=gen), torch.tensor([0, 0, 1, 5]), True)]
    want = torch_coll(x, concat=True)
    got = tri(x, concat=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g = torch.randn(want.shape, generator=gen)
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(tri.weight.grad, torch.cat([w.grad.reshape(-1) for w in torch_coll.weights]),
                               rtol=1e-5, atol=1e-6)
    # dict input, and a KeyedJaggedTensor-like input (values feature-major, F * B + 1 offsets)
    as_dict = tri({name: item for name, item in zip("abcd", x)})
    for name, o in zip("abcd", want.split(8, dim=1)):
        torch.testing.assert_close(as_dict[name], o.detach(), rtol=1e-5, atol=1e-6)

    class KJT:
        def __init__(self, keys, values, offsets):
            self._k, self._v, self._o = keys, values, offsets

        def keys(self):
            return self._k

        def values(self):
            return self._v

        def offsets(self):
            return self._o

    values = torch.cat([x[0][0], x[1][0].reshape(-1), x[2][0].reshape(-1), x[3][0]])
    offsets = torch.tensor([0, 2, 2, 7, 9, 11, 13, 17, 21, 25, 25, 26, 30])
    kjt = tri(KJT(list("abcd"), values, offsets))
    for name, o in zip("abcd", want.split(8, dim=1)):
        torch.testing.assert_close(kjt[name], o.detach(), rtol=1e-5, atol=1e-6)


def test_collection_fused_sgd_equals_torch_sgd():
    cfg = [("a", 200, 4, 4, "add", "sum"), ("b", 90, 4, P.chinese_remainder(90, k=3), "add", "mean")]
    ref = CompositionalEmbeddingBagCollection(cfg, backend="triton", seed=1)
    fused = CompositionalEmbeddingBagCollection(cfg, backend="triton", seed=1, optimizer="exact_sgd",
                                                learning_rate=0.25)
    gen = torch.Generator().manual_seed(4)
    x = [torch.randint(0, 200, (3, 5), generator=gen), torch.randint(0, 90, (3, 2), generator=gen)]
    g = torch.randn(3, 8, generator=gen)
    ref(x, concat=True).backward(g)
    torch.optim.SGD(ref.parameters(), lr=0.25).step()
    fused(x, concat=True).backward(g)
    torch.testing.assert_close(fused.weight, ref.weight.detach(), rtol=1e-5, atol=1e-6)
    assert list(fused.parameters()) == []


def test_half_precision_forward_is_close_to_fp32():
    fams = [P.quotient_remainder(60, 4), P.generalized_qr(80, k=2)]
    layout = tbe_layout(["a", "b"], fams, 16, "mult", ["sum", "mean"])
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(layout.numel, generator=gen)
    idx = torch.cat([torch.randint(0, 60, (9,), generator=gen), torch.randint(0, 80, (6,), generator=gen)])
    offs = torch.tensor([0, 4, 9, 12, 15])
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        wl = w.to(dtype)
        out = tbe_embedding_bags(idx, offs, wl, layout)
        assert out.dtype == dtype
        ref = _reference(layout, fams, idx, offs, wl.float())
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_all_bags_empty_give_zeros_and_zero_gradients():
    layout = tbe_layout(["a", "b"], [P.quotient_remainder(10, 3), P.naive(4)], 5, "mult", ["sum", "mean"])
    w = torch.randn(layout.numel, requires_grad=True)
    out = tbe_embedding_bags(torch.zeros(0, dtype=torch.long), torch.zeros(7, dtype=torch.long), w, layout)
    assert torch.equal(out, torch.zeros(3, 10))
    (g,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(g, torch.zeros_like(w))


def test_validation_names_feature_value_and_n():
    layout = tbe_layout(["small", "big"], [P.quotient_remainder(10, 3), P.generalized_qr(1000, k=3)], 4,
                        "mult", ["sum", "sum"])
    w = torch.randn(layout.numel)
    offs = torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(IndexError, match=r"'big'.*index 1000 .*num_embeddings=1000"):
        tbe_embedding_bags(torch.tensor([1, 9, 999, 1000]), offs, w, layout)
    with pytest.raises(IndexError, match=r"'small'.*index -1 .*num_embeddings=10"):
        tbe_embedding_bags(torch.tensor([1, -1, 5, 6]), offs, w, layout)
    with pytest.raises(ValueError, match="non-decreasing"):
        tbe_embedding_bags(torch.tensor([1, 2, 5, 6]), torch.tensor([0, 2, 1, 3, 4]), w, layout)
    with pytest.raises(ValueError, match="offsets\\[-1\\]"):
        validate_tbe_input(torch.tensor([1, 2, 5, 6, 7]), offs, layout)
    specs = [("a", 10, 4, 3, "add", "sum"), ("b", 20, 4, 3, "add", "sum")]
    coll = CompositionalEmbeddingBagCollection(specs, backend="triton", seed=2)
    with pytest.raises(IndexError, match=r"'b'.*index 20 .*num_embeddings=20"):
        coll([torch.tensor([[1], [2]]), torch.tensor([[19], [20]])])
    with pytest.raises(ValueError, match=r"'a'.*offsets\[0\] must be 0"):
        coll([(torch.tensor([1, 2]), torch.tensor([1, 1])), torch.tensor([[1], [2]])])
    trusted = [torch.tensor([[1], [2]]), torch.tensor([[19], [0]])]
    want = CompositionalEmbeddingBagCollection(specs, backend="torch", seed=2)(trusted, concat=True)
    torch.testing.assert_close(coll(trusted, concat=True, validate=False), want, rtol=1e-5, atol=1e-6)


def test_refusals_name_the_missing_piece():
    qr = P.quotient_remainder(10, 3)
    with pytest.raises(ValueError, match="mode='max'"):
        tbe_layout(["a"], [qr], 4, "mult", ["max"])
    with pytest.raises(ValueError, match="mode='max'"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 3, "mult", "max")], backend="triton")
    with pytest.raises(ValueError, match="HashPartition"):
        tbe_layout(["h"], [P.PartitionFamily([P.HashPartition(10, 3), P.IdentityPartition(10)])], 4, "add", ["sum"])
    with pytest.raises(ValueError, match="exact_rowwise_adagrad"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 3, "mult", "sum")], backend="triton",
                                            optimizer="exact_rowwise_adagrad")
    with pytest.raises(ValueError, match="one embedding_dim"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 3, "mult", "sum"), ("b", 10, 8, 3, "mult", "sum")],
                                            backend="triton")
    with pytest.raises(ValueError, match="one operation"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 3, "mult", "sum"), ("b", 10, 4, 3, "add", "sum")],
                                            backend="triton")
    with pytest.raises(ValueError, match="one compose"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 3, "mult", "sum"),
                                             ("b", 10, 4, 3, "mult", "sum", "after_pool")], backend="triton")
    layout = tbe_layout(["a"], [qr], 4, "mult", ["sum"])
    with pytest.raises(TypeError, match="float32"):
        tbe_embedding_bags(torch.tensor([1]), torch.tensor([0, 1]), torch.randn(layout.numel).bfloat16(), layout,
                           optimizer="exact_sgd", placeholder=torch.zeros(0, requires_grad=True))
    with pytest.raises(ValueError, match="optimizer"):
        tbe_embedding_bags(torch.tensor([1]), torch.tensor([0, 1]), torch.randn(layout.numel), layout,
                           optimizer="adagrad")
