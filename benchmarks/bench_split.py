"""Multi-hot ``mult`` composed before pooling on FBGEMM: the remainder-class split against per-index lookups.

``sum_i q[a_i] * r[b_i]`` (the paper's composition, per index, then pooled) is computed three ways,
with exact SGD, over the 26 Criteo Kaggle tables / ``--scale`` (QR with ``m`` collisions on tables
over ``--threshold`` rows), d = 16, ``L`` indices per bag:

- ``split``: ``CompositionalEmbeddingBagCollection(backend="fbgemm", compose="before_pool")``: the
  remainder-class split ``sum_j r[j] * sum_{i: b_i = j} q[a_i]``: ``m`` pooled slots of the quotient
  table per bag in FBGEMM's TBE, combined with the dense remainder table afterwards;
- ``per-index``: FBGEMM's sequence TBE (``PoolingMode.NONE``, exact SGD fused) returns one quotient
  row per index; the remainder rows are gathered and multiplied per index and the products summed
  per bag in PyTorch (the ``EmbeddingCollection`` route: traffic times the pooling factor);
- ``torch``: the reference collection (``backend="torch"``, sparse gradients, ``torch.optim.SGD``).

The split costs ``B * m * d`` pooled outputs and a counting sort; per-index costs ``B * L * d`` rows:
it pays when ``m`` is small against ``L``. Prints samples/s and the split's speed-up over each
(CPU time, one thread, best of interleaved rounds).

    python benchmarks/bench_split.py [--ms 2 4 16 64] [--ls 2 5 20 50] [--batch 512]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compemb.collection import CompositionalEmbeddingBagCollection  # noqa: E402
from compemb.kernels import get_collection_backend  # noqa: E402
from _common import criteo_kaggle_scaled, print_table_header  # noqa: E402


def specs(cards: Sequence[int], dim: int, m: int, threshold: int) -> List[tuple]:
    return [(f"C{i}", n, dim, m if n > threshold else None, "mult", "sum", "before_pool") for i, n in enumerate(cards)]


class PerIndex(nn.Module):
    """Per-index composition: FBGEMM sequence TBE over the quotient tables, remainders in torch."""

    def __init__(self, cards: Sequence[int], dim: int, m: int, threshold: int, lr: float) -> None:
        super().__init__()
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            BoundsCheckMode,
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        self.m = [m if n > threshold else 1 for n in cards]
        rows = [-(-n // mm) for n, mm in zip(cards, self.m)]
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(r, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for r in rows], optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=lr, pooling_mode=PoolingMode.NONE, device="cpu", bounds_check_mode=BoundsCheckMode.NONE)
        base, acc = [], 0
        for mm in self.m:
            base.append(acc if mm > 1 else -1)
            acc += mm if mm > 1 else 0
        self.register_buffer("r_base", torch.tensor(base))
        self.r = nn.Parameter(torch.rand(acc + 1, dim))  # the last row: ones, for full tables
        with torch.no_grad():
            self.r[-1] = 1
        self.register_buffer("mods", torch.tensor(self.m))
        self.dim, self.lr = dim, lr

    def forward(self, indices: List[torch.Tensor], offsets: List[torch.Tensor]) -> torch.Tensor:
        F = len(indices)
        B = offsets[0].numel()
        counts = [x.numel() for x in indices]
        values = torch.cat(indices)
        feat = torch.repeat_interleave(torch.arange(F), torch.tensor(counts), output_size=values.numel())
        mod = self.mods[feat]
        q = torch.div(values, mod, rounding_mode="floor")
        rid = torch.where(self.r_base[feat] >= 0, self.r_base[feat] + values - q * mod, self.r.shape[0] - 1)
        lengths = torch.cat([torch.diff(o, append=o.new_tensor([n])) for o, n in zip(offsets, counts)])
        tbe_off = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        rows = self.tbe(q, tbe_off)  # (N, d), SGD fused in its backward
        prod = rows * self.r[rid]
        out = torch.segment_reduce(prod, "sum", lengths=lengths, unsafe=True)  # (F * B, d)
        return out.view(F, B, self.dim).transpose(0, 1).reshape(B, F * self.dim)

    def step(self) -> None:
        with torch.no_grad():
            if self.r.grad is not None:
                self.r.grad[-1] = 0
                self.r -= self.lr * self.r.grad
                self.r.grad = None


def batches(cards: Sequence[int], B: int, L: int, count: int, gen: torch.Generator):
    out = []
    for _ in range(count):
        idx = [torch.randint(0, n, (B * L,), generator=gen) for n in cards]
        offs = [torch.arange(B) * L for _ in cards]
        out.append((idx, offs))
    return out


def run(args: argparse.Namespace) -> Dict[tuple, Dict[str, float]]:
    torch.set_num_threads(args.threads)
    cards = criteo_kaggle_scaled(args.scale)
    reason = get_collection_backend("fbgemm").unavailable_reason()
    if reason is not None:
        print(f"bench_split: skipped, fbgemm unavailable: {reason}")
        return {}
    lr = 0.01
    probe = torch.randn(args.batch, len(cards) * args.dim)
    gen = torch.Generator().manual_seed(0)
    print_table_header(f"bench_split: 26 Criteo tables / {args.scale}, QR mult before_pool on tables > "
                       f"{args.threshold} rows, d={args.dim}, batch {args.batch}, exact SGD, "
                       f"{torch.get_num_threads()} thread(s), CPU time, best of {args.rounds} interleaved rounds",
                       f"{'m':>4} {'L':>4} {'split/s':>10} {'per-index/s':>12} {'torch/s':>10} "
                       f"{'split/per-index':>16} {'split/torch':>12}")
    results: Dict[tuple, Dict[str, float]] = {}
    for m in args.ms:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            split = CompositionalEmbeddingBagCollection(specs(cards, args.dim, m, args.threshold), backend="fbgemm",
                                                        optimizer="exact_sgd", learning_rate=lr, seed=0)
            per_index = PerIndex(cards, args.dim, m, args.threshold, lr)
        ref = CompositionalEmbeddingBagCollection(specs(cards, args.dim, m, args.threshold), backend="torch",
                                                  sparse=True, seed=0)
        opt = torch.optim.SGD(ref.parameters(), lr=lr)

        def step_split(b):
            out = split([(i, o, False) for i, o in zip(*b)], concat=True)
            (out * probe).sum().backward()

        def step_per_index(b):
            (per_index(*b) * probe).sum().backward()
            per_index.step()

        def step_torch(b):
            out = ref([(i, o, False) for i, o in zip(*b)], concat=True)
            (out * probe).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        cases = {"split": step_split, "per-index": step_per_index, "torch": step_torch}
        for L in args.ls:
            data = batches(cards, args.batch, L, 2, gen)
            best = {k: float("inf") for k in cases}
            for fn in cases.values():
                fn(data[0])
            for _ in range(args.rounds):
                for name, fn in cases.items():
                    t0 = time.process_time()
                    for i in range(args.iters):
                        fn(data[i % len(data)])
                    best[name] = min(best[name], (time.process_time() - t0) / args.iters)
            sps = {k: args.batch / v for k, v in best.items()}
            results[(m, L)] = sps
            print(f"{m:>4} {L:>4} {sps['split']:>10,.0f} {sps['per-index']:>12,.0f} {sps['torch']:>10,.0f} "
                  f"{sps['split'] / sps['per-index']:>15.2f}x {sps['split'] / sps['torch']:>11.2f}x", flush=True)

    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threshold", type=int, default=200)
    parser.add_argument("--ms", type=int, nargs="+", default=[2, 4, 16, 64])
    parser.add_argument("--ls", type=int, nargs="+", default=[2, 5, 20, 50])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
