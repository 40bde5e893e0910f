"""Issue 11, the library: tracing and scripting refused clearly, torch.compile equal to eager,
quantize refuses non-finite tables, state dicts carry the mapping, uint64 indices reported
truly, sizes of every integer type accepted, clear errors for integer tables and huge tables,
``compemb --version`` and ``python -m compemb``."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compemb
from compemb import (
    CompositionalEmbeddingBag,
    CompositionalEmbeddingBagCollection,
    EmbeddingBagConfig,
    HashEmbeddingBag,
    MixedDimEmbeddingBag,
    PathEmbeddingBag,
    QREmbeddingBag,
    build_embedding_bag,
    md_dims,
    quantize,
)
from compemb import functional as CF
from compemb import kernels
from compemb.partitions import chinese_remainder, generalized_qr, quotient_remainder
from compemb.plan import plan_table
from _bags import round_trip
from _doctests import run_doctests

ROOT = Path(__file__).resolve().parents[1]

# torch deprecates both; they are exercised here to show that they are refused clearly
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


# every module of the library, small; the first call's bags are [0, 2) and [2, 3)
MODULES = {
    "compositional": lambda: CompositionalEmbeddingBag(10, 4, num_collisions=3, mode="mean"),
    "qr": lambda: QREmbeddingBag(10, 4, num_collisions=3, mode="mean"),
    "hash": lambda: HashEmbeddingBag(10, 4, num_buckets=5, mode="sum"),
    "hash_universal": lambda: HashEmbeddingBag(10, 4, num_buckets=5, hash="universal", seed=3, mode="sum"),
    "mixed_dim": lambda: MixedDimEmbeddingBag(10, 4, md_dim=2, mode="mean"),
    "path": lambda: PathEmbeddingBag(10, 4, num_collisions=3, mode="mean"),
}


class _Wrapper(nn.Module):
    """A model holding a compemb module (tracing or scripting a model must be refused too)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.inner(input, offsets) * 2


# -- 1. torch.jit.trace / torch.jit.script refused, torch.compile equal to eager -------------------
@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("wrapped", [False, True], ids=["module", "in_a_model"])
def test_jit_trace_is_refused_naming_the_module(kind, wrapped):
    torch.manual_seed(0)
    module = MODULES[kind]()
    target = _Wrapper(module) if wrapped else module
    example = (torch.tensor([1, 2, 3]), torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match=rf"{type(module).__name__}.*torch\.jit\.trace.*torch\.compile"):
        torch.jit.trace(target, example)
    # the module still works eagerly afterwards
    assert module(torch.tensor([1, 2, 3]), torch.tensor([0, 1])).shape == (2, 4)


def test_jit_trace_of_the_functional_core_is_refused():
    fam = quotient_remainder(10, 3)
    weights = [torch.randn(s, 4) for s in fam.table_sizes]

    def f(x, o):
        return CF.compositional_embedding_bag(x, o, weights, fam, "mult", "sum")

    with pytest.raises(RuntimeError, match="torch.jit.trace"):
        torch.jit.trace(f, (torch.tensor([1, 2, 3]), torch.tensor([0, 2])))


@pytest.mark.skipif("fbgemm" not in kernels.available_backends(), reason="fbgemm_gpu does not import here")
def test_jit_trace_and_script_of_a_quantized_bag_are_refused():
    q = quantize(QREmbeddingBag(10, 4, 3, mode="sum"), 8)
    with pytest.raises(RuntimeError, match="QuantizedEmbeddingBag.*torch.jit.trace"):
        torch.jit.trace(q, (torch.tensor([1, 2, 3]), torch.tensor([0, 2])))
    with pytest.raises(RuntimeError, match="QuantizedEmbeddingBag.*torch.jit.script"):
        torch.jit.script(q)


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("wrapped", [False, True], ids=["module", "in_a_model"])
def test_jit_script_is_refused_plainly(kind, wrapped):
    module = MODULES[kind]()
    target = _Wrapper(module) if wrapped else module
    with pytest.raises(RuntimeError, match=rf"{type(module).__name__}.*torch\.jit\.script is not supported"):
        torch.jit.script(target)


