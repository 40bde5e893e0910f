"""Figure 4: the Pareto front of embedding parameters against validation loss, over every method.

Every COMPLETE trial is a point (embedding parameters on a log scale, validation log loss — the
sweep's two objectives), coloured by method; the non-dominated trials are joined as the front.
Writes ``fig4_pareto.{png,pdf}`` and ``fig4_pareto.csv`` (every trial, with ``on_front``).

Usage::

    python -m paper_figures.fig4_pareto --study paper-collisions [--storage URL] [--run-missing]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union, Mapping

import numpy as np

from paper_figures._common import (METHOD_STYLE, collisions_phrase, log_params_axis, plt, require, save_figure,
                                   script_main, series_label, trials_of)

__all__ = ["make_figure", "pareto_mask", "label", "main", "STEM"]

STEM = "fig4_pareto"


def pareto_mask(params: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point dominates (both objectives minimised)."""
    params = np.asarray(params, dtype=float)
    loss = np.asarray(loss, dtype=float)
    n = len(params)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = (params <= params[i]) & (loss <= loss[i]) & ((params < params[i]) | (loss < loss[i]))
        mask[i] = not dominated.any()
    return mask


def label(row: Mapping[str, Any]) -> str:
    """A trial's series: :func:`paper_figures._common.series_label` without gqr's / crt's ``k``."""
    return series_label(row, with_k=False)


def make_figure(study_or_df: Any, out_dir: Union[str, os.PathLike], objective: str = "val_loss") -> Dict[str, Path]:
    """Draw the Pareto front of ``embedding_params`` against ``objective`` into ``out_dir``."""
    df = trials_of(study_or_df)
    require(df, ["method", "embedding_params", objective], "figure 4")
    df = df[df[objective].notna() & df["embedding_params"].notna()].copy()
    if df.empty:
        raise ValueError("figure 4: the study has no COMPLETE trials")
    df["series"] = df.apply(label, axis=1)
    df["on_front"] = pareto_mask(df["embedding_params"].to_numpy(), df[objective].to_numpy())
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, (series, part) in enumerate(sorted(df.groupby("series"), key=lambda kv: kv[0])):
        style = METHOD_STYLE.get(series, {"color": cmap(i % 10), "marker": "D"})
        counts = collisions_phrase(part["num_collisions"]) if "num_collisions" in part.columns else ""
        name = f"{series} ({counts})" if counts and series != "full" else series
        ax.scatter(part["embedding_params"], part[objective], s=20, alpha=0.75, label=name, **style)
    front = df[df["on_front"]].sort_values("embedding_params")
    ax.step(front["embedding_params"], front[objective], where="post", color="black", lw=1.2, label="Pareto front")
    log_params_axis(ax)
    ax.set_xlabel("embedding parameters (log scale)")
    ax.set_ylabel("validation log loss" if objective == "val_loss" else objective)
    ax.set_title(f"Pareto front over every method ({len(df)} trials, {int(df['on_front'].sum())} on the front)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out_dir, STEM, data=df)


def main(argv: Optional[List[str]] = None) -> int:
    return script_main(argv, make_figure, "paper-collisions", "paper-collisions", __doc__.splitlines()[0],
                       "python -m paper_figures.fig4_pareto")


if __name__ == "__main__":
    sys.exit(main())
