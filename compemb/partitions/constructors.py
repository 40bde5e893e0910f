"""The families of the paper (naive, quotient-remainder, generalized QR, Chinese remainder)."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

from compemb.options import FAMILY_METHODS
from compemb.partitions._numeric import ceil_div, check_int_list, check_n, check_positive, lcm
from compemb.partitions.family import PartitionFamily
from compemb.partitions.kinds import (
    DigitPartition,
    IdentityPartition,
    QuotientPartition,
    RemainderPartition,
    ResiduePartition,
)


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
    n = check_n(n)
    m = check_positive(num_collisions, "num_collisions")
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

    n = check_n(n)
    k = check_positive(k, "k")
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
    from sympy import integer_nthroot

    n = check_n(n)
    k = check_positive(k, "k")
    root, exact = integer_nthroot(n, k)
    chosen: List[int] = []
    candidate = max(int(root) if exact else int(root) + 1, 2) if n > 1 else 1
    while len(chosen) < k - 1:
        if all(math.gcd(candidate, c) == 1 for c in chosen):
            chosen.append(candidate)
        candidate += 1
    last = max(ceil_div(n, math.prod(chosen)), 1)
    while not all(math.gcd(last, c) == 1 for c in chosen):
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
    n = check_n(n)
    radices = _given_or_chosen(n, radices, k, "radices", choose_radices)
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
    n = check_n(n)
    moduli = _given_or_chosen(n, moduli, k, "moduli", choose_moduli)
    if check and lcm(moduli) < n:
        raise ValueError(f"moduli {moduli} have lcm {lcm(moduli)} < n = {n}: not complementary")
    return PartitionFamily([ResiduePartition(n, m) for m in moduli])


def _given_or_chosen(n: int, given: Optional[Sequence[int]], k: Optional[int], name: str,
                     choose: Callable[[int, int], Tuple[int, ...]]) -> Tuple[int, ...]:
    """The ``given`` radices/moduli, checked, or ``choose(n, k)``: exactly one of the two."""
    if given is not None and k is None:
        return check_int_list(given, name)
    if given is None and k is not None:
        return choose(n, k)
    raise ValueError(f"give exactly one of {name} and k, got {name}={given!r}, k={k!r}")


def family_for_method(method: str, n: int, *, num_collisions: int = 4, k: int = 2) -> PartitionFamily:
    """The partition family of a table-spec ``method`` over ``n`` categories.

    ``"full"`` is :func:`naive`; ``"qr"`` is :func:`quotient_remainder` with ``num_collisions``,
    or :func:`naive` when ``num_collisions >= n`` (one quotient class: nothing to compress);
    ``"gqr"`` is :func:`generalized_qr` and ``"crt"`` :func:`chinese_remainder`, each with ``k``
    partitions.

    Raises:
        ValueError: a method outside ``compemb.options.FAMILY_METHODS`` (e.g. ``"hash"``), naming it.

    Example::

        >>> family_for_method("qr", 10, num_collisions=4).table_sizes
        (4, 3)
        >>> family_for_method("qr", 3, num_collisions=4).table_sizes
        (3,)
        >>> family_for_method("crt", 1000, k=3).table_sizes
        (10, 11, 13)
    """
    if method == "full" or (method == "qr" and num_collisions >= n):
        return naive(n)
    if method == "qr":
        return quotient_remainder(n, num_collisions)
    if method == "gqr":
        return generalized_qr(n, k=k)
    if method == "crt":
        return chinese_remainder(n, k=k)
    raise ValueError(f"method {method!r} has no partition family; the family methods are {FAMILY_METHODS}")
