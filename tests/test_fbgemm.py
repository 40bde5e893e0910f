"""The FBGEMM backend and collection equal the torch reference; fused optimizer steps equal torch's."""
import zlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compemb.collection import CompositionalEmbeddingBagCollection
from compemb.functional import embedding_bag_codes as reference_embedding_bag
from compemb.kernels import BackendUnavailableError, resolve_backend
from compemb.kernels._fbgemm import BACKEND, exactness_reason, fbgemm_embedding_bag
from compemb.options import BagOptions

pytestmark = pytest.mark.filterwarnings("ignore")


@st.composite
def exact_problems(draw):
    """Configurations FBGEMM computes exactly, with empty bags and repeated indices."""
    k = draw(st.integers(1, 4))
    operation = draw(st.sampled_from(["mult", "add", "concat"]))
    mode = draw(st.sampled_from(["sum", "mean"]))
    compose = "after_pool" if operation == "mult" else draw(st.sampled_from(["before_pool", "after_pool"]))
    sizes = [draw(st.integers(1, 6)) for _ in range(k)]
    dims = [draw(st.integers(1, 9)) for _ in range(k)] if operation == "concat" else [draw(st.integers(1, 12))] * k
    lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=5))
    use_psw = mode == "sum" and draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    weights = [torch.randn(r, d, generator=gen).requires_grad_() for r, d in zip(sizes, dims)]
    offsets = torch.tensor([0] + lengths).cumsum(0)
    n = int(offsets[-1])
    codes = torch.stack([torch.randint(0, r, (n,), generator=gen) for r in sizes]).reshape(k, n)
    if n >= 2:
        codes[:, 1] = codes[:, 0]  # a repeated index inside a bag
    psw = torch.rand(n, generator=gen).requires_grad_() if use_psw else None
    return dict(codes=codes, offsets=offsets, weights=weights, operation=operation, mode=mode,
                compose=compose, per_sample_weights=psw)


def _grads(out, inputs, g):
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    got = torch.autograd.grad(out, inputs, g, allow_unused=True)
    return [torch.zeros_like(x) if gr is None else gr for x, gr in zip(inputs, got)]


