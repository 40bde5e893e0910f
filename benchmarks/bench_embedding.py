"""Training throughput of embedding lookups for the 26 Criteo Kaggle tables.

One training step = forward over all 26 tables + backward + a sparse SGD step, batch 2048, d = 16,
``mode="sum"``. Cases (append a ``Case`` to add one): (a) ``full``, one ``nn.EmbeddingBag`` per
table (the baseline); (b) ``qr-2bag``, quotient–remainder as two pooled ``F.embedding_bag`` calls
combined afterwards (the reference DLRM approach, with integer quotients); (c) ``compemb-after`` /
``compemb-before``, ``compemb.QREmbeddingBag`` with ``compose="after_pool"`` / ``"before_pool"``.
Bags: one-hot, 20-hot and 20-hot-var (lengths uniform in 0..40); indices uniform per table.

Time is this process's CPU time (``--clock cpu``, one torch thread: steady on a shared machine) or
elapsed time (``--clock wall``, with ``--threads 0`` on a quiet machine). Cardinalities are divided
by ``--scale``; QR tables use ``--collisions`` on tables with more than ``--threshold`` rows.
Prints samples/s and ratios against (a) and (b) from the same run (best of interleaved rounds).

    python benchmarks/bench_embedding.py                 # default scale 4
    python benchmarks/bench_embedding.py --scale 1       # full Criteo size (2.2 GB of fp32 tables)
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compemb.modules import QREmbeddingBag

# Criteo Kaggle cardinalities after DLRM-style preprocessing (DESIGN.md).
CRITEO_KAGGLE = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)


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
    opt.step()
    opt.zero_grad(set_to_none=True)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def time_case(model, opt, batches, probe, iters: int, clock=time.perf_counter) -> float:
    """Seconds per step over ``iters`` steps, cycling through ``batches``."""
    start = clock()
    for i in range(iters):
        train_step(model, opt, batches[i % len(batches)], probe)
    return (clock() - start) / iters


def run(args) -> Dict[str, Dict[str, float]]:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    cards = [max(1, -(-n // args.scale)) for n in CRITEO_KAGGLE]
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    print(f"bench_embedding: 26 Criteo Kaggle tables / scale {args.scale} (sum of rows {sum(cards):,}), "
          f"d={args.dim}, batch {args.batch}, collisions {args.collisions}, threshold {args.threshold}, "
          f"mode=sum, sparse SGD, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock")
    models, opts, params = {}, {}, {}
    for case in cases:
        t0 = time.perf_counter()
        model = case.build(cards, args.dim, args.threshold, args.collisions)
        models[case.name] = model
        opts[case.name] = torch.optim.SGD(model.parameters(), lr=0.01)
        params[case.name] = sum(p.numel() for p in model.parameters())
        print(f"  built {case.name:<18} {params[case.name]:>13,} params in {time.perf_counter() - t0:5.1f} s")
    gen = torch.Generator().manual_seed(args.seed)
    probe = torch.randn(args.batch, len(cards) * args.dim)
    results: Dict[str, Dict[str, float]] = {}
    for bags in args.bags:
        batches = make_batches(cards, args.batch, bags, args.num_batches, gen)
        per_case: Dict[str, List[float]] = {c.name: [] for c in cases}
        for c in cases:  # warm-up
            time_case(models[c.name], opts[c.name], batches, probe, args.warmup)
        for _ in range(args.rounds):  # interleaved rounds: machine noise hits every case alike
            for c in cases:
                per_case[c.name].append(
                    time_case(models[c.name], opts[c.name], batches, probe, args.iters, CLOCKS[args.clock]))
        results[bags] = {name: args.batch / min(ts) for name, ts in per_case.items()}
    print_table(results, params, [c.name for c in cases])
    return results


def print_table(results, params, names) -> None:
    base_a, base_b = "a:full", "b:qr-2bag"
    header = f"{'bags':<11} {'case':<18} {'samples/s':>11} {'vs (a)':>7} {'vs (b)':>7} {'params':>13}"
    print()
    print(header)
    print("-" * len(header))
    for bags, row in results.items():
        for name in names:
            sps = row[name]
            ra = f"{sps / row[base_a]:.2f}x" if base_a in row else "-"
            rb = f"{sps / row[base_b]:.2f}x" if base_b in row else "-"
            print(f"{bags:<11} {name:<18} {sps:>11,.0f} {ra:>7} {rb:>7} {params[name]:>13,}")
    print("(throughput ratios, > 1 is faster than the baseline; best of interleaved rounds, so load from "
          "other processes hits every case alike)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="divide every cardinality by this (default 4)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--collisions", type=int, default=4)
    parser.add_argument("--threshold", type=int, default=0,
                        help="compress only tables with more rows than this (default 0: all)")
    parser.add_argument("--bags", nargs="+", default=["one-hot", "20-hot", "20-hot-var"],
                        choices=["one-hot", "20-hot", "20-hot-var"])
    parser.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    parser.add_argument("--iters", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
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
