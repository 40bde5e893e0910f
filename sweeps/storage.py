"""Where a sweep lives: database URLs and the Optuna RDB storage with heartbeat and retries.

Storage is any Optuna RDB URL: SQLite under ``results/`` by default (nothing to install), or
``postgresql://…`` so that workers on many machines share one study. A worker that dies mid-trial
stops beating; the next worker to look marks its trial FAIL and a retry of it is enqueued.

Example::

    >>> url = default_storage_url("demo", tmp_path)              # doctest: +SKIP
    >>> storage = make_storage(url, heartbeat_interval=10)       # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

__all__ = ["default_storage_url", "make_storage", "redact_url", "quiet_optuna", "sqlite_path"]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning / FutureWarning for the features the sweeps rely on
    on purpose (heartbeat, stale-trial retry, metric names)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def default_storage_url(study_name: str, results_dir: os.PathLike | str = "results", create: bool = True) -> str:
    """``sqlite:////abs/results/<study>.db`` (four slashes: an absolute path); creates the folder
    unless ``create=False`` (for commands that only read a study)."""
    if not study_name or "/" in study_name or study_name.startswith("."):
        raise ValueError(f"study name must be a plain file name, got {study_name!r}")
    folder = Path(results_dir).resolve()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (study_name + '.db')}"


def sqlite_path(url: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URL (``None`` for other URLs and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    rest = url.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:].split("?", 1)[0])


def make_storage(url: str, heartbeat_interval: Optional[int] = 10, grace_period: Optional[int] = None,
                 max_retry: int = 3, must_exist: bool = False) -> Any:
    """An :class:`optuna.storages.RDBStorage` with heartbeat and retry of failed trials.

    Args:
        url: SQLAlchemy URL (``sqlite:///…``, ``postgresql://…``).
        heartbeat_interval: seconds between heartbeats of a running trial; ``None`` disables them.
        grace_period: seconds without a heartbeat after which a trial counts as dead
            (default ``2 * heartbeat_interval``).
        max_retry: retries of a dead worker's trial.
        must_exist: refuse (``KeyError``) a SQLite file that does not exist rather than create
            it (for commands that only read, so that a typo leaves no empty database behind).

    Raises:
        ValueError: the URL cannot be opened (unknown scheme, missing driver, unreachable
            server, unwritable path), naming it with its password redacted.
    """
    import optuna

    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"storage must be a database URL such as sqlite:////abs/path.db, got {url!r}")
    path = sqlite_path(url)
    if must_exist and path is not None and not path.is_file():
        raise KeyError(f"no storage at {url}: the file {path} does not exist")
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise ValueError(f"heartbeat_interval must be >= 1 second, got {heartbeat_interval!r}")
    if max_retry < 0:
        raise ValueError(f"max_retry must be >= 0, got {max_retry!r}")
    given, url = url, _with_driver(url)
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
            with quiet_optuna():
                kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=max_retry)
        else:  # pragma: no cover - older optuna
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)
    storage = _open(url, given, engine_kwargs, kwargs)
    if url.startswith("sqlite"):
        _sqlite_wal(storage)
    return storage


def _open(url: str, given: str, engine_kwargs: Dict[str, Any], kwargs: Dict[str, Any]) -> Any:
    """``RDBStorage(url)``, its failures as one ``ValueError`` line naming the URL as the user
    gave it (``given``), password redacted."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise ValueError(f"cannot open storage {redact_url(given)}: the folder {path.parent} does not exist")
    try:
        with quiet_optuna():
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        reason = getattr(exc, "orig", None) or exc
        first = next((line.strip() for line in str(reason).splitlines() if line.strip()), type(reason).__name__)
        password = _password(given)
        if password:
            first = first.replace(password, "***")
        raise ValueError(f"cannot open storage {redact_url(given)}: {first}") from None


def _sqlite_wal(storage: Any) -> None:
    """Write-ahead log and ``synchronous=NORMAL`` on SQLite: one fsync per checkpoint rather than
    per commit (each trial commits a dozen times), still safe across process kills."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
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
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _password(url: str) -> Optional[str]:
    if "@" in url and "://" in url:
        cred = url.split("://", 1)[1].rsplit("@", 1)[0]
        if ":" in cred:
            return cred.split(":", 1)[1] or None
    return None


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url
