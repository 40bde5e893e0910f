"""The FBGEMM backend and collection equal the torch reference; fused optimizer steps equal torch's."""
import os
import zlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compemb.collection import CompositionalEmbeddingBagCollection
from compemb.functional import embedding_bag_codes as reference_embedding_bag
from compemb.kernels import BackendUnavailableError, resolve_backend
from compemb.kernels._fbgemm import BACKEND, exactness_reason, fbgemm_embedding_bag
from compemb.options import BagOptions
from compemb.partitions import generalized_qr

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
    ("qr_bp", 120, 8, 7, "mult", "mean", "before_pool"),  # multi-hot: the remainder-class split
    ("qr_bp_sum", 90, 4, 5, "mult", "sum", "before_pool"),
]
# no concat: every feature on the fused kernels' path
SMALL_SPECS = [s for s in SPECS if s[4] != "concat"] + [("qr_mean", 77, 4, 3, "mult", "mean", "after_pool")]


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


def _fbgemm(specs, native=True, cpu_ops=True, **kwargs):
    coll = CompositionalEmbeddingBagCollection(specs, backend="fbgemm", **kwargs)
    coll._backend.use_native = native
    coll._backend.use_cpu_ops = cpu_ops  # False: the TBE module's own forward (the path off CPU)
    return coll


