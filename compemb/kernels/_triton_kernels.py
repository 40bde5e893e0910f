"""The @triton.jit kernels of the per-table Triton backend (see :mod:`compemb.kernels._triton`).

One program handles one bag and one block of output columns; every launch parameter is an
argument (the ``constexpr`` ones come from the caller's launch plan).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["fwd_kernel", "bwd_kernel"]


@triton.jit
def _pick(t: tl.constexpr, p0, p1, p2, p3):
    """Argument ``t`` of the four (a table's pointer, width or first column)."""
    if t == 0:
        return p0
    elif t == 1:
        return p1
    elif t == 2:
        return p2
    else:
        return p3


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
def _bag_span(offsets_ptr, MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's bag ``b``, its start and length, its output columns, the tile's rows and the
    pooling scale (``1 / length`` for ``mean``)."""
    b = tl.program_id(0)
    start = tl.load(offsets_ptr + b)
    length = tl.load(offsets_ptr + b + 1) - start
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    if MODE == 1:
        scale = 1.0 / tl.maximum(length, 1).to(tl.float32)
    else:
        scale = 1.0
    return b, start, length, cols, tl.arange(0, BLOCK_N), scale


@triton.jit
def _tile(start, n0, rows, length):
    """The positions of the bag's indices ``n0 ..`` in this tile, and which of them exist."""
    n = start + n0 + rows
    return n, (n0 + rows) < length


@triton.jit
def _pool_init(MODE: tl.constexpr, BLOCK_D: tl.constexpr):
    """An empty pooled vector, and the argmax of every column for ``max`` (-1: none yet)."""
    am = tl.full([BLOCK_D], -1, tl.int32)
    if MODE == 2:
        acc = tl.full([BLOCK_D], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([BLOCK_D], tl.float32)
    return acc, am


@triton.jit
def _pool_step(acc, am, x, m2, first, MODE: tl.constexpr):
    """Pool the tile ``x`` (rows ``first ..``, valid where ``m2``) into ``acc``/``am``."""
    if MODE == 2:
        x = tl.where(m2, x, float("-inf"))
        bmax, bidx = tl.max(x, axis=0, return_indices=True)
        upd = bmax > acc
        acc = tl.where(upd, bmax, acc)
        am = tl.where(upd, (first + bidx).to(tl.int32), am)
    else:
        acc += tl.sum(tl.where(m2, x, 0.0), axis=0)
    return acc, am


@triton.jit
def _pool_finish(acc, am, scale, MODE: tl.constexpr):
    """The pooled vector: 0 for an empty bag under ``max``, scaled by ``1 / length`` for ``mean``."""
    if MODE == 2:
        acc = tl.where(am >= 0, acc, 0.0)
    else:
        acc = acc * scale
    return acc


@triton.jit
def fwd_kernel(
    codes_ptr, offsets_ptr, psw_ptr, out_ptr, argmax_ptr, pooled_ptr,
    w0, w1, w2, w3,
    d0, d1, d2, d3,
    c0, c1, c2, c3,
    N, B, D_OUT, D_MAX,
    K: tl.constexpr, OP: tl.constexpr, MODE: tl.constexpr, AFTER_POOL: tl.constexpr,
    HAS_PSW: tl.constexpr, SAVE_POOLED: tl.constexpr,
    MAX_BAG: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, start, length, cols, rows, scale = _bag_span(offsets_ptr, MODE, BLOCK_N, BLOCK_D)

    if AFTER_POOL or OP == 2:
        # pool every table on its own, then combine the pooled vectors
        if OP == 1:
            res = tl.full([BLOCK_D], 1.0, tl.float32)
        else:
            res = tl.zeros([BLOCK_D], tl.float32)
        for t in tl.static_range(K):
            w = _pick(t, w0, w1, w2, w3)
            d_t = _pick(t, d0, d1, d2, d3)
            col_t = _pick(t, c0, c1, c2, c3)
            cmask = cols < d_t
            acc, am = _pool_init(MODE, BLOCK_D)
            for n0 in range(0, MAX_BAG, BLOCK_N):
                n, nmask = _tile(start, n0, rows, length)
                code = tl.load(codes_ptr + t * N + n, mask=nmask, other=0)
                m2 = nmask[:, None] & cmask[None, :]
                x = tl.load(w + code[:, None] * d_t + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                if HAS_PSW:
                    x = x * tl.load(psw_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
                acc, am = _pool_step(acc, am, x, m2, start + n0, MODE)
            acc = _pool_finish(acc, am, scale, MODE)
            if MODE == 2:
                tl.store(argmax_ptr + (t * B + b) * D_MAX + cols, am, mask=cmask)
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
        acc, am = _pool_init(MODE, BLOCK_D)
        for n0 in range(0, MAX_BAG, BLOCK_N):
            n, nmask = _tile(start, n0, rows, length)
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
            acc, am = _pool_step(acc, am, v, m2, start + n0, MODE)
        acc = _pool_finish(acc, am, scale, MODE)
        if MODE == 2:
            tl.store(argmax_ptr + b * D_MAX + cols, am, mask=dmask)
        tl.store(out_ptr + b * D_OUT + cols, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _argmax_of(argmax_ptr, cols, cmask, MODE: tl.constexpr):
    """``max``: the row each column's maximum came from (saved by the forward); else a placeholder."""
    if MODE == 2:
        am = tl.load(argmax_ptr + cols, mask=cmask, other=-1)
    else:
        am = cols
    return am


@triton.jit
def _grad_tile(psw_ptr, gp, start, n0, rows, length, cmask, am, MODE: tl.constexpr, HAS_PSW: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Indices ``n0 ..`` of the bag: their positions, masks and upstream gradient rows ``gx``."""
    n, nmask = _tile(start, n0, rows, length)
    m2 = nmask[:, None] & cmask[None, :]
    if MODE == 2:
        m2 = m2 & (n[:, None] == am[None, :])
    gx = tl.zeros([BLOCK_N, BLOCK_D], tl.float32) + gp[None, :]
    if HAS_PSW:
        gx = gx * tl.load(psw_ptr + n, mask=nmask, other=0.0).to(tl.float32)[:, None]
    return n, nmask, m2, gx


@triton.jit
def _scatter_grad(g, codes_t, n, nmask, m2, cmask, gx, acc, d_t, cols, PER_INDEX: tl.constexpr,
                  SMALL_T: tl.constexpr, R: tl.constexpr):
    """Write ``gx`` for one table: per index (deterministic), into ``acc`` (a small table) or with
    one atomic per index; returns ``acc``."""
    if PER_INDEX:
        tl.store(g + n[:, None] * d_t + cols[None, :], tl.where(m2, gx, 0.0), mask=nmask[:, None] & cmask[None, :])
    else:
        code = tl.load(codes_t + n, mask=nmask, other=0)
        if SMALL_T:
            acc = _acc_rows(acc, code, gx, m2, R)
        else:
            tl.atomic_add(g + code[:, None] * d_t + cols[None, :], gx, mask=m2)
    return acc


@triton.jit
def bwd_kernel(
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
    b, start, length, cols, rows, scale = _bag_span(offsets_ptr, MODE, BLOCK_N, BLOCK_D)

    if AFTER_POOL or OP == 2:
        for t in tl.static_range(K):
            g = _pick(t, g0, g1, g2, g3)
            d_t = _pick(t, d0, d1, d2, d3)
            col_t = _pick(t, c0, c1, c2, c3)
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
            am = _argmax_of(argmax_ptr + (t * B + b) * D_MAX, cols, cmask, MODE)
            acc = tl.zeros([R, BLOCK_D], tl.float32)
            for n0 in range(0, MAX_BAG, BLOCK_N):
                n, nmask, m2, gx = _grad_tile(psw_ptr, gp, start, n0, rows, length, cmask, am, MODE, HAS_PSW,
                                              BLOCK_N, BLOCK_D)
                acc = _scatter_grad(g, codes_ptr + t * N, n, nmask, m2, cmask, gx, acc, d_t, cols,
                                    PER_INDEX, (SMALL >> t) & 1, R)
            if (SMALL >> t) & 1:
                _flush_rows(g, acc, d_t, cols, cmask, R)
    else:
        dmask = cols < D_OUT
        gp = tl.load(gout_ptr + b * D_OUT + cols, mask=dmask, other=0.0).to(tl.float32) * scale
        am = _argmax_of(argmax_ptr + b * D_MAX, cols, dmask, MODE)
        # table by table, so that a small table's bag sum is one (R, BLOCK_D) accumulator
        for t in tl.static_range(K):
            g = _pick(t, g0, g1, g2, g3)
            acc = tl.zeros([R, BLOCK_D], tl.float32)
            for n0 in range(0, MAX_BAG, BLOCK_N):
                n, nmask, m2, gx = _grad_tile(psw_ptr, gp, start, n0, rows, length, dmask, am, MODE, HAS_PSW,
                                              BLOCK_N, BLOCK_D)
                if OP == 1:
                    for s in tl.static_range(K):
                        if s != t:
                            ws = _pick(s, w0, w1, w2, w3)
                            code_s = tl.load(codes_ptr + s * N + n, mask=nmask, other=0)
                            gx = gx * tl.load(ws + code_s[:, None] * D_OUT + cols[None, :],
                                              mask=m2, other=0.0).to(tl.float32)
                acc = _scatter_grad(g, codes_ptr + t * N, n, nmask, m2, dmask, gx, acc, D_OUT, cols,
                                    PER_INDEX, (SMALL >> t) & 1, R)
            if (SMALL >> t) & 1:
                _flush_rows(g, acc, D_OUT, cols, dmask, R)
