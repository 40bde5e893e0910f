"""DLRM shapes, interactions and parameter counts for every embedding method.

The triton collection tests run on CPU under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it
before triton is imported).
"""
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from dlrm.model import DLRM, DLRMConfig, dot_interaction, table_specs
from _reference import crt_sizes, gqr_sizes

D = 8
CARDS = [1000, 10, 300]  # threshold 100 compresses tables 0 and 2


def _batch(cards, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(b, 3, generator=g)
    idx, offs = [], []
    for n in cards:
        lengths = torch.randint(0, 4, (b,), generator=g)
        offs.append(torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))
        idx.append(torch.randint(0, n, (int(lengths.sum()),), generator=g))
    return dense, idx, offs


def _mlp_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _expected_table(method, n, opts):
    c = opts.get("num_collisions", 4)
    if method == "full":
        return n * D
    if method == "hash":
        return math.ceil(n / c) * D
    if method == "qr":
        rows = math.ceil(n / c) + c
        return rows * (D // 2 if opts.get("operation") == "concat" else D)
    if method == "gqr":
        sizes = gqr_sizes(n, opts["k"])
        assert math.prod(sizes) >= n
        return sum(sizes) * D
    if method == "crt":
        sizes = crt_sizes(n, opts["k"])
        assert math.lcm(*sizes) >= n
        return sum(sizes) * D
    if method == "path":  # quotient base table + one bias-free D x D map per remainder class
        return math.ceil(n / c) * D + c * D * D
    if method == "md":
        return n * opts["md_dim"] + D * opts["md_dim"]
    raise AssertionError(method)


CASES = [
    ("full", {}), ("hash", {"num_collisions": 4}), ("qr", {"num_collisions": 4}),
    ("qr", {"num_collisions": 3, "operation": "add"}), ("qr", {"num_collisions": 5, "operation": "concat"}),
    ("gqr", {"k": 3}), ("crt", {"k": 2}), ("path", {"num_collisions": 4}), ("md", {"md_dim": 2}),
]


@pytest.mark.parametrize("method, opts", CASES)
@pytest.mark.parametrize("interaction, itself", [("dot", False), ("dot", True), ("cat", False)])
def test_shapes_and_parameter_counts(method, opts, interaction, itself):
    specs = table_specs(CARDS, D, method, threshold=100, **opts)
    assert [s.method for s in specs] == [method, "full", method]
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(3, (16, D), (16, 1), specs, interaction=interaction, interaction_itself=itself))
    expected_tables = {"t0": _expected_table(method, 1000, opts), "t1": 10 * D,
                       "t2": _expected_table(method, 300, opts)}
    assert model.table_parameters() == expected_tables
    assert model.embedding_parameters() == sum(expected_tables.values())
    f = 4  # bottom output + 3 tables
    if interaction == "dot":
        top_in = D + (f * (f + 1) // 2 if itself else f * (f - 1) // 2)
    else:
        top_in = D * f
    expected_mlp = _mlp_params([3, 16, D]) + _mlp_params([top_in, 16, 1])
    assert model.mlp_parameters() == expected_mlp
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    dense, idx, offs = _batch(CARDS)
    logits = model(dense, idx, offs)
    assert logits.shape == (5,)
    p = model.predict(dense, idx, offs)
    assert torch.all((p > 0) & (p < 1))
    loss = DLRM.loss(logits, torch.tensor([0.0, 1, 1, 0, 1]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


def test_threshold_compresses_only_larger_tables():
    specs = table_specs([100, 101, 5], 4, "hash", threshold=100, num_collisions=2)
    assert [s.method for s in specs] == ["full", "hash", "full"]
    assert [s.method for s in table_specs([100, 101], 4, "qr", threshold=0)] == ["qr", "qr"]


def test_dlrm_compatible_concat_with_threshold_is_projected():
    # The reference DLRM's fault: thresholded concat tables are 2d wide, the rest d. Here the
    # 2d-wide table gets a d x 2d projection and the dot interaction still works.
    specs = table_specs(CARDS, D, "qr", threshold=100, num_collisions=4, operation="concat")
    model = DLRM(DLRMConfig(3, (16, D), (16, 1), specs, dlrm_compatible_qr=True))
    assert model.table_widths == [2 * D, D, 2 * D]
    assert sorted(model.projections.keys()) == ["0", "2"]
    assert model.table_parameters()["t0"] == (250 + 4) * D * 1  # each table D wide
    assert model.table_parameters()["t0"] == (math.ceil(1000 / 4) + 4) * D
    f = 4
    assert model.mlp_parameters() == (_mlp_params([3, 16, D]) + _mlp_params([D + f * (f - 1) // 2, 16, 1])
                                      + 2 * (2 * D * D))
    dense, idx, offs = _batch(CARDS)
    vectors = model.embed(idx, offs)
    assert [v.shape[1] for v in vectors] == [D, D, D]
    assert model(dense, idx, offs).shape == (5,)


def test_cat_interaction_keeps_mixed_widths():
    specs = table_specs(CARDS, D, "qr", threshold=100, num_collisions=4, operation="concat")
    model = DLRM(DLRMConfig(3, (16, D), (16, 1), specs, interaction="cat", dlrm_compatible_qr=True))
    assert len(model.projections) == 0
    assert model.top[0].in_features == D + 2 * D + D + 2 * D
    dense, idx, offs = _batch(CARDS)
    assert model(dense, idx, offs).shape == (5,)


def test_md_tables_with_mixed_widths_from_temperature():
    specs = table_specs([10, 5000, 200000], D, "md", threshold=100, md_temperature=0.5)
    widths = [s.md_dim for s in specs]
    assert specs[0].method == "full" and widths[2] < widths[1] <= D
    model = DLRM(DLRMConfig(3, (16, D), (16, 1), specs))
    assert model.table_widths == [D, D, D]  # compemb's MD module projects to D itself
    assert model.table_parameters()["t2"] == 200000 * widths[2] + D * widths[2]
    dense, idx, offs = _batch([10, 5000, 200000])
    assert model(dense, idx, offs).shape == (5,)


def test_replace_table_with_other_width_gets_projection():
    specs = table_specs(CARDS, D, "full")
    model = DLRM(DLRMConfig(3, (16, D), (16, 1), specs))
    model.replace_table(0, torch.nn.EmbeddingBag(1000, 3, mode="sum"))
    assert model.table_widths[0] == 3 and model.projections["0"].weight.shape == (D, 3)
    dense, idx, offs = _batch(CARDS)
    assert model(dense, idx, offs).shape == (5,)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 6), f=st.integers(1, 6), d=st.integers(1, 5), itself=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_dot_interaction_matches_loops(b, f, d, itself, seed):
    x = torch.randn(b, f, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = dot_interaction(x, itself)
    expected = [[float(x[s, i] @ x[s, j]) for i in range(f) for j in range(i + 1 if itself else i)]
                for s in range(b)]
    assert out.shape == (b, f * (f + 1) // 2 if itself else f * (f - 1) // 2)
    if out.numel():
        assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64))


def test_sparse_gradients_where_supported():
    specs = table_specs(CARDS, D, "qr", threshold=100)
    model = DLRM(DLRMConfig(3, (16, D), (16, 1), specs, sparse=True))
    assert len(model.sparse_parameters()) >= 3
    dense, idx, offs = _batch(CARDS)
    model(dense, idx, offs).sum().backward()
    for p in model.sparse_parameters():
        assert p.grad.is_sparse
    assert not any(p.grad.is_sparse for p in model.top.parameters())


def test_no_dense_features_uses_embeddings_only():
    specs = table_specs([7, 9], 4)
    model = DLRM(DLRMConfig(0, (), (8, 1), specs))
    assert model.bottom is None and model.top[0].in_features == 1
    out = model(torch.zeros(2, 0), [torch.tensor([1, 2]), torch.tensor([3, 4])],
                [torch.tensor([0, 1, 2])] * 2)
    assert out.shape == (2,)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_dense=3, bottom_mlp=(16, 5), top_mlp=(4, 1), arch_sparse_feature_size=8),
      "bottom MLP output width"),
     (dict(num_dense=3, bottom_mlp=(16, 8), top_mlp=(4, 2)), "must end in 1"),
     (dict(num_dense=3, bottom_mlp=(16, 8), top_mlp=(4, 1), interaction="sum"), "interaction"),
     (dict(num_dense=-1, bottom_mlp=(8,), top_mlp=(1,)), "num_dense")],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DLRMConfig(tables=table_specs([10], 8), **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="duplicate"):
        DLRMConfig(3, (8,), (1,), table_specs([10, 10], 8, feature_names=["a", "b"])
                   + table_specs([3], 8, feature_names=["a"]))
    with pytest.raises(ValueError, match="threshold"):
        table_specs([10], 8, threshold=-1)
    with pytest.raises(ValueError, match="'nope'"):
        table_specs([10], 8, "nope")
    model = DLRM(DLRMConfig(3, (8,), (1,), table_specs([10], 8)))
    with pytest.raises(ValueError, match="dense must be"):
        model(torch.zeros(2, 4), [torch.tensor([1, 2])], [torch.tensor([0, 1, 2])])
    with pytest.raises(ValueError, match="expected 1 index"):
        model(torch.zeros(2, 3), [], [])


# -- all tables from one triton collection ----------------------------------------------------------
def _interpreted():
    from compemb.kernels import _triton_tbe

    assert _triton_tbe.INTERPRETED, "compemb.kernels._triton was imported before TRITON_INTERPRET=1 was set"


def _twins(specs, lr=None, seed=0):
    """A per-table DLRM and a triton-collection DLRM with identical weights."""
    _interpreted()
    torch.manual_seed(seed)
    ref = DLRM(DLRMConfig(3, (16, D), (16, 1), specs))
    fused = {} if lr is None else dict(fused_optimizer="exact_sgd", fused_learning_rate=lr)
    coll = DLRM(DLRMConfig(3, (16, D), (16, 1), specs, collection_backend="triton", **fused))
    missing, unexpected = coll.load_state_dict(
        {k: v for k, v in ref.state_dict().items() if not k.startswith("embeddings.")}, strict=False)
    assert missing == ["collection.weight"] and unexpected == []
    with torch.no_grad():
        for spec, bag in zip(specs, ref.embeddings):
            tables = coll.collection.tables(spec.name)
            params = list(bag.parameters())
            assert [t.shape for t in tables] == [p.shape for p in params]
            for t, p in zip(tables, params):
                t.copy_(p)
    return ref, coll


def _mlp_named(model):
    return {k: p for k, p in model.named_parameters() if not k.startswith(("embeddings.", "collection."))}


@pytest.mark.parametrize("operation, mode, compose", [("mult", "sum", "before_pool"), ("add", "mean", "before_pool"),
                                                      ("mult", "mean", "after_pool")])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.triton_cpu
def test_triton_collection_equals_per_table_modules(operation, mode, compose, fused):
    lr = 0.5
    specs = table_specs(CARDS, D, "qr", threshold=100, num_collisions=7, operation=operation, mode=mode,
                        compose=compose)
    ref, coll = _twins(specs, lr=lr if fused else None, seed=len(operation) + fused)
    assert coll.table_parameters() == ref.table_parameters()
    assert coll.num_parameters() == ref.num_parameters()
    assert coll.collection.backend == "triton" and coll.sparse_parameters() == []
    dense, idx, offs = _batch(CARDS, b=6, seed=5)
    assert any((o.diff() == 0).any() for o in offs) and any((o.diff() > 1).any() for o in offs)  # empty, multi-hot
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    initial = [t.clone() for t in coll.collection.tables()]
    out_ref, out = ref(dense, idx, offs), coll(dense, idx, offs)
    assert torch.allclose(out, out_ref, atol=1e-6), (out, out_ref)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=lr)
    opt = torch.optim.SGD(coll.parameters(), lr=lr)  # fused: the MLPs only (the tables are buffers)
    DLRM.loss(out_ref, labels).backward()
    DLRM.loss(out, labels).backward()
    mlp_ref, mlp = _mlp_named(ref), _mlp_named(coll)
    assert mlp.keys() == mlp_ref.keys()
    for k in mlp:
        assert torch.allclose(mlp[k].grad, mlp_ref[k].grad, atol=1e-6), k
    if fused:  # the tables were updated in backward; they have no gradient
        assert not isinstance(coll.collection.weight, torch.nn.Parameter)
    else:
        grads = coll.collection.weight.grad
        assert grads is not None and not grads.is_sparse
        assert grads.shape == coll.collection.weight.shape
    opt_ref.step()
    opt.step()
    for spec, bag in zip(specs, ref.embeddings):
        for t, p in zip(coll.collection.tables(spec.name), bag.parameters()):
            assert torch.allclose(t, p.detach(), atol=1e-6), spec.name
    assert any(not torch.equal(a, b) for a, b in zip(initial, coll.collection.tables()))
    for k in mlp:
        assert torch.allclose(mlp[k], mlp_ref[k], atol=1e-6), k
    # the state dict round-trips (what checkpoints hold)
    fresh = DLRM(coll.config)
    fresh.load_state_dict(coll.state_dict())
    assert torch.equal(fresh(dense, idx, offs), coll(dense, idx, offs))


