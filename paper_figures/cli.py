"""``compemb figures``: regenerate the paper's figures from a study.

Usage::

    compemb figures                                  # each figure from its own paper study
    compemb figures --study demo                     # figures 1-4 from one study (5 is skipped)
    compemb figures fig1 fig4 --study paper-all --storage postgresql://...
    compemb figures fig1 --run-missing --seeds 0,1,2 # run the figure's grid first if needed

Figures land in a folder per study, ``<results-dir>/figures/<study>/`` (``--out-dir`` to change),
each as PNG, PDF and the CSV behind it. A figure whose study lacks its axis (figure 2 from a study
with one threshold) is skipped with a one-line message; that is not an error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = ["main", "FIGURES", "make_all"]

#: figure -> (module, default study / grid space)
FIGURES = {
    "fig1": ("paper_figures.fig1_collisions", "paper-collisions"),
    "fig2": ("paper_figures.fig2_threshold", "paper-thresholds"),
    "fig3": ("paper_figures.fig3_path_table", "paper-path"),
    "fig4": ("paper_figures.fig4_pareto", "paper-collisions"),
    "fig5": ("paper_figures.fig5_compression", "compression"),
}


def make_all(study_or_df: Any, out_dir: Union[str, os.PathLike], figures: Sequence[str] = tuple(FIGURES)) -> Dict[str, object]:
    """Draw ``figures`` from one study; returns ``{fig: paths dict, or "skipped: why" when the
    study lacks the figure's axis, or "error: why"}``."""
    from paper_figures._common import FigureSkipped

    out: Dict[str, object] = {}
    for name in figures:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; choose from {sorted(FIGURES)}")
        module = importlib.import_module(FIGURES[name][0])
        try:
            out[name] = module.make_figure(study_or_df, out_dir)
        except FigureSkipped as exc:
            out[name] = f"skipped: {exc}"
        except ValueError as exc:
            out[name] = f"error: {exc}"
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from paper_figures._common import add_run_arguments, draw_figure

    p = argparse.ArgumentParser(prog="compemb figures", description="regenerate the paper's figures from a study")
    p.add_argument("figures", nargs="*", default=[], help=f"which ({', '.join(FIGURES)}; default all)")
    add_run_arguments(p)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))

    names = args.figures or list(FIGURES)
    bad = [n for n in names if n not in FIGURES]
    if bad:
        print(f"compemb figures: error: unknown figure(s) {bad}; choose from {sorted(FIGURES)}", file=sys.stderr)
        return 2
    failures = 0
    for name in names:
        module_name, default = FIGURES[name]
        module = importlib.import_module(module_name)
        paths = draw_figure(name, module.make_figure, args, args.study or default,
                            space_name=default if args.study is None else args.study)
        if isinstance(paths, int):  # (skipped 0, error 2, interrupted 130)
            if paths == 130:
                return 130
            failures += paths != 0
            continue
        print(f"{name}: " + ", ".join(str(p) for p in paths.values()))
    return 0 if failures < len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
