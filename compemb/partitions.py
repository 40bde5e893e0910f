"""Partitions of the category set S = {0, ..., n-1} and families of them (exact integer algebra).

A *partition* maps every index ``x`` in ``[0, n)`` to a class id in ``[0, num_classes)``. A
*family* ``P1 ... Pk`` is *complementary* when ``x -> (P1(x), ..., Pk(x))`` is injective, i.e.
when its meet is the identity (discrete) partition (Shi et al., KDD 2020, arXiv 1909.02107,
Definition 1). Compositional embeddings keep one table per partition, so a family's
``table_sizes`` are the table row counts and ``encode`` produces the row ids.

Everything here is exact integer arithmetic on int64 torch tensors or numpy integer arrays --
never float division -- so ``n`` may be as large as ``2**63`` (indices up to ``2**63 - 1``).

Kinds of partition:

=========================  =====================================  ==========================
class                      class id of x                          ``num_classes``
=========================  =====================================  ==========================
``IdentityPartition(n)``   ``x``                                  ``n``
``RemainderPartition``     ``x mod m`` (requires ``m <= n``)      ``m`` (DLRM's table size)
``QuotientPartition``      ``x div m``                            ``ceil(n / m)``
``DigitPartition``         ``(x div (m0*...*m_{j-1})) mod m_j``   ``min(m_j, ceil(n / P_j))``
``ResiduePartition``       ``x mod m`` (any ``m >= 1``)           ``min(m, n)``
``HashPartition``          seeded 64-bit mix of ``x``, mod ``b``  ``b`` (``num_buckets``)
=========================  =====================================  ==========================

``RemainderPartition(n, m)`` with ``m > n`` raises: its classes ``n .. m-1`` would be empty, so
``quotient_remainder(n, m)`` with ``m > n`` raises as well (use ``m <= n``; for ``m >= n`` the
quotient has a single class and compression is impossible anyway). ``ResiduePartition`` is the
general "x mod m" used by Chinese-remainder families; as a set partition it equals the remainder
partition with the same ``m``.

Exactness. ``is_complementary``, equality of partitions (as set partitions), ``refines`` and
``decode`` of arbitrary families are decided

1. structurally where a proof exists: an identity member; mixed-radix digits forming a complete
   chain (``prod radices >= n``, which covers quotient-remainder); residues with
   ``lcm(moduli) >= n``; and, for non-complementarity, pigeonhole (``prod table_sizes < n``) or
   a common period ``L < n`` of all members (e.g. residues whose lcm is below ``n``);
2. otherwise exhaustively over all of ``S`` when ``n <= EXHAUSTIVE_LIMIT`` (``2**22``);
3. otherwise by searching a sample of indices for a witness that disproves the claim;
4. and if none of these settles it, by raising :class:`UndecidableError` (a ``ValueError``).

Example::

    >>> import torch
    >>> from compemb.partitions import quotient_remainder, chinese_remainder
    >>> family = quotient_remainder(10, 4)
    >>> family.table_sizes
    (4, 3)
    >>> family.encode(torch.tensor([0, 5, 9]))
    tensor([[0, 1, 1],
            [0, 1, 2]])
    >>> family.decode(family.encode(torch.tensor([0, 5, 9])))
    tensor([0, 5, 9])
    >>> chinese_remainder(1000, k=3).table_sizes
    (10, 11, 13)
"""
from __future__ import annotations

import abc
import math
import operator
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "EXHAUSTIVE_LIMIT",
    "MAX_N",
    "UndecidableError",
    "Partition",
    "IdentityPartition",
    "RemainderPartition",
    "QuotientPartition",
    "DigitPartition",
    "ResiduePartition",
    "HashPartition",
    "MeetPartition",
    "PartitionFamily",
    "meet",
    "naive",
    "quotient_remainder",
    "generalized_qr",
    "chinese_remainder",
    "choose_radices",
    "choose_moduli",
    "split_dim",
    "OPERATIONS",
]

#: Largest ``n`` for which set-partition questions are answered by visiting all of ``S``.
EXHAUSTIVE_LIMIT = 2**22
#: Largest supported ``n``: indices are int64, so the largest index is ``2**63 - 1``.
MAX_N = 2**63
#: Operations of operation-based composition (``num_parameters``).
OPERATIONS = ("mult", "add", "concat")

_INT64_MAX = 2**63 - 1
# Largest m for which (a * b) with a, b < m cannot overflow int64.
_MULMOD_DIRECT_LIMIT = math.isqrt(_INT64_MAX)
_SAMPLE_PREFIX = 4096
_SAMPLE_RANDOM = 1 << 15

Indices = Union[torch.Tensor, np.ndarray, int]


class UndecidableError(ValueError):
    """A set-partition question has no structural answer and ``n`` exceeds ``EXHAUSTIVE_LIMIT``."""


# --------------------------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------------------------
def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r} (bool)")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None


def _check_n(n) -> int:
    n = _as_int(n, "n")
    if n <= 0:
        raise ValueError(f"n (the number of categories) must be positive, got n = {n}")
    if n > MAX_N:
        raise ValueError(f"n = {n} exceeds the int64 index range (at most 2**63 = {MAX_N})")
    return n


def _check_positive(value, name: str) -> int:
    value = _as_int(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name} = {value}")
    return value


def _check_int_list(values, name: str) -> Tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of positive integers, got {values!r}")
    out = tuple(_check_positive(v, f"{name}[{i}]") for i, v in enumerate(values))
    if not out:
        raise ValueError(f"{name} must not be empty, got {values!r}")
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# array helpers (torch tensors and numpy arrays alike)
# --------------------------------------------------------------------------------------------
def _prepare_indices(idx, n: int):
    """Validate indices; return (int64 array/tensor, is_scalar)."""
    if isinstance(idx, torch.Tensor):
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"indices must be an integer tensor, got dtype {idx.dtype}")
        x = idx if idx.dtype == torch.int64 else idx.to(torch.int64)
        if x.numel():
            lo, hi = torch.aminmax(x)
            _check_range(int(lo), int(hi), n)
        return x, False
    if isinstance(idx, np.ndarray):
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}")
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            _check_range(lo, hi, n)
        return idx.astype(np.int64, copy=False), False
    if isinstance(idx, (int, np.integer)) and not isinstance(idx, (bool, np.bool_)):
        value = int(idx)
        _check_range(value, value, n)
        return np.array([value], dtype=np.int64), True
    raise TypeError(
        f"indices must be an int64 torch tensor, a numpy integer array or an int, got "
        f"{type(idx).__name__}" + (f" {idx!r}" if isinstance(idx, (float, bool)) else "")
    )


