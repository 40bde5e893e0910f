"""Every option set of the library, defined once.

The names a user passes as strings (``operation="mult"``, ``mode="sum"``, ``backend="auto"`` …)
are ``Literal`` types here, with the tuple of their values derived from the type, and one
``check_*`` function each that raises a ``ValueError`` naming the bad value. Every other module
imports its lists from here; no second copy exists anywhere (compare TorchRec's ``PoolingType``).

:class:`BagOptions` is the frozen description of one compositional embedding bag call that
backends are asked about (:meth:`compemb.kernels.Backend.unsupported_reason`) and that
:func:`compemb.kernels.resolve_backend` takes, instead of ten loose keywords.

This module imports nothing from compemb: it is the bottom of the import graph. It imports no
torch either (only :class:`BagOptions` needs it, on construction), so that the sweep registry
(``sweeps.space``) can read the option sets without loading torch.

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
from typing import TYPE_CHECKING, Literal, Optional, Tuple, TypeVar, get_args

if TYPE_CHECKING:
    import torch

__all__ = [
    "Operation",
    "Mode",
    "Compose",
    "Method",
    "BackendName",
    "HashFunction",
    "HASH_FUNCTIONS",
    "FusedOptimizer",
    "OPERATIONS",
    "MODES",
    "COMPOSES",
    "METHODS",
    "FAMILY_METHODS",
    "COMPRESSED_METHODS",
    "OPERATION_METHODS",
    "COLLISION_METHODS",
    "num_tables",
    "check_concat_width",
    "check_max_norm",
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
#: the bucket function of :class:`compemb.baselines.HashEmbeddingBag` (``x mod b``, or a universal hash)
HashFunction = Literal["remainder", "universal"]
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
HASH_FUNCTIONS: Tuple[str, ...] = get_args(HashFunction)
#: the methods whose tables are the component tables of a partition family (full = naive family)
FAMILY_METHODS: Tuple[str, ...] = ("full", "qr", "gqr", "crt")
#: every method with a size parameter (all but ``"full"``; see :mod:`compemb.compression`)
COMPRESSED_METHODS: Tuple[str, ...] = tuple(m for m in METHODS if m != "full")
#: the methods that compose component tables with an ``operation`` (and take ``compose``/``backend``)
OPERATION_METHODS: Tuple[str, ...] = ("qr", "gqr", "crt", "freq", "cluster")
#: the methods sized by ``num_collisions`` (categories per class/bucket/cluster) that gain nothing,
#: and are built as a full table, once ``num_collisions >= num_embeddings`` (one class for everything)
COLLISION_METHODS: Tuple[str, ...] = ("qr", "path", "hash", "freq", "cluster")
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


def num_tables(method: str, k: int = 2) -> int:
    """The number of component tables ``method`` uses: ``k`` for gqr/crt, 2 for qr, path and cluster,
    3 for freq (hot rows and the QR base), 1 for the others.

    Example::

        >>> num_tables("qr"), num_tables("crt", 3), num_tables("freq"), num_tables("hash")
        (2, 3, 3, 1)
    """
    if method in ("gqr", "crt"):
        return k
    if method in ("qr", "path", "cluster"):
        return 2
    if method == "freq":
        return 3
    return 1


def check_concat_width(method: str, operation: str, embedding_dim: int, k: int = 2, owner: str = "") -> None:
    """Raise ``ValueError`` when ``operation="concat"`` would split ``embedding_dim`` across more
    tables than it has columns (only for the :data:`OPERATION_METHODS`)."""
    tables = num_tables(method, k)
    if operation == "concat" and method in OPERATION_METHODS and embedding_dim < tables:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(
            f"{prefix}operation='concat' splits embedding_dim={embedding_dim} across {tables} tables of "
            f"{method}; it needs embedding_dim >= {tables}"
        )


def check_max_norm(max_norm: Optional[float], name: str = "embedding bag") -> Optional[float]:
    """``None`` or a finite number ``> 0`` (a negative ``max_norm`` would flip the rows' signs).

    Raises:
        TypeError: not a number (bools included), naming ``name``.
        ValueError: not finite or ``<= 0``.
    """
    if max_norm is None:
        return None
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
        raise TypeError(f"{name}: max_norm must be None or a number > 0, got {max_norm!r}")
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"{name}: max_norm must be None or a finite number > 0, got max_norm={max_norm!r}")
    return max_norm


def _float32() -> "torch.dtype":
    import torch

    return torch.float32


def _cpu() -> "torch.device":
    import torch

    return torch.device("cpu")


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
        scale_grad_by_freq: whether gradients are scaled by the inverse frequency of the indices
            in the batch (as ``torch.nn.EmbeddingBag``).

    Raises:
        ValueError: an option outside its set, naming it. TypeError: a dtype that is not a
            ``torch.dtype``, a ``max_norm`` that is not a number.
    """

    operation: str = "mult"
    mode: str = "sum"
    compose: str = "before_pool"
    k: int = 2
    dtype: "torch.dtype" = field(default_factory=_float32)
    device: "torch.device" = field(default_factory=_cpu)
    per_sample_weights: bool = False
    sparse: bool = False
    max_norm: Optional[float] = None
    requires_grad: bool = True
    scale_grad_by_freq: bool = False

    def __post_init__(self) -> None:
        import torch

        check_operation(self.operation, "BagOptions")
        check_mode(self.mode, "BagOptions")
        check_compose(self.compose, "BagOptions")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"BagOptions: k must be an int >= 1, got {self.k!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"BagOptions: dtype must be a torch.dtype, got {self.dtype!r}")
        object.__setattr__(self, "device", torch.device(self.device))
        check_max_norm(self.max_norm, "BagOptions")
