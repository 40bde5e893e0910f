"""The embedding tables of a DLRM: one spec per categorical feature, and the modules built from them.

:func:`table_specs` derives the specs (compressing only the tables over a size threshold); a
:class:`dlrm.model.DLRM` builds one compemb module per table (:func:`build_table`, probed for its
output width and sparse-gradient parameters) or all tables as one collection
(:func:`build_collection`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from compemb.kernels import get_collection_backend
from compemb.options import FAMILY_METHODS, METHODS

if TYPE_CHECKING:
    from compemb.collection import CompositionalEmbeddingBagCollection
    from dlrm.model import DLRMConfig

__all__ = ["table_specs", "build_table", "probe_output_width", "enable_sparse", "sparse_gradient_parameters",
           "build_collection"]


def _embedding_bag_config():
    from compemb.config import EmbeddingBagConfig

    return EmbeddingBagConfig


def table_specs(
    cardinalities: Sequence[int],
    embedding_dim: int,
    method: str = "full",
    *,
    threshold: int = 0,
    feature_names: Optional[Sequence[str]] = None,
    md_temperature: Optional[float] = None,
    **options,
) -> list:
    """Derive one table spec per categorical feature, compressing only the large tables.

    As in the paper, only tables with MORE rows than ``threshold`` use ``method``; the others are
    full tables. With ``method="md"`` the compressed tables get per-table widths from
    :func:`compemb.md_dims` with temperature ``md_temperature`` (``alpha``), unless ``md_dim`` is
    given in ``options``.

    Args:
        cardinalities: rows of each table.
        embedding_dim: output width ``d`` of every table.
        method: one of :data:`compemb.options.METHODS` (``full | hash | qr | gqr | crt | path | md
            | tt | robe | freq | cluster``).
        threshold: tables with ``rows > threshold`` are compressed.
        feature_names: names of the tables (default ``"t0"``, ``"t1"``, ...).
        md_temperature: ``alpha`` for mixed dimensions.
        **options: further fields of :class:`compemb.config.EmbeddingBagConfig`
            (:func:`dlrm.config.table_option_fields`: ``operation``, ``num_collisions``, ``k``,
            ``hidden_dims``, ``md_dim``, ``mode``, ``compose``, ``backend``, ``tt_rank``,
            ``num_hot``, ``compression``).

    Returns:
        list of :class:`compemb.config.EmbeddingBagConfig`.

    Example::

        >>> [s.method for s in table_specs([5, 500], 4, "hash", threshold=10, num_collisions=2)]
        ['full', 'hash']
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"threshold must be a non-negative int, got {threshold!r}")
    cards = [int(c) for c in cardinalities]
    for i, c in enumerate(cards):
        if c < 1:
            raise ValueError(f"cardinality of table {i} must be >= 1, got {c}")
    if feature_names is None:
        feature_names = [f"t{i}" for i in range(len(cards))]
    if len(feature_names) != len(cards):
        raise ValueError(
            f"{len(feature_names)} feature names for {len(cards)} cardinalities"
        )
    if len(set(feature_names)) != len(feature_names):
        raise ValueError(f"duplicate feature names in {list(feature_names)}")
    config_cls = _embedding_bag_config()
    compressed = [c > threshold for c in cards]
    md_widths: Dict[int, int] = {}
    if method == "md" and "md_dim" not in options:
        alpha = 0.3 if md_temperature is None else float(md_temperature)
        big = [i for i, flag in enumerate(compressed) if flag]
        if big:
            from compemb import md_dims

            dims = md_dims([cards[i] for i in big], alpha, embedding_dim)
            md_widths = {i: int(w) for i, w in zip(big, dims)}
    specs = []
    shared = {k: v for k, v in options.items() if k in ("mode", "backend")}
    for i, (name, rows) in enumerate(zip(feature_names, cards)):
        if compressed[i] and method != "full":
            extra = dict(options)
            if method == "md" and i in md_widths:
                extra["md_dim"] = md_widths[i]
            specs.append(
                config_cls(name=str(name), num_embeddings=rows, embedding_dim=embedding_dim,
                           method=method, **extra)
            )
        else:
            specs.append(
                config_cls(name=str(name), num_embeddings=rows, embedding_dim=embedding_dim,
                           method="full", **shared)
            )
    return specs


