"""The reference backend: :func:`compemb.functional.embedding_bag_codes` in plain PyTorch.

It computes every configuration (any operation, mode, compose, k, dtype, device, per-sample
weights, sparse gradients, ``max_norm``), so ``"auto"`` can always fall back to it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from compemb.functional import reference as _F
from compemb.kernels import Backend
from compemb.options import BagOptions

__all__ = ["TorchBackend", "BACKEND"]


class TorchBackend(Backend):
    """Plain PyTorch with autograd; the reference every other backend is tested against."""

    name = "torch"
    priority = 0
    extras = frozenset({"sparse", "max_norm", "norm_type", "scale_grad_by_freq"})

    def unsupported_reason(self, options: BagOptions) -> Optional[str]:
        if options.per_sample_weights and options.mode != "sum":
            return f"per_sample_weights need mode='sum', got {options.mode!r}"
        if not options.dtype.is_floating_point:
            return f"tables must be floating point, got {options.dtype}"
        return None

    def kernel(self) -> Callable[..., torch.Tensor]:
        return _F.embedding_bag_codes


BACKEND = TorchBackend()
