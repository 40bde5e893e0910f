"""Fused Triton kernels for compositional embedding bags (forward and backward).

One program handles one bag and one block of output columns. It walks the bag in tiles of
``BLOCK_N`` indices, gathers the rows of all ``k`` component tables (``k`` = 1..4), combines them
per index (``mult`` / ``add`` / ``concat``), scales by ``per_sample_weights`` and pools (``sum`` /
``mean`` / ``max``) with fp32 accumulation, all in one pass over the codes. ``compose="after_pool"``
pools each table first and combines the pooled vectors (the reference DLRM QR behaviour).

The backward kernel scatters the gradient into every component table: for ``mult`` the gradient of
table ``t`` is the upstream gradient times the product of the other tables' rows (or pooled
vectors, after pooling). By default it accumulates with atomics; ``deterministic=True`` writes one
gradient row per (index, table), sorts by row id and reduces each segment in a fixed order. With
atomics, a table of at most ``SMALL_ROWS`` rows (the remainder table of QR) is summed over the
bag in registers first and written with one atomic per (row, column) rather than one per index,
since every index of every bag lands on its few rows (``pre_reduce_small=False`` turns that off).

Loop trip counts are compile-time constants (``MAX_BAG`` is the longest bag rounded up to a power
of two) because Triton 3.6's interpreter cannot loop up to a loaded value with numpy >= 2.4; masks
skip the unused tail. On CPU the kernels run only under ``TRITON_INTERPRET=1`` (set before triton
is imported), which is how the tests run them.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import triton

from compemb.kernels._base import Backend
# MAX_K: the most component tables; SMALL_ROWS: backward (atomic path) sums the tables of at most
# this many rows (the remainder table of QR has ``num_collisions`` rows) over the bag in registers
from compemb.kernels._tbe_layout import KERNEL_DTYPES, KERNEL_OPS, MAX_K, SMALL_ROWS, next_pow2
from compemb.options import BagOptions, check_compose, check_mode, check_operation

__all__ = ["BACKEND", "TritonBackend", "triton_embedding_bag"]

_MODES = {"sum": 0, "mean": 1, "max": 2}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton decides at decoration time (the next import) whether kernels are compiled or interpreted.
INTERPRETED = _interpreting()

from compemb.kernels._triton_kernels import bwd_kernel, fwd_kernel  # noqa: E402


def _small_tables(weights: Sequence[torch.Tensor], pre_reduce: bool) -> Tuple[int, int]:
    """Bit mask of the tables whose backward is pre-reduced per bag, and their row bound R."""
    if not pre_reduce:
        return 0, 1
    rows = [int(w.shape[0]) for w in weights]
    small = [i for i, r in enumerate(rows) if r <= SMALL_ROWS]
    if not small:
        return 0, 1
    return sum(1 << i for i in small), next_pow2(max(rows[i] for i in small))


@dataclass(frozen=True)
class _Launch:
    """One per-table lookup's configuration and tiles, shared by its forward and backward."""

    operation: str
    mode: str
    after: bool  # pool every table first (compose="after_pool", and always for concat)
    deterministic: bool
    pre_reduce: bool  # atomic backward: pre-reduce the tables of at most SMALL_ROWS rows per bag
    widths: Tuple[int, ...]
    col_offsets: Tuple[int, ...]
    d_out: int
    d_max: int
    max_bag: int
    block_n: int
    block_d: int

    def grid(self, B: int) -> Tuple[int, int]:
        return (B, triton.cdiv(self.d_max, self.block_d))

    def constexprs(self, k: int) -> dict:
        tile = self.block_n * self.block_d
        return dict(K=k, OP=KERNEL_OPS[self.operation], MODE=_MODES[self.mode], AFTER_POOL=self.after,
                    MAX_BAG=self.max_bag, BLOCK_N=self.block_n, BLOCK_D=self.block_d,
                    num_warps=1 if tile <= 256 else 2 if tile <= 1024 else 4)


