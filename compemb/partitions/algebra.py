"""Reasoning about partitions from their public interface: digit forms, proofs, the decision procedure.

A partition has *digit form* ``(P, m)`` when its classes are those of ``x -> (x // P) % m``
(:meth:`~compemb.partitions.Partition.digit_form`). Complementarity of a family, refinement and
equality of partitions are decided

1. structurally where a proof exists: an identity member; mixed-radix digits forming a complete
   chain (``prod radices >= n``, which covers quotient-remainder); residues with
   ``lcm(moduli) >= n``; and, against complementarity, pigeonhole (``prod table_sizes < n``) or a
   common period ``L < n`` of all members;
2. otherwise exhaustively over all of ``S`` when ``n <= EXHAUSTIVE_LIMIT``;
3. otherwise by searching a sample of indices for a witness that disproves the claim;
4. and if none of these settles it, by raising :class:`UndecidableError`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Literal, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from compemb.partitions._numeric import EXHAUSTIVE_LIMIT, ceil_div, dense, lcm, pair_dense, sample_indices, undecidable

if TYPE_CHECKING:
    from compemb.partitions.kinds import Partition

#: ``(P, m)``: class id ``(x // P) % m``
DigitForm = Tuple[int, int]


class Proof(NamedTuple):
    """A structural proof that a family is complementary, which is also its decoder plan.

    ``kind`` is ``"single"`` (``n == 1``, no rows), ``"identity"`` (``rows[0][0]`` is an identity
    member), ``"chain"`` (``rows`` are ``(row, radix)`` of a complete mixed-radix expansion, least
    significant first) or ``"crt"`` (``rows`` are ``(row, modulus)`` with ``lcm >= n``).
    """

    kind: Literal["single", "identity", "chain", "crt"]
    rows: Tuple[Tuple[int, int], ...] = ()


def normalise_form(n: int, P: int, m: int) -> DigitForm:
    """The normal digit form of ``(x // P) % m`` on ``[0, n)``.

    ``m`` becomes ``min(m, ceil(n / P))``; the one-class partition is ``(1, 1)``. Distinct
    normal forms are distinct set partitions (the identity is ``(1, n)``).
    """
    m = min(m, ceil_div(n, P))
    return (1, 1) if m == 1 else (P, m)


def meet_digit_forms(n: int, a: DigitForm, b: DigitForm) -> Optional[DigitForm]:
    """The digit form of the meet of two digit forms, where the meet has one; else None."""
    if a == (1, 1):
        return b
    if b == (1, 1):
        return a
    (P1, m1), (P2, m2) = sorted([a, b])
    if P1 == P2:  # (x//P) mod m1 and mod m2 together give (x//P) mod lcm(m1, m2)
        return normalise_form(n, P1, lcm([m1, m2]))
    if P2 == P1 * m1:  # adjacent digits merge
        return normalise_form(n, P1, m1 * m2)
    if P2 % P1 == 0 and (m1 % ((P2 // P1) * m2) == 0 or P1 * m1 >= n):
        return (P1, m1)  # b is coarser than a, or a is the whole quotient x // P1, which fixes b
    return None


def structural_proof(n: int, parts: Sequence[Partition]) -> Optional[Proof]:
    """A proof from structure that ``parts`` (over ``n``) are complementary, or None."""
    if n == 1:
        return Proof("single")
    forms = [p.digit_form() if p.ids_follow_form else None for p in parts]
    for i, f in enumerate(forms):
        if f == (1, n):
            return Proof("identity", ((i, n),))
    digit_rows = [(i, f) for i, f in enumerate(forms) if f is not None and f != (1, 1)]

    # A complete mixed-radix chain has places 1, m0, m0*m1, ... up to >= n. Places strictly
    # increase along a chain (every radix here is >= 2), so a place that failed once fails always.
    failed: Set[int] = set()

    def extend(place: int, chain: List[Tuple[int, int]]) -> Optional[List[Tuple[int, int]]]:
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
        return Proof("chain", tuple(chain))
    residues = tuple((i, f[1]) for i, f in digit_rows if f[0] == 1)
    if residues and lcm([m for _, m in residues]) >= n:
        return Proof("crt", residues)
    return None


def structural_disproof(n: int, parts: Sequence[Partition]) -> bool:
    """True when non-complementarity follows from structure (pigeonhole or a common period)."""
    if math.prod(p.num_classes for p in parts) < n:
        return True
    # (x // P) % m repeats with period P * m: x and x + lcm(periods) always share every class
    periods = [form[0] * form[1] for form in (p.digit_form() for p in parts) if form is not None]
    return len(periods) == len(parts) and lcm(periods) < n


def _labellings(parts: Sequence[Partition]) -> Tuple[List[np.ndarray], bool]:
    """Class ids of every part on all of ``S`` (True) or, for large ``n``, on a sample (False)."""
    n = parts[0].n
    if n <= EXHAUSTIVE_LIMIT:
        return [p.labels() for p in parts], True
    xs = sample_indices(n)
    labellings = []
    for p in parts:
        out = np.empty(xs.shape, dtype=np.int64)
        p.encode_into(xs, out)
        labellings.append(out)
    return labellings, False


def _meet_count(labellings: Sequence[np.ndarray]) -> int:
    """Number of distinct tuples of labels (the classes of the meet that are hit)."""
    labels, count = dense(labellings[0])
    for other in labellings[1:]:
        labels, count = pair_dense(labels, other)
    return count


def decide_complementary(parts: Sequence[Partition]) -> bool:
    """Whether ``x -> (p(x) for p in parts)`` is injective on ``S`` (see the module docstring)."""
    n = parts[0].n
    if structural_proof(n, parts) is not None:
        return True
    if structural_disproof(n, parts):
        return False
    labellings, exhaustive = _labellings(parts)
    count, points = _meet_count(labellings), len(labellings[0])
    if exhaustive or count < points:
        return count == points
    raise undecidable("whether the family is complementary", n)


def decide_refines(p: Partition, q: Partition) -> bool:
    """Whether every class of ``p`` lies inside a class of ``q`` (both over one ``n``)."""
    a, b = p.digit_form(), q.digit_form()
    n = p.n
    if b == (1, 1) or a == (1, n) or (a is not None and a == b):
        return True
    if a is not None and b is not None:
        (P1, m1), (P2, m2) = a, b
        # (x // P1) % m1 fixes x // P2 mod m2 when r*m2 divides m1 (r = P2 / P1), or outright
        # when digit 1 is the whole quotient.
        if P2 % P1 == 0 and (m1 % ((P2 // P1) * m2) == 0 or P1 * m1 >= n):
            return True
    (la, lb), exhaustive = _labellings([p, q])
    ca, cab = _meet_count([la]), _meet_count([la, lb])
    if exhaustive or cab > ca:
        return cab == ca
    raise undecidable(f"whether {p!r} refines {q!r}", n)


def decide_equals(p: Partition, q: Partition) -> bool:
    """Set-partition equality of ``p`` and ``q`` (both over one ``n``)."""
    a, b = p.digit_form(), q.digit_form()
    if a is not None and b is not None:
        return a == b
    (la, lb), exhaustive = _labellings([p, q])
    same = _meet_count([la]) == _meet_count([lb]) == _meet_count([la, lb])
    if exhaustive or not same:
        return same
    raise undecidable(f"whether {p!r} equals {q!r}", p.n)
