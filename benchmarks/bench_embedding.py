"""Training throughput of embedding lookups for the 26 Criteo Kaggle tables, and the ratio table.

One training step = forward over all 26 tables + backward + an SGD step, batch 2048, d = 16,
``mode="sum"``. Cases (append a ``Case`` to add one):

- ``a:full``: one ``nn.EmbeddingBag`` per table, sparse gradients, ``torch.optim.SGD``;
- ``b:qr-2bag``: quotient–remainder as two pooled ``F.embedding_bag`` calls combined afterwards
  (the DLRM-style module, written here from its description, with integer quotients);
- ``c:compemb-after`` / ``c:compemb-before``: ``compemb.QREmbeddingBag`` with
  ``compose="after_pool"`` / ``"before_pool"``;
- ``f:fbgemm-full``: ``CompositionalEmbeddingBagCollection(backend="fbgemm",
  optimizer="exact_sgd")`` over the full tables (FBGEMM's fused SGD);
- ``f:fbgemm-qr-after`` / ``f:fbgemm-qr-before``: the same collection over the QR tables (the
  quotient tables in FBGEMM's TBE, the remainders beside it; ``before`` uses the remainder-class
  split on multi-hot bags).

Bags: one-hot, 20-hot and 20-hot-var (lengths uniform in 0..40); indices uniform per table; every
case gets the same per-feature ``(indices, offsets)`` lists. QR tables use ``--collisions`` on
tables with more than ``--threshold`` rows (default 200, DESIGN.md's thresholds); cardinalities
are divided by ``--scale``.

Time is this process's CPU time (``--clock cpu``, one torch thread: steadier on a shared machine)
or elapsed time (``--clock wall``). Rounds are interleaved (every case once per round, in a
rotating order) and the best round of each case counts, so load from other processes hits every
case alike; the load average before and after is printed. The summary at the end gives the
ratios the issue tracks: the best compressed step against the best full-table step, and compemb's
modules against the DLRM-style module.

    python benchmarks/bench_embedding.py                 # default scale 4
    python benchmarks/bench_embedding.py --scale 1       # full Criteo size (2.2 GB of fp32 tables)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compemb.collection import CompositionalEmbeddingBagCollection  # noqa: E402
from compemb.kernels import get_collection_backend  # noqa: E402
from compemb.modules import QREmbeddingBag  # noqa: E402
from _common import criteo_kaggle_scaled, markdown_rule, print_table_header  # noqa: E402


class FullTables(nn.Module):
    """(a): one ``nn.EmbeddingBag`` per feature."""

    def __init__(self, cards: Sequence[int], dim: int, threshold: int, collisions: int):
        super().__init__()
        self.bags = nn.ModuleList([nn.EmbeddingBag(n, dim, mode="sum", sparse=True) for n in cards])

    def forward(self, indices, offsets):
        return torch.cat([bag(i, o) for bag, i, o in zip(self.bags, indices, offsets)], dim=1)


class _TwoBagQR(nn.Module):
    """(b) for one table: pool ``W_q[x // m]`` and ``W_r[x % m]`` separately, then multiply."""

    def __init__(self, n: int, dim: int, m: int):
        super().__init__()
        self.m = m
        bound = (3.0 * n) ** -0.25 * 3 ** 0.5
        self.weight_q = nn.Parameter(torch.empty(-(-n // m), dim).uniform_(-bound, bound))
        self.weight_r = nn.Parameter(torch.empty(m, dim).uniform_(-bound, bound))

    def forward(self, x, offsets):
        q = F.embedding_bag(torch.div(x, self.m, rounding_mode="floor"), self.weight_q, offsets,
                            mode="sum", sparse=True)
        r = F.embedding_bag(torch.remainder(x, self.m), self.weight_r, offsets, mode="sum", sparse=True)
        return q * r


class TwoBagQR(nn.Module):
    """(b): QR as two pooled ``F.embedding_bag`` calls per table (tables <= threshold stay full)."""

    def __init__(self, cards: Sequence[int], dim: int, threshold: int, collisions: int):
        super().__init__()
        self.bags = nn.ModuleList([
            _TwoBagQR(n, dim, collisions) if n > threshold else nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
            for n in cards
        ])

    def forward(self, indices, offsets):
        return torch.cat([bag(i, o) for bag, i, o in zip(self.bags, indices, offsets)], dim=1)


def compemb_qr(compose: str, backend: str = "torch") -> Callable[..., nn.Module]:
    """(c): ``compemb.QREmbeddingBag`` with the given compose (and backend)."""

    class CompembQR(nn.Module):
        def __init__(self, cards: Sequence[int], dim: int, threshold: int, collisions: int):
            super().__init__()
            self.bags = nn.ModuleList([
                QREmbeddingBag(n, dim, collisions, operation="mult", mode="sum", sparse=True,
                               compose=compose, backend=backend)
                if n > threshold else nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
                for n in cards
            ])

        def forward(self, indices, offsets):
            return torch.cat([bag(i, o) for bag, i, o in zip(self.bags, indices, offsets)], dim=1)

    return CompembQR


def fbgemm_collection(method: str, compose: str = "after_pool") -> Callable[..., nn.Module]:
    """(f): every table in one ``CompositionalEmbeddingBagCollection(backend="fbgemm")`` with
    FBGEMM's fused exact SGD (the update happens in backward: no ``torch.optim`` step)."""

    class FbgemmTables(nn.Module):
        fused = True

        def __init__(self, cards: Sequence[int], dim: int, threshold: int, collisions: int, lr: float = 0.01):
            super().__init__()
            specs = [(f"C{i}", n, dim, collisions if method == "qr" and n > threshold else None, "mult", "sum",
                      compose) for i, n in enumerate(cards)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fbgemm_gpu's import warnings
                self.coll = CompositionalEmbeddingBagCollection(specs, backend="fbgemm", optimizer="exact_sgd",
                                                                learning_rate=lr, seed=0)
            self.params = sum(t.numel() for t in self.coll.tables())

        def forward(self, indices, offsets):
            return self.coll([(i, o, False) for i, o in zip(indices, offsets)], concat=True)

    return FbgemmTables


@dataclass
class Case:
    """One row of the table: ``build(cards, dim, threshold, collisions) -> nn.Module`` whose
    ``forward(indices, offsets)`` (lists of 1-D LongTensors, offsets of shape ``(B,)``) returns
    ``(B, 26 * dim)``; all its parameters get sparse gradients."""

    name: str
    build: Callable[..., nn.Module]
    description: str = ""


CASES: List[Case] = [
    Case("a:full", FullTables, "nn.EmbeddingBag per table"),
    Case("b:qr-2bag", TwoBagQR, "QR, two pooled F.embedding_bag, combined after"),
    Case("c:compemb-after", compemb_qr("after_pool"), "compemb QREmbeddingBag compose=after_pool"),
    Case("c:compemb-before", compemb_qr("before_pool"), "compemb QREmbeddingBag compose=before_pool"),
    Case("f:fbgemm-full", fbgemm_collection("full"), "FBGEMM collection, full tables, exact SGD"),
    Case("f:fbgemm-qr-after", fbgemm_collection("qr", "after_pool"), "FBGEMM collection, QR after_pool, exact SGD"),
    Case("f:fbgemm-qr-before", fbgemm_collection("qr", "before_pool"), "FBGEMM collection, QR before_pool, exact SGD"),
]
FULL_CASES = ("a:full", "f:fbgemm-full")
#: the ratios of the summary: (label, numerator cases, denominator cases); best of each side
SUMMARY = [
    ("best compressed / best full", ("b:qr-2bag", "c:compemb-after", "c:compemb-before", "f:fbgemm-qr-after",
                                     "f:fbgemm-qr-before"), FULL_CASES),
    ("fbgemm QR after_pool / fbgemm full", ("f:fbgemm-qr-after",), ("f:fbgemm-full",)),
    ("fbgemm QR before_pool / fbgemm full", ("f:fbgemm-qr-before",), ("f:fbgemm-full",)),
    ("compemb after_pool / DLRM-style QR", ("c:compemb-after",), ("b:qr-2bag",)),
    ("compemb before_pool / DLRM-style QR", ("c:compemb-before",), ("b:qr-2bag",)),
    ("fbgemm full / nn.EmbeddingBag full", ("f:fbgemm-full",), ("a:full",)),
]


def make_batches(cards, batch, bags: str, num_batches: int, gen: torch.Generator):
    """``num_batches`` batches: lists (per feature) of flat indices and ``(B,)`` offsets."""
    out = []
    for _ in range(num_batches):
        indices, offsets = [], []
        for n in cards:
            if bags == "one-hot":
                lengths = torch.ones(batch, dtype=torch.long)
            elif bags == "20-hot":
                lengths = torch.full((batch,), 20, dtype=torch.long)
            else:  # 20-hot-var
                lengths = torch.randint(0, 41, (batch,), generator=gen)
            total = int(lengths.sum())
            indices.append(torch.randint(0, n, (total,), generator=gen))
            offsets.append(torch.cumsum(lengths, 0) - lengths)
        out.append((indices, offsets))
    return out


def train_step(model, opt, batch, probe):
    indices, offsets = batch
    out = model(indices, offsets)
    loss = (out * probe).sum()
    loss.backward()
    if opt is not None:  # (fused optimizers updated the tables inside backward)
        opt.step()
        opt.zero_grad(set_to_none=True)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def time_case(model, opt, batches, probe, iters: int, clock=time.perf_counter) -> float:
    """Seconds per step over ``iters`` steps, cycling through ``batches``."""
    start = clock()
    for i in range(iters):
        train_step(model, opt, batches[i % len(batches)], probe)
    return (clock() - start) / iters


def machine() -> str:
    """The CPU model, its core count and the load average (the machine may be shared)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def run(args) -> Dict[str, Dict[str, float]]:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    cards = criteo_kaggle_scaled(args.scale)
    fbgemm_reason = get_collection_backend("fbgemm").unavailable_reason()
    cases = [c for c in CASES if (not args.cases or c.name in args.cases)
             and not (c.name.startswith("f:") and fbgemm_reason is not None)]
    if fbgemm_reason is not None:
        print(f"bench_embedding: FBGEMM cases skipped: {fbgemm_reason}")
    from compemb.kernels._native import native_unavailable_reason

    native = native_unavailable_reason()
    print(f"bench_embedding: {datetime.date.today()}, {machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, native kernels: {native or 'yes'}")
    print(f"  26 Criteo Kaggle tables / scale {args.scale} (sum of rows {sum(cards):,}), d={args.dim}, batch "
          f"{args.batch}, QR {args.collisions} collisions on tables > {args.threshold} rows, mode=sum, SGD")
    print(f"  before: {load()}")
    models, opts, params = {}, {}, {}
    for case in cases:
        t0 = time.perf_counter()
        model = case.build(cards, args.dim, args.threshold, args.collisions)
        models[case.name] = model
        trainable = list(model.parameters())
        opts[case.name] = torch.optim.SGD(trainable, lr=0.01) if trainable else None
        params[case.name] = getattr(model, "params", None) or sum(p.numel() for p in trainable)
        print(f"  built {case.name:<20} {params[case.name]:>13,} params in {time.perf_counter() - t0:5.1f} s")
    gen = torch.Generator().manual_seed(args.seed)
    probe = torch.randn(args.batch, len(cards) * args.dim)
    results: Dict[str, Dict[str, float]] = {}
    for bags in args.bags:
        batches = make_batches(cards, args.batch, bags, args.num_batches, gen)
        per_case: Dict[str, List[float]] = {c.name: [] for c in cases}
        for c in cases:  # warm-up
            time_case(models[c.name], opts[c.name], batches, probe, args.warmup)
        for r in range(args.rounds):  # interleaved rounds in a rotating order
            for c in cases[r % len(cases):] + cases[:r % len(cases)]:
                per_case[c.name].append(
                    time_case(models[c.name], opts[c.name], batches, probe, args.iters, CLOCKS[args.clock]))
        results[bags] = {name: args.batch / min(ts) for name, ts in per_case.items()}
    print(f"  after:  {load()}")
    print_table(results, params, [c.name for c in cases])
    print_summary(results)
    return results


def print_table(results, params, names) -> None:
    base_a, base_b = "a:full", "b:qr-2bag"
    header = f"{'bags':<11} {'case':<20} {'samples/s':>11} {'vs (a)':>7} {'vs (b)':>7} {'params':>13}"
    print_table_header("", header)
    for bags, row in results.items():
        for name in names:
            sps = row[name]
            ra = f"{sps / row[base_a]:.2f}x" if base_a in row else "-"
            rb = f"{sps / row[base_b]:.2f}x" if base_b in row else "-"
            print(f"{bags:<11} {name:<20} {sps:>11,.0f} {ra:>7} {rb:>7} {params[name]:>13,}")
    print("(throughput ratios, > 1 is faster than the baseline; best of interleaved rounds, so load from "
          "other processes hits every case alike)")


def summary_rows(results: Dict[str, Dict[str, float]]) -> List[List[str]]:
    """``[label, ratio per bag kind...]`` for :data:`SUMMARY` (``-`` where a side was not run)."""
    rows = []
    for label, num, den in SUMMARY:
        row = [label]
        for res in results.values():
            top = [n for n in num if n in res]
            bottom = [d for d in den if d in res]
            if not top or not bottom:
                row.append("-")
                continue
            best_n = max(top, key=lambda n: res[n])
            best_d = max(bottom, key=lambda d: res[d])
            cell = f"{res[best_n] / res[best_d]:.2f}x"
            if len(top) > 1 or len(bottom) > 1:
                cell += f" ({best_n.split(':')[1]} / {best_d.split(':')[1]})"
            row.append(cell)
        rows.append(row)
    return rows


def print_summary(results: Dict[str, Dict[str, float]]) -> None:
    rows = summary_rows(results)
    header = ["summary: samples/s ratio (> 1: the first is faster)"] + list(results)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print()
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print(markdown_rule(line))
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="divide every cardinality by this (default 4)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--collisions", type=int, default=4)
    parser.add_argument("--threshold", type=int, default=200,
                        help="compress only tables with more rows than this (default 200)")
    parser.add_argument("--bags", nargs="+", default=["one-hot", "20-hot"],
                        choices=["one-hot", "20-hot", "20-hot-var"])
    parser.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    parser.add_argument("--iters", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine; 0: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: this process's CPU time (steady on a shared machine, default); "
                             "wall: elapsed time")
    parser.add_argument("--seed", type=int, default=0)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
