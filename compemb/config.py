"""Table specs (a TorchRec-style dataclass), the builder, and parameter accounting.

:class:`EmbeddingBagConfig` describes one embedding table; :func:`build_embedding_bag` turns it
into a module whose output width is always ``config.embedding_dim``; :func:`num_parameters` and
:func:`compression_ratio` measure any of the library's modules, ``torch.nn.EmbeddingBag`` and the
reference DLRM ``QREmbeddingBag`` alike.

Example::

    >>> from compemb.config import EmbeddingBagConfig, build_embedding_bag, compression_ratio
    >>> bag = build_embedding_bag(EmbeddingBagConfig("C1", 100_000, 16, method="qr", num_collisions=4))
    >>> round(compression_ratio(bag), 2)
    4.0
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, TypeGuard, Union

import torch
from torch import nn

from compemb.functional import check_int, check_num_embeddings
from compemb.options import (
    COLLISION_METHODS,
    METHODS,
    check_backend,
    check_concat_width,
    check_compose,
    check_method,
    check_mode,
    check_operation,
    num_tables,
)

__all__ = [
    "EmbeddingBagConfig",
    "METHODS",
    "build_embedding_bag",
    "num_parameters",
    "compression_ratio",
    "output_width",
]



def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class EmbeddingBagConfig:
    """The spec of one embedding table (``docs/architecture.md`` section 3).

    Args:
        name: the table's (feature's) name, used in error messages.
        num_embeddings: n, the number of categories.
        embedding_dim: the output width of the built module, whatever the method.
        method: ``"full"`` (``nn.EmbeddingBag``), ``"hash"`` (hashing trick), ``"qr"``
            (quotient–remainder), ``"gqr"`` (generalized QR, ``k`` digits), ``"crt"`` (Chinese
            remainder, ``k`` moduli), ``"path"`` (path-based, QR partitions), ``"md"`` (mixed
            dimension), ``"tt"`` (tensor train, :class:`~compemb.tt.TTEmbeddingBag`), ``"robe"``
            (one shared array, :class:`~compemb.robe.ROBEEmbeddingBag`), ``"freq"`` (the
            ``num_hot`` most frequent categories get rows of their own, the rest QR; needs the
            training split's counts: ``build_embedding_bag(config, counts=...)``) or ``"cluster"``
            (QR over learned clusters, :class:`~compemb.data_aware.DataAwareEmbeddingBag`).
        operation: ``"mult"``, ``"add"`` or ``"concat"``, for qr / gqr / crt / freq / cluster
            (:data:`compemb.options.OPERATION_METHODS`).
        num_collisions: categories per class of the remainder (qr, path, freq's base), per
            bucket (hash), per cluster (cluster), per parameter (robe: ``ceil(n D / m)`` numbers).
        k: number of partitions for gqr / crt.
        hidden_dims: path only; ``()`` = one linear map per class, else the MLP's hidden sizes.
        md_dim: md only; this table's own width (``None``: ``embedding_dim``, no projection).
        mode: ``"sum"``, ``"mean"`` or ``"max"``.
        compose: ``"before_pool"`` or ``"after_pool"``, for qr / gqr / crt / freq / cluster.
        backend: kernel backend for qr / gqr / crt / freq / cluster (``"torch"``, ``"triton"``,
            ``"fbgemm"``, ``"auto"``); the other methods use ``torch.nn.functional`` and ignore it.
        tt_rank: tt only; the inner TT ranks.
        num_hot: freq only; rows of their own for the most frequent categories.
        compression: ``None``, or ``R > 1``: the method's own size parameter (collisions,
            radices, rank, array size, hot rows ...) is chosen by
            :func:`compemb.compression.size_for_ratio` so that the tables hold at most
            ``num_embeddings * embedding_dim / R`` parameters, overriding ``num_collisions``,
            ``md_dim``, ``tt_rank`` and ``num_hot`` (ignored by ``full``).

    Every field is validated on construction; a bad one raises ``ValueError``/``TypeError``
    naming the table, the field and the value. A ``hidden_dims`` list is stored as a tuple.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    method: str = "full"
    operation: str = "mult"
    num_collisions: int = 4
    k: int = 2
    hidden_dims: tuple = ()
    md_dim: Optional[int] = None
    mode: str = "sum"
    compose: str = "before_pool"
    backend: str = "torch"
    tt_rank: int = 8
    num_hot: Optional[int] = None
    compression: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"EmbeddingBagConfig: name must be a non-empty str, got {self.name!r}")
        where = f"EmbeddingBagConfig {self.name!r}"

        # sizes of any integer type (numpy, 0-d tensors) are stored as Python ints
        object.__setattr__(self, "num_embeddings", check_num_embeddings("num_embeddings", self.num_embeddings, where))
        for field in ("embedding_dim", "num_collisions", "k", "tt_rank"):
            object.__setattr__(self, field, check_int(field, getattr(self, field), 1, where))
        check_method(self.method, where)
        check_operation(self.operation, where)
        check_mode(self.mode, where)
        check_compose(self.compose, where)
        check_backend(self.backend, where)
        if isinstance(self.hidden_dims, (str, bytes)) or not hasattr(self.hidden_dims, "__iter__"):
            raise TypeError(f"{where}: hidden_dims must be a sequence of ints, got {self.hidden_dims!r}")
        hidden = tuple(check_int(f"hidden_dims[{i}]", h, 1, where) for i, h in enumerate(self.hidden_dims))
        object.__setattr__(self, "hidden_dims", hidden)
        if self.md_dim is not None:
            object.__setattr__(self, "md_dim", check_int("md_dim", self.md_dim, 1, where))
            if self.md_dim > self.embedding_dim:
                raise ValueError(
                    f"{where}: md_dim={self.md_dim} exceeds embedding_dim={self.embedding_dim} "
                    "(a mixed-dimension table is projected up to embedding_dim)"
                )
        if self.num_hot is not None:
            object.__setattr__(self, "num_hot", check_int("num_hot", self.num_hot, 1, where))
        if self.compression is not None:
            from compemb.compression import check_ratio

            object.__setattr__(self, "compression", check_ratio(self.compression, where))
        elif self.method == "freq" and self.num_hot is None:
            raise ValueError(f"{where}: method='freq' needs num_hot (or a compression ratio to choose it)")
        check_concat_width(self.method, self.operation, self.embedding_dim, self.k, where)

    @property
    def k_effective(self) -> int:
        """The number of component tables the method uses (2 for qr, path and cluster, 3 for freq,
        ``k`` for gqr/crt; :func:`compemb.options.num_tables`)."""
        return num_tables(self.method, self.k)


