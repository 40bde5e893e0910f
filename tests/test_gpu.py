"""Compiled Triton on a CUDA device: the correctness part of ``benchmarks/gpu.py`` at small sizes.

Marked ``gpu`` and skipped, with the reason, where CUDA is absent (on the CPU machines the same
kernels run under the Triton interpreter in tests/test_triton*.py). Run on a GPU machine with
``.venv/bin/python -m pytest -m gpu tests/test_gpu.py``. Checks: the per-table and the
table-batched kernels against the torch reference (forward, gradients, the fused SGD step), the
table-batched kernel's int64 index path (a feature of more than 2**31 categories) and the triton
collection's "one device sync" claim under ``torch.cuda.set_sync_debug_mode``.
"""
import os
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled Triton kernels)"),
]

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

DEVICE = torch.device("cuda")


@pytest.fixture
def gen():
    return torch.Generator(device=DEVICE).manual_seed(0)


def test_triton_is_compiled_not_interpreted():
    from compemb.kernels import triton_interpreted

    assert not triton_interpreted(), "TRITON_INTERPRET=1 is set: these tests are for the compiled kernels"


@pytest.mark.parametrize("L", [1, 7])
@pytest.mark.parametrize("compose", ["before_pool", "after_pool"])
def test_compiled_per_table_kernel_equals_reference(gen, L, compose):
    from gpu_workloads import Workload, make_qr, rel_err, run_compemb_torch, run_compemb_triton

    sizes = [10_000, 600, 24, 3]
    w = Workload(sizes, 16, 128, L, DEVICE, gen)
    qr = make_qr(sizes, 16, DEVICE)
    got, want = run_compemb_triton(w, qr, compose), run_compemb_torch(w, qr, compose)
    params = [p for pair in qr for p in pair]
    g = [torch.randn(o.shape, device=DEVICE, generator=gen) for o in want]
    gg = torch.autograd.grad(got, params, g)
    gw = torch.autograd.grad(want, params, g)
    assert max(rel_err(a, b) for a, b in zip(got, want)) < 1e-5
    assert max(rel_err(a, b) for a, b in zip(gg, gw)) < 1e-4  # atomics reorder the sums


@pytest.mark.parametrize("L", [1, 5])
def test_compiled_table_batched_kernel_and_fused_sgd_equal_reference(gen, L):
    from gpu_workloads import NO_PRE_REDUCE, TBE, Workload, make_qr, rel_err, run_compemb_torch

    sizes = [50_000, 1460, 583, 24, 3]
    lr = 0.1
    w = Workload(sizes, 16, 256, L, DEVICE, gen)
    qr = make_qr(sizes, 16, DEVICE)
    tbe = TBE(sizes, 16, DEVICE, qr=qr, lr=lr)
    kjt = tbe.kjt(w)
    want = torch.cat(run_compemb_torch(w, qr), dim=1)
    assert rel_err(tbe.forward(kjt, validate=True), want) < 1e-5
    g = torch.randn(want.shape, device=DEVICE, generator=gen)
    params = [t for tq, tr in qr for t in (tr, tq)]  # the flat buffer's order
    gw = torch.cat([x.reshape(-1) for x in torch.autograd.grad(want, params, g)])
    for knobs in ({}, NO_PRE_REDUCE):  # the pre-reduced backward and the per-index atomics
        (gg,) = torch.autograd.grad(tbe.forward(kjt, **knobs), tbe.weight, g)
        assert rel_err(gg, gw) < 1e-4
        tbe.sgd_weight = tbe.weight.detach().clone()
        tbe.forward_sgd(kjt, **knobs).backward(g)
        assert rel_err(tbe.sgd_weight - tbe.weight.detach(), -lr * gw) < 1e-4
        assert bool((tbe.scratch == 0).all())  # the mult scratch is left all-zero


def test_table_batched_kernel_int64_index_path(gen):
    from gpu_workloads import int64_index_check

    fwd_err, bwd_err, idx32 = int64_index_check(DEVICE, gen=gen)
    assert not idx32  # n > 2**31: the kernels index in int64
    assert fwd_err < 1e-5 and bwd_err < 1e-4


def test_collection_lookup_makes_one_device_sync_only_to_validate(gen):
    from gpu_workloads import sync_check

    # validate=False: forward and fused-SGD backward under set_sync_debug_mode("error") (raises on a sync)
    with_check, without = sync_check(DEVICE, gen=gen)
    assert without == 0
    assert with_check == 1
