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
since every index of every bag lands on its few rows (``PRE_REDUCE_SMALL = False``: the old way).

Loop trip counts are compile-time constants (``MAX_BAG`` is the longest bag rounded up to a power
of two) because Triton 3.6's interpreter cannot loop up to a loaded value with numpy >= 2.4; masks
skip the unused tail. On CPU the kernels run only under ``TRITON_INTERPRET=1`` (set before triton
is imported), which is how the tests run them.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from compemb.kernels import Backend

__all__ = ["BACKEND", "TritonBackend", "triton_embedding_bag"]

_OPS = {"add": 0, "mult": 1, "concat": 2}
_MODES = {"sum": 0, "mean": 1, "max": 2}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_K = 4
#: Backward (atomic path): tables with at most this many rows (the remainder table of QR has
#: ``num_collisions`` rows) are summed over the bag in registers, one atomic per (row, column).
SMALL_ROWS = 16
#: A/B knob for benchmarks: ``False`` gives every table one atomic per index (the old backward).
PRE_REDUCE_SMALL = True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton decides at decoration time (this import) whether kernels are compiled or interpreted.
INTERPRETED = _interpreting()


@triton.jit
def _pick(t: tl.constexpr, p0, p1, p2, p3):
    if t == 0:
        return p0
    elif t == 1:
        return p1
    elif t == 2:
        return p2
    else:
        return p3


@triton.jit
def _pick_int(t: tl.constexpr, a0, a1, a2, a3):
    if t == 0:
        return a0
    elif t == 1:
        return a1
    elif t == 2:
        return a2
    else:
        return a3


@triton.jit
def _acc_rows(acc, code, gx, m2, R: tl.constexpr):
    """Add ``gx[j]`` into ``acc[code[j]]`` (``acc`` is ``(R, BLOCK_D)``, codes < R), row by row."""
    rr = tl.arange(0, R)
    for r in range(R):
        s_r = tl.sum(tl.where(m2 & (code[:, None] == r), gx, 0.0), axis=0)
        acc += tl.where(rr[:, None] == r, s_r[None, :], 0.0)
    return acc


@triton.jit
def _flush_rows(g, acc, d_t, cols, cmask, R: tl.constexpr):
    """One atomic per (row, column) of a small table's pre-reduced gradient (rows not hit: none)."""
    rr = tl.arange(0, R)
    tl.atomic_add(g + rr[:, None] * d_t + cols[None, :], acc, mask=cmask[None, :] & (acc != 0.0))


