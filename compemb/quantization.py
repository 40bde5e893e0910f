"""Quantized inference: component tables exported to FBGEMM's row-wise int8 / int4 TBE.

:func:`quantize` takes a trained :class:`~compemb.modules.CompositionalEmbeddingBag`,
:class:`~compemb.modules.QREmbeddingBag` or ``torch.nn.EmbeddingBag`` and returns a
:class:`QuantizedEmbeddingBag` with the same forward contract, whose tables live in FBGEMM's
``IntNBitTableBatchedEmbeddingBagsCodegen``: row-wise ``bits``-bit integers with an fp16 scale
and bias per row (``x ~ scale * q + bias``), so a row's error is at most half a step plus the
fp16 rounding. QR (about 4x fewer rows) and int4 (about 8x fewer bytes per row) stack to about
32x smaller tables. See ``docs/architecture.md`` for when the lookup pools inside FBGEMM.

Example::

    >>> import torch
    >>> from compemb import QREmbeddingBag, quantize
    >>> bag = QREmbeddingBag(10_000, 16, num_collisions=4, mode="sum")
    >>> q = quantize(bag, bits=4)
    >>> round(q.fp32_nbytes / q.nbytes, 1) > 4
    True
    >>> q(torch.tensor([[1, 2], [9999, 0]])).shape
    torch.Size([2, 16])
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from compemb import functional as CF
from compemb.kernels import combine_pooled, exactness_reason, tbe_inputs

__all__ = ["QuantizedEmbeddingBag", "quantize", "quantization_error"]


def _export_spec(
    module: nn.Module,
) -> Tuple[List[torch.Tensor], Callable[[torch.Tensor], Any], str, str, str, int, bool]:
    """(weights, encode, operation, mode, compose, num_embeddings, include_last_offset)."""
    from compemb.modules import CompositionalEmbeddingBag, QREmbeddingBag

    if isinstance(module, QREmbeddingBag):
        return ([module.weight_q, module.weight_r], module.encode, module.operation, module.mode,
                module.compose, module.num_categories, module.include_last_offset)
    if isinstance(module, CompositionalEmbeddingBag):
        return (list(module.weights), module.family.encode, module.operation, module.mode,
                module.compose, module.num_embeddings, module.include_last_offset)
    if isinstance(module, nn.EmbeddingBag):
        if module.padding_idx is not None:
            raise ValueError(f"quantize: nn.EmbeddingBag with padding_idx={module.padding_idx} is not supported")
        return ([module.weight], lambda flat: flat.unsqueeze(0), "add", module.mode, "after_pool",
                module.num_embeddings, module.include_last_offset)
    raise TypeError(f"quantize: expected CompositionalEmbeddingBag, QREmbeddingBag or nn.EmbeddingBag, "
                    f"got {type(module).__name__}")


def _check_finite(module: nn.Module, weights: Sequence[torch.Tensor]) -> None:
    """Refuse a table holding NaN or inf, naming it and its first such row.

    The row-wise quantiser would turn a NaN into a finite number (its min/max ignore it) and an
    inf into a row of NaN: either way the exported table would lie about the trained one.
    """
    # parameter names as written in Python: "weights[1]" for "weights.1"
    names = {id(p): re.sub(r"\.(\d+)", r"[\1]", name) for name, p in module.named_parameters()}
    for i, w in enumerate(weights):
        bad = ~torch.isfinite(w.detach())
        if bool(bad.any()):
            rows = bad.any(dim=1).nonzero().flatten()
            row = int(rows[0])
            value = float(w.detach()[row][bad[row]][0])
            raise ValueError(
                f"quantize: {type(module).__name__} table {names.get(id(w), f'tables[{i}]')} has a non-finite "
                f"entry ({value}) in row {row} (rows with one: {rows.numel()} of {w.shape[0]}); quantizing would hide it. "
                "Fix or retrain the table first"
            )


class QuantizedEmbeddingBag(nn.Module):
    """Inference-only compositional embedding bag over FBGEMM row-wise int8/int4 tables.

    Build it with :func:`quantize`. Attributes: ``bits``, ``nbytes`` (bytes of the quantized
    tables, scale and bias included), ``fp32_nbytes`` (bytes of the same tables in fp32),
    ``table_sizes``, ``operation``, ``mode``, ``compose``.

    Shape:
        the forward contract of ``torch.nn.EmbeddingBag``: ``(B, L)`` input, or ``(N,)`` with
        offsets; output ``(B, D_out)`` float32.
    """

    def __init__(self, weights: Sequence[torch.Tensor], encode: Callable[[torch.Tensor], Any],
                 operation: str, mode: str, compose: str,
                 num_embeddings: int, include_last_offset: bool, bits: int) -> None:
        super().__init__()
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

        if bits not in (8, 4):
            raise ValueError(f"bits must be 8 or 4, got {bits!r}")
        self.bits = bits
        self.operation, self.mode, self.compose = operation, mode, compose
        self.num_embeddings = num_embeddings
        self.include_last_offset = include_last_offset
        self._encode = encode
        weights = [w.detach().float().cpu().contiguous() for w in weights]
        self.table_sizes = tuple(int(w.shape[0]) for w in weights)
        self.widths = tuple(int(w.shape[1]) for w in weights)
        k = len(weights)
        self.pooled = exactness_reason(operation, mode, compose, k) is None
        sparse_type = SparseType.INT8 if bits == 8 else SparseType.INT4
        self.fp32_nbytes = sum(w.numel() * 4 for w in weights)
        # FBGEMM's quantiser needs rows of whole fp16 words: pad widths to a multiple of 4 with
        # copies of the row's first entry (leaves the row's min/max, so its quantisation, unchanged)
        self.padded_widths = tuple(-(-d // 4) * 4 for d in self.widths)
        weights = [torch.cat([w, w[:, :1].expand(-1, p - d)], dim=1) if p != d else w
                   for w, d, p in zip(weights, self.widths, self.padded_widths)]

        def make(tables: List[torch.Tensor], pooling: Any) -> nn.Module:
            tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
                [(f"t{i}", int(w.shape[0]), int(w.shape[1]), sparse_type, EmbeddingLocation.HOST)
                 for i, w in enumerate(tables)],
                pooling_mode=pooling, device="cpu", output_dtype=SparseType.FP32,
            )
            tbe.initialize_weights()
            for (q, scale_bias), w in zip(tbe.split_embedding_weights(split_scale_shifts=True), tables):
                # FBGEMM's own row-wise quantiser: packed codes then fp16 scale and bias
                fused = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, bits)
                q.copy_(fused[:, : q.shape[1]])
                scale_bias.copy_(fused[:, q.shape[1]: q.shape[1] + scale_bias.shape[1]])
            return tbe

        if self.pooled:
            mode_ = PoolingMode.SUM if mode == "sum" else PoolingMode.MEAN
            self.tbes = nn.ModuleList([make(weights, mode_)])
        else:  # unpooled rows, one TBE per table (sequence mode needs one width per TBE)
            self.tbes = nn.ModuleList([make([w], PoolingMode.NONE) for w in weights])
        tbes: List[Any] = list(self.tbes)
        self.nbytes = sum(int(t.weights_host.numel()) * t.weights_host.element_size() for t in tbes)

    def __prepare_scriptable__(self) -> nn.Module:
        raise CF.jit_unsupported_error(type(self).__name__, "torch.jit.script")

    @property
    def compression_vs_fp32(self) -> float:
        """``fp32_nbytes / nbytes``: how much smaller the quantized tables are."""
        return self.fp32_nbytes / self.nbytes

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        flat, full_offsets, psw = CF.normalize_bag_input(
            input, offsets, per_sample_weights, self.include_last_offset, self.mode,
            self.num_embeddings, type(self).__name__,
        )
        codes = self._encode(flat.cpu())
        full_offsets = full_offsets.cpu()
        if psw is not None:  # the dequantized tables are float32, whatever the exported ones were
            psw = psw.float().cpu()
        k = codes.shape[0]
        if self.pooled:
            idx, off = tbe_inputs(codes, full_offsets)
            w = psw.repeat(k) if psw is not None else None
            pooled = self.tbes[0](idx.int(), off.int(), w)
            if self.padded_widths != self.widths:
                parts = torch.split(pooled, list(self.padded_widths), dim=1)
                pooled = torch.cat([p[:, :d] for p, d in zip(parts, self.widths)], dim=1)
            return combine_pooled(pooled, self.widths, self.operation)
        rows = [tbe(codes[i].int(), torch.arange(codes.shape[1] + 1, dtype=torch.int32))[:, : self.widths[i]]
                for i, tbe in enumerate(self.tbes)]
        # rows are exact dequantized tables' rows: reuse the reference on (N, d) "tables" of them
        ident = torch.arange(codes.shape[1]).expand(k, -1)
        return CF.embedding_bag_codes(ident, full_offsets, rows, self.operation, self.mode,
                                      self.compose, psw)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, table_sizes={self.table_sizes}, widths={self.widths}, "
                f"operation={self.operation}, mode={self.mode}, compose={self.compose}, "
                f"nbytes={self.nbytes} ({self.compression_vs_fp32:.1f}x smaller than fp32)")


def quantize(module: nn.Module, bits: int = 8) -> QuantizedEmbeddingBag:
    """Export a module's tables to FBGEMM row-wise ``bits``-bit tables for CPU inference.

    Args:
        module: a ``CompositionalEmbeddingBag``, ``QREmbeddingBag`` or ``nn.EmbeddingBag``.
        bits: 8 or 4.

    Returns:
        a :class:`QuantizedEmbeddingBag` with the module's forward contract; ``nbytes`` and
        ``fp32_nbytes`` give the sizes, :func:`quantization_error` the output error.

    Example::

        >>> bag = torch.nn.EmbeddingBag(1000, 16, mode="sum")
        >>> quantize(bag, bits=8).nbytes < bag.weight.numel() * 4
        True
    """
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if getattr(module, "max_norm", None) is not None:
        raise ValueError(f"quantize: max_norm={module.max_norm} renormalises rows at lookup; "
                         "renormalise before exporting")
    weights, encode, operation, mode, compose, n, last = _export_spec(module)
    _check_finite(module, weights)
    return QuantizedEmbeddingBag(weights, encode, operation, mode, compose, n, last, bits)


@torch.no_grad()
def quantization_error(module: nn.Module, quantized: QuantizedEmbeddingBag, input: torch.Tensor,
                       offsets: Optional[torch.Tensor] = None,
                       per_sample_weights: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Output error of ``quantized`` against the fp32 ``module`` on one batch.

    Returns ``{"relative": ||q - f|| / ||f||, "max_abs": max |q - f|, "nbytes": ...,
    "fp32_nbytes": ..., "compression": fp32_nbytes / nbytes}``.
    """
    want = module(input, offsets, per_sample_weights).float()
    got = quantized(input, offsets, per_sample_weights)
    diff = got - want
    return {
        "relative": float(diff.norm() / want.norm().clamp_min(1e-30)),
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
        "nbytes": quantized.nbytes,
        "fp32_nbytes": quantized.fp32_nbytes,
        "compression": quantized.compression_vs_fp32,
    }
