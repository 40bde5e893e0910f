"""Every option set of the library, defined once.

The names a user passes as strings (``operation="mult"``, ``mode="sum"``, ``backend="auto"`` …)
are ``Literal`` types here, with the tuple of their values derived from the type, and one
``check_*`` function each that raises a ``ValueError`` naming the bad value. Every other module
imports its lists from here; no second copy exists anywhere (compare TorchRec's ``PoolingType``).

:class:`BagOptions` is the frozen description of one compositional embedding bag call that
backends are asked about (:meth:`compemb.kernels.Backend.unsupported_reason`) and that
:func:`compemb.kernels.resolve_backend` takes, instead of ten loose keywords.

This module imports nothing from compemb: it is the bottom of the import graph.

Example::

    >>> from compemb.options import OPERATIONS, BagOptions, check_operation
    >>> OPERATIONS
    ('mult', 'add', 'concat')
    >>> check_operation("mult")
    'mult'
    >>> BagOptions(operation="add", mode="mean", k=2).compose
    'before_pool'
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple, TypeVar, get_args

import torch

__all__ = [
    "Operation",
    "Mode",
    "Compose",
    "Method",
    "BackendName",
    "FusedOptimizer",
    "OPERATIONS",
    "MODES",
    "COMPOSES",
    "METHODS",
    "FAMILY_METHODS",
    "BACKENDS",
    "BACKEND_NAMES",
    "FUSED_OPTIMIZERS",
    "ShardingTypeName",
    "DistributedLookup",
    "SHARDING_TYPES",
    "DISTRIBUTED_LOOKUPS",
    "check_choice",
    "check_operation",
    "check_mode",
    "check_compose",
    "check_method",
    "check_backend",
    "BagOptions",
]

#: how the k component rows of one index are combined
Operation = Literal["mult", "add", "concat"]
#: how the embeddings of a bag are pooled (as ``torch.nn.EmbeddingBag``)
Mode = Literal["sum", "mean", "max"]
#: combine the rows of each index then pool (the paper), or pool each table then combine (DLRM)
Compose = Literal["before_pool", "after_pool"]
#: the embedding methods a table spec may name (tt: tensor train; robe: shared array; freq:
#: frequency-aware; cluster: clustered QR; see ``compemb.config.EmbeddingBagConfig``)
Method = Literal["full", "hash", "qr", "gqr", "crt", "path", "md", "tt", "robe", "freq", "cluster"]
#: kernel backends, and ``"auto"`` (the fastest exact one)
BackendName = Literal["torch", "triton", "fbgemm", "auto"]
#: optimizers that a table-batched backend applies inside the backward pass
FusedOptimizer = Literal["exact_sgd", "exact_rowwise_adagrad"]
#: how TorchRec may shard a component table (the values of ``torchrec.distributed.types.ShardingType``)
ShardingTypeName = Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise", "data_parallel"]
#: how a sharded compositional feature is looked up (:mod:`compemb.distributed`): ``"auto"`` picks
#: by expected traffic; pooled component lookups; the remainder-class split; per-index rows
DistributedLookup = Literal["auto", "pooled", "split", "per_index"]

OPERATIONS: Tuple[str, ...] = get_args(Operation)
MODES: Tuple[str, ...] = get_args(Mode)
COMPOSES: Tuple[str, ...] = get_args(Compose)
METHODS: Tuple[str, ...] = get_args(Method)
#: the methods whose tables are the component tables of a partition family (full = naive family)
FAMILY_METHODS: Tuple[str, ...] = ("full", "qr", "gqr", "crt")
BACKEND_NAMES: Tuple[str, ...] = get_args(BackendName)
#: the concrete backends (everything but ``"auto"``)
BACKENDS: Tuple[str, ...] = tuple(b for b in BACKEND_NAMES if b != "auto")
FUSED_OPTIMIZERS: Tuple[str, ...] = get_args(FusedOptimizer)
SHARDING_TYPES: Tuple[str, ...] = get_args(ShardingTypeName)
DISTRIBUTED_LOOKUPS: Tuple[str, ...] = get_args(DistributedLookup)

_T = TypeVar("_T")


def check_choice(what: str, value: _T, choices: Tuple[object, ...], owner: str = "") -> _T:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming it.

    ``owner`` (e.g. ``"EmbeddingBagConfig 'C1'"``) prefixes the message.
    """
    if value not in choices:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{what} must be one of {choices}, got {value!r}")
    return value


def check_operation(operation: str, owner: str = "") -> str:
    """``operation`` if it is one of :data:`OPERATIONS`."""
    return check_choice("operation", operation, OPERATIONS, owner)


def check_mode(mode: str, owner: str = "") -> str:
    """``mode`` if it is one of :data:`MODES`."""
    return check_choice("mode", mode, MODES, owner)


def check_compose(compose: str, owner: str = "") -> str:
    """``compose`` if it is one of :data:`COMPOSES`."""
    return check_choice("compose", compose, COMPOSES, owner)


def check_method(method: str, owner: str = "") -> str:
    """``method`` if it is one of :data:`METHODS`."""
    return check_choice("method", method, METHODS, owner)


def check_backend(backend: str, owner: str = "") -> str:
    """``backend`` if it is one of :data:`BACKEND_NAMES` (``"auto"`` included)."""
    return check_choice("backend", backend, BACKEND_NAMES, owner)


@dataclass(frozen=True)
class BagOptions:
    """One compositional embedding bag configuration, as a backend is asked about it.

    Args:
        operation: how the k rows of an index combine (:data:`OPERATIONS`).
        mode: pooling (:data:`MODES`).
        compose: :data:`COMPOSES`.
        k: number of component tables (partitions), ``>= 1``.
        dtype: the tables' dtype.
        device: the tables' device.
        per_sample_weights: whether per-sample weights are given.
        sparse: whether sparse gradients are asked for.
        max_norm: ``None`` or the renormalisation bound of the looked-up rows.
        requires_grad: whether the tables need gradients.

    Raises:
        ValueError: an option outside its set, naming it.
    """

    operation: str = "mult"
    mode: str = "sum"
    compose: str = "before_pool"
    k: int = 2
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    per_sample_weights: bool = False
    sparse: bool = False
    max_norm: Optional[float] = None
    requires_grad: bool = True

    def __post_init__(self) -> None:
        check_operation(self.operation, "BagOptions")
        check_mode(self.mode, "BagOptions")
        check_compose(self.compose, "BagOptions")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"BagOptions: k must be an int >= 1, got {self.k!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"BagOptions: dtype must be a torch.dtype, got {self.dtype!r}")
        object.__setattr__(self, "device", torch.device(self.device))
        if self.max_norm is not None and not (
            isinstance(self.max_norm, (int, float)) and math.isfinite(self.max_norm) and self.max_norm > 0
        ):
            raise ValueError(f"BagOptions: max_norm must be None or a finite number > 0, got {self.max_norm!r}")
