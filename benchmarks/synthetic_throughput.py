"""Training throughput of the full and the QR DLRM on Criteo-shaped synthetic data.

Both models train the same steps (one epoch of the training split, at most ``--steps``) on the
same batches (the paper's architecture:
bottom MLP 13-512-256-64-16, top MLP 512-256-1, d = 16, batch 128, Adagrad with sparse
gradients); the Kaggle cardinalities are divided by ``--scale`` so the full model fits this
machine. Prints samples/s of each, their parameter counts and the ratios QR / full, and writes
``results/synthetic_throughput.csv``.

    python benchmarks/synthetic_throughput.py --scale 10 --steps 200
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from dlrm.data import load_dataset  # noqa: E402
from dlrm.train import TrainConfig, train  # noqa: E402
from _common import write_csv  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=10.0, help="divide the Kaggle cardinalities by this")
    p.add_argument("--rows", type=int, default=40_000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--bottom", default="512-256-64-16", help="bottom MLP after the 13 dense inputs")
    p.add_argument("--top", default="512-256-1")
    p.add_argument("--collisions", type=int, default=4)
    p.add_argument("--threshold", type=int, default=200)
    p.add_argument("--optimizer", default="adagrad")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join("results", "synthetic_throughput.csv"))
    args = p.parse_args(argv)

    t = time.perf_counter()
    ds = load_dataset("synthetic", rows=args.rows, scale=args.scale, seed=0)
    print(f"synthetic Criteo-shaped data: {args.rows} rows, scale 1/{args.scale:g}, "
          f"{sum(ds.cardinalities):,} categories in 26 tables (generated in {time.perf_counter() - t:.1f} s); "
          f"torch threads {torch.get_num_threads()}", flush=True)
    bottom = tuple(int(x) for x in args.bottom.split("-"))
    top = tuple(int(x) for x in args.top.split("-"))
    rows = []
    for label, method, options in (
        ("full", "full", {}),
        (f"qr-mult-{args.collisions}", "qr", {"operation": "mult", "num_collisions": args.collisions}),
    ):
        config = TrainConfig(dataset="synthetic", embedding_dim=args.dim, bottom_mlp=bottom, top_mlp=top,
                             method=method, threshold=args.threshold, embedding_options=options,
                             optimizer=args.optimizer, learning_rate=0.01, batch_size=args.batch_size,
                             epochs=1, max_steps=args.steps, device=args.device, seed=0)
        r = train(config, dataset=ds)
        rows.append({"model": label, "samples_per_s": r["samples_per_s"], "steps": r["steps"],
                     "embedding_params": r["embedding_params"], "mlp_params": r["mlp_params"],
                     "val_auc": r["val_auc"], "scale": args.scale, "batch_size": args.batch_size,
                     "threads": torch.get_num_threads(), "device": args.device})
        print(f"  {label:<10} {r['samples_per_s']:>10.0f} samples/s   embedding params "
              f"{r['embedding_params']:>12,}   MLP params {r['mlp_params']:>9,}", flush=True)
    full, qr = rows
    print(f"QR / full: samples/s x{qr['samples_per_s'] / full['samples_per_s']:.2f}, "
          f"embedding parameters x{qr['embedding_params'] / full['embedding_params']:.3f} "
          f"({full['embedding_params'] / qr['embedding_params']:.1f}x fewer)")
    write_csv(args.out, rows)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
