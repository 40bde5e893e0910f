"""One sweep worker: take trials from a study until every grid point is COMPLETE.

The objective is any function ``config dict -> metrics dict``, named ``"module:function"`` so that
worker processes can import it. Each grid point ends with at most one COMPLETE trial: a trial
whose point another trial owns (COMPLETE, or RUNNING with a smaller number) ends PRUNED with the
user attribute ``duplicate_of``, checked before training and again before reporting.

Before the first trial, an objective with a ``check_config`` method (the default one has) checks
every trial's config, so that a typo in an override fails at once (:func:`check_trial_configs`).
A trial whose training collapsed (``dlrm.train.TrainingCollapsedError``) ends FAIL with its reason
and is not retried; a trial stopped by Ctrl-C ends FAIL marked ``interrupted`` and does not count
towards the retry limit.

Example::

    >>> report = run_worker("tiny", url, "tiny", "sweeps._testing:synthetic_objective")  # doctest: +SKIP
    >>> report.complete, report.expected                                                  # doctest: +SKIP
    (6, 6)
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from sweeps.space import SearchSpace, get_space
from sweeps.storage import make_storage, quiet_optuna, redact_url
from sweeps.study import create_study, end_attrs, grid_status, objective_values, owner_of, project_version, start_attrs

if TYPE_CHECKING:
    from sweeps.progress import ProgressPrinter

__all__ = [
    "DEFAULT_OBJECTIVE",
    "Objective",
    "SweepReport",
    "resolve_objective",
    "check_trial_configs",
    "collapse_reason",
    "study_report",
    "run_worker",
    "worker_argv",
]

DEFAULT_OBJECTIVE = "sweeps.objective:train_objective"
#: what a trial trains: a flat config in, a metrics dict out
Objective = Callable[[Dict[str, Any]], Dict[str, Any]]


def resolve_objective(spec: str | Objective) -> Objective:
    """``"module:function"`` -> the function (``ValueError`` naming the spec when it is not found)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"objective must be 'module:function', got {spec!r}")
    module_name, name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import objective {spec!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"objective {spec!r} is not callable")
    return fn


def _prune_if_owned(trial: Any, key: Optional[str], when: str) -> None:
    """End ``trial`` PRUNED (recording ``duplicate_of``) when another trial owns its grid point."""
    import optuna

    if key is None:
        return
    owner = owner_of(trial.study, trial.number, key)
    if owner is not None:
        trial.set_user_attr("duplicate_of", owner)
        raise optuna.TrialPruned(f"grid point {key} {when} by trial {owner}")


def collapse_reason(exc: BaseException) -> Optional[str]:
    """The reason when ``exc`` is a :class:`dlrm.train.TrainingCollapsedError` (the model died:
    non-finite loss or weights, constant predictions), else ``None``."""
    from dlrm.train import TrainingCollapsedError

    if isinstance(exc, TrainingCollapsedError):
        return str(getattr(exc, "reason", None) or exc)
    return None


def check_trial_configs(space: SearchSpace, objective_fn: Objective, overrides: Optional[Mapping[str, Any]]) -> None:
    """Call the objective's ``check_config`` (when it has one) on the config of every grid point
    (an open search: on its fixed fields), before any trial runs.

    Raises:
        ValueError: the objective refuses a config; the message names the override (``--set``)
            it is about, or else the grid point.
    """
    import optuna

    check = getattr(objective_fn, "check_config", None)
    if check is None:
        return
    overrides = dict(overrides or {})
    configs: List[Tuple[Optional[str], Dict[str, Any]]] = []
    if space.is_grid:
        for point in space.labels():
            fixed = optuna.trial.FixedTrial({"point": point, "seed": space.seeds[0]})
            configs.append((point, space.sample(fixed, overrides)[1]))
    else:
        base = dict(space.base)
        base.update(overrides)
        base.setdefault("seed", space.seeds[0])
        configs.append((None, base))
    for label, config in configs:
        try:
            check(config)
        except ValueError as exc:
            words = str(exc).replace("'", " ").split()
            culprit = next((k for k in overrides if k in words), None)
            if culprit is not None:
                value = overrides[culprit]
                where = f"--set {culprit}={value if isinstance(value, str) else json.dumps(value)}"
            elif label is not None:
                where = f"grid point {label!r} of space {space.name!r}"
            else:
                where = f"space {space.name!r}"
            raise ValueError(f"{where}: {exc}") from None