# (a 1-D form, a different bag structure of the same length, an empty bag, 2-D input)
_CALLS = [
    (torch.tensor([1, 2, 3]), torch.tensor([0, 2])),
    (torch.tensor([1, 2, 3]), torch.tensor([0, 1])),
    (torch.tensor([9, 0, 5, 4, 7]), torch.tensor([0, 0, 3])),
    (torch.tensor([[1, 2], [3, 9]]), None),
]


# compiling takes seconds: the fast suite compiles one module (aot_eager, with gradients) on the two
# calls of equal shapes that a trace gets wrong; the slow suite compiles every module on every form
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_torch_compile_equals_eager_for_changing_bag_structure(kind):
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = MODULES[kind]()
    compiled = torch.compile(module, backend="eager")
    for x, o in _CALLS:
        torch.testing.assert_close(compiled(x, o), module(x, o), rtol=0, atol=0)
    # the compiled module validates as the eager one does
    with pytest.raises(IndexError, match="index 10"):
        compiled(torch.tensor([10, 2]), torch.tensor([0, 1]))


def test_torch_compile_aot_eager_equals_eager_with_gradients():
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = CompositionalEmbeddingBag(10, 4, num_collisions=3, mode="mean")
    compiled = torch.compile(module, backend="aot_eager")
    for x, o in _CALLS[:2]:
        got = compiled(x, o)  # (first: the compiled call meets the input caches empty)
        want = module(x, o)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        g_want = torch.autograd.grad(want.sum(), list(module.weights))
        g_got = torch.autograd.grad(got.sum(), list(module.weights))
        torch.testing.assert_close(g_got, g_want)
    with pytest.raises(IndexError, match="index 10"):
        compiled(torch.tensor([10, 2]), torch.tensor([0, 1]))


# -- 2. quantize refuses non-finite tables ----------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_quantize_refuses_a_non_finite_qr_table_naming_table_and_row(bad):
    bag = QREmbeddingBag(20, 4, num_collisions=4, mode="sum")
    with torch.no_grad():
        bag.weight_r[2, 1] = bad
    with pytest.raises(ValueError, match=r"weight_r.*row 2"):
        quantize(bag, 8)