def _launch(offsets: torch.Tensor, widths: List[int], operation: str, mode: str, compose: str,
            deterministic: bool, pre_reduce_small: bool, max_bag_length: Optional[int]) -> _Launch:
    if max_bag_length is None:
        lengths = offsets[1:] - offsets[:-1]
        max_len = int(lengths.max().item()) if lengths.numel() else 0  # a device sync on CUDA
    else:
        max_len = max_bag_length
    max_bag = next_pow2(max(max_len, 1))
    col_offsets = [0] * len(widths)
    if operation == "concat":
        for i in range(1, len(widths)):
            col_offsets[i] = col_offsets[i - 1] + widths[i - 1]
    d_max = max(widths)
    return _Launch(
        operation=operation, mode=mode, after=compose == "after_pool" or operation == "concat",
        deterministic=deterministic, pre_reduce=pre_reduce_small and not deterministic,
        widths=tuple(widths), col_offsets=tuple(col_offsets),
        d_out=sum(widths) if operation == "concat" else widths[0], d_max=d_max, max_bag=max_bag,
        # tiles of at least 2 x 16 (tiny aranges are fragile across Triton versions); masks do the rest
        block_n=max(2, min(max_bag, 16)), block_d=min(max(next_pow2(d_max), 16), 128),
    )


def _pad4(seq: Sequence[Any], fill: Any) -> List[Any]:
    seq = list(seq)
    return seq + [fill] * (MAX_K - len(seq))


class _TritonEmbeddingBagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, codes: torch.Tensor, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
                launch: _Launch, *weights: torch.Tensor) -> torch.Tensor:
        k = len(weights)
        B = offsets.numel() - 1
        N = codes.shape[1]
        dtype = weights[0].dtype
        device = weights[0].device
        d_max = launch.d_max
        out = torch.empty(B, launch.d_out, dtype=dtype, device=device)
        n_arg = k if launch.after else 1
        argmax = torch.empty((n_arg, B, d_max) if launch.mode == "max" else (1,), dtype=torch.int32, device=device)
        save_pooled = launch.after and launch.operation == "mult"
        pooled = torch.empty((k, B, d_max) if save_pooled else (1,), dtype=torch.float32, device=device)
        psw = per_sample_weights if per_sample_weights is not None else out
        if B > 0:
            fwd_kernel[launch.grid(B)](
                codes, offsets, psw, out, argmax, pooled,
                *_pad4(weights, weights[0]), *_pad4(launch.widths, 0), *_pad4(launch.col_offsets, 0),
                N, B, launch.d_out, d_max,
                HAS_PSW=per_sample_weights is not None, SAVE_POOLED=save_pooled, **launch.constexprs(k),
            )
        ctx.save_for_backward(codes, offsets, per_sample_weights, argmax, pooled, *weights)
        ctx.launch = launch
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        codes, offsets, psw, argmax, pooled, *weights = ctx.saved_tensors
        launch: _Launch = ctx.launch
        k = len(weights)
        B = offsets.numel() - 1
        N = codes.shape[1]
        grad_out = grad_out.contiguous()
        need_w = [ctx.needs_input_grad[4 + i] for i in range(k)]
        grads: List[Optional[torch.Tensor]] = [None] * k
        if any(need_w) and B > 0 and N > 0:
            if launch.deterministic:
                bufs = [torch.zeros(N, d, dtype=torch.float32, device=grad_out.device) for d in launch.widths]
            else:
                bufs = [torch.zeros(w.shape, dtype=torch.float32, device=grad_out.device) for w in weights]
            small, R = _small_tables(weights, launch.pre_reduce)
            bwd_kernel[launch.grid(B)](
                codes, offsets, psw if psw is not None else grad_out, grad_out, argmax, pooled,
                *_pad4(weights, weights[0]), *_pad4(bufs, bufs[0]),
                *_pad4(launch.widths, 0), *_pad4(launch.col_offsets, 0),
                N, B, launch.d_out, launch.d_max,
                HAS_PSW=psw is not None, PER_INDEX=launch.deterministic, SMALL=small, R=R,
                **launch.constexprs(k),
            )
            for i in range(k):
                if not need_w[i]:
                    continue
                if launch.deterministic:
                    grads[i] = _segment_sum(codes[i], bufs[i], weights[i].shape[0]).to(weights[i].dtype)
                else:
                    grads[i] = bufs[i].to(weights[i].dtype)
        else:
            grads = [torch.zeros_like(w) if need else None for w, need in zip(weights, need_w)]
        grad_psw = None
        if psw is not None and ctx.needs_input_grad[2]:
            grad_psw = _psw_grad(codes, offsets, psw, weights, grad_out, launch.operation, launch.after, pooled)
        return (None, None, grad_psw, None, *grads)


