"""FBGEMM collection backend: every component table of every feature in one TBE lookup.

All tables live in one FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen`` (with a fused optimizer,
``"exact_sgd"`` or ``"exact_rowwise_adagrad"``: the update happens inside backward and no
gradient is materialised) or ``DenseTableBatchedEmbeddingBagsCodegen`` (dense trainable weights).
TBE pools each table on its own (:func:`compemb.kernels.exactness_reason`); ``mult`` with
``compose="before_pool"`` is served for one-hot bags only, checked per batch. ``fbgemm_gpu`` is
imported when the tables are built, not with this module.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import nn

from compemb.kernels._base import CollectionBackend, EncodedBag, FeatureSpec, LookupInput, import_reason
from compemb.kernels._pooled import combine_pooled
from compemb.options import FUSED_OPTIMIZERS

__all__ = ["FbgemmCollection"]


def _make_tbe(shapes: List[Tuple[int, int]], optimizer: Optional[str], learning_rate: float, eps: float,
              device: torch.device) -> nn.Module:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        DenseTableBatchedEmbeddingBagsCodegen,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    # one pooling mode for all tables: SUM, then mean features are divided by bag lengths
    on_cpu = device.type == "cpu"
    if optimizer is None:
        return DenseTableBatchedEmbeddingBagsCodegen(shapes, pooling_mode=PoolingMode.SUM, use_cpu=on_cpu).to(device)
    location = EmbeddingLocation.HOST if on_cpu else EmbeddingLocation.DEVICE
    compute = ComputeDevice.CPU if on_cpu else ComputeDevice.CUDA
    opt = {"exact_sgd": EmbOptimType.EXACT_SGD, "exact_rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}[optimizer]
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(r, d, location, compute) for r, d in shapes],
        optimizer=opt, learning_rate=learning_rate, eps=eps, pooling_mode=PoolingMode.SUM, device=device,
    )


def _tbe(module: nn.Module) -> Any:
    """The collection's FBGEMM TBE module (its methods are FBGEMM's, untyped)."""
    return module.get_submodule("tbe")


class FbgemmCollection(CollectionBackend):
    """One FBGEMM TBE over all component tables, in the collection's ``tbe`` submodule."""

    name = "fbgemm"
    fused_optimizers = FUSED_OPTIMIZERS

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        return import_reason("fbgemm_gpu.split_table_batched_embeddings_ops_training")

    @classmethod
    def unsupported_reason(
        cls, specs: Sequence[FeatureSpec], optimizer: Optional[str], device: torch.device
    ) -> Optional[str]:
        if optimizer is None:
            return None
        for spec in specs:
            if any(d % 4 for d in spec.widths):
                # padding would change row-wise Adagrad's mean over the row: refuse instead
                return (f"feature {spec.name!r}: optimizer={optimizer!r} needs component widths that are "
                        f"multiples of 4 (FBGEMM's row alignment), got widths {spec.widths}")
        return None

    def build(self, module: nn.Module, tables: Sequence[torch.Tensor], device: torch.device) -> None:
        shapes = [(int(w.shape[0]), int(w.shape[1])) for w in tables]
        module.tbe = _make_tbe(shapes, self.optimizer, self.learning_rate, self.eps, device)
        with torch.no_grad():
            for dst, src in zip(self.tables(module), tables):
                dst.copy_(src)

    def tables(self, module: nn.Module) -> List[torch.Tensor]:
        return list(_tbe(module).split_embedding_weights())

    def optimizer_states(self, module: nn.Module) -> List[torch.Tensor]:
        """Row-wise Adagrad's per-row sum of mean squared gradients, per component table."""
        if self.optimizer != "exact_rowwise_adagrad":
            return super().optimizer_states(module)
        return [s[0] for s in _tbe(module).split_optimizer_states()]

    def lookup(
        self, module: nn.Module, bags: LookupInput, concat: bool, validate: bool
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        encoded = cast(List[EncodedBag], bags)  # raw_input is False
        idx_parts, off_parts = [], []
        base = 0
        for spec, (codes, offsets, _) in zip(self.specs, encoded):
            lengths = offsets[1:] - offsets[:-1]
            if spec.operation == "mult" and spec.compose == "before_pool" and spec.k > 1 \
                    and lengths.numel() and int(lengths.max()) > 1:
                raise ValueError(
                    f"feature {spec.name!r}: operation='mult' with compose='before_pool' is exact on "
                    f"FBGEMM only for one-hot bags, got a bag of {int(lengths.max())} indices "
                    "(use compose='after_pool' or backend='torch')")
            n = codes.shape[1]
            for t in range(spec.k):
                idx_parts.append(codes[t])
                off_parts.append(offsets[:-1] + base + t * n)
            base += spec.k * n
        device = encoded[0].offsets.device
        indices = torch.cat(idx_parts).long()
        tbe_offsets = torch.cat(off_parts + [torch.tensor([base], dtype=torch.long, device=device)])
        pooled = _tbe(module)(indices, tbe_offsets)  # (B, sum of all widths)
        outs = []
        # one split (its backward is one cat), not a slice per feature (a zero-filled copy each)
        blocks = torch.split(pooled, [sum(spec.widths) for spec in self.specs], dim=1)
        for spec, (_, offsets, _), block in zip(self.specs, encoded, blocks):
            if spec.mode == "mean":
                lengths = (offsets[1:] - offsets[:-1]).clamp(min=1).to(block.dtype)
                block = block / lengths.unsqueeze(1)
            outs.append(combine_pooled(block, spec.widths, spec.operation))
        return torch.cat(outs, dim=1) if concat else outs