def build_table(spec, dlrm_compatible_qr: bool, sparse: bool, counts: Any = None) -> nn.Module:
    """The module of one table spec (``counts``: a ``freq`` table's training counts)."""
    if dlrm_compatible_qr and spec.method == "qr":
        from compemb.modules import QREmbeddingBag

        return QREmbeddingBag(
            spec.num_embeddings,
            spec.embedding_dim,
            num_collisions=spec.num_collisions,
            operation=spec.operation,
            mode=spec.mode,
            sparse=sparse,
            compose=spec.compose,
            backend=spec.backend,
        )
    from compemb.config import build_embedding_bag

    return build_embedding_bag(spec, sparse=sparse, counts=counts)


def _probe(module: nn.Module, device: torch.device) -> torch.Tensor:
    """The module's output for a single one-element bag (index 0) on ``device``."""
    return module(torch.zeros(1, dtype=torch.long, device=device), torch.tensor([0], dtype=torch.long, device=device))


@torch.no_grad()
def probe_output_width(module: nn.Module) -> int:
    """The width of a table module's output, probed: the one width fact every module shares,
    whatever its method keeps internally."""
    param = next(module.parameters(), None)
    return int(_probe(module, param.device if param is not None else torch.device("cpu")).shape[-1])


def enable_sparse(module: nn.Module, sparse: bool) -> List[nn.Parameter]:
    """Turn on sparse gradients where the module supports them; return the parameters that do
    receive sparse gradients (found by one probe backward, so nothing is guessed)."""
    if not sparse:
        return []
    for sub in module.modules():
        if isinstance(getattr(sub, "sparse", None), bool):
            flag: Any = sub  # a module with a boolean ``sparse`` attribute
            try:
                flag.sparse = True
            except (AttributeError, TypeError):
                continue
    return sparse_gradient_parameters(module)


def sparse_gradient_parameters(module: nn.Module) -> List[nn.Parameter]:
    """The parameters of an embedding module that receive sparse gradients, found by one probe
    backward through a one-element bag (nothing is guessed from the module's type)."""
    param = next(module.parameters(), None)
    if param is None:
        return []
    _probe(module, param.device).sum().backward()
    found = [p for p in module.parameters() if p.grad is not None and p.grad.is_sparse]
    for p in module.parameters():
        p.grad = None
    return found


def build_collection(
    config: DLRMConfig, device: Union[str, torch.device, None]
) -> CompositionalEmbeddingBagCollection:
    """All tables in one :class:`compemb.collection.CompositionalEmbeddingBagCollection`.

    Anything the collection cannot serve is refused here (at model build time) with a
    ``ValueError`` that names the table and the reason.
    """
    backend = config.resolved_collection_backend
    assert backend is not None, "only called for a collection backend"
    what = (f"collection_backend={backend!r}" if config.collection_backend is not None
            else f"fused_optimizer={config.fused_optimizer!r}")
    reason = get_collection_backend(backend).unavailable_reason()
    if reason is not None:
        raise ValueError(f"{what} is unavailable: {reason}")
    from compemb.collection import CompositionalEmbeddingBagCollection

    if not config.tables:
        raise ValueError(f"{what} needs at least one table")
    for spec in config.tables:
        # refused by the collection as well; said here in the DLRM's words
        if spec.method not in FAMILY_METHODS:
            raise ValueError(
                f"table {spec.name!r}: method={spec.method!r} cannot be served by {what} (the collection "
                "serves 'full', 'qr', 'gqr' and 'crt' tables); use collection_backend=None "
                "(compemb train: --embedding-collection none)"
            )
    try:
        return CompositionalEmbeddingBagCollection(
            config.tables, backend=backend, optimizer=config.fused_optimizer,
            learning_rate=config.fused_learning_rate, include_last_offset=True, device=device,
        )
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{what}: {exc}") from exc
