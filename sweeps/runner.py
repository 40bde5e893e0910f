"""The Optuna sweep runner: study creation and resumption, local workers, heartbeat and retries.

A sweep is one Optuna study with two objectives — embedding parameters and validation log loss,
both minimised — whose trials each train one model. The objective is any function
``config dict -> metrics dict`` (named ``"module:function"`` so that worker processes can import
it); the default, :func:`sweeps.objective.train_objective`, calls :func:`dlrm.train.train`.
Every trial records its full config, seed, metrics, wall time, host and project version as user
attributes.

Storage is any Optuna RDB URL: SQLite under ``results/`` by default (nothing to install), or
``postgresql://…`` so that workers on many machines share one study. The storage has a heartbeat:
a worker that dies mid-trial stops beating, the next worker to look marks its trial FAIL and
:class:`optuna.storages.RetryFailedTrialCallback` enqueues a retry of the same grid point.

Exactly-once completion. Optuna's ``GridSampler`` may hand one grid point to two concurrent
workers, and a retry may race a slow original. Each grid trial therefore checks, before training
and again before reporting, whether another trial of the same grid point (same ``point`` and
``seed``) is COMPLETE, or RUNNING with a smaller trial number; if so it ends PRUNED with the user
attribute ``duplicate_of``. So every grid point ends with at most one COMPLETE trial, and a
re-run of the same command resumes: completed points are never trained again.

Example::

    >>> from sweeps.runner import run_sweep
    >>> report = run_sweep("tiny", storage=None, study_name="t", objective="sweeps._testing:synthetic_objective",
    ...                    results_dir=tmp_path)                                    # doctest: +SKIP
    >>> report.complete, report.expected                                             # doctest: +SKIP
    (6, 6)
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from sweeps.space import DIRECTIONS, OBJECTIVE_NAMES, SearchSpace, get_space, grid_key

__all__ = [
    "DEFAULT_OBJECTIVE",
    "SweepReport",
    "GridStatus",
    "default_storage_url",
    "make_storage",
    "create_study",
    "load_study",
    "resolve_objective",
    "grid_status",
    "run_worker",
    "run_sweep",
]

DEFAULT_OBJECTIVE = "sweeps.objective:train_objective"
#: Metrics an objective must return (the two objectives).
REQUIRED_METRICS = OBJECTIVE_NAMES

_log = logging.getLogger("sweeps")


@contextlib.contextmanager
def _quiet():
    """Silence Optuna's ExperimentalWarning / FutureWarning for the features we rely on on purpose
    (heartbeat, stale-trial retry, metric names)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# --------------------------------------------------------------------------------------------
# storage and study


def default_storage_url(study_name: str, results_dir: os.PathLike | str = "results") -> str:
    """``sqlite:////abs/results/<study>.db`` (four slashes: an absolute path); creates the folder."""
    if not study_name or "/" in study_name or study_name.startswith("."):
        raise ValueError(f"study name must be a plain file name, got {study_name!r}")
    folder = Path(results_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (study_name + '.db')}"


def make_storage(url: str, heartbeat_interval: Optional[int] = 10, grace_period: Optional[int] = None,
                 max_retry: int = 3):
    """An :class:`optuna.storages.RDBStorage` with heartbeat and retry of failed trials.

    Args:
        url: SQLAlchemy URL (``sqlite:///…``, ``postgresql://…``).
        heartbeat_interval: seconds between heartbeats of a running trial; ``None`` disables them.
        grace_period: seconds without a heartbeat after which a trial counts as dead
            (default ``2 * heartbeat_interval``).
        max_retry: retries of a dead worker's trial.
    """
    import optuna

    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"storage must be a database URL such as sqlite:////abs/path.db, got {url!r}")
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise ValueError(f"heartbeat_interval must be >= 1 second, got {heartbeat_interval!r}")
    if max_retry < 0:
        raise ValueError(f"max_retry must be >= 0, got {max_retry!r}")
    url = _with_driver(url)
    engine_kwargs: Dict[str, Any] = {}
    if url.startswith("sqlite"):
        # concurrent workers on one SQLite file: wait for the lock rather than fail
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: Dict[str, Any] = {}
    if heartbeat_interval is not None:
        kwargs = dict(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(grace_period if grace_period is not None else 2 * heartbeat_interval),
        )
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry is not None:  # optuna >= 4.9
            with _quiet():
                kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=max_retry)
        else:  # pragma: no cover - older optuna
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)
    with _quiet():
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    if url.startswith("sqlite"):
        _sqlite_wal(storage)
    return storage


