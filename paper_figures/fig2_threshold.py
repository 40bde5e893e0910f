"""Figure 2: test loss against the size threshold at 4 collisions, per QR operation.

Only tables with more rows than the threshold are compressed (Shi et al. 2020, thresholds 1, 20,
200, 2000, 20000). Left: mean test loss over seeds (error bars: one standard deviation) against the
threshold; right: the embedding parameters this leaves (log scale). Writes
``fig2_threshold.{png,pdf}``, ``fig2_threshold.csv`` (the trials) and ``fig2_threshold_summary.csv``.

Usage::

    python -m paper_figures.fig2_threshold --study paper-thresholds [--storage URL] [--run-missing]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pandas as pd

from paper_figures._common import (METHOD_STYLE, FigureSkipped, log_params_axis, plt, require, save_figure,
                                   script_main, seeds_phrase, trials_of)

__all__ = ["make_figure", "select", "summarize", "main", "STEM", "COLLISIONS"]

STEM = "fig2_threshold"
COLLISIONS = 4


def select(df: pd.DataFrame, collisions: int = COLLISIONS) -> pd.DataFrame:
    """QR trials at ``collisions`` collisions (every threshold and operation)."""
    require(df, ["method", "embedding_params", "test_loss"], "figure 2")
    if "num_collisions" not in df.columns or "threshold" not in df.columns:
        return df.iloc[0:0].copy()
    keep = (df["method"] == "qr") & (df["num_collisions"] == collisions) & df["threshold"].notna()
    return df[keep].reset_index(drop=True)


def summarize(sel: pd.DataFrame) -> pd.DataFrame:
    g = sel.groupby(["operation", "threshold"])
    return g.agg(
        n=("test_loss", "size"),
        embedding_params=("embedding_params", "mean"),
        test_loss_mean=("test_loss", "mean"),
        test_loss_std=("test_loss", "std"),
    ).reset_index().sort_values(["operation", "threshold"]).reset_index(drop=True)


def make_figure(study_or_df: Any, out_dir: Union[str, os.PathLike]) -> Dict[str, Path]:
    """Draw figure 2 from a study (or its trials DataFrame) into ``out_dir``."""
    df = trials_of(study_or_df)
    sel = select(df)
    if sel.empty:
        raise FigureSkipped(f"figure 2 needs QR trials at {COLLISIONS} collisions over several thresholds and the "
                            "study has none (run the paper-thresholds grid)")
    thresholds = sorted(int(t) for t in sel["threshold"].unique())
    if len(thresholds) < 2:
        raise FigureSkipped(f"figure 2 needs at least two thresholds; the study's QR trials at {COLLISIONS} "
                            f"collisions all have threshold {thresholds[0]} (run the paper-thresholds grid)")
    summary = summarize(sel)
    fig, (ax, axp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for op, part in summary.groupby("operation"):
        style = METHOD_STYLE.get(f"QR {op}", {})
        name = f"QR {op}, {COLLISIONS} collisions"
        ax.errorbar(part["threshold"], part["test_loss_mean"], yerr=part["test_loss_std"].fillna(0.0),
                    label=name, capsize=3, **style)
        axp.plot(part["threshold"], part["embedding_params"], label=name, **style)
    full = df[df["method"] == "full"] if "method" in df.columns else df.iloc[0:0]
    if len(full):
        ax.axhline(full["test_loss"].mean(), color="black", ls="--", lw=0.8, label="full (mean)")
        axp.axhline(full["embedding_params"].mean(), color="black", ls="--", lw=0.8, label="full")
    ax.set_xscale("log")
    ax.set_xlabel("threshold (tables with more rows are compressed; log scale)")
    ax.set_ylabel("test log loss")
    ax.set_title(f"loss against threshold, {COLLISIONS} collisions\n(mean ± std over {seeds_phrase(summary['n'])})",
                 fontsize=10)
    axp.set_xscale("log")
    log_params_axis(axp, "y")
    axp.set_xlabel("threshold (log scale)")
    axp.set_ylabel("embedding parameters (log scale)")
    axp.set_title("parameters against threshold", fontsize=10)
    for a in (ax, axp):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    return save_figure(fig, out_dir, STEM, data=sel, summary=summary)


def main(argv: Optional[List[str]] = None) -> int:
    return script_main(argv, make_figure, "paper-thresholds", "paper-thresholds", __doc__.splitlines()[0],
                       "python -m paper_figures.fig2_threshold")


if __name__ == "__main__":
    sys.exit(main())
