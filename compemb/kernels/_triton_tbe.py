"""Table-batched fused Triton kernels: all features of a collection in one launch (like FBGEMM's TBE).

Every component table of every feature lives in one flat 1-D weight buffer; feature ``f``'s
component ``t`` is the ``(rows, width)`` block that starts at element ``base[f, t]``. The input is
KeyedJaggedTensor-like: the indices of all features concatenated feature-major and ``F * B + 1``
offsets (bag ``b`` of feature ``f`` is ``indices[offsets[f*B + b] : offsets[f*B + b + 1]]``).

The partition encoding is fused into the kernels: every supported partition has the *digit form*
``code = (x // P) % m`` (mixed-radix digits of generalized QR, quotient and remainder of QR,
residues of Chinese-remainder families, the identity of a full table), so the kernels read the raw
indices and compute the k codes in registers; no ``(k, N)`` codes are materialised.

Grid: one program per (block of ``BLOCK_B`` bags, feature). A program walks its bags in lock step,
one index of every bag per iteration (the trip count is the longest bag of the block, read from the
offsets on the device: no host sync), and gathers a ``(k, BLOCK_B, BLOCK_D)`` tile of rows per
iteration, so ``k * BLOCK_B`` rows are in flight per program (and the next index of every bag is
already loading, see ``PREFETCH_INDICES``). One operation (``mult`` / ``add`` /
``concat``) and one ``compose`` serve the whole launch; ``mode`` (``sum`` / ``mean``) is per feature.

Backward: the gradient of every component row is scattered with atomics into a flat fp32 gradient
buffer (dense gradient of the flat weight), or, with ``optimizer="exact_sgd"``, applied to the
weights directly (``w -= lr * grad``; exact, since SGD is linear in the gradient).

Small components are pre-reduced. With QR every index of a feature lands in one of the
``num_collisions`` rows of its remainder table, so one atomic per index serialises on a handful
of addresses. A component with at most ``R`` rows (``R``: the power of two at or above the largest
modulus <= ``SMALL_ROWS`` in the layout) is summed per program in registers (an ``(R, BLOCK_D)``
tile per component; for ``add``/``concat`` and ``mult`` after pooling, whose contribution is the
same for every index of a bag, just a hit count per (bag, row)) and written with one atomic per
(row, column) per program: ``BLOCK_B * bag length`` times fewer atomics on those rows. Larger
components keep one atomic per index. ``PRE_REDUCE_SMALL = False`` restores the old backward.

Fused SGD for ``mult``: the gradient of one table reads the other tables' rows, so no row may
change while another program can still read it. When every feature has at most one large
component (QR, full tables), three launches, no pass over the touched elements: (1) the small
components' gradients, pre-reduced, into a persistent fp32 scratch that stays all-zero between
steps, reading the original weights; (2) each feature's large component updated in place: its
gradient reads only the small components' rows, which nothing has written yet; (3) one program
per small component applies its scratch block (at most ``R`` rows) and zeroes it. Otherwise the
gradient is accumulated into the scratch first, then a second kernel swaps each touched large
gradient element with zero (``atomic_xchg``) and adds ``-lr`` times it to the weight, so each
element is updated once with its complete gradient, and (3) applies the small blocks.

On CPU the kernels run only under ``TRITON_INTERPRET=1`` (set before triton is imported).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from compemb.kernels._triton import INTERPRETED

__all__ = ["TBELayout", "tbe_layout", "tbe_embedding_bags", "validate_tbe_input", "OPTIMIZERS"]

_OPS = {"add": 0, "mult": 1, "concat": 2}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OPTIMIZERS = (None, "exact_sgd")
MAX_K = 4
_INT32_MAX = 2**31 - 1
#: Load the next index of every bag while the current rows are in flight (a knob for benchmarks).
PREFETCH_INDICES = True
#: Backward: components with at most this many rows (the remainder table of QR has
#: ``num_collisions`` rows) are summed per program in registers and written with one atomic per
#: (row, column) per program, instead of one atomic per index on a handful of addresses.
SMALL_ROWS = 16
#: A/B knob for benchmarks: ``False`` restores the per-index atomics for every component (and the
#: accumulate-then-apply fused SGD for ``mult`` over every component). Read at forward time.
PRE_REDUCE_SMALL = True


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
def _pooled(idx_ptr, w_ptr, start, length, place, modulus, base, width, rel, cmask, scale, tmask, D,
            K: tl.constexpr, IDX32: tl.constexpr, UNIFORM: tl.constexpr, PREFETCH: tl.constexpr,
            BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-table pooled vectors ``(K, BLOCK_B, BLOCK_D)`` (scaled for mean; 1 for absent tables)."""
    acc = tl.zeros([K, BLOCK_B, BLOCK_D], tl.float32)
    maxlen = tl.max(length, axis=0)
    if PREFETCH:  # the next index loads while this one's rows are in flight
        x_next = tl.load(idx_ptr + start, mask=length > 0, other=0)
    for i in range(0, maxlen):
        valid = i < length
        if PREFETCH:
            x = x_next
            x_next = tl.load(idx_ptr + start + i + 1, mask=i + 1 < length, other=0)
        else:
            x = tl.load(idx_ptr + start + i, mask=valid, other=0)
        ptrs = _row_ptrs(x, place, modulus, base, width, rel, D, IDX32, UNIFORM)
        m3 = valid[None, :, None] & cmask[:, None, :]
        acc += tl.load(w_ptr + ptrs, mask=m3, other=0.0).to(tl.float32)
    acc = acc * scale[None, :, None]
    return tl.where(tmask[:, None, None], acc, 1.0)


