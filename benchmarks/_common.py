"""Output helpers shared by the benchmark scripts (imported as ``_common``: the scripts' folder is on
``sys.path`` when one runs)."""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Sequence


def write_csv(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the keys of the first) to the CSV file ``path``, making its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def criteo_kaggle_scaled(scale: int) -> List[int]:
    """The 26 Criteo Kaggle cardinalities (``compemb.plan.CRITEO_KAGGLE_CARDINALITIES``), each divided
    by ``scale`` and rounded up (at least 1 row)."""
    from compemb.plan import CRITEO_KAGGLE_CARDINALITIES

    return [max(1, -(-n // scale)) for n in CRITEO_KAGGLE_CARDINALITIES]


def print_table_header(title: str, header: str) -> None:
    """Print ``title``, then a table's column ``header`` above a rule as wide as it."""
    print(title)
    print(header)
    print("-" * len(header))


def markdown_rule(header: str) -> str:
    """The rule under a markdown table's ``header`` line (``| a | b |``): dashes as wide as each cell."""
    return "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"
