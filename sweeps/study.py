"""A sweep's Optuna study: its creation and resumption, its grid bookkeeping, what a trial records.

A study has two objectives, embedding parameters and validation log loss, both minimised. It
records the definition of its space; resuming it with another definition is refused, naming the
difference. Every trial records its full config, seed, metrics, wall time, host and project
version as user attributes (:func:`start_attrs`, :func:`end_attrs`), and the fields one slices a
sweep by (:data:`SLICE_ATTRS`: method, collisions, operation, threshold, seed) each as its own
user attribute, so that optuna-dashboard and ``optuna.load_study`` users can filter and group by them.

A FAIL trial records why: ``error`` (and ``traceback``); a training run that collapsed also
``collapsed=True`` and ``failure_reason`` (such a failure is deterministic: it is not retried); a
trial stopped by Ctrl-C ``interrupted=True`` (it does not count towards the retry limit).

Example::

    >>> study = create_study(get_space("tiny"), make_storage(url), "tiny")   # doctest: +SKIP
    >>> grid_status(study, get_space("tiny")).todo()                          # doctest: +SKIP
    ['full/s0', 'full/s1', 'hash-c4/s0', 'hash-c4/s1', 'qr-mult-c4/s0', 'qr-mult-c4/s1']
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from dlrm.metrics import jsonable
from sweeps.space import DIRECTIONS, OBJECTIVE_NAMES, SearchSpace, grid_key
from sweeps.storage import make_storage, quiet_optuna

__all__ = [
    "REQUIRED_METRICS",
    "SLICE_ATTRS",
    "GridStatus",
    "create_study",
    "load_study",
    "grid_status",
    "trial_key",
    "owner_of",
    "start_attrs",
    "end_attrs",
    "objective_values",
    "project_version",
]

#: Metrics an objective must return (the two objectives).
REQUIRED_METRICS = OBJECTIVE_NAMES
#: Config fields every trial also records as separate user attributes (``None`` when the config
#: has no such field), to slice a study by in optuna-dashboard or pandas.
SLICE_ATTRS: Tuple[str, ...] = ("method", "num_collisions", "operation", "threshold", "seed")


def _canonical(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True)


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
                out.append(f"point {label!r} {old_points[label]} -> {jsonable(dict(fields))}")
    if "base" in attrs and _canonical(attrs["base"]) != _canonical(space.base):
        out.append(f"base {attrs['base']} -> {jsonable(dict(space.base))}")
    if overrides is not None and "overrides" in attrs and _canonical(attrs["overrides"]) != _canonical(overrides):
        old_o, new_o = attrs["overrides"], jsonable(dict(overrides))
        keys = sorted(set(old_o) | set(new_o), key=str)
        diff = ", ".join(f"{k}: {old_o.get(k, '<unset>')!r} -> {new_o.get(k, '<unset>')!r}"
                         for k in keys if _canonical(old_o.get(k)) != _canonical(new_o.get(k)))
        out.append(f"overrides ({diff})")
    return out


def create_study(space: SearchSpace, storage: Any, study_name: str, sampler_seed: int = 0,
                 overrides: Optional[Mapping[str, Any]] = None) -> Any:
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
        with quiet_optuna():
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
        study.set_user_attr("overrides", jsonable(dict(overrides)))
    if "space" not in attrs:
        study.set_user_attr("space", space.name)
        study.set_user_attr("space_size", space.size)
        study.set_user_attr("is_grid", space.is_grid)
        if space.is_grid:
            study.set_user_attr("grid", space.grid_search_space())
            study.set_user_attr("points", {label: fields for label, fields in space.points or ()})
        study.set_user_attr("base", dict(space.base))
    return study


def load_study(storage: Any, study_name: str, space: Optional[SearchSpace] = None, sampler_seed: int = 0) -> Any:
    """Load an existing study (``KeyError`` naming it when absent); ``storage`` is a URL or a storage.
    A SQLite URL whose file does not exist is a ``KeyError`` too (and no empty file is created)."""
    import optuna

    if isinstance(storage, str):
        try:
            storage = make_storage(storage, heartbeat_interval=None, must_exist=True)
        except KeyError:
            raise KeyError(f"no study {study_name!r}: the storage {storage} does not exist") from None
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        raise KeyError(f"no study {study_name!r} in the storage; studies there: {sorted(names)}")
    sampler = space.make_sampler(sampler_seed) if space is not None else None
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)


def project_version() -> str:
    """compemb's version, recorded on every trial."""
    try:
        import compemb

        return str(compemb.__version__)
    except Exception:  # pragma: no cover - compemb is always importable in this repository
        return "unknown"


# --------------------------------------------------------------------------------------------
# grid bookkeeping


def trial_key(trial: Any) -> Optional[str]:
    """The grid key of a trial (``"qr-mult-c4/s0"``), ``None`` outside a grid."""
    p = trial.params
    if "point" in p and "seed" in p:
        return grid_key(p["point"], p["seed"])
    return None