@triton.jit
def _fwd_kernel(
    codes_ptr, offsets_ptr, psw_ptr, out_ptr, argmax_ptr, pooled_ptr,
    w0, w1, w2, w3,
    d0, d1, d2, d3,
    c0, c1, c2, c3,
    N, B, D_OUT, D_MAX,
    K: tl.constexpr, OP: tl.constexpr, MODE: tl.constexpr, AFTER_POOL: tl.constexpr,
    HAS_PSW: tl.constexpr, SAVE_POOLED: tl.constexpr,
    MAX_BAG: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    start = tl.load(offsets_ptr + b)
    end = tl.load(offsets_ptr + b + 1)
    length = end - start
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_N)
    if MODE == 1:
        scale = 1.0 / tl.maximum(length, 1).to(tl.float32)
    else:
        scale = 1.0

    if AFTER_POOL or OP == 2:
        # pool every table on its own, then combine the pooled vectors
        if OP == 1:
            res = tl.full([BLOCK_D], 1.0, tl.float32)
        else:
            res = tl.zeros([BLOCK_D], tl.float32)
        for t in tl.static_range(K):
            w = _pick(t, w0, w1, w2, w3)
            d_t = _pick_int(t, d0, d1, d2, d3)
            col_t = _pick_int(t, c0, c1, c2, c3)
            cmask = cols < d_t
            if MODE == 2:
                acc = tl.full([BLOCK_D], float("-inf"), tl.float32)
                am = tl.full([BLOCK_D], -1, tl.int32)
            else:
                acc = tl.zeros([BLOCK_D], tl.float32)
            for n0 in range(0, MAX_BAG, BLOCK_N):
                n = start + n0 + rows
                nmask = (n0 + rows) < length
                code = tl.load(codes_ptr + t * N + n, mask=nmask, other=0)
                m2 = nmask[:, None] & cmask[None, :]
                x = tl.load(w + code[:, None] * d_t + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                if HAS_PSW:
                    x = x * tl.load(psw_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
                if MODE == 2:
                    x = tl.where(m2, x, float("-inf"))
                    bmax, bidx = tl.max(x, axis=0, return_indices=True)
                    upd = bmax > acc
                    acc = tl.where(upd, bmax, acc)
                    am = tl.where(upd, (start + n0 + bidx).to(tl.int32), am)
                else:
                    acc += tl.sum(x, axis=0)
            if MODE == 2:
                acc = tl.where(am >= 0, acc, 0.0)
                tl.store(argmax_ptr + (t * B + b) * D_MAX + cols, am, mask=cmask)
            else:
                acc = acc * scale
            if SAVE_POOLED:
                tl.store(pooled_ptr + (t * B + b) * D_MAX + cols, acc, mask=cmask)
            if OP == 2:
                tl.store(out_ptr + b * D_OUT + col_t + cols,
                         acc.to(out_ptr.dtype.element_ty), mask=cmask)
            elif OP == 1:
                res = res * acc
            else:
                res = res + acc
        if OP != 2:
            dmask = cols < D_OUT
            tl.store(out_ptr + b * D_OUT + cols, res.to(out_ptr.dtype.element_ty), mask=dmask)
    else:
        # compose every index from its k rows, then pool the composed vectors
        dmask = cols < D_OUT
        if MODE == 2:
            acc = tl.full([BLOCK_D], float("-inf"), tl.float32)
            am = tl.full([BLOCK_D], -1, tl.int32)
        else:
            acc = tl.zeros([BLOCK_D], tl.float32)
        for n0 in range(0, MAX_BAG, BLOCK_N):
            n = start + n0 + rows
            nmask = (n0 + rows) < length
            m2 = nmask[:, None] & dmask[None, :]
            if OP == 1:
                v = tl.full([BLOCK_N, BLOCK_D], 1.0, tl.float32)
            else:
                v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            for t in tl.static_range(K):
                w = _pick(t, w0, w1, w2, w3)
                code = tl.load(codes_ptr + t * N + n, mask=nmask, other=0)
                x = tl.load(w + code[:, None] * D_OUT + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                if OP == 1:
                    v = v * x
                else:
                    v = v + x
            if HAS_PSW:
                v = v * tl.load(psw_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
            if MODE == 2:
                v = tl.where(m2, v, float("-inf"))
                bmax, bidx = tl.max(v, axis=0, return_indices=True)
                upd = bmax > acc
                acc = tl.where(upd, bmax, acc)
                am = tl.where(upd, (start + n0 + bidx).to(tl.int32), am)
            else:
                acc += tl.sum(tl.where(m2, v, 0.0), axis=0)
        if MODE == 2:
            acc = tl.where(am >= 0, acc, 0.0)
            tl.store(argmax_ptr + b * D_MAX + cols, am, mask=dmask)
        else:
            acc = acc * scale
        tl.store(out_ptr + b * D_OUT + cols, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _bwd_kernel(
    codes_ptr, offsets_ptr, psw_ptr, gout_ptr, argmax_ptr, pooled_ptr,
    w0, w1, w2, w3,
    g0, g1, g2, g3,
    d0, d1, d2, d3,
    c0, c1, c2, c3,
    N, B, D_OUT, D_MAX,
    K: tl.constexpr, OP: tl.constexpr, MODE: tl.constexpr, AFTER_POOL: tl.constexpr,
    HAS_PSW: tl.constexpr, PER_INDEX: tl.constexpr,
    MAX_BAG: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SMALL: tl.constexpr = 0, R: tl.constexpr = 1,
):
    # PER_INDEX: g_t is an (N, d_t) buffer of per-index gradient rows (deterministic path);
    # otherwise g_t is the (rows_t, d_t) fp32 gradient of table t, accumulated with atomics.
    # SMALL: bit t set when table t has at most R rows: its gradient is summed over the bag in
    # registers and written with one atomic per (row, column), not one per index.
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    start = tl.load(offsets_ptr + b)
    end = tl.load(offsets_ptr + b + 1)
    length = end - start
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_N)
    if MODE == 1:
        scale = 1.0 / tl.maximum(length, 1).to(tl.float32)
    else:
        scale = 1.0

    if AFTER_POOL or OP == 2:
        for t in tl.static_range(K):
            w = _pick(t, w0, w1, w2, w3)
            g = _pick(t, g0, g1, g2, g3)
            d_t = _pick_int(t, d0, d1, d2, d3)
            col_t = _pick_int(t, c0, c1, c2, c3)
            cmask = cols < d_t
            if OP == 2:
                gp = tl.load(gout_ptr + b * D_OUT + col_t + cols, mask=cmask, other=0.0).to(tl.float32)
            else:
                gp = tl.load(gout_ptr + b * D_OUT + cols, mask=cmask, other=0.0).to(tl.float32)
            if OP == 1:
                for s in tl.static_range(K):
                    if s != t:
                        gp = gp * tl.load(pooled_ptr + (s * B + b) * D_MAX + cols, mask=cmask, other=0.0)
            gp = gp * scale
            if MODE == 2:
                am = tl.load(argmax_ptr + (t * B + b) * D_MAX + cols, mask=cmask, other=-1)
            if (SMALL >> t) & 1:
                acc = tl.zeros([R, BLOCK_D], tl.float32)
            for n0 in range(0, MAX_BAG, BLOCK_N):
                n = start + n0 + rows
                nmask = (n0 + rows) < length
                m2 = nmask[:, None] & cmask[None, :]
                if MODE == 2:
                    m2 = m2 & (n[:, None] == am[None, :])
                gx = tl.zeros([BLOCK_N, BLOCK_D], tl.float32) + gp[None, :]
                if HAS_PSW:
                    gx = gx * tl.load(psw_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
                if PER_INDEX:
                    tl.store(g + n[:, None] * d_t + cols[None, :], tl.where(m2, gx, 0.0),
                             mask=nmask[:, None] & cmask[None, :])
                else:
                    code = tl.load(codes_ptr + t * N + n, mask=nmask, other=0)
                    if (SMALL >> t) & 1:
                        acc = _acc_rows(acc, code, gx, m2, R)
                    else:
                        tl.atomic_add(g + code[:, None] * d_t + cols[None, :], gx, mask=m2)
            if (SMALL >> t) & 1:
                _flush_rows(g, acc, d_t, cols, cmask, R)
    else:
        dmask = cols < D_OUT
        gp = tl.load(gout_ptr + b * D_OUT + cols, mask=dmask, other=0.0).to(tl.float32) * scale
        if MODE == 2:
            am = tl.load(argmax_ptr + b * D_MAX + cols, mask=dmask, other=-1)
        # table by table, so that a small table's bag sum is one (R, BLOCK_D) accumulator
        for t in tl.static_range(K):
            g = _pick(t, g0, g1, g2, g3)
            if (SMALL >> t) & 1:
                acc = tl.zeros([R, BLOCK_D], tl.float32)
            for n0 in range(0, MAX_BAG, BLOCK_N):
                n = start + n0 + rows
                nmask = (n0 + rows) < length
                m2 = nmask[:, None] & dmask[None, :]
                if MODE == 2:
                    m2 = m2 & (n[:, None] == am[None, :])
                gx = tl.zeros([BLOCK_N, BLOCK_D], tl.float32) + gp[None, :]
                if HAS_PSW:
                    gx = gx * tl.load(psw_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
                if OP == 1:
                    for s in tl.static_range(K):
                        if s != t:
                            ws = _pick(s, w0, w1, w2, w3)
                            code_s = tl.load(codes_ptr + s * N + n, mask=nmask, other=0)
                            gx = gx * tl.load(ws + code_s[:, None] * D_OUT + cols[None, :],
                                              mask=m2, other=0.0).to(tl.float32)
                if PER_INDEX:
                    tl.store(g + n[:, None] * D_OUT + cols[None, :], tl.where(m2, gx, 0.0),
                             mask=nmask[:, None] & dmask[None, :])
                else:
                    code = tl.load(codes_ptr + t * N + n, mask=nmask, other=0)
                    if (SMALL >> t) & 1:
                        acc = _acc_rows(acc, code, gx, m2, R)
                    else:
                        tl.atomic_add(g + code[:, None] * D_OUT + cols[None, :], gx, mask=m2)
            if (SMALL >> t) & 1:
                _flush_rows(g, acc, D_OUT, cols, dmask, R)


def _small_tables(weights, deterministic: bool):
    """Bit mask of the tables whose backward is pre-reduced per bag, and their row bound R."""
    if deterministic or not PRE_REDUCE_SMALL:
        return 0, 1
    rows = [int(w.shape[0]) for w in weights]
    small = [i for i, r in enumerate(rows) if r <= SMALL_ROWS]
    if not small:
        return 0, 1
    return sum(1 << i for i in small), _next_pow2(max(rows[i] for i in small))


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _launch_params(offsets: torch.Tensor, widths, max_bag_length: Optional[int] = None):
    if max_bag_length is None:
        lengths = offsets[1:] - offsets[:-1]
        max_len = int(lengths.max().item()) if lengths.numel() else 0  # a device sync on CUDA
    else:
        max_len = max_bag_length
    max_bag = _next_pow2(max(max_len, 1))
    # tiles of at least 2 x 16 (tiny aranges are fragile across Triton versions); masks do the rest
    block_n = max(2, min(max_bag, 16))
    d_max = max(widths)
    block_d = min(max(_next_pow2(d_max), 16), 128)
    return max_bag, block_n, block_d


def _num_warps(block_n: int, block_d: int) -> int:
    tile = block_n * block_d
    return 1 if tile <= 256 else 2 if tile <= 1024 else 4


def _pad4(seq, fill):
    seq = list(seq)
    return seq + [fill] * (MAX_K - len(seq))


class _TritonEmbeddingBagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, codes, offsets, per_sample_weights, operation, mode, compose, deterministic,
                max_bag_length, *weights):
        k = len(weights)
        B = offsets.numel() - 1
        N = codes.shape[1]
        widths = [int(w.shape[1]) for w in weights]
        d_out = sum(widths) if operation == "concat" else widths[0]
        d_max = max(widths)
        col_offsets = [0] * k
        if operation == "concat":
            for i in range(1, k):
                col_offsets[i] = col_offsets[i - 1] + widths[i - 1]
        after = compose == "after_pool" or operation == "concat"
        dtype = weights[0].dtype
        device = weights[0].device
        out = torch.empty(B, d_out, dtype=dtype, device=device)
        n_arg = k if after else 1
        argmax = torch.empty((n_arg, B, d_max) if mode == "max" else (1,), dtype=torch.int32, device=device)
        save_pooled = after and operation == "mult"
        pooled = torch.empty((k, B, d_max) if save_pooled else (1,), dtype=torch.float32, device=device)
        psw = per_sample_weights if per_sample_weights is not None else out
        max_bag, block_n, block_d = _launch_params(offsets, widths, max_bag_length)
        if B > 0:
            grid = (B, triton.cdiv(d_max, block_d))
            _fwd_kernel[grid](
                codes, offsets, psw, out, argmax, pooled,
                *_pad4(weights, weights[0]), *_pad4(widths, 0), *_pad4(col_offsets, 0),
                N, B, d_out, d_max,
                K=k, OP=_OPS[operation], MODE=_MODES[mode], AFTER_POOL=after,
                HAS_PSW=per_sample_weights is not None, SAVE_POOLED=save_pooled,
                MAX_BAG=max_bag, BLOCK_N=block_n, BLOCK_D=block_d,
                num_warps=_num_warps(block_n, block_d),
            )
        ctx.save_for_backward(codes, offsets, per_sample_weights, argmax, pooled, *weights)
        ctx.config = (operation, mode, after, deterministic, widths, col_offsets, d_out, d_max,
                      max_bag, block_n, block_d)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        codes, offsets, psw, argmax, pooled, *weights = ctx.saved_tensors
        (operation, mode, after, deterministic, widths, col_offsets, d_out, d_max,
         max_bag, block_n, block_d) = ctx.config
        k = len(weights)
        B = offsets.numel() - 1
        N = codes.shape[1]
        grad_out = grad_out.contiguous()
        need_w = [ctx.needs_input_grad[8 + i] for i in range(k)]
        grads = [None] * k
        if any(need_w) and B > 0 and N > 0:
            if deterministic:
                bufs = [torch.zeros(N, widths[i], dtype=torch.float32, device=grad_out.device) for i in range(k)]
            else:
                bufs = [torch.zeros(w.shape, dtype=torch.float32, device=grad_out.device) for w in weights]
            grid = (B, triton.cdiv(d_max, block_d))
            small, R = _small_tables(weights, deterministic)
            _bwd_kernel[grid](
                codes, offsets, psw if psw is not None else grad_out, grad_out, argmax, pooled,
                *_pad4(weights, weights[0]), *_pad4(bufs, bufs[0]),
                *_pad4(widths, 0), *_pad4(col_offsets, 0),
                N, B, d_out, d_max,
                K=k, OP=_OPS[operation], MODE=_MODES[mode], AFTER_POOL=after,
                HAS_PSW=psw is not None, PER_INDEX=deterministic,
                MAX_BAG=max_bag, BLOCK_N=block_n, BLOCK_D=block_d, SMALL=small, R=R,
                num_warps=_num_warps(block_n, block_d),
            )
            for i in range(k):
                if not need_w[i]:
                    continue
                if deterministic:
                    grads[i] = _segment_sum(codes[i], bufs[i], weights[i].shape[0]).to(weights[i].dtype)
                else:
                    grads[i] = bufs[i].to(weights[i].dtype)
        else:
            grads = [torch.zeros_like(w) if need else None for w, need in zip(weights, need_w)]
        grad_psw = None
        if psw is not None and ctx.needs_input_grad[2]:
            grad_psw = _psw_grad(codes, offsets, psw, weights, grad_out, operation, after, pooled)
        return (None, None, grad_psw, None, None, None, None, None, *grads)


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
    if operation not in _OPS:
        raise ValueError(f"operation must be one of {tuple(_OPS)}, got {operation!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {tuple(_MODES)}, got {mode!r}")
    if compose not in ("before_pool", "after_pool"):
        raise ValueError(f"compose must be 'before_pool' or 'after_pool', got {compose!r}")
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
        if w.dtype not in _DTYPES:
            raise TypeError(f"triton backend supports {_DTYPES}, got {w.dtype}")
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
    return _TritonEmbeddingBagFunction.apply(
        codes.contiguous(), offsets.contiguous(), per_sample_weights, operation, mode, compose,
        bool(deterministic), max_bag_length, *weights,
    )


class TritonBackend(Backend):
    """Fused Triton kernels: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

    Priority 20 (preferred by ``"auto"``) when compiled; -10 under the interpreter, which serves
    tests only (asked for by name), so ``"auto"`` keeps the faster torch reference there.
    """

    name = "triton"
    # interpreted kernels are for testing, far slower than torch: "auto" must not prefer them
    priority = -10 if INTERPRETED else 20

    def __init__(self, deterministic: bool = False):
        self.deterministic = deterministic

    def unsupported_reason(self, *, operation, mode, compose, k, dtype, device,
                           per_sample_weights=False, sparse=False, max_norm=None,
                           requires_grad=True) -> Optional[str]:
        device = torch.device(device)
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
        if operation not in _OPS:
            return f"operation={operation!r}"
        if mode not in _MODES:
            return f"mode={mode!r}"
        if compose not in ("before_pool", "after_pool"):
            return f"compose={compose!r}"
        if sparse:
            return "sparse=True gradients (triton writes dense gradients)"
        if max_norm is not None:
            return f"max_norm={max_norm} (renormalisation is not implemented)"
        if dtype not in _DTYPES:
            return f"dtype={dtype} (triton serves float32, float16, bfloat16)"
        if per_sample_weights and mode != "sum":
            return f"per_sample_weights with mode={mode!r}"
        return None

    def embedding_bag(self, codes, offsets, weights, operation, mode, compose,
                      per_sample_weights=None, **extras) -> torch.Tensor:
        if extras:
            raise ValueError(f"triton backend does not take {sorted(extras)}")
        return triton_embedding_bag(codes, offsets, weights, operation, mode, compose,
                                    per_sample_weights, deterministic=self.deterministic)


BACKEND = TritonBackend()
