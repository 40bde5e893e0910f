"""What a running sweep prints: where it lives, one line per finished trial, and a summary table.

The lines come from the study's storage, not from the process that trained a trial, so the same
printer serves one in-process worker, N local worker processes (the parent polls the storage) and
workers on other machines sharing a PostgreSQL study. Example of a sweep's output::

    sweep 'tiny' -> study 'tiny': 6 trials (0 already done), 1 worker; storage sqlite:////abs/results/tiny.db
    [1/6] ETA 0:00:05  qr-mult-c4/s0  params 4,620 (3.1x)  val loss 0.5651  AUC 0.7849  0.8 s
    [1/6] FAILED hash-c4/s0: training collapsed: constant predictions; not retried
    ...
    series        seeds     params  compr.  val loss         val AUC          test loss        test AUC
    full              2     13,792    1.0x  0.5500 ± 0.0010  0.8000 ± 0.0010  ...

Example::

    >>> printer = ProgressPrinter(get_space("tiny"), "tiny", url, workers=2)   # doctest: +SKIP
    >>> printer.start(study); ...; printer.update(study); print(summary_table(study))  # doctest: +SKIP
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Set, TextIO, Tuple

from sweeps.space import SearchSpace
from sweeps.storage import redact_url
from sweeps.study import grid_status, trial_key

__all__ = ["ProgressPrinter", "start_line", "trial_label", "summary_table", "format_duration"]


def format_duration(seconds: float) -> str:
    """``83.2`` -> ``"0:01:23"``."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def start_line(space_name: str, study_name: str, total: int, done: int, workers: int, storage_url: str) -> str:
    """The first line of a sweep: what it runs and where the study lives (password redacted)."""
    return (f"sweep {space_name!r} -> study {study_name!r}: {total} trials ({done} already done), "
            f"{workers} worker{'s' if workers != 1 else ''}; storage {redact_url(storage_url)}")


def trial_label(trial: Any) -> str:
    """A trial's grid key (``qr-mult-c4/s0``), or for an open search its method, operation,
    collisions and threshold (``#7 qr mult c5 t200``)."""
    key = trial_key(trial)
    if key is not None:
        return key
    a = trial.user_attrs
    parts = [f"#{trial.number}", str(a.get("method") or trial.params.get("method", "?"))]
    if a.get("operation"):
        parts.append(str(a["operation"]))
    if a.get("num_collisions") is not None:
        parts.append(f"c{a['num_collisions']}")
    if a.get("threshold") is not None:
        parts.append(f"t{a['threshold']}")
    return " ".join(parts)


def _series(trial: Any) -> str:
    """The summary row of a trial: its grid point, or its label without number and seed."""
    if "point" in trial.params:
        return str(trial.params["point"])
    return trial_label(trial).split(" ", 1)[-1]


def _full_params(trials: List[Any]) -> Optional[float]:
    """Embedding parameters of the uncompressed model: a metric ``full_embedding_params`` when
    the objective reports one, else the mean of the study's ``method="full"`` trials."""
    for t in trials:
        value = (t.user_attrs.get("metrics") or {}).get("full_embedding_params")
        if value:
            return float(value)
    full = [float(t.user_attrs["metrics"]["embedding_params"]) for t in trials
            if t.user_attrs.get("method") == "full" and "metrics" in t.user_attrs]
    return sum(full) / len(full) if full else None