@settings(max_examples=40, deadline=None)
@given(exact_problems())
def test_backend_equals_reference_forward_and_gradients(p):
    assert BACKEND.unsupported_reason(BagOptions(operation=p["operation"], mode=p["mode"], compose=p["compose"],
                                                 k=len(p["weights"]), dtype=torch.float32,
                                                 device=torch.device("cpu"))) is None
    out = fbgemm_embedding_bag(**p)
    ref = reference_embedding_bag(**p)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    inputs = list(p["weights"]) + ([p["per_sample_weights"]] if p["per_sample_weights"] is not None else [])
    g = torch.randn_like(ref)
    for a, b in zip(_grads(out, inputs, g), _grads(ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mult_before_pool_served_only_for_one_hot_bags():
    gen = torch.Generator().manual_seed(1)
    w = [torch.randn(5, 4, generator=gen, requires_grad=True), torch.randn(3, 4, generator=gen, requires_grad=True)]
    codes = torch.tensor([[1, 4, 0], [2, 2, 1]])
    one_hot = torch.tensor([0, 1, 1, 2, 3])  # lengths 1, 0, 1, 1
    psw = torch.rand(3, generator=gen)
    out = fbgemm_embedding_bag(codes, one_hot, w, "mult", "sum", "before_pool", psw)
    torch.testing.assert_close(out, reference_embedding_bag(codes, one_hot, w, "mult", "sum", "before_pool", psw))
    with pytest.raises(ValueError, match="before_pool"):
        fbgemm_embedding_bag(codes, torch.tensor([0, 2, 3]), w, "mult", "sum", "before_pool")


def test_backend_refuses_by_name():
    base = dict(operation="add", mode="sum", compose="before_pool", k=2, dtype=torch.float32,
                device=torch.device("cpu"))
    assert resolve_backend("fbgemm", BagOptions(**base)) is BACKEND
    for change, word in [(dict(mode="max"), "max"), (dict(operation="mult"), "before_pool"),
                         (dict(dtype=torch.float16), "float16"), (dict(sparse=True), "sparse"),
                         (dict(max_norm=2.0), "max_norm")]:
        with pytest.raises(BackendUnavailableError, match=word):
            resolve_backend("fbgemm", BagOptions(**dict(base, **change)))
    # auto never picks fbgemm for a configuration it does not serve exactly
    assert resolve_backend("auto", BagOptions(**dict(base, operation="mult"))).name != "fbgemm"
    assert exactness_reason("mult", "sum", "after_pool", 3) is None


# -- the collection -----------------------------------------------------------------------------

SPECS = [
    ("qr_mult", 100, 8, 10, "mult", "sum", "after_pool"),
    ("full", 50, 4, None, "add", "mean"),
    ("qr_concat", 200, 8, 3, "concat", "sum"),
    ("qr_add", 300, 12, 4, "add", "mean"),
]


def _batch(gen, specs=SPECS, B=5, max_len=4):
    feats = []
    for s in specs:
        lengths = torch.randint(0, max_len + 1, (B,), generator=gen)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        idx = torch.randint(0, s[1], (int(offsets[-1]),), generator=gen)
        if idx.numel() >= 2:
            idx[1] = idx[0]
        feats.append((idx, offsets, True))
    return feats


@pytest.mark.parametrize("optimizer", [None, "exact_sgd"])
def test_collection_forward_and_gradients_equal_torch(optimizer):
    gen = torch.Generator().manual_seed(zlib.crc32(f"collection {optimizer}".encode()))
    ref = CompositionalEmbeddingBagCollection(SPECS, backend="torch", seed=3)
    fb = CompositionalEmbeddingBagCollection(SPECS, backend="fbgemm", optimizer=optimizer, seed=3)
    for a, b in zip(ref.tables(), fb.tables()):
        assert torch.equal(a.detach(), b.detach())
    feats = _batch(gen)
    want, got = ref(feats), fb(feats)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if optimizer is None:  # dense TBE: gradients land in .grad of the flat weights
        g = [torch.randn(w.shape, generator=gen) for w in want]
        torch.autograd.backward(want, g)
        torch.autograd.backward(got, g)
        flat = torch.cat([p.grad.reshape(-1) for p in ref.weights])
        torch.testing.assert_close(fb.tbe.weights.grad, flat, rtol=1e-5, atol=1e-6)


def _fused_vs_reference(optimizer, steps=2):
    gen = torch.Generator().manual_seed(zlib.crc32(f"fused {optimizer}".encode()))
    lr, eps = 0.05, 1e-8
    ref = CompositionalEmbeddingBagCollection(SPECS, backend="torch", seed=7)
    fb = CompositionalEmbeddingBagCollection(SPECS, backend="fbgemm", optimizer=optimizer,
                                             learning_rate=lr, eps=eps, seed=7)
    state = [torch.zeros(w.shape[0]) for w in ref.tables()]
    for _ in range(steps):
        feats = _batch(gen)
        want = ref(feats)
        g = [torch.randn(w.shape, generator=gen) for w in want]
        torch.autograd.backward(want, g)
        with torch.no_grad():
            for i, w in enumerate(ref.tables()):
                grad = w.grad
                if optimizer == "exact_sgd":
                    w -= lr * grad
                else:  # reference row-wise Adagrad: state += mean(g^2 over the row)
                    state[i] += grad.pow(2).mean(1)
                    w -= lr * grad / (state[i].sqrt() + eps).unsqueeze(1)
                w.grad = None
        torch.autograd.backward(fb(feats), g)  # the fused update happens here
        for a, b in zip(fb.tables(), ref.tables()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    return fb, state


def test_fused_exact_sgd_step_equals_torch_sgd():
    fb, _ = _fused_vs_reference("exact_sgd")
    # and equals torch.optim.SGD on the same gradients
    gen = torch.Generator().manual_seed(11)
    ref = CompositionalEmbeddingBagCollection(SPECS, backend="torch", seed=5)
    fb = CompositionalEmbeddingBagCollection(SPECS, backend="fbgemm", optimizer="exact_sgd",
                                             learning_rate=0.1, seed=5)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    feats = _batch(gen)
    want = ref(feats)
    g = [torch.randn(w.shape, generator=gen) for w in want]
    torch.autograd.backward(want, g)
    opt.step()
    torch.autograd.backward(fb(feats), g)
    for a, b in zip(fb.tables(), ref.tables()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_fused_rowwise_adagrad_equals_reference_rowwise_adagrad():
    fb, state = _fused_vs_reference("exact_rowwise_adagrad", steps=2)
    for a, b in zip(fb.optimizer_states(), state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_collection_inputs_by_name_and_keyed_jagged():
    gen = torch.Generator().manual_seed(2)
    coll = CompositionalEmbeddingBagCollection(SPECS, backend="fbgemm", seed=1)
    feats = _batch(gen)
    as_list = coll(feats)
    as_dict = coll({s[0]: f for s, f in zip(SPECS, feats)})
    assert list(as_dict) == [s[0] for s in SPECS]
    for a, b in zip(as_list, as_dict.values()):
        assert torch.equal(a, b)

    class KJT:  # the three methods of torchrec's KeyedJaggedTensor the collection uses
        def keys(self):
            return [s[0] for s in SPECS]

        def values(self):
            return torch.cat([f[0] for f in feats])

        def offsets(self):
            parts, base = [], 0
            for idx, off, _ in feats:
                parts.append(off[:-1] + base)
                base += idx.numel()
            return torch.cat(parts + [torch.tensor([base])])

    for a, b in zip(as_list, coll(KJT()).values()):
        assert torch.equal(a, b)
    cat = coll(feats, concat=True)
    assert cat.shape == (5, sum(s[2] for s in SPECS))


def test_collection_refuses_by_name():
    with pytest.raises(ValueError, match="'m'.*max"):
        CompositionalEmbeddingBagCollection([("m", 10, 4, 2, "add", "max")])
    with pytest.raises(ValueError, match="multiples of 4"):
        CompositionalEmbeddingBagCollection([("w", 10, 6, 2, "add", "sum")], optimizer="exact_sgd")
    with pytest.raises(ValueError, match="duplicate feature name 'a'"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 2, "add", "sum")] * 2)
    with pytest.raises(ValueError, match="needs backend='fbgemm'"):
        CompositionalEmbeddingBagCollection([("a", 10, 4, 2, "add", "sum")], backend="torch",
                                            optimizer="exact_sgd")
    coll = CompositionalEmbeddingBagCollection([("bp", 100, 4, 10, "mult", "sum")])
    one_hot = coll([(torch.tensor([[3], [77]]), None)])[0]
    assert one_hot.shape == (2, 4)
    with pytest.raises(ValueError, match="'bp'.*before_pool"):
        coll([(torch.tensor([[3, 4], [77, 1]]), None)])


@pytest.mark.parametrize("operation, compose", [("add", "before_pool"), ("concat", "before_pool"),
                                                ("mult", "after_pool")])
def test_module_with_fbgemm_backend_equals_torch_backend(operation, compose):
    from compemb import QREmbeddingBag

    gen = torch.Generator().manual_seed(zlib.crc32(f"module {operation} {compose}".encode()))
    fb = QREmbeddingBag(500, 8, num_collisions=6, operation=operation, compose=compose, mode="mean",
                        backend="fbgemm")
    ref = QREmbeddingBag(500, 8, num_collisions=6, operation=operation, compose=compose, mode="mean",
                         _weight=[fb.weight_q.detach().clone(), fb.weight_r.detach().clone()])
    x = torch.randint(0, 500, (7, 3), generator=gen)
    out, want = fb(x), ref(x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn(want.shape, generator=gen)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(fb.weight_q.grad, ref.weight_q.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fb.weight_r.grad, ref.weight_r.grad, rtol=1e-5, atol=1e-6)
    assert "fbgemm" in fb.extra_repr()


def test_module_asking_fbgemm_for_mult_before_pool_is_refused_by_name():
    from compemb import QREmbeddingBag

    bag = QREmbeddingBag(100, 4, num_collisions=5, operation="mult", compose="before_pool", backend="fbgemm")
    with pytest.raises(BackendUnavailableError, match="compose='before_pool'"):
        bag(torch.tensor([[1, 2]]))
