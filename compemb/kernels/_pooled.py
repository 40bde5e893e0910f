"""Per-table pooling, as FBGEMM's table-batched embedding (TBE) computes it, in plain torch.

A TBE pools every table on its own; these helpers say when that is exact for a compositional
bag, lay the ``(k, N)`` codes out as TBE input, call FBGEMM's dense TBE operator on given tables
and combine the pooled tables afterwards. Nothing here imports ``fbgemm_gpu`` (the operator is
looked up when called).

Example::

    >>> exactness_reason("add", "mean", "before_pool", 2) is None
    True
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import torch

from compemb.options import COMPOSES, OPERATIONS

__all__ = ["exactness_reason", "tbe_inputs", "combine_pooled", "dense_tbe_lookup"]


def exactness_reason(operation: str, mode: str, compose: str, k: int) -> Optional[str]:
    """``None`` when per-table pooling (what TBE does) is exact for the configuration, else why not.

    Exact: ``add`` and ``concat`` with ``sum``/``mean`` (pooling is linear and coordinate-wise),
    ``mult`` after pooling, and anything with one table.
    """
    if mode not in ("sum", "mean"):
        return f"mode={mode!r} (FBGEMM TBE pools with 'sum' or 'mean' only)"
    if operation not in OPERATIONS:
        return f"operation={operation!r}"
    if compose not in COMPOSES:
        return f"compose={compose!r}"
    if operation == "mult" and compose == "before_pool" and k > 1:
        return ("operation='mult' with compose='before_pool' (FBGEMM pools each table before "
                "combining: exact only for one-hot bags; use compose='after_pool')")
    return None


def tbe_inputs(codes: torch.Tensor, offsets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flatten ``(k, N)`` codes and ``(B + 1,)`` offsets into TBE's table-major indices and offsets.

    Table ``t``'s bags come after those of tables ``0..t-1``: the offsets have ``k * B + 1`` entries.

    Example::

        >>> idx, off = tbe_inputs(torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([0, 2, 3]))
        >>> idx.tolist(), off.tolist()
        ([0, 1, 2, 3, 4, 5], [0, 2, 3, 5, 6])
    """
    k, n = codes.shape
    starts = offsets[:-1].unsqueeze(0) + n * torch.arange(k, device=offsets.device).unsqueeze(1)
    tail = torch.tensor([k * n], dtype=offsets.dtype, device=offsets.device)
    return codes.reshape(-1), torch.cat([starts.reshape(-1), tail])


def combine_pooled(pooled: torch.Tensor, widths: Sequence[int], operation: str) -> torch.Tensor:
    """Split ``(B, sum d_i)`` into the k pooled tables and combine them with ``operation``.

    ``concat`` (and one table) returns ``pooled`` itself.
    """
    if operation == "concat" or len(widths) == 1:
        return pooled
    parts = torch.split(pooled, list(widths), dim=1)
    out = parts[0]
    for p in parts[1:]:
        out = out * p if operation == "mult" else out + p
    return out


#: what says where a TBE's tables lie in its flat weights
_TABLE_KEYS = ("weights_offsets", "D_offsets", "total_D", "hash_size_cumsum")


def dense_tbe_lookup(tbe: Any, dev_weights: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
                     pooling_mode: int, indice_weights: Optional[torch.Tensor] = None,
                     tables: Optional[Mapping[str, Any]] = None) -> torch.Tensor:
    """FBGEMM's dense TBE operator: the pooled ``(B, total_D)`` lookup of ``tbe``'s tables in ``dev_weights``.

    ``tbe`` is a ``DenseTableBatchedEmbeddingBagsCodegen`` (its shapes and output dtype).
    ``tables`` replaces its ``weights_offsets``, ``D_offsets``, ``total_D`` and
    ``hash_size_cumsum`` (a lookup of some of its tables, in another order).
    """
    layout = {key: getattr(tbe, key) if tables is None else tables[key] for key in _TABLE_KEYS}
    vbe = tbe._generate_vbe_metadata(offsets, None)
    return torch.ops.fbgemm.dense_embedding_codegen_lookup_function(
        dev_weights=dev_weights, max_D=tbe.max_D, total_hash_size_bits=tbe.total_hash_size_bits,
        indices=indices, offsets=offsets, pooling_mode=pooling_mode, indice_weights=indice_weights,
        feature_requires_grad=None, output_dtype=tbe.output_dtype, B_offsets=vbe.B_offsets,
        vbe_output_offsets_feature_rank=vbe.output_offsets_feature_rank,
        vbe_B_offsets_rank_per_feature=vbe.B_offsets_rank_per_feature, max_B=vbe.max_B,
        max_B_feature_rank=vbe.max_B_feature_rank, vbe_output_size=vbe.output_size, **layout,
    )
