"""Run (or resume) a sweep: one Optuna study trained by local worker processes.

:func:`run_sweep` composes :mod:`sweeps.storage` (where the study lives), :mod:`sweeps.study`
(its definition and grid bookkeeping) and :mod:`sweeps.worker` (the trial loop); their public
names are importable from here too. Re-running the same command resumes: completed grid points are
never trained again.

Example::

    >>> from sweeps.runner import run_sweep
    >>> report = run_sweep("tiny", storage=None, study_name="t", objective="sweeps._testing:synthetic_objective",
    ...                    results_dir=tmp_path)                                    # doctest: +SKIP
    >>> report.complete, report.expected                                             # doctest: +SKIP
    (6, 6)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO

from sweeps.space import DIRECTIONS as DIRECTIONS
from sweeps.space import OBJECTIVE_NAMES as OBJECTIVE_NAMES
from sweeps.space import SearchSpace as SearchSpace
from sweeps.space import get_space
from sweeps.space import grid_key as grid_key
from sweeps.storage import default_storage_url, make_storage, quiet_optuna, redact_url
from sweeps.study import (
    REQUIRED_METRICS,
    GridStatus,
    create_study,
    end_attrs,
    grid_status,
    load_study,
    objective_values,
    owner_of,
    project_version,
    start_attrs,
    trial_key,
)
from sweeps.worker import (
    DEFAULT_OBJECTIVE,
    Objective,
    SweepReport,
    check_trial_configs,
    resolve_objective,
    run_worker,
    study_report,
    worker_argv,
)

__all__ = [
    "DEFAULT_OBJECTIVE",
    "REQUIRED_METRICS",
    "Objective",
    "SweepReport",
    "GridStatus",
    "default_storage_url",
    "make_storage",
    "redact_url",
    "quiet_optuna",
    "create_study",
    "load_study",
    "resolve_objective",
    "grid_status",
    "trial_key",
    "owner_of",
    "project_version",
    "start_attrs",
    "end_attrs",
    "objective_values",
    "study_report",
    "run_worker",
    "worker_argv",
    "run_sweep",
    "SweepInterrupted",
    "check_trial_configs",
]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep: ``done`` of ``total`` trials are complete; re-running resumes."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"interrupted: {done} of {total} done; re-run the same command to resume")
        self.done = done
        self.total = total

    def __str__(self) -> str:
        return str(self.args[0])


def _exit_text(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def run_sweep(space_name: str, storage: Optional[str] = None, study_name: Optional[str] = None,
              objective: str = DEFAULT_OBJECTIVE, workers: int = 1, overrides: Optional[Mapping[str, Any]] = None,
              seeds: Optional[Sequence[int]] = None, n_trials: Optional[int] = None,
              results_dir: os.PathLike | str = "results", heartbeat_interval: int = 10,
              grace_period: Optional[int] = None, max_retry: int = 3, show_progress: bool = False,
              stream: Optional[TextIO] = None) -> SweepReport:
    """Run (or resume) a sweep with ``workers`` local worker processes.

    Args:
        space_name: a registered space (:func:`sweeps.space.get_space`).
        storage: database URL; default ``sqlite:////<results_dir>/<study>.db``.
        study_name: default: the space's name.
        objective: ``"module:function"``, ``config -> metrics``. When it has a ``check_config``
            method (the default does), every trial's config is checked before anything runs.
        workers: 1 runs in this process; N > 1 starts N processes of ``python -m sweeps.cli run
            --worker`` against the same storage, each loading the study from it.
        overrides: config fields set on every trial (e.g. ``{"max_steps": 200}``).
        seeds, n_trials: passed to :func:`sweeps.space.get_space`.
        show_progress: print (to ``stream``, default stdout) the storage URL, one line per
            finished trial (read from the storage, whatever the number of workers) and, at the
            end, the summary table (:func:`sweeps.progress.summary_table`).

    Returns:
        :class:`SweepReport` of the whole study after the workers ended. A worker process that
        died is reported in ``notes``; the trials it left are retried by the others.

    Raises:
        SweepInterrupted: Ctrl-C (SIGINT); the running trials end FAIL marked ``interrupted``
            (not counted towards ``max_retry``) and the same call resumes.
        ValueError: a bad argument, storage or trial config, before any trial runs.
    """
    from sweeps.progress import ProgressPrinter, summary_table

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    space = get_space(space_name, seeds=seeds, n_trials=n_trials)
    study_name = study_name or space.name
    if not isinstance(objective, str) and workers > 1:
        raise ValueError("workers > 1 needs the objective as a 'module:function' string")
    check_trial_configs(space, resolve_objective(objective), overrides)
    storage_url = storage or default_storage_url(study_name, results_dir)
    printer = ProgressPrinter(space, study_name, storage_url, workers, max_retry, stream) if show_progress else None
    start = time.perf_counter()
    storage_obj: Any = None
    try:
        if workers == 1:
            rep = run_worker(space, storage_url, study_name, objective, overrides, heartbeat_interval, grace_period,
                             max_retry, progress=printer)
            rep.wall_time_s = time.perf_counter() - start
        else:
            # create the study once here, so that the workers only load it (no creation race)
            storage_obj = make_storage(storage_url, heartbeat_interval, grace_period, max_retry)
            study = create_study(space, storage_obj, study_name, overrides=overrides or {})
            if printer is not None:
                printer.start(study)
            before = len(study.get_trials(deepcopy=False))
            if space.is_grid and len(grid_status(study, space).done) == space.size:
                rep = study_report(study, space, storage_url, 0, time.perf_counter() - start, max_retry)
            else:
                argv = worker_argv(space_name, storage_url, study_name, objective, overrides or {}, seeds, n_trials,
                                   heartbeat_interval, grace_period, max_retry)
                codes = _run_processes(argv, workers, None if printer is None else lambda: printer.update(study))
                study = load_study(storage_obj, study_name, space)
                if printer is not None:
                    printer.update(study)
                started = len(study.get_trials(deepcopy=False)) - before
                rep = study_report(study, space, storage_url, started, time.perf_counter() - start, max_retry)
                bad = [c for c in codes if c != 0]
                if bad:
                    how = ", ".join(_exit_text(c) for c in bad)
                    if rep.complete >= rep.expected:
                        rep.notes.append(f"note: {len(bad)} of {workers} workers died ({how}); the others retried "
                                         f"the trials they left and {rep.complete}/{rep.expected} are complete")
                    else:
                        rep.notes.append(f"note: {len(bad)} of {workers} workers died ({how}); "
                                         f"{rep.complete}/{rep.expected} complete: re-run the same command to resume")
    except KeyboardInterrupt:
        raise _interrupted(storage_obj or storage_url, study_name, space) from None
    if printer is not None:
        try:
            table = summary_table(load_study(storage_obj or storage_url, study_name))
        except KeyError:
            table = "no study"
        print(table, file=stream or sys.stdout, flush=True)
    return rep


def _interrupted(storage: Any, study_name: str, space: SearchSpace) -> SweepInterrupted:
    """The :class:`SweepInterrupted` of a study as it stands after Ctrl-C."""
    done = 0
    try:
        study = load_study(storage, study_name)
        if space.is_grid:
            done = len(grid_status(study, space).done)
        else:
            from optuna.trial import TrialState

            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    except (KeyError, ValueError):
        pass
    return SweepInterrupted(done, space.size)


def _run_processes(argv: Sequence[str], count: int, poll: Optional[Callable[[], None]] = None,
                   poll_s: float = 1.0) -> List[int]:
    """Start ``count`` copies of ``argv`` and wait for them, calling ``poll`` every ``poll_s``.

    The workers run in process groups of their own, so that a Ctrl-C in the terminal reaches
    this process only, which then sends each worker one SIGTERM and waits for them (SIGKILL after
    30 s). A worker turns SIGTERM into an interrupt of its trial (FAIL, marked ``interrupted``);
    one still starting up just ends, silently, where SIGINT would print a traceback.
    """
    env = dict(os.environ)
    # each worker trains on its own core
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    group: Dict[str, Any] = ({"process_group": 0} if sys.version_info >= (3, 11)  # own group, same session
                             else {"preexec_fn": os.setpgrp})
    procs = [subprocess.Popen(list(argv), env=env, **group) for _ in range(count)]
    try:
        while any(p.poll() is None for p in procs):
            if poll is not None:
                poll()
            time.sleep(poll_s)
        return [p.wait() for p in procs]
    except BaseException:
        try:  # a second Ctrl-C must not cut the clean-up short
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            previous = None
        try:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        raise
