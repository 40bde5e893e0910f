"""The kinds of partition of ``S = {0, ..., n-1}``, and their meet.

=========================  =====================================  ==========================
class                      class id of x                          ``num_classes``
=========================  =====================================  ==========================
``IdentityPartition(n)``   ``x``                                  ``n``
``RemainderPartition``     ``x mod m`` (requires ``m <= n``)      ``m`` (DLRM's table size)
``QuotientPartition``      ``x div m``                            ``ceil(n / m)``
``DigitPartition``         ``(x div (m0*...*m_{j-1})) mod m_j``   ``min(m_j, ceil(n / P_j))``
``ResiduePartition``       ``x mod m`` (any ``m >= 1``)           ``min(m, n)``
``HashPartition``          seeded 64-bit mix of ``x``, mod ``b``  ``b`` (``num_buckets``)
``MeetPartition``          the tuple of its parts' ids            classes of the meet
=========================  =====================================  ==========================
"""
from __future__ import annotations

import abc
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from compemb.partitions._numeric import (
    AnyIntArray, EXHAUSTIVE_LIMIT, INT64_MAX, Indices, IntArray, as_int, ceil_div, check_int_list, check_n, check_positive,
    copy_into, dense, div_into, empty, like, pair_dense, prepare_indices, rem_into, splitmix64, undecidable,
)
from compemb.partitions.algebra import (
    DigitForm, decide_equals, decide_refines, meet_digit_forms, normalise_form, structural_proof,
)


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
    #: Whether the class *ids* are literally ``(x // P) % m`` for :meth:`digit_form` (not just
    #: the same classes); only then may a decoder or a kernel read the ids as digits.
    ids_follow_form: bool = True

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Number of class ids (the table size); every id lies in ``[0, num_classes)``."""

    @abc.abstractmethod
    def encode_into(self, x: IntArray, out: IntArray) -> None:
        """Write the class ids of int64 indices ``x`` into ``out`` (same kind and shape).

        No validation: ``x`` must already lie in ``[0, n)`` (the fast path behind ``__call__``).
        """

    def digit_form(self) -> Optional[DigitForm]:
        """``(P, m)`` when the partition is ``(x // P) % m`` as a set partition, else None.

        Normalised: ``m = min(m, ceil(n / P))``; the one-class partition is ``(1, 1)`` and the
        identity ``(1, n)``. Distinct normalised forms are distinct set partitions.
        """
        return None

    def spec(self) -> Dict[str, Any]:
        """What defines the partition's class ids, as plain values (str, int, list, dict).

        Two partitions with equal specs give every index the same class id (the converse need
        not hold: ``==`` compares set partitions, the spec the exact formula). Modules store it
        in their ``state_dict`` to refuse a state saved for another mapping. The base class
        gives the class's qualified name and ``repr``; subclasses override it with their
        parameters.

        Example::

            >>> RemainderPartition(10, 4).spec()
            {'kind': 'RemainderPartition', 'n': 10, 'm': 4}
        """
        cls = type(self)
        return {"kind": f"{cls.__module__}.{cls.__qualname__}", "repr": repr(self)}

    def __call__(self, idx: Indices) -> Union[AnyIntArray, int]:
        x, scalar = prepare_indices(idx, self.n)
        out = empty(tuple(x.shape), like=x)
        self.encode_into(x, out)
        return int(out[0]) if scalar else out

    def labels(self) -> np.ndarray:
        """Class ids of all of ``S`` as a numpy array (only for ``n <= EXHAUSTIVE_LIMIT``)."""
        if self.n > EXHAUSTIVE_LIMIT:
            raise undecidable("the full labelling", self.n)
        out = np.empty(self.n, dtype=np.int64)
        self.encode_into(np.arange(self.n, dtype=np.int64), out)
        return out

    def num_nonempty_classes(self) -> int:
        """Number of classes that contain at least one index (exact)."""
        form = self.digit_form()
        if form is not None:
            return form[1]
        if self.n <= EXHAUSTIVE_LIMIT:
            return dense(self.labels())[1]
        raise undecidable("the number of non-empty classes", self.n)

    def __and__(self, other: Partition) -> Partition:
        return meet(self, other)

    def refines(self, other: Partition) -> bool:
        """True when every class of ``self`` lies inside a class of ``other``."""
        _check_same_n(self, other)
        return self is other or decide_refines(self, other)

    def equals(self, other: object) -> bool:
        """Set-partition equality; raises :class:`UndecidableError` when it cannot be decided."""
        if not isinstance(other, Partition) or self.n != other.n:
            return False
        if self is other or _structural_key(self) == _structural_key(other):
            return True
        return decide_equals(self, other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return self.equals(other)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        # Equal set partitions must hash alike; n is the only cheap invariant they share.
        return hash(("Partition", self.n))


def _check_same_n(p: Partition, q: Partition) -> None:
    if not isinstance(q, Partition):
        raise TypeError(f"expected a Partition, got {type(q).__name__} {q!r}")
    if p.n != q.n:
        raise ValueError(f"partitions are over different sets: n = {p.n} and n = {q.n}")


def _structural_key(p: Partition) -> Tuple[object, ...]:
    """Equal keys mean equal set partitions (the converse need not hold)."""
    form = p.digit_form()
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
        self.n = check_n(n)

    @property
    def num_classes(self) -> int:
        return self.n

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        copy_into(x, out)

    def digit_form(self) -> Optional[DigitForm]:
        return (1, self.n)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "IdentityPartition", "n": self.n}

    def __repr__(self) -> str:
        return f"IdentityPartition(n={self.n})"


class _Modulus(Partition):
    """``x mod m``: the shared body of the remainder and residue partitions."""

    def __init__(self, n: int, m: int):
        self.n = check_n(n)
        self.m = check_positive(m, "m")

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        if self.m >= self.n:  # x itself (and m = 2**63 would not fit an int64 scalar)
            copy_into(x, out)
        else:
            rem_into(x, self.m, out)

    def digit_form(self) -> Optional[DigitForm]:
        return normalise_form(self.n, 1, self.m)

    def spec(self) -> Dict[str, Any]:
        return {"kind": type(self).__name__, "n": self.n, "m": self.m}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, m={self.m})"


class RemainderPartition(_Modulus):
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
        super().__init__(n, m)
        if self.m > self.n:
            raise ValueError(
                f"remainder modulus m = {self.m} exceeds n = {self.n}: classes {self.n}..{self.m - 1} "
                f"would be empty (choose m <= n)"
            )

    @property
    def num_classes(self) -> int:
        return self.m


class ResiduePartition(_Modulus):
    """``x mod m`` for any modulus ``m >= 1`` (the partitions of Chinese-remainder families).

    ``num_classes = min(m, n)``: for ``m >= n`` the residue is the index itself. As a set
    partition it equals the remainder partition with the same ``m``.

    Args:
        n: number of categories.
        m: the modulus.

    Example::

        >>> ResiduePartition(100, 7)(torch.tensor([0, 7, 99]))
        tensor([0, 0, 1])
    """

    @property
    def num_classes(self) -> int:
        return min(self.m, self.n)


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
        self.n = check_n(n)
        self.m = check_positive(m, "m")

    @property
    def num_classes(self) -> int:
        return ceil_div(self.n, self.m)

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        if self.m >= self.n:
            out[...] = 0
        elif self.m == 1:
            copy_into(x, out)
        else:
            div_into(x, self.m, out)

    def digit_form(self) -> Optional[DigitForm]:
        return normalise_form(self.n, self.m, self.num_classes)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "QuotientPartition", "n": self.n, "m": self.m}

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
        self.n = check_n(n)
        self.radices = check_int_list(radices, "radices")
        self.j = as_int(j, "j")
        if not 0 <= self.j < len(self.radices):
            raise IndexError(f"digit j = {self.j} out of range for {len(self.radices)} radices")
        self.place = math.prod(self.radices[: self.j])
        # Effective radix: (x // P) % m == (x // P) % min(m, ceil(n/P)) on S, and it fits int64.
        self._m_eff = min(self.radices[self.j], ceil_div(self.n, self.place))

    @property
    def num_classes(self) -> int:
        return self._m_eff

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        P, m = self.place, self._m_eff
        if m == 1:
            out[...] = 0
        elif P == 1:
            copy_into(x, out) if m == self.n else rem_into(x, m, out)
        else:
            div_into(x, P, out)
            if m < ceil_div(self.n, P):
                rem_into(out, m, out)

    def digit_form(self) -> Optional[DigitForm]:
        return normalise_form(self.n, self.place, self._m_eff)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "DigitPartition", "n": self.n, "radices": list(self.radices), "j": self.j}

    def __repr__(self) -> str:
        return f"DigitPartition(n={self.n}, radices={self.radices}, j={self.j})"


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

    ids_follow_form = False

    def __init__(self, n: int, num_buckets: int, seed: int = 0):
        self.n = check_n(n)
        self.num_buckets = check_positive(num_buckets, "num_buckets")
        if self.num_buckets > INT64_MAX:
            raise ValueError(f"num_buckets = {self.num_buckets} exceeds the int64 range")
        self.seed = as_int(seed, "seed")

    @property
    def num_classes(self) -> int:
        return self.num_buckets

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        rem_into(splitmix64(x, self.seed), self.num_buckets, out)

    def digit_form(self) -> Optional[DigitForm]:
        return (1, 1) if self.num_buckets == 1 or self.n == 1 else None

    def spec(self) -> Dict[str, Any]:
        return {"kind": "HashPartition", "n": self.n, "num_buckets": self.num_buckets, "seed": self.seed}

    def __repr__(self) -> str:
        return f"HashPartition(n={self.n}, num_buckets={self.num_buckets}, seed={self.seed})"


def _flatten(parts: Sequence[Partition]) -> List[Partition]:
    flat: List[Partition] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, MeetPartition) else [p])
    return flat


class MeetPartition(Partition):
    """The meet (coarsest common refinement) of partitions without a simpler closed form.

    For ``n <= EXHAUSTIVE_LIMIT`` class ids are the distinct tuples of component ids, densely
    relabelled in lexicographic order (so ``num_classes`` is exact). Beyond that the meet is
    kept lazily: the id is the mixed-radix combination of the component ids and
    ``num_classes`` is the product of the component sizes (an upper bound on the classes used).

    Built by ``P & Q`` and ``PartitionFamily.meet()``, rarely directly.
    """

    def __init__(self, parts: Sequence[Partition]):
        flat = _flatten(parts)
        if len(flat) < 2:
            raise ValueError(f"a MeetPartition needs at least two parts, got {len(flat)}")
        self.n = flat[0].n
        for p in flat[1:]:
            _check_same_n(flat[0], p)
        self.parts = tuple(flat)
        self._table: Optional[np.ndarray] = None
        self._count = 0

    def _dense_table(self) -> np.ndarray:
        if self._table is None:
            labels = self.parts[0].labels()
            for p in self.parts[1:]:
                labels, _ = pair_dense(labels, p.labels())
            self._table, self._count = labels, dense(labels)[1]
        return self._table

    @property
    def num_classes(self) -> int:
        if self.n <= EXHAUSTIVE_LIMIT:
            self._dense_table()
            return self._count
        return math.prod(p.num_classes for p in self.parts)

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        if self.n <= EXHAUSTIVE_LIMIT:
            table = like(self._dense_table(), x)
            if isinstance(x, torch.Tensor):
                torch.index_select(table, 0, x.reshape(-1), out=out.view(-1))
            else:
                np.take(table, x, out=out)
            return
        total = self.num_classes
        if total > INT64_MAX:
            raise ValueError(
                f"the meet of {len(self.parts)} partitions over n = {self.n} has up to {total} "
                f"classes, beyond the int64 range; evaluate the components separately"
            )
        tmp = empty(tuple(x.shape), like=x)
        self.parts[-1].encode_into(x, out)
        for p in reversed(self.parts[:-1]):
            p.encode_into(x, tmp)
            out *= p.num_classes
            out += tmp

    def refines(self, other: Partition) -> bool:
        _check_same_n(self, other)
        form = other.digit_form()
        if any(p is other or (form is not None and p.digit_form() == form) for p in self.parts):
            return True
        return super().refines(other)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "MeetPartition", "parts": [p.spec() for p in self.parts]}

    def __repr__(self) -> str:
        return "MeetPartition(" + " & ".join(repr(p) for p in self.parts) + ")"


def _from_digit_form(n: int, P: int, m: int) -> Partition:
    P, m = normalise_form(n, P, m)
    if P == 1:
        return IdentityPartition(n) if m == n else ResiduePartition(n, m)
    if m == ceil_div(n, P):
        return QuotientPartition(n, P)
    return DigitPartition(n, (P, m), 1)


def meet(*parts: Partition) -> Partition:
    """The meet (coarsest common refinement) of partitions over one ``n``.

    Closed forms are used where they exist (identity, one-class partition, equal partitions,
    residues ``mod a`` and ``mod b`` -> ``mod lcm(a, b)``, adjacent mixed-radix digits, any
    structurally complementary set -> identity); otherwise a :class:`MeetPartition`.

    Example::

        >>> meet(ResiduePartition(100, 4), ResiduePartition(100, 6))
        ResiduePartition(n=100, m=12)
    """
    if not parts:
        raise ValueError("meet() needs at least one partition")
    for p in parts:
        _check_same_n(parts[0], p)
    n = parts[0].n
    forms: List[Tuple[int, int]] = []
    others: List[Partition] = []
    for p in _flatten(parts):
        form = p.digit_form()
        if form is None:
            if not any(q is p or _structural_key(q) == _structural_key(p) for q in others):
                others.append(p)
            continue
        merged = True
        while merged:  # fold the new form into every earlier one that it merges with
            merged = False
            for i, f in enumerate(forms):
                combined = meet_digit_forms(n, f, form)
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
    if structural_proof(n, members) is not None:
        return IdentityPartition(n)
    return MeetPartition(members)
