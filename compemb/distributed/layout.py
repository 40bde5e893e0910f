"""How one compemb feature maps onto TorchRec: component tables, rewritten features, lookup.

A compositional feature is a **KJT rewrite** (``docs/architecture.md``, "Scale-out"): feature ``f``
with partition family ``P_0 .. P_{k-1}`` becomes one TorchRec feature per *sharded* component
table, ``f__t{i}`` with values ``P_i(v)`` (for quotient–remainder ``t0`` is the remainder
``v mod m`` and ``t1`` the quotient ``v div m``). Tables with at most ``replicate_rows`` rows
(remainder tables, gqr/crt digits, path maps, md projections) stay out of TorchRec: plain
parameters replicated on every rank and synchronised with the dense part (DDP), their
allreduce is ``rows x d x 4`` bytes.

Each feature is looked up one of three ways (:data:`compemb.options.DISTRIBUTED_LOOKUPS`):

``"pooled"``
    every sharded table pooled by TorchRec's ``EmbeddingBagCollection`` (the traffic of a full
    table per sharded component), combined after pooling. Exact for ``add``/``concat``,
    ``compose="after_pool"``, full, hash and md tables, and for bags of at most one index
    (one-hot: checked at every forward when the feature needs it).
``"split"``
    the remainder-class split for ``mult`` + ``before_pool`` (and linear path maps):
    ``sum_i q[a_i] * r[b_i] = sum_j r[j] * sum_{i: b_i = j} q[a_i]``: ``C`` pooled
    pseudo-features ``f__t{s}__c{j}`` sharing the one sharded table ``s``, ``C`` the number of
    joint classes of the replicated tables. Traffic ``C x d`` per sample; exact.
``"per_index"``
    the sharded tables looked up per index by TorchRec's ``EmbeddingCollection``, composed per
    index, pooled locally. Traffic ``pooling_factor x d`` per sample; exact for everything.

A feature whose tables are all replicated is composed locally, whatever the lookup asked.
``"auto"`` picks pooled when it is exact; else pooled for one-hot features
(``pooling_factor <= 1``); else the cheaper of split (``C``) and per-index
(``pooling_factor``), split on a tie.

Example::

    >>> from compemb.config import EmbeddingBagConfig, build_embedding_bag
    >>> bag = build_embedding_bag(EmbeddingBagConfig("C1", 10_000, 8, method="qr", num_collisions=4))
    >>> lay = feature_layout("C1", bag, pooling_factor=20.0)
    >>> lay.lookup, [t.name for t in lay.sharded_tables], lay.kjt_features()[:2]
    ('split', ['C1__t1'], ['C1__t1__c0', 'C1__t1__c1'])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from torch import nn

from compemb.baselines import HashEmbeddingBag, MixedDimEmbeddingBag
from compemb.functional import check_int
from compemb.kernels import exactness_reason
from compemb.modules import CompositionalEmbeddingBag
from compemb.options import DISTRIBUTED_LOOKUPS, check_choice
from compemb.partitions import PartitionFamily, naive
from compemb.path import PathEmbeddingBag

__all__ = [
    "REPLICATE_ROWS",
    "MAX_SPLIT_CLASSES",
    "ComponentTable",
    "FeatureLayout",
    "feature_layout",
    "component_table_name",
]

#: component tables with at most this many rows are replicated (kept out of TorchRec)
REPLICATE_ROWS = 1024
#: the most pseudo-features a remainder-class split may create for one feature
MAX_SPLIT_CLASSES = 1024


def component_table_name(feature: str, index: int) -> str:
    """The TorchRec table (and feature) name of component table ``index`` of ``feature``."""
    return f"{feature}__t{index}"


@dataclass(frozen=True)
class ComponentTable:
    """One embedding table of a feature: ``rows x dim``, sharded by TorchRec or replicated."""

    name: str
    index: int  # the partition of the family that indexes it
    rows: int
    dim: int
    sharded: bool


def _class_partitions(operation: str, family: PartitionFamily, tables: Sequence[ComponentTable]) -> List[int]:
    """The partitions a split resolves locally: a path's map partitions, else the replicated tables'."""
    if operation == "path":
        return list(range(1, family.k))
    return [t.index for t in tables if not t.sharded]


@dataclass(frozen=True)
class FeatureLayout:
    """How one feature is served under TorchRec (built by :func:`feature_layout`).

    Attributes:
        name: the feature (the key of the input and output).
        method: ``"full"``, ``"hash"``, ``"qr"``/``"gqr"``/``"crt"`` (any compositional bag:
            ``"compositional"``), ``"md"`` or ``"path"``.
        num_embeddings, embedding_dim: ``n`` and the output width.
        mode: ``"sum"`` or ``"mean"``.
        family: the partitions; row ``i`` of the codes indexes table ``i`` (path: row 0 the
            base table, the others pick the per-class maps).
        operation: ``"mult"``/``"add"``/``"concat"`` (compositional), ``"identity"`` (full,
            hash), ``"project"`` (md) or ``"path"``.
        tables: the embedding tables (path: the base table only; its maps are replicated).
        lookup: ``"pooled"``, ``"split"`` or ``"per_index"``.
        pooling_factor: expected indices per bag (for the choice and the planner).
        one_hot: pooled although exact only for bags of at most one index (checked per call).
        split_classes: ``C``, the pseudo-features of a split (1 otherwise).
        hidden_dims: path only: the per-class MLP's hidden sizes.
        compose: compositional only: ``"before_pool"`` or ``"after_pool"``.
    """

    name: str
    method: str
    num_embeddings: int
    embedding_dim: int
    mode: str
    family: PartitionFamily
    operation: str
    tables: Tuple[ComponentTable, ...]
    lookup: str
    pooling_factor: float
    one_hot: bool
    split_classes: int
    hidden_dims: Tuple[int, ...] = ()
    compose: str = "before_pool"

    @property
    def sharded_tables(self) -> List[ComponentTable]:
        return [t for t in self.tables if t.sharded]

    @property
    def local_tables(self) -> List[ComponentTable]:
        return [t for t in self.tables if not t.sharded]

    @property
    def class_partitions(self) -> List[int]:
        """The partitions whose classes are resolved locally in a split (replicated tables, path maps)."""
        return _class_partitions(self.operation, self.family, self.tables)

    def kjt_features(self) -> List[str]:
        """The rewritten TorchRec features of this feature, in order."""
        if self.lookup == "split":
            (table,) = self.sharded_tables
            return [f"{table.name}__c{j}" for j in range(self.split_classes)]
        return [t.name for t in self.sharded_tables]

    def output_floats_per_sample(self) -> float:
        """Floats one sample sends through the pooled/sequence output all-to-all (forward)."""
        dims = sum(t.dim for t in self.sharded_tables)
        if self.lookup == "split":
            return float(self.split_classes * dims)
        if self.lookup == "per_index":
            return self.pooling_factor * dims
        return float(dims)

    def ids_per_sample(self) -> float:
        """Indices one sample sends through the input all-to-all."""
        if self.lookup == "split":
            return self.pooling_factor
        return self.pooling_factor * len(self.sharded_tables)


def _describe(name: str, module: nn.Module) -> Tuple[str, PartitionFamily, str, List[int], bool, bool]:
    """(method, family, operation, table widths, pooled_exact, split_possible) of a built module."""
    where = f"feature {name!r}"
    for attr, bad in (("max_norm", None), ("scale_grad_by_freq", False)):
        if getattr(module, attr, bad) not in (bad,):
            raise ValueError(f"{where}: {attr}={getattr(module, attr)!r} is not served by TorchRec's tables")
    mode = getattr(module, "mode", None)
    if mode not in ("sum", "mean"):
        raise ValueError(f"{where}: mode={mode!r}: TorchRec pools with 'sum' or 'mean' only")
    if isinstance(module, CompositionalEmbeddingBag):
        fam, op = module.family, module.operation
        exact = exactness_reason(op, mode, module.compose, fam.k) is None  # per-table pooling is exact
        return "compositional", fam, op, list(module.dims), exact, op == "mult" and fam.k > 1
    if isinstance(module, PathEmbeddingBag):
        return "path", module.family, "path", [module.embedding_dim], False, not module.hidden_dims
    if isinstance(module, HashEmbeddingBag):
        return "hash", PartitionFamily([module.partition]), "identity", [module.embedding_dim], True, False
    if isinstance(module, MixedDimEmbeddingBag):
        return "md", naive(module.num_embeddings), "project", [module.md_dim], True, False
    if type(module) is nn.EmbeddingBag:
        if module.padding_idx is not None:
            raise ValueError(f"{where}: padding_idx={module.padding_idx} is not served by TorchRec's tables")
        return "full", naive(module.num_embeddings), "identity", [module.embedding_dim], True, False
    raise TypeError(
        f"{where}: cannot map a {type(module).__name__} onto TorchRec; expected torch.nn.EmbeddingBag, "
        "CompositionalEmbeddingBag, HashEmbeddingBag, MixedDimEmbeddingBag or PathEmbeddingBag "
        "(as compemb.config.build_embedding_bag builds them)"
    )


def feature_layout(
    name: str,
    module: nn.Module,
    lookup: str = "auto",
    pooling_factor: float = 1.0,
    replicate_rows: int = REPLICATE_ROWS,
) -> FeatureLayout:
    """The TorchRec layout of the single-process ``module`` serving feature ``name``.

    Args:
        name: the feature.
        module: as :func:`compemb.config.build_embedding_bag` builds it (full, hash, qr, gqr,
            crt, md, path).
        lookup: :data:`compemb.options.DISTRIBUTED_LOOKUPS`; ``"auto"`` chooses by traffic
            (module docstring).
        pooling_factor: expected indices per bag (> 0).
        replicate_rows: tables with at most this many rows are replicated, not sharded.

    Raises:
        ValueError: a lookup that cannot be exact for this feature, a bad pooling factor, or a
            module option TorchRec cannot serve (``mode="max"``, ``max_norm``), naming the feature.
        TypeError: a module of another kind.
    """
    where = f"feature {name!r}"
    check_choice("lookup", lookup, DISTRIBUTED_LOOKUPS, where)
    if not (isinstance(pooling_factor, (int, float)) and math.isfinite(pooling_factor) and pooling_factor > 0):
        raise ValueError(f"{where}: pooling_factor must be a finite number > 0, got {pooling_factor!r}")
    replicate_rows = check_int("replicate_rows", replicate_rows, 0, where)
    method, family, operation, widths, pooled_exact, split_possible = _describe(name, module)
    n_tables = 1 if operation == "path" else family.k
    tables = tuple(
        ComponentTable(component_table_name(name, i), i, int(family.table_sizes[i]), widths[i],
                       int(family.table_sizes[i]) > replicate_rows)
        for i in range(n_tables)
    )
    sharded = [t for t in tables if t.sharded]
    classes = math.prod(int(family.table_sizes[i]) for i in _class_partitions(operation, family, tables))
    split_reason: Optional[str] = None
    if not split_possible:
        split_reason = ("it is exact pooled" if pooled_exact else
                        "a per-class MLP is not linear: only per-index lookups are exact")
    elif len(sharded) != 1:
        split_reason = (f"it needs exactly one sharded table, this feature has {len(sharded)} "
                        f"(replicate_rows={replicate_rows})")
    elif classes > MAX_SPLIT_CLASSES:
        split_reason = f"its replicated tables have {classes} joint classes (more than {MAX_SPLIT_CLASSES})"
    if not sharded:  # everything replicated: composed locally (no traffic), whatever was asked
        lookup = "pooled" if pooled_exact else "per_index"
    elif lookup == "auto":
        if pooled_exact:
            lookup = "pooled"
        elif pooling_factor <= 1 and operation != "path":
            lookup = "pooled"
        elif split_reason is None and classes <= pooling_factor:
            lookup = "split"
        else:
            lookup = "per_index"
    elif lookup == "split" and split_reason is not None:
        raise ValueError(f"{where}: lookup='split' is not possible: {split_reason}")
    elif lookup == "pooled" and operation == "path":
        raise ValueError(f"{where}: lookup='pooled' cannot apply per-class path maps; use 'split' or 'per_index'")
    return FeatureLayout(
        name=name, method=method, num_embeddings=family.n, embedding_dim=int(getattr(module, "embedding_dim", 0)),
        mode=str(getattr(module, "mode", "")), family=family, operation=operation, tables=tables, lookup=lookup,
        pooling_factor=float(pooling_factor), one_hot=lookup == "pooled" and not pooled_exact,
        split_classes=classes if lookup == "split" else 1,
        hidden_dims=tuple(getattr(module, "hidden_dims", ())) if operation == "path" else (),
        compose=str(getattr(module, "compose", "before_pool")),
    )
