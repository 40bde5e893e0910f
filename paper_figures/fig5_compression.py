"""Figure 5: test AUC against embedding parameters at equal memory, for every compressed method.

From a study of the ``compression`` space (every compressed method with its size chosen for
``compression = R``, ``R`` in 4, 16, 64, and the full model, over seeds): one series per method
(mean test AUC over seeds, error bars one standard deviation, at the mean embedding parameters of
its ``R = 4, 16, 64`` runs), the full model as a horizontal line (its band one standard deviation)
and a dashed line at 0.995x its AUC. Writes ``fig5_compression.{png,pdf}``, the trials as
``fig5_compression.csv`` and the table per method and ratio as ``fig5_compression_summary.csv``.

:func:`compression_table` is that table; :func:`chosen_configuration` picks, among the
configurations whose compressed tables hold at least ``min_ratio`` times fewer parameters, the one
with the best mean *validation* AUC (the sweep's choice, not the test set's) and says whether its
test AUC reaches ``0.995x`` the full model's.

Usage::

    compemb sweep run --space compression --study compression-movielens
    python -m paper_figures.fig5_compression --study compression-movielens
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import pandas as pd

from paper_figures._common import (FigureSkipped, log_params_axis, plt, require, save_figure, script_main,
                                   series_label, trials_of)

__all__ = ["make_figure", "compression_table", "chosen_configuration", "method_label", "main", "STEM",
           "GOAL_RATIO", "GOAL_FRACTION"]

STEM = "fig5_compression"
#: the goal of issue 13: at least this many times fewer parameters in the compressed tables ...
GOAL_RATIO = 16.0
#: ... at no less than this fraction of the full model's test AUC
GOAL_FRACTION = 0.995

_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "*"]


def method_label(row: Mapping[str, Any]) -> str:
    """``"QR mult"``, ``"generalized QR mult (k=3)"``, ``"TT-Rec"`` ... for a trial or table row
    (:func:`paper_figures._common.series_label`)."""
    return series_label(row)


def _trials(study_or_df: Any) -> pd.DataFrame:
    df = trials_of(study_or_df)
    require(df, ["method", "embedding_params", "test_auc", "val_auc"], "figure 5")
    if "compression" not in df.columns or df["compression"].isna().all():
        raise FigureSkipped("figure 5 needs trials with a compression ratio (the 'compression' space)")
    if not (df["method"] == "full").any():
        raise FigureSkipped("figure 5 needs the full model's trials (its horizontal line)")
    df = df[df["test_auc"].notna()].copy()
    df["series"] = df.apply(method_label, axis=1)
    df["ratio"] = df["compression"].where(df["method"] != "full")
    return df


def compression_table(study_or_df: Any) -> pd.DataFrame:
    """Mean and standard deviation over seeds per method and ratio ``R`` (the full model first).

    Columns: ``series``, ``method``, ``ratio`` (``R``; empty for full), ``seeds``, ``test_auc_mean``,
    ``test_auc_std``, ``val_auc_mean``, ``embedding_params`` (mean), ``compressed_params`` and
    ``compression_achieved`` (the compressed tables' parameters and their full size over them, where
    recorded), ``auc_vs_full`` (``test_auc_mean`` over the full model's).
    """
    return _table(_trials(study_or_df))


def _table(trials: pd.DataFrame) -> pd.DataFrame:
    """:func:`compression_table` of the frame :func:`_trials` prepared."""
    df = trials.assign(ratio_key=trials["ratio"].fillna(0.0))
    agg: Dict[str, Any] = {"seeds": ("test_auc", "size"), "test_auc_mean": ("test_auc", "mean"),
                           "test_auc_std": ("test_auc", "std"), "val_auc_mean": ("val_auc", "mean"),
                           "embedding_params": ("embedding_params", "mean")}
    for col in ("compressed_params", "compression_achieved"):
        if col in df.columns:
            agg[col] = (col, "mean")
    table = df.groupby(["series", "method", "ratio_key"], as_index=False).agg(**agg)
    table["ratio"] = table["ratio_key"].where(table["ratio_key"] > 0)
    table = table.drop(columns="ratio_key")
    full_auc = float(table.loc[table["method"] == "full", "test_auc_mean"].iloc[0])
    table["auc_vs_full"] = table["test_auc_mean"] / full_auc
    table["test_auc_std"] = table["test_auc_std"].fillna(0.0)
    order = table["method"].map(lambda m: -1 if m == "full" else 0)
    return (table.assign(_o=order).sort_values(["_o", "ratio", "series"]).drop(columns="_o")
            .reset_index(drop=True))


def chosen_configuration(study_or_df: Any, min_ratio: float = GOAL_RATIO,
                         fraction: float = GOAL_FRACTION) -> Dict[str, Any]:
    """The sweep's choice at ``>= min_ratio`` times fewer parameters in the compressed tables.

    Among the method-and-ratio configurations whose achieved ratio (``compression_achieved``, else
    the asked ``R``) is at least ``min_ratio``, the one with the best mean validation AUC.

    Returns:
        ``{"series", "ratio", "compression_achieved", "val_auc_mean", "test_auc_mean",
        "test_auc_std", "full_test_auc", "auc_vs_full", "reached"}`` (``reached``: its test AUC is
        at least ``fraction`` times the full model's), or ``{"series": None, "reached": False}``
        when no configuration is that small.
    """
    table = compression_table(study_or_df)
    full_auc = float(table.loc[table["method"] == "full", "test_auc_mean"].iloc[0])
    small = table[table["method"] != "full"].copy()
    achieved = small["compression_achieved"] if "compression_achieved" in small.columns else small["ratio"]
    small = small[achieved.fillna(small["ratio"]) >= min_ratio]
    if small.empty:
        return {"series": None, "reached": False, "full_test_auc": full_auc}
    best = small.sort_values(["val_auc_mean", "series"], ascending=[False, True]).iloc[0]
    return {
        "series": str(best["series"]),
        "ratio": float(best["ratio"]),
        "compression_achieved": float(best.get("compression_achieved", best["ratio"])),
        "val_auc_mean": float(best["val_auc_mean"]),
        "test_auc_mean": float(best["test_auc_mean"]),
        "test_auc_std": float(best["test_auc_std"]),
        "full_test_auc": full_auc,
        "auc_vs_full": float(best["test_auc_mean"]) / full_auc,
        "reached": float(best["test_auc_mean"]) >= fraction * full_auc,
    }


def make_figure(study_or_df: Any, out_dir: Union[str, os.PathLike], stem: str = STEM,
                title: Optional[str] = None) -> Dict[str, Path]:
    """Draw test AUC against embedding parameters per method into ``out_dir`` (see the module doc)."""
    df = _trials(study_or_df)
    table = _table(df)
    full = table[table["method"] == "full"].iloc[0]
    fig, ax = plt.subplots(figsize=(10.0, 5.0))
    cmap = plt.get_cmap("tab10")
    series = [s for s in table["series"].unique() if s != "full"]
    for i, name in enumerate(series):
        part = table[table["series"] == name].sort_values("embedding_params")
        ax.errorbar(part["embedding_params"], part["test_auc_mean"], yerr=part["test_auc_std"], color=cmap(i % 10),
                    marker=_MARKERS[i % len(_MARKERS)], ms=5, lw=1.2, capsize=2, label=name)
    mean, std = float(full["test_auc_mean"]), float(full["test_auc_std"])
    ax.axhline(mean, color="black", lw=1.5, label=f"full model ({full['embedding_params']:,.0f} parameters)")
    if std > 0:
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, lw=0)
    ax.axhline(GOAL_FRACTION * mean, color="black", lw=1.0, ls="--", label=f"{GOAL_FRACTION}x full")
    log_params_axis(ax)
    ax.set_xlabel("embedding parameters, all tables (log scale; each method at compression 4, 16, 64x of its "
                  "compressed tables)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    seeds = sorted({int(n) for n in table["seeds"]})
    dataset = df["dataset"].iloc[0] if "dataset" in df.columns else "?"
    ax.set_title(title or f"Equal-memory comparison on {dataset} ({'/'.join(map(str, seeds))} seeds per point)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    keep: List[str] = [c for c in ("number", "point", "seed", "series", "method", "operation", "k", "compression",
                                   "threshold", "embedding_params", "compressed_params", "compression_achieved",
                                   "val_auc", "test_auc", "test_loss", "dataset") if c in df.columns]
    return save_figure(fig, out_dir, stem, data=df[keep], summary=table)


def main(argv: Optional[List[str]] = None) -> int:
    return script_main(argv, make_figure, "compression", "compression", __doc__.splitlines()[0],
                       "python -m paper_figures.fig5_compression")


if __name__ == "__main__":
    sys.exit(main())
