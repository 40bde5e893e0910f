"""Per-table pooling, as FBGEMM's table-batched embedding (TBE) computes it, in plain torch.

A TBE pools every table on its own; these helpers say when that is exact for a compositional
bag, lay the ``(k, N)`` codes out as TBE input and combine the pooled tables afterwards. Nothing
here imports ``fbgemm_gpu``.

Example::

    >>> exactness_reason("add", "mean", "before_pool", 2) is None
    True
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from compemb.options import COMPOSES, OPERATIONS

__all__ = ["exactness_reason", "tbe_inputs", "combine_pooled"]


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
