"""Frequency-aware partition families: the most frequent categories get rows of their own.

The paper's size threshold applied per row instead of per table (:func:`frequency_aware`,
:class:`FrequencyAwareFamily`): the ``h`` most frequent categories (counted on the training
split) get classes of their own in a *hot* partition, everyone else shares its last class; the
rest are told apart by any complementary *base* family, whose members are *masked* so that every
hot category reads one extra row of its own (class ``|P_i|``) and leaves the rows of the rare
categories alone::

    hot(x)   = rank of x among the hot ids   if x is hot, else h
    cold_i(x) = P_i(x)                      if x is cold, else |P_i|

*Proof of complementarity.* Two hot ids differ in ``hot``; a hot and a cold id differ in ``hot``
(``< h`` against ``h``); two cold ids share ``hot``'s class ``h`` and keep their base classes,
which differ in some ``P_i`` because the base family is complementary. So the family is
complementary whenever its base is (or every id is hot); with a base that is not, it still is
when the hot ids cover every collision of the base, which is then decided on the family itself.

The hot ids are the family's lookup array (``h`` int64): see :class:`DataAwareFamily`; the
examples are on the classes and functions, and in :mod:`compemb.partitions.data_aware`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from compemb.partitions._data_aware_base import (
    DataAwareFamily,
    IdArray,
    Lookup,
    as_int64,
    first_repeat,
    gather,
    structure_of,
    value_outside,
)
from compemb.partitions._numeric import AnyIntArray, IntArray, check_n, check_positive, like
from compemb.partitions.constructors import quotient_remainder
from compemb.partitions.family import PartitionFamily
from compemb.partitions.kinds import Partition

__all__ = [
    "HotPartition",
    "ColdPartition",
    "FrequencyAwareFamily",
    "count_indices",
    "most_frequent",
    "frequency_aware",
]

#: hot ids as given, or the shared lookup of a family
HotIds = Union[IdArray, Lookup]


def _hot_lookup(n: int, hot_ids: HotIds) -> Lookup:
    """The shared lookup of ``hot_ids``, checked unless it already is one."""
    return hot_ids if isinstance(hot_ids, Lookup) else Lookup(_check_hot_ids(n, hot_ids))


def _fill_where(out: IntArray, mask: IntArray, value: int) -> None:
    if isinstance(out, torch.Tensor):
        out.masked_fill_(mask, value)
    else:
        np.putmask(out, mask, value)


def _is_hot(x: IntArray, hot: IntArray, h: int) -> Tuple[IntArray, IntArray]:
    """``(position of x among the sorted hot ids, clamped to h - 1; whether x is hot)``."""
    if isinstance(x, torch.Tensor):
        pos = torch.searchsorted(hot, x.contiguous()).clamp_(max=h - 1)
        return pos, hot[pos] == x
    pos = np.minimum(np.searchsorted(hot, x), h - 1)
    return pos, hot[pos] == x


def _encode_hot(x: IntArray, hot: Lookup, out: IntArray) -> IntArray:
    """Write :class:`HotPartition`'s class of ``x`` into ``out``; return whether ``x`` is hot."""
    h = int(hot.array.shape[0])
    pos, is_hot = _is_hot(x, hot.on(x), h)
    out[...] = pos
    _fill_where(out, ~is_hot, h)
    return is_hot


