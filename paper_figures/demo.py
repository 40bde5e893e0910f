"""``compemb demo`` (``make demo``): the main job, a small sweep and then every figure.

Fetches MovieLens-100k (real ratings, from the recbole wheel, into the cache), runs the small
``demo`` grid (full table, hashing, QR concat / add / mult at 2, 4 and 8 collisions, QR mult at
thresholds 1, 20, 2000, path-based composition with hidden sizes 16 and 64; two seeds, one epoch at
batch 256) into the SQLite study ``results/demo.db`` with two local workers, printing a line per
finished trial and a summary table, then draws all four figures into ``results/figures/demo/``.
Ctrl-C stops it (exit status 130); re-running resumes: completed trials are not trained again.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

__all__ = ["main", "DEMO_OVERRIDES"]

#: training settings of the demo's trials (one epoch of MovieLens-100k's 80,000 training ratings)
DEMO_OVERRIDES: Dict[str, Any] = {"dataset": "movielens-100k", "batch_size": 256, "epochs": 1}


def main(argv: Optional[List[str]] = None) -> int:
    """``compemb demo [--workers N] [--seeds 0,1] [--set KEY=VALUE ...]``; 0 when every trial and figure is done."""
    p = argparse.ArgumentParser(prog="compemb demo", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--study", default="demo")
    p.add_argument("--storage", default=None, help="default: sqlite <results-dir>/<study>.db")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seeds", default=None, help="comma-separated (default 0,1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training field, e.g. --set epochs=2")
    p.add_argument("--objective", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))

    from paper_figures._common import figure_dir
    from paper_figures.cli import make_all
    from sweeps.cli import error_text, parse_set
    from sweeps.runner import DEFAULT_OBJECTIVE, SweepInterrupted, default_storage_url, load_study, run_sweep
    from sweeps.space import parse_seeds

    start = time.perf_counter()
    overrides = dict(DEMO_OVERRIDES)
    try:
        overrides.update(parse_set(args.set))
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        print(f"compemb demo: error: {error_text(exc)}", file=sys.stderr)
        return 2
    if overrides.get("dataset") == "movielens-100k" and args.objective is None:
        from dlrm.data.movielens import fetch_movielens_100k

        print("fetching MovieLens-100k (once, into the cache) ...", flush=True)
        where = fetch_movielens_100k()
        print(f"  data: {where}", flush=True)
    try:
        storage = args.storage or default_storage_url(args.study, args.results_dir)
        rep = run_sweep("demo", storage=storage, study_name=args.study, objective=args.objective or DEFAULT_OBJECTIVE,
                        workers=args.workers, overrides=overrides, seeds=seeds, results_dir=args.results_dir,
                        show_progress=True)
    except (KeyError, ValueError) as exc:  # e.g. resuming the study with other --set / --seeds
        print(f"compemb demo: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    sweep_s = time.perf_counter() - start
    print(rep.summary(), flush=True)
    for note in rep.notes:
        print(note, flush=True)
    out_dir = figure_dir(args.results_dir, args.study)
    figures = make_all(load_study(storage, args.study), out_dir)
    total = time.perf_counter() - start
    print(f"\nfigures in {os.path.abspath(out_dir)}:")
    ok = True
    for name, paths in figures.items():
        if isinstance(paths, dict):
            print(f"  {name}: " + ", ".join(os.path.basename(str(x)) for x in paths.values()))
        else:
            ok = ok and str(paths).startswith("skipped")
            print(f"  {name}: {paths}")
    print(f"\ndemo wall time: {total:.1f} s (sweep {sweep_s:.1f} s; {rep.trials_run} trials trained now, "
          f"{rep.complete}/{rep.expected} complete)")
    return 0 if ok and rep.complete >= rep.expected else 1


if __name__ == "__main__":
    sys.exit(main())
