"""Figure 1: test loss and accuracy against embedding parameters, hashing vs QR concat/add/mult.

The paper's main figure (Shi et al. 2020, Fig. 3): over the collision grid (2-7 and 60), each
method's mean test loss and accuracy over seeds (error bars: one standard deviation) against its
number of embedding parameters (log scale), with the full table as the reference. Writes
``fig1_collisions.{png,pdf}``, ``fig1_collisions.csv`` (the trials behind it, one row per trial)
and ``fig1_collisions_summary.csv`` (the plotted means and deviations).

Usage::

    python -m paper_figures.fig1_collisions --study paper-collisions [--storage URL] [--run-missing]

Example::

    >>> from paper_figures.fig1_collisions import make_figure
    >>> paths = make_figure(study, "results/figures")   # doctest: +SKIP
    >>> sorted(paths)                                    # doctest: +SKIP
    ['csv', 'pdf', 'png', 'summary_csv']
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pandas as pd

from paper_figures._common import (METHOD_STYLE, FigureSkipped, collisions_phrase, log_params_axis, plt, require,
                                   save_figure, script_main, seeds_phrase, series_label, trials_of)

__all__ = ["make_figure", "select", "summarize", "main", "STEM", "FigureSkipped"]

STEM = "fig1_collisions"
_POINT = re.compile(r"^(full|hash-c\d+|qr-(concat|add|mult)-c\d+)$")




def select(df: pd.DataFrame) -> pd.DataFrame:
    """The trials of figure 1: full, hashing and operation-based QR of the collision grid."""
    require(df, ["method", "embedding_params", "test_loss", "test_accuracy"], "figure 1")
    if "point" in df.columns and df["point"].notna().any():
        keep = df["point"].astype(str).str.match(_POINT)
    else:  # an open search: every full / hash / qr trial
        keep = df["method"].isin(["full", "hash", "qr"])
    out = df[keep].copy()
    out["series"] = out.apply(series_label, axis=1)
    if "num_collisions" not in out.columns:
        out["num_collisions"] = None
    out.loc[out["method"] == "full", "num_collisions"] = 1
    return out.reset_index(drop=True)


def summarize(sel: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (series, collisions)."""
    g = sel.groupby(["series", "num_collisions"], dropna=False)
    out = g.agg(
        n=("test_loss", "size"),
        embedding_params=("embedding_params", "mean"),
        test_loss_mean=("test_loss", "mean"),
        test_loss_std=("test_loss", "std"),
        test_accuracy_mean=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
    ).reset_index()
    if "test_auc" in sel.columns:
        auc = g.agg(test_auc_mean=("test_auc", "mean"), test_auc_std=("test_auc", "std")).reset_index(drop=True)
        out = pd.concat([out, auc], axis=1)
    return out.sort_values(["series", "embedding_params"]).reset_index(drop=True)


def make_figure(study_or_df: Any, out_dir: Union[str, os.PathLike]) -> Dict[str, Path]:
    """Draw figure 1 from a study (or its trials DataFrame) into ``out_dir``."""
    sel = select(trials_of(study_or_df))
    if sel.empty:
        raise FigureSkipped("figure 1 needs the collision grid (full, hash-cN, qr-OP-cN points) and the study "
                            "has none of its trials (run the paper-collisions grid)")
    compressed = sel[sel["series"] != "full"]["num_collisions"].dropna().unique()
    if len(compressed) < 2:
        at = f"all at {collisions_phrase(compressed)}" if len(compressed) else "none"
        raise FigureSkipped(f"figure 1 needs at least two collision counts; the study's hashing / QR trials are "
                            f"{at} (run the paper-collisions grid)")
    summary = summarize(sel)
    labels = {series: series if series == "full" else f"{series} ({collisions_phrase(part['num_collisions'])})"
              for series, part in summary.groupby("series")}
    # offsets per series so that the counts of series at the same parameters stay readable
    offsets = {"hashing": (3, 3), "QR concat": (3, -8), "QR add": (-9, 3), "QR mult": (-9, -8)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "test_loss", "test log loss"), (axes[1], "test_accuracy", "test accuracy")):
        for series, part in summary.groupby("series"):
            style = METHOD_STYLE.get(series, {})
            std = part[f"{metric}_std"].fillna(0.0)
            if series == "full":
                ax.axhline(part[f"{metric}_mean"].iloc[0], color="black", ls="--", lw=0.8)
            ax.errorbar(part["embedding_params"], part[f"{metric}_mean"], yerr=std, label=labels[series], capsize=3,
                        ms=6, lw=1.2, ls="none" if series == "full" else "-", **style)
        for _, row in summary[summary["series"] != "full"].iterrows():
            ax.annotate(f"{int(row['num_collisions'])}", (row["embedding_params"], row[f"{metric}_mean"]),
                        textcoords="offset points", xytext=offsets.get(row["series"], (3, 3)), fontsize=6,
                        color=METHOD_STYLE.get(row["series"], {}).get("color", "gray"))
        log_params_axis(ax)
        ax.set_xlabel("embedding parameters (log scale)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Loss and accuracy against parameters over the collision grid "
                 f"(mean ± std over {seeds_phrase(summary['n'])}; numbers: collisions)", fontsize=10)
    return save_figure(fig, out_dir, STEM, data=sel, summary=summary)


def main(argv: Optional[List[str]] = None) -> int:
    return script_main(argv, make_figure, "paper-collisions", "paper-collisions", __doc__.splitlines()[0],
                       "python -m paper_figures.fig1_collisions")


if __name__ == "__main__":
    sys.exit(main())
