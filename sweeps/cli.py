"""``compemb sweep``: run, export and list Optuna sweeps.

Sub-commands::

    compemb sweep run --space paper-collisions [--study NAME] [--storage URL] [--workers N]
                      [--seeds 0,1,2] [--set max_steps=300 ...] [--objective module:function]
    compemb sweep export --study NAME [--storage URL] --out DIR
    compemb sweep list [--storage URL]

The storage defaults to ``sqlite:////<abs>/results/<study>.db``; ``--storage postgresql://…``
shares one study between workers on many machines (run the same ``compemb sweep run`` on each).
A run prints its storage URL, one line per finished trial and a summary table (``--no-progress``:
only the summary line). Ctrl-C stops it (exit status 130); re-running a command resumes its study.
Errors are one line ``compemb sweep: error: ...`` with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from dlrm.argtypes import int_at_least
from sweeps.runner import SweepInterrupted, run_sweep
from sweeps.space import get_space, list_spaces, parse_seeds
from sweeps.storage import default_storage_url, make_storage
from sweeps.worker import DEFAULT_OBJECTIVE, run_worker

__all__ = ["main", "parse_set", "error_text"]


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compemb sweep", description="Optuna sweeps of parameters against accuracy")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run or resume a sweep")
    r.add_argument("--space", required=True, help="search space (see `compemb sweep list`)")
    r.add_argument("--study", default=None, help="study name (default: the space's name)")
    r.add_argument("--storage", default=None, help="database URL (default: sqlite under --results-dir)")
    r.add_argument("--results-dir", default="results")
    r.add_argument("--workers", type=int_at_least(1), default=1, help="local worker processes")
    r.add_argument("--objective", default=DEFAULT_OBJECTIVE, help="module:function, config dict -> metrics dict")
    r.add_argument("--seeds", default=None, help="comma-separated seeds (replaces the space's)")
    r.add_argument("--n-trials", type=int, default=None, help="open search: trials to complete")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config field for every trial (value parsed as JSON), e.g. --set max_steps=300")
    r.add_argument("--heartbeat", type=int_at_least(1), default=10, help="heartbeat interval in seconds")
    r.add_argument("--grace", type=int_at_least(1), default=None, help="seconds without heartbeat before a trial is failed")
    r.add_argument("--max-retry", type=int, default=3,
                   help="retries of a failed trial (its worker died, or it raised); a collapsed training run is "
                        "not retried, a trial stopped by Ctrl-C does not count")
    r.add_argument("--worker", action="store_true", help="run as one worker (what --workers starts)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="one line per finished trial and a summary table (default: on, off for --worker)")

    e = sub.add_parser("export", help="write all trials to CSV and Parquet")
    e.add_argument("--study", required=True)
    e.add_argument("--storage", default=None)
    e.add_argument("--results-dir", default="results")
    e.add_argument("--out", required=True, help="output folder")

    ls = sub.add_parser("list", help="list search spaces, or the studies in a storage")
    ls.add_argument("--storage", default=None)
    return p


def error_text(exc: BaseException) -> str:
    """One line for an error message (a ``KeyError``'s text without the quotes ``str`` adds)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split())


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "export":
            return _export(args)
        return _list(args)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"compemb sweep: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if getattr(args, "worker", False):  # the parent reports
            return 130
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    overrides = parse_set(args.set)
    seeds = parse_seeds(args.seeds)
    if args.worker:
        import signal

        # a worker told to stop ends its trial as Ctrl-C would (FAIL, marked interrupted)
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        space = get_space(args.space, seeds=seeds, n_trials=args.n_trials)
        study = args.study or space.name
        storage = args.storage or default_storage_url(study, args.results_dir)
        printer = None
        if args.progress:
            from sweeps.progress import ProgressPrinter

            printer = ProgressPrinter(space, study, storage, 1, args.max_retry)
        rep = run_worker(space, storage, study, args.objective, overrides, args.heartbeat, args.grace,
                         args.max_retry, progress=printer)
        if args.progress:
            print(f"worker: {rep.summary()}", flush=True)
        return 0
    rep = run_sweep(args.space, storage=args.storage, study_name=args.study, objective=args.objective,
                    workers=args.workers, overrides=overrides, seeds=seeds, n_trials=args.n_trials,
                    results_dir=args.results_dir, heartbeat_interval=args.heartbeat, grace_period=args.grace,
                    max_retry=args.max_retry, show_progress=args.progress is not False)
    print(rep.summary())
    if args.progress is False:
        print(f"storage: {rep.storage}")
    for note in rep.notes:
        print(note)
    return 0 if rep.complete >= rep.expected else 1


def _export(args: argparse.Namespace) -> int:
    from sweeps.results import export_study

    storage = args.storage or default_storage_url(args.study, args.results_dir, create=False)
    paths = export_study(storage, args.study, args.out)
    print(f"wrote {paths['csv']} and {paths['parquet']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.storage is None:
        print(f"{'space':<18} {'trials':>6}  description")
        for name, size, text in list_spaces():
            print(f"{name:<18} {size:>6}  {text}")
        return 0
    import optuna

    storage = make_storage(args.storage, heartbeat_interval=None, must_exist=True)
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        print(f"{s.study_name:<24} {s.n_trials:>6} trials  space={s.user_attrs.get('space', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
