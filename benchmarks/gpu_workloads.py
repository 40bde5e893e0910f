"""The workloads of ``benchmarks/gpu.py``: Criteo-sized tables, their lookups and the TBE helpers.

Every lookup the benchmark times is a function here (full tables, the reference DLRM QR module,
compemb QR on torch, per-table Triton, the table-batched Triton kernel), so the correctness checks
and the timings run the same code; the checks that ``tests/test_gpu.py`` also runs (per-table and
table-batched kernels against the torch reference, the int64 index path of the table-batched
kernel, the number of device syncs of a lookup) are here too. Only
public names of compemb are used; the Triton entry points import triton on first use (set
``TRITON_INTERPRET`` before that). FBGEMM is left out: its CUDA build cannot be installed on the
GPU machine (no network, and the CPU build it has serves CPU tensors only).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from compemb import kernels, partitions
from compemb.functional import embedding_bag_codes
from compemb.plan import CRITEO_KAGGLE_CARDINALITIES

# Criteo Kaggle cardinalities after DLRM preprocessing (DESIGN.md)
CRITEO = list(CRITEO_KAGGLE_CARDINALITIES)
COLLISIONS = 4

# -- the workloads ------------------------------------------------------------------------------
class Workload:
    """One configuration: indices, offsets and codes for every table, built once."""

    def __init__(self, sizes, d, B, L, device, gen):
        self.sizes, self.d, self.B, self.L = sizes, d, B, L
        self.offsets = torch.arange(0, B * L + 1, L, device=device)
        self.inputs = [torch.randint(0, n, (B * L,), device=device, generator=gen) for n in sizes]

    def useful_bytes(self, rows_per_index):
        # rows read (4 bytes per entry) + output written, over all tables
        t = len(self.sizes)
        return t * (self.B * self.L * rows_per_index * self.d * 4 + self.B * self.d * 4)


def make_full(sizes, d, device):
    return [torch.empty(n, d, device=device).uniform_(-(1 / n) ** 0.5, (1 / n) ** 0.5).requires_grad_()
            for n in sizes]


def qr_sizes(n):
    m = min(COLLISIONS, n)
    return (-(-n // m), m)  # quotient rows, remainder rows


def make_qr(sizes, d, device):
    tables = []
    for n in sizes:
        nq, nr = qr_sizes(n)
        a = 3 ** 0.5 * (3 * n) ** (-0.25)
        tables.append([torch.empty(nq, d, device=device).uniform_(-a, a).requires_grad_(),
                       torch.empty(nr, d, device=device).uniform_(-a, a).requires_grad_()])
    return tables


def qr_codes(x, n):
    m = min(COLLISIONS, n)
    return torch.stack([torch.div(x, m, rounding_mode="floor"), torch.remainder(x, m)])


def run_full(w, full):
    return [F.embedding_bag(x, t, w.offsets, mode="sum", sparse=True, include_last_offset=True)
            for x, t in zip(w.inputs, full)]


def run_dlrm_qr(w, qr):
    # the reference DLRM QR module: two pooled bags per table, combined after pooling
    outs = []
    for x, n, (tq, tr) in zip(w.inputs, w.sizes, qr):
        m = min(COLLISIONS, n)
        q = F.embedding_bag(torch.div(x, m, rounding_mode="floor"), tq, w.offsets, mode="sum", include_last_offset=True)
        r = F.embedding_bag(torch.remainder(x, m), tr, w.offsets, mode="sum", include_last_offset=True)
        outs.append(q * r)
    return outs


def run_compemb_torch(w, qr, compose="before_pool"):
    return [embedding_bag_codes(qr_codes(x, n), w.offsets, t, "mult", "sum", compose)
            for x, n, t in zip(w.inputs, w.sizes, qr)]


def run_compemb_triton(w, qr, compose="before_pool", pre_reduce=True):
    return [kernels.triton_embedding_bag(qr_codes(x, n), w.offsets, t, "mult", "sum", compose, max_bag_length=w.L,
                                 pre_reduce_small=pre_reduce)
            for x, n, t in zip(w.inputs, w.sizes, qr)]


class TBE:
    """One table-batched Triton lookup over all features: the QR tables (shared with ``make_qr``,
    copied into one flat buffer) or the full tables, with its own fused-SGD copy."""

    def __init__(self, sizes, d, device, qr=None, full=False, lr=1e-3):
        names = [f"C{i}" for i in range(len(sizes))]
        if full:
            fams = [partitions.naive(n) for n in sizes]
            self.layout = kernels.tbe_layout(names, fams, d, "add", ["sum"] * len(sizes))
            self.weight = torch.empty(self.layout.numel, device=device)
            for f, n in enumerate(sizes):
                b = self.layout.table_bases[f][0]
                self.weight[b: b + n * d].uniform_(-(1 / n) ** 0.5, (1 / n) ** 0.5)
        else:
            # x mod m, then x div m: the same function as qr_codes (quotient, remainder) on make_qr
            fams = [partitions.quotient_remainder(n, min(COLLISIONS, n)) for n in sizes]
            self.layout = kernels.tbe_layout(names, fams, d, "mult", ["sum"] * len(sizes))
            self.weight = torch.cat([t.detach().reshape(-1) for tq, tr in qr for t in (tr, tq)])
        self.weight.requires_grad_(not full)
        self.lr = lr
        self.sgd_weight = self.weight if full else None  # full: only the fused-SGD path (no copy)
        self.scratch = torch.zeros(self.layout.numel if not full else 0, device=device)
        self.placeholder = torch.zeros(0, device=device, requires_grad=True)

    def kjt(self, w):
        """Values feature-major and F * B + 1 offsets (every bag holds L indices)."""
        values = torch.cat(w.inputs)
        offsets = torch.arange(0, values.numel() + 1, w.L, device=values.device)
        return values, offsets

    def forward(self, kjt, validate=False, **knobs):
        return kernels.tbe_embedding_bags(kjt[0], kjt[1], self.weight, self.layout, validate=validate, **knobs)

    def forward_sgd(self, kjt, **knobs):
        if self.sgd_weight is None:
            self.sgd_weight = self.weight.detach().clone()
        return kernels.tbe_embedding_bags(kjt[0], kjt[1], self.sgd_weight, self.layout, validate=False,
                                  optimizer="exact_sgd", learning_rate=self.lr,
                                  scratch=self.scratch if self.scratch.numel() else None,
                                  placeholder=self.placeholder, **knobs)


def sgd_step_full(w, full, opt):
    fwd_bwd(run_full, w, full)
    opt.step()


#: the A/B of the backward: one atomic per index for every table, also the small ones (and, for
#: the TBE's fused SGD with mult, accumulate-then-apply over every component)
NO_PRE_REDUCE = {"pre_reduce_small": False}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def fwd_bwd(run, *args):
    outs = run(*args)
    if isinstance(outs, torch.Tensor):
        outs = [outs]
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


# -- checks shared with tests/test_gpu.py ----------------------------------------------------------
#: tolerances of the checks: forward, and gradients / SGD steps (atomics reorder the sums)
FWD_TOL, BWD_TOL = 1e-5, 1e-4


def per_table_errors(w, qr, compose, gen=None):
    """Per-table Triton against compemb's torch reference on ``w`` and the ``make_qr`` tables
    ``qr``: ``(forward max rel err, gradient max rel err)`` under a random upstream gradient."""
    got, want = run_compemb_triton(w, qr, compose), run_compemb_torch(w, qr, compose)
    params = [p for pair in qr for p in pair]
    g = [torch.randn(o.shape, device=o.device, generator=gen) for o in want]
    gg = torch.autograd.grad(got, params, g)
    gw = torch.autograd.grad(want, params, g)
    return max(rel_err(a, b) for a, b in zip(got, want)), max(rel_err(a, b) for a, b in zip(gg, gw))


def tbe_errors(w, qr, tbe, gen=None):
    """The table-batched kernel ``tbe`` (built on ``qr``) against the per-feature reference on ``w``:
    ``{"forward": rel err, label: (dense gradient rel err, fused SGD step rel err, scratch left zero)}``
    for the pre-reduced (``"pre-reduced"``) and the per-index-atomic (``"per-index atomics"``) backward."""
    kjt = tbe.kjt(w)
    want = torch.cat(run_compemb_torch(w, qr), dim=1)
    errs = {"forward": rel_err(tbe.forward(kjt, validate=True), want)}
    g = torch.randn(want.shape, device=want.device, generator=gen)
    params = [t for tq, tr in qr for t in (tr, tq)]  # the flat buffer's order
    gw = torch.cat([x.reshape(-1) for x in torch.autograd.grad(want, params, g)])
    for label, knobs in (("pre-reduced", {}), ("per-index atomics", NO_PRE_REDUCE)):
        (gg,) = torch.autograd.grad(tbe.forward(kjt, **knobs), tbe.weight, g)
        tbe.sgd_weight = tbe.weight.detach().clone()
        tbe.forward_sgd(kjt, **knobs).backward(g)
        step = tbe.sgd_weight - tbe.weight.detach()
        errs[label] = (rel_err(gg, gw), rel_err(step, -tbe.lr * gw), bool((tbe.scratch == 0).all()))
    return errs


def int64_index_check(device, d=8, B=64, L=3, gen=None):
    """The table-batched kernel on a feature with n > 2**31 (int64 index arithmetic) against the
    reference, forward and dense gradient: ``(forward rel err, gradient rel err, layout.idx32)``."""
    n, m = 3_000_000_017, 100_003  # quotient table 30,000 rows, remainder table 100,003 rows
    fam, small = partitions.quotient_remainder(n, m), partitions.quotient_remainder(1000, 7)
    layout = kernels.tbe_layout(["big", "small"], [fam, small], d, "mult", ["sum", "sum"])
    x_big = torch.randint(0, n, (B * L,), device=device, generator=gen)
    x_big[:4] = torch.tensor([n - 1, 2**31, 2**31 - 1, 0], device=device)
    x_small = torch.randint(0, small.n, (B * L,), device=device, generator=gen)
    values = torch.cat([x_big, x_small])
    offsets = torch.arange(0, values.numel() + 1, L, device=device)
    weight = (torch.rand(layout.numel, device=device, generator=gen) - 0.5).requires_grad_()
    out = kernels.tbe_embedding_bags(values, offsets, weight, layout, validate=True)
    tables = layout.tables(weight)
    bag_off = torch.arange(0, B * L + 1, L, device=device)
    want = torch.cat([
        embedding_bag_codes(fam.encode(x_big), bag_off, tables[:2], "mult", "sum", "before_pool"),
        embedding_bag_codes(small.encode(x_small), bag_off, tables[2:], "mult", "sum", "before_pool"),
    ], dim=1)
    g = torch.randn(out.shape, device=device, generator=gen)
    (got_g,) = torch.autograd.grad(out, weight, g)
    (want_g,) = torch.autograd.grad(want, weight, g)
    return rel_err(out, want), rel_err(got_g, want_g), layout.idx32


def count_syncs(fn):
    """How many synchronizing CUDA calls ``fn()`` makes (torch's sync debug mode, "warn")."""
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    return sum("synchroniz" in str(w.message) for w in caught)


def sync_check(device, sizes=(1000, 50, 7), d=16, B=256, L=4, gen=None):
    """The triton collection's claims: ``validate=False`` runs forward + backward (fused SGD) with
    no device sync (``set_sync_debug_mode("error")`` raises on any); ``validate=True`` adds one.
    Returns ``(syncs with validate=True, syncs with validate=False)``."""
    from compemb.collection import CompositionalEmbeddingBagCollection

    specs = [(f"C{i}", n, d, COLLISIONS if n > COLLISIONS else None, "mult", "sum") for i, n in enumerate(sizes)]
    coll = CompositionalEmbeddingBagCollection(specs, backend="triton", optimizer="exact_sgd", device=device)
    values = torch.cat([torch.randint(0, n, (B * L,), device=device, generator=gen) for n in sizes])
    offsets = torch.arange(0, values.numel() + 1, L, device=device)

    class KJT:  # the three methods of a KeyedJaggedTensor the collection reads
        def keys(self):
            return [s[0] for s in specs]

        def values(self):
            return values

        def offsets(self):
            return offsets

    kjt = KJT()
    coll(kjt, concat=True, validate=True).sum().backward()  # warm-up: compile, caches
    torch.cuda.synchronize()

    def step(validate):
        coll(kjt, concat=True, validate=validate).sum().backward()

    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(False)  # raises on a sync
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    torch.cuda.synchronize()
    with_check = count_syncs(lambda: step(True))
    torch.cuda.synchronize()
    without = count_syncs(lambda: step(False))
    return with_check, without