def _segment_sum(rows: torch.Tensor, contrib: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Sum ``contrib[j]`` into row ``rows[j]`` in a fixed order: stable sort, segment reduce."""
    order = torch.sort(rows, stable=True).indices
    uniq, counts = torch.unique_consecutive(rows[order], return_counts=True)
    summed = torch.segment_reduce(contrib[order], "sum", lengths=counts, axis=0)
    out = torch.zeros(num_rows, contrib.shape[1], dtype=contrib.dtype, device=contrib.device)
    out[uniq] = summed
    return out


def _psw_grad(codes, offsets, psw, weights, grad_out, operation, after, pooled):
    """Gradient of ``per_sample_weights`` (sum mode only), computed with torch gathers."""
    N = codes.shape[1]
    B = offsets.numel() - 1
    bag = torch.repeat_interleave(torch.arange(B, device=codes.device), offsets[1:] - offsets[:-1],
                                  output_size=N)
    g = grad_out.float()[bag]  # (N, D_out)
    rows = [w.float()[codes[i]] for i, w in enumerate(weights)]
    if operation == "concat":
        return (torch.cat(rows, dim=1) * g).sum(1).to(psw.dtype)
    if not after:
        v = rows[0]
        for r in rows[1:]:
            v = v * r if operation == "mult" else v + r
        return (v * g).sum(1).to(psw.dtype)
    total = torch.zeros(N, dtype=torch.float32, device=codes.device)
    k = len(weights)
    for t in range(k):
        gp = g
        if operation == "mult":
            for s in range(k):
                if s != t:
                    gp = gp * pooled[s][bag, : rows[t].shape[1]]
        total += (gp * rows[t]).sum(1)
    return total.to(psw.dtype)


def triton_embedding_bag(
    codes: torch.Tensor,
    offsets: torch.Tensor,
    weights: Sequence[torch.Tensor],
    operation: str = "mult",
    mode: str = "sum",
    compose: str = "before_pool",
    per_sample_weights: Optional[torch.Tensor] = None,
    deterministic: bool = False,
    max_bag_length: Optional[int] = None,
    *,
    pre_reduce_small: bool = True,
) -> torch.Tensor:
    """Fused compositional embedding bag on codes (the kernel contract of ``docs/architecture.md``).

    Args:
        codes: int64 ``(k, N)``, ``codes[i]`` are row ids into ``weights[i]``.
        offsets: int64 ``(B + 1,)``, starting at 0 and ending at ``N``.
        weights: ``k`` tables ``(rows_i, d_i)`` (1 <= k <= 4), fp32, fp16 or bf16, one dtype.
        operation: ``"mult"``, ``"add"`` or ``"concat"``.
        mode: ``"sum"``, ``"mean"`` or ``"max"``.
        compose: ``"before_pool"`` or ``"after_pool"``.
        per_sample_weights: ``None`` or ``(N,)`` floats (``mode="sum"`` only).
        deterministic: reduce gradients by sorted segments instead of atomics.
        max_bag_length: the length of the longest bag, if the caller knows it (saves a device
            sync); it must not be smaller than the true one (checked on CPU; on CUDA a smaller
            value would drop indices, so only pass what you know, e.g. ``L`` of a ``(B, L)`` input).
        pre_reduce_small: atomic backward: sum the gradients of tables of at most
            :data:`SMALL_ROWS` rows per bag in registers (``False``: one atomic per index, for
            A/B benchmarks).

    Shape:
        output ``(B, d)`` (``(B, sum d_i)`` for concat), in the weights' dtype.

    Example::

        >>> import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # doctest: +SKIP
        >>> w = [torch.randn(4, 8), torch.randn(3, 8)]
        >>> codes = torch.tensor([[0, 3, 1], [2, 0, 0]])
        >>> triton_embedding_bag(codes, torch.tensor([0, 2, 3]), w).shape  # doctest: +SKIP
        torch.Size([2, 8])
    """
    weights = list(weights)
    k = len(weights)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"triton backend supports 1..{MAX_K} tables, got k={k}")
    check_operation(operation)
    check_mode(mode)
    check_compose(compose)
    if codes.dim() != 2 or codes.shape[0] != k:
        raise ValueError(f"codes must have shape (k={k}, N), got {tuple(codes.shape)}")
    if codes.dtype != torch.int64 or offsets.dtype != torch.int64:
        raise TypeError(f"codes and offsets must be int64, got {codes.dtype} and {offsets.dtype}")
    dtype = weights[0].dtype
    device = weights[0].device
    if codes.device != device or offsets.device != device:
        raise ValueError(f"codes ({codes.device}), offsets ({offsets.device}) and weights ({device}) "
                         "must be on one device")
    for i, w in enumerate(weights):
        if w.device != device:
            raise ValueError(f"weights[{i}] is on {w.device}, weights[0] on {device}")
        if w.dim() != 2:
            raise ValueError(f"weights[{i}] must be 2-D, got shape {tuple(w.shape)}")
        if w.dtype != dtype:
            raise TypeError(f"weights[{i}] has dtype {w.dtype}, weights[0] has {dtype}")
        if w.dtype not in KERNEL_DTYPES:
            raise TypeError(f"triton backend supports {KERNEL_DTYPES}, got {w.dtype}")
        if operation != "concat" and w.shape[1] != weights[0].shape[1]:
            raise ValueError(f"{operation!r} needs equal widths, got {[int(x.shape[1]) for x in weights]}")
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"per_sample_weights needs mode='sum', got mode={mode!r}")
        if per_sample_weights.shape != (codes.shape[1],):
            raise ValueError(f"per_sample_weights must have shape ({codes.shape[1]},), got "
                             f"{tuple(per_sample_weights.shape)}")
        per_sample_weights = per_sample_weights.contiguous()
    if max_bag_length is not None:
        if isinstance(max_bag_length, bool) or not isinstance(max_bag_length, int) or max_bag_length < 0:
            raise ValueError(f"max_bag_length must be an int >= 0, got {max_bag_length!r}")
        if offsets.device.type == "cpu" and offsets.numel() > 1:
            longest = int((offsets[1:] - offsets[:-1]).max())
            if longest > max_bag_length:
                raise ValueError(f"max_bag_length={max_bag_length} but a bag holds {longest} indices")
    weights = [w.contiguous() for w in weights]
    offsets = offsets.contiguous()
    launch = _launch(offsets, [int(w.shape[1]) for w in weights], operation, mode, compose, bool(deterministic),
                     bool(pre_reduce_small), max_bag_length)
    return _TritonEmbeddingBagFunction.apply(codes.contiguous(), offsets, per_sample_weights, launch, *weights)


class TritonBackend(Backend):
    """Fused Triton kernels: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

    Priority 20 (preferred by ``"auto"``) when compiled; -10 under the interpreter, which serves
    tests only (asked for by name), so ``"auto"`` keeps the faster torch reference there.
    """

    name = "triton"
    # interpreted kernels are for testing, far slower than torch: "auto" must not prefer them
    priority = -10 if INTERPRETED else 20

    def __init__(self, deterministic: bool = False) -> None:
        self.deterministic = deterministic

    def unsupported_reason(self, options: BagOptions) -> Optional[str]:
        device, k, mode = options.device, options.k, options.mode
        if device.type == "cpu" and not INTERPRETED:
            return "CPU tensors need TRITON_INTERPRET=1 (set before triton is imported)"
        if device.type == "cuda" and INTERPRETED:
            return "CUDA tensors while TRITON_INTERPRET=1 (the kernels were built for the interpreter)"
        if device.type not in ("cpu", "cuda"):
            return f"device {device} (triton serves CUDA)"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "device cuda but torch.cuda.is_available() is False"
        if not 1 <= k <= MAX_K:
            return f"k={k} partitions (triton serves 1..{MAX_K})"
        if options.sparse:
            return "sparse=True gradients (triton writes dense gradients)"
        if options.max_norm is not None:
            return f"max_norm={options.max_norm} (renormalisation is not implemented)"
        if options.dtype not in KERNEL_DTYPES:
            return f"dtype={options.dtype} (triton serves float32, float16, bfloat16)"
        if options.per_sample_weights and mode != "sum":
            return f"per_sample_weights with mode={mode!r}"
        return None

    def kernel(self) -> Callable[..., torch.Tensor]:
        return functools.partial(triton_embedding_bag, deterministic=self.deterministic)


BACKEND = TritonBackend()
