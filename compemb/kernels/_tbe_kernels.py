"""The @triton.jit kernels of the table-batched lookup (see :mod:`compemb.kernels._triton_tbe`).

Grid: one program per (block of ``BLOCK_B`` bags, feature). A program walks its bags in lock step,
one index of every bag per iteration, encodes it into the k codes ``(x // P) % m`` in registers
and gathers a ``(K, BLOCK_B, BLOCK_D)`` tile of rows. Every launch parameter comes from the
:class:`~compemb.kernels._tbe_layout.LaunchPlan` as an argument; nothing reads module state.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["tbe_fwd_kernel", "tbe_bwd_kernel", "tbe_apply_kernel", "tbe_small_apply_kernel"]


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _prologue(off_ptr, place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr, B, D,
              K: tl.constexpr, IDX32: tl.constexpr, UNIFORM: tl.constexpr, EVEN_D: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    f = tl.program_id(1)
    bags = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = bags < B
    row = f.to(tl.int64) * B + bags
    start = tl.load(off_ptr + row, mask=bmask, other=0)
    end = tl.load(off_ptr + row + 1, mask=bmask, other=0)
    length = end - start
    kf = tl.load(kf_ptr + f)
    ts = tl.arange(0, K)
    tmask = ts < kf
    place = tl.load(place_ptr + f * K + ts, mask=tmask, other=1)
    modulus = tl.load(mod_ptr + f * K + ts, mask=tmask, other=1)
    if IDX32:
        place = place.to(tl.int32)
        modulus = modulus.to(tl.int32)
    base = tl.load(base_ptr + f * K + ts, mask=tmask, other=0)
    width = tl.load(width_ptr + f * K + ts, mask=tmask, other=0)
    col = tl.load(col_ptr + f * K + ts, mask=tmask, other=0)
    cols = tl.arange(0, BLOCK_D)
    if UNIFORM:
        # every table is (rows, D) and base counts rows: plain (row * D + col) addresses that the
        # compiler can vectorise (D is specialised on divisibility by 16)
        rel = tl.zeros([K, BLOCK_D], tl.int32) + cols[None, :]
        if EVEN_D:
            cmask = tmask[:, None] & (rel >= 0)
        else:
            cmask = tmask[:, None] & (rel < D)
    else:
        rel = cols[None, :] - col[:, None]  # [K, BLOCK_D]: column inside table t
        cmask = (rel >= 0) & (rel < width[:, None]) & tmask[:, None]
    is_mean = tl.load(mean_ptr + f)
    scale = tl.where(is_mean != 0, 1.0 / tl.maximum(length, 1).to(tl.float32), 1.0)
    return f, bags, bmask, start, length, place, modulus, base, width, rel, cmask, scale, ts, tmask


@triton.jit
def _codes(x, place, modulus, IDX32: tl.constexpr):
    if IDX32:
        x = x.to(tl.int32)
    return ((x[None, :] // place[:, None]) % modulus[:, None]).to(tl.int64)  # [K, BLOCK_B]


@triton.jit
def _ptrs(code, base, width, rel, D, UNIFORM: tl.constexpr):
    if UNIFORM:
        return (base[:, None, None] + code[:, :, None]) * D + rel[:, None, :]
    return base[:, None, None] + code[:, :, None] * width[:, None, None] + rel[:, None, :]


@triton.jit
def _row_ptrs(x, place, modulus, base, width, rel, D, IDX32: tl.constexpr, UNIFORM: tl.constexpr):
    return _ptrs(_codes(x, place, modulus, IDX32), base, width, rel, D, UNIFORM)


@triton.jit
def _walk_start(idx_ptr, start, length, PREFETCH: tl.constexpr):
    """The longest bag's length and the first index of every bag, loaded ahead (``start`` as a
    placeholder without prefetch): the start of the lock-step walk over the bags."""
    if PREFETCH:
        first = tl.load(idx_ptr + start, mask=length > 0, other=0)
    else:
        first = start
    return tl.max(length, axis=0), first


@triton.jit
def _index_at(idx_ptr, start, length, i, x_next, PREFETCH: tl.constexpr):
    """Index ``i`` of every bag (0 past its end) and the next one, which loads while this one's
    rows are in flight when ``PREFETCH``."""
    if PREFETCH:
        x = x_next
        x_next = tl.load(idx_ptr + start + i + 1, mask=i + 1 < length, other=0)
    else:
        x = tl.load(idx_ptr + start + i, mask=i < length, other=0)
    return x, x_next


@triton.jit
def _rows_at(idx_ptr, start, length, i, x_next, place, modulus, base, width, rel, cmask, D,
             IDX32: tl.constexpr, UNIFORM: tl.constexpr, PREFETCH: tl.constexpr):
    """Step ``i`` of the lock-step walk over the bags: the addresses of index ``i``'s k rows, their
    mask, which bags have an index ``i``, and the next index (loading meanwhile)."""
    valid = i < length
    x, x_next = _index_at(idx_ptr, start, length, i, x_next, PREFETCH)
    ptrs = _row_ptrs(x, place, modulus, base, width, rel, D, IDX32, UNIFORM)
    return ptrs, valid[None, :, None] & cmask[:, None, :], valid, x_next


@triton.jit
def _pooled(idx_ptr, w_ptr, start, length, place, modulus, base, width, rel, cmask, scale, tmask, D,
            K: tl.constexpr, IDX32: tl.constexpr, UNIFORM: tl.constexpr, PREFETCH: tl.constexpr,
            BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-table pooled vectors ``(K, BLOCK_B, BLOCK_D)`` (scaled for mean; 1 for absent tables)."""
    acc = tl.zeros([K, BLOCK_B, BLOCK_D], tl.float32)
    maxlen, x_next = _walk_start(idx_ptr, start, length, PREFETCH)
    for i in range(0, maxlen):
        ptrs, m3, valid, x_next = _rows_at(idx_ptr, start, length, i, x_next, place, modulus, base, width,
                                           rel, cmask, D, IDX32, UNIFORM, PREFETCH)
        acc += tl.load(w_ptr + ptrs, mask=m3, other=0.0).to(tl.float32)
    acc = acc * scale[None, :, None]
    return tl.where(tmask[:, None, None], acc, 1.0)