@pytest.mark.parametrize(
    "method, opts, overrides, match",
    [("path", {"num_collisions": 4}, {}, "table 't0'.*method='path'"),
     ("hash", {"num_collisions": 4}, {}, "table 't0'.*method='hash'"),
     ("md", {"md_dim": 2}, {}, "table 't0'.*method='md'"),
     ("qr", {"mode": "max"}, {}, "'t0'.*mode='max'"),
     ("qr", {}, {"t2": {"embedding_dim": 4}}, "one embedding_dim.*'t2': 4"),
     ("qr", {}, {"t2": {"operation": "add"}}, "one operation.*'t2': 'add'")],
)
@pytest.mark.triton_cpu
def test_triton_collection_refuses_what_it_cannot_serve_at_build_time(method, opts, overrides, match):
    specs = table_specs(CARDS, D, method, threshold=100, **opts)
    specs = [dataclasses.replace(s, **overrides.get(s.name, {})) for s in specs]
    config = DLRMConfig(3, (16, D), (16, 1), specs, interaction="cat", collection_backend="triton")
    with pytest.raises(ValueError, match=match):
        DLRM(config)


def test_collection_backend_config_checks():
    specs = table_specs(CARDS, D, "qr", threshold=100)
    with pytest.raises(ValueError, match="collection_backend must be one of"):
        DLRMConfig(3, (16, D), (16, 1), specs, collection_backend="torch")
    with pytest.raises(ValueError, match="'exact_rowwise_adagrad' is not fused by collection_backend='triton'"):
        DLRMConfig(3, (16, D), (16, 1), specs, collection_backend="triton", fused_optimizer="exact_rowwise_adagrad")
    with pytest.raises(ValueError, match="excludes sparse"):
        DLRMConfig(3, (16, D), (16, 1), specs, collection_backend="triton", sparse=True)
    # today's behaviour: a fused optimizer alone means the fbgemm collection
    cfg = DLRMConfig(3, (16, D), (16, 1), specs, fused_optimizer="exact_sgd")
    assert cfg.collection_backend is None and cfg.resolved_collection_backend == "fbgemm"
    assert DLRMConfig(3, (16, D), (16, 1), specs).resolved_collection_backend is None