@dataclass
class GridStatus:
    """Where every grid point of a study stands.

    ``failed`` counts the FAIL trials that count towards the retry limit: not those stopped by
    Ctrl-C (``interrupted``), and a point whose training collapsed (``collapsed``: key -> reason)
    is not retried at all.
    """

    keys: List[str]
    complete: Dict[str, List[int]]  # key -> numbers of its COMPLETE trials
    running: Dict[str, List[int]]
    waiting: int
    failed: Dict[str, int]  # key -> number of FAIL trials (not interrupted ones)
    interrupted: Dict[str, int] = field(default_factory=dict)  # key -> FAIL trials stopped by Ctrl-C
    collapsed: Dict[str, str] = field(default_factory=dict)  # key -> reason its training collapsed

    @property
    def done(self) -> List[str]:
        return [k for k in self.keys if self.complete.get(k)]

    @property
    def duplicates(self) -> Dict[str, List[int]]:
        return {k: v for k, v in self.complete.items() if len(v) > 1}

    def todo(self, max_failures: Optional[int] = None) -> List[str]:
        """Keys with neither a COMPLETE nor a RUNNING trial (and neither collapsed nor, with
        ``max_failures``, failed more often than that)."""
        out = []
        for k in self.keys:
            if self.complete.get(k) or self.running.get(k) or k in self.collapsed:
                continue
            if max_failures is not None and self.failed.get(k, 0) > max_failures:
                continue
            out.append(k)
        return out

    def given_up(self, max_retry: int) -> List[str]:
        """Keys with no COMPLETE or RUNNING trial whose training collapsed or that failed more
        than ``max_retry`` times."""
        return [k for k in self.keys if not self.complete.get(k) and not self.running.get(k)
                and (k in self.collapsed or self.failed.get(k, 0) > max_retry)]


def grid_status(study: Any, space: SearchSpace) -> GridStatus:
    """Count COMPLETE / RUNNING / FAIL trials per grid key of ``space`` in ``study``."""
    from optuna.trial import TrialState

    keys = space.grid_keys()
    known = set(keys)
    status = GridStatus(keys, {}, {}, 0, {})
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            status.waiting += 1
            continue
        key = trial_key(t)
        if key is None or key not in known:
            continue
        if t.state == TrialState.COMPLETE:
            status.complete.setdefault(key, []).append(t.number)
        elif t.state == TrialState.RUNNING:
            status.running.setdefault(key, []).append(t.number)
        elif t.state == TrialState.FAIL:
            attrs = t.user_attrs
            if attrs.get("interrupted"):
                status.interrupted[key] = status.interrupted.get(key, 0) + 1
                continue
            status.failed[key] = status.failed.get(key, 0) + 1
            if attrs.get("collapsed"):
                status.collapsed[key] = str(attrs.get("failure_reason", "training collapsed"))
    return status


def owner_of(study: Any, number: int, key: str) -> Optional[int]:
    """Number of a trial that owns grid key ``key`` before trial ``number``: any COMPLETE one, or
    a RUNNING one with a smaller number (``None``: trial ``number`` may train it)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == number or trial_key(t) != key:
            continue
        if t.state == TrialState.COMPLETE or t.number < number:
            return t.number
    return None


# --------------------------------------------------------------------------------------------
# what a trial records


def start_attrs(config: Mapping[str, Any], version: Optional[str] = None, host: Optional[str] = None) -> Dict[str, Any]:
    """User attributes a trial records before training: its full config, where it ran, and each
    of :data:`SLICE_ATTRS` on its own."""
    attrs: Dict[str, Any] = {
        "config": jsonable(dict(config)),
        "run": {"seed": int(config.get("seed", 0)), "version": version or project_version(),
                "hostname": host or socket.gethostname(), "pid": os.getpid()},
    }
    for name in SLICE_ATTRS:
        attrs[name] = jsonable(config.get(name, _train_default(name)))
    if attrs["method"] == "full" and attrs["num_collisions"] is None:
        attrs["num_collisions"] = 1  # every category its own row (what figure 1 plots the full table at)
    return attrs


def _train_default(name: str) -> Any:
    """The :class:`dlrm.train.TrainConfig` default of field ``name`` (``None`` for other names), so
    that a trial records the value it trained with (numbers stay sortable in dashboards)."""
    import dataclasses

    from dlrm.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    return None


def end_attrs(metrics: Mapping[str, Any], wall_time_s: float) -> Dict[str, Any]:
    """User attributes a trial records after training: every metric (``metrics``), and the test
    metrics also on their own so that dashboards show them."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"objective returned {type(metrics).__name__}, expected a dict of metrics")
    missing = [m for m in REQUIRED_METRICS if m not in metrics]
    if missing:
        raise ValueError(f"objective's metrics lack {missing}; got {sorted(metrics)}")
    out = jsonable(dict(metrics))
    out["trial_wall_time_s"] = float(wall_time_s)
    attrs: Dict[str, Any] = {"metrics": out}
    for name in ("test_loss", "test_accuracy", "test_auc"):
        if name in out:
            attrs[name] = out[name]
    return attrs


def objective_values(metrics: Mapping[str, Any]) -> Tuple[float, float]:
    """The two objectives (embedding parameters, validation log loss) from a metrics dict."""
    params, loss = (float(metrics[m]) for m in REQUIRED_METRICS)
    return params, loss
