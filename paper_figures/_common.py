"""Shared plumbing of the figure scripts: loading a study's trials, saving figures, the CLI.

Figures of study ``S`` go to ``<results-dir>/figures/S/`` unless ``--out-dir`` says otherwise. A
figure whose study lacks its axis (figure 2 from a study with one threshold) raises
:class:`FigureSkipped`, which the command lines report in one line and do not count as an error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["trials_of", "save_figure", "write_csv", "script_main", "run_figure", "hidden_size", "METHOD_STYLE",
           "series_label", "log_params_axis", "require", "FigureSkipped", "seeds_phrase", "collisions_phrase",
           "figure_dir", "add_run_arguments", "draw_figure"]


class FigureSkipped(ValueError):
    """The study cannot feed this figure (it lacks the figure's axis or series): not an error of
    the study, the figure is skipped with this message."""


def figure_dir(results_dir: Union[str, os.PathLike], study: str) -> str:
    """``<results_dir>/figures/<study>``: where a study's figures go by default."""
    return os.path.join(os.fspath(results_dir), "figures", study)


def seeds_phrase(counts: Sequence[Any]) -> str:
    """The number of seeds behind each plotted point: ``"3 seeds"`` when every point has 3,
    ``"1–3 seeds per point"`` when they differ."""
    ns = sorted({int(n) for n in counts})
    if not ns:
        return "no seeds"
    if len(ns) == 1:
        return f"{ns[0]} seed{'s' if ns[0] != 1 else ''}"
    return f"{ns[0]}–{ns[-1]} seeds per point"


def collisions_phrase(values: Any) -> str:
    """``[4, 2, 8, 4]`` -> ``"collisions 2, 4, 8"`` (``""`` when there are none)."""
    cs = sorted({int(v) for v in values if v is not None and not (isinstance(v, float) and pd.isna(v))})
    if not cs:
        return ""
    return f"collisions {', '.join(str(c) for c in cs)}" if len(cs) > 1 else f"{cs[0]} collisions"

#: colours and markers per series, shared by the figures
METHOD_STYLE = {
    "full": dict(color="black", marker="*"),
    "hashing": dict(color="tab:red", marker="x"),
    "QR concat": dict(color="tab:blue", marker="s"),
    "QR add": dict(color="tab:green", marker="^"),
    "QR mult": dict(color="tab:purple", marker="o"),
}

#: the name of each method in the figures' legends and tables
_METHOD_NAMES = {"full": "full", "hash": "hashing", "qr": "QR", "gqr": "generalized QR", "crt": "Chinese remainder",
                 "path": "path-based", "md": "mixed dimension", "tt": "TT-Rec", "robe": "ROBE",
                 "freq": "frequency-aware", "cluster": "clustered (CCE)"}


def series_label(row: Any, with_k: bool = True) -> str:
    """The series a trial or table row belongs to: ``"full"``, ``"hashing"``, ``"QR mult"``,
    ``"generalized QR mult (k=3)"`` (``with_k``; else ``"generalized QR mult"``), ``"TT-Rec"`` ...
    (the keys of :data:`METHOD_STYLE` for full, hashing and QR)."""
    from compemb.options import OPERATION_METHODS

    method = str(row["method"])
    label = _METHOD_NAMES.get(method, method)
    op = row.get("operation")
    if method in OPERATION_METHODS and isinstance(op, str):
        label += f" {op}"
    k = row.get("k")
    if with_k and method in ("gqr", "crt") and k is not None and not (isinstance(k, float) and math.isnan(k)):
        label += f" (k={int(k)})"
    return label


def trials_of(study_or_df: Any, storage: Optional[str] = None) -> pd.DataFrame:
    """COMPLETE trials, one per grid point, as a DataFrame.

    Args:
        study_or_df: a DataFrame (from :func:`sweeps.results.trials_frame`), an
            :class:`optuna.Study`, or a study name (then ``storage`` is its URL).
    """
    from sweeps.results import drop_duplicate_trials, trials_frame

    if isinstance(study_or_df, pd.DataFrame):
        df = study_or_df
        if "state" in df.columns:
            df = df[df["state"] == "COMPLETE"]
        return drop_duplicate_trials(df.reset_index(drop=True))
    if isinstance(study_or_df, str):
        if storage is None:
            raise ValueError(f"study name {study_or_df!r} given without a storage URL")
        from sweeps.study import load_study

        study_or_df = load_study(storage, study_or_df)
    if not hasattr(study_or_df, "get_trials"):
        raise TypeError(f"expected a DataFrame, an optuna Study or a study name, got {type(study_or_df).__name__}")
    df = trials_frame(study_or_df, complete_only=True, dedupe=True)
    states: Dict[str, int] = {}
    for t in study_or_df.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    df.attrs["trial_states"] = states  # for the message when nothing is COMPLETE
    if df.attrs.get("duplicates_dropped"):
        print(f"note: dropped {df.attrs['duplicates_dropped']} duplicate COMPLETE trials (kept the first per grid point)",
              file=sys.stderr)
    return df


def hidden_size(value: Any) -> Optional[int]:
    """``"[32]"`` / ``[32]`` / ``(32,)`` -> 32 (the first hidden width), ``None`` when empty."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        value = json.loads(value)
    value = list(value)
    return int(value[0]) if value else None


def _count_label(x: float, _pos: Any = None) -> str:
    """5000 -> '5k', 2e6 -> '2M' (parameter counts on a log axis)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:g}{unit}"
    return f"{x:g}"