def _trial_objective(space: SearchSpace, objective_fn: Objective,
                     overrides: Mapping[str, Any]) -> Callable[[Any], Tuple[float, float]]:
    """The Optuna objective of one trial: sample a config, train it, record what happened."""
    host = socket.gethostname()
    version = project_version()

    def optuna_objective(trial: Any) -> Tuple[float, float]:
        key, config = space.sample(trial, overrides)
        if key is not None:
            trial.set_user_attr("grid_key", key)
        _prune_if_owned(trial, key, "already owned")
        # few attributes: every one is a database commit
        for name, value in start_attrs(config, version, host).items():
            trial.set_user_attr(name, value)
        start = time.perf_counter()
        try:
            metrics = objective_fn(dict(config))
            ended = end_attrs(metrics, time.perf_counter() - start)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # FAIL, but not towards the retry limit
            raise
        except Exception as exc:
            # recorded on the trial (Optuna only logs it): a FAIL trial says why it failed
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            reason = collapse_reason(exc)
            if reason is not None:
                trial.set_user_attr("failure_reason", reason[:2000])
                trial.set_user_attr("collapsed", True)
            raise
        for name, value in ended.items():
            trial.set_user_attr(name, value)
        _prune_if_owned(trial, key, "completed meanwhile")
        return objective_values(metrics)

    return optuna_objective


@dataclass
class SweepReport:
    """What a sweep (or one worker) did."""

    study_name: str
    storage: str
    expected: int
    complete: int
    failed: int
    pruned: int
    duplicates: Dict[str, List[int]] = field(default_factory=dict)
    given_up: List[str] = field(default_factory=list)
    trials_run: int = 0
    wall_time_s: float = 0.0
    #: key -> why it was given up on without retries (its training collapsed)
    collapsed: Dict[str, str] = field(default_factory=dict)
    #: one-line notes for the user (e.g. a worker process that died while the sweep completed)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"study {self.study_name!r}: {self.complete}/{self.expected} complete, {self.failed} failed, "
                f"{self.pruned} pruned (duplicates); {self.trials_run} trials started here in "
                f"{self.wall_time_s:.1f} s")
        if self.duplicates:
            text += f"; WARNING duplicate COMPLETE trials {self.duplicates}"
        retried = [k for k in self.given_up if k not in self.collapsed]
        if retried:
            text += f"; gave up on {retried} (failed more than the retry limit)"
        if self.collapsed:
            text += "; training collapsed (not retried): " + ", ".join(
                f"{k} ({why})" for k, why in self.collapsed.items())
        return text