def _sqlite_wal(storage) -> None:
    """Write-ahead log and ``synchronous=NORMAL`` on SQLite: one fsync per checkpoint rather than
    per commit (each trial commits a dozen times), still safe across process kills."""
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # reconnect so that the pragmas apply


def _with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` when psycopg 3 is absent (SQLAlchemy 2.1
    defaults to psycopg 3; the ``postgres`` extra installs psycopg2-binary)."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _canonical(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True)


def _definition_conflicts(attrs: Mapping[str, Any], space: SearchSpace,
                          overrides: Optional[Mapping[str, Any]]) -> List[str]:
    """What differs between the definition a study recorded and the one a run now asks for."""
    out: List[str] = []
    if space.is_grid and "grid" in attrs:
        old, new = attrs["grid"], space.grid_search_space()
        if _canonical(old.get("seed")) != _canonical(new["seed"]):
            out.append(f"seeds {old.get('seed')} -> {new['seed']}")
        if _canonical(old.get("point")) != _canonical(new["point"]):
            out.append(f"grid points {old.get('point')} -> {new['point']}")
    if space.is_grid and "points" in attrs:
        old_points = attrs["points"]
        for label, fields in space.points or ():
            if label in old_points and _canonical(old_points[label]) != _canonical(fields):
                out.append(f"point {label!r} {old_points[label]} -> {_jsonable(dict(fields))}")
    if "base" in attrs and _canonical(attrs["base"]) != _canonical(space.base):
        out.append(f"base {attrs['base']} -> {_jsonable(dict(space.base))}")
    if overrides is not None and "overrides" in attrs and _canonical(attrs["overrides"]) != _canonical(overrides):
        old_o, new_o = attrs["overrides"], _jsonable(dict(overrides))
        keys = sorted(set(old_o) | set(new_o), key=str)
        diff = ", ".join(f"{k}: {old_o.get(k, '<unset>')!r} -> {new_o.get(k, '<unset>')!r}"
                         for k in keys if _canonical(old_o.get(k)) != _canonical(new_o.get(k)))
        out.append(f"overrides ({diff})")
    return out


def create_study(space: SearchSpace, storage, study_name: str, sampler_seed: int = 0,
                 overrides: Optional[Mapping[str, Any]] = None):
    """Create (or load, when it exists) the study of ``space`` and record what it is.

    A study records its space's name, grid (points x seeds), point definitions, base fields and
    the run's ``overrides``. Resuming it with a different definition raises ``ValueError`` naming
    the difference: the finished trials would otherwise silently stand for a different
    experiment (and a grid with other seeds or points cannot share a study with Optuna's grid
    sampler). ``overrides=None`` skips the overrides check (the study's trials record theirs).
    """
    import optuna

    if optuna.logging.get_verbosity() == optuna.logging.INFO:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        directions=list(DIRECTIONS),
        sampler=space.make_sampler(sampler_seed),
        load_if_exists=True,
    )
    names = list(study.metric_names or [])
    if not names:
        with _quiet():
            study.set_metric_names(list(OBJECTIVE_NAMES))
    attrs = study.user_attrs
    if "space" in attrs and attrs["space"] != space.name:
        raise ValueError(f"study {study_name!r} holds space {attrs['space']!r}, not {space.name!r}")
    conflicts = _definition_conflicts(attrs, space, overrides)
    if conflicts:
        raise ValueError(f"study {study_name!r} was run with another definition of space {space.name!r}: "
                         f"{'; '.join(conflicts)}. Resume it with the same settings, or start a new study "
                         f"(another --study name, or delete its storage)")
    if overrides is not None and "overrides" not in attrs:
        study.set_user_attr("overrides", _jsonable(dict(overrides)))
    if "space" not in attrs:
        study.set_user_attr("space", space.name)
        study.set_user_attr("space_size", space.size)
        study.set_user_attr("is_grid", space.is_grid)
        if space.is_grid:
            study.set_user_attr("grid", space.grid_search_space())
            study.set_user_attr("points", {label: fields for label, fields in space.points or ()})
        study.set_user_attr("base", dict(space.base))
    return study


def load_study(storage, study_name: str, space: Optional[SearchSpace] = None, sampler_seed: int = 0):
    """Load an existing study (``KeyError`` naming it when absent)."""
    import optuna

    if isinstance(storage, str):
        storage = make_storage(storage, heartbeat_interval=None)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        raise KeyError(f"no study {study_name!r} in the storage; studies there: {sorted(names)}")
    sampler = space.make_sampler(sampler_seed) if space is not None else None
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)


def resolve_objective(spec: str | Callable[[Dict[str, Any]], Dict[str, Any]]):
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


def _version() -> str:
    try:
        import compemb

        return str(compemb.__version__)
    except Exception:  # pragma: no cover - compemb is always importable in this repository
        return "unknown"


# --------------------------------------------------------------------------------------------
# grid bookkeeping


def _trial_key(trial) -> Optional[str]:
    p = trial.params
    if "point" in p and "seed" in p:
        return grid_key(p["point"], p["seed"])
    return None


@dataclass
class GridStatus:
    """Where every grid point of a study stands."""

    keys: List[str]
    complete: Dict[str, List[int]]  # key -> numbers of its COMPLETE trials
    running: Dict[str, List[int]]
    waiting: int
    failed: Dict[str, int]  # key -> number of FAIL trials

    @property
    def done(self) -> List[str]:
        return [k for k in self.keys if self.complete.get(k)]

    @property
    def duplicates(self) -> Dict[str, List[int]]:
        return {k: v for k, v in self.complete.items() if len(v) > 1}

    def todo(self, max_failures: Optional[int] = None) -> List[str]:
        """Keys with neither a COMPLETE nor a RUNNING trial (and not failed too often)."""
        out = []
        for k in self.keys:
            if self.complete.get(k) or self.running.get(k):
                continue
            if max_failures is not None and self.failed.get(k, 0) > max_failures:
                continue
            out.append(k)
        return out


def grid_status(study, space: SearchSpace) -> GridStatus:
    """Count COMPLETE / RUNNING / FAIL trials per grid key of ``space`` in ``study``."""
    from optuna.trial import TrialState

    keys = space.grid_keys()
    known = set(keys)
    complete: Dict[str, List[int]] = {}
    running: Dict[str, List[int]] = {}
    failed: Dict[str, int] = {}
    waiting = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            waiting += 1
            continue
        key = _trial_key(t)
        if key is None or key not in known:
            continue
        if t.state == TrialState.COMPLETE:
            complete.setdefault(key, []).append(t.number)
        elif t.state == TrialState.RUNNING:
            running.setdefault(key, []).append(t.number)
        elif t.state == TrialState.FAIL:
            failed[key] = failed.get(key, 0) + 1
    return GridStatus(keys, complete, running, waiting, failed)


def _duplicate_of(study, number: int, key: str) -> Optional[int]:
    """Number of a trial that owns ``key`` before trial ``number``: any COMPLETE one, or a
    RUNNING one with a smaller number."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == number or _trial_key(t) != key:
            continue
        if t.state == TrialState.COMPLETE or t.number < number:
            return t.number
    return None


# --------------------------------------------------------------------------------------------
# the trial


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


def start_attrs(config: Mapping[str, Any], version: Optional[str] = None, host: Optional[str] = None) -> Dict[str, Any]:
    """User attributes a trial records before training: its full config and where it ran."""
    return {
        "config": _jsonable(dict(config)),
        "run": {"seed": int(config.get("seed", 0)), "version": version or _version(),
                "hostname": host or socket.gethostname(), "pid": os.getpid()},
    }


def end_attrs(metrics: Mapping[str, Any], wall_time_s: float) -> Dict[str, Any]:
    """User attributes a trial records after training: every metric (``metrics``), and the test
    metrics also on their own so that dashboards show them."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"objective returned {type(metrics).__name__}, expected a dict of metrics")
    missing = [m for m in REQUIRED_METRICS if m not in metrics]
    if missing:
        raise ValueError(f"objective's metrics lack {missing}; got {sorted(metrics)}")
    out = _jsonable(dict(metrics))
    out["trial_wall_time_s"] = float(wall_time_s)
    attrs: Dict[str, Any] = {"metrics": out}
    for name in ("test_loss", "test_accuracy", "test_auc"):
        if name in out:
            attrs[name] = out[name]
    return attrs


def objective_values(metrics: Mapping[str, Any]) -> Tuple[float, float]:
    """The two objectives (embedding parameters, validation log loss) from a metrics dict."""
    return tuple(float(metrics[m]) for m in REQUIRED_METRICS)  # type: ignore[return-value]


def _make_optuna_objective(space: SearchSpace, objective_fn, overrides: Mapping[str, Any]):
    import optuna

    host = socket.gethostname()
    version = _version()

    def optuna_objective(trial) -> Tuple[float, float]:
        key, config = space.sample(trial, overrides)
        if key is not None:
            trial.set_user_attr("grid_key", key)
            dup = _duplicate_of(trial.study, trial.number, key)
            if dup is not None:
                trial.set_user_attr("duplicate_of", dup)
                raise optuna.TrialPruned(f"grid point {key} already owned by trial {dup}")
        # few attributes: every one is a database commit
        for name, value in start_attrs(config, version, host).items():
            trial.set_user_attr(name, value)
        start = time.perf_counter()
        try:
            metrics = objective_fn(dict(config))
            ended = end_attrs(metrics, time.perf_counter() - start)
        except Exception as exc:
            # recorded on the trial (Optuna only logs it): a FAIL trial says why it failed
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        for name, value in ended.items():
            trial.set_user_attr(name, value)
        if key is not None:
            dup = _duplicate_of(trial.study, trial.number, key)
            if dup is not None:
                trial.set_user_attr("duplicate_of", dup)
                raise optuna.TrialPruned(f"grid point {key} completed meanwhile by trial {dup}")
        return objective_values(metrics)

    return optuna_objective


# --------------------------------------------------------------------------------------------
# workers


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

    def summary(self) -> str:
        text = (f"study {self.study_name!r}: {self.complete}/{self.expected} complete, {self.failed} failed, "
                f"{self.pruned} pruned (duplicates); {self.trials_run} trials started here in "
                f"{self.wall_time_s:.1f} s")
        if self.duplicates:
            text += f"; WARNING duplicate COMPLETE trials {self.duplicates}"
        if self.given_up:
            text += f"; gave up on {self.given_up} (failed more than the retry limit)"
        return text


def _counts(study) -> Tuple[int, int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    c = sum(t.state == TrialState.COMPLETE for t in trials)
    f = sum(t.state == TrialState.FAIL for t in trials)
    p = sum(t.state == TrialState.PRUNED for t in trials)
    return c, f, p


def _report(study, space: SearchSpace, storage_url: str, trials_run: int, wall: float,
            max_retry: int) -> SweepReport:
    c, f, p = _counts(study)
    dups: Dict[str, List[int]] = {}
    given_up: List[str] = []
    if space.is_grid:
        st = grid_status(study, space)
        c = len(st.done)
        dups = st.duplicates
        given_up = [k for k in st.keys if not st.complete.get(k) and not st.running.get(k)
                    and st.failed.get(k, 0) > max_retry]
    return SweepReport(study.study_name, _redact(storage_url), space.size, c, f, p, dups, given_up,
                       trials_run, wall)


def _redact(url: str) -> str:
    # never print a password
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url


def run_worker(space: SearchSpace | str, storage_url: str, study_name: str,
               objective: str | Callable = DEFAULT_OBJECTIVE, overrides: Optional[Mapping[str, Any]] = None,
               heartbeat_interval: int = 10, grace_period: Optional[int] = None, max_retry: int = 3,
               poll_s: Optional[float] = None, sampler_seed: int = 0, show_progress: bool = False) -> SweepReport:
    """One worker: take trials from the study until every grid point is COMPLETE (or, for an open
    search, until ``space.n_trials`` trials are COMPLETE).

    While the only unfinished grid points are RUNNING in other workers it waits (``poll_s``) so
    that, should one of them die, its retry is picked up; grid points that failed more than
    ``max_retry`` times are given up and reported.
    """
    import optuna

    if isinstance(space, str):
        space = get_space(space)
    objective_fn = resolve_objective(objective)
    storage = make_storage(storage_url, heartbeat_interval, grace_period, max_retry)
    study = create_study(space, storage, study_name, sampler_seed, overrides=overrides or {})
    opt_objective = _make_optuna_objective(space, objective_fn, overrides or {})
    poll = float(poll_s if poll_s is not None else min(1.0, heartbeat_interval))
    start = time.perf_counter()
    started = 0
    catch = (Exception,)
    if not show_progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if space.is_grid:
        while True:
            with _quiet():
                optuna.storages.fail_stale_trials(study)
            st = grid_status(study, space)
            if len(st.done) == len(st.keys):
                break
            todo = st.todo(max_failures=max_retry)
            if not todo and not st.waiting:
                if st.running:
                    time.sleep(poll)  # others are on it; stay to pick up a retry if one dies
                    continue
                break  # what is left failed too often
            if not st.waiting:
                tried = set(st.failed) | set(st.complete) | set(st.running)
                if all(k in tried for k in todo):
                    # GridSampler counts failed points as visited; enqueue one explicitly
                    label, seed = todo[0].rsplit("/s", 1)
                    study.enqueue_trial({"point": label, "seed": int(seed)}, skip_if_exists=False)
            with _quiet():
                study.optimize(opt_objective, n_trials=1, catch=catch, gc_after_trial=False)
            started += 1
    else:
        budget = space.size * (max_retry + 1)
        while started < budget:
            c, _, _ = _counts(study)
            if c >= space.size:
                break
            with _quiet():
                study.optimize(opt_objective, n_trials=1, catch=catch, gc_after_trial=False)
            started += 1
    return _report(study, space, storage_url, started, time.perf_counter() - start, max_retry)


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


def run_sweep(space_name: str, storage: Optional[str] = None, study_name: Optional[str] = None,
              objective: str = DEFAULT_OBJECTIVE, workers: int = 1, overrides: Optional[Mapping[str, Any]] = None,
              seeds: Optional[Sequence[int]] = None, n_trials: Optional[int] = None,
              results_dir: os.PathLike | str = "results", heartbeat_interval: int = 10,
              grace_period: Optional[int] = None, max_retry: int = 3, show_progress: bool = False) -> SweepReport:
    """Run (or resume) a sweep with ``workers`` local worker processes.

    Args:
        space_name: a registered space (:func:`sweeps.space.get_space`).
        storage: database URL; default ``sqlite:////<results_dir>/<study>.db``.
        study_name: default: the space's name.
        objective: ``"module:function"``, ``config -> metrics``.
        workers: 1 runs in this process; N > 1 starts N processes of ``python -m sweeps.cli run
            --worker`` against the same storage, each loading the study from it.
        overrides: config fields set on every trial (e.g. ``{"max_steps": 200}``).
        seeds, n_trials: passed to :func:`sweeps.space.get_space`.

    Returns:
        :class:`SweepReport` of the whole study after the workers ended.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    space = get_space(space_name, seeds=seeds, n_trials=n_trials)
    study_name = study_name or space.name
    storage_url = storage or default_storage_url(study_name, results_dir)
    if not isinstance(objective, str):
        if workers > 1:
            raise ValueError("workers > 1 needs the objective as a 'module:function' string")
    start = time.perf_counter()
    if workers == 1:
        rep = run_worker(space, storage_url, study_name, objective, overrides, heartbeat_interval, grace_period,
                         max_retry, show_progress=show_progress)
        rep.wall_time_s = time.perf_counter() - start
        return rep
    # create the study once here, so that the workers only load it (no creation race)
    storage_obj = make_storage(storage_url, heartbeat_interval, grace_period, max_retry)
    study = create_study(space, storage_obj, study_name, overrides=overrides or {})
    before = len(study.get_trials(deepcopy=False))
    if space.is_grid and len(grid_status(study, space).done) == space.size:
        return _report(study, space, storage_url, 0, time.perf_counter() - start, max_retry)  # nothing to resume
    argv = worker_argv(space_name, storage_url, study_name, objective, overrides or {}, seeds, n_trials,
                       heartbeat_interval, grace_period, max_retry)
    env = dict(os.environ)
    # each worker trains on its own core
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = [subprocess.Popen(argv, env=env) for _ in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [c for c in codes if c != 0]
    study = load_study(storage_obj, study_name, space)
    started = len(study.get_trials(deepcopy=False)) - before
    rep = _report(study, space, storage_url, started, time.perf_counter() - start, max_retry)
    if bad:
        raise RuntimeError(f"{len(bad)} of {workers} workers exited with status {bad}; {rep.summary()}")
    return rep
