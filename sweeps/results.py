"""A study's trials as a pandas DataFrame, and its export to CSV and Parquet.

One row per trial: ``number``, ``state``, the two objective values, ``grid_key``, ``point``,
``seed``, every config field (``method``, ``operation``, ``num_collisions``, ``threshold``, …),
every metric (``test_loss``, ``test_accuracy``, ``test_auc``, ``val_loss``, ``embedding_params``,
…), ``wall_time_s``, ``version``, ``hostname``, ``duplicate_of`` and the start / end times.

``complete_only=True`` keeps the COMPLETE trials; ``dedupe=True`` further keeps, per grid key, the
COMPLETE trial with the smallest number (the runner never lets two complete, but a study written
by another tool might) and records how many it dropped in ``frame.attrs["duplicates_dropped"]``.

Example::

    >>> df = trials_frame(study, complete_only=True)            # doctest: +SKIP
    >>> df.groupby("point")["test_loss"].agg(["mean", "std"])   # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["trials_frame", "export_study", "study_frame", "drop_duplicate_trials"]

_SKIP_ATTRS = {"config", "metrics", "tables", "run"}


def trials_frame(study: Any, complete_only: bool = False, dedupe: bool = False) -> pd.DataFrame:
    """The trials of ``study`` (an :class:`optuna.Study`) as a DataFrame (see the module doc)."""
    import pandas as pd
    from optuna.trial import TrialState

    rows: List[Dict[str, Any]] = []
    names = list(study.metric_names or ["value_0", "value_1"])
    for t in study.get_trials(deepcopy=False):
        if complete_only and t.state != TrialState.COMPLETE:
            continue
        attrs = t.user_attrs
        row: Dict[str, Any] = {
            "study": study.study_name,
            "number": t.number,
            "state": t.state.name,
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
            "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
        }
        for i, name in enumerate(names):
            row[f"objective_{name}"] = t.values[i] if t.values is not None and i < len(t.values) else None
        for key, value in (attrs.get("config") or {}).items():
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        for key, value in (attrs.get("metrics") or {}).items():
            if key in _SKIP_ATTRS:
                continue
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        for key, value in (attrs.get("run") or {}).items():
            row.setdefault(key, value)
        for key, value in attrs.items():
            if key in _SKIP_ATTRS or key in row:
                continue
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        for key, value in t.params.items():
            row.setdefault(key, value)
        row.setdefault("space", study.user_attrs.get("space"))
        if "grid_key" not in row and "point" in t.params and "seed" in t.params:
            row["grid_key"] = f"{t.params['point']}/s{t.params['seed']}"
        row["retry_of"] = t.system_attrs.get("failed_trial")
        rows.append(row)
    # a study without (matching) trials still gets its columns, so an export reads back as empty
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[
        "study", "number", "state", "datetime_start", "datetime_complete", "duration_s",
        *[f"objective_{n}" for n in names], "grid_key", "point", "seed", "retry_of"])
    if dedupe:
        return drop_duplicate_trials(df)
    df.attrs["duplicates_dropped"] = 0
    return df


def drop_duplicate_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Keep, per grid key, the COMPLETE trial with the smallest number (no ``state`` column: every
    row counts as COMPLETE); rows of other states and rows without a grid key stay.
    ``attrs["duplicates_dropped"]`` says how many rows went."""
    import pandas as pd

    dropped = 0
    if len(df) and {"grid_key", "number"} <= set(df.columns):
        keyed = df["grid_key"].notna()
        if "state" in df.columns:
            keyed &= df["state"] == "COMPLETE"
        first = df[keyed].sort_values("number").drop_duplicates("grid_key", keep="first")
        dropped = int(keyed.sum() - len(first))
        df = pd.concat([df[~keyed], first]).sort_values("number").reset_index(drop=True)
    df.attrs["duplicates_dropped"] = dropped
    return df


def study_frame(storage: str, study_name: str, complete_only: bool = True, dedupe: bool = True) -> pd.DataFrame:
    """:func:`trials_frame` of the study ``study_name`` in the storage URL ``storage``."""
    from sweeps.study import load_study

    return trials_frame(load_study(storage, study_name), complete_only=complete_only, dedupe=dedupe)


def export_study(storage: str, study_name: str, out_dir: os.PathLike | str) -> Dict[str, Path]:
    """Write every trial of the study to ``<out_dir>/<study>.csv`` and ``<study>.parquet``.

    Returns:
        ``{"csv": path, "parquet": path}``.
    """
    df = study_frame(storage, study_name, complete_only=False, dedupe=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{study_name}.csv"
    pq_path = out / f"{study_name}.parquet"
    df.to_csv(csv_path, index=False)
    # Parquet needs one type per column: mixed object columns become strings
    pq_df = df.copy()
    for col in pq_df.columns:
        if pq_df[col].dtype == object:
            kinds = {type(v) for v in pq_df[col].dropna()}
            if len(kinds) > 1:
                pq_df[col] = pq_df[col].map(lambda v: None if v is None else str(v))
    pq_df.to_parquet(pq_path, index=False)
    return {"csv": csv_path, "parquet": pq_path}
