"""How much the compressed tables of a model hold against their full size: the achieved ratio.

``compression=R`` (:class:`compemb.config.EmbeddingBagConfig`, ``compemb train --compression R``)
asks every compressed table for at most ``1/R`` of its full ``n x d`` parameters;
:func:`compression_metrics` measures what the built model achieved over its compressed tables
(the ones whose spec names a method other than ``full``: the tables below the size threshold are
full by choice and are not counted), and :func:`compression_summary` says it in one line, naming
the tables whose method could not reach ``R``.

Works for :class:`dlrm.model.DLRM` and the families of :mod:`dlrm.models` alike (both give
``config.tables`` and ``table_parameters()``).

Example::

    >>> from dlrm.model import DLRM, DLRMConfig, table_specs
    >>> model = DLRM(DLRMConfig(2, (4,), (1,), table_specs([10_000, 7], 4, "qr", threshold=10, compression=16)))
    >>> m = compression_metrics(model)
    >>> m["compression_target"], m["compressed_full_params"], m["compression_achieved"] >= 16
    (16.0, 40000, True)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = ["compression_metrics", "compression_summary", "table_modules"]


def table_modules(model: Any) -> Dict[str, Any]:
    """``{table name: its module}`` where the model keeps one module per table (``{}`` for a
    DLRM whose tables live in a table-batched collection)."""
    specs = list(model.config.tables)
    modules = list(getattr(model, "embeddings", []))
    if getattr(model, "collection", None) is not None or len(modules) != len(specs):
        return {}
    return {spec.name: module for spec, module in zip(specs, modules)}


def compression_metrics(model: Any) -> Dict[str, Any]:
    """The compressed tables' size against their full size.

    Returns:
        ``compression_target`` (``R``, or ``None`` when no table asked for a ratio),
        ``compressed_tables`` (how many), ``compressed_params`` (their parameters),
        ``compressed_full_params`` (``sum n d`` over them) and ``compression_achieved``
        (the second over the first; ``None`` without compressed tables).
    """
    specs = [s for s in model.config.tables if s.method != "full"]
    per_table = model.table_parameters()
    used = sum(int(per_table[s.name]) for s in specs)
    full = sum(int(s.num_embeddings) * int(s.embedding_dim) for s in specs)
    targets = sorted({float(s.compression) for s in specs if getattr(s, "compression", None) is not None})
    return {
        "compression_target": targets[-1] if targets else None,
        "compressed_tables": len(specs),
        "compressed_params": used,
        "compressed_full_params": full,
        "compression_achieved": full / used if used else None,
    }


def compression_summary(model: Any) -> Optional[str]:
    """One line on the achieved ratio when a table asked for one (``None`` otherwise), e.g.
    ``compression: target 16x; 3 compressed tables hold 3,392 of their full 54,320 parameters:
    16.0x (zip_code: qr cannot reach 16x, 14.2x at num_collisions=28)``."""
    m = compression_metrics(model)
    if m["compression_target"] is None:
        return None
    modules = table_modules(model)
    missed: List[str] = []
    for spec in model.config.tables:
        module = modules.get(spec.name)
        choice = getattr(module, "size_choice", None)
        if spec.method == "full" or module is None:
            continue
        if getattr(module, "built_method", spec.method) == "full":
            missed.append(f"{spec.name}: built full ({getattr(module, 'fallback_reason', None)})")
        elif choice is not None and not choice.reached:
            sizes = ", ".join(f"{k}={v}" for k, v in choice.options.items())
            missed.append(f"{spec.name}: {spec.method} cannot reach {choice.target:g}x, {choice.ratio:.3g}x at {sizes}")
    n = m["compressed_tables"]
    line = (f"compression: target {m['compression_target']:g}x; {n} compressed table{'s' if n != 1 else ''} hold "
            f"{m['compressed_params']:,} of their full {m['compressed_full_params']:,} parameters: "
            f"{m['compression_achieved']:.3g}x" if m["compression_achieved"] is not None else
            f"compression: target {m['compression_target']:g}x; no table is compressed")
    return line + (f" ({'; '.join(missed)})" if missed else "")
