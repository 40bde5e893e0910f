"""``compemb plan``: table sizes, parameters and compression of a partition plan.

For a list of embedding-table cardinalities, a dimension and a method (any of
:data:`compemb.options.METHODS`: ``full``, ``hash``, ``qr``, ``gqr``, ``crt``, ``path``, ``md``,
``tt``, ``robe``, ``freq``, ``cluster``), print one row per feature (rows, classes per partition,
parameters before and after) and the totals with the compression ratio. Only tables with more
rows than ``--threshold`` are compressed (DLRM's ``--qr-threshold``); the others, the
:data:`~compemb.options.COLLISION_METHODS` tables with no more rows than ``--collisions`` and
``freq`` tables with no more rows than ``--num-hot`` stay full tables (as
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

from compemb.compression import path_params_per_class
from compemb.config import cannot_compress_reason
from compemb.functional import check_int, check_num_embeddings
from compemb.options import METHODS, OPERATIONS, check_concat_width, check_method, num_tables
from compemb.partitions import HashPartition, PartitionFamily, family_for_method, naive
from compemb.path import path_family

#: The 26 categorical cardinalities of Criteo Kaggle after DLRM-style preprocessing
#: (sum 33,762,577; 540.2M parameters at D = 16).
CRITEO_KAGGLE_CARDINALITIES: Tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)

#: The 26 categorical cardinalities of Criteo Terabyte as DLRM trains it with
#: ``--max-ind-range=40000000`` (the MLPerf setting; facebookresearch/dlrm, tools/visualize.py).
CRITEO_TERABYTE_CARDINALITIES: Tuple[int, ...] = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10, 2208, 11938,
    155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
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
               md_dim: Optional[int] = None, tt_rank: int = 8, num_hot: Optional[int] = None) -> TablePlan:
    """Plan one table; tables with ``rows <= threshold`` stay full.

    ``hidden_dims`` is for ``path`` (the per-class MLP's hidden sizes), ``md_dim`` for ``md`` (this
    table's width, e.g. from :func:`compemb.baselines.md_dims`; default ``dim``), ``tt_rank`` for
    ``tt``, ``num_hot`` for ``freq`` (required there). ``tt``'s family is the digit family that
    indexes its cores, ``robe``'s the full table (its note gives the array size), ``cluster``'s
    the clustered family it is built with (the identity clusters, i.e. QR, before the first
    re-clustering). The parameter counts are those of the module
    :func:`compemb.config.build_embedding_bag` builds.

    Example::

        >>> plan_table("C3", 10131227, 16, "qr", num_collisions=4).family.table_sizes
        (4, 2532807)
    """
    check_method(method)
    # sizes of any integer type (numpy, 0-d tensors) as Python ints: no int64 overflow in rows * dim
    where = f"plan_table {name!r}"
    rows = check_num_embeddings("rows", rows, where)
    dim = check_int("dim", dim, 1, where)
    num_collisions = check_int("num_collisions", num_collisions, 1, where)
    k = check_int("k", k, 1, where)
    threshold = check_int("threshold", threshold, 0, where)
    hidden_dims = [check_int(f"hidden_dims[{i}]", h, 1, where) for i, h in enumerate(hidden_dims)]
    md_dim = None if md_dim is None else check_int("md_dim", md_dim, 1, where)
    check_concat_width(method, operation, dim, k, where)
    before = rows * dim
    note = ""
    applied = method
    if method == "full" or rows <= threshold:
        family, applied = naive(rows), "full"
    elif method == "freq" and num_hot is None:
        raise ValueError(f"{where}: method 'freq' needs num_hot")
    elif cannot_compress_reason(method, rows, num_collisions, num_hot) is not None:
        # nothing to gain (build_embedding_bag falls back to a full table too)
        family, applied = naive(rows), "full"
        note = f"num_hot {num_hot} >= rows" if num_collisions < rows else f"collisions {num_collisions} >= rows"
    elif method == "hash":
        family = PartitionFamily([HashPartition(rows, -(-rows // num_collisions))])
    elif method == "tt":
        from compemb.partitions import generalized_qr
        from compemb.tt import tt_num_parameters, tt_ranks, tt_shapes

        p_shapes, q_shapes = tt_shapes(rows, dim)
        after = tt_num_parameters(p_shapes, q_shapes, tt_ranks(tt_rank, len(p_shapes)))
        return TablePlan(name, rows, applied, generalized_qr(rows, radices=p_shapes), before, after, f"rank {tt_rank}")
    elif method == "robe":
        size = -(-rows * dim // num_collisions)
        return TablePlan(name, rows, applied, naive(rows), before, size, f"array {size:,}")
    elif method == "freq":
        from compemb.partitions import frequency_aware

        assert num_hot is not None
        family = frequency_aware(rows, num_hot, hot_ids=range(num_hot), num_collisions=num_collisions)
        note = f"{num_hot} hot"
    elif method == "cluster":
        from compemb.partitions import clustered

        family = clustered(rows, num_collisions)  # [cluster, rank]: QR before the first re-clustering
    elif method == "path":
        # the quotient indexes the base table, the remainder picks one map per class
        family = path_family(rows, num_collisions)
        after = family.table_sizes[0] * dim + family.table_sizes[1] * path_params_per_class(dim, hidden_dims)
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
    source.add_argument("--criteo-terabyte", action="store_true",
                        help="the 26 Criteo Terabyte cardinalities (DLRM --max-ind-range=40000000)")
    source.add_argument("--cardinalities", metavar="FILE",
                        help="file of table cardinalities, one per line or comma-separated")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension (default 16)")
    parser.add_argument("--method", choices=METHODS, default="qr", help="compression method (default qr)")
    parser.add_argument("--collisions", type=int, default=4,
                        help="qr/path/freq: remainder table size; hash: ids per bucket; cluster: cluster "
                             "capacity; robe: ids per parameter (default 4)")
    parser.add_argument("--k", type=int, default=2, help="gqr/crt: number of partitions (default 2)")
    parser.add_argument("--threshold", type=int, default=200,
                        help="compress only tables with more rows than this (default 200, as DLRM)")
    parser.add_argument("--operation", choices=OPERATIONS, default="mult",
                        help="qr/gqr/crt/freq/cluster: how the tables' rows combine (default mult)")
    parser.add_argument("--hidden-dims", default="", metavar="H1,H2,...",
                        help="path: hidden sizes of each per-class MLP (default none: linear maps)")
    parser.add_argument("--alpha", type=float, default=0.3,
                        help="md: temperature of the power rule (default 0.3)")
    parser.add_argument("--tt-rank", type=int, default=8, help="tt: the tensor-train rank (default 8)")
    parser.add_argument("--num-hot", type=int, default=None, help="freq: rows of their own for the most frequent ids")
    from compemb.distributed.planning import add_dry_run_arguments  # (imports no TorchRec)

    add_dry_run_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``compemb plan``; prints the plan and returns 0 (2 on bad arguments)."""
    parser = _build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    for name in ("dim", "collisions", "k", "tt_rank"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.num_hot is not None and args.num_hot <= 0:
        parser.error(f"--num-hot must be a positive integer, got {args.num_hot}")
    if args.method == "freq" and args.num_hot is None:
        parser.error("--method freq needs --num-hot")
    if args.threshold < 0:
        parser.error(f"--threshold must be non-negative, got {args.threshold}")
    hidden = []
    for token in filter(None, (t.strip() for t in args.hidden_dims.split(","))):
        if not re.fullmatch(r"\d+", token) or int(token) <= 0:
            parser.error(f"--hidden-dims must be positive integers, got {token!r}")
        hidden.append(int(token))
    if not (args.alpha >= 0 and args.alpha != float("inf")):
        parser.error(f"--alpha must be a finite number >= 0, got {args.alpha}")
    try:
        check_concat_width(args.method, args.operation, args.dim, args.k)
    except ValueError:
        parts = num_tables(args.method, args.k)
        parser.error(f"--operation concat splits --dim {args.dim} among {parts} tables: need dim >= {parts}")
    if args.criteo_kaggle:
        cards = list(CRITEO_KAGGLE_CARDINALITIES)
        source = "Criteo Kaggle (26 features)"
    elif args.criteo_terabyte:
        cards = list(CRITEO_TERABYTE_CARDINALITIES)
        source = "Criteo Terabyte (26 features, max-ind-range 40M)"
    else:
        try:
            cards = _read_cardinalities(args.cardinalities)
        except ValueError as e:
            parser.error(str(e))
        source = f"{args.cardinalities} ({len(cards)} features)"
    if args.world_size is not None:  # the TorchRec planner's dry run (compemb.distributed.planning)
        from compemb.distributed.planning import check_dry_run_arguments, run_dry_run

        problem = check_dry_run_arguments(args)
        if problem:
            parser.error(problem)
        return run_dry_run(cards, args, source)

    md: Sequence[Optional[int]] = [None] * len(cards)
    if args.method == "md":
        from compemb.baselines import md_dims

        md = md_dims(cards, args.alpha, args.dim)
    plans = [
        plan_table(f"C{i + 1}", rows, args.dim, args.method, args.collisions, args.k,
                   args.threshold, args.operation, hidden, md[i], tt_rank=args.tt_rank, num_hot=args.num_hot)
        for i, rows in enumerate(cards)
    ]

    options = {"qr": f"collisions={args.collisions}", "hash": f"collisions={args.collisions}",
               "gqr": f"k={args.k}", "crt": f"k={args.k}", "full": "",
               "path": f"collisions={args.collisions} hidden_dims={tuple(hidden)}",
               "md": f"alpha={args.alpha}", "tt": f"tt_rank={args.tt_rank}",
               "robe": f"collisions={args.collisions}", "cluster": f"collisions={args.collisions}",
               "freq": f"num_hot={args.num_hot} collisions={args.collisions}"}[args.method]
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
