"""Exact integer helpers of the partition package: argument checks and int64 array arithmetic.

Every helper takes int64 torch tensors and numpy arrays alike and never divides in floating
point, so indices up to ``2**63 - 1`` are exact. Private to :mod:`compemb.partitions`.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Iterable, List, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch

#: Largest ``n`` for which set-partition questions are answered by visiting all of ``S``.
EXHAUSTIVE_LIMIT = 2**22
#: Largest supported ``n``: indices are int64, so the largest index is ``2**63 - 1``.
MAX_N = 2**63
INT64_MAX = 2**63 - 1
# Largest m for which (a * b) with a, b < m cannot overflow int64.
_MULMOD_DIRECT_LIMIT = math.isqrt(INT64_MAX)
_SAMPLE_PREFIX = 4096
_SAMPLE_RANDOM = 1 << 15

#: an int64 torch tensor or numpy integer array
AnyIntArray = Union[torch.Tensor, np.ndarray]
#: the same: arguments annotated with it are all tensors or all numpy arrays
IntArray = TypeVar("IntArray", torch.Tensor, np.ndarray)
#: what partitions and families accept as indices
Indices = Union[torch.Tensor, np.ndarray, int]


class UndecidableError(ValueError):
    """A set-partition question has no structural answer and ``n`` exceeds ``EXHAUSTIVE_LIMIT``."""


def undecidable(what: str, n: int) -> UndecidableError:
    """The error for a question about ``n`` categories that no procedure settles."""
    return UndecidableError(
        f"cannot decide {what} for n = {n}: no structural proof applies and n exceeds the "
        f"exhaustive-check limit EXHAUSTIVE_LIMIT = {EXHAUSTIVE_LIMIT}"
    )


# -- argument checks ----------------------------------------------------------------------------
def as_int(value: object, name: str, owner: str = "") -> int:
    """``value`` as a Python int: any integer ``operator.index`` accepts (ints, numpy integers,
    0-d integer tensors). Bools (``bool``, ``np.bool_``, bool tensors), floats, tensors of any
    other shape and everything else are refused rather than truncated. The one integer check of
    the library (:func:`compemb.functional.check_int` builds on it).

    Raises:
        TypeError: naming ``owner`` (a prefix, when given), ``name`` and the value.
    """
    if (
        isinstance(value, (bool, np.bool_))
        or (isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.dim() != 0))
    ):
        result = None
    else:
        try:
            result = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            result = None
    if result is None:
        prefix = f"{owner}: " if owner else ""
        raise TypeError(f"{prefix}{name} must be an integer, got {value!r} ({type(value).__name__})")
    return result


def check_n(n: object) -> int:
    """The number of categories, an int in ``[1, MAX_N]``."""
    n = as_int(n, "n")
    if n <= 0:
        raise ValueError(f"n (the number of categories) must be positive, got n = {n}")
    if n > MAX_N:
        raise ValueError(f"n = {n} exceeds the int64 index range (at most 2**63 = {MAX_N})")
    return n


def check_positive(value: object, name: str) -> int:
    """``value`` as an int ``>= 1``."""
    value = as_int(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name} = {value}")
    return value


def check_int_list(values: object, name: str) -> Tuple[int, ...]:
    """A non-empty sequence of positive ints, as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of positive integers, got {values!r}")
    out = tuple(check_positive(v, f"{name}[{i}]") for i, v in enumerate(values))
    if not out:
        raise ValueError(f"{name} must not be empty, got {values!r}")
    return out


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for Python ints, exact at any size."""
    return -(-a // b)


def lcm(values: Sequence[int]) -> int:
    """The least common multiple of positive ints."""
    return math.lcm(*values)


# -- indices ------------------------------------------------------------------------------------
def check_range(lo: int, hi: int, n: int) -> None:
    """Raise ``IndexError`` unless ``0 <= lo`` and ``hi < n``."""
    if lo < 0:
        raise IndexError(f"index {lo} is negative; indices must lie in [0, {n})")
    if hi >= n:
        raise IndexError(f"index {hi} is out of range for n = {n}; indices must lie in [0, {n})")


def prepare_indices(idx: Indices, n: int) -> Tuple[Any, bool]:
    """Validate indices in ``[0, n)``; return ``(int64 tensor or numpy array, is_scalar)``."""
    if isinstance(idx, torch.Tensor):
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"indices must be an integer tensor, got dtype {idx.dtype}")
        x = idx if idx.dtype == torch.int64 else idx.to(torch.int64)
        if x.numel():
            lo, hi = (int(v) for v in torch.aminmax(x))
            if lo < 0 and idx.dtype == torch.uint64:  # a uint64 index >= 2**63, wrapped: report it truly
                lo = hi = lo + 2**64
            check_range(lo, hi, n)
        return x, False
    if isinstance(idx, np.ndarray):
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}")
        if idx.size:
            check_range(int(idx.min()), int(idx.max()), n)
        return idx.astype(np.int64, copy=False), False
    if isinstance(idx, (int, np.integer)) and not isinstance(idx, (bool, np.bool_)):
        value = int(idx)
        check_range(value, value, n)
        return np.array([value], dtype=np.int64), True
    raise TypeError(
        f"indices must be an int64 torch tensor, a numpy integer array or an int, got "
        f"{type(idx).__name__}" + (f" {idx!r}" if isinstance(idx, (float, bool)) else "")
    )


def sample_indices(n: int, seed: int = 0) -> np.ndarray:
    """Indices searched for a witness when ``n`` is too large for an exhaustive check."""
    rng = np.random.default_rng(seed)
    parts = [np.arange(min(n, _SAMPLE_PREFIX), dtype=np.int64),
             rng.integers(0, n - 1, size=_SAMPLE_RANDOM, dtype=np.int64, endpoint=True)]
    # A dense window at a random place catches partitions that only differ locally.
    start = int(rng.integers(0, max(n - _SAMPLE_PREFIX, 0), endpoint=True))
    parts.append(np.arange(start, min(n, start + _SAMPLE_PREFIX), dtype=np.int64))
    return np.unique(np.concatenate(parts))


# -- int64 arrays, torch or numpy ----------------------------------------------------------------
def empty(shape: Tuple[int, ...], like: IntArray) -> IntArray:
    """An uninitialised int64 array of ``like``'s kind (and device)."""
    if isinstance(like, torch.Tensor):
        return torch.empty(shape, dtype=torch.int64, device=like.device)
    return np.empty(shape, dtype=np.int64)


