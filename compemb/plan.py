"""``compemb plan``: table sizes, parameters and compression of a partition plan.

For a list of embedding-table cardinalities, a dimension and a method (``full``, ``hash``, ``qr``,
``gqr``, ``crt``, ``path``, ``md``), print one row per feature (rows, classes per partition,
parameters before and after) and the totals with the compression ratio. Only tables with more
rows than ``--threshold`` are compressed (DLRM's ``--qr-threshold``); the others, and hash / qr /
path tables with no more rows than ``--collisions``, stay full tables (as
:func:`compemb.config.build_embedding_bag` does).

Example::

    compemb plan --criteo-kaggle --dim 16 --method qr --collisions 4 --threshold 200
    compemb plan --cardinalities sizes.txt --method crt --k 3
    compemb plan --criteo-kaggle --method md --alpha 0.3
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from compemb.options import METHODS, OPERATIONS, check_method
from compemb.partitions import HashPartition, PartitionFamily, family_for_method, naive
from compemb.path import path_family

#: The 26 categorical cardinalities of Criteo Kaggle after DLRM-style preprocessing
#: (sum 33,762,577; 540.2M parameters at D = 16).
CRITEO_KAGGLE_CARDINALITIES: Tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)


@dataclass(frozen=True)
class TablePlan:
    """The plan for one feature: its family and parameter counts."""

    name: str
    rows: int
    method: str  # the method actually applied ("full" when below the threshold)
    family: PartitionFamily
    params_before: int
    params_after: int
    note: str = ""


def plan_table(name: str, rows: int, dim: int, method: str, num_collisions: int = 4, k: int = 2,
               threshold: int = 0, operation: str = "mult", hidden_dims: Sequence[int] = (),
               md_dim: Optional[int] = None) -> TablePlan:
    """Plan one table; tables with ``rows <= threshold`` stay full.

    ``hidden_dims`` is for ``path`` (the per-class MLP's hidden sizes), ``md_dim`` for ``md`` (this
    table's width, e.g. from :func:`compemb.baselines.md_dims`; default ``dim``).

    Example::

        >>> plan_table("C3", 10131227, 16, "qr", num_collisions=4).family.table_sizes
        (4, 2532807)
    """
    check_method(method)
    before = rows * dim
    note = ""
    applied = method
    if method == "full" or rows <= threshold:
        family, applied = naive(rows), "full"
    elif method in ("hash", "qr", "path") and num_collisions >= rows:
        # one class for everything: nothing to gain (the modules fall back to a full table too)
        family, applied, note = naive(rows), "full", f"collisions {num_collisions} >= rows"
    elif method == "hash":
        family = PartitionFamily([HashPartition(rows, -(-rows // num_collisions))])
    elif method == "path":
        # the quotient indexes the base table, the remainder picks one map per class (weights
        # in*out per layer, biases for an MLP)
        family = path_family(rows, num_collisions)
        dims = (dim,) + tuple(hidden_dims) + (dim,)
        per_class = sum(a * b for a, b in zip(dims[:-1], dims[1:])) + (sum(dims[1:]) if hidden_dims else 0)
        after = family.table_sizes[0] * dim + family.table_sizes[1] * per_class
        return TablePlan(name, rows, applied, family, before, after, note)
    elif method == "md":
        width = dim if md_dim is None else md_dim
        if not 1 <= width <= dim:
            raise ValueError(f"md_dim must lie in [1, dim={dim}], got {md_dim!r}")
        family = naive(rows)
        after = rows * width + (dim * width if width < dim else 0)
        return TablePlan(name, rows, applied, family, before, after, f"dim {width}")
    else:  # qr, gqr, crt
        family = family_for_method(method, rows, num_collisions=num_collisions, k=k)
    op = operation if family.k > 1 else "mult"  # one table: the operation is irrelevant
    return TablePlan(name, rows, applied, family, before, family.num_parameters(dim, op), note)


def _read_cardinalities(path: str) -> List[int]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read cardinalities file {path!r}: {e.strerror}") from None
    values = []
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        for token in re.split(r"[,\s]+", line.strip()):
            if not token:
                continue
            if not re.fullmatch(r"[+-]?\d+", token):
                raise ValueError(f"{path}:{line_no}: cardinality {token!r} is not an integer")
            value = int(token)
            if value <= 0:
                raise ValueError(f"{path}:{line_no}: cardinality {value} must be positive")
            values.append(value)
    if not values:
        raise ValueError(f"cardinalities file {path!r} holds no cardinalities")
    return values


def _fmt(value: int) -> str:
    return f"{value:,}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compemb plan",
        description="Table sizes, parameters and compression of a partition plan.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--criteo-kaggle", action="store_true",
                        help="the 26 Criteo Kaggle cardinalities (DLRM preprocessing)")
    source.add_argument("--cardinalities", metavar="FILE",
                        help="file of table cardinalities, one per line or comma-separated")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension (default 16)")
    parser.add_argument("--method", choices=METHODS, default="qr", help="compression method (default qr)")
    parser.add_argument("--collisions", type=int, default=4,
                        help="qr: remainder table size; hash: rows per bucket (default 4)")
    parser.add_argument("--k", type=int, default=2, help="gqr/crt: number of partitions (default 2)")
    parser.add_argument("--threshold", type=int, default=200,
                        help="compress only tables with more rows than this (default 200, as DLRM)")
    parser.add_argument("--operation", choices=OPERATIONS, default="mult",
                        help="how the tables' rows combine (default mult)")
    parser.add_argument("--hidden-dims", default="", metavar="H1,H2,...",
                        help="path: hidden sizes of each per-class MLP (default none: linear maps)")
    parser.add_argument("--alpha", type=float, default=0.3,
                        help="md: temperature of the power rule (default 0.3)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``compemb plan``; prints the plan and returns 0 (2 on bad arguments)."""
    parser = _build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    for name in ("dim", "collisions", "k"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.threshold < 0:
        parser.error(f"--threshold must be non-negative, got {args.threshold}")
    hidden = []
    for token in filter(None, (t.strip() for t in args.hidden_dims.split(","))):
        if not re.fullmatch(r"\d+", token) or int(token) <= 0:
            parser.error(f"--hidden-dims must be positive integers, got {token!r}")
        hidden.append(int(token))
    if not (args.alpha >= 0 and args.alpha != float("inf")):
        parser.error(f"--alpha must be a finite number >= 0, got {args.alpha}")
    if args.operation == "concat" and args.method in ("qr", "gqr", "crt"):
        parts = 2 if args.method == "qr" else args.k
        if args.dim < parts:
            parser.error(f"--operation concat splits --dim {args.dim} among {parts} tables: need dim >= {parts}")
    if args.criteo_kaggle:
        cards = list(CRITEO_KAGGLE_CARDINALITIES)
        source = "Criteo Kaggle (26 features)"
    else:
        try:
            cards = _read_cardinalities(args.cardinalities)
        except ValueError as e:
            parser.error(str(e))
        source = f"{args.cardinalities} ({len(cards)} features)"

    md: Sequence[Optional[int]] = [None] * len(cards)
    if args.method == "md":
        from compemb.baselines import md_dims

        md = md_dims(cards, args.alpha, args.dim)
    plans = [
        plan_table(f"C{i + 1}", rows, args.dim, args.method, args.collisions, args.k,
                   args.threshold, args.operation, hidden, md[i])
        for i, rows in enumerate(cards)
    ]

    options = {"qr": f"collisions={args.collisions}", "hash": f"collisions={args.collisions}",
               "gqr": f"k={args.k}", "crt": f"k={args.k}", "full": "",
               "path": f"collisions={args.collisions} hidden_dims={tuple(hidden)}",
               "md": f"alpha={args.alpha}"}[args.method]
    print(f"compemb plan: {source}; dim={args.dim}; method={args.method} {options}; "
          f"threshold={args.threshold}; operation={args.operation}")
    header = ("feature", "rows", "method", "classes per partition", "params before", "params after")
    lines = []
    for p in plans:
        classes = " x ".join(_fmt(s) for s in p.family.table_sizes)
        lines.append((p.name, _fmt(p.rows), p.method + (f" ({p.note})" if p.note else ""), classes,
                      _fmt(p.params_before), _fmt(p.params_after)))
    total_rows = sum(p.rows for p in plans)
    before = sum(p.params_before for p in plans)
    after = sum(p.params_after for p in plans)
    compressed = sum(p.method != "full" for p in plans)
    footer = ("total", _fmt(total_rows), f"{compressed} compressed", "", _fmt(before), _fmt(after))
    widths = [max(len(row[i]) for row in [header, footer] + lines) for i in range(len(header))]
    align = ["<", ">", "<", ">", ">", ">"]

    def render(row):
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths))

    print(render(header))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(render(line))
    print("  ".join("-" * w for w in widths))
    print(render(footer))
    ratio = before / after
    print(f"compression ratio: {ratio:.2f}x ({_fmt(before)} -> {_fmt(after)} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