def _full_embedding_bag(config: EmbeddingBagConfig, sparse, include_last_offset, device, dtype) -> nn.EmbeddingBag:
    bag = nn.EmbeddingBag(
        config.num_embeddings,
        config.embedding_dim,
        mode=config.mode,
        sparse=sparse,
        include_last_offset=include_last_offset,
        device=device,
        dtype=dtype,
    )
    bound = math.sqrt(1.0 / config.num_embeddings)
    with torch.no_grad():
        nn.init.uniform_(bag.weight, -bound, bound)
    return bag


def _compressed_embedding_bag(config: EmbeddingBagConfig, sparse, include_last_offset, device, dtype,
                              sizes: Dict[str, Any], counts: Any = None) -> nn.Module:
    # sizes: the size parameters chosen for config.compression (compemb.compression), else {}
    n, d, method = config.num_embeddings, config.embedding_dim, config.method
    m = sizes.get("num_collisions", config.num_collisions)
    common = dict(mode=config.mode, sparse=sparse, include_last_offset=include_last_offset, device=device, dtype=dtype)
    if method == "hash":
        from compemb.baselines import HashEmbeddingBag

        size = {"num_buckets": sizes["num_buckets"]} if "num_buckets" in sizes else {"num_collisions": m}
        return HashEmbeddingBag(n, d, **size, **common)
    if method == "md":
        from compemb.baselines import MixedDimEmbeddingBag

        return MixedDimEmbeddingBag(n, d, md_dim=sizes.get("md_dim", config.md_dim), **common)
    if method == "path":
        from compemb.path import PathEmbeddingBag

        return PathEmbeddingBag(n, d, num_collisions=m, hidden_dims=config.hidden_dims, **common)
    if method == "tt":
        from compemb.tt import TTEmbeddingBag

        return TTEmbeddingBag(n, d, tt_rank=sizes.get("tt_rank", config.tt_rank), **common)
    if method == "robe":  # (no sparse gradients: one shared array)
        from compemb.robe import ROBEEmbeddingBag

        size = {"size": sizes["size"]} if "size" in sizes else {"num_collisions": m}
        return ROBEEmbeddingBag(n, d, **size, mode=config.mode, include_last_offset=include_last_offset,
                                device=device, dtype=dtype)
    composed = dict(operation=config.operation, compose=config.compose, backend=config.backend, **common)
    if method in ("freq", "cluster"):
        from compemb.data_aware import DataAwareEmbeddingBag

        if method == "cluster":
            return DataAwareEmbeddingBag.clustered(n, d, m, **composed)
        num_hot = sizes.get("num_hot", config.num_hot)
        assert num_hot is not None, "EmbeddingBagConfig refuses freq without num_hot or compression"
        return DataAwareEmbeddingBag.frequency_aware(n, d, num_hot, counts=counts, num_collisions=m, **composed)
    from compemb.modules import CompositionalEmbeddingBag
    from compemb.partitions import chinese_remainder, family_for_method, generalized_qr

    if "radices" in sizes:
        family = generalized_qr(n, radices=sizes["radices"])
    elif "moduli" in sizes:
        family = chinese_remainder(n, moduli=sizes["moduli"])
    else:
        family = family_for_method(method, n, num_collisions=m, k=config.k)
    return CompositionalEmbeddingBag(n, d, family=family, **composed)


