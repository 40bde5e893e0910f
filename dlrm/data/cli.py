"""``compemb data ...``: fetch MovieLens-100k, preprocess Criteo, write synthetic data.

    compemb data fetch movielens-100k [--cache-dir DIR]
    compemb data prepare criteo --raw-data-file PATH [--data-set kaggle|terabyte] [--max-ind-range N]
                                [--frequency-threshold T] [--workers W] [--merge-workers M]
                                [--piece-mb MB] [--days D] [--cache-dir DIR] [--strict]
                                [--no-progress] [--force] [--estimate-only]
    compemb data synthetic --out PATH --rows N --scale F --seed S [--alpha A] [--criteo-text]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..argtypes import int_at_least, number


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compemb data", description="fetch or prepare data sets")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="download a data set into the user cache")
    f.add_argument("dataset", choices=["movielens-100k"])
    f.add_argument("--cache-dir", default=None, help="default: $COMPEMB_CACHE/movielens-100k or ~/.cache/compemb/movielens-100k")
    f.add_argument("--force", action="store_true", help="download again")

    c = sub.add_parser("prepare", help="preprocess Criteo text into memory-mapped arrays")
    c.add_argument("dataset", choices=["criteo"])
    c.add_argument("--raw-data-file", required=True, help="Kaggle: train.txt; Terabyte: the prefix of day_0 ... (e.g. /data/day)")
    c.add_argument("--data-set", choices=["kaggle", "terabyte"], default="kaggle")
    c.add_argument("--max-ind-range", type=int, default=-1, help="reduce hex values modulo N first (-1: no)")
    c.add_argument("--frequency-threshold", type=int, default=0,
                   help="values seen fewer than T times share id 0 (TorchRec's sparse_to_contiguous; 0: keep all)")
    c.add_argument("--workers", type=int_at_least(1), default=None, help="worker processes (default: the usable CPUs)")
    c.add_argument("--merge-workers", type=int_at_least(1), default=None,
                   help="fields merged at once (default: --workers); each holds one field's distinct values")
    c.add_argument("--piece-mb", type=number(0, inclusive=False, what="a number of MB"), default=64.0,
                   help="MB of text per unit of work and of resumption")
    c.add_argument("--days", type=int, default=None, help="pseudo-days (Kaggle, 7) or day files (Terabyte, 24)")
    c.add_argument("--cache-dir", default=None)
    c.add_argument("--strict", action="store_true", help="fail at the first malformed line")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--force", action="store_true", help="rebuild from scratch even if the cache is valid or resumable")
    c.add_argument("--estimate-only", action="store_true", help="print the memory and disk estimate and stop")

    s = sub.add_parser("synthetic", help="write Criteo-shaped synthetic data")
    s.add_argument("--out", required=True, help="a cache directory, or with --criteo-text a text file")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--scale", type=float, default=100.0, help="divide the Kaggle cardinalities by this")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--alpha", type=float, default=1.1, help="power-law exponent of the category frequencies")
    s.add_argument("--criteo-text", action="store_true", help="write Criteo text (for the Criteo loader) instead of a cache")
    s.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "fetch":
        from .movielens import FILES, fetch_movielens_100k

        t = time.perf_counter()
        try:
            directory = fetch_movielens_100k(args.cache_dir, force=args.force)
        except RuntimeError as e:
            print(f"compemb data fetch: {e}", file=sys.stderr)
            return 1
        print(f"movielens-100k: {directory} ({time.perf_counter() - t:.1f} s)")
        for name in FILES:
            print(f"  {directory / name}")
        return 0
    if args.command == "prepare":
        from .batching import CachedDataset
        from .criteo import estimate_resources, preprocess_criteo, usable_cpus

        t = time.perf_counter()
        options = dict(dataset=args.data_set, days=args.days, max_ind_range=args.max_ind_range,
                       frequency_threshold=args.frequency_threshold)
        try:
            piece_bytes = int(args.piece_mb * (1 << 20))
            if args.estimate_only:
                print(estimate_resources(args.raw_data_file, workers=usable_cpus() if args.workers is None else args.workers,
                                         merge_workers=args.merge_workers, piece_bytes=piece_bytes, **options))
                return 0
            cache = preprocess_criteo(args.raw_data_file, args.cache_dir, strict=args.strict, progress=not args.no_progress,
                                      workers=args.workers, merge_workers=args.merge_workers, piece_bytes=piece_bytes,
                                      force=args.force, log=lambda line: print(line, flush=True),
                                      require_splits=args.days is not None, **options)
        except (ValueError, FileNotFoundError) as e:
            print(f"compemb data prepare: {e}", file=sys.stderr)
            return 1
        ds = CachedDataset.open(cache)
        meta = ds.info
        print(f"criteo-{args.data_set}: {cache} ({time.perf_counter() - t:.1f} s)")
        print(f"  lines {meta['num_lines']}, rows {meta['num_rows']}, malformed {meta['num_malformed']}")
        for reason, rep in meta["malformed"].items():
            lines = ", ".join(f"{e['file']}:{e['line']}" for e in rep["first"][:10])
            print(f"    {reason}: {rep['count']} (first: {lines})")
        print("  splits " + ", ".join(f"{k}={len(ds.split(k))}" for k in ds.split_names))
        print(f"  cardinalities {json.dumps(ds.cardinalities)}")
        return 0
    if args.command == "synthetic":
        from .synthetic import write_criteo_text, write_synthetic_cache

        target = Path(args.out).expanduser()
        if args.criteo_text and target.is_dir():
            print(f"compemb data synthetic: error: --out {args.out} is a directory; with --criteo-text it names "
                  "the text file to write", file=sys.stderr)
            return 2
        if not args.criteo_text and target.exists() and not target.is_dir():
            print(f"compemb data synthetic: error: --out {args.out} is an existing file; it names the cache "
                  "directory to write (or add --criteo-text to write Criteo text)", file=sys.stderr)
            return 2
        t = time.perf_counter()
        try:
            if args.criteo_text:
                out = write_criteo_text(args.out, args.rows, scale=args.scale, seed=args.seed, alpha=args.alpha,
                                        progress=not args.no_progress)
            else:
                out = write_synthetic_cache(args.out, args.rows, scale=args.scale, seed=args.seed, alpha=args.alpha,
                                            progress=not args.no_progress)
        except ValueError as e:
            print(f"compemb data synthetic: {e}", file=sys.stderr)
            return 1
        kind = "Criteo text" if args.criteo_text else "cache (load_dataset('synthetic', path=...))"
        print(f"synthetic: {args.rows} rows, scale {args.scale}, seed {args.seed} -> {out} [{kind}] "
              f"({time.perf_counter() - t:.1f} s)")
        return 0
    return 2  # unreachable: argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