def _prefixed(prefix: str, arrays: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {f"{prefix}_{name}": a for name, a in arrays.items()}


def _unprefixed(prefix: str, arrays: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    start = prefix + "_"
    return {name[len(start):]: a for name, a in arrays.items() if name.startswith(start)}


class _HotIds:
    """The ``hot_ids`` and ``num_hot`` of an object holding them as ``_hot``."""

    _hot: Lookup

    @property
    def hot_ids(self) -> torch.Tensor:
        """The hot ids, sorted (class ``i`` of the hot partition is ``hot_ids[i]``)."""
        return self._hot.array

    @property
    def num_hot(self) -> int:
        """``h``, how many ids are hot."""
        return int(self._hot.array.shape[0])


class HotPartition(_HotIds, Partition):
    """The hot ids in classes of their own, everyone else in one shared class.

    Class id: the position of ``x`` in the sorted ``hot_ids`` when ``x`` is hot, else ``h``
    (``h = len(hot_ids)``); ``num_classes = h + 1`` (``h`` when every id is hot).

    Args:
        n: number of categories.
        hot_ids: distinct ids in ``[0, n)``, at least one (any order; kept sorted).

    Example::

        >>> HotPartition(6, [4, 1])(torch.tensor([0, 1, 4, 5]))
        tensor([2, 0, 1, 2])
    """

    ids_follow_form = False

    def __init__(self, n: int, hot_ids: HotIds):
        self.n = check_n(n)
        self._hot = _hot_lookup(self.n, hot_ids)

    @property
    def num_classes(self) -> int:
        h = self.num_hot
        return h if h == self.n else h + 1

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        _encode_hot(x, self._hot, out)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "HotPartition", "n": self.n, "num_hot": self.num_hot, "hot_ids_sha256": self._hot.digest()}

    def __repr__(self) -> str:
        return f"HotPartition(n={self.n}, num_hot={self.num_hot})"


class ColdPartition(Partition):
    """``inner`` on the cold ids; every hot id in one extra class ``inner.num_classes``.

    Args:
        inner: any partition of ``S``.
        hot_ids: distinct ids in ``[0, n)`` (as :class:`HotPartition`).

    Example::

        >>> from compemb.partitions import RemainderPartition
        >>> ColdPartition(RemainderPartition(6, 3), [4])(torch.tensor([0, 1, 4, 5]))
        tensor([0, 1, 3, 2])
    """

    ids_follow_form = False

    def __init__(self, inner: Partition, hot_ids: HotIds):
        if not isinstance(inner, Partition):
            raise TypeError(f"inner must be a Partition, got {type(inner).__name__} {inner!r}")
        self.n = inner.n
        self.inner = inner
        self._hot = _hot_lookup(self.n, hot_ids)

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes + 1

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        self.inner.encode_into(x, out)
        _, hot = _is_hot(x, self._hot.on(x), int(self._hot.array.shape[0]))
        _fill_where(out, hot, self.inner.num_classes)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "ColdPartition", "inner": self.inner.spec(), "hot_ids_sha256": self._hot.digest()}

    def __repr__(self) -> str:
        return f"ColdPartition({self.inner!r}, num_hot={int(self._hot.array.shape[0])})"


def _check_hot_ids(n: int, hot_ids: IdArray) -> torch.Tensor:
    """Distinct ids in ``[0, n)``, at least one, as a sorted int64 tensor."""
    t = as_int64(hot_ids, "hot_ids")
    h = int(t.shape[0])
    if h == 0:
        raise ValueError("hot_ids is empty: give at least one hot id (num_hot >= 1)")
    if h > n:
        raise ValueError(f"hot_ids has {h} ids but n = {n}")
    t = torch.sort(t).values
    bad = value_outside(t, n)
    if bad is not None:
        raise ValueError(f"hot id {bad} is out of range [0, {n})")
    dup = first_repeat(t)
    if dup is not None:
        raise ValueError(f"hot id {dup} is repeated: hot_ids must be distinct")
    return t