def cannot_compress_reason(method: str, num_embeddings: int, num_collisions: int,
                           num_hot: Optional[int] = None) -> Optional[str]:
    """Why ``method`` is pointless for a table of ``num_embeddings`` categories, known before
    building it, or ``None``: ``num_collisions >= n`` for the :data:`~compemb.options.COLLISION_METHODS`
    (one class for everything), ``num_hot >= n`` for ``freq`` (every category a row of its own).

    Example::

        >>> cannot_compress_reason("qr", 3, 4)
        'num_collisions=4 >= num_embeddings=3 puts every category in one class'
    """
    n, m = num_embeddings, num_collisions
    if method in COLLISION_METHODS and m >= n:
        return f"num_collisions={m} >= num_embeddings={n} puts every category in one class"
    if method == "freq" and num_hot is not None and num_hot >= n:
        return f"num_hot={num_hot} >= num_embeddings={n} gives every category a row of its own"
    return None


def _cannot_compress_reason(config: EmbeddingBagConfig, sizes: Dict[str, Any]) -> Optional[str]:
    """:func:`cannot_compress_reason` for a table spec and the sizes chosen for its compression."""
    return cannot_compress_reason(config.method, config.num_embeddings,
                                  sizes.get("num_collisions", config.num_collisions),
                                  sizes.get("num_hot", config.num_hot))


def build_embedding_bag(
    config: EmbeddingBagConfig,
    *,
    sparse: bool = False,
    include_last_offset: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    fallback: bool = True,
    counts: Any = None,
) -> nn.Module:
    """Build the module a :class:`EmbeddingBagConfig` describes; its output width is ``embedding_dim``.

    ``full`` is a ``torch.nn.EmbeddingBag`` initialised U(-sqrt(1/n), sqrt(1/n)) (DLRM's init, not
    torch's N(0, 1)); ``hash`` a :class:`~compemb.baselines.HashEmbeddingBag` with ``num_collisions``
    ids per bucket; ``qr``/``gqr``/``crt`` a :class:`~compemb.modules.CompositionalEmbeddingBag`
    over ``quotient_remainder(n, num_collisions)``, ``generalized_qr(n, k=k)`` or
    ``chinese_remainder(n, k=k)``; ``path`` a :class:`~compemb.path.PathEmbeddingBag` (quotient
    base table, one map per remainder class); ``md`` a
    :class:`~compemb.baselines.MixedDimEmbeddingBag`; ``tt`` a :class:`~compemb.tt.TTEmbeddingBag`;
    ``robe`` a :class:`~compemb.robe.ROBEEmbeddingBag`; ``freq`` and ``cluster`` a
    :class:`~compemb.data_aware.DataAwareEmbeddingBag` (frequency-aware over QR, clustered QR).

    **Compression ratio.** With ``config.compression = R`` the method's size parameter comes from
    :func:`compemb.compression.size_for_config` (at most ``n D / R`` parameters, as close as the
    method allows) and the built module's ``size_choice`` attribute holds the choice and the
    achieved ratio (``size_choice.describe()``). When the method cannot reach ``R``, its most
    compressed size is built (``size_choice.reached`` is False) with ``fallback=True``, and a
    :class:`~compemb.compression.CompressionUnreachableError` (a ``ValueError``) is raised with
    ``fallback=False``.

    **Tables that cannot be compressed.** When the compressed module would hold at least as
    many parameters as the full ``n x embedding_dim`` table (tiny ``n``, large per-class MLPs,
    ``md`` at full width ...), when ``num_collisions >= n`` for qr, path, hash, freq or cluster
    (:data:`compemb.options.COLLISION_METHODS`: one class for everything), or when
    ``num_hot >= n`` for freq (every category a row of its own), a full table is built instead
    (``fallback=True``, the default) or a ``ValueError`` naming the table is raised
    (``fallback=False``). Which tables deserve compression in a model (DLRM's size threshold)
    is decided by the caller, not here. Every built module records the decision in attributes:
    ``requested_method`` (``config.method``), ``built_method`` (what was built),
    ``fallback_reason`` (``None`` or why) and ``config``.

    Args:
        config: the table spec.
        sparse: sparse gradients (for ``torch.optim.SGD``/``SparseAdam``).
        include_last_offset: the ``nn.EmbeddingBag`` offsets convention of the built module.
        device, dtype: factory arguments.
        fallback: build a full table when compression cannot reduce the parameter count.
        counts: ``freq`` only (required there): ``(n,)`` occurrence counts of the training split
            (e.g. :func:`compemb.partitions.count_indices`); ignored by the other methods.

    Example::

        >>> bag = build_embedding_bag(EmbeddingBagConfig("tiny", 3, 16, method="qr"))
        >>> bag.built_method, type(bag).__name__
        ('full', 'EmbeddingBag')
    """
    if not isinstance(config, EmbeddingBagConfig):
        raise TypeError(f"build_embedding_bag: expected an EmbeddingBagConfig, got {type(config).__name__}")
    full_params = config.num_embeddings * config.embedding_dim
    built = None
    reason = None
    size_choice = None
    sizes: Dict[str, Any] = {}
    if config.method != "full":
        if config.method == "freq" and counts is None:
            raise ValueError(
                f"build_embedding_bag: table {config.name!r} has method='freq', which needs the training split's "
                "counts: build_embedding_bag(config, counts=...)"
            )
        if config.compression is not None:
            from compemb.compression import size_for_config

            size_choice = size_for_config(config, strict=not fallback)
            sizes = dict(size_choice.options)
        reason = _cannot_compress_reason(config, sizes)
        if reason is None:
            built = _compressed_embedding_bag(config, sparse, include_last_offset, device, dtype, sizes, counts)
            params = num_parameters(built)
            if params >= full_params:
                reason = f"it would hold {params} parameters, not fewer than the full table's {full_params}"
                built = None
        if reason is not None and not fallback:
            raise ValueError(
                f"build_embedding_bag: table {config.name!r} (n={config.num_embeddings}, "
                f"embedding_dim={config.embedding_dim}) cannot be compressed with method="
                f"{config.method!r}: {reason}"
            )
    if built is None:
        built = _full_embedding_bag(config, sparse, include_last_offset, device, dtype)
        built_method = "full"
    else:
        built_method = config.method
    decision = {"config": config, "requested_method": config.method, "built_method": built_method,
                "fallback_reason": reason, "size_choice": size_choice}
    for attr, value in decision.items():
        setattr(built, attr, value)
    return built


