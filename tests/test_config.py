"""EmbeddingBagConfig validation, build_embedding_bag for every method, parameter accounting."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from compemb.config import (
    METHODS,
    EmbeddingBagConfig,
    build_embedding_bag,
    compression_ratio,
    num_parameters,
    output_width,
)
from _reference import crt_sizes, gqr_sizes, sparse_adam_first_step


def _expected_parameters(config: EmbeddingBagConfig) -> int:
    """The parameter count of each method, from its formula."""
    n, d, m = config.num_embeddings, config.embedding_dim, config.num_collisions
    if config.method == "full":
        return n * d
    if config.method == "hash":
        return math.ceil(n / m) * d
    if config.method == "qr":
        rows = math.ceil(n / m) + m
        return rows * d if config.operation != "concat" else rows * d // 2  # d even in these tests
    if config.method in ("gqr", "crt"):
        sizes = (gqr_sizes if config.method == "gqr" else crt_sizes)(n, config.k)
        assert math.prod(sizes) >= n
        rows = sum(sizes)
        return rows * d if config.operation != "concat" else rows * d // config.k  # d % k == 0 here
    if config.method == "path":
        dims = (d,) + tuple(config.hidden_dims) + (d,)
        per_class = sum(a * b for a, b in zip(dims, dims[1:]))
        if config.hidden_dims:
            per_class += sum(dims[1:])  # biases of an MLP
        return math.ceil(n / m) * d + m * per_class
    if config.method == "md":
        md = config.md_dim
        return n * md + (d * md if md < d else 0)
    if config.method == "tt":  # cores p_k R_k q_k R_{k+1}; 1000 = 10*10*10, 16 = 4*2*2
        assert (n, d) == (1000, 16)
        r = config.tt_rank
        return 10 * 4 * r + 10 * r * 2 * r + 10 * r * 2
    if config.method == "robe":
        return math.ceil(n * d / m)
    if config.method == "cluster":  # K = ceil(n/m) clusters and m ranks (operation add)
        return (math.ceil(n / m) + m) * d
    raise AssertionError(config.method)


CASES = [
    EmbeddingBagConfig("full", 1000, 16),
    EmbeddingBagConfig("hash", 1000, 16, method="hash", num_collisions=7),
    EmbeddingBagConfig("qr_mult", 1000, 16, method="qr", num_collisions=4),
    EmbeddingBagConfig("qr_add", 1000, 16, method="qr", operation="add", num_collisions=60),
    EmbeddingBagConfig("qr_cat", 1000, 16, method="qr", operation="concat", num_collisions=5, mode="mean"),
    EmbeddingBagConfig("gqr3", 5000, 12, method="gqr", k=3, operation="concat"),
    EmbeddingBagConfig("gqr2", 5000, 16, method="gqr", k=2, compose="after_pool"),
    EmbeddingBagConfig("crt3", 5000, 16, method="crt", k=3, operation="add", mode="max"),
    EmbeddingBagConfig("path_lin", 1000, 8, method="path", num_collisions=4),
    EmbeddingBagConfig("path_mlp", 5000, 8, method="path", num_collisions=4, hidden_dims=[16]),
    EmbeddingBagConfig("md", 1000, 16, method="md", md_dim=4),
    EmbeddingBagConfig("tt", 1000, 16, method="tt", tt_rank=3),
    EmbeddingBagConfig("robe", 1000, 16, method="robe", num_collisions=5),
    EmbeddingBagConfig("cluster", 1000, 16, method="cluster", num_collisions=8, operation="add"),
]


@pytest.mark.parametrize("config", CASES, ids=lambda c: c.name)
def test_build_every_method(config):
    torch.manual_seed(0)
    bag = build_embedding_bag(config)
    assert bag.built_method == config.method and bag.requested_method == config.method
    assert bag.config is config and bag.fallback_reason is None
    expected = _expected_parameters(config)
    assert num_parameters(bag) == expected
    n, d = config.num_embeddings, config.embedding_dim
    assert compression_ratio(bag) == pytest.approx(n * d / expected)
    assert output_width(bag) == d
    out = bag(torch.randint(0, n, (6, 3)))
    assert out.shape == (6, d)
    assert bag.mode == config.mode
    if config.method in ("qr", "gqr", "crt"):
        assert bag.operation == config.operation and bag.compose == config.compose


def test_every_method_is_covered():
    # freq needs the training split's counts: tests/test_compression.py builds it
    assert {c.method for c in CASES} == set(METHODS) - {"freq"}


def test_full_table_init_and_semantics():
    torch.manual_seed(1)
    n = 3000
    bag = build_embedding_bag(EmbeddingBagConfig("f", n, 8, mode="mean"), include_last_offset=True)
    assert type(bag) is nn.EmbeddingBag and bag.include_last_offset
    bound = math.sqrt(1 / n)
    assert bag.weight.abs().max() <= bound
    assert 0.75 / (3 * n) < bag.weight.var().item() < 1.25 / (3 * n)
    inp = torch.tensor([1, 5, 7])
    torch.testing.assert_close(bag(inp, torch.tensor([0, 2, 3])), torch.stack([bag.weight[[1, 5]].mean(0), bag.weight[7]]))


@pytest.mark.parametrize("method", ["hash", "qr", "path"])
def test_sparse_build(method):
    bag = build_embedding_bag(EmbeddingBagConfig("s", 500, 8, method=method), sparse=True)
    bag(torch.tensor([[1, 2], [3, 499]])).sum().backward()
    grads = [p.grad for p in bag.parameters()]
    assert grads and all(g.is_sparse for g in grads)
    before = [p.detach().clone() for p in bag.parameters()]
    torch.optim.SparseAdam(list(bag.parameters()), lr=0.01).step()
    for p, b, g in zip(bag.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), sparse_adam_first_step(b, g.to_dense(), lr=0.01))
        assert not torch.equal(p.detach(), b)


def test_uncompressible_tables_fall_back_to_full():
    # num_collisions >= n: one class for everything
    cfg = EmbeddingBagConfig("tiny", 4, 16, method="qr", num_collisions=4)
    bag = build_embedding_bag(cfg)
    assert type(bag) is nn.EmbeddingBag and bag.built_method == "full" and bag.requested_method == "qr"
    assert "num_collisions=4" in bag.fallback_reason
    assert num_parameters(bag) == 4 * 16 and compression_ratio(bag) == 1.0
    # compressed module would be larger: qr with n=10, m=3 -> 4 + 3 = 7 rows < 10: compressed;
    # path with n=40, m=4, D=16: 10*16 + 4*16*16 = 1184 > 640: full
    assert build_embedding_bag(EmbeddingBagConfig("q", 10, 16, method="qr", num_collisions=3)).built_method == "qr"
    path = build_embedding_bag(EmbeddingBagConfig("p", 40, 16, method="path", num_collisions=4))
    assert path.built_method == "full" and "1184" in path.fallback_reason
    with pytest.raises(ValueError, match="'p'.*n=40.*method='path'"):
        build_embedding_bag(EmbeddingBagConfig("p", 40, 16, method="path", num_collisions=4), fallback=False)
    # md at full width holds exactly the full table's parameters: built as the full table
    md = build_embedding_bag(EmbeddingBagConfig("m", 100, 8, method="md"))
    assert type(md) is nn.EmbeddingBag and md.built_method == "full" and num_parameters(md) == 800
    with pytest.raises(TypeError, match="EmbeddingBagConfig"):
        build_embedding_bag({"name": "x"})


@pytest.mark.parametrize(
    "kwargs,error,fragment",
    [
        (dict(num_embeddings=0), ValueError, "num_embeddings must be >= 1, got 0"),
        (dict(num_embeddings=10.0), TypeError, "num_embeddings must be an int"),
        (dict(embedding_dim=True), TypeError, "embedding_dim must be an int"),
        (dict(method="lsh"), ValueError, "'lsh'"),
        (dict(operation="div"), ValueError, "'div'"),
        (dict(num_collisions=0), ValueError, "num_collisions must be >= 1"),
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(hidden_dims=(4, -1)), ValueError, "hidden_dims"),
        (dict(hidden_dims="16"), TypeError, "hidden_dims"),
        (dict(md_dim=17), ValueError, "md_dim=17 exceeds embedding_dim=16"),
        (dict(mode="min"), ValueError, "'min'"),
        (dict(compose="never"), ValueError, "'never'"),
        (dict(backend="cuda"), ValueError, "'cuda'"),
        (dict(method="crt", k=20, operation="concat", embedding_dim=16), ValueError, "concat"),
    ],
)
def test_config_validation_names_table_field_and_value(kwargs, error, fragment):
    fields = dict(name="C7", num_embeddings=100, embedding_dim=16)
    fields.update(kwargs)
    with pytest.raises(error) as info:
        EmbeddingBagConfig(**fields)
    assert "'C7'" in str(info.value) and fragment in str(info.value)


def test_config_is_frozen_and_hashable():
    cfg = EmbeddingBagConfig("t", 100, 16, method="path", hidden_dims=[8, 8])
    assert cfg.hidden_dims == (8, 8)
    assert hash(cfg) == hash(EmbeddingBagConfig("t", 100, 16, method="path", hidden_dims=(8, 8)))
    with pytest.raises(dataclasses.FrozenInstanceError, match="num_embeddings"):
        cfg.num_embeddings = 5
    with pytest.raises(TypeError, match="name"):
        EmbeddingBagConfig("", 100, 16)


def test_accounting_handles_dlrm_style_qr_and_shared_parameters():
    from compemb.modules import QREmbeddingBag

    n, m = 1000, 4
    for op, width in (("mult", 16), ("concat", 32)):
        qr = QREmbeddingBag(n, 16, num_collisions=m, operation=op)
        assert output_width(qr) == width
        assert compression_ratio(qr) == pytest.approx(n * width / ((250 + 4) * 16))

    class LegacyQR(nn.Module):  # the attribute layout of facebookresearch/dlrm's module
        def __init__(self):
            super().__init__()
            self.num_categories, self.num_embeddings = 100, [25, 4]
            self.embedding_dim, self.operation = [8, 8], "concat"
            self.weight_q = nn.Parameter(torch.zeros(25, 8))
            self.weight_r = nn.Parameter(torch.zeros(4, 8))

    assert compression_ratio(LegacyQR()) == pytest.approx(100 * 16 / (29 * 8))

    shared = nn.Parameter(torch.zeros(10, 4))
    twice = nn.Module()
    twice.a, twice.b = nn.EmbeddingBag(10, 4), nn.EmbeddingBag(10, 4)
    twice.a.weight = shared
    twice.b.weight = shared
    assert num_parameters(twice) == 40
    with pytest.raises(TypeError, match="nn.Module"):
        num_parameters(torch.zeros(3))
    with pytest.raises(TypeError, match="num_embeddings"):
        compression_ratio(nn.Linear(3, 4))