@pytest.mark.parametrize("native", [True, False])
def test_collection_forward_and_dense_gradients_equal_torch(native):
    gen = torch.Generator().manual_seed(zlib.crc32(f"collection dense {native}".encode()))
    ref = CompositionalEmbeddingBagCollection(SPECS, backend="torch", seed=3)
    fb = _fbgemm(SPECS, native, seed=3)
    for a, b in zip(ref.tables(), fb.tables()):
        assert torch.equal(a.detach(), b.detach())
    feats = _batch(gen)
    want, got = ref(feats), fb(feats)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # dense trainable weights: one torch.optim.SGD step on each equals (the gradients are equal)
    g = [torch.randn(w.shape, generator=gen) for w in want]
    torch.autograd.backward(want, g)
    torch.autograd.backward(got, g)
    for module in (ref, fb):
        torch.optim.SGD(module.parameters(), lr=0.5).step()
    for a, b in zip(fb.tables(), ref.tables()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def _fused_vs_reference(optimizer, specs=SPECS, steps=2, native=True, max_len=4, cpu_ops=True):
    gen = torch.Generator().manual_seed(zlib.crc32(f"fused {optimizer} {native} {max_len}".encode()))
    lr, eps = 0.05, 1e-8
    ref = CompositionalEmbeddingBagCollection(specs, backend="torch", seed=7)
    fb = _fbgemm(specs, native, cpu_ops, optimizer=optimizer, learning_rate=lr, eps=eps, seed=7)
    state = [torch.zeros(w.shape[0]) for w in ref.tables()]
    for _ in range(steps):
        feats = _batch(gen, specs, max_len=max_len)
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
        got = fb(feats)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
        torch.autograd.backward(got, g)  # the fused update happens here
        for a, b in zip(fb.tables(), ref.tables()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    return fb, state


# (a general feature sends the whole collection down the PyTorch path: native or not is the same)
@pytest.mark.parametrize("specs, native", [(SPECS, True), (SMALL_SPECS, True), (SMALL_SPECS, False)],
                         ids=["with-general", "fused-path-native", "fused-path-torch"])
def test_fused_exact_sgd_step_equals_torch_sgd(specs, native):
    _fused_vs_reference("exact_sgd", specs, native=native)
    _fused_vs_reference("exact_sgd", specs, native=native, max_len=1)  # one-hot bags
    # and equals torch.optim.SGD on the same gradients
    gen = torch.Generator().manual_seed(11)
    ref = CompositionalEmbeddingBagCollection(specs, backend="torch", seed=5)
    fb = _fbgemm(specs, native, optimizer="exact_sgd", learning_rate=0.1, seed=5)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    feats = _batch(gen, specs)
    want = ref(feats)
    g = [torch.randn(w.shape, generator=gen) for w in want]
    torch.autograd.backward(want, g)
    opt.step()
    torch.autograd.backward(fb(feats), g)
    for a, b in zip(fb.tables(), ref.tables()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_fused_rowwise_adagrad_equals_reference_rowwise_adagrad(native):
    fb, state = _fused_vs_reference("exact_rowwise_adagrad", SMALL_SPECS, steps=2, native=native)
    for a, b in zip(fb.optimizer_states(), state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    fb, state = _fused_vs_reference("exact_rowwise_adagrad", SPECS, steps=1, native=native)
    for a, b in zip(fb.optimizer_states(), state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("optimizer", ["exact_sgd", "exact_rowwise_adagrad"])
def test_fused_step_through_the_tbe_module_equals_reference(optimizer):
    # the path off CPU: FBGEMM's module forward, the small tables updated by a gradient hook
    fb, state = _fused_vs_reference(optimizer, SMALL_SPECS, steps=2, max_len=1, cpu_ops=False)
    if optimizer == "exact_rowwise_adagrad":
        for a, b in zip(fb.optimizer_states(), state):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="remainder-class split.*CPU"):
        fb(_batch(torch.Generator().manual_seed(0), SMALL_SPECS, max_len=4))


def test_small_tables_live_outside_the_tbe():
    # one TBE table per quotient-remainder feature (its quotient table), the remainders beside it
    fb = _fbgemm(SMALL_SPECS, optimizer="exact_sgd")
    assert len(fb.tbe.split_embedding_weights()) == len(SMALL_SPECS)
    assert fb.small_weight.numel() == sum(s[3] * s[2] for s in SMALL_SPECS if s[3] is not None)
    assert [tuple(t.shape) for t in fb.tables("qr_mult")] == [(10, 8), (10, 8)]


def test_mult_before_pool_multi_hot_equals_torch_by_the_remainder_class_split():
    # refused before (FBGEMM pools each table on its own); exact now, forward and fused step
    specs = [("bp", 1000, 8, 6, "mult", "sum", "before_pool"), ("bpm", 37, 4, 36, "mult", "mean", "before_pool")]
    gen = torch.Generator().manual_seed(5)
    feats = _batch(gen, specs, B=7, max_len=9)
    ref = CompositionalEmbeddingBagCollection(specs, backend="torch", seed=2)
    for native in (True, False):
        fb = _fbgemm(specs, native, optimizer="exact_sgd", learning_rate=0.1, seed=2)
        torch.testing.assert_close(fb(feats, concat=True), ref(feats, concat=True).detach(), rtol=1e-5, atol=1e-6)
    _fused_vs_reference("exact_sgd", specs, steps=2)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_native_kernels_equal_the_torch_path(data):
    """Hypothesis: random small-table features, bag lengths (empty bags too) and one fused SGD step."""
    from compemb.kernels._native import native_unavailable_reason

    if native_unavailable_reason() is not None:
        pytest.skip(f"native kernels unavailable: {native_unavailable_reason()}")
    F = data.draw(st.integers(1, 4))
    specs = []
    for f in range(F):
        n = data.draw(st.integers(2, 300))
        m = data.draw(st.one_of(st.none(), st.integers(2, min(n, 70))))
        d = data.draw(st.sampled_from([4, 8, 16, 20]))
        op = data.draw(st.sampled_from(["mult", "add"]))
        specs.append((f"f{f}", n, d, m, op, data.draw(st.sampled_from(["sum", "mean"])),
                      data.draw(st.sampled_from(["before_pool", "after_pool"]))))
    max_len = data.draw(st.sampled_from([1, 3]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    feats = _batch(torch.Generator().manual_seed(seed), specs, B=data.draw(st.integers(1, 6)), max_len=max_len)
    outs, tables = [], []
    for native in (True, False):
        fb = _fbgemm(specs, native, optimizer="exact_sgd", learning_rate=0.1, seed=1)
        out = fb(feats, concat=True)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        outs.append(out.detach())
        tables.append([t.clone() for t in fb.tables()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*tables):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_two_lookups_before_one_backward_each_keep_their_saved_rows():
    # the in-place composition saves rows in a reused buffer: a second forward must not clobber it
    specs = SMALL_SPECS[:1] + [("full", 50, 4, None, "add", "sum")]
    gen = torch.Generator().manual_seed(3)
    a, b = _batch(gen, specs, max_len=1), _batch(gen, specs, max_len=1)
    ref = CompositionalEmbeddingBagCollection(specs, backend="torch", seed=4)
    fb = _fbgemm(specs, optimizer="exact_sgd", learning_rate=0.1, seed=4)
    (ref(a, concat=True).sum() + 2 * ref(b, concat=True).sum()).backward()
    with torch.no_grad():
        for w in ref.tables():
            w -= 0.1 * w.grad
    (fb(a, concat=True).sum() + 2 * fb(b, concat=True).sum()).backward()
    for x, y in zip(fb.tables(), ref.tables()):
        torch.testing.assert_close(x, y.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_collection_refuses_bad_indices_and_offsets_by_name(native):
    fb = _fbgemm(SMALL_SPECS[:2], native, optimizer="exact_sgd")
    ok = torch.tensor([[1], [2]])
    with pytest.raises(IndexError, match=r"feature 'full': index 50 is out of range for num_embeddings=50"):
        fb([ok, torch.tensor([[3], [50]])])
    with pytest.raises(IndexError, match=r"feature 'qr_mult': index -1 is out of range"):
        fb([torch.tensor([[-1], [2]]), ok])
    with pytest.raises(ValueError, match=r"feature 'full': offsets\[0\] must be 0"):
        fb([(torch.tensor([1, 2]), torch.tensor([0, 1, 2]), True), (torch.tensor([1, 2]), torch.tensor([1, 1, 2]), True)])
    class KJT:
        def keys(self):
            return ["qr_mult", "full"]

        def values(self):
            return torch.tensor([1, 2, 3, 4])

        def offsets(self):
            return torch.tensor([0, 2, 1, 3, 4])

    with pytest.raises(ValueError, match="non-decreasing"):
        fb(KJT())


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
    assert coll([(torch.tensor([[3], [77]]), None)])[0].shape == (2, 4)
    assert coll([(torch.tensor([[3, 4], [77, 1]]), None)])[0].shape == (2, 4)  # the remainder-class split
    gqr = CompositionalEmbeddingBagCollection([("g3", 1000, 4, None, "add", "sum"),
                                               ("bp3", 1000, 4, generalized_qr(1000, [10, 10, 10]), "mult", "sum")])
    gqr([(torch.tensor([[3]]), None), (torch.tensor([[3]]), None)])
    with pytest.raises(ValueError, match="'bp3'.*before_pool.*two tables, got k=3"):
        gqr([(torch.tensor([[3, 4]]), None), (torch.tensor([[3, 4]]), None)])
    # tables of 5000 and 2000 rows: too wide to split by class
    wide = CompositionalEmbeddingBagCollection([("wide", 10_000_000, 4, 2000, "mult", "sum")])
    assert wide([(torch.tensor([[3]]), None)])[0].shape == (1, 4)
    with pytest.raises(ValueError, match="'wide'.*at most 1024 rows, got 2000"):
        wide([(torch.tensor([[3, 4]]), None)])


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


def test_without_a_c_compiler_the_collection_falls_back_to_torch(tmp_path):
    # a fresh process with no compiler: the kernels do not build, the collection still trains exactly
    import subprocess
    import sys

    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from compemb.collection import CompositionalEmbeddingBagCollection as C\n"
        "from compemb.kernels._native import native_unavailable_reason\n"
        "specs = [('q', 100, 4, 4, 'mult', 'sum')]\n"
        "fb = C(specs, optimizer='exact_sgd', learning_rate=0.5, seed=1)\n"
        "ref = C(specs, backend='torch', seed=1)\n"
        "x = torch.tensor([[3, 7], [99, 0]])\n"
        "fb([x], concat=True).sum().backward()\n"
        "ref([x], concat=True).sum().backward()\n"
        "ok = all(torch.allclose(a, b - 0.5 * b.grad) for a, b in zip(fb.tables(), ref.tables()))\n"
        "print(ok, native_unavailable_reason())\n"
    )
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), COMPEMB_NATIVE_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    ok, reason = run.stdout.strip().split(" ", 1)
    assert ok == "True"
    assert "no C compiler" in reason and "no-such-cc" in reason