class FrequencyAwareFamily(_HotIds, DataAwareFamily):
    """``[hot, cold_1, ..., cold_k]``: hot ids in classes of their own, the rest told apart by ``base``.

    Table ``0`` has ``h + 1`` rows (one per hot id, and one shared by every cold id); table
    ``i >= 1`` has the ``|P_i|`` rows of the base family plus one row shared by the hot ids.
    Complementary whenever ``base`` is (or when every id is hot): see the module docstring.

    Args:
        hot_ids: distinct ids in ``[0, n)``, at least one (e.g. from :func:`most_frequent`).
        base: a partition family over the same ``n``.

    Attributes:
        base: the base family. hot_ids: the sorted hot ids. num_hot: ``h``.

    Example::

        >>> from compemb.partitions import quotient_remainder
        >>> fam = FrequencyAwareFamily([0, 7], quotient_remainder(12, 4))
        >>> fam.table_sizes, fam.encode(torch.tensor([7, 8])).tolist()
        ((3, 5, 4), [[1, 2], [4, 0], [3, 2]])
    """

    def __init__(self, hot_ids: IdArray, base: PartitionFamily):
        if not isinstance(base, PartitionFamily):
            raise TypeError(f"base must be a PartitionFamily, got {type(base).__name__} {base!r}")
        hot = Lookup(_check_hot_ids(base.n, hot_ids))
        self.base = base
        self._hot = hot
        parts: List[Partition] = [HotPartition(base.n, hot)]
        super().__init__(parts + [ColdPartition(p, hot) for p in base])

    def is_complementary(self) -> bool:
        """True when the base family is complementary or every id is hot (the proof is in the module
        docstring); otherwise decided on the family itself (the hot ids may separate the base's
        collisions), exhaustively up to ``EXHAUSTIVE_LIMIT``."""
        if self.num_hot == self.n or self.base.is_complementary():
            return True
        return super().is_complementary()

    def encode_into(self, idx: IntArray, out: IntArray) -> None:
        hot = _encode_hot(idx, self._hot, out[0])
        self.base.encode_into(idx, out[1:])
        for i, size in enumerate(self.base.table_sizes):
            _fill_where(out[i + 1], hot, size)

    def decode(self, codes: Union[AnyIntArray, Sequence[int]]) -> Union[AnyIntArray, int]:
        """The index with the given codes: ``hot_ids[code_0]`` for a hot code, else the base's decode."""
        if self.num_hot < self.n and not self.base.is_complementary():
            return super().decode(codes)  # (complementary only thanks to the hot ids: a table decoder)
        c, scalar = self._prepare_codes(codes)
        h = self.num_hot
        torch_codes = isinstance(c, torch.Tensor)
        hot_code = c[0] < h
        x_hot = gather(self._hot.on(c), c[0].clamp(max=h - 1) if torch_codes else c[0].clip(max=h - 1))
        if h == self.n:
            x = x_hot
        else:
            # columns the base cannot read (hot ids' extra rows, or bad codes) get the base codes
            # of id 0; the round trip below rejects whatever was not a true image
            rest = c[1:].clone() if torch_codes else c[1:].copy()
            unread = hot_code
            for i, size in enumerate(self.base.table_sizes):
                unread = unread | (rest[i] >= size)
            zero: Any = self.base.encode(like(np.zeros(1, dtype=np.int64), c))
            for i in range(self.base.k):
                _fill_where(rest[i], unread, int(zero[i][0]))
            x_cold: Any = self.base.decode(rest)
            x = torch.where(hot_code, x_hot, x_cold) if torch_codes else np.where(hot_code, x_hot, x_cold)
        return self._checked_decode(c, scalar, x)

    def arrays(self) -> Dict[str, torch.Tensor]:
        out = {"hot_ids": self.hot_ids}
        if isinstance(self.base, DataAwareFamily):
            out.update(_prefixed("base", self.base.arrays()))
        return out

    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "FrequencyAwareFamily":
        hot = arrays["hot_ids"]
        if int(hot.shape[0]) != self.num_hot:
            raise ValueError(f"hot_ids has {int(hot.shape[0])} ids, this family has num_hot = {self.num_hot}")
        base = self.base
        if isinstance(base, DataAwareFamily):
            base = base.with_arrays(_unprefixed("base", arrays), check)
        return FrequencyAwareFamily(hot, base)  # (h ids: always checked, it is cheap)

    def structure(self) -> Dict[str, Any]:
        return {"kind": "FrequencyAwareFamily", "n": self.n, "num_hot": self.num_hot, "base": structure_of(self.base)}

    def __repr__(self) -> str:
        return f"FrequencyAwareFamily(num_hot={self.num_hot}, base={self.base!r})"


