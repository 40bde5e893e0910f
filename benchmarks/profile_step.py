"""Where the CPU time of one training step goes: the FBGEMM collection over full and over QR tables.

The step of ``bench_embedding.py`` (26 Criteo Kaggle tables / 4, d = 16, batch 2048, exact SGD
fused into backward, one thread) is split into its phases by timing each one in place (CPU time,
best of interleaved rounds, per step):

- ``pack``: the per-feature ``(indices, offsets)`` lists concatenated into one TBE input;
- ``check+encode``: offsets and index ranges checked, quotient/remainder codes (one native pass);
- ``TBE fwd`` / ``TBE bwd+SGD``: FBGEMM's CPU forward and backward operators (the latter applies
  the exact SGD update to the large tables);
- ``compose fwd`` / ``compose bwd``: the remainder composition and its gradient (one native pass
  each); ``small SGD``: the update of the small (remainder) tables;
- ``loss``: the probe loss and its backward (the same for every case);
- ``other``: the rest (Python, autograd), from the step's total.

Cases: ``full`` (full tables), ``qr`` (QR 4 collisions, ``mult``, tables over 200 rows),
``q-only`` (full tables with the quotient tables' sizes: the TBE cost QR could have with free
remainders) and ``qr-torch`` (QR without the native kernels: the PyTorch fallback).

    python benchmarks/profile_step.py [--bags one-hot 20-hot]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings
from typing import Callable, Dict, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compemb.collection import CompositionalEmbeddingBagCollection  # noqa: E402
from _common import criteo_kaggle_scaled, markdown_rule  # noqa: E402

PHASES = ["pack", "check+encode", "TBE fwd", "compose fwd", "loss", "compose bwd", "small SGD", "TBE bwd+SGD",
          "other", "total"]
TIMES: Dict[str, float] = collections.defaultdict(float)


def timed(label: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label] += time.process_time() - t0
    return wrapper


def instrument() -> None:
    """Wrap the phases of the FBGEMM collection (and FBGEMM's operators) with timers."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    from compemb.kernels import _collection_fbgemm as cf
    from compemb.kernels import _native

    cf.FbgemmCollection._pack = timed("pack", cf.FbgemmCollection._pack)
    cf.FbgemmCollection._encode = timed("check+encode", cf.FbgemmCollection._encode)
    cf.FbgemmCollection.apply_small = timed("small SGD", cf.FbgemmCollection.apply_small)
    cf.compose_forward = timed("compose fwd", cf.compose_forward)
    cf.compose_backward = timed("compose bwd", cf.compose_backward)
    _native.NativeKernels.compose_forward = timed("compose fwd", _native.NativeKernels.compose_forward)
    _native.NativeKernels.compose_backward = timed("compose bwd", _native.NativeKernels.compose_backward)
    ops = torch.ops.fbgemm
    ops.split_embedding_codegen_forward_cpu = timed("TBE fwd", ops.split_embedding_codegen_forward_cpu)
    for name in ("split_embedding_backward_codegen_sgd_cpu", "split_embedding_backward_codegen_rowwise_adagrad_cpu"):
        setattr(ops, name, timed("TBE bwd+SGD", getattr(ops, name)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bags", nargs="+", default=["one-hot", "20-hot"], choices=["one-hot", "20-hot"])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iters", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cards = criteo_kaggle_scaled(4)
    qcards = [-(-n // 4) if n > 200 else n for n in cards]
    d, B = 16, args.batch

    def coll(sizes, qr):
        specs = [(f"C{i}", n, d, 4 if qr and n > 200 else None, "mult", "sum", "after_pool") for i, n in enumerate(sizes)]
        return CompositionalEmbeddingBagCollection(specs, backend="fbgemm", optimizer="exact_sgd", seed=0)

    cases = {"full": (coll(cards, False), cards), "qr": (coll(cards, True), cards),
             "q-only": (coll(qcards, False), qcards), "qr-torch": (coll(cards, True), cards)}
    cases["qr-torch"][0]._backend.use_native = False
    instrument()
    probe = torch.randn(B, len(cards) * d)
    gen = torch.Generator().manual_seed(0)
    print(f"profile_step: 26 Criteo tables / 4, d={d}, batch {B}, exact SGD, 1 thread, CPU time per step (ms), "
          f"best of {args.rounds} interleaved rounds of {args.iters} steps")
    for bags in args.bags:
        L = 1 if bags == "one-hot" else 20
        data = {k: [[(torch.randint(0, n, (B * L,), generator=gen), torch.arange(B) * L, False) for n in sizes]
                    for _ in range(2)] for k, (_, sizes) in cases.items()}
        best: Dict[str, Dict[str, float]] = {k: {} for k in cases}

        def step(c, batch):
            t0 = time.process_time()
            out = c(batch, concat=True)
            t1 = time.process_time()
            loss = (out * probe).sum()
            TIMES["loss"] += time.process_time() - t1
            t2 = time.process_time()
            loss.backward()  # (the loss's own backward is a multiplication: counted in "other")
            TIMES["total"] += t2 - t0 + time.process_time() - t2

        for name, (c, _) in cases.items():
            step(c, data[name][0])
        for _ in range(args.rounds):
            for name, (c, _) in cases.items():
                TIMES.clear()
                for i in range(args.iters):
                    step(c, data[name][i % 2])
                row = {k: v / args.iters for k, v in TIMES.items()}
                row["other"] = row["total"] - sum(v for k, v in row.items() if k not in ("total", "other"))
                if row["total"] < best[name].get("total", float("inf")):
                    best[name] = row  # the least disturbed round, whole
        header = f"| {bags:<8} | " + " | ".join(f"{p:>11}" for p in PHASES) + " |"
        print(header)
        print(markdown_rule(header))
        for name, row in best.items():
            print(f"| {name:<8} | " + " | ".join(f"{row.get(p, 0.0) * 1e3:11.3f}" for p in PHASES) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