def _num(metrics: Mapping[str, Any], name: str) -> Optional[float]:
    value = metrics.get(name)
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class ProgressPrinter:
    """Prints a sweep's start line, then one line per trial that finished since the last
    :meth:`update` (read from the study's storage), to ``stream`` (default stdout).

    Args:
        space, study_name, storage_url, workers: what the start line reports.
        max_retry: the retry limit the failure lines refer to.
    """

    def __init__(self, space: SearchSpace, study_name: str, storage_url: str, workers: int = 1,
                 max_retry: int = 3, stream: Optional[TextIO] = None) -> None:
        self.space = space
        self.study_name = study_name
        self.storage_url = storage_url
        self.workers = workers
        self.max_retry = max_retry
        self.stream = stream
        self._seen: Set[int] = set()
        self._done_keys: Set[str] = set()
        self._done_open = 0
        self._finished_here = 0
        self._trial_times: List[float] = []
        self._first_finish: Optional[float] = None
        self._start = time.perf_counter()
        self._full: Optional[float] = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _done(self) -> int:
        return len(self._done_keys) if self.space.is_grid else self._done_open

    def start(self, study: Any) -> None:
        """Print the start line; trials finished before now are counted, not listed."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        for t in trials:
            self._seen.add(t.number)
            if t.state == TrialState.COMPLETE:
                self._count(t)
        self._full = _full_params([t for t in trials if t.state == TrialState.COMPLETE])
        self._start = time.perf_counter()
        self._print(start_line(self.space.name, self.study_name, self.space.size, self._done(), self.workers,
                               self.storage_url))

    def _count(self, trial: Any) -> None:
        key = trial_key(trial)
        if key is not None:
            self._done_keys.add(key)
        else:
            self._done_open += 1

    def update(self, study: Any) -> None:
        """Print a line for every trial that finished (COMPLETE or FAIL) since the last call."""
        from optuna.trial import TrialState

        try:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        except Exception:  # a busy database: the next poll prints these lines
            return
        new = sorted((t for t in trials if t.number not in self._seen),
                     key=lambda t: (t.datetime_complete or t.datetime_start or 0, t.number))
        if not new:
            return
        if self._full is None:
            self._full = _full_params([t for t in trials if t.state == TrialState.COMPLETE])
        status = grid_status(study, self.space) if self.space.is_grid else None
        for t in new:
            self._seen.add(t.number)
            if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
                continue
            if t.state == TrialState.COMPLETE:
                if trial_key(t) in self._done_keys:  # a duplicate (cannot happen with the runner)
                    continue
                self._count(t)
                self._finished_here += 1
                if self._first_finish is None:
                    self._first_finish = time.perf_counter()
                wall = _num(t.user_attrs.get("metrics") or {}, "trial_wall_time_s")
                if wall is not None:
                    self._trial_times.append(wall)
                self._print(self._complete_line(t))
            else:
                self._print(self._fail_line(t, status))

    def _prefix(self) -> str:
        total = self.space.size
        return f"[{self._done()}/{total}]"

    def _eta(self) -> str:
        """Remaining trials x the time per finished trial: measured between finishes once more
        trials than workers have finished (the time from the start would count the workers'
        start-up and data loading), before that the mean trial time / workers."""
        remaining = self.space.size - self._done()
        if remaining <= 0:
            return "ETA 0:00:00"
        if not self._finished_here:
            return "ETA ?"
        now = time.perf_counter()
        if self._first_finish is not None and self._finished_here > max(1, self.workers):
            per_trial = (now - self._first_finish) / (self._finished_here - 1)
        elif self._trial_times:
            per_trial = sum(self._trial_times) / len(self._trial_times) / max(1, self.workers)
        else:
            per_trial = (now - self._start) / self._finished_here
        return f"ETA {format_duration(per_trial * remaining)}"

    def _complete_line(self, t: Any) -> str:
        m = t.user_attrs.get("metrics") or {}
        parts = [self._prefix(), self._eta(), f" {trial_label(t)}"]
        params = _num(m, "embedding_params")
        if params is not None:
            ratio = f" ({self._full / params:.1f}x)" if self._full and params else ""
            parts.append(f" params {int(params):,}{ratio}")
        loss, auc = _num(m, "val_loss"), _num(m, "val_auc")
        parts.append(f" val loss {loss:.4f}" if loss is not None else " val loss -")
        parts.append(f" AUC {auc:.4f}" if auc is not None else " AUC -")
        wall = _num(m, "trial_wall_time_s")
        if wall is not None:
            parts.append(f" {wall:.1f} s")
        return " ".join(parts)

    def _fail_line(self, t: Any, status: Any) -> str:
        a = t.user_attrs
        label = trial_label(t)
        if a.get("collapsed"):
            why = f"training collapsed: {a.get('failure_reason', '?')}; not retried (a deterministic failure)"
        else:
            why = str(a.get("error") or "the worker died (no heartbeat)").splitlines()[0][:300]
            key = trial_key(t)
            if status is not None and key is not None:
                n = status.failed.get(key, 0)
                if status.complete.get(key):
                    why += "; retried"
                elif n > self.max_retry:
                    why += f"; gave up after {n} failures (--max-retry {self.max_retry})"
                else:
                    why += f"; retry {n} of {self.max_retry}"
        return f"{self._prefix()} FAILED {label}: {why}"


def _mean_std(values: List[float]) -> Tuple[float, Optional[float]]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def summary_table(study: Any) -> str:
    """One row per series (grid point, or method / operation / collisions / threshold of an open
    search) of the COMPLETE trials: seeds, embedding parameters, compression against the full
    tables, and validation / test loss and AUC as mean ± std over seeds."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
    if not trials:
        return "no COMPLETE trials"
    full = _full_params(trials)
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        groups.setdefault(_series(t), []).append(t.user_attrs["metrics"])
    metrics = (("val_loss", "val loss"), ("val_auc", "val AUC"), ("test_loss", "test loss"), ("test_auc", "test AUC"))
    width = max(len("series"), *(len(k) for k in groups))
    header = f"{'series':<{width}}  {'seeds':>5}  {'params':>11}  {'compr.':>7}" + "".join(
        f"  {title:<17}" for _, title in metrics)
    lines = [header.rstrip()]
    order = sorted(groups, key=lambda k: -(_num(groups[k][0], "embedding_params") or 0.0))
    for key in order:
        rows = groups[key]
        params = [p for p in (_num(r, "embedding_params") for r in rows) if p is not None]
        mean_params = sum(params) / len(params) if params else None
        compr = f"{full / mean_params:.1f}x" if full and mean_params else "-"
        text = f"{key:<{width}}  {len(rows):>5}  {'-' if mean_params is None else f'{int(round(mean_params)):,}':>11}  {compr:>7}"
        for name, _ in metrics:
            values = [v for v in (_num(r, name) for r in rows) if v is not None]
            if not values:
                cell = "-"
            else:
                mean, std = _mean_std(values)
                cell = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
            text += f"  {cell:<17}"
        lines.append(text.rstrip())
    return "\n".join(lines)
