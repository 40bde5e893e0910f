"""Regression tests for the review findings fixed in compemb's core."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compemb.functional as CF
from compemb.config import EmbeddingBagConfig, build_embedding_bag, num_parameters
from compemb.kernels import BackendUnavailableError, get_backend, resolve_backend
from compemb.options import BagOptions
from compemb.partitions import quotient_remainder


@pytest.mark.parametrize("operation, compose", [("add", "before_pool"), ("mult", "after_pool"),
                                                ("concat", "before_pool")])
def test_functional_scale_grad_by_freq_with_auto_backend_uses_a_backend_that_takes_it(operation, compose):
    # (configurations that fbgemm serves exactly: "auto" used to pick it and fail on the keyword)
    fam = quotient_remainder(20, 4)
    weights = [torch.randn(s, 4, requires_grad=True) for s in fam.table_sizes]
    x = torch.tensor([[1, 1, 7], [3, 19, 1]])
    kw = dict(operation=operation, compose=compose, scale_grad_by_freq=True)
    got = CF.compositional_embedding_bag(x, None, weights, fam, backend="auto", **kw)
    torch.testing.assert_close(got, CF.compositional_embedding_bag(x, None, weights, fam, **kw))
    got.sum().backward()


@pytest.mark.parametrize("name", ["fbgemm", "triton"])
def test_backends_refuse_options_outside_their_extras(name):
    try:
        backend = get_backend(name)
    except BackendUnavailableError:
        pytest.skip(f"{name} is not available")
    served = BagOptions(compose="after_pool")  # (options both backends compute exactly)
    assert backend.refusal(served) is None
    scaled = BagOptions(compose="after_pool", scale_grad_by_freq=True)
    reason = backend.refusal(scaled)
    assert reason is not None and "scale_grad_by_freq" in reason
    with pytest.raises(BackendUnavailableError, match="scale_grad_by_freq"):
        resolve_backend(name, scaled)
    assert resolve_backend("auto", scaled).name == "torch"
    assert get_backend("torch").refusal(scaled) is None


@pytest.mark.parametrize("method, kwargs", [
    ("cluster", {}), ("cluster", {"operation": "concat"}), ("qr", {}), ("freq", {"num_hot": 30}),
    ("path", {"hidden_dims": (5,)}), ("hash", {}), ("crt", {"k": 3}), ("gqr", {"k": 3, "operation": "add"}),
])
def test_plan_counts_the_parameters_build_embedding_bag_builds(method, kwargs):
    from compemb.plan import plan_table

    n, d, m = 1000, 8, 7
    cfg = EmbeddingBagConfig("C1", n, d, method=method, num_collisions=m, **kwargs)
    counts = torch.ones(n) if method == "freq" else None
    # (freq picks its hot ids from the counts, which a meta device cannot read)
    built = build_embedding_bag(cfg, device=None if method == "freq" else "meta", counts=counts)
    plan = plan_table("C1", n, d, method, num_collisions=m, k=cfg.k, operation=cfg.operation,
                      hidden_dims=cfg.hidden_dims, num_hot=cfg.num_hot)
    assert built.built_method == plan.method == method
    assert plan.params_after == num_parameters(built)
    if method == "cluster":
        assert plan.family.table_sizes == built.family.table_sizes


def test_sizes_are_validated_by_one_rule():
    from compemb.functional import check_int

    # a one-element 1-d tensor is not a size, for the partitions as for the modules
    with pytest.raises(TypeError, match="must be an integer"):
        quotient_remainder(torch.tensor([10]), 4)
    with pytest.raises(TypeError, match="must be an integer"):
        check_int("n", torch.tensor([10]))
    assert quotient_remainder(torch.tensor(10), 4).n == check_int("n", torch.tensor(10)) == 10


def test_bag_options_max_norm_is_checked_as_everywhere():
    with pytest.raises(TypeError, match="max_norm"):
        BagOptions(max_norm="a")
    with pytest.raises(TypeError, match="max_norm"):
        BagOptions(max_norm=True)
    with pytest.raises(ValueError, match="max_norm"):
        BagOptions(max_norm=float("nan"))


def test_the_sweep_registry_imports_no_torch():
    code = "import sys, sweeps.space; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_clustered_family_does_not_check_the_identity_relabelling(monkeypatch):
    from compemb.partitions import relabelled

    calls = []
    original = relabelled.RelabelledFamily.__init__

    def spy(self, relabel, base, check=True):
        calls.append(check)
        original(self, relabel, base, check=check)

    monkeypatch.setattr(relabelled.RelabelledFamily, "__init__", spy)
    relabelled.ClusteredFamily(100, 7)
    relabelled.ClusteredFamily(100, 7, relabel=torch.arange(100))
    assert calls == [False, True]