@triton.jit
def tbe_fwd_kernel(
    idx_ptr, off_ptr, w_ptr, out_ptr,
    place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr,
    B, D, OUT_STRIDE,
    K: tl.constexpr, OP: tl.constexpr, AFTER_POOL: tl.constexpr, IDX32: tl.constexpr,
    UNIFORM: tl.constexpr, EVEN_D: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    f, bags, bmask, start, length, place, modulus, base, width, rel, cmask, scale, ts, tmask = _prologue(
        off_ptr, place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr, B, D,
        K, IDX32, UNIFORM, EVEN_D, BLOCK_B, BLOCK_D)
    cols = tl.arange(0, BLOCK_D)
    if OP == 1 and AFTER_POOL:
        pooled = _pooled(idx_ptr, w_ptr, start, length, place, modulus, base, width, rel, cmask, scale,
                         tmask, D, K, IDX32, UNIFORM, PREFETCH, BLOCK_B, BLOCK_D)
        res = tl.reduce(pooled, 0, _mul)
    else:
        acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
        maxlen, x_next = _walk_start(idx_ptr, start, length, PREFETCH)
        for i in range(0, maxlen):
            ptrs, m3, valid, x_next = _rows_at(idx_ptr, start, length, i, x_next, place, modulus, base, width,
                                               rel, cmask, D, IDX32, UNIFORM, PREFETCH)
            if OP == 1:
                rows = tl.load(w_ptr + ptrs, mask=m3, other=1.0).to(tl.float32)
                v = tl.reduce(rows, 0, _mul)
                acc += tl.where(valid[:, None], v, 0.0)
            else:  # add; concat = add of tables that cover disjoint columns
                rows = tl.load(w_ptr + ptrs, mask=m3, other=0.0).to(tl.float32)
                acc += tl.sum(rows, axis=0)
        res = acc * scale[:, None]
    optrs = out_ptr + bags[:, None].to(tl.int64) * OUT_STRIDE + f * D + cols[None, :]
    tl.store(optrs, res.to(out_ptr.dtype.element_ty), mask=bmask[:, None] & (cols[None, :] < D))


@triton.jit
def tbe_bwd_kernel(
    idx_ptr, off_ptr, w_ptr, gout_ptr, dst_ptr,
    place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr,
    B, D, OUT_STRIDE, alpha,
    K: tl.constexpr, OP: tl.constexpr, AFTER_POOL: tl.constexpr, IDX32: tl.constexpr,
    UNIFORM: tl.constexpr, EVEN_D: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    PRE_REDUCE: tl.constexpr = False, R: tl.constexpr = 1, PART: tl.constexpr = 0,
):
    # dst: the fp32 gradient buffer (alpha = 1) or the weights themselves (alpha = -lr).
    # PRE_REDUCE: components with at most R rows (modulus <= R, "small") are summed per program
    # in registers, one atomic per (row, column) at the end; the others get one atomic per index.
    # PART 0: every component; 1: the small ones only; 2: the large ones only, reading the small
    # ones' rows only (fused SGD for mult, where the large rows are updated in place meanwhile).
    f, bags, bmask, start, length, place, modulus, base, width, rel, cmask, scale, ts, tmask = _prologue(
        off_ptr, place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr, B, D,
        K, IDX32, UNIFORM, EVEN_D, BLOCK_B, BLOCK_D)
    if PRE_REDUCE:
        small = tmask & (modulus <= R)
        large = tmask & (modulus > R)
    else:
        small = tmask & (modulus < 0)
        large = tmask
    if PART == 2:
        lmask = cmask & small[:, None]  # what is read: the large rows are being written
        ltmask = small
    else:
        lmask = cmask
        ltmask = tmask
    cols = tl.arange(0, BLOCK_D)
    gptrs = gout_ptr + bags[:, None].to(tl.int64) * OUT_STRIDE + f * D + cols[None, :]
    g = tl.load(gptrs, mask=bmask[:, None] & (cols[None, :] < D), other=0.0).to(tl.float32)
    g = g * (scale[:, None] * alpha)
    ts3 = ts[:, None, None]
    if OP == 1 and AFTER_POOL:
        pooled = _pooled(idx_ptr, w_ptr, start, length, place, modulus, base, width, rel, lmask, scale,
                         ltmask, D, K, IDX32, UNIFORM, PREFETCH, BLOCK_B, BLOCK_D)
        others = tl.full([K, BLOCK_B, BLOCK_D], 1.0, tl.float32)
        for s in tl.static_range(K):
            p_s = tl.sum(tl.where(ts3 == s, pooled, 0.0), axis=0)
            others = others * tl.where(ts3 == s, 1.0, p_s[None, :, :])
        gt = others * g[None, :, :]
    else:
        gt = tl.zeros([K, BLOCK_B, BLOCK_D], tl.float32) + g[None, :, :]
    rr = tl.arange(0, R)
    if OP == 1 and not AFTER_POOL:  # contributions differ per index
        acc = tl.zeros([K, R, BLOCK_D], tl.float32)  # small tables' gradient rows of this program
    else:
        cnt = tl.zeros([K, BLOCK_B, R], tl.float32)  # hits of small row r by bag b
    maxlen, x_next = _walk_start(idx_ptr, start, length, PREFETCH)
    for i in range(0, maxlen):
        valid = i < length
        x, x_next = _index_at(idx_ptr, start, length, i, x_next, PREFETCH)
        code = _codes(x, place, modulus, IDX32)
        ptrs = _ptrs(code, base, width, rel, D, UNIFORM)
        m3 = valid[None, :, None] & cmask[:, None, :]
        if OP == 1 and not AFTER_POOL:
            rows = tl.load(w_ptr + ptrs, mask=valid[None, :, None] & lmask[:, None, :], other=1.0).to(tl.float32)
            others = tl.full([K, BLOCK_B, BLOCK_D], 1.0, tl.float32)
            for s in tl.static_range(K):
                r_s = tl.sum(tl.where(ts3 == s, rows, 0.0), axis=0)
                others = others * tl.where(ts3 == s, 1.0, r_s[None, :, :])
            gx = others * g[None, :, :]
        else:
            gx = gt
        if PART != 1:
            tl.atomic_add(dst_ptr + ptrs, gx, mask=m3 & large[:, None, None], sem="relaxed")
        if PRE_REDUCE and PART != 2:
            # int32 row ids (R for the rows of large components and for absent indices)
            rid = tl.where(valid[None, :] & small[:, None], tl.minimum(code, R), R).to(tl.int32)
            if OP == 1 and not AFTER_POOL:
                # row by row: a (K, BLOCK_B, R, BLOCK_D) tile would not fit in registers
                for r in range(R):
                    s_r = tl.sum(tl.where(rid[:, :, None] == r, gx, 0.0), axis=1)  # [K, BLOCK_D]
                    acc += tl.where(rr[None, :, None] == r, s_r[:, None, :], 0.0)
            else:  # the bag's contribution is the same for all its indices: count the hits
                cnt += (rid[:, :, None] == rr[None, None, :]).to(tl.float32)
    if PRE_REDUCE and PART != 2:
        # one atomic per (small row, column) for this program's BLOCK_B bags
        rr3 = rr[None, :, None]
        for r in range(R):  # a loop, not unrolled: one row's values live at a time
            if OP == 1 and not AFTER_POOL:
                a_r = tl.sum(tl.where(rr3 == r, acc, 0.0), axis=1)  # [K, BLOCK_D]
            else:
                c_r = tl.sum(tl.where(rr[None, None, :] == r, cnt, 0.0), axis=2)  # [K, BLOCK_B]
                a_r = tl.sum(c_r[:, :, None] * gt, axis=1)
            if UNIFORM:
                p_r = (base[:, None] + r) * D + rel
            else:
                p_r = base[:, None] + r * width[:, None] + rel
            rmask = (small & (r < modulus))[:, None] & cmask & (a_r != 0.0)
            tl.atomic_add(dst_ptr + p_r, a_r, mask=rmask, sem="relaxed")


@triton.jit
def tbe_apply_kernel(
    idx_ptr, off_ptr, w_ptr, grad_ptr,
    place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr,
    B, D, neg_lr,
    K: tl.constexpr, IDX32: tl.constexpr, UNIFORM: tl.constexpr, EVEN_D: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    SKIP_SMALL: tl.constexpr = False, R: tl.constexpr = 1,
):
    # every touched gradient element is taken (and zeroed) by exactly one visitor: w -= lr * grad.
    # SKIP_SMALL: components with modulus <= R are left to tbe_small_apply_kernel.
    f, bags, bmask, start, length, place, modulus, base, width, rel, cmask, scale, ts, tmask = _prologue(
        off_ptr, place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr, B, D,
        K, IDX32, UNIFORM, EVEN_D, BLOCK_B, BLOCK_D)
    if SKIP_SMALL:
        cmask = cmask & (modulus > R)[:, None]
    # grad_ptr is the fp32 scratch seen as int32 (the interpreter exchanges integers only)
    zeros = tl.zeros([K, BLOCK_B, BLOCK_D], tl.int32)
    maxlen, x_next = _walk_start(idx_ptr, start, length, PREFETCH)
    for i in range(0, maxlen):
        ptrs, m3, valid, x_next = _rows_at(idx_ptr, start, length, i, x_next, place, modulus, base, width,
                                           rel, cmask, D, IDX32, UNIFORM, PREFETCH)
        gbits = tl.atomic_xchg(grad_ptr + ptrs, zeros, mask=m3, sem="relaxed")
        gsum = tl.where(m3, gbits.to(tl.float32, bitcast=True), 0.0)
        tl.atomic_add(w_ptr + ptrs, gsum * neg_lr, mask=m3 & (gsum != 0.0), sem="relaxed")


@triton.jit
def tbe_small_apply_kernel(w_ptr, grad_ptr, mod_ptr, base_ptr, width_ptr, kf_ptr, neg_lr,
                            K: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr):
    # one program per (feature, component): a small component (modulus <= R) takes its whole
    # gradient block from the scratch (w -= lr * grad) and zeroes it; rows * width <= R * 1024
    f = tl.program_id(0)
    t = tl.program_id(1)
    kf = tl.load(kf_ptr + f)
    m = tl.load(mod_ptr + f * K + t)
    base = tl.load(base_ptr + f * K + t)  # in elements
    width = tl.load(width_ptr + f * K + t)
    n = tl.where((t < kf) & (m <= R), m * width, 0)
    for s in range(0, n, BLOCK):
        e = base + s + tl.arange(0, BLOCK)
        emask = s + tl.arange(0, BLOCK) < n
        gr = tl.load(grad_ptr + e, mask=emask, other=0.0)
        w = tl.load(w_ptr + e, mask=emask, other=0.0)
        tl.store(w_ptr + e, w + gr * neg_lr, mask=emask)
        tl.store(grad_ptr + e, tl.zeros([BLOCK], tl.float32), mask=emask)
