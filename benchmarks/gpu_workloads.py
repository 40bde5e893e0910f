"""The workloads of ``benchmarks/gpu.py``: Criteo-sized tables, their lookups and the TBE helpers.

Every lookup the benchmark times is a function here (full tables, the reference DLRM QR module,
compemb QR on torch, per-table Triton, the table-batched Triton kernel, the FBGEMM collection), so
the correctness checks and the timings run the same code. Only public names of compemb are used;
the Triton entry points import triton on first use (set ``TRITON_INTERPRET`` before that).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from compemb import kernels, partitions
from compemb.functional import embedding_bag_codes

# Criteo Kaggle cardinalities after DLRM preprocessing (DESIGN.md)
CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
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


def make_collections(sizes, d, device):
    """FBGEMM TBE over the full tables, and compemb QR in one TBE (fused exact SGD), if fbgemm imports."""
    from compemb.collection import CompositionalEmbeddingBagCollection

    full = CompositionalEmbeddingBagCollection(
        [(f"C{i}", n, d, None, "add", "sum") for i, n in enumerate(sizes)],
        backend="fbgemm", optimizer="exact_sgd", learning_rate=1e-3, device=device, include_last_offset=True)
    qr = CompositionalEmbeddingBagCollection(
        [(f"C{i}", n, d, COLLISIONS if n > COLLISIONS else None, "mult", "sum", "after_pool")
         for i, n in enumerate(sizes)],
        backend="fbgemm", optimizer="exact_sgd", learning_rate=1e-3, device=device, include_last_offset=True)
    return full, qr


def run_collection(w, coll):
    return coll([(x, w.offsets) for x in w.inputs], concat=True)


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