def _check_range(lo: int, hi: int, n: int) -> None:
    if lo < 0:
        raise IndexError(f"index {lo} is negative; indices must lie in [0, {n})")
    if hi >= n:
        raise IndexError(f"index {hi} is out of range for n = {n}; indices must lie in [0, {n})")


def _empty(shape, like):
    if isinstance(like, torch.Tensor):
        return torch.empty(shape, dtype=torch.int64, device=like.device)
    return np.empty(shape, dtype=np.int64)


def _div_into(x, m: int, out):
    # Indices are validated non-negative, so truncating division equals floor division and is
    # markedly cheaper in torch on CPU.
    if isinstance(x, torch.Tensor):
        torch.div(x, m, rounding_mode="trunc", out=out)
    else:
        np.floor_divide(x, m, out=out)


def _rem_into(x, m: int, out):
    if isinstance(x, torch.Tensor):
        torch.remainder(x, m, out=out)
    else:
        np.remainder(x, m, out=out)


def _copy_into(x, out):
    if isinstance(x, torch.Tensor):
        out.copy_(x)
    else:
        np.copyto(out, x)


def _sub_mul_into(a, b, m: int, out):
    """out = a - m * b (out may alias a)."""
    if isinstance(a, torch.Tensor):
        torch.sub(a, b, alpha=m, out=out)
    else:
        np.subtract(a, b * m, out=out)


def _where(cond, a, b):
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def _zeros_like(x):
    return torch.zeros_like(x) if isinstance(x, torch.Tensor) else np.zeros_like(x)


def _ones_bool(x):
    if isinstance(x, torch.Tensor):
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)
    return np.ones(x.shape, dtype=bool)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _like(array: np.ndarray, ref):
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(array)).to(ref.device)
    return array


def _addmod(x, y, m: int):
    """(x + y) mod m for x, y in [0, m), without int64 overflow."""
    t = x - (m - y)
    return _where(t < 0, t + m, t)


def _mulmod(a, c: int, m: int):
    """(a * c) mod m for a in [0, m) (array) and a Python int c in [0, m), without overflow."""
    if m <= _MULMOD_DIRECT_LIMIT:
        return (a * c) % m
    result = _zeros_like(a)
    addend = a
    while c:
        if c & 1:
            result = _addmod(result, addend, m)
        c >>= 1
        if c:
            addend = _addmod(addend, addend, m)
    return result


def _bounded_horner(digits, radices, n: int):
    """x = d0 + r0*(d1 + r1*(d2 + ...)); returns (x, ok) with ok False where x would exceed n-1.

    ``digits[i]`` are non-negative arrays; nothing overflows because every step is checked
    against ``(n - 1 - d) // r`` before it is taken.
    """
    h = digits[-1]
    ok = h <= n - 1
    h = _where(ok, h, _zeros_like(h))
    for d, r in zip(reversed(digits[:-1]), reversed(radices[:-1])):
        bound = (n - 1 - d) // r
        step_ok = h <= bound
        ok = ok & step_ok
        h = _where(step_ok, d + r * _where(step_ok, h, _zeros_like(h)), _zeros_like(h))
    return h, ok


