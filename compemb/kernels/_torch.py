"""The reference backend: :func:`compemb.functional.embedding_bag_codes` in plain PyTorch.

It computes every configuration (any operation, mode, compose, k, dtype, device, per-sample
weights, sparse gradients, ``max_norm``), so ``"auto"`` can always fall back to it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from compemb.functional import reference as _F
from compemb.kernels import Backend
from compemb.options import BagOptions

__all__ = ["TorchBackend", "BACKEND"]


class TorchBackend(Backend):
    """Plain PyTorch with autograd; the reference every other backend is tested against."""

    name = "torch"
    priority = 0

    def unsupported_reason(self, options: BagOptions) -> Optional[str]:
        if options.per_sample_weights and options.mode != "sum":
            return f"per_sample_weights need mode='sum', got {options.mode!r}"
        if not options.dtype.is_floating_point:
            return f"tables must be floating point, got {options.dtype}"
        return None

    def embedding_bag(
        self,
        codes: torch.Tensor,
        offsets: torch.Tensor,
        weights: Sequence[torch.Tensor],
        operation: str,
        mode: str,
        compose: str,
        per_sample_weights: Optional[torch.Tensor] = None,
        *,
        sparse: bool = False,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
    ) -> torch.Tensor:
        return _F.embedding_bag_codes(
            codes, offsets, weights, operation, mode, compose, per_sample_weights,
            sparse=sparse, max_norm=max_norm, norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
        )


BACKEND = TorchBackend()
