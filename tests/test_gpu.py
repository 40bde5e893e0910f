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
    from gpu_workloads import BWD_TOL, FWD_TOL, Workload, make_qr, per_table_errors

    sizes = [10_000, 600, 24, 3]
    fwd_err, bwd_err = per_table_errors(Workload(sizes, 16, 128, L, DEVICE, gen), make_qr(sizes, 16, DEVICE), compose,
                                        gen)
    assert fwd_err < FWD_TOL
    assert bwd_err < BWD_TOL  # atomics reorder the sums


@pytest.mark.parametrize("L", [1, 5])
def test_compiled_table_batched_kernel_and_fused_sgd_equal_reference(gen, L):
    from gpu_workloads import BWD_TOL, FWD_TOL, TBE, Workload, make_qr, tbe_errors

    sizes = [50_000, 1460, 583, 24, 3]
    w = Workload(sizes, 16, 256, L, DEVICE, gen)
    qr = make_qr(sizes, 16, DEVICE)
    errs = tbe_errors(w, qr, TBE(sizes, 16, DEVICE, qr=qr, lr=0.1), gen)
    assert errs.pop("forward") < FWD_TOL
    assert set(errs) == {"pre-reduced", "per-index atomics"}  # the pre-reduced backward and the per-index atomics
    for label, (grad_err, sgd_err, scratch_zero) in errs.items():
        assert grad_err < BWD_TOL, label
        assert sgd_err < BWD_TOL, label
        assert scratch_zero, label  # the mult scratch is left all-zero


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
