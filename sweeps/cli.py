"""``compemb sweep``: run, export and list Optuna sweeps.

Sub-commands::

    compemb sweep run --space paper-collisions [--study NAME] [--storage URL] [--workers N]
                      [--seeds 0,1,2] [--set max_steps=300 ...] [--objective module:function]
    compemb sweep export --study NAME [--storage URL] --out DIR
    compemb sweep list [--storage URL]

The storage defaults to ``sqlite:////<abs>/results/<study>.db``; ``--storage postgresql://…``
shares one study between workers on many machines (run the same ``compemb sweep run`` on each).
Re-running a command resumes its study.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from sweeps.runner import DEFAULT_OBJECTIVE, default_storage_url, run_sweep, run_worker
from sweeps.space import get_space, list_spaces

__all__ = ["main", "parse_set"]


def parse_set(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["max_steps=300", "bottom_mlp=[32,16]", "optimizer=adam"]`` -> a dict (values as JSON,
    else strings)."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--set has an empty key in {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _seeds(text: Optional[str]):
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated ints, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compemb sweep", description="Optuna sweeps of parameters against accuracy")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run or resume a sweep")
    r.add_argument("--space", required=True, help="search space (see `compemb sweep list`)")
    r.add_argument("--study", default=None, help="study name (default: the space's name)")
    r.add_argument("--storage", default=None, help="database URL (default: sqlite under --results-dir)")
    r.add_argument("--results-dir", default="results")
    r.add_argument("--workers", type=int, default=1, help="local worker processes")
    r.add_argument("--objective", default=DEFAULT_OBJECTIVE, help="module:function, config dict -> metrics dict")
    r.add_argument("--seeds", default=None, help="comma-separated seeds (replaces the space's)")
    r.add_argument("--n-trials", type=int, default=None, help="open search: trials to complete")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config field for every trial (value parsed as JSON), e.g. --set max_steps=300")
    r.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval in seconds")
    r.add_argument("--grace", type=int, default=None, help="seconds without heartbeat before a trial is failed")
    r.add_argument("--max-retry", type=int, default=3, help="retries of a dead worker's trial")
    r.add_argument("--worker", action="store_true", help="run as one worker (what --workers starts)")
    r.add_argument("--progress", action="store_true", help="Optuna's progress logging")

    e = sub.add_parser("export", help="write all trials to CSV and Parquet")
    e.add_argument("--study", required=True)
    e.add_argument("--storage", default=None)
    e.add_argument("--results-dir", default="results")
    e.add_argument("--out", required=True, help="output folder")

    ls = sub.add_parser("list", help="list search spaces, or the studies in a storage")
    ls.add_argument("--storage", default=None)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "export":
            return _export(args)
        return _list(args)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"compemb sweep: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    overrides = parse_set(args.set)
    seeds = _seeds(args.seeds)
    if args.worker:
        space = get_space(args.space, seeds=seeds, n_trials=args.n_trials)
        study = args.study or space.name
        storage = args.storage or default_storage_url(study, args.results_dir)
        rep = run_worker(space, storage, study, args.objective, overrides, args.heartbeat, args.grace,
                         args.max_retry, show_progress=args.progress)
        print(f"worker: {rep.summary()}", flush=True)
        return 0
    rep = run_sweep(args.space, storage=args.storage, study_name=args.study, objective=args.objective,
                    workers=args.workers, overrides=overrides, seeds=seeds, n_trials=args.n_trials,
                    results_dir=args.results_dir, heartbeat_interval=args.heartbeat, grace_period=args.grace,
                    max_retry=args.max_retry, show_progress=args.progress)
    print(rep.summary())
    print(f"storage: {rep.storage}")
    return 0 if rep.complete >= rep.expected else 1


def _export(args) -> int:
    from sweeps.results import export_study

    storage = args.storage or default_storage_url(args.study, args.results_dir)
    paths = export_study(storage, args.study, args.out)
    print(f"wrote {paths['csv']} and {paths['parquet']}")
    return 0


def _list(args) -> int:
    if args.storage is None:
        print(f"{'space':<18} {'trials':>6}  description")
        for name, size, text in list_spaces():
            print(f"{name:<18} {size:>6}  {text}")
        return 0
    import optuna

    from sweeps.runner import make_storage

    storage = make_storage(args.storage, heartbeat_interval=None)
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        print(f"{s.study_name:<24} {s.n_trials:>6} trials  space={s.user_attrs.get('space', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