def test_quantize_refuses_non_finite_compositional_and_plain_tables():
    bag = CompositionalEmbeddingBag(20, 4, num_collisions=4, mode="sum")
    with torch.no_grad():
        bag.weights[1][3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weights\[1\].*row 3"):
        quantize(bag, 4)
    plain = nn.EmbeddingBag(6, 4, mode="sum")
    with torch.no_grad():
        plain.weight[5, 3] = float("inf")
    with pytest.raises(ValueError, match=r"weight.*row 5"):
        quantize(plain, 8)


# -- 3. the state dict carries the mapping ----------------------------------------------------------
def test_qr_state_refused_by_a_crt_module_of_the_same_shapes():
    torch.manual_seed(0)
    qr = CompositionalEmbeddingBag(12, 4, family=quotient_remainder(12, 3), mode="sum")
    crt = CompositionalEmbeddingBag(12, 4, family=chinese_remainder(12, moduli=(3, 4)), mode="sum")
    assert [w.shape for w in qr.weights] == [w.shape for w in crt.weights]
    before = [w.detach().clone() for w in crt.weights]
    with pytest.raises(RuntimeError, match=r"(?s)RemainderPartition.*ResiduePartition|ResiduePartition.*Remainder"):
        crt.load_state_dict(round_trip(qr.state_dict()))
    # nothing was overwritten
    for w, b in zip(crt.weights, before):
        assert torch.equal(w, b)


@pytest.mark.parametrize(
    "make_a, make_b, words",
    [
        (lambda: HashEmbeddingBag(10, 4, num_buckets=5), lambda: HashEmbeddingBag(10, 4, num_buckets=5, hash="universal"),
         "hash"),
        (lambda: HashEmbeddingBag(10, 4, num_buckets=5, hash="universal", seed=1),
         lambda: HashEmbeddingBag(10, 4, num_buckets=5, hash="universal", seed=2), "seed"),
        (lambda: QREmbeddingBag(10, 4, 3), lambda: QREmbeddingBag(10, 4, 3, operation="add"), "operation"),
        (lambda: CompositionalEmbeddingBag(12, 4, num_collisions=3),
         lambda: CompositionalEmbeddingBag(12, 4, num_collisions=3, operation="add"), "operation"),
        (lambda: PathEmbeddingBag(10, 4, num_collisions=3, hidden_dims=(5,)),
         lambda: PathEmbeddingBag(10, 4, num_collisions=3, hidden_dims=(5,), activation="tanh"), "activation"),
        (lambda: CompositionalEmbeddingBag(24, 4, family=generalized_qr(24, radices=(4, 6)), allow_collisions=True),
         lambda: CompositionalEmbeddingBag(24, 4, family=chinese_remainder(24, moduli=(4, 6), check=False),
                                           allow_collisions=True), "family"),
    ],
    ids=["hash_kind", "hash_seed", "qr_operation", "compositional_operation", "path_activation", "family"],
)
def test_a_state_of_another_mapping_is_refused_naming_both_sides(make_a, make_b, words):
    a, b = make_a(), make_b()
    assert [t.shape for t in a.state_dict().values() if isinstance(t, torch.Tensor)] == \
        [t.shape for t in b.state_dict().values() if isinstance(t, torch.Tensor)]
    with pytest.raises(RuntimeError, match=rf"(?s){type(b).__name__}.*{words}.*saved.*this module"):
        b.load_state_dict(a.state_dict())


@pytest.fixture(params=sorted(MODULES))
def two_modules(request):
    """Two modules of one kind (every kind of ``MODULES``), initialised from seeds 0 and 1."""
    torch.manual_seed(0)
    a = MODULES[request.param]()
    torch.manual_seed(1)
    return a, MODULES[request.param]()


def _assert_same_outputs(a, b):
    x, o = torch.tensor([1, 2, 9]), torch.tensor([0, 2])
    torch.testing.assert_close(b(x, o), a(x, o), rtol=0, atol=0)


def test_state_round_trips_through_the_safe_loader(two_modules):
    a, b = two_modules
    state = round_trip(a.state_dict())
    assert "_extra_state" in state
    assert b.load_state_dict(state) is not None
    _assert_same_outputs(a, b)


def test_a_state_without_extra_state_needs_strict_false(two_modules):
    a, b = two_modules
    old = {k: v for k, v in a.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match=r"(?s)_extra_state.*strict=False"):
        b.load_state_dict(old)
    result = b.load_state_dict(old, strict=False)
    assert result.missing_keys == ["_extra_state"]
    _assert_same_outputs(a, b)


# -- 4. uint64 indices reported with their true value --------------------------------------------
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_uint64_index_beyond_int64_is_reported_truly(kind):
    module = MODULES[kind]()
    big = 2**63 + 5
    x = torch.tensor([1, big], dtype=torch.uint64)
    with pytest.raises(IndexError, match=str(big)):
        module(x, torch.tensor([0, 1]))


def test_uint64_index_reported_truly_by_partitions_and_the_functional_core():
    big = 2**64 - 1
    fam = quotient_remainder(10, 3)
    with pytest.raises(IndexError, match=str(big)):
        fam.encode(torch.tensor([big], dtype=torch.uint64))
    with pytest.raises(IndexError, match=str(big)):
        CF.bag_input(torch.tensor([[3, big]], dtype=torch.uint64), num_embeddings=10)


def test_uint64_offsets_beyond_int64_are_reported_truly():
    big = 2**63 + 1
    with pytest.raises(ValueError, match=str(big)):
        CF.bag_input(torch.tensor([1, 2, 3]), torch.tensor([0, big], dtype=torch.uint64), num_embeddings=10)


# -- 5. every integer type operator.index accepts --------------------------------------------------
INTS = {
    "numpy_int64": np.int64,
    "numpy_int32": np.int32,
    "numpy_uint16": np.uint16,
    "tensor_0d": lambda v: torch.tensor(v),
}


@pytest.mark.parametrize("as_int", list(INTS.values()), ids=list(INTS))
def test_sizes_of_every_integer_type_are_accepted(as_int):
    qr = QREmbeddingBag(as_int(1460), as_int(16), as_int(4))
    assert qr.num_categories == 1460 and type(qr.num_categories) is int
    assert qr.embedding_dim == [16, 16] and all(type(d) is int for d in qr.embedding_dim)
    assert type(qr.num_collisions) is int
    qr2 = QREmbeddingBag(as_int(1460), [as_int(8), as_int(6)], as_int(4), operation="concat")
    assert qr2.embedding_dim == [8, 6]
    ceb = CompositionalEmbeddingBag(as_int(100), as_int(8), num_collisions=as_int(4), operation="concat",
                                    concat_dims=[as_int(5), as_int(3)])
    assert type(ceb.num_embeddings) is int and type(ceb.embedding_dim) is int and ceb.dims == (5, 3)
    ceb2 = CompositionalEmbeddingBag(as_int(100), as_int(8), family=quotient_remainder(100, 4))
    assert ceb2.num_embeddings == 100
    h = HashEmbeddingBag(as_int(100), as_int(8), num_buckets=as_int(10), seed=as_int(3))
    assert (h.num_embeddings, h.embedding_dim, h.num_buckets, h.seed) == (100, 8, 10, 3)
    assert all(type(v) is int for v in (h.num_embeddings, h.embedding_dim, h.num_buckets, h.seed))
    h2 = HashEmbeddingBag(as_int(100), as_int(8), num_collisions=as_int(4))
    assert h2.num_buckets == 25
    md = MixedDimEmbeddingBag(as_int(100), as_int(8), md_dim=as_int(2))
    assert (md.num_embeddings, md.embedding_dim, md.md_dim) == (100, 8, 2)
    p = PathEmbeddingBag(as_int(100), as_int(8), num_collisions=as_int(4), hidden_dims=(as_int(6),))
    assert p.hidden_dims == (6,) and type(p.hidden_dims[0]) is int
    cfg = EmbeddingBagConfig("C1", as_int(1000), as_int(8), method="path", num_collisions=as_int(4),
                             hidden_dims=(as_int(3),), md_dim=as_int(4))
    assert (cfg.num_embeddings, cfg.embedding_dim, cfg.num_collisions, cfg.hidden_dims, cfg.md_dim) == \
        (1000, 8, 4, (3,), 4)
    assert type(cfg.num_embeddings) is int and type(cfg.hidden_dims[0]) is int
    assert build_embedding_bag(cfg).embedding_dim == 8
    assert md_dims([as_int(10), as_int(1000)], 0.5, as_int(16), min_dim=as_int(1)) == [16, 2]
    assert plan_table("C1", as_int(1000), as_int(16), "qr", num_collisions=as_int(4), k=as_int(2),
                      threshold=as_int(0), md_dim=None).params_after == plan_table("C1", 1000, 16, "qr").params_after
    assert quotient_remainder(as_int(100), as_int(4)).table_sizes == (4, 25)
    coll = CompositionalEmbeddingBagCollection(
        [("a", as_int(100), as_int(4), as_int(10), "add", "sum"),
         EmbeddingBagConfig("b", as_int(50), as_int(4), method="qr", num_collisions=as_int(5))],
        backend="torch")
    assert [s.num_embeddings for s in coll.specs] == [100, 50]
    assert all(type(s.num_embeddings) is int and type(s.embedding_dim) is int for s in coll.specs)


@pytest.mark.parametrize("bad", [True, np.bool_(True), torch.tensor(True), 16.0, np.float64(16), torch.tensor(16.0), "16"],
                         ids=["bool", "numpy_bool", "bool_tensor", "float", "numpy_float", "float_tensor", "str"])
def test_bools_and_floats_are_refused_as_sizes(bad):
    text = re.escape(repr(bad)[:10])
    for make in (
        lambda: QREmbeddingBag(100, bad, 4),
        lambda: QREmbeddingBag(100, 16, bad),
        lambda: CompositionalEmbeddingBag(100, bad),
        lambda: HashEmbeddingBag(100, bad, num_buckets=4),
        lambda: MixedDimEmbeddingBag(100, 8, md_dim=bad),
        lambda: PathEmbeddingBag(100, bad),
        lambda: EmbeddingBagConfig("C1", 100, bad),
        lambda: md_dims([100, bad], 0.5, 16),
        lambda: quotient_remainder(100, bad),
        lambda: chinese_remainder(100, moduli=(bad, 11)),
        lambda: plan_table("C1", 100, bad, "qr"),
        lambda: CompositionalEmbeddingBagCollection([("a", 100, bad, 10, "add", "sum")], backend="torch"),
    ):
        with pytest.raises(TypeError, match=text):
            make()


# -- 6. clear errors instead of tracebacks ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_from_pretrained_refuses_integer_tables(dtype):
    with pytest.raises(TypeError, match=r"embeddings.*floating point"):
        MixedDimEmbeddingBag.from_pretrained(torch.ones(10, 2, dtype=dtype))
    with pytest.raises(TypeError, match=r"projection.*floating point"):
        MixedDimEmbeddingBag.from_pretrained(torch.ones(10, 2), torch.ones(4, 2, dtype=dtype))
    with pytest.raises(TypeError, match=r"embeddings.*floating point"):
        HashEmbeddingBag.from_pretrained(torch.ones(4, 2, dtype=dtype), num_embeddings=10)
    with pytest.raises(TypeError, match=r"_weight.*floating point"):
        HashEmbeddingBag(10, 2, num_buckets=4, _weight=torch.ones(4, 2, dtype=dtype))
    fam = quotient_remainder(10, 4)
    with pytest.raises(TypeError, match=r"embeddings\[0\].*floating point"):
        CompositionalEmbeddingBag.from_pretrained([torch.ones(s, 2, dtype=dtype) for s in fam.table_sizes], fam)


def test_from_pretrained_refuses_non_tensors_with_a_clear_error():
    with pytest.raises(TypeError, match="embeddings"):
        CompositionalEmbeddingBag.from_pretrained([[1.0, 2.0]], num_embeddings=4)


def test_huge_sizes_are_refused_before_allocating():
    with pytest.raises(ValueError, match=r"num_categories.*18446744073709551616.*2\*\*63"):
        QREmbeddingBag(2**64, 1, 2**62)
    # n fits, but the remainder table would take 2**64 bytes
    with pytest.raises(ValueError, match=r"weight_r.*4611686018427387904 x 1"):
        QREmbeddingBag(2**63, 1, 2**62)
    with pytest.raises(ValueError, match=r"num_embeddings.*2\*\*63"):
        HashEmbeddingBag(2**64, 4, num_buckets=2)
    with pytest.raises(ValueError, match=r"num_embeddings.*2\*\*63"):
        MixedDimEmbeddingBag(2**64, 4)
    with pytest.raises(ValueError, match=r"weight.*x 4"):
        MixedDimEmbeddingBag(2**62, 4)
    with pytest.raises(ValueError, match=r"num_embeddings.*2\*\*63"):
        CompositionalEmbeddingBag(2**64, 4)
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        CompositionalEmbeddingBag(2**62, 4, num_collisions=2)
    with pytest.raises(ValueError, match=r"num_embeddings.*2\*\*63"):
        PathEmbeddingBag(2**64, 4)
    with pytest.raises(ValueError, match=r"num_embeddings.*2\*\*63"):
        EmbeddingBagConfig("C1", 2**64, 4)
    with pytest.raises(ValueError, match=r"feature 'huge'.*table 1 of its family.*x 4"):
        CompositionalEmbeddingBagCollection([("huge", 2**63, 4, 2, "add", "sum")], backend="torch")


@pytest.mark.parametrize("width", [0, -2])
def test_collection_feature_of_width_zero_is_refused_by_name(width):
    with pytest.raises(ValueError, match=rf"feature 'wide'.*embedding_dim.*{width}"):
        CompositionalEmbeddingBagCollection(
            [("ok", 10, 4, 2, "add", "sum"), ("wide", 10, width, 2, "add", "sum")], backend="torch")
    with pytest.raises(ValueError, match=r"feature 'rows'.*num_embeddings.*0"):
        CompositionalEmbeddingBagCollection([("rows", 0, 4, None, "add", "sum")], backend="torch")


# -- 7. version and python -m compemb -------------------------------------------------------------
def test_version_is_defined_once():
    # pyproject.toml writes it; compemb.__version__ reads it from the installed metadata
    text = (ROOT / "pyproject.toml").read_text()
    project = text[text.index("[project]"):]
    written = re.search(r'^version = "([^"]+)"', project, re.M)
    assert written is not None
    assert compemb.__version__ == written.group(1)
    assert "__version__ =" not in (ROOT / "compemb" / "__init__.py").read_text()


def test_cli_version(capsys):
    from compemb import cli

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"compemb {compemb.__version__}"


def test_python_dash_m_compemb_runs_the_cli():
    run = subprocess.run([sys.executable, "-m", "compemb", "--version"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"compemb {compemb.__version__}"
    run = subprocess.run([sys.executable, "-m", "compemb", "no-such-command"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "no-such-command" in run.stderr


def test_docstring_examples_of_the_new_helpers():
    from compemb import state
    from compemb.functional import _inputs

    assert run_doctests(state, _inputs) >= 8
