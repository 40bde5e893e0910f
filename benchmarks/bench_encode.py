"""Benchmark ``PartitionFamily.encode`` against bare torch expressions on the same indices.

For each family (quotient-remainder, generalized QR with k = 3, Chinese remainder with k = 3)
it times ``family.encode(idx)`` -- validation included -- and prints two ratios:

* against the bare quotient-remainder expression ``idx // m, idx % m`` (the issue's baseline);
* against the bare expression that computes the same family's codes without validation
  (``idx % m1, idx % m2, idx % m3`` for CRT, repeated ``//`` and ``%`` for generalized QR).

The goal is a ratio within 1.5x of the bare expression. Times are medians of ``--repeats`` runs,
taken round-robin (encode, baseline, bare same, encode, ...) so that load on a shared machine
hits all three alike.

Usage::

    python benchmarks/bench_encode.py [--size 10000000] [--n 10131227] [--repeats 7] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from compemb.partitions import chinese_remainder, generalized_qr, quotient_remainder
from _common import print_table_header


def _time_once(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _interleaved(fns, repeats: int, device: str):
    """Median time of each function, measured round-robin so load changes hit all alike."""
    for fn in fns:  # warm-up
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(_time_once(fn, device))
    return [statistics.median(t) for t in times]


def _bare_digits(idx, radices):
    out, cur = [], idx
    for m in radices[:-1]:
        out.append(cur % m)
        cur = cur // m
    out.append(cur)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10**7, help="number of indices (default 1e7)")
    parser.add_argument("--n", type=int, default=10131227, help="categories (default: largest Criteo Kaggle table)")
    parser.add_argument("--collisions", type=int, default=4, help="QR collisions m (default 4)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, args.n, (args.size,), generator=gen, dtype=torch.int64).to(args.device)
    m = args.collisions

    qr = quotient_remainder(args.n, m)
    gqr = generalized_qr(args.n, k=3)
    crt = chinese_remainder(args.n, k=3)
    gqr_radices = [gqr[i].radices[i] for i in range(3)]
    crt_moduli = [p.m for p in crt]

    # correctness first: the fast paths equal the bare expressions
    assert torch.equal(qr.encode(idx), torch.stack([idx % m, idx // m]))
    assert torch.equal(gqr.encode(idx), torch.stack(_bare_digits(idx, gqr_radices)))
    assert torch.equal(crt.encode(idx), torch.stack([idx % mi for mi in crt_moduli]))

    baseline_fn = lambda: (idx // m, idx % m)  # noqa: E731
    rows = [
        ("QR m=%d %s" % (m, tuple(qr.table_sizes)), qr, baseline_fn),
        ("GQR k=3 %s" % (tuple(gqr.table_sizes),), gqr, lambda: _bare_digits(idx, gqr_radices)),
        ("CRT k=3 %s" % (tuple(crt_moduli),), crt, lambda: [idx % mi for mi in crt_moduli]),
    ]
    print_table_header(f"encode of {args.size:,} int64 indices, n = {args.n:,}, device {args.device}, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} "
                       f"interleaved runs",
                       f"{'family':<34} {'encode ms':>10} {'idx//m,idx%m ms':>16} {'bare same ms':>13} "
                       f"{'ratio vs idx//m,idx%m':>22} {'ratio vs bare same':>19}")
    for name, family, bare in rows:
        t_enc, t_base, t_bare = _interleaved([lambda: family.encode(idx), baseline_fn, bare],
                                             args.repeats, args.device)
        print(f"{name:<34} {t_enc * 1e3:>10.1f} {t_base * 1e3:>16.1f} {t_bare * 1e3:>13.1f} "
              f"{t_enc / t_base:>22.2f} {t_enc / t_bare:>19.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
