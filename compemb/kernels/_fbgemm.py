"""FBGEMM backend: each component table of a bag pooled by FBGEMM's TBE operator, then combined.

FBGEMM's table-batched embedding (TBE) pools every table on its own (``sum`` or ``mean``), so it
computes a compositional bag exactly when pooling and combining commute:

- ``add`` and ``concat`` with ``sum`` / ``mean`` (pooling is linear and coordinate-wise);
- ``mult`` with ``compose="after_pool"`` (the reference DLRM QR behaviour);
- ``mult`` with ``compose="before_pool"`` only when every bag holds at most one index (one-hot
  features): ``unsupported_reason`` refuses it because one-hotness is a property of the data, but
  :meth:`FbgemmBackend.embedding_bag` serves it when asked directly and the bags are one-hot.

``max`` pooling is not offered by TBE and is refused. The single-module backend calls FBGEMM's
dense TBE op (``DenseTableBatchedEmbeddingBagsCodegen``) once per component table, on the
module's own weights (batching them into one call would copy all tables every call), so gradients
flow through autograd to the module's own parameters; the fused optimizers (exact SGD, exact
row-wise Adagrad) need FBGEMM to own the weights and are served by
:class:`compemb.collection.CompositionalEmbeddingBagCollection`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

from compemb.kernels._base import Backend
from compemb.kernels._pooled import combine_pooled, dense_tbe_lookup, exactness_reason, tbe_inputs
from compemb.options import BagOptions

__all__ = ["BACKEND", "FbgemmBackend", "fbgemm_embedding_bag", "tbe_inputs", "exactness_reason", "combine_pooled"]

_CACHE: Dict[tuple, DenseTableBatchedEmbeddingBagsCodegen] = {}


def _dense_tbe(shapes: Tuple[Tuple[int, int], ...], pooling: str,
               device: torch.device) -> DenseTableBatchedEmbeddingBagsCodegen:
    key = (shapes, pooling, str(device))
    tbe = _CACHE.get(key)
    if tbe is None:
        mode = PoolingMode.SUM if pooling == "sum" else PoolingMode.MEAN
        tbe = DenseTableBatchedEmbeddingBagsCodegen(
            [(r, d) for r, d in shapes], pooling_mode=mode, use_cpu=device.type == "cpu",
        )
        # the module's own weights are never used: we pass the caller's tables to the op
        tbe.weights = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        tbe = tbe.to(device)
        _CACHE[key] = tbe
    return tbe


def _pooled_one_table(codes_t: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, mode: str,
                      per_sample_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """``(B, d)``: one table pooled over every bag by FBGEMM's dense TBE op (no copy of the table)."""
    tbe = _dense_tbe(((int(weight.shape[0]), int(weight.shape[1])),), mode, weight.device)
    return dense_tbe_lookup(tbe, weight.reshape(-1), codes_t, offsets, tbe.pooling_mode, per_sample_weights)