def div_into(x: IntArray, m: int, out: IntArray) -> None:
    """``out = x // m`` for non-negative ``x``."""
    # Non-negative, so truncating division equals floor division and is cheaper in torch on CPU.
    if isinstance(x, torch.Tensor):
        torch.div(x, m, rounding_mode="trunc", out=out)
    else:
        np.floor_divide(x, m, out=out)


def rem_into(x: IntArray, m: int, out: IntArray) -> None:
    """``out = x mod m``."""
    if isinstance(x, torch.Tensor):
        torch.remainder(x, m, out=out)
    else:
        np.remainder(x, m, out=out)


def copy_into(x: IntArray, out: IntArray) -> None:
    """``out[...] = x``."""
    if isinstance(x, torch.Tensor):
        out.copy_(x)
    else:
        np.copyto(out, x)


def sub_mul_into(a: IntArray, b: IntArray, m: int, out: IntArray) -> None:
    """``out = a - m * b`` (``out`` may alias ``a``)."""
    if isinstance(a, torch.Tensor):
        torch.sub(a, b, alpha=m, out=out)
    else:
        np.subtract(a, b * m, out=out)


def where(cond: IntArray, a: IntArray, b: IntArray) -> IntArray:
    """``a`` where ``cond`` else ``b``."""
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def zeros_like(x: IntArray) -> IntArray:
    """Zeros of ``x``'s kind, shape and dtype."""
    return torch.zeros_like(x) if isinstance(x, torch.Tensor) else np.zeros_like(x)


def ones_bool(x: IntArray) -> IntArray:
    """An all-True boolean array of ``x``'s kind and shape."""
    if isinstance(x, torch.Tensor):
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)
    return np.ones(x.shape, dtype=bool)


def to_numpy(x: AnyIntArray) -> np.ndarray:
    """``x`` as a numpy array (copied from the device if needed)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def like(array: np.ndarray, ref: IntArray) -> IntArray:
    """``array`` as ``ref``'s kind (a tensor on ``ref``'s device, or unchanged)."""
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(array)).to(ref.device)
    return array


def _addmod(x: IntArray, y: IntArray, m: int) -> IntArray:
    """(x + y) mod m for x, y in [0, m), without int64 overflow."""
    t = x - (m - y)
    return where(t < 0, t + m, t)


def mulmod(a: IntArray, c: int, m: int) -> IntArray:
    """``(a * c) mod m`` for ``a`` in ``[0, m)`` and a Python int ``c`` in ``[0, m)``, no overflow."""
    if m <= _MULMOD_DIRECT_LIMIT:
        return (a * c) % m
    result = zeros_like(a)
    addend = a
    while c:
        if c & 1:
            result = _addmod(result, addend, m)
        c >>= 1
        if c:
            addend = _addmod(addend, addend, m)
    return result


def bounded_horner(digits: List[IntArray], radices: Sequence[int], n: int) -> Tuple[IntArray, IntArray]:
    """``x = d0 + r0*(d1 + r1*(d2 + ...))``; returns ``(x, ok)``, ok False where x would exceed n-1.

    ``digits[i]`` are non-negative arrays; nothing overflows because every step is checked
    against ``(n - 1 - d) // r`` before it is taken.
    """
    h = digits[-1]
    ok = h <= n - 1
    h = where(ok, h, zeros_like(h))
    for d, r in zip(reversed(digits[:-1]), reversed(radices[:-1])):
        step_ok = h <= (n - 1 - d) // r
        ok = ok & step_ok
        h = where(step_ok, d + r * where(step_ok, h, zeros_like(h)), zeros_like(h))
    return h, ok


def _signed64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1 = _signed64(0xBF58476D1CE4E5B9)
_MIX_2 = _signed64(0x94D049BB133111EB)


def _shr_logical(z: IntArray, s: int) -> IntArray:
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: IntArray, seed: int) -> IntArray:
    """The splitmix64 finaliser of ``x`` (Steele et al., 2014) for ``seed``, in ``[0, 2**63)``.

    Wrapping int64 arithmetic, so torch and numpy give identical values.
    """
    offset = _signed64((seed * _GOLDEN + _GOLDEN) % (1 << 64))
    with np.errstate(over="ignore"):  # int64 wrap-around is the mix
        z = x + offset
        z = (z ^ _shr_logical(z, 30)) * _MIX_1
        z = (z ^ _shr_logical(z, 27)) * _MIX_2
        z = z ^ _shr_logical(z, 31)
    return z & INT64_MAX  # non-negative before any modulus


def dense(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """Labels relabelled densely ``0 .. c-1`` (in sorted order) and the count ``c``."""
    uniq, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(-1).astype(np.int64, copy=False), len(uniq)


def pair_dense(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, int]:
    """Dense labels of the pairs ``(a[i], b[i])`` and their count (the meet of two labellings)."""
    da, _ = dense(a)
    db, nb = dense(b)
    return dense(da * nb + db)