def _count_complete(study: Any) -> int:
    from optuna.trial import TrialState

    return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def study_report(study: Any, space: SearchSpace, storage_url: str, trials_run: int, wall_time_s: float,
                 max_retry: int) -> SweepReport:
    """The :class:`SweepReport` of ``study`` as it stands (the storage URL printed without password)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = states.count(TrialState.COMPLETE)
    dups: Dict[str, List[int]] = {}
    given_up: List[str] = []
    collapsed: Dict[str, str] = {}
    if space.is_grid:
        st = grid_status(study, space)
        complete = len(st.done)
        dups = st.duplicates
        given_up = st.given_up(max_retry)
        collapsed = {k: why for k, why in st.collapsed.items() if k in given_up}
    return SweepReport(study.study_name, redact_url(storage_url), space.size, complete,
                       states.count(TrialState.FAIL), states.count(TrialState.PRUNED), dups, given_up,
                       trials_run, wall_time_s, collapsed)


def _next_grid_trial(study: Any, space: SearchSpace, max_retry: int) -> Optional[bool]:
    """Prepare the next grid trial: ``True`` to run one, ``False`` to wait for other workers,
    ``None`` when nothing is left (every point COMPLETE, or the rest failed too often)."""
    import optuna

    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)
    st = grid_status(study, space)
    if len(st.done) == len(st.keys):
        return None
    todo = st.todo(max_failures=max_retry)
    if not todo and not st.waiting:
        # others are on it: stay to pick up a retry should one of them die
        return False if st.running else None
    if not st.waiting:
        tried = set(st.failed) | set(st.complete) | set(st.running) | set(st.interrupted)
        if all(k in tried for k in todo):
            # GridSampler counts failed points as visited; enqueue one explicitly
            label, seed = todo[0].rsplit("/s", 1)
            study.enqueue_trial({"point": label, "seed": int(seed)}, skip_if_exists=False)
    return True


def _mark_own_running_interrupted(study: Any, storage: Any) -> None:
    """After Ctrl-C: end this process's RUNNING trials FAIL, marked ``interrupted`` (an interrupt
    outside the objective, e.g. while Optuna records a result, would otherwise leave them RUNNING
    until their heartbeat goes stale, and a stale trial counts towards the retry limit)."""
    from optuna.trial import TrialState

    host, pid = socket.gethostname(), os.getpid()
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run = t.user_attrs.get("run") or {}
            if run.get("pid") == pid and run.get("hostname") == host:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                storage.set_trial_user_attr(trial_id, "interrupted", True)
                study.tell(t.number, state=TrialState.FAIL)
    except Exception:  # pragma: no cover - best effort on the way out
        pass


def run_worker(space: SearchSpace | str, storage_url: str, study_name: str,
               objective: str | Objective = DEFAULT_OBJECTIVE, overrides: Optional[Mapping[str, Any]] = None,
               heartbeat_interval: int = 10, grace_period: Optional[int] = None, max_retry: int = 3,
               poll_s: Optional[float] = None, sampler_seed: int = 0,
               progress: Optional[ProgressPrinter] = None) -> SweepReport:
    """One worker: take trials from the study until every grid point is COMPLETE (or, for an open
    search, until ``space.n_trials`` trials are COMPLETE).

    While the only unfinished grid points are RUNNING in other workers it waits (``poll_s``) so
    that, should one of them die, its retry is picked up; grid points that failed more than
    ``max_retry`` times, or whose training collapsed, are given up and reported. ``progress``
    (a :class:`sweeps.progress.ProgressPrinter`) prints the start line and a line per finished
    trial. Ctrl-C (``KeyboardInterrupt``) ends the running trial FAIL, marked ``interrupted``,
    and propagates.
    """
    import optuna

    if isinstance(space, str):
        space = get_space(space)
    objective_fn = resolve_objective(objective)
    check_trial_configs(space, objective_fn, overrides)
    storage = make_storage(storage_url, heartbeat_interval, grace_period, max_retry)
    study = create_study(space, storage, study_name, sampler_seed, overrides=overrides or {})
    opt_objective = _trial_objective(space, objective_fn, overrides or {})
    poll = float(poll_s if poll_s is not None else min(1.0, heartbeat_interval))
    start = time.perf_counter()
    started = 0
    verbosity = optuna.logging.get_verbosity()
    # a failed trial is reported by the progress line and recorded on the trial (error, traceback):
    # Optuna's own warning with the traceback would break the one line per trial
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget = space.size * (max_retry + 1)
    if progress is not None:
        progress.start(study)
    try:
        while True:
            if space.is_grid:
                ready = _next_grid_trial(study, space, max_retry)
                if ready is None:
                    break
                if not ready:
                    if progress is not None:
                        progress.update(study)
                    time.sleep(poll)
                    continue
            elif started >= budget or _count_complete(study) >= space.size:
                break
            with quiet_optuna():
                study.optimize(opt_objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
            started += 1
            if progress is not None:
                progress.update(study)
    except KeyboardInterrupt:
        _mark_own_running_interrupted(study, storage)
        raise
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study_report(study, space, storage_url, started, time.perf_counter() - start, max_retry)


def worker_argv(space_name: str, storage_url: str, study_name: str, objective: str, overrides: Mapping[str, Any],
                seeds: Optional[Sequence[int]], n_trials: Optional[int], heartbeat_interval: int,
                grace_period: Optional[int], max_retry: int) -> List[str]:
    """The command line of one worker process (``python -m sweeps.cli run --worker …``)."""
    argv = [sys.executable, "-m", "sweeps.cli", "run", "--worker", "--space", space_name,
            "--storage", storage_url, "--study", study_name, "--objective", objective,
            "--heartbeat", str(heartbeat_interval), "--max-retry", str(max_retry)]
    if grace_period is not None:
        argv += ["--grace", str(grace_period)]
    if seeds is not None:
        argv += ["--seeds", ",".join(str(s) for s in seeds)]
    if n_trials is not None:
        argv += ["--n-trials", str(n_trials)]
    for k, v in (overrides or {}).items():
        argv += ["--set", f"{k}={json.dumps(v)}"]
    return argv
