"""``compemb plan --world-size W``: TorchRec's sharding planner as a dry run, per method.

For a list of cardinalities, every method (``full`` and each compressed one) is built as a
:class:`ShardableEmbeddingBagCollection` on the meta device (no memory, no devices) and planned
by TorchRec's ``EmbeddingShardingPlanner`` for a topology of ``W`` GPUs (``compute_device="cuda"``,
``--hbm-gb`` each, 8 per host). Printed per method: the sharding chosen (sharding type -> number
of component tables; ``replicated`` = kept out of TorchRec), weight memory per rank (the largest
rank and the mean), and the estimated bytes each rank moves per training step:

* **all-to-all** (TorchRec's input and output distribution), per rank and step, summed over the
  TorchRec features ``phi`` (rewritten features) with local batch ``B``, width ``d`` and pooling
  factor ``p``: indices ``B p 8`` bytes (times the column shards for column-wise), plus twice
  (forward values, backward gradients) the looked-up vectors: ``B d 4`` for a pooled feature
  (times the row shards ``R`` for row-wise / table-row-wise: partial sums are reduce-scattered),
  ``B p d 4`` for a per-index feature; 0 for data-parallel tables.
* **allreduce** of the embedding parameters replicated on every rank (tables kept out of TorchRec,
  md projections, path maps, data-parallel tables): ``2 (W-1)/W x bytes`` per rank (ring); the
  MLPs' allreduce is the same for every method and left out.

Weights only (fp32): optimizer state and activations come on top. ``--pooling-factor`` (default
1, one-hot as Criteo) drives the lookup choice and the planner.

Nothing here imports TorchRec until a plan is asked for, so ``compemb plan`` stays quick.
"""
from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["add_dry_run_arguments", "check_dry_run_arguments", "dry_run", "MethodPlan", "TablePlacement", "print_dry_run",
           "run_dry_run", "DRY_RUN_METHODS"]

#: the planner's topology defaults: GPUs per host, HBM per GPU (GB)
LOCAL_WORLD_SIZE = 8
HBM_GB = 80.0

_SHORT = {"table_wise": "TW", "row_wise": "RW", "column_wise": "CW", "table_row_wise": "TWRW",
          "table_column_wise": "TWCW", "data_parallel": "DP", "grid_shard": "GRID", "replicated": "replicated"}


@dataclass(frozen=True)
class TablePlacement:
    """Where one component table went: TorchRec sharding type (or ``"replicated"``) and shards."""

    feature: str
    table: str
    rows: int
    dim: int
    lookup: str
    sharding_type: str
    ranks: Tuple[int, ...]
    shard_rows: Tuple[int, ...] = ()
    shard_cols: Tuple[int, ...] = ()


@dataclass
class MethodPlan:
    """The dry-run plan of one method."""

    method: str
    world_size: int
    parameters: int
    tables: List[TablePlacement] = field(default_factory=list)
    bytes_per_rank: List[float] = field(default_factory=list)
    all_to_all_bytes: float = 0.0
    allreduce_bytes: float = 0.0

    def sharding_summary(self) -> str:
        counts = Counter(_SHORT.get(t.sharding_type, t.sharding_type) for t in self.tables)
        order = ["TW", "CW", "RW", "TWRW", "TWCW", "GRID", "DP", "replicated"]
        return ", ".join(f"{k} {counts[k]}" for k in order if counts.get(k))


