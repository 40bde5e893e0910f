"""Tests of CompositionalEmbeddingBag and QREmbeddingBag (compemb.modules)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compemb import functional as CF
from compemb.kernels import BackendUnavailableError
from compemb.modules import CompositionalEmbeddingBag, QREmbeddingBag
from compemb.partitions import (
    HashPartition,
    PartitionFamily,
    RemainderPartition,
    chinese_remainder,
    generalized_qr,
    naive,
    quotient_remainder,
)
from _bags import combine_ref

OPS = CF.OPERATIONS
MODES = CF.MODES
COMPOSES = CF.COMPOSES


def naive_module_output(weights, codes_of, bags, operation, mode, compose, psw=None):
    """Per-index Python loop: ``bags`` is a list of lists of category ids; ``codes_of(x)`` the
    list of k row ids of category ``x``; ``psw`` a list of lists of weights (or None)."""
    ws = [w.detach().double() for w in weights]
    k = len(ws)
    width = sum(w.shape[1] for w in ws) if operation == "concat" else ws[0].shape[1]
    out = torch.zeros(len(bags), width, dtype=torch.float64)

    def pool(vs):
        if mode == "max":
            return torch.stack(vs).max(0).values
        s = torch.stack(vs).sum(0)
        return s / len(vs) if mode == "mean" else s

    for b, bag in enumerate(bags):
        if not bag:
            continue
        scales = [1.0] * len(bag) if psw is None else psw[b]
        if compose == "before_pool":
            out[b] = pool([combine_ref([ws[i][c] for i, c in enumerate(codes_of(x))], operation) * s
                           for x, s in zip(bag, scales)])
        else:
            out[b] = combine_ref([pool([ws[i][codes_of(x)[i]] * s for x, s in zip(bag, scales)]) for i in range(k)], operation)
    return out


def family_for(kind: str, n: int):
    if kind == "qr":
        return quotient_remainder(n, max(1, min(n, 3)))
    if kind == "gqr":
        return generalized_qr(n, k=3)
    if kind == "crt":
        return chinese_remainder(n, k=2)
    return naive(n)


@st.composite
def module_problems(draw):
    kind = draw(st.sampled_from(["qr", "gqr", "crt", "naive"]))
    n = draw(st.integers(4, 40))
    family = family_for(kind, n)
    operation = draw(st.sampled_from(OPS))
    dim = draw(st.integers(max(1, family.k) if operation == "concat" else 1, 5))
    mode = draw(st.sampled_from(MODES))
    compose = draw(st.sampled_from(COMPOSES))
    lengths = draw(st.lists(st.integers(0, 4), min_size=0, max_size=5))
    form = draw(st.sampled_from(["offsets", "last_offset", "2d"]))
    if form == "2d":
        lengths = [draw(st.integers(0, 3))] * len(lengths)
    use_psw = mode == "sum" and draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return family, operation, dim, mode, compose, lengths, form, use_psw, seed


@settings(max_examples=120)
@given(module_problems())
def test_compositional_bag_equals_naive_loop(problem):
    family, operation, dim, mode, compose, lengths, form, use_psw, seed = problem
    gen = torch.Generator().manual_seed(seed)
    bag = CompositionalEmbeddingBag(
        family.n, dim, family=family, operation=operation, mode=mode, compose=compose,
        include_last_offset=(form == "last_offset"), dtype=torch.float64,
    )
    with torch.no_grad():
        for w in bag.weights:
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float64))
    bags = [torch.randint(0, family.n, (length,), generator=gen).tolist() for length in lengths]
    psw = [torch.randn(len(b), generator=gen, dtype=torch.float64).tolist() for b in bags] if use_psw else None
    flat = torch.tensor([x for b in bags for x in b], dtype=torch.long)
    flat_psw = torch.tensor([s for p in psw for s in p], dtype=torch.float64) if use_psw else None
    starts = list(itertools.accumulate([0] + lengths[:-1])) if lengths else []
    if form == "2d":
        width = lengths[0] if lengths else 0
        out = bag(flat.view(len(lengths), width), None,
                  None if flat_psw is None else flat_psw.view(len(lengths), width))
    elif form == "last_offset":
        out = bag(flat, torch.tensor(starts + [flat.numel()], dtype=torch.long), flat_psw)
    else:
        out = bag(flat, torch.tensor(starts, dtype=torch.long), flat_psw)
    codes_of = lambda x: [int(p(torch.tensor([x]))[0]) for p in family]  # noqa: E731
    want = naive_module_output(list(bag.weights), codes_of, bags, operation, mode, compose, psw)
    assert out.shape == (len(lengths), dim)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["offsets", "last_offset", "2d"])
def test_identity_family_reproduces_nn_embedding_bag(mode, form):
    gen = torch.Generator().manual_seed(7)
    n, d = 30, 5
    ref = nn.EmbeddingBag(n, d, mode=mode, include_last_offset=(form == "last_offset"))
    ours = CompositionalEmbeddingBag.from_pretrained(
        [ref.weight.detach().clone()], family=naive(n), freeze=False, mode=mode,
        include_last_offset=(form == "last_offset"),
    )
    x = torch.randint(0, n, (11,), generator=gen)
    psw = torch.rand(11, generator=gen) if mode == "sum" else None
    if form == "2d":
        args = (torch.randint(0, n, (4, 3), generator=gen), None, None if psw is None else torch.rand(4, 3, generator=gen))
    elif form == "last_offset":
        args = (x, torch.tensor([0, 2, 2, 7, 11]), psw)
    else:
        args = (x, torch.tensor([0, 2, 2, 7]), psw)
    out_ref, out = ref(*args), ours(*args)
    assert torch.equal(out, out_ref)
    g = torch.randn_like(out)
    out_ref.backward(g)
    out.backward(g)
    torch.testing.assert_close(ours.weights[0].grad, ref.weight.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compose", COMPOSES)
def test_module_gradcheck(operation, mode, compose):
    bag = CompositionalEmbeddingBag(12, 4, num_collisions=3, operation=operation, mode=mode,
                                    compose=compose, dtype=torch.float64)
    x = torch.tensor([0, 5, 11, 7, 3, 8, 2])
    offsets = torch.tensor([0, 3, 3, 5])
    w0, w1 = (w.detach().clone().requires_grad_() for w in bag.weights)

    def fn(a, b):  # the module's forward with the two tables as inputs
        return torch.func.functional_call(bag, {"weights.0": a, "weights.1": b}, (x, offsets))

    assert torch.autograd.gradcheck(fn, (w0, w1), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# QREmbeddingBag: DLRM parity


def dlrm_style_forward(module, x, offsets=None, per_sample_weights=None):
    """Clean-room re-implementation of DLRM's QREmbeddingBag forward from its description: pool
    ``weight_q`` over the quotients and ``weight_r`` over the remainders with two
    ``F.embedding_bag`` calls, then combine (concat puts the quotient part first)."""
    m = module.num_collisions
    q = F.embedding_bag(x // m, module.weight_q, offsets, mode=module.mode, per_sample_weights=per_sample_weights)
    r = F.embedding_bag(x % m, module.weight_r, offsets, mode=module.mode, per_sample_weights=per_sample_weights)
    if module.operation == "concat":
        return torch.cat([q, r], dim=1)
    return q + r if module.operation == "add" else q * r


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("mode", MODES)
def test_qr_after_pool_equals_dlrm(operation, mode):
    gen = torch.Generator().manual_seed(11)
    dims = [4, 3] if operation == "concat" else 4
    bag = QREmbeddingBag(50, dims, 6, operation=operation, mode=mode, compose="after_pool")
    x = torch.randint(0, 50, (13,), generator=gen)
    offsets = torch.tensor([0, 4, 4, 9])
    psw = torch.rand(13, generator=gen) if mode == "sum" else None
    out = bag(x, offsets, psw)
    want = dlrm_style_forward(bag, x, offsets, psw)
    torch.testing.assert_close(out, want)
    assert out.shape == (4, 7 if operation == "concat" else 4)
    x2 = torch.randint(0, 50, (5, 3), generator=gen)
    torch.testing.assert_close(bag(x2), dlrm_style_forward(bag, x2))


def test_qr_attributes_match_dlrm():
    bag = QREmbeddingBag(1001, 16, 4)
    assert bag.num_categories == 1001 and bag.num_collisions == 4
    assert bag.embedding_dim == [16, 16] and bag.num_embeddings == [251, 4]
    assert bag.weight_q.shape == (251, 16) and bag.weight_r.shape == (4, 16)
    assert (bag.operation, bag.mode, bag.max_norm, bag.norm_type, bag.scale_grad_by_freq, bag.sparse) == (
        "mult", "mean", None, 2.0, False, False)
    assert bag.compose == "before_pool"
    concat = QREmbeddingBag(100, [8, 3], 7, "concat", None, 2.0, False, "sum", True)  # DLRM's argument order
    assert concat.embedding_dim == [8, 3] and concat.mode == "sum" and concat.sparse
    assert concat(torch.tensor([[1, 99]])).shape == (1, 11)
    assert QREmbeddingBag(10, [5], 2).embedding_dim == [5, 5]
    wq, wr = torch.randn(4, 2), torch.randn(3, 2)
    given_ = QREmbeddingBag(10, 2, 3, _weight=(wq, wr))
    assert given_.weight_q.data_ptr() == wq.data_ptr() and given_.weight_r.data_ptr() == wr.data_ptr()
    with pytest.raises(ValueError, match=r"quotient table has shape \(5, 2\)"):
        QREmbeddingBag(10, 2, 3, _weight=(torch.randn(5, 2), wr))
    with pytest.raises(ValueError, match="equal widths"):
        QREmbeddingBag(10, [2, 3], 3, operation="mult")
    with pytest.raises(ValueError, match="operation"):
        QREmbeddingBag(10, 2, 3, operation="sub")
    fam = given_.family
    assert fam.table_sizes == (4, 3) and fam.is_complementary()


def test_qr_integer_quotients_above_2_pow_24():
    n = 2**25 + 3
    m = 3
    wq = torch.arange(-(-n // m), dtype=torch.float64).unsqueeze(1)  # row id as the value
    wr = torch.arange(m, dtype=torch.float64).unsqueeze(1)
    bag = QREmbeddingBag(n, [1, 1], m, operation="concat", mode="sum", _weight=(wq, wr))
    xs = [n - 1, n - 2, n - 3, 2**24 + 1, 2**25 - 1, 2**24 * 2 - 3]
    out = bag(torch.tensor(xs).unsqueeze(1))
    assert out[:, 0].long().tolist() == [x // m for x in xs]
    assert out[:, 1].long().tolist() == [x % m for x in xs]
    # float32 division (DLRM's) gets some of these wrong: the test can tell the difference
    assert (torch.tensor(xs, dtype=torch.float32) / m).long().tolist() != [x // m for x in xs]
    with pytest.raises(IndexError, match=str(n)):
        bag(torch.tensor([[n]]))


def test_qr_before_pool_is_the_paper_composition():
    gen = torch.Generator().manual_seed(2)
    bag = QREmbeddingBag(40, 3, 5, mode="sum", dtype=torch.float64)
    x = torch.randint(0, 40, (2, 4), generator=gen)
    out = bag(x)
    want = (bag.weight_q[x // 5] * bag.weight_r[x % 5]).sum(1)
    torch.testing.assert_close(out, want)
    assert not torch.allclose(out, dlrm_style_forward(bag, x))


# ----------------------------------------------------------------------------------------------
# composition semantics, uniqueness, initialisation


@pytest.mark.parametrize("operation", ["add", "concat"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_add_and_concat_before_pool_equals_after_pool(operation, mode):
    gen = torch.Generator().manual_seed(4)
    before = CompositionalEmbeddingBag(60, 6, family=chinese_remainder(60, k=3), operation=operation, mode=mode)
    after = CompositionalEmbeddingBag(60, 6, family=chinese_remainder(60, k=3), operation=operation, mode=mode,
                                      compose="after_pool", _weights=[w.detach().clone() for w in before.weights])
    x = torch.randint(0, 60, (20,), generator=gen)
    offsets = torch.tensor([0, 1, 5, 5, 12])
    torch.testing.assert_close(before(x, offsets), after(x, offsets))


def test_mult_before_pool_differs_from_after_pool_on_multi_index_bags():
    before = CompositionalEmbeddingBag(60, 6, num_collisions=5, mode="sum")
    after = CompositionalEmbeddingBag(60, 6, num_collisions=5, mode="sum", compose="after_pool",
                                      _weights=[w.detach().clone() for w in before.weights])
    x = torch.tensor([[1, 2, 3], [40, 50, 59]])
    assert not torch.allclose(before(x), after(x))
    single = torch.tensor([[7], [59]])
    torch.testing.assert_close(before(single), after(single))


def _all_embeddings(bag, n):
    return bag(torch.arange(n).unsqueeze(1)).detach()


@pytest.mark.parametrize("family_kind", ["qr", "gqr", "crt"])
def test_concat_of_distinct_rows_is_unique(family_kind):
    # Theorem 1: a complementary family + concatenation of distinct rows -> n distinct embeddings.
    n = 97
    family = family_for(family_kind, n)
    bag = CompositionalEmbeddingBag(n, 2 * family.k, family=family, operation="concat", mode="sum")
    with torch.no_grad():  # distinct rows in every table (row i holds i): nothing random
        for w in bag.weights:
            w.copy_(torch.arange(w.shape[0], dtype=w.dtype).unsqueeze(1).expand_as(w))
    emb = _all_embeddings(bag, n)
    assert torch.unique(emb, dim=0).shape[0] == n


@pytest.mark.parametrize("operation", ["add", "mult"])
@pytest.mark.parametrize("family_kind", ["qr", "gqr", "crt"])
def test_add_and_mult_are_unique_under_random_init(operation, family_kind):
    n = 97
    family = family_for(family_kind, n)
    bag = CompositionalEmbeddingBag(n, 4, family=family, operation=operation, mode="sum", dtype=torch.float64)
    emb = _all_embeddings(bag, n)
    assert torch.unique(emb, dim=0).shape[0] == n
    # a non-complementary family cannot be unique, and is refused unless asked for
    bad = PartitionFamily([RemainderPartition(n, 7)])
    with pytest.raises(ValueError, match="not complementary"):
        CompositionalEmbeddingBag(n, 4, family=bad, operation=operation)
    coll = CompositionalEmbeddingBag(n, 4, family=bad, operation=operation, allow_collisions=True)
    assert torch.unique(_all_embeddings(coll, n), dim=0).shape[0] == 7


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("family_kind", ["qr", "gqr", "naive", "dlrm"])
def test_initialisation_matches_full_table_scale(operation, family_kind):
    torch.manual_seed(0)
    n = 20_000
    target = 1.0 / (3 * n)  # variance of U(-sqrt(1/n), sqrt(1/n))
    if family_kind == "dlrm":
        bag = QREmbeddingBag(n, 32, 50, operation=operation, mode="sum")
    else:
        family = {"qr": quotient_remainder(n, 50), "gqr": generalized_qr(n, k=3), "naive": naive(n)}[family_kind]
        bag = CompositionalEmbeddingBag(n, 32, family=family, operation=operation, mode="sum")
    emb = _all_embeddings(bag, n).double()
    assert abs(emb.var().item() / target - 1) < 0.25
    assert abs(emb.mean().item()) < 0.1 * target ** 0.5


# ----------------------------------------------------------------------------------------------
# sparse gradients and optimisers


@pytest.mark.parametrize("module", ["compositional", "qr"])
@pytest.mark.parametrize("compose", COMPOSES)
def test_sparse_gradients_with_sgd_and_sparse_adam(module, compose):
    def build(sparse):
        torch.manual_seed(5)
        if module == "qr":
            return QREmbeddingBag(200, 4, 8, mode="sum", sparse=sparse, compose=compose)
        return CompositionalEmbeddingBag(200, 4, family=generalized_qr(200, k=3), mode="sum", sparse=sparse,
                                         compose=compose)

    x = torch.tensor([3, 17, 150, 199, 17, 64])
    offsets = torch.tensor([0, 2, 6])
    dense, sparse = build(False), build(True)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.5)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.5)
    for _ in range(2):
        for bag, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            bag(x, offsets).pow(2).sum().backward()
            opt.step()
    assert all(p.grad.is_sparse for p in sparse.parameters())
    for pd, ps in zip(dense.parameters(), sparse.parameters()):
        torch.testing.assert_close(pd, ps)

    adam_bag = build(True)
    before = [p.detach().clone() for p in adam_bag.parameters()]
    adam = torch.optim.SparseAdam(list(adam_bag.parameters()), lr=0.1)
    adam.zero_grad()
    adam_bag(x, offsets).pow(2).sum().backward()
    adam.step()
    for p, b in zip(adam_bag.parameters(), before):
        touched = torch.zeros(p.shape[0], dtype=torch.bool)
        touched[p.grad.coalesce().indices()[0]] = True
        assert not torch.equal(p[touched], b[touched])  # rows in the batch moved
        assert torch.equal(p[~touched], b[~touched])  # the others did not


# ----------------------------------------------------------------------------------------------
# construction, errors, repr, backends


def test_bad_input_errors_name_the_module_value_and_n():
    bag = CompositionalEmbeddingBag(50, 4, num_collisions=5, mode="sum")
    with pytest.raises(IndexError, match=r"CompositionalEmbeddingBag: index 50 .*num_embeddings=50"):
        bag(torch.tensor([[1, 50]]))
    with pytest.raises(IndexError, match=r"CompositionalEmbeddingBag: index -1 .*50"):
        bag(torch.tensor([1, -1]), torch.tensor([0]))
    qr = QREmbeddingBag(50, 4, 5)
    with pytest.raises(IndexError, match=r"QREmbeddingBag: index 77 .*50"):
        qr(torch.tensor([77]), torch.tensor([0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0 .*got 1"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="mode='sum'"):
        qr(torch.tensor([[1, 2]]), None, torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"shape of input \(1, 2\)"):
        bag(torch.tensor([[1, 2]]), None, torch.ones(2))
    with pytest.raises(TypeError, match="float"):
        bag(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="offsets must be None"):
        bag(torch.tensor([[1, 2]]), torch.tensor([0]))


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"concat_dims=\[3, 3\].*embedding_dim=8"):
        CompositionalEmbeddingBag(50, 8, operation="concat", concat_dims=[3, 3])
    with pytest.raises(ValueError, match=r"concat_dims=\[3, 3, 2\]"):
        CompositionalEmbeddingBag(50, 8, operation="concat", concat_dims=[3, 3, 2])
    with pytest.raises(ValueError, match="concat_dims"):
        CompositionalEmbeddingBag(50, 8, operation="mult", concat_dims=[4, 4])
    with pytest.raises(ValueError, match="n=40"):
        CompositionalEmbeddingBag(50, 8, family=quotient_remainder(40, 4))
    with pytest.raises(ValueError, match="embedding_dim"):
        CompositionalEmbeddingBag(50, 0)
    with pytest.raises(ValueError, match="mode"):
        CompositionalEmbeddingBag(50, 4, mode="median")
    with pytest.raises(ValueError, match="backend"):
        CompositionalEmbeddingBag(50, 4, backend="cuda-magic")
    with pytest.raises(ValueError, match="not complementary"):
        CompositionalEmbeddingBag(50, 4, family=PartitionFamily([HashPartition(50, 10, seed=1)]))
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        QREmbeddingBag(50, 4, 5, scale_grad_by_freq=True, sparse=True)
    with pytest.raises(ValueError, match=r"_weights\[1\] has shape"):
        CompositionalEmbeddingBag(50, 4, num_collisions=5, _weights=[torch.randn(5, 4), torch.randn(9, 4)])


def test_concat_widths_and_output_width():
    bag = CompositionalEmbeddingBag(1000, 16, family=generalized_qr(1000, k=3), operation="concat")
    assert bag.dims == (6, 5, 5) and [w.shape[1] for w in bag.weights] == [6, 5, 5]
    assert bag(torch.tensor([[0, 999]])).shape == (1, 16)
    explicit = CompositionalEmbeddingBag(1000, 16, family=generalized_qr(1000, k=3), operation="concat",
                                         concat_dims=[10, 3, 3])
    assert explicit(torch.tensor([[5]])).shape == (1, 16)
    for op in ("add", "mult"):
        assert CompositionalEmbeddingBag(1000, 16, operation=op)(torch.tensor([[5]])).shape == (1, 16)


def test_repr_reset_from_pretrained_device_dtype_and_backend():
    bag = CompositionalEmbeddingBag(100, 8, num_collisions=10, backend="auto", dtype=torch.float64)
    assert bag.weights[0].dtype == torch.float64 and bag.weights[0].device.type == "cpu"
    text = repr(bag)
    assert "100, 8" in text and "operation=mult" in text and "backend=auto" in text
    bag(torch.tensor([[1, 2]]))
    assert "backend=auto (torch)" in repr(bag)  # the backend chosen is shown
    old = [w.detach().clone() for w in bag.weights]
    bag.reset_parameters()
    assert not torch.equal(old[0], bag.weights[0])
    assert "backend=torch" in repr(QREmbeddingBag(10, 2, 3))
    tables = [torch.randn(4, 3), torch.randn(3, 3)]
    pre = CompositionalEmbeddingBag.from_pretrained(tables, num_embeddings=10, operation="add", mode="sum")
    assert not any(w.requires_grad for w in pre.weights)
    want = tables[0][torch.tensor([7 % 4])] + tables[1][torch.tensor([7 // 4])]
    torch.testing.assert_close(pre(torch.tensor([[7]])), want)
    cat = CompositionalEmbeddingBag.from_pretrained([torch.randn(4, 2), torch.randn(3, 5)], num_embeddings=10,
                                                    operation="concat")
    assert cat.embedding_dim == 7 and cat(torch.tensor([[9]])).shape == (1, 7)
    with pytest.raises(BackendUnavailableError, match="scale_grad_by_freq"):
        CompositionalEmbeddingBag(100, 8, backend="triton", scale_grad_by_freq=True)(torch.tensor([[1]]))


def test_max_norm_renormalises_rows():
    bag = QREmbeddingBag(20, 3, 4, mode="sum", max_norm=0.5, compose="after_pool")
    with torch.no_grad():
        bag.weight_q.fill_(1.0)
    bag(torch.tensor([[0, 9]]))
    norms = bag.weight_q.norm(dim=1)
    assert torch.allclose(norms[[0, 2]], torch.full((2,), 0.5))
    assert torch.allclose(norms[1], torch.tensor(3.0) ** 0.5)  # row 1 was not looked up


# ----------------------------------------------------------------------------------------------
# no indices at all; max ties; the one-hot fast path; one validation fetch per forward


def _build(kind, mode, compose, sparse=False, dtype=None):
    if kind == "qr":
        return QREmbeddingBag(30, 4, 4, mode=mode, compose=compose, sparse=sparse, dtype=dtype)
    return CompositionalEmbeddingBag(30, 4, family=generalized_qr(30, k=3), mode=mode, compose=compose,
                                     sparse=sparse, dtype=dtype)


@pytest.mark.parametrize("kind", ["qr", "compositional"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compose", COMPOSES)
def test_no_indices_gives_zero_gradients(kind, mode, compose):
    inputs = [
        (torch.zeros(3, 0, dtype=torch.long), None),  # 2-D, bags of length 0
        (torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long)),  # all bags empty
        (torch.tensor([5, 7]), torch.tensor([0, 0, 0])),  # include_last_offset: all dropped
    ]
    for sparse, dtype in [(False, None), (True, None), (False, torch.bfloat16)]:
        bag = _build(kind, mode, compose, sparse, dtype)
        for i, (x, offsets) in enumerate(inputs):
            bag.include_last_offset = i == 2
            out = bag(x) if offsets is None else bag(x, offsets)
            assert out.shape[0] == (2 if i == 2 else 3) and not out.any()
            assert out.requires_grad
            out.sum().backward()
            for p in bag.parameters():
                assert p.grad is not None and not p.grad.to_dense().any()
                p.grad = None


@pytest.mark.parametrize("lengths, form", [
    ([3, 3, 3, 3], "offsets"), ([3, 3, 3, 3], "last_offset"), ([3, 3, 3, 3], "2d"),
    ([2, 0, 4, 1, 3], "offsets"), ([2, 0, 4, 1, 3], "last_offset"),  # (2-D input: one length)
])
@pytest.mark.parametrize("sparse", [False, True])
def test_identity_family_max_with_ties_reproduces_nn_embedding_bag(lengths, form, sparse):
    gen = torch.Generator().manual_seed(len(lengths))
    n = 8
    ref = nn.EmbeddingBag(n, 4, mode="max", include_last_offset=(form == "last_offset"))
    with torch.no_grad():  # small integers: many equal values, and two equal rows
        ref.weight.copy_(torch.randint(-2, 3, (n, 4), generator=gen).float())
        ref.weight[7] = ref.weight[2]
    ours = CompositionalEmbeddingBag.from_pretrained(
        [ref.weight.detach().clone()], family=naive(n), freeze=False, mode="max", sparse=sparse,
        include_last_offset=(form == "last_offset"),
    )
    starts = torch.tensor([0] + lengths).cumsum(0)
    x = torch.randint(0, n, (int(starts[-1]),), generator=gen)
    x[1], x[2], x[3] = x[0], 7, 2  # a repeated index and two equal rows
    if form == "2d":
        args = (x.view(len(lengths), lengths[0]),)
    elif form == "last_offset":
        args = (x, starts)
    else:
        args = (x, starts[:-1])
    out_ref, out = ref(*args), ours(*args)
    assert torch.equal(out, out_ref)
    g = torch.randn(out.shape, generator=gen)
    out_ref.backward(g)
    out.backward(g)
    grad = ours.weights[0].grad
    assert grad.is_sparse == sparse
    torch.testing.assert_close(grad.to_dense(), ref.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("operation", OPS)
@pytest.mark.parametrize("compose", COMPOSES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("psw", [False, True])
def test_qr_one_hot_bags_forward_and_gradients(operation, compose, sparse, psw):
    # one index per bag (offsets == arange, or 2-D (B, 1)): the fast path, against DLRM's two
    # pooled lookups computed with plain autograd
    gen = torch.Generator().manual_seed(6)
    dims = [4, 3] if operation == "concat" else 4
    bag = QREmbeddingBag(1000, dims, 7, operation=operation, mode="sum", compose=compose, sparse=sparse,
                         dtype=torch.float64)
    twin = QREmbeddingBag(1000, dims, 7, operation=operation, mode="sum", compose="after_pool", dtype=torch.float64,
                          _weight=(bag.weight_q.detach().clone(), bag.weight_r.detach().clone()))
    x = torch.randint(0, 1000, (64,), generator=gen)
    x[1] = x[0]
    w = torch.rand(64, generator=gen, dtype=torch.float64).requires_grad_() if psw else None
    for args in [(x, torch.arange(64)), (x.view(64, 1),)]:
        ww = None if w is None else (w if len(args) == 2 else w.view(64, 1))
        out = bag(*args, per_sample_weights=ww)
        want = dlrm_style_forward(twin, x, torch.arange(64), None)
        if psw:  # before_pool scales the composed vector once; after_pool scales every table
            factor = w if compose == "before_pool" or operation != "mult" else w * w
            want = want * factor.unsqueeze(1) if operation != "concat" else want * w.unsqueeze(1)
        torch.testing.assert_close(out, want)
        g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        inputs = [bag.weight_q, bag.weight_r] + ([w] if psw else [])
        twin_inputs = [twin.weight_q, twin.weight_r] + ([w] if psw else [])
        got = torch.autograd.grad(out, inputs, g)
        exp = torch.autograd.grad(want, twin_inputs, g)
        assert all(a.is_sparse == sparse for a in got[:2])
        for a, b in zip(got, exp):
            torch.testing.assert_close(a.to_dense(), b)


def test_qr_encode_is_integer_exact():
    bag = QREmbeddingBag(2**40, 2, 2**20 + 7)
    x = torch.tensor([0, 1, 2**20 + 6, 2**20 + 7, 2**39 + 12345, 2**40 - 1])
    codes = bag.encode(x)
    assert codes.tolist() == [[v // (2**20 + 7) for v in x.tolist()], [v % (2**20 + 7) for v in x.tolist()]]


@pytest.mark.parametrize("kind", ["qr", "compositional"])
def test_forward_validates_once_and_needs_no_other_sync(kind, monkeypatch):
    # One fetch of the validation stats per forward (on CUDA: the forward's single device-to-host
    # sync); the bag length comes from it, so the kernels never call _fixed_bag_length (a sync)
    # and the family's own range check (another sync) is skipped.
    fetches = []
    real = CF._inputs._fetch
    monkeypatch.setattr(CF._inputs, "_fetch", lambda stats: fetches.append(len(stats)) or real(stats))

    def no_sync(*args, **kwargs):
        raise AssertionError("a second device sync")

    monkeypatch.setattr(CF.reference, "fixed_bag_length", no_sync)
    monkeypatch.setattr(PartitionFamily, "encode", no_sync)
    x = torch.randint(0, 30, (12,))
    for mode, compose in itertools.product(MODES, COMPOSES):
        bag = _build(kind, mode, compose)
        for args in [(x, torch.arange(12)), (x, torch.tensor([0, 2, 2, 7])), (x.view(4, 3),), (x, torch.arange(0, 12, 3))]:
            fetches.clear()
            bag(*args).sum().backward()
            assert len(fetches) == 1, (mode, compose, args)
    with pytest.raises(IndexError, match=r"index 30 .*num_embeddings=30"):
        bag(torch.tensor([1, 30]), torch.arange(2))  # the one-hot shortcut still checks the range


# ----------------------------------------------------------------------------------------------
# review: validation gaps found by probing (each was silently accepted or failed obscurely)


def _all_module_kinds(**kwargs):
    from compemb.baselines import HashEmbeddingBag, MixedDimEmbeddingBag
    from compemb.path import PathEmbeddingBag

    mods = [CompositionalEmbeddingBag(30, 4, family=generalized_qr(30, k=3), operation=op, compose=c, **kwargs)
            for op in OPS for c in COMPOSES]
    mods += [QREmbeddingBag(30, 4, 4, operation=op, compose=c, **kwargs) for op in OPS for c in COMPOSES]
    mods += [PathEmbeddingBag(30, 4, num_collisions=4, **kwargs), HashEmbeddingBag(30, 4, num_buckets=7, **kwargs),
             MixedDimEmbeddingBag(30, 4, md_dim=2, **kwargs)]
    return mods


@pytest.mark.parametrize("form", ["one_hot", "bags", "2d"])
def test_per_sample_weights_of_another_dtype_than_the_tables_is_refused(form):
    # nn.EmbeddingBag refuses it; before the fix one path (mult, one-hot bags) silently cast
    # and every other path failed deep inside torch.embedding_bag
    x = {"one_hot": (torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])),
         "bags": (torch.tensor([1, 2, 3]), torch.tensor([0, 1])),
         "2d": (torch.tensor([[1, 2], [3, 4]]), None)}[form]
    for bag in _all_module_kinds(mode="sum"):
        psw = torch.ones(x[0].shape, dtype=torch.float64)
        with pytest.raises(TypeError, match=rf"{type(bag).__name__}: per_sample_weights .*float64.*float32"):
            bag(*x, per_sample_weights=psw)
        assert bag(*x, per_sample_weights=psw.float()).dtype == torch.float32

    # the kernel contract takes float weights of any dtype (the reference casts them; it crashed)
    w = [torch.randn(4, 3), torch.randn(3, 3)]
    codes, psw = torch.tensor([[0, 1, 3], [2, 2, 0]]), torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    for op, compose, offsets in itertools.product(OPS, COMPOSES, [torch.tensor([0, 2, 3]), torch.tensor([0, 1, 2, 3])]):
        got = CF.embedding_bag_codes(codes, offsets, w, op, "sum", compose, psw)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, CF.embedding_bag_codes(codes, offsets, w, op, "sum", compose, psw.float()))
    with pytest.raises(TypeError, match="floating point"):
        CF.embedding_bag_codes(codes, torch.tensor([0, 3]), w, "add", "sum", "after_pool", torch.ones(3, dtype=torch.long))


def test_non_integer_widths_are_refused_not_truncated():
    with pytest.raises(TypeError, match=r"concat_dims\[0\].*2\.7"):
        CompositionalEmbeddingBag(100, 8, family=generalized_qr(100, k=2), operation="concat", concat_dims=[2.7, 6.2])
    with pytest.raises(TypeError, match=r"embedding_dim.*16\.5"):
        QREmbeddingBag(100, [16.5, 16.5], 4)
    with pytest.raises(TypeError, match=r"embedding_dim.*16\.0"):
        QREmbeddingBag(100, 16.0, 4)
    # integer-valued numpy / torch widths are fine
    import numpy as np

    bag = CompositionalEmbeddingBag(100, 8, family=generalized_qr(100, k=2), operation="concat",
                                    concat_dims=[np.int64(3), torch.tensor(5)])
    assert bag.dims == (3, 5)
    assert QREmbeddingBag(100, np.int64(6), 4).embedding_dim == [6, 6]


def test_family_must_be_a_partition_family():
    with pytest.raises(TypeError, match="PartitionFamily.*list"):
        CompositionalEmbeddingBag(10, 4, family=[RemainderPartition(10, 3)])


def test_tables_of_mixed_dtypes_are_refused():
    fam = quotient_remainder(10, 4)
    with pytest.raises(ValueError, match=r"float32.*float64"):
        CompositionalEmbeddingBag.from_pretrained([torch.randn(4, 3), torch.randn(3, 3, dtype=torch.float64)], fam)
    with pytest.raises(ValueError, match=r"float32.*float64"):
        QREmbeddingBag(10, 3, 4, _weight=(torch.randn(3, 3), torch.randn(4, 3, dtype=torch.float64)))
    with pytest.raises(TypeError, match="floating"):
        CompositionalEmbeddingBag.from_pretrained([torch.ones(4, 3, dtype=torch.long)] * 2, fam)


@pytest.mark.parametrize("max_norm, error", [(-1.0, ValueError), (0.0, ValueError), ("a", TypeError),
                                             (float("nan"), ValueError)])
def test_max_norm_must_be_a_positive_number(max_norm, error):
    from compemb.baselines import HashEmbeddingBag, MixedDimEmbeddingBag

    for make in (lambda: CompositionalEmbeddingBag(30, 4, max_norm=max_norm),
                 lambda: QREmbeddingBag(30, 4, 4, max_norm=max_norm),
                 lambda: HashEmbeddingBag(30, 4, num_buckets=7, max_norm=max_norm),
                 lambda: MixedDimEmbeddingBag(30, 4, md_dim=2, max_norm=max_norm)):
        with pytest.raises(error, match="max_norm"):
            make()


def test_qr_family_when_num_collisions_exceeds_n():
    # DLRM's module accepts m > n (a remainder table with unused rows), and so does ours; its
    # family used to raise instead of giving the codes forward uses
    bag = QREmbeddingBag(5, 4, 10, mode="sum")
    x = torch.arange(5)
    assert bag.family.encode(x).tolist() == bag.encode(x).tolist() == [[0] * 5, list(range(5))]
    assert bag.family.is_complementary()
    assert bag(x.view(5, 1)).shape == (5, 4)


@st.composite
def random_family_problems(draw):
    """Families the fixed-kind strategy above never builds: random radices and (not necessarily
    coprime) moduli, hash partitions with allow_collisions, n = 1; int32 indices, and indices
    after the last offset (dropped with include_last_offset)."""
    n = draw(st.integers(1, 50))
    kind = draw(st.sampled_from(["gqr", "crt", "hash"]))
    if kind == "gqr":
        family = generalized_qr(n, radices=draw(st.lists(st.integers(1, 8), min_size=1, max_size=4)), check=False)
    elif kind == "crt":
        family = chinese_remainder(n, moduli=draw(st.lists(st.integers(1, 12), min_size=1, max_size=4)), check=False)
    else:
        family = PartitionFamily([HashPartition(n, draw(st.integers(1, 8)), seed=s) for s in range(draw(st.integers(1, 3)))])
    operation = draw(st.sampled_from(OPS))
    dim = draw(st.integers(family.k if operation == "concat" else 1, 6))
    mode, compose = draw(st.sampled_from(MODES)), draw(st.sampled_from(COMPOSES))
    lengths = draw(st.lists(st.integers(0, 5), max_size=5))
    trailing = draw(st.integers(0, 2))
    use_psw = mode == "sum" and draw(st.booleans())
    return family, operation, dim, mode, compose, lengths, trailing, use_psw, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(random_family_problems())
def test_random_families_with_int32_input_equal_naive_loop(problem):
    family, operation, dim, mode, compose, lengths, trailing, use_psw, seed = problem
    gen = torch.Generator().manual_seed(seed)
    bag = CompositionalEmbeddingBag(family.n, dim, family=family, operation=operation, mode=mode, compose=compose,
                                    include_last_offset=True, allow_collisions=True, dtype=torch.float64)
    with torch.no_grad():
        for w in bag.weights:
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float64))
    bags = [torch.randint(0, family.n, (length,), generator=gen).tolist() for length in lengths]
    psw = [torch.randn(len(b), generator=gen, dtype=torch.float64).tolist() for b in bags] if use_psw else None
    flat = [x for b in bags for x in b] + torch.randint(0, family.n, (trailing,), generator=gen).tolist()
    starts = list(itertools.accumulate([0] + lengths))
    flat_psw = None
    if use_psw:
        flat_psw = torch.tensor([s for p in psw for s in p] + [1.0] * trailing, dtype=torch.float64)
    out = bag(torch.tensor(flat, dtype=torch.int32), torch.tensor(starts, dtype=torch.int32), flat_psw)
    codes_of = lambda x: [int(p(torch.tensor([x]))[0]) for p in family]  # noqa: E731
    torch.testing.assert_close(out, naive_module_output(list(bag.weights), codes_of, bags, operation, mode, compose, psw))
