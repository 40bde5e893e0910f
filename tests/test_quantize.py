"""Quantized export (FBGEMM row-wise int8 / int4) stays within the quantisation error of fp32.

Bounds, from the quantiser: each row is stored as ``scale * q + bias`` with
``scale = (max - min) / (2**bits - 1)``, so one entry is off by at most half a step plus the fp16
rounding of scale and bias. For rows drawn uniformly the error of an entry is ~uniform on
``±step/2`` (rms ``step / sqrt(12)``), and an entry's rms is ``range / sqrt(12)``: the relative
rms error is about ``1 / (2**bits - 1)``: 0.0039 (int8), 0.067 (int4); a product of two
quantized factors (``mult``) adds them in quadrature (x sqrt(2): 0.0055 and 0.094). The tests
allow about 1.6-2x of those predictions: int8 < 1e-2, int4 < 1.5e-1.
"""
import zlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from compemb import CompositionalEmbeddingBag, QREmbeddingBag, quantize
from compemb.partitions import chinese_remainder
from compemb.quantization import quantization_error

pytestmark = pytest.mark.filterwarnings("ignore")

REL_BOUND = {8: 1e-2, 4: 1.5e-1}


def _modules(n, d):
    return {
        "qr_mult": lambda: QREmbeddingBag(n, d, num_collisions=4, mode="sum"),
        "qr_add": lambda: QREmbeddingBag(n, d, num_collisions=4, mode="sum", operation="add"),
        "qr_mult_after_mean": lambda: QREmbeddingBag(n, d, num_collisions=4, mode="mean", compose="after_pool"),
        "crt_concat_max": lambda: CompositionalEmbeddingBag(n, d, family=chinese_remainder(n, k=3),
                                                            operation="concat", mode="max"),
        "full": lambda: torch.nn.EmbeddingBag(n, d, mode="sum"),
    }


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kind", list(_modules(1, 1)))
def test_relative_error_within_quantisation_bound(kind, bits):
    torch.manual_seed(zlib.crc32(f"{kind} {bits}".encode()))
    n, d = 5000, 16
    module = _modules(n, d)[kind]()
    if kind == "full":
        torch.nn.init.uniform_(module.weight, -1, 1)
    q = quantize(module, bits=bits)
    x = torch.randint(0, n, (128, 4))
    err = quantization_error(module, q, x)
    assert err["relative"] < REL_BOUND[bits], err
    assert err["relative"] > 0  # it really is quantized
    assert q.nbytes < q.fp32_nbytes


@settings(max_examples=15, deadline=None)
@given(bits=st.sampled_from([8, 4]), d=st.integers(1, 20), seed=st.integers(0, 2**31 - 1),
       psw=st.booleans())
def test_every_output_entry_within_summed_half_steps(bits, d, seed, psw):
    # add / sum: the output error is bounded by the sum over the bag of each row's half step
    # (plus the fp16 rounding of scale and bias); 1-D input with offsets and per-sample weights
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the module's initial tables
    n = 300
    module = QREmbeddingBag(n, d, num_collisions=7, mode="sum", operation="add")
    x = torch.randint(0, n, (40,), generator=gen)
    offsets = torch.tensor([0, 5, 5, 17, 30])
    w = torch.rand(40, generator=gen) if psw else None
    q = quantize(module, bits=bits)
    got, want = q(x, offsets, w), module(x, offsets, w).detach()
    codes = module.encode(x)
    bound_rows = []
    for t, table in enumerate([module.weight_q, module.weight_r]):
        table = table.detach()
        lo, hi = table.min(1).values, table.max(1).values
        per_row = (hi - lo) / (2**bits - 1) / 2 + (hi - lo + lo.abs()) * 2.0**-10 + 1e-7
        bound_rows.append(per_row[codes[t]])
    per_index = (bound_rows[0] + bound_rows[1]) * (w if psw else 1)
    # offsets (B,) as in nn.EmbeddingBag: the last bag runs to the end of the input
    bags = torch.repeat_interleave(torch.arange(5), torch.tensor([5, 0, 12, 13, 10]))
    bound = torch.zeros(5).index_add_(0, bags, per_index)
    assert ((got - want).abs() <= bound.unsqueeze(1) + 1e-6).all()


def test_size_stacks_with_qr():
    n, d = 100_000, 64
    full = torch.nn.EmbeddingBag(n, d)
    qr = QREmbeddingBag(n, d, num_collisions=4)
    q_full8, q_qr4 = quantize(full, bits=8), quantize(qr, bits=4)
    # int8 rows: d bytes + 4 bytes of fp16 scale and bias (+ alignment); int4: d / 2 + 4
    assert q_full8.fp32_nbytes / q_full8.nbytes > 3.5
    assert q_qr4.fp32_nbytes / q_qr4.nbytes > 6.5
    # QR (about 4x fewer rows) times int4 (about 7x fewer bytes per row at d=64)
    assert full.weight.numel() * 4 / q_qr4.nbytes > 24


def test_quantize_refuses_by_name():
    with pytest.raises(ValueError, match="bits must be 8 or 4, got 2"):
        quantize(torch.nn.EmbeddingBag(10, 4), bits=2)
    with pytest.raises(TypeError, match="Linear"):
        quantize(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="max_norm"):
        quantize(torch.nn.EmbeddingBag(10, 4, max_norm=1.0))


@pytest.mark.parametrize("compose", ["before_pool", "after_pool"])
def test_per_sample_weights_of_any_float_dtype_on_every_path(compose):
    # the output is float32 whatever the tables were; the pooled path took float64 weights and
    # the unpooled one (mult before pooling) refused them
    bag = QREmbeddingBag(50, 4, num_collisions=4, mode="sum", compose=compose)
    q = quantize(bag, bits=8)
    x, offsets = torch.tensor([1, 2, 49]), torch.tensor([0, 1])
    psw = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    got = q(x, offsets, psw)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, q(x, offsets, psw.float()), rtol=0, atol=0)
    torch.testing.assert_close(got, bag(x, offsets, psw.float()).detach(), rtol=0.05, atol=1e-2)