def _dense(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    uniq, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(-1).astype(np.int64, copy=False), len(uniq)


def _pair_dense(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, int]:
    da, _ = _dense(a)
    db, nb = _dense(b)
    return _dense(da * nb + db)


def _sample_indices(n: int, seed: int = 0) -> np.ndarray:
    """Indices used to search for a witness when n is too large for an exhaustive check."""
    rng = np.random.default_rng(seed)
    parts = [np.arange(min(n, _SAMPLE_PREFIX), dtype=np.int64),
             rng.integers(0, n - 1, size=_SAMPLE_RANDOM, dtype=np.int64, endpoint=True)]
    # A dense window at a random place catches partitions that only differ locally.
    start = int(rng.integers(0, max(n - _SAMPLE_PREFIX, 0), endpoint=True))
    parts.append(np.arange(start, min(n, start + _SAMPLE_PREFIX), dtype=np.int64))
    return np.unique(np.concatenate(parts))


def _undecidable(what: str, n: int) -> UndecidableError:
    return UndecidableError(
        f"cannot decide {what} for n = {n}: no structural proof applies and n exceeds the "
        f"exhaustive-check limit EXHAUSTIVE_LIMIT = {EXHAUSTIVE_LIMIT}"
    )


# --------------------------------------------------------------------------------------------
# partitions
# --------------------------------------------------------------------------------------------
class Partition(abc.ABC):
    """A partition of ``S = {0, ..., n-1}``: maps each index to a class id in ``[0, num_classes)``.

    Calling a partition on an int64 torch tensor or a numpy integer array returns the class ids
    with the same kind, device and shape (int64); on an ``int`` it returns an ``int``.

    Two partitions compare equal when they induce the same classes (``==`` is set-partition
    equality, not equality of formulas); ``P & Q`` is the meet (coarsest common refinement) and
    ``P.refines(Q)`` tells whether every class of ``P`` lies inside a class of ``Q``.

    Shape:
        - Input: any shape ``(*)``, integer dtype, values in ``[0, n)``.
        - Output: ``(*)``, int64, values in ``[0, num_classes)``.
    """

    n: int
    # True when the class ids are literally (x // P) % m for the digit form (not just the same
    # classes); only then may decode read the ids as digits.
    _ids_follow_form = True

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of class ids (the table size); every id lies in ``[0, num_classes)``."""

    @abc.abstractmethod
    def _into(self, x, out) -> None:
        """Write class ids of validated int64 indices ``x`` into ``out`` (same kind/shape)."""

    def _digit_form(self) -> Optional[Tuple[int, int]]:
        """Normalised ``(P, m)`` with class id ``(x // P) % m`` if the partition has that form.

        Normalisation: ``m = min(m, ceil(n / P))``; the one-class partition is ``(1, 1)`` and the
        identity ``(1, n)``. Distinct normalised forms are distinct set partitions.
        """
        return None

    def _period(self) -> Optional[int]:
        """Some L with class(x) == class(x + L) for all x, x + L in S (None if unknown)."""
        form = self._digit_form()
        if form is None:
            return None
        P, m = form
        return P * m

    # -- evaluation ---------------------------------------------------------------------------
    def __call__(self, idx: Indices):
        x, scalar = _prepare_indices(idx, self.n)
        out = _empty(tuple(x.shape), like=x)
        self._into(x, out)
        return int(out[0]) if scalar else out

    def labels(self) -> np.ndarray:
        """Class ids of all of ``S`` as a numpy array (only for ``n <= EXHAUSTIVE_LIMIT``)."""
        if self.n > EXHAUSTIVE_LIMIT:
            raise _undecidable("the full labelling", self.n)
        x = np.arange(self.n, dtype=np.int64)
        out = np.empty(self.n, dtype=np.int64)
        self._into(x, out)
        return out

    def num_nonempty_classes(self) -> int:
        """Number of classes that contain at least one index (exact)."""
        form = self._digit_form()
        if form is not None:
            return form[1]
        if self.n <= EXHAUSTIVE_LIMIT:
            return _dense(self.labels())[1]
        raise _undecidable("the number of non-empty classes", self.n)

    # -- algebra ------------------------------------------------------------------------------
    def __and__(self, other: "Partition") -> "Partition":
        return meet(self, other)

    def refines(self, other: "Partition") -> bool:
        """True when every class of ``self`` lies inside a class of ``other``."""
        _check_same_n(self, other)
        if self is other:
            return True
        a, b = self._digit_form(), other._digit_form()
        n = self.n
        if b == (1, 1) or a == (1, n):
            return True
        if a is not None and a == b:
            return True
        if isinstance(self, MeetPartition) and any(
            p is other or (p._digit_form() is not None and p._digit_form() == b)
            for p in self.parts
        ):
            return True
        if a is not None and b is not None:
            (P1, m1), (P2, m2) = a, b
            if P2 % P1 == 0:
                r = P2 // P1
                # (x // P1) % m1 determines (x // P1) mod m1; it fixes x // P2 mod m2 when
                # r*m2 divides m1, or outright when digit 1 is the whole quotient.
                if m1 % (r * m2) == 0 or P1 * m1 >= n:
                    return True
        if n <= EXHAUSTIVE_LIMIT:
            la = self.labels()
            return _dense(la)[1] == _pair_dense(la, other.labels())[1]
        xs = _sample_indices(n)
        la, lb = _call_np(self, xs), _call_np(other, xs)
        if _pair_dense(la, lb)[1] > _dense(la)[1]:
            return False
        raise _undecidable(f"whether {self!r} refines {other!r}", n)

    def equals(self, other: "Partition") -> bool:
        """Set-partition equality; raises :class:`UndecidableError` when it cannot be decided."""
        if not isinstance(other, Partition):
            return False
        if self.n != other.n:
            return False
        if self is other:
            return True
        a, b = self._digit_form(), other._digit_form()
        if a is not None and b is not None:
            return a == b
        if _structural_key(self) == _structural_key(other):
            return True
        n = self.n
        if n <= EXHAUSTIVE_LIMIT:
            la, lb = self.labels(), other.labels()
            ca, cb = _dense(la)[1], _dense(lb)[1]
            return ca == cb and _pair_dense(la, lb)[1] == ca
        xs = _sample_indices(n)
        la, lb = _call_np(self, xs), _call_np(other, xs)
        ca, cb = _dense(la)[1], _dense(lb)[1]
        if ca != cb or _pair_dense(la, lb)[1] != ca:
            return False
        raise _undecidable(f"whether {self!r} equals {other!r}", n)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return self.equals(other)

    def __ne__(self, other) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        # Equal set partitions must hash alike; n is the only cheap invariant they share.
        return hash(("Partition", self.n))


def _call_np(p: Partition, xs: np.ndarray) -> np.ndarray:
    out = np.empty(xs.shape, dtype=np.int64)
    p._into(xs, out)
    return out


def _check_same_n(p: Partition, q: Partition) -> None:
    if not isinstance(q, Partition):
        raise TypeError(f"expected a Partition, got {type(q).__name__} {q!r}")
    if p.n != q.n:
        raise ValueError(f"partitions are over different sets: n = {p.n} and n = {q.n}")


def _structural_key(p: Partition):
    form = p._digit_form()
    if form is not None:
        return ("digit",) + form
    if isinstance(p, HashPartition):
        return ("hash", p.num_buckets, p.seed)
    if isinstance(p, MeetPartition):
        return ("meet", frozenset(_structural_key(q) for q in p.parts))
    return ("object", id(p))


class IdentityPartition(Partition):
    """The discrete partition: every index is its own class (the full table).

    Args:
        n: number of categories.

    Example::

        >>> IdentityPartition(5)(torch.tensor([4, 0]))
        tensor([4, 0])
    """

    def __init__(self, n: int):
        self.n = _check_n(n)

    @property
    def num_classes(self) -> int:
        return self.n

    def _into(self, x, out) -> None:
        _copy_into(x, out)

    def _digit_form(self):
        return (1, self.n)

    def __repr__(self) -> str:
        return f"IdentityPartition(n={self.n})"


class RemainderPartition(Partition):
    """``x mod m``: the remainder partition of quotient-remainder embeddings.

    ``num_classes`` is ``m``, the remainder table size DLRM uses. ``m > n`` raises, since the
    classes ``n .. m-1`` would be empty (use :class:`ResiduePartition` for a general modulus).

    Args:
        n: number of categories.
        m: the modulus (DLRM's ``num_collisions``), ``1 <= m <= n``.

    Example::

        >>> RemainderPartition(10, 4)(torch.tensor([0, 5, 9]))
        tensor([0, 1, 1])
    """

    def __init__(self, n: int, m: int):
        self.n = _check_n(n)
        self.m = _check_positive(m, "m")
        if self.m > self.n:
            raise ValueError(
                f"remainder modulus m = {self.m} exceeds n = {self.n}: classes {self.n}..{self.m - 1} "
                f"would be empty (choose m <= n)"
            )

    @property
    def num_classes(self) -> int:
        return self.m

    def _into(self, x, out) -> None:
        if self.m >= self.n:  # m == n: x itself (m = 2**63 would not fit an int64 scalar)
            _copy_into(x, out)
        else:
            _rem_into(x, self.m, out)

    def _digit_form(self):
        return _normalise(self.n, 1, self.m)

    def __repr__(self) -> str:
        return f"RemainderPartition(n={self.n}, m={self.m})"


class QuotientPartition(Partition):
    """``x div m``: the quotient partition of quotient-remainder embeddings.

    Args:
        n: number of categories.
        m: the divisor, ``m >= 1``; ``num_classes = ceil(n / m)``.

    Example::

        >>> QuotientPartition(10, 4)(torch.tensor([0, 5, 9]))
        tensor([0, 1, 2])
    """

    def __init__(self, n: int, m: int):
        self.n = _check_n(n)
        self.m = _check_positive(m, "m")

    @property
    def num_classes(self) -> int:
        return _ceil_div(self.n, self.m)

    def _into(self, x, out) -> None:
        if self.m >= self.n:
            out[...] = 0
        elif self.m == 1:
            _copy_into(x, out)
        else:
            _div_into(x, self.m, out)

    def _digit_form(self):
        return _normalise(self.n, self.m, self.num_classes)

    def __repr__(self) -> str:
        return f"QuotientPartition(n={self.n}, m={self.m})"


class DigitPartition(Partition):
    """Mixed-radix digit ``j`` of ``x`` for radices ``(m0, ..., m_{k-1})``, digit 0 least significant.

    The class id is ``(x div P_j) mod m_j`` with ``P_j = m0 * ... * m_{j-1}``. The products are
    Python integers, so radices whose product exceeds int64 are fine. ``num_classes`` is the
    exact number of values the digit takes on ``S``: ``min(m_j, ceil(n / P_j))`` (for the last
    digit of a complete expansion this is the quotient ``ceil(n / P_j)``).

    Args:
        n: number of categories.
        radices: positive integers ``(m0, ..., m_{k-1})``.
        j: which digit, ``0 <= j < len(radices)``.

    Example::

        >>> DigitPartition(100, (5, 5, 4), 1)(torch.tensor([0, 7, 99]))
        tensor([0, 1, 4])
    """

    def __init__(self, n: int, radices: Sequence[int], j: int):
        self.n = _check_n(n)
        self.radices = _check_int_list(radices, "radices")
        self.j = _as_int(j, "j")
        if not 0 <= self.j < len(self.radices):
            raise IndexError(f"digit j = {self.j} out of range for {len(self.radices)} radices")
        self.place = math.prod(self.radices[: self.j])
        # Effective radix: (x // P) % m == (x // P) % min(m, ceil(n/P)) on S, and it fits int64.
        self._m_eff = min(self.radices[self.j], _ceil_div(self.n, self.place))

    @property
    def num_classes(self) -> int:
        return self._m_eff

    def _into(self, x, out) -> None:
        P, m = self.place, self._m_eff
        if m == 1:
            out[...] = 0
            return
        if P == 1:
            _copy_into(x, out) if m == self.n else _rem_into(x, m, out)
            return
        _div_into(x, P, out)
        if m < _ceil_div(self.n, P):
            _rem_into(out, m, out)

    def _digit_form(self):
        return _normalise(self.n, self.place, self._m_eff)

    def __repr__(self) -> str:
        return f"DigitPartition(n={self.n}, radices={self.radices}, j={self.j})"


class ResiduePartition(Partition):
    """``x mod m`` for any modulus ``m >= 1`` (the partitions of Chinese-remainder families).

    ``num_classes = min(m, n)``: for ``m >= n`` the residue is the index itself.

    Args:
        n: number of categories.
        m: the modulus.

    Example::

        >>> ResiduePartition(100, 7)(torch.tensor([0, 7, 99]))
        tensor([0, 0, 1])
    """

    def __init__(self, n: int, m: int):
        self.n = _check_n(n)
        self.m = _check_positive(m, "m")

    @property
    def num_classes(self) -> int:
        return min(self.m, self.n)

    def _into(self, x, out) -> None:
        if self.m >= self.n:
            _copy_into(x, out)
        else:
            _rem_into(x, self.m, out)

    def _digit_form(self):
        return _normalise(self.n, 1, self.m)

    def __repr__(self) -> str:
        return f"ResiduePartition(n={self.n}, m={self.m})"


def _signed64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_MIX_ADD = _signed64(0x9E3779B97F4A7C15)
_MIX_1 = _signed64(0xBF58476D1CE4E5B9)
_MIX_2 = _signed64(0x94D049BB133111EB)


def _shr_logical(z, s: int):
    mask = (1 << (64 - s)) - 1
    return (z >> s) & mask


class HashPartition(Partition):
    """Seeded hash partition ``mix64(x, seed) mod num_buckets`` (the hashing-trick baseline).

    The mix is the splitmix64 finaliser (Steele et al., 2014) on wrapping int64 arithmetic, so
    torch and numpy give identical ids. A hash partition is complementary only when that is
    verified (exhaustively for small ``n``); with fewer buckets than ``n`` it never is.

    Args:
        n: number of categories.
        num_buckets: table size.
        seed: any integer; different seeds give (almost surely) different partitions.

    Example::

        >>> h = HashPartition(1000, 250, seed=0)
        >>> h(torch.tensor([1, 2, 3])).shape
        torch.Size([3])
    """

    def __init__(self, n: int, num_buckets: int, seed: int = 0):
        self.n = _check_n(n)
        self.num_buckets = _check_positive(num_buckets, "num_buckets")
        if self.num_buckets > _INT64_MAX:
            raise ValueError(f"num_buckets = {self.num_buckets} exceeds the int64 range")
        self.seed = _as_int(seed, "seed")
        self._offset = _signed64((self.seed * 0x9E3779B97F4A7C15 + _MIX_ADD) % (1 << 64))

    @property
    def num_classes(self) -> int:
        return self.num_buckets

    def _into(self, x, out) -> None:
        if isinstance(x, np.ndarray):
            with np.errstate(over="ignore"):
                z = self._mix(x)
        else:
            z = self._mix(x)
        _rem_into(z, self.num_buckets, out)

    def _mix(self, x):
        z = x + self._offset
        z = (z ^ _shr_logical(z, 30)) * _MIX_1
        z = (z ^ _shr_logical(z, 27)) * _MIX_2
        z = z ^ _shr_logical(z, 31)
        return z & _INT64_MAX  # non-negative before the modulus

    _ids_follow_form = False

    def _digit_form(self):
        return (1, 1) if self.num_buckets == 1 or self.n == 1 else None

    def __repr__(self) -> str:
        return f"HashPartition(n={self.n}, num_buckets={self.num_buckets}, seed={self.seed})"


class MeetPartition(Partition):
    """The meet (coarsest common refinement) of partitions without a simpler closed form.

    For ``n <= EXHAUSTIVE_LIMIT`` class ids are the distinct tuples of component ids, densely
    relabelled in lexicographic order (so ``num_classes`` is exact). Beyond that the meet is
    kept lazily: the id is the mixed-radix combination of the component ids and
    ``num_classes`` is the product of the component sizes (an upper bound on the classes used).

    Built by ``P & Q`` and ``PartitionFamily.meet()``, rarely directly.
    """

    def __init__(self, parts: Sequence[Partition]):
        flat: List[Partition] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, MeetPartition) else [p])
        if len(flat) < 2:
            raise ValueError(f"a MeetPartition needs at least two parts, got {len(flat)}")
        self.n = flat[0].n
        for p in flat[1:]:
            _check_same_n(flat[0], p)
        self.parts = tuple(flat)
        self._table: Optional[np.ndarray] = None
        self._count: Optional[int] = None

    def _dense_table(self) -> np.ndarray:
        if self._table is None:
            labels = self.parts[0].labels()
            for p in self.parts[1:]:
                labels, count = _pair_dense(labels, p.labels())
            self._table, self._count = labels, _dense(labels)[1]
        return self._table

    @property
    def num_classes(self) -> int:
        if self.n <= EXHAUSTIVE_LIMIT:
            self._dense_table()
            return self._count
        return math.prod(p.num_classes for p in self.parts)

    def _into(self, x, out) -> None:
        if self.n <= EXHAUSTIVE_LIMIT:
            table = _like(self._dense_table(), x)
            if isinstance(x, torch.Tensor):
                torch.index_select(table, 0, x.reshape(-1), out=out.view(-1))
            else:
                np.take(table, x, out=out)
            return
        total = self.num_classes
        if total > _INT64_MAX:
            raise ValueError(
                f"the meet of {len(self.parts)} partitions over n = {self.n} has up to {total} "
                f"classes, beyond the int64 range; evaluate the components separately"
            )
        tmp = _empty(tuple(x.shape), like=x)
        self.parts[-1]._into(x, out)
        for p in reversed(self.parts[:-1]):
            p._into(x, tmp)
            out *= p.num_classes
            out += tmp

    def __repr__(self) -> str:
        return "MeetPartition(" + " & ".join(repr(p) for p in self.parts) + ")"


def _normalise(n: int, P: int, m: int) -> Tuple[int, int]:
    m = min(m, _ceil_div(n, P))
    return (1, 1) if m == 1 else (P, m)


def _from_digit_form(n: int, P: int, m: int) -> Partition:
    P, m = _normalise(n, P, m)
    if P == 1:
        return IdentityPartition(n) if m == n else ResiduePartition(n, m)
    if m == _ceil_div(n, P):
        return QuotientPartition(n, P)
    return DigitPartition(n, (P, m), 1)


def _meet_digit_forms(n: int, a: Tuple[int, int], b: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """Closed form of the meet of two digit forms where one exists."""
    (P1, m1), (P2, m2) = sorted([a, b])
    if a == (1, 1):
        return b
    if b == (1, 1):
        return a
    if P1 == P2:  # (x//P) mod m1 and mod m2 together give (x//P) mod lcm(m1, m2)
        from sympy import ilcm

        return _normalise(n, P1, int(ilcm(m1, m2)))
    if P2 == P1 * m1:  # adjacent digits merge
        return _normalise(n, P1, m1 * m2)
    if P2 % P1 == 0 and m1 % ((P2 // P1) * m2) == 0:  # b is coarser than a
        return (P1, m1)
    if P2 % P1 == 0 and P1 * m1 >= n:  # a is the whole quotient x // P1, which fixes b
        return (P1, m1)
    return None


def meet(*parts: Partition) -> Partition:
    """The meet (coarsest common refinement) of partitions over one ``n``.

    Closed forms are used where they exist (identity, one-class partition, equal partitions,
    residues ``mod a`` and ``mod b`` -> ``mod lcm(a, b)``, adjacent mixed-radix digits, any
    structurally complementary set -> identity); otherwise a :class:`MeetPartition`.
    """
    if not parts:
        raise ValueError("meet() needs at least one partition")
    for p in parts:
        _check_same_n(parts[0], p)
    n = parts[0].n
    flat: List[Partition] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, MeetPartition) else [p])
    # fold digit forms together; keep the rest
    forms: List[Tuple[int, int]] = []
    others: List[Partition] = []
    for p in flat:
        form = p._digit_form()
        if form is None:
            if not any(q is p or _structural_key(q) == _structural_key(p) for q in others):
                others.append(p)
            continue
        merged = True
        while merged:
            merged = False
            for i, f in enumerate(forms):
                combined = _meet_digit_forms(n, f, form)
                if combined is not None:
                    form = combined
                    forms.pop(i)
                    merged = True
                    break
        forms.append(form)
    forms = [f for f in forms if f != (1, 1)] or ([(1, 1)] if not others else [])
    if (1, n) in forms:
        return IdentityPartition(n)
    members = [_from_digit_form(n, *f) for f in forms] + others
    if len(members) == 1:
        return members[0]
    if _structural_proof(n, members) is not None:
        return IdentityPartition(n)
    return MeetPartition(members)


# --------------------------------------------------------------------------------------------
# structural reasoning about families
# --------------------------------------------------------------------------------------------
def _structural_proof(n: int, parts: Sequence[Partition]):
    """A decoder plan proving complementarity from structure, or None.

    ("single",) for n = 1 | ("identity", row) | ("chain", [(row, radix), ...] least significant
    first) | ("crt", [(row, modulus), ...]).
    """
    if n == 1:
        return ("single",)
    forms = [p._digit_form() if p._ids_follow_form else None for p in parts]
    for i, f in enumerate(forms):
        if f == (1, n):
            return ("identity", i)
    # complete mixed-radix chain: places 1, m0, m0*m1, ... up to >= n
    digit_rows = [(i, f) for i, f in enumerate(forms) if f is not None and f != (1, 1)]

    # Places strictly increase along a chain (every radix here is >= 2), so no row can repeat
    # and a place that failed once fails always.
    failed = set()

    def extend(place: int, chain: list):
        if place >= n:
            return chain
        if place in failed:
            return None
        for i, (P, m) in digit_rows:
            if P == place:
                found = extend(P * m, chain + [(i, m)])
                if found is not None:
                    return found
        failed.add(place)
        return None

    chain = extend(1, [])
    if chain is not None:
        return ("chain", chain)
    residues = [(i, f[1]) for i, f in digit_rows if f[0] == 1]
    if residues:
        from sympy import ilcm

        if int(ilcm(*[m for _, m in residues])) >= n if len(residues) > 1 else residues[0][1] >= n:
            return ("crt", residues)
    return None


def _structural_disproof(n: int, parts: Sequence[Partition]) -> bool:
    """True when non-complementarity follows from structure (pigeonhole or a common period)."""
    if math.prod(p.num_classes for p in parts) < n:
        return True
    periods = [p._period() for p in parts]
    if all(L is not None for L in periods):
        from sympy import ilcm

        L = int(ilcm(*periods)) if len(periods) > 1 else periods[0]
        if L < n:  # x and x + L always share every class
            return True
    return False


# --------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------
class PartitionFamily(Sequence):
    """A sequence of partitions over one ``n``; one embedding table per partition.

    Args:
        partitions: one or more :class:`Partition` objects with the same ``n``.

    Attributes:
        n: number of categories.
        k: number of partitions.
        table_sizes: ``num_classes`` of each partition (the table row counts).

    Shape:
        - ``encode``: indices ``(*)`` -> codes ``(k, *)`` (a 1-D input of N indices gives
          ``(k, N)``); row ``i`` is ``family[i](idx)``.
        - ``decode``: codes ``(k, *)`` -> indices ``(*)``.

    Example::

        >>> family = PartitionFamily([RemainderPartition(12, 4), QuotientPartition(12, 4)])
        >>> family.is_complementary()
        True
        >>> family.num_parameters(16, "mult")
        112
    """

    def __init__(self, partitions: Iterable[Partition]):
        parts = tuple(partitions)
        if not parts:
            raise ValueError("a PartitionFamily needs at least one partition")
        for i, p in enumerate(parts):
            if not isinstance(p, Partition):
                raise TypeError(f"partitions[{i}] is not a Partition: {p!r}")
        n = parts[0].n
        for i, p in enumerate(parts):
            if p.n != n:
                raise ValueError(f"partitions[{i}] is over n = {p.n}, partitions[0] over n = {n}")
        self._parts = parts
        self.n = n
        self.k = len(parts)
        self.table_sizes: Tuple[int, ...] = tuple(p.num_classes for p in parts)
        self._proof = _structural_proof(n, parts)
        self._complementary: Optional[bool] = None
        self._table_decoder = None
        self._fast = self._fast_encoder()

    # -- sequence protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return self.k

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PartitionFamily(self._parts[i])
        return self._parts[i]

    def __iter__(self) -> Iterator[Partition]:
        return iter(self._parts)

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self._parts)
        return f"PartitionFamily([{inner}])"

    def __eq__(self, other) -> bool:
        if not isinstance(other, PartitionFamily):
            return NotImplemented
        return self.k == other.k and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    # -- complementarity ----------------------------------------------------------------------
    def is_complementary(self) -> bool:
        """True when ``x -> (P1(x), ..., Pk(x))`` is injective on ``S`` (exact).

        Decided from structure where possible (see the module docstring), exhaustively for
        ``n <= EXHAUSTIVE_LIMIT``, and otherwise raises :class:`UndecidableError` unless a
        sample of indices contains a collision (which disproves it).
        """
        if self._complementary is None:
            self._complementary = self._decide_complementary()
        return self._complementary

    def _decide_complementary(self) -> bool:
        n = self.n
        if self._proof is not None:
            return True
        if _structural_disproof(n, self._parts):
            return False
        if n <= EXHAUSTIVE_LIMIT:
            labels = self._parts[0].labels()
            count = _dense(labels)[1]
            for p in self._parts[1:]:
                labels, count = _pair_dense(labels, p.labels())
            return count == n
        xs = _sample_indices(n)
        labels = _call_np(self._parts[0], xs)
        for p in self._parts[1:]:
            labels, count = _pair_dense(labels, _call_np(p, xs))
        if _dense(labels)[1] < len(xs):
            return False
        raise _undecidable("whether the family is complementary", n)

    def meet(self) -> Partition:
        """The meet of the family; it is the identity exactly when the family is complementary."""
        return meet(*self._parts)

    # -- encode ------------------------------------------------------------------------------
    def _fast_encoder(self):
        proof = self._proof
        if proof is not None and proof[0] == "chain":
            rows = [row for row, _ in proof[1]]
            if rows == list(range(self.k)):
                return [m for _, m in proof[1]]
        return None

    def encode(self, idx: Indices):
        """Class ids of every partition: ``(k, *idx.shape)`` int64 (a tuple for an ``int``).

        Args:
            idx: int64 torch tensor or numpy integer array with values in ``[0, n)``.

        Raises:
            TypeError: float/bool tensors. IndexError: an index outside ``[0, n)``.
        """
        x, scalar = _prepare_indices(idx, self.n)
        out = _empty((self.k,) + tuple(x.shape), like=x)
        self._encode_into(x, out)
        if scalar:
            return tuple(int(v) for v in out[:, 0])
        return out

    def _encode_into(self, x, out) -> None:
        radices = self._fast
        if radices is not None:
            # complete mixed-radix chain in row order: repeated division, remainder by subtraction
            cur = x
            for i in range(self.k - 1):
                _div_into(cur, radices[i], out[i + 1])
                _sub_mul_into(cur, out[i + 1], radices[i], out[i])
                cur = out[i + 1]
            if self.k == 1:
                _copy_into(x, out[0])
            return
        for i, p in enumerate(self._parts):
            p._into(x, out[i])

    # -- decode ------------------------------------------------------------------------------
    def decode(self, codes):
        """The index with the given codes (the inverse of ``encode`` on its image).

        Args:
            codes: int64 ``(k, *)`` torch tensor or numpy array, or a sequence of ``k`` ints.

        Raises:
            TypeError: non-integer codes. ValueError: wrong leading dimension, a
            non-complementary family, or codes that are not the image of any index.
            IndexError: a code outside ``[0, table_sizes[i])``.
        """
        c, scalar = self._prepare_codes(codes)
        if not self.is_complementary():
            raise ValueError(f"decode needs a complementary family; {self!r} is not complementary")
        proof = self._proof
        exact = False
        if proof is None:
            x, ok = self._decode_table(c)
        elif proof[0] == "single":
            x, ok = _zeros_like(c[0]), None
        elif proof[0] == "identity":
            x, ok = c[proof[1]].clone() if isinstance(c, torch.Tensor) else c[proof[1]].copy(), None
        elif proof[0] == "chain":
            rows = proof[1]
            x, ok = _bounded_horner([c[r] for r, _ in rows], [m for _, m in rows], self.n)
            exact = len(rows) == self.k
        else:
            x, ok = self._decode_crt(c, proof[1])
        if ok is None:
            ok = _ones_bool(x)
        if not exact:
            check = _empty(tuple(c.shape), like=c)
            self._encode_into(_where(ok, x, _zeros_like(x)), check)
            ok = ok & (check == c).all(0)
        bad = ~ok
        if bool(bad.any()):
            pos = int(_to_numpy(bad).reshape(-1).argmax())
            flat = _to_numpy(c).reshape(self.k, -1)[:, pos]
            raise ValueError(
                f"codes {tuple(int(v) for v in flat)} (position {pos}) are not the image of any "
                f"index in [0, {self.n}) under {self!r}"
            )
        return int(x[0]) if scalar else x

    def _prepare_codes(self, codes):
        scalar = False
        if isinstance(codes, torch.Tensor):
            if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
                raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
            c = codes.to(torch.int64)
        elif isinstance(codes, np.ndarray):
            if codes.dtype.kind not in "iu":
                raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
            if codes.dtype.kind == "u" and codes.size and int(codes.max()) > _INT64_MAX:
                raise IndexError(f"code {int(codes.max())} is beyond the int64 range of every table size")
            c = codes.astype(np.int64)
        elif isinstance(codes, (list, tuple)):
            values = [_as_int(v, f"codes[{i}]") for i, v in enumerate(codes)]
            c = np.array(values, dtype=np.int64).reshape(len(values), 1)
            scalar = True
        else:
            raise TypeError(f"codes must be a tensor, array or sequence of ints, got {type(codes).__name__}")
        if c.ndim == 0 or c.shape[0] != self.k:
            raise ValueError(f"codes must have leading dimension k = {self.k}, got shape {tuple(c.shape)}")
        if c.shape[1:].numel() if isinstance(c, torch.Tensor) else c[0].size:
            for i, size in enumerate(self.table_sizes):
                row = c[i]
                lo, hi = (int(v) for v in (row.min(), row.max()))
                if lo < 0:
                    raise IndexError(f"code {lo} in row {i} is negative; row {i} codes lie in [0, {size})")
                if hi >= size:
                    raise IndexError(f"code {hi} in row {i} is out of range [0, {size}) (table size {size})")
        return c, scalar

    def _decode_crt(self, c, residues):
        from sympy import factorint, igcd, mod_inverse

        moduli = [m for _, m in residues]
        coprime = all(igcd(a, b) == 1 for i, a in enumerate(moduli) for b in moduli[i + 1:])
        if coprime:
            system = [(c[row], m) for row, m in residues]
        else:
            # reduce to prime powers: x mod p^e, from a modulus holding the largest power of p
            best = {}
            for row, m in residues:
                for p, e in factorint(m).items():
                    if p not in best or e > best[p][1]:
                        best[p] = (row, e)
            system = [(c[row] % (p**e), p**e) for p, (row, e) in sorted(best.items())]
        if len(system) == 1:
            r, m = system[0]
            return r, r <= self.n - 1
        digits = []
        mods = [m for _, m in system]
        for i, (r, m) in enumerate(system):
            t = r % m
            for j in range(i):
                t = (t - digits[j] % m) % m
                t = _mulmod(t, int(mod_inverse(mods[j] % m, m)), m)
            digits.append(t)
        return _bounded_horner(digits, mods, self.n)

    def _decode_table(self, c):
        if self.n > EXHAUSTIVE_LIMIT:
            raise _undecidable("a decoder for this family", self.n)
        if self._table_decoder is None:
            x = np.arange(self.n, dtype=np.int64)
            all_codes = np.empty((self.k, self.n), dtype=np.int64)
            self._encode_into(x, all_codes)
            steps = []
            label = None
            for i in range(self.k):
                uniq = np.unique(all_codes[i])
                d = np.searchsorted(uniq, all_codes[i])
                key = d if label is None else label * len(uniq) + d
                ukeys, label = np.unique(key, return_inverse=True)
                label = label.reshape(-1)
                steps.append((uniq, ukeys))
            inverse = np.empty(self.n, dtype=np.int64)
            inverse[label] = x
            self._table_decoder = (steps, inverse)
        steps, inverse = self._table_decoder
        cn = _to_numpy(c).reshape(self.k, -1)
        ok = np.ones(cn.shape[1], dtype=bool)
        label = None
        for i, (uniq, ukeys) in enumerate(steps):
            pos = np.searchsorted(uniq, cn[i])
            pos_c = np.minimum(pos, len(uniq) - 1)
            ok &= uniq[pos_c] == cn[i]
            key = pos_c if label is None else label * len(uniq) + pos_c
            kpos = np.minimum(np.searchsorted(ukeys, key), len(ukeys) - 1)
            ok &= ukeys[kpos] == key
            label = kpos
        x = np.where(ok, inverse[label], 0).reshape(c.shape[1:])
        ok = ok.reshape(c.shape[1:])
        return _like(x, c), _like(ok, c)

    # -- sizes -------------------------------------------------------------------------------
    def num_parameters(self, dim: int, operation: str = "mult") -> int:
        """Embedding parameters of one table per partition.

        ``mult`` / ``add``: every table is ``dim`` wide, so ``sum(table_sizes) * dim``.
        ``concat``: the output width stays ``dim``; table ``i`` is ``split_dim(dim, k)[i]`` wide.

        Example::

            >>> quotient_remainder(100, 4).num_parameters(16, "concat")
            232
        """
        dim = _check_positive(dim, "dim")
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        if operation == "concat":
            widths = split_dim(dim, self.k)
            return sum(s * w for s, w in zip(self.table_sizes, widths))
        return sum(self.table_sizes) * dim


def split_dim(dim: int, k: int) -> List[int]:
    """Widths of ``k`` concatenated tables whose total is ``dim`` (the wider ones first).

    Example::

        >>> split_dim(16, 3)
        [6, 5, 5]
    """
    dim = _check_positive(dim, "dim")
    k = _check_positive(k, "k")
    if dim < k:
        raise ValueError(f"cannot split dim = {dim} among k = {k} concatenated tables (need dim >= k)")
    return [dim // k + (1 if i < dim % k else 0) for i in range(k)]


# --------------------------------------------------------------------------------------------
# constructors
# --------------------------------------------------------------------------------------------
def naive(n: int) -> PartitionFamily:
    """The full table: one identity partition.

    Example::

        >>> naive(5).table_sizes
        (5,)
    """
    return PartitionFamily([IdentityPartition(n)])


def quotient_remainder(n: int, num_collisions: int) -> PartitionFamily:
    """``[x mod m, x div m]`` with ``m = num_collisions`` (DLRM's sizes: m and ceil(n/m) rows).

    Args:
        n: number of categories.
        num_collisions: ``m``, ``1 <= m <= n`` (``m > n`` raises: the remainder table would have
            empty rows and the quotient a single class).

    Example::

        >>> quotient_remainder(10, 4).table_sizes
        (4, 3)
    """
    n = _check_n(n)
    m = _check_positive(num_collisions, "num_collisions")
    if m > n:
        raise ValueError(f"num_collisions = {m} exceeds n = {n}; quotient-remainder needs 1 <= m <= n")
    return PartitionFamily([RemainderPartition(n, m), QuotientPartition(n, m)])


def choose_radices(n: int, k: int) -> Tuple[int, ...]:
    """``k`` radices within one of ``n ** (1/k)`` whose product is the smallest such ``>= n``.

    Example::

        >>> choose_radices(1000, 3)
        (10, 10, 10)
        >>> choose_radices(1001, 3)
        (11, 10, 10)
    """
    from sympy import integer_nthroot

    n = _check_n(n)
    k = _check_positive(k, "k")
    lo = int(integer_nthroot(n, k)[0])
    j = 0
    while lo ** (k - j) * (lo + 1) ** j < n:
        j += 1
    return tuple([lo + 1] * j + [lo] * (k - j))


def choose_moduli(n: int, k: int) -> Tuple[int, ...]:
    """``k`` pairwise-coprime moduli near ``n ** (1/k)`` with product ``>= n``.

    The first ``k - 1`` are the smallest integers ``>= ceil(n ** (1/k))`` coprime to the ones
    already chosen; the last is the smallest integer coprime to them that makes the product
    reach ``n`` (so it may be a little below the root).

    Example::

        >>> choose_moduli(1000, 3)
        (10, 11, 13)
    """
    from sympy import igcd, integer_nthroot

    n = _check_n(n)
    k = _check_positive(k, "k")
    root, exact = integer_nthroot(n, k)
    start = int(root) if exact else int(root) + 1
    chosen: List[int] = []
    candidate = max(start, 2) if n > 1 else 1
    while len(chosen) < k - 1:
        if all(igcd(candidate, c) == 1 for c in chosen):
            chosen.append(candidate)
        candidate += 1
    need = _ceil_div(n, math.prod(chosen))
    last = max(need, 1)
    while not all(igcd(last, c) == 1 for c in chosen):
        last += 1
    return tuple(chosen + [last])


def generalized_qr(n: int, radices: Optional[Sequence[int]] = None, k: Optional[int] = None,
                   check: bool = True) -> PartitionFamily:
    """Mixed-radix digits of ``x`` for ``radices`` (least significant first), or ``k`` chosen ones.

    Args:
        n: number of categories.
        radices: positive integers with ``prod(radices) >= n`` (exactly one of ``radices``, ``k``).
        k: number of partitions; radices from :func:`choose_radices`.
        check: raise ``ValueError`` when the family would not be complementary.

    Example::

        >>> generalized_qr(1000, k=3).table_sizes
        (10, 10, 10)
        >>> generalized_qr(100, radices=(4, 5, 7)).table_sizes
        (4, 5, 5)
    """
    n = _check_n(n)
    if (radices is None) == (k is None):
        raise ValueError(f"give exactly one of radices and k, got radices={radices!r}, k={k!r}")
    radices = choose_radices(n, k) if radices is None else _check_int_list(radices, "radices")
    if check and math.prod(radices) < n:
        raise ValueError(f"radices {radices} have product {math.prod(radices)} < n = {n}: not complementary")
    return PartitionFamily([DigitPartition(n, radices, j) for j in range(len(radices))])


def chinese_remainder(n: int, moduli: Optional[Sequence[int]] = None, k: Optional[int] = None,
                      check: bool = True) -> PartitionFamily:
    """Residues ``x mod m_i`` (complementary exactly when ``lcm(moduli) >= n``).

    Args:
        n: number of categories.
        moduli: positive integers (exactly one of ``moduli``, ``k``); pairwise-coprime moduli
            waste no table rows, but only ``lcm(moduli) >= n`` is required.
        k: number of partitions; moduli from :func:`choose_moduli`.
        check: raise ``ValueError`` when the family would not be complementary.

    Example::

        >>> chinese_remainder(1000, k=3).table_sizes
        (10, 11, 13)
        >>> chinese_remainder(1000, moduli=(8, 9, 10), check=False).is_complementary()
        False
    """
    n = _check_n(n)
    if (moduli is None) == (k is None):
        raise ValueError(f"give exactly one of moduli and k, got moduli={moduli!r}, k={k!r}")
    moduli = choose_moduli(n, k) if moduli is None else _check_int_list(moduli, "moduli")
    if check:
        from sympy import ilcm

        L = int(ilcm(*moduli)) if len(moduli) > 1 else moduli[0]
        if L < n:
            raise ValueError(f"moduli {moduli} have lcm {L} < n = {n}: not complementary")
    return PartitionFamily([ResiduePartition(n, m) for m in moduli])