def log_params_axis(ax: Any, axis: str = "x") -> None:
    """A log-scale parameter axis without crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    # labels at 1, 2 and 5 x 10^k: some always fall inside even a narrow range
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=15))
    target.set_major_formatter(FuncFormatter(_count_label))
    target.set_minor_formatter(NullFormatter())


def save_figure(fig: Any, out_dir: Union[str, os.PathLike], stem: str, data: Optional[pd.DataFrame] = None,
                summary: Optional[pd.DataFrame] = None) -> Dict[str, Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` under ``out_dir`` and close it; with
    ``data`` / ``summary``, the frames behind it as ``<stem>.csv`` / ``<stem>_summary.csv``.

    Returns:
        ``{"png", "pdf"[, "csv"][, "summary_csv"]: path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / f"{stem}.png", "pdf": out / f"{stem}.pdf"}
    fig.savefig(paths["png"], dpi=150, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight")
    plt.close(fig)
    if data is not None:
        paths["csv"] = write_csv(data, out_dir, f"{stem}.csv")
    if summary is not None:
        paths["summary_csv"] = write_csv(summary, out_dir, f"{stem}_summary.csv")
    return paths


def write_csv(df: pd.DataFrame, out_dir: Union[str, os.PathLike], name: str) -> Path:
    """Write ``df`` (the data behind a figure) as ``out_dir/name``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    df.to_csv(path, index=False)
    return path


def require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when ``df`` has no rows or lacks ``columns``."""
    if len(df) == 0:
        states = df.attrs.get("trial_states")
        held = (" (the study holds " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
                if states else " (the study holds no trials)" if states is not None else "")
        raise ValueError(f"{what}: no COMPLETE trials to draw{held}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the trials lack columns {missing}; have {sorted(df.columns)}")


def script_main(argv: Optional[List[str]], make_figure: Callable, default_study: str, space_name: str,
                description: str, prog: str) -> int:
    """The command line of one figure script (``python -m paper_figures.figN_… --storage … --study …``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_run_arguments(p, default_study=default_study, space_name=space_name)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    paths = draw_figure(prog, make_figure, args, args.study, space_name)
    if isinstance(paths, int):
        return paths
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def add_run_arguments(p: argparse.ArgumentParser, default_study: Optional[str] = None,
                      space_name: Optional[str] = None) -> None:
    """The options that say where a figure's study is and how to run it (``--study``,
    ``--storage``, ``--results-dir``, ``--out-dir``, ``--run-missing``, ``--workers``, ``--seeds``,
    ``--set``, ``--objective``); ``default_study`` ``None``: each figure's own paper study."""
    from dlrm.argtypes import int_at_least

    p.add_argument("--study", default=default_study,
                   help=(f"study name (default {default_study})" if default_study is not None
                         else "one study for every figure (default: each figure's paper study)"))
    p.add_argument("--storage", default=None, help="database URL (default: sqlite results/<study>.db)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/figures/<study>")
    p.add_argument("--run-missing", action="store_true",
                   help=(f"run the {space_name!r} grid" if space_name is not None else "run a figure's grid")
                   + " into the study if it is missing or incomplete")
    p.add_argument("--workers", type=int_at_least(1), default=1)
    p.add_argument("--seeds", default=None, help="comma-separated seeds for --run-missing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training config field for --run-missing (JSON value)")
    p.add_argument("--objective", default=None, help="module:function for --run-missing")


def draw_figure(prog: str, make_figure: Callable, args: argparse.Namespace, study: str,
                space_name: Optional[str]) -> Union[Dict[str, Path], int]:
    """:func:`run_figure` as the options of :func:`add_run_arguments` say: the paths written, or
    the exit status after one line on stderr (``prog: skipped: ...`` 0, ``prog: error: ...`` 2,
    an interrupted sweep 130)."""
    from sweeps.cli import error_text
    from sweeps.runner import SweepInterrupted

    try:
        return run_figure(make_figure, study, args.storage, args.results_dir, args.out_dir,
                          run_missing=args.run_missing, space_name=space_name, workers=args.workers,
                          seeds=args.seeds, sets=args.set, objective=args.objective)
    except FigureSkipped as exc:
        print(f"{prog}: skipped: {exc}", file=sys.stderr)
        return 0
    except (KeyError, ValueError) as exc:
        print(f"{prog}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130


def run_figure(make_figure: Callable, study: str, storage: Optional[str], results_dir: str, out_dir: Optional[str],
               run_missing: bool = False, space_name: Optional[str] = None, workers: int = 1,
               seeds: Optional[str] = None, sets: Sequence[str] = (), objective: Optional[str] = None) -> Dict[str, Path]:
    """Draw ``make_figure`` from study ``study`` into ``out_dir`` (default
    ``<results_dir>/figures/<study>``), first running the grid ``space_name`` into it when
    ``run_missing`` (``seeds`` and ``sets`` as the ``--seeds`` / ``--set`` options; the sweep
    prints its progress)."""
    from sweeps.cli import parse_set
    from sweeps.runner import DEFAULT_OBJECTIVE, default_storage_url, load_study, run_sweep
    from sweeps.space import parse_seeds

    url = storage or default_storage_url(study, results_dir, create=run_missing)
    out = out_dir or figure_dir(results_dir, study)
    if run_missing:
        if space_name is None:
            raise ValueError("run_missing needs the space_name of the grid to run")
        rep = run_sweep(space_name, storage=url, study_name=study, objective=objective or DEFAULT_OBJECTIVE,
                        workers=workers, overrides=parse_set(list(sets)), seeds=parse_seeds(seeds),
                        results_dir=results_dir, show_progress=True, stream=sys.stderr)
        print(rep.summary(), file=sys.stderr)
        for note in rep.notes:
            print(note, file=sys.stderr)
    try:
        st = load_study(url, study)
    except KeyError as exc:
        raise KeyError(f"{exc.args[0]}; pass --run-missing to run the {space_name!r} grid") from None
    return make_figure(st, out)
