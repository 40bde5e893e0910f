"""Criteo preprocessing throughput: the vectorised loader against a plain per-line Python parser.

Writes a synthetic file in the exact Criteo format (200,000 lines by default), preprocesses it with
``dlrm.data.criteo.preprocess_criteo`` and parses a slice of it with the obvious per-line loop
(split, int, int(x, 16), a dict per feature) in the same process, and prints lines/s of both
(wall clock and this process's CPU time, which is less sensitive to a shared machine) and their
ratio. Usage: ``python benchmarks/bench_criteo_preprocess.py [--rows N]``.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from dlrm.data.criteo import preprocess_criteo
from dlrm.data.synthetic import write_criteo_text


def naive_parse(path: Path, limit: int) -> int:
    dicts = [dict() for _ in range(26)]
    dense = np.empty((limit, 13), np.float32)
    sparse = np.empty((limit, 26), np.int64)
    labels = np.empty(limit, np.float32)
    n = 0
    with open(path) as f:
        for line in f:
            if n == limit:
                break
            p = line.rstrip("\n").split("\t")
            if len(p) != 40 or p[0] not in ("0", "1"):
                continue
            labels[n] = float(p[0])
            dense[n] = [math.log1p(max(int(x), 0)) if x else 0.0 for x in p[1:14]]
            sparse[n] = [d.setdefault(int(x, 16) if x else 0, len(d)) for d, x in zip(dicts, p[14:])]
            n += 1
    return n


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_criteo_text(Path(tmp) / "train.txt", args.rows, scale=100.0, seed=0)
        preprocess_criteo(path, Path(tmp) / "warm", progress=False)  # imports, page cache
        fast = [timed(lambda i=i: preprocess_criteo(path, Path(tmp) / f"c{i}", progress=False, force=True))
                for i in range(args.repeat)]
        naive = [timed(lambda: naive_parse(path, args.naive_rows)) for _ in range(args.repeat)]
    fw, fc = min(r[1] for r in fast), min(r[2] for r in fast)
    nw, nc = min(r[1] for r in naive), min(r[2] for r in naive)
    rows = [("per-line python (baseline)", args.naive_rows / nw, args.naive_rows / nc),
            ("preprocess_criteo (2 passes, writes memmaps)", args.rows / fw, args.rows / fc)]
    print(f"{'method':<46} {'lines/s wall':>14} {'lines/s cpu':>14}")
    for name, w, c in rows:
        print(f"{name:<46} {w:>14,.0f} {c:>14,.0f}")
    print(f"ratio (preprocess / baseline): wall {rows[1][1] / rows[0][1]:.2f}x, cpu {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()