# ----------------------------------------------------------------------------------------------
# accounting


def num_parameters(module: nn.Module) -> int:
    """The number of (distinct) parameter entries of an embedding module.

    Counts every parameter once (shared tensors once), buffers not at all. Works for any module,
    in particular ``nn.EmbeddingBag`` and all of compemb's.

    Example::

        >>> num_parameters(nn.EmbeddingBag(10, 4))
        40
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"num_parameters: expected an nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())


def _num_categories(module: nn.Module) -> int:
    # The reference DLRM QREmbeddingBag keeps n in num_categories and a list in num_embeddings.
    for attr in ("num_categories", "num_embeddings"):
        value = getattr(module, attr, None)
        if _is_int(value):
            return value
    raise TypeError(
        f"{type(module).__name__} exposes no int num_embeddings (or num_categories): cannot tell "
        "how many categories it embeds"
    )


def output_width(module: nn.Module) -> int:
    """The width of the vectors ``module`` returns.

    ``output_dim`` when the module declares it, else ``embedding_dim`` when it is an int; for the
    reference-DLRM style ``embedding_dim`` list of per-table widths, their sum under
    ``operation="concat"`` and the common width otherwise.
    """
    declared = getattr(module, "output_dim", None)  # e.g. compemb's QREmbeddingBag
    if _is_int(declared):
        return declared
    value = getattr(module, "embedding_dim", None)
    if _is_int(value):
        return value
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        if getattr(module, "operation", None) == "concat":
            return sum(value)
        return value[0]
    raise TypeError(f"{type(module).__name__} exposes no usable embedding_dim (got {value!r})")


def compression_ratio(module: nn.Module) -> float:
    """``n x width`` of the full table over the module's :func:`num_parameters`.

    ``n`` is the module's ``num_embeddings`` (``num_categories`` for DLRM's QR module) and
    ``width`` its output width (:func:`output_width`); 1.0 for a full table, above 1 when the
    module is smaller.

    Example::

        >>> compression_ratio(nn.EmbeddingBag(10, 4))
        1.0
    """
    params = num_parameters(module)
    if params == 0:
        raise ValueError(f"compression_ratio: {type(module).__name__} has no parameters")
    return _num_categories(module) * output_width(module) / params