def count_indices(indices: IdArray, n: int) -> torch.Tensor:
    """How often each id of ``[0, n)`` occurs in ``indices`` (any shape): an int64 ``(n,)`` tensor.

    Raises:
        IndexError: an index outside ``[0, n)``, naming it.

    Example::

        >>> count_indices(torch.tensor([[3, 1], [3, 0]]), 5).tolist()
        [1, 1, 0, 2, 0]
    """
    n = check_n(n)
    t = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"indices must be integers, got dtype {t.dtype}")
    flat = t.reshape(-1).to(torch.int64)
    bad = value_outside(flat, n)
    if bad is not None:
        raise IndexError(f"index {bad} is out of range [0, {n})")
    return torch.bincount(flat, minlength=n)


def most_frequent(counts: Union[torch.Tensor, np.ndarray, Sequence[float]], num_hot: int) -> torch.Tensor:
    """The ``num_hot`` ids with the largest counts, sorted by id (ties go to the smaller id).

    Args:
        counts: ``(n,)`` non-negative numbers (occurrences, or any weights).
        num_hot: ``1 <= num_hot <= n``.

    Example::

        >>> most_frequent([5, 0, 9, 5, 1], 3).tolist()
        [0, 2, 3]
    """
    c = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
    if c.dtype.kind not in "iuf" or c.dtype == np.bool_:
        raise TypeError(f"counts must be numbers, got dtype {c.dtype}")
    if not np.all(np.isfinite(c)) or (c < 0).any():
        bad = c[~np.isfinite(c) | (c < 0)][0]
        raise ValueError(f"counts must be finite and non-negative, got {bad}")
    h = check_positive(num_hot, "num_hot")
    if h > c.size:
        raise ValueError(f"num_hot = {h} exceeds the number of categories n = {c.size}")
    order = np.argsort(-c.astype(np.float64), kind="stable")  # stable: equal counts keep id order
    return torch.from_numpy(np.sort(order[:h]).astype(np.int64))


def frequency_aware(
    n: int,
    num_hot: int,
    *,
    counts: Optional[Union[torch.Tensor, np.ndarray, Sequence[float]]] = None,
    indices: Optional[IdArray] = None,
    hot_ids: Optional[IdArray] = None,
    base: Optional[PartitionFamily] = None,
    num_collisions: int = 4,
) -> FrequencyAwareFamily:
    """A :class:`FrequencyAwareFamily` whose hot ids are the ``num_hot`` most frequent ones.

    Args:
        n: number of categories.
        num_hot: ``h``, how many ids get a row of their own (``1 <= h <= n``).
        counts: ``(n,)`` occurrence counts on the training split; or
        indices: a sample of training indices (counted with :func:`count_indices`); or
        hot_ids: the hot ids themselves (exactly one of the three).
        base: a complementary family over ``n`` for the cold ids (default
            ``quotient_remainder(n, num_collisions)``).
        num_collisions: ``m`` of the default base.

    Raises:
        ValueError: not exactly one of counts / indices / hot_ids, a count vector of another
            length, ``num_hot`` outside ``[1, n]``, or a base family that is not complementary.

    Example::

        >>> frequency_aware(100, 5, indices=torch.tensor([7, 7, 3]), num_collisions=10).table_sizes
        (6, 11, 11)
    """
    n = check_n(n)
    num_hot = check_positive(num_hot, "num_hot")
    if num_hot > n:
        raise ValueError(f"num_hot = {num_hot} exceeds n = {n}")
    given = [name for name, v in (("counts", counts), ("indices", indices), ("hot_ids", hot_ids)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of counts, indices and hot_ids, got {given or 'none'}")
    if hot_ids is None:
        if counts is None:
            assert indices is not None
            counts = count_indices(indices, n)
        length = len(counts)
        if length != n:
            raise ValueError(f"counts has {length} entries, expected n = {n}")
        hot_ids = most_frequent(counts, num_hot)
    elif len(hot_ids) != num_hot:
        raise ValueError(f"hot_ids has {len(hot_ids)} ids, num_hot = {num_hot}")
    if base is None:
        base = quotient_remainder(n, min(check_positive(num_collisions, "num_collisions"), n))
    if base.n != n:
        raise ValueError(f"base family is over n = {base.n}, expected n = {n}")
    family = FrequencyAwareFamily(hot_ids, base)
    if not family.is_complementary():
        raise ValueError(f"base family {base!r} is not complementary: cold ids would share embeddings")
    return family