def _pooled_per_table(codes: torch.Tensor, offsets: torch.Tensor, weights: Sequence[torch.Tensor], mode: str,
                      per_sample_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """``(B, sum d_i)``: every table pooled over every bag.

    One lookup per table on the caller's own tensors: batching the k tables into one TBE call
    would need a copy of all of them per call (their storage is not contiguous), which costs more
    than the k launches it saves. The collection, which owns its tables, batches them for real.
    """
    psw = per_sample_weights.float() if per_sample_weights is not None else None
    parts = [_pooled_one_table(codes[t], offsets, w, mode, psw) for t, w in enumerate(weights)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def fbgemm_embedding_bag(
    codes: torch.Tensor,
    offsets: torch.Tensor,
    weights: Sequence[torch.Tensor],
    operation: str = "mult",
    mode: str = "sum",
    compose: str = "before_pool",
    per_sample_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The kernel contract computed with FBGEMM's table-batched lookup (fp32 tables).

    Args:
        codes, offsets, weights, operation, mode, compose, per_sample_weights: see
            ``docs/architecture.md`` section 2; the configuration must be one TBE computes exactly
            (:func:`exactness_reason`), or ``mult``/``before_pool`` on one-hot bags.

    Shape:
        output ``(B, d)`` (``(B, sum d_i)`` for concat).

    Example::

        >>> w = [torch.randn(4, 8), torch.randn(3, 8)]
        >>> codes = torch.tensor([[0, 3, 1], [2, 0, 0]])
        >>> fbgemm_embedding_bag(codes, torch.tensor([0, 2, 3]), w, "add").shape
        torch.Size([2, 8])
    """
    weights = list(weights)
    k = len(weights)
    if k == 0:
        raise ValueError("fbgemm backend needs at least one table, got an empty weights list")
    if codes.dim() != 2 or codes.shape[0] != k:
        raise ValueError(f"codes must have shape (k={k}, N), got {tuple(codes.shape)}")
    for i, w in enumerate(weights):
        if w.dtype != torch.float32:
            raise TypeError(f"fbgemm backend serves float32 tables, weights[{i}] is {w.dtype}")
    widths = [int(w.shape[1]) for w in weights]
    if operation != "concat" and len(set(widths)) != 1:
        raise ValueError(f"operation={operation!r} needs tables of one width, got widths {widths}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError(f"per_sample_weights needs mode='sum', got mode={mode!r}")
    reason = exactness_reason(operation, mode, compose, k)
    scale_after = None
    if reason is not None and operation == "mult" and compose == "before_pool" and mode in ("sum", "mean"):
        lengths = offsets[1:] - offsets[:-1]
        if lengths.numel() and int(lengths.max()) > 1:
            raise ValueError(f"fbgemm backend cannot serve {reason}: a bag holds {int(lengths.max())} indices")
        # one index per bag: combining then pooling is pooling then combining, with the
        # per-sample weight applied once to the composed vector
        reason, scale_after, per_sample_weights = None, per_sample_weights, None
    if reason is not None:
        raise ValueError(f"fbgemm backend cannot serve {reason}")
    codes = codes.long()
    offsets = offsets.long()
    if codes.shape[1] == 0:  # TBE on no indices at all: zeros that stay in the graph
        width = sum(widths) if operation == "concat" else widths[0]
        return sum(w.sum() * 0 for w in weights) + torch.zeros(offsets.numel() - 1, width, device=weights[0].device)
    pooled = _pooled_per_table(codes, offsets, weights, mode, per_sample_weights)
    out = combine_pooled(pooled, widths, operation)
    if scale_after is not None:  # the weight of each bag's only index (empty bags are zeros anyway)
        starts = offsets[:-1].clamp(max=max(codes.shape[1] - 1, 0))
        out = out * scale_after.to(out.dtype)[starts].unsqueeze(1)
    return out


class FbgemmBackend(Backend):
    """FBGEMM table-batched lookups (CPU with fbgemm-gpu-cpu, CUDA with fbgemm-gpu)."""

    name = "fbgemm"
    priority = 10

    def unsupported_reason(self, options: BagOptions) -> Optional[str]:
        device = options.device
        if device.type not in ("cpu", "cuda"):
            return f"device {device} (fbgemm serves cpu and cuda)"
        reason = exactness_reason(options.operation, options.mode, options.compose, options.k)
        if reason is not None:
            return reason
        if options.dtype != torch.float32:
            return (f"dtype={options.dtype} (the fbgemm backend serves float32 tables; see "
                    "compemb.quantization.quantize for int8/int4)")
        if options.sparse:
            return "sparse=True gradients (fbgemm's fused optimizers live in CompositionalEmbeddingBagCollection)"
        if options.max_norm is not None:
            return f"max_norm={options.max_norm} (renormalisation is not implemented)"
        return None

    def kernel(self) -> Callable[..., torch.Tensor]:
        return fbgemm_embedding_bag


BACKEND = FbgemmBackend()