def add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compemb plan`` flags of the dry run (``--world-size`` turns it on)."""
    group = parser.add_argument_group("sharding dry run (TorchRec planner)")
    group.add_argument("--world-size", type=int, default=None, metavar="W",
                       help="plan the tables for W GPUs with TorchRec's planner (dry run, no devices)")
    group.add_argument("--local-batch-size", type=int, default=4096, metavar="B",
                       help="dry run: samples per rank and step (default 4096)")
    group.add_argument("--hbm-gb", type=float, default=HBM_GB, help=f"dry run: GPU memory per rank in GB (default {HBM_GB:g})")
    group.add_argument("--pooling-factor", type=float, default=1.0,
                       help="dry run: indices per bag of every feature (default 1: one-hot)")
    group.add_argument("--replicate-rows", type=int, default=None, metavar="ROWS",
                       help="dry run: replicate component tables of at most ROWS rows (default 1024)")


def check_dry_run_arguments(args: argparse.Namespace) -> Optional[str]:
    """Why the dry-run flags are bad (a message), or ``None``."""
    if args.world_size is None:
        return None
    if args.world_size < 1:
        return f"--world-size must be a positive integer, got {args.world_size}"
    if args.local_batch_size < 1:
        return f"--local-batch-size must be a positive integer, got {args.local_batch_size}"
    if not (args.hbm_gb > 0 and math.isfinite(args.hbm_gb)):
        return f"--hbm-gb must be a finite number > 0, got {args.hbm_gb}"
    if not (args.pooling_factor > 0 and math.isfinite(args.pooling_factor)):
        return f"--pooling-factor must be a finite number > 0, got {args.pooling_factor}"
    if args.replicate_rows is not None and args.replicate_rows < 0:
        return f"--replicate-rows must be >= 0, got {args.replicate_rows}"
    return None


def _placements(coll: Any, sharding_plan: Any, world_size: int) -> List[TablePlacement]:
    out: List[TablePlacement] = []
    by_table: Dict[str, Any] = {}
    for module_plan in sharding_plan.plan.values():
        by_table.update(module_plan)
    for lay in coll.layouts:
        for t in lay.tables:
            ps = by_table.get(t.name) if t.sharded else None
            if ps is None:
                out.append(TablePlacement(lay.name, t.name, t.rows, t.dim, lay.lookup, "replicated",
                                          tuple(range(world_size))))
                continue
            shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
            ranks = tuple(s.placement.rank() for s in shards) if shards else tuple(ps.ranks or range(world_size))
            out.append(TablePlacement(lay.name, t.name, t.rows, t.dim, lay.lookup, ps.sharding_type, ranks,
                                      tuple(s.shard_sizes[0] for s in shards), tuple(s.shard_sizes[1] for s in shards)))
    return out


def _dense_extra_bytes(coll: Any) -> float:
    """Bytes of the replicated parameters outside the component tables: md projections, path maps."""
    extra = sum(v.numel() * 4 for k, v in coll.replicated.items() if k.endswith("__projection"))
    return float(extra + sum(v.numel() * 4 for v in coll.path_maps.parameters()))


def _traffic(coll: Any, placements: List[TablePlacement], world_size: int, batch: int,
             extra_bytes: float) -> Tuple[float, float]:
    """(all-to-all, allreduce) bytes per rank and step (module docstring); ``extra_bytes``: the
    replicated parameters outside the tables (:func:`_dense_extra_bytes`)."""
    where = {p.table: p for p in placements}
    a2a = 0.0
    replicated = 0.0
    for lay in coll.layouts:
        features = lay.kjt_features()
        for t in lay.tables:
            p = where[t.name]
            if p.sharding_type in ("replicated", "data_parallel"):
                replicated += t.rows * t.dim * 4
                continue
            reads = features if lay.lookup == "split" else [t.name]
            pf = lay.pooling_factor / len(reads)
            col_shards = len(p.shard_cols) if p.sharding_type in ("column_wise", "table_column_wise") else 1
            row_shards = len(p.shard_rows) if p.sharding_type in ("row_wise", "table_row_wise") else 1
            for _ in reads:
                ids = batch * pf * 8 * col_shards
                if lay.lookup == "per_index":
                    out = batch * pf * t.dim * 4
                else:
                    out = batch * t.dim * 4 * row_shards
                a2a += ids + 2 * out
    replicated += extra_bytes
    return a2a, replicated * 2 * (world_size - 1) / world_size


def dry_run(
    configs: Sequence[Any],
    world_size: int,
    *,
    method: str = "",
    local_batch_size: int = 4096,
    hbm_gb: float = HBM_GB,
    pooling_factor: float = 1.0,
    replicate_rows: Optional[int] = None,
    local_world_size: int = LOCAL_WORLD_SIZE,
) -> MethodPlan:
    """Plan ``configs`` (compemb ``EmbeddingBagConfig``\\ s) for ``world_size`` GPUs with TorchRec.

    Raises:
        ValueError: a table too large for any rank's ``hbm_gb`` (TorchRec's planner finds no
            plan), naming the largest table.
    """
    from torchrec.distributed.planner.types import PlannerError

    from compemb.distributed.collection import ShardableEmbeddingBagCollection
    from compemb.distributed.layout import REPLICATE_ROWS
    from compemb.distributed.sharding import plan

    pfs = {c.name: pooling_factor for c in configs}
    rows = REPLICATE_ROWS if replicate_rows is None else replicate_rows
    coll = ShardableEmbeddingBagCollection(list(configs), pooling_factors=pfs, replicate_rows=rows, device="meta")
    params = sum(p.numel() for p in coll.parameters())
    try:
        sharding_plan = plan(coll, world_size=world_size, compute_device="cuda", hbm_cap=int(hbm_gb * 1024**3),
                             local_world_size=min(local_world_size, world_size), batch_size=local_batch_size,
                             device_memory_only=True)
    except PlannerError as e:
        biggest = max(((t.rows * t.dim * 4, t.name) for lay in coll.layouts for t in lay.tables))
        raise ValueError(f"method {method or '?'}: TorchRec's planner found no plan for {world_size} ranks of "
                         f"{hbm_gb:g} GB (largest table {biggest[1]!r}, {biggest[0] / 1e9:.2f} GB of weights): "
                         f"{str(e).splitlines()[0][:200]}") from None
    placements = _placements(coll, sharding_plan, world_size)
    per_rank = [0.0] * world_size
    for p in placements:
        if p.sharding_type in ("replicated", "data_parallel"):
            for r in range(world_size):
                per_rank[r] += p.rows * p.dim * 4
        elif p.shard_rows:
            for r, sr, sc in zip(p.ranks, p.shard_rows, p.shard_cols):
                per_rank[r] += sr * sc * 4
        else:
            per_rank[p.ranks[0]] += p.rows * p.dim * 4
    extra = _dense_extra_bytes(coll)
    per_rank = [b + extra for b in per_rank]
    a2a, allreduce = _traffic(coll, placements, world_size, local_batch_size, extra)
    return MethodPlan(method, world_size, params, placements, per_rank, a2a, allreduce)


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f}"


def print_dry_run(plans: Sequence[MethodPlan], header: str, detail: Optional[MethodPlan] = None) -> None:
    """Print the per-method summary (and one method's per-table placement)."""
    print(header)
    rows = [("method", "parameters", "sharding of component tables", "max MB/rank", "mean MB/rank",
             "all-to-all MB/step/rank", "allreduce MB/step/rank")]
    for p in plans:
        rows.append((p.method, f"{p.parameters:,}", p.sharding_summary(), _mb(max(p.bytes_per_rank)),
                     _mb(sum(p.bytes_per_rank) / len(p.bytes_per_rank)), _mb(p.all_to_all_bytes), _mb(p.allreduce_bytes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = ["<", ">", "<", ">", ">", ">", ">"]
    for i, r in enumerate(rows):
        print("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if detail is not None:
        print(f"\n{detail.method}: placement of each TorchRec component table")
        replicated = [t for t in detail.tables if t.sharding_type == "replicated"]
        for t in detail.tables:
            if t.sharding_type == "replicated":
                continue
            kind = _SHORT.get(t.sharding_type, t.sharding_type)
            where = "all ranks" if kind == "DP" else (
                f"ranks {min(t.ranks)}..{max(t.ranks)} ({len(t.ranks)} shards)" if len(t.ranks) > 1 else f"rank {t.ranks[0]}")
            print(f"  {t.table:<12} {t.rows:>12,} x {t.dim:<4} {t.lookup:<9} {kind:<5} {where}")
        if replicated:
            print(f"  replicated on every rank, outside TorchRec: {len(replicated)} tables, "
                  f"{sum(t.rows for t in replicated):,} rows")


#: the methods the dry run compares (every table spec method that maps onto TorchRec tables)
DRY_RUN_METHODS = ("full", "hash", "qr", "gqr", "crt", "md", "path")


def run_dry_run(cards: Sequence[int], args: argparse.Namespace, source: str) -> int:
    """``compemb plan --world-size``: plan every method of :data:`DRY_RUN_METHODS` and print them."""
    from compemb.baselines import md_dims
    from compemb.config import EmbeddingBagConfig

    hidden = tuple(int(h) for h in filter(None, (t.strip() for t in args.hidden_dims.split(","))))
    plans = []
    detail = None
    for method in DRY_RUN_METHODS:
        md = md_dims(cards, args.alpha, args.dim) if method == "md" else [None] * len(cards)
        configs = []
        for i, n in enumerate(cards):
            m = method if n > args.threshold else "full"
            if m in ("qr", "hash", "path") and args.collisions >= n:
                m = "full"
            configs.append(EmbeddingBagConfig(
                f"C{i + 1}", n, args.dim, method=m, num_collisions=args.collisions, k=args.k,
                operation=args.operation, hidden_dims=hidden if m == "path" else (),
                md_dim=md[i] if m == "md" else None))
        try:
            p = dry_run(configs, args.world_size, method=method, local_batch_size=args.local_batch_size,
                        hbm_gb=args.hbm_gb, pooling_factor=args.pooling_factor, replicate_rows=args.replicate_rows)
        except ValueError as e:
            print(f"{method}: no plan: {e}")
            continue
        plans.append(p)
        if method == args.method:
            detail = p
    header = (f"compemb plan --world-size {args.world_size}: {source}; dim={args.dim}; threshold={args.threshold}; "
              f"collisions={args.collisions}; k={args.k}; operation={args.operation}; {args.world_size} x cuda "
              f"({args.hbm_gb:g} GB each, {min(LOCAL_WORLD_SIZE, args.world_size)} per host); local batch "
              f"{args.local_batch_size}; pooling factor {args.pooling_factor:g}")
    print_dry_run(plans, header, detail)
    if args.method not in DRY_RUN_METHODS:
        print(f"\n(method {args.method!r} is not planned: only {DRY_RUN_METHODS} map onto TorchRec tables)")
    return 0
