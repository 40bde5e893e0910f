"""Figure 3: the path-based table — MLP hidden size against test loss and parameters.

Path-based composition (Shi et al. 2020, Section 4.2) at 4 collisions with one hidden layer of 16,
32, 64 or 128 units; operation-based QR (mult) at the same collisions as the reference row when the
study has it. Writes ``fig3_path_table.csv`` (the trials), ``fig3_path_table_summary.csv`` and
``fig3_path_table.md`` (the table), and ``fig3_path_table.{png,pdf}`` (loss against parameters).

Usage::

    python -m paper_figures.fig3_path_table --study paper-path [--storage URL] [--run-missing]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pandas as pd

from paper_figures._common import (FigureSkipped, collisions_phrase, hidden_size, log_params_axis, plt, require,
                                   save_figure, script_main, seeds_phrase, trials_of)

__all__ = ["make_figure", "select", "summarize", "to_markdown", "main", "STEM"]

STEM = "fig3_path_table"


def select(df: pd.DataFrame, collisions: int = 4) -> pd.DataFrame:
    """Path-based trials, plus QR-mult trials at the same collisions as a reference."""
    require(df, ["method", "embedding_params", "test_loss"], "figure 3")
    is_path = df["method"] == "path"
    ref = (df["method"] == "qr") & (df.get("operation") == "mult") & (df.get("num_collisions") == collisions)
    if "threshold" in df.columns and is_path.any():
        ref &= df["threshold"].isin(df.loc[is_path, "threshold"].unique())
    sel = df[is_path | ref].copy()
    sel["row"] = [
        f"path, hidden {hidden_size(h)}" if m == "path" else "QR mult (operation-based)"
        for m, h in zip(sel["method"], sel.get("hidden_dims", pd.Series([None] * len(sel), index=sel.index)))
    ]
    sel["hidden_size"] = [hidden_size(h) if m == "path" else None
                          for m, h in zip(sel["method"], sel.get("hidden_dims", [None] * len(sel)))]
    return sel.reset_index(drop=True)


def summarize(sel: pd.DataFrame) -> pd.DataFrame:
    agg = dict(n=("test_loss", "size"), embedding_params=("embedding_params", "mean"),
               test_loss_mean=("test_loss", "mean"), test_loss_std=("test_loss", "std"))
    if "test_accuracy" in sel.columns:
        agg.update(test_accuracy_mean=("test_accuracy", "mean"), test_accuracy_std=("test_accuracy", "std"))
    out = sel.groupby(["row"], dropna=False).agg(**agg).reset_index()
    out["hidden_size"] = out["row"].str.extract(r"hidden (\d+)")[0].astype(float)
    return out.sort_values(["hidden_size"], na_position="last").reset_index(drop=True)


def to_markdown(summary: pd.DataFrame) -> str:
    cols = ["method", "embedding params", "test loss (mean ± std)", "test accuracy (mean ± std)", "trials"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in summary.iterrows():
        acc = (f"{r['test_accuracy_mean']:.4f} ± {0 if pd.isna(r['test_accuracy_std']) else r['test_accuracy_std']:.4f}"
               if "test_accuracy_mean" in summary.columns else "")
        std = 0.0 if pd.isna(r["test_loss_std"]) else r["test_loss_std"]
        lines.append(f"| {r['row']} | {int(round(r['embedding_params'])):,} | {r['test_loss_mean']:.4f} ± {std:.4f} "
                     f"| {acc} | {int(r['n'])} |")
    return "\n".join(lines) + "\n"


def make_figure(study_or_df: Any, out_dir: Union[str, os.PathLike]) -> Dict[str, Path]:
    """Write the path-based table (CSV, Markdown) and its plot from a study into ``out_dir``."""
    sel = select(trials_of(study_or_df))
    if not (sel["method"] == "path").any():
        raise FigureSkipped("figure 3 (the path-based table) needs path-based trials and the study has none "
                            "(run the paper-path grid)")
    summary = summarize(sel)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    path = summary[summary["hidden_size"].notna()]
    coll = sel.get("num_collisions")
    path_c = collisions_phrase(coll[sel["method"] == "path"]) if coll is not None else ""
    ref_c = collisions_phrase(coll[sel["method"] != "path"]) if coll is not None else ""
    ax.errorbar(path["embedding_params"], path["test_loss_mean"], yerr=path["test_loss_std"].fillna(0.0),
                marker="o", capsize=3, label="path-based" + (f", {path_c}" if path_c else ""))
    for _, r in path.iterrows():
        ax.annotate(f"h={int(r['hidden_size'])}", (r["embedding_params"], r["test_loss_mean"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ref = summary[summary["hidden_size"].isna()]
    if len(ref):
        ax.errorbar(ref["embedding_params"], ref["test_loss_mean"], yerr=ref["test_loss_std"].fillna(0.0),
                    marker="s", ls="none", capsize=3, color="tab:purple",
                    label="QR mult (operation-based)" + (f", {ref_c}" if ref_c else ""))
    log_params_axis(ax)
    ax.set_xlabel("embedding parameters (log scale)")
    ax.set_ylabel("test log loss")
    ax.set_title(f"path-based composition: MLP hidden size\n(mean ± std over {seeds_phrase(summary['n'])})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths = save_figure(fig, out_dir, STEM, data=sel, summary=summary)
    md = Path(out_dir) / f"{STEM}.md"
    md.write_text(to_markdown(summary))
    paths["markdown"] = md
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    return script_main(argv, make_figure, "paper-path", "paper-path", __doc__.splitlines()[0],
                       "python -m paper_figures.fig3_path_table")


if __name__ == "__main__":
    sys.exit(main())