@triton.jit
def _tbe_fwd_kernel(
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
        maxlen = tl.max(length, axis=0)
        if PREFETCH:  # the next index loads while this one's rows are in flight
            x_next = tl.load(idx_ptr + start, mask=length > 0, other=0)
        for i in range(0, maxlen):
            valid = i < length
            if PREFETCH:
                x = x_next
                x_next = tl.load(idx_ptr + start + i + 1, mask=i + 1 < length, other=0)
            else:
                x = tl.load(idx_ptr + start + i, mask=valid, other=0)
            ptrs = _row_ptrs(x, place, modulus, base, width, rel, D, IDX32, UNIFORM)
            m3 = valid[None, :, None] & cmask[:, None, :]
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
def _tbe_bwd_kernel(
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
    maxlen = tl.max(length, axis=0)
    if PREFETCH:  # the next index loads while this one's rows are in flight
        x_next = tl.load(idx_ptr + start, mask=length > 0, other=0)
    for i in range(0, maxlen):
        valid = i < length
        if PREFETCH:
            x = x_next
            x_next = tl.load(idx_ptr + start + i + 1, mask=i + 1 < length, other=0)
        else:
            x = tl.load(idx_ptr + start + i, mask=valid, other=0)
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
def _tbe_apply_kernel(
    idx_ptr, off_ptr, w_ptr, grad_ptr,
    place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr,
    B, D, neg_lr,
    K: tl.constexpr, IDX32: tl.constexpr, UNIFORM: tl.constexpr, EVEN_D: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    SKIP_SMALL: tl.constexpr = False, R: tl.constexpr = 1,
):
    # every touched gradient element is taken (and zeroed) by exactly one visitor: w -= lr * grad.
    # SKIP_SMALL: components with modulus <= R are left to _tbe_small_apply_kernel.
    f, bags, bmask, start, length, place, modulus, base, width, rel, cmask, scale, ts, tmask = _prologue(
        off_ptr, place_ptr, mod_ptr, base_ptr, width_ptr, col_ptr, kf_ptr, mean_ptr, B, D,
        K, IDX32, UNIFORM, EVEN_D, BLOCK_B, BLOCK_D)
    if SKIP_SMALL:
        cmask = cmask & (modulus > R)[:, None]
    # grad_ptr is the fp32 scratch seen as int32 (the interpreter exchanges integers only)
    zeros = tl.zeros([K, BLOCK_B, BLOCK_D], tl.int32)
    maxlen = tl.max(length, axis=0)
    if PREFETCH:  # the next index loads while this one's rows are in flight
        x_next = tl.load(idx_ptr + start, mask=length > 0, other=0)
    for i in range(0, maxlen):
        valid = i < length
        if PREFETCH:
            x = x_next
            x_next = tl.load(idx_ptr + start + i + 1, mask=i + 1 < length, other=0)
        else:
            x = tl.load(idx_ptr + start + i, mask=valid, other=0)
        ptrs = _row_ptrs(x, place, modulus, base, width, rel, D, IDX32, UNIFORM)
        m3 = valid[None, :, None] & cmask[:, None, :]
        gbits = tl.atomic_xchg(grad_ptr + ptrs, zeros, mask=m3, sem="relaxed")
        gsum = tl.where(m3, gbits.to(tl.float32, bitcast=True), 0.0)
        tl.atomic_add(w_ptr + ptrs, gsum * neg_lr, mask=m3 & (gsum != 0.0), sem="relaxed")


@triton.jit
def _tbe_small_apply_kernel(w_ptr, grad_ptr, mod_ptr, base_ptr, width_ptr, kf_ptr, neg_lr,
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


# -- the layout -------------------------------------------------------------------------------------
@dataclass
class TBELayout:
    """Where every component table of every feature lives in the flat buffer, and how to encode.

    Build with :func:`tbe_layout`. ``table_shapes[f][t]`` is the ``(rows, width)`` of feature
    ``f``'s component ``t``; ``table_bases[f][t]`` its first element in the flat buffer.
    """

    names: List[str]
    num_embeddings: List[int]
    dim: int
    operation: str
    compose: str
    modes: List[str]
    table_shapes: List[List[Tuple[int, int]]]
    table_bases: List[List[int]]
    digit_forms: List[List[Tuple[int, int]]]
    numel: int
    k_max: int
    idx32: bool
    _device_tensors: dict = field(default_factory=dict, repr=False)

    @property
    def num_features(self) -> int:
        return len(self.names)

    def tensors(self, device) -> dict:
        """The per-(feature, table) parameters as device tensors (cached per device)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._device_tensors:
            K = _next_pow2(self.k_max)
            F = self.num_features
            place = torch.ones(F, K, dtype=torch.long)
            modulus = torch.ones(F, K, dtype=torch.long)
            base = torch.zeros(F, K, dtype=torch.long)
            width = torch.zeros(F, K, dtype=torch.long)
            col = torch.zeros(F, K, dtype=torch.long)
            for f in range(F):
                c = 0
                for t, ((P, m), (rows, w), b) in enumerate(zip(self.digit_forms[f], self.table_shapes[f],
                                                              self.table_bases[f])):
                    place[f, t], modulus[f, t], base[f, t], width[f, t] = P, m, b, w
                    col[f, t] = c if self.operation == "concat" else 0
                    c += w
            kf = torch.tensor([len(s) for s in self.table_shapes], dtype=torch.int32)
            mean = torch.tensor([1 if m == "mean" else 0 for m in self.modes], dtype=torch.int32)
            n = torch.tensor(self.num_embeddings, dtype=torch.long)
            # mult/add: every table is (rows, d), so bases are also kept in rows (see UNIFORM)
            base_rows = base // self.dim
            self._device_tensors[key] = {
                name: t.to(device) for name, t in dict(place=place, modulus=modulus, base=base, width=width,
                                                       col=col, kf=kf, mean=mean, n=n,
                                                       base_rows=base_rows).items()}
        return self._device_tensors[key]


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _digit_form(name: str, p) -> Tuple[int, int]:
    form = p._digit_form() if getattr(p, "_ids_follow_form", False) else None
    if form is None:
        raise ValueError(
            f"feature {name!r}: partition {p!r} has no digit form (x // P) % m, so the triton TBE "
            "kernel cannot encode it in-kernel (it serves quotient/remainder, mixed-radix digit, "
            "residue and identity partitions; use backend='torch')")
    return int(form[0]), int(form[1])


def tbe_layout(
    names: Sequence[str],
    families: Sequence,
    dim: int,
    operation: str,
    modes: Sequence[str],
    compose: str = "before_pool",
    widths: Optional[Sequence[Sequence[int]]] = None,
) -> TBELayout:
    """Plan the flat buffer and the in-kernel encoding for one table-batched launch.

    Args:
        names: one name per feature (used in error messages).
        families: one :class:`~compemb.partitions.PartitionFamily` per feature (k = 1..4), made of
            partitions of digit form ``(x // P) % m`` (quotient, remainder, digit, residue,
            identity); hash partitions and meets are refused by name.
        dim: every feature's output width ``d`` (one ``d`` for the whole launch, ``d <= 1024``).
        operation: ``"mult"``, ``"add"`` or ``"concat"``, one for all features.
        modes: ``"sum"`` or ``"mean"`` per feature (``"max"`` is refused by name).
        compose: ``"before_pool"`` or ``"after_pool"`` (only changes ``mult``).
        widths: per feature the component widths (default ``d`` each; ``concat`` needs widths
            that sum to ``d``).

    Example::

        >>> from compemb.partitions import quotient_remainder
        >>> lay = tbe_layout(["a", "b"], [quotient_remainder(10, 4)] * 2, 8, "mult", ["sum", "mean"])
        >>> lay.table_shapes, lay.numel
        ([[(4, 8), (3, 8)], [(4, 8), (3, 8)]], 112)
    """
    if operation not in _OPS:
        raise ValueError(f"operation must be one of {tuple(_OPS)}, got {operation!r}")
    if compose not in ("before_pool", "after_pool"):
        raise ValueError(f"compose must be 'before_pool' or 'after_pool', got {compose!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 1024:
        raise ValueError(f"dim must be an int in [1, 1024], got {dim!r}")
    names, families, modes = list(names), list(families), list(modes)
    if not (len(names) == len(families) == len(modes)) or not names:
        raise ValueError(f"need one family and mode per feature, got {len(names)} names, {len(families)} "
                         f"families and {len(modes)} modes")
    shapes, bases, forms, ns = [], [], [], []
    offset = 0
    for f, (name, fam, mode) in enumerate(zip(names, families, modes)):
        if mode == "max":
            raise ValueError(f"feature {name!r}: mode='max' is not served by the triton TBE kernel "
                             "(sum and mean only; use backend='torch')")
        if mode not in ("sum", "mean"):
            raise ValueError(f"feature {name!r}: mode must be 'sum' or 'mean', got {mode!r}")
        k = len(fam)
        if not 1 <= k <= MAX_K:
            raise ValueError(f"feature {name!r}: k={k} partitions (the triton TBE kernel serves 1..{MAX_K})")
        w = tuple(widths[f]) if widths is not None else (dim,) * k
        if len(w) != k:
            raise ValueError(f"feature {name!r}: {len(w)} widths for k={k} tables")
        if operation == "concat" and sum(w) != dim:
            raise ValueError(f"feature {name!r}: concat widths {w} must sum to dim={dim}")
        if operation != "concat" and any(x != dim for x in w):
            raise ValueError(f"feature {name!r}: {operation!r} needs widths equal to dim={dim}, got {w}")
        forms.append([_digit_form(name, p) for p in fam])
        shapes.append([(int(r), int(x)) for r, x in zip(fam.table_sizes, w)])
        bases.append([])
        for r, x in shapes[-1]:
            bases[-1].append(offset)
            offset += r * x
        ns.append(int(fam.n))
    idx32 = max(ns) <= _INT32_MAX
    return TBELayout(names, ns, dim, operation, compose, modes, shapes, bases, forms, offset,
                     max(len(s) for s in shapes), idx32)


# -- validation ---------------------------------------------------------------------------------------
def validate_tbe_input(indices: torch.Tensor, offsets: torch.Tensor, layout: TBELayout,
                       extra_checks: Sequence = ()) -> None:
    """Check all features' indices and the offsets at once (a single device-to-host copy).

    Raises ``IndexError`` naming the feature, the value and ``n`` for an index outside
    ``[0, n)``, and ``ValueError`` for offsets that do not start at 0, decrease or do not end at
    ``len(indices)``. ``extra_checks`` are ``(flag, raise_fn)`` pairs: a 0-d bool tensor that is
    true on an error, fetched in the same copy, and a function that raises the error.
    """
    F = layout.num_features
    N = indices.numel()
    B = (offsets.numel() - 1) // F
    tens = layout.tensors(indices.device)
    checks = [offsets[0] != 0, offsets[-1] != N]
    checks.append((offsets[1:] < offsets[:-1]).any() if offsets.numel() > 1
                  else torch.zeros((), dtype=torch.bool, device=offsets.device))
    if N:
        bounds = offsets[B::B].contiguous()  # end of every feature's indices
        pos = torch.arange(N, device=indices.device)
        feat = torch.searchsorted(bounds, pos, right=True).clamp_(max=F - 1)
        bad = (indices < 0) | (indices >= tens["n"][feat])
        checks.append(bad.any())
    extra_checks = list(extra_checks)
    flags = torch.stack([c.to(torch.bool) for c in checks] + [f.to(torch.bool) for f, _ in extra_checks]).tolist()
    for flag, (_, raise_fn) in zip(flags[len(checks):], extra_checks):
        if flag:
            raise_fn()
    if flags[0]:
        raise ValueError(f"offsets[0] must be 0, got {int(offsets[0])}")
    if flags[1]:
        raise ValueError(f"offsets[-1] must equal the number of indices N={N}, got {int(offsets[-1])}")
    if flags[2]:
        pos = int((offsets[1:] < offsets[:-1]).nonzero()[0, 0]) + 1
        raise ValueError(f"offsets must be non-decreasing, got offsets[{pos - 1}]={int(offsets[pos - 1])} > "
                         f"offsets[{pos}]={int(offsets[pos])}")
    if N and flags[3]:
        p = int(bad.nonzero()[0, 0])
        f = int(feat[p])
        value = int(indices[p])
        n = layout.num_embeddings[f]
        raise IndexError(f"feature {layout.names[f]!r}: index {value} is out of range for num_embeddings={n}: "
                         f"indices must lie in [0, {n})")


# -- autograd ---------------------------------------------------------------------------------------
def _launch_config(layout: TBELayout, B: int, block_b: Optional[int]):
    K = _next_pow2(layout.k_max)
    block_d = max(_next_pow2(layout.dim), 16)
    if block_b is None:
        # about 2048 fp32 values per (K, BLOCK_B, BLOCK_D) tile: K * BLOCK_B rows in flight per step.
        # Measured on an H100 (BENCHMARKS.md, d=64, B=16384, 20-hot QR forward): block_b 8/16/32/64
        # ran 0.833/0.838/1.298/0.862 ms, so 4096-value tiles (block_b=32 there) were the worst.
        block_b = max(1, min(64, 2048 // (K * block_d)))
        block_b = min(block_b, max(1, _next_pow2(B)))
    elif block_b < 1 or block_b & (block_b - 1):
        raise ValueError(f"block_b must be a power of two >= 1, got {block_b}")
    return K, block_b, block_d, _num_warps(K * block_b * block_d)


def _num_warps(tile: int) -> int:
    return 1 if tile <= 512 else 2 if tile <= 1024 else 4 if tile <= 4096 else 8


def _small_plan(layout: TBELayout, pre_reduce: bool):
    """How the backward treats small components: ``(pre_reduce, R, has_large, one_large)``.

    A component is *small* when its modulus (its number of rows) is at most ``R``, the power of
    two at or above the largest modulus <= ``SMALL_ROWS`` in the layout; ``one_large``: no
    feature has two large components (then fused SGD for ``mult`` needs no scratch pass).
    """
    mods = [[m for _, m in forms] for forms in layout.digit_forms]
    small = [m for ms in mods for m in ms if m <= SMALL_ROWS]
    pre = bool(pre_reduce and small)
    R = _next_pow2(max(small)) if pre else 1
    limit = R if pre else 0
    has_large = any(m > limit for ms in mods for m in ms)
    one_large = all(sum(m > limit for m in ms) <= 1 for ms in mods)
    return pre, R, has_large, one_large


def _args(t, uniform):
    base = t["base_rows"] if uniform else t["base"]
    return (t["place"], t["modulus"], base, t["width"], t["col"], t["kf"], t["mean"])


class _TBEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, placeholder, indices, offsets, layout, optimizer, learning_rate, scratch, block_b):
        F = layout.num_features
        B = (offsets.numel() - 1) // F
        D = layout.dim
        out = torch.empty(B, F * D, dtype=weight.dtype, device=weight.device)
        K, block_b, block_d, num_warps = _launch_config(layout, B, block_b)
        t = layout.tensors(weight.device)
        uniform = layout.operation != "concat"
        if B > 0:
            grid = (triton.cdiv(B, block_b), F)
            _tbe_fwd_kernel[grid](
                indices, offsets, weight, out, *_args(t, uniform), B, D, F * D,
                K=K, OP=_OPS[layout.operation], AFTER_POOL=layout.compose == "after_pool",
                IDX32=layout.idx32, UNIFORM=uniform, EVEN_D=block_d == D, PREFETCH=PREFETCH_INDICES,
                BLOCK_B=block_b, BLOCK_D=block_d, num_warps=num_warps)
        if optimizer is None:
            ctx.save_for_backward(indices, offsets, weight)  # autograd checks it is not modified meanwhile
        else:
            ctx.save_for_backward(indices, offsets)
            ctx.weight = weight  # fused SGD updates it in place, in backward
        ctx.config = (layout, optimizer, learning_rate, scratch, K, block_b, block_d, num_warps, B,
                      _small_plan(layout, PRE_REDUCE_SMALL), PREFETCH_INDICES)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        indices, offsets, *saved = ctx.saved_tensors
        weight = saved[0] if saved else ctx.weight
        layout, optimizer, lr, scratch, K, block_b, block_d, num_warps, B, plan, prefetch = ctx.config
        pre, R, has_large, one_large = plan
        F, D = layout.num_features, layout.dim
        grad_out = grad_out.contiguous()
        t = layout.tensors(weight.device)
        op = _OPS[layout.operation]
        after = layout.compose == "after_pool"
        run = B > 0 and indices.numel() > 0
        grid = (triton.cdiv(B, block_b), F)
        uniform = layout.operation != "concat"
        consts = dict(K=K, IDX32=layout.idx32, UNIFORM=uniform, EVEN_D=block_d == D,
                      PREFETCH=prefetch, BLOCK_B=block_b, BLOCK_D=block_d, num_warps=num_warps)
        a = _args(t, uniform)

        def bwd(dst, alpha, part=0):
            _tbe_bwd_kernel[grid](indices, offsets, weight, grad_out, dst, *a, B, D, F * D, alpha,
                                  OP=op, AFTER_POOL=after, PRE_REDUCE=pre, R=R, PART=part, **consts)

        if optimizer is None:
            grad = torch.zeros(weight.numel(), dtype=torch.float32, device=weight.device)
            if run:
                bwd(grad, 1.0)
            return grad.to(weight.dtype), None, None, None, None, None, None, None, None
        if not run:
            return None, None, None, None, None, None, None, None, None
        if op != 1:  # add / concat: the gradient reads no weights, so update in place
            bwd(weight, -lr)
        elif pre and one_large:
            # mult, every feature has at most one large component: (1) the small components'
            # gradients, pre-reduced, into the scratch, reading the original weights; (2) the large
            # component of each feature updated in place: its gradient reads only the small rows,
            # which nothing writes before (3) applies the scratch to them and zeroes it
            bwd(scratch, 1.0, part=1)
            if has_large:
                bwd(weight, -lr, part=2)
            _tbe_small_apply_kernel[(F, K)](weight, scratch, t["modulus"], t["base"], t["width"], t["kf"], -lr,
                                            K=K, R=R, BLOCK=1024, num_warps=4)
        else:
            # mult: the gradient reads the other tables, so accumulate first, then update every
            # touched element once (the small components' blocks in one go when pre-reduced)
            bwd(scratch, 1.0)
            if has_large:
                _tbe_apply_kernel[grid](indices, offsets, weight, scratch.view(torch.int32), *a, B, D, -lr,
                                        SKIP_SMALL=pre, R=R, **consts)
            if pre:
                _tbe_small_apply_kernel[(F, K)](weight, scratch, t["modulus"], t["base"], t["width"], t["kf"],
                                                -lr, K=K, R=R, BLOCK=1024, num_warps=4)
        return None, None, None, None, None, None, None, None, None


def tbe_embedding_bags(
    indices: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    layout: TBELayout,
    validate: bool = True,
    optimizer: Optional[str] = None,
    learning_rate: float = 0.01,
    scratch: Optional[torch.Tensor] = None,
    placeholder: Optional[torch.Tensor] = None,
    block_b: Optional[int] = None,
) -> torch.Tensor:
    """All features' compositional embedding bags in one fused Triton launch (encode + gather + pool).

    Args:
        indices: int64 ``(N,)``, the raw indices of all features, concatenated feature-major.
        offsets: int64 ``(F * B + 1,)``: bag ``b`` of feature ``f`` is
            ``indices[offsets[f*B + b] : offsets[f*B + b + 1]]`` (the KeyedJaggedTensor layout).
        weight: the flat 1-D buffer of ``layout.numel`` elements (fp32, fp16 or bf16).
        layout: from :func:`tbe_layout`.
        validate: check indices and offsets first (default ``True``): one batched check for all
            features and one device-to-host copy. ``False`` skips it for trusted inputs (e.g.
            benchmarks); out-of-range indices then read and write out of bounds.
        optimizer: ``None`` (backward returns the dense fp32-accumulated gradient of ``weight``)
            or ``"exact_sgd"`` (backward applies ``weight -= learning_rate * grad`` in place and
            returns no gradient; fp32 weights only; pass a ``placeholder`` that requires grad).
        learning_rate: the fused SGD step size.
        scratch: ``exact_sgd`` with ``mult``: an all-zero fp32 buffer of ``layout.numel``
            elements, left all-zero after every step (allocated per call when ``None``).
        placeholder: ``exact_sgd``: a tensor that requires grad, so that autograd calls backward.
        block_b: bags per program (a power of two); default from ``d`` and ``k``.

    Shape:
        output ``(B, F * d)``: feature ``f`` in columns ``f*d : (f+1)*d``, in ``weight``'s dtype.

    Example::

        >>> import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # doctest: +SKIP
        >>> from compemb.partitions import quotient_remainder
        >>> lay = tbe_layout(["a", "b"], [quotient_remainder(10, 4)] * 2, 8, "mult", ["sum", "sum"])
        >>> w = torch.randn(lay.numel)
        >>> idx = torch.tensor([1, 9, 3, 0, 0])
        >>> tbe_embedding_bags(idx, torch.tensor([0, 2, 3, 3, 5]), w, lay).shape  # doctest: +SKIP
        torch.Size([2, 16])
    """
    if not isinstance(layout, TBELayout):
        raise TypeError(f"layout must be a TBELayout (from tbe_layout), got {type(layout).__name__}")
    F = layout.num_features
    if indices.dim() != 1 or offsets.dim() != 1:
        raise ValueError(f"indices and offsets must be 1-D, got {tuple(indices.shape)} and {tuple(offsets.shape)}")
    if indices.dtype not in (torch.int64, torch.int32) or offsets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices and offsets must be integer tensors, got {indices.dtype} and {offsets.dtype}")
    if offsets.numel() < 1 or (offsets.numel() - 1) % F:
        raise ValueError(f"offsets must have F * B + 1 entries for F={F} features, got {offsets.numel()}")
    if weight.dim() != 1 or weight.numel() != layout.numel:
        raise ValueError(f"weight must be the flat 1-D buffer of {layout.numel} elements, got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype not in _DTYPES:
        raise TypeError(f"triton TBE serves {_DTYPES}, got weight dtype {weight.dtype}")
    device = weight.device
    if indices.device != device or offsets.device != device:
        raise ValueError(f"indices ({indices.device}), offsets ({offsets.device}) and weight ({device}) "
                         "must be on one device")
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError("the triton TBE kernel on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "triton is imported")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} for the triton TBE kernel, got {optimizer!r}")
    indices = indices.long().contiguous()
    offsets = offsets.long().contiguous()
    if validate:
        validate_tbe_input(indices, offsets, layout)
    if optimizer is None:
        return _TBEFunction.apply(weight, None, indices, offsets, layout, None, 0.0, None, block_b)
    if weight.dtype != torch.float32:
        raise TypeError(f"optimizer={optimizer!r} updates the weights with fp32 atomics: weight dtype "
                        f"must be float32, got {weight.dtype}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if placeholder is None or not placeholder.requires_grad:
        raise ValueError("optimizer='exact_sgd' needs a placeholder tensor that requires grad "
                         "(autograd only runs backward through such a tensor)")
    if layout.operation == "mult" and scratch is None:
        scratch = torch.zeros(layout.numel, dtype=torch.float32, device=device)
    return _TBEFunction.apply(weight.detach(), placeholder, indices, offsets, layout, optimizer,
                              float(learning_rate), scratch, block_b)
