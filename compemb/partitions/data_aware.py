"""Data-aware partitions: classes chosen from the data, complementarity kept by construction.

The paper's partitions are data-blind: ``x mod m`` puts a category's neighbours in its class
whatever they are. Its closing remark is that quality depends on how closely the partitions
reflect intrinsic properties of the category set. Two ways to let the data choose, each a
:class:`~compemb.partitions.PartitionFamily` with the usual contracts (``encode`` / ``decode``,
``is_complementary`` with a proof, ``spec``), ``digit_form() is None`` for every member:

**Frequency-aware** (:func:`frequency_aware`, :class:`FrequencyAwareFamily`). The paper's size
threshold applied per row instead of per table: the ``h`` most frequent categories (counted on
the training split) get classes of their own in a *hot* partition, everyone else shares its
last class; the rest are told apart by any complementary *base* family, whose members are
*masked* so that every hot category reads one extra row of its own (class ``|P_i|``) and leaves
the rows of the rare categories alone::

    hot(x)   = rank of x among the hot ids   if x is hot, else h
    cold_i(x) = P_i(x)                      if x is cold, else |P_i|

*Proof of complementarity.* Two hot ids differ in ``hot``; a hot and a cold id differ in ``hot``
(``< h`` against ``h``); two cold ids share ``hot``'s class ``h`` and keep their base classes,
which differ in some ``P_i`` because the base family is complementary. So the family is
complementary whenever its base is (or every id is hot); with a base that is not, it still is
when the hot ids cover every collision of the base, which is then decided on the family itself.

**Relabelled / clustered** (:class:`RelabelledFamily`, :func:`clustered`,
:class:`ClusteredFamily`). Any complementary family composed with an injective relabelling
``sigma: S -> [0, N)`` is complementary (the composition of injections is injective). A
clustered family is quotient–remainder over ``N = K m`` after ``sigma(x) = c(x) m + r(x)``,
where ``c(x)`` is ``x``'s cluster (at most ``m`` members each) and ``r(x)`` its rank inside the
cluster: the quotient class *is* the cluster, the remainder the within-cluster rank. Tables of
``K`` and ``m`` rows, as QR with ``m`` collisions; with ``sigma`` the identity it *is* QR. The
clusters come from the rows of a trained table (CCE, Tito Sobral and Ahle 2023; see
:mod:`compemb.data_aware` for the k-means and the re-clustering hook).

The lookup arrays (hot ids, the relabelling) are data, not parameters: :meth:`DataAwareFamily.arrays`
gives them as int64 tensors, :meth:`DataAwareFamily.with_arrays` rebuilds the family around new
ones (validated), and :meth:`DataAwareFamily.structure` is the spec without them (what a module
must agree on before it can load someone else's arrays). Memory: ``h`` int64 for a
frequency-aware family, ``n`` int64 for a relabelled one.

Example::

    >>> import torch
    >>> fam = frequency_aware(10, num_hot=2, counts=[0, 9, 0, 0, 7, 0, 0, 0, 0, 1])
    >>> fam.hot_ids.tolist(), fam.table_sizes
    ([1, 4], (3, 5, 4))
    >>> fam.encode(torch.tensor([1, 4, 9]))
    tensor([[0, 1, 2],
            [4, 4, 1],
            [3, 3, 2]])
    >>> fam.is_complementary(), fam.decode(fam.encode(torch.arange(10))).tolist() == list(range(10))
    (True, True)
    >>> cl = clustered(10, capacity=4, clusters=[2, 0, 0, 1, 2, 1, 0, 2, 1, 0])
    >>> cl.table_sizes, cl.encode(torch.tensor([1, 2, 6, 9]))
    ((3, 4), tensor([[0, 0, 0, 0],
            [0, 1, 2, 3]]))
"""
from __future__ import annotations

import abc
import hashlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from compemb.partitions._numeric import (
    AnyIntArray,
    IntArray,
    as_int,
    ceil_div,
    check_n,
    check_positive,
    empty,
    like,
    to_numpy,
)
from compemb.partitions.constructors import quotient_remainder
from compemb.partitions.family import PartitionFamily
from compemb.partitions.kinds import Partition, QuotientPartition, RemainderPartition

__all__ = [
    "DataAwareFamily",
    "HotPartition",
    "ColdPartition",
    "FrequencyAwareFamily",
    "RelabelledPartition",
    "RelabelledFamily",
    "ClusteredFamily",
    "count_indices",
    "most_frequent",
    "frequency_aware",
    "clustered",
]

#: what the constructors accept as an array of ids
IdArray = Union[torch.Tensor, np.ndarray, Sequence[int]]


# -- lookup arrays ------------------------------------------------------------------------------
def _as_int64(values: IdArray, name: str) -> torch.Tensor:
    """``values`` as a 1-D int64 tensor (a given tensor keeps its device); floats and bools refused."""
    if isinstance(values, torch.Tensor):
        t = values
    else:
        arr = np.asarray(values)
        if arr.dtype == object or (arr.size and arr.dtype.kind not in "iub"):
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
        if arr.dtype.kind == "b":
            raise TypeError(f"{name} must be integers, got booleans")
        t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64, copy=False)))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64).contiguous()


class _Lookup:
    """An immutable int64 lookup array, served on the device (or as numpy) of each input."""

    def __init__(self, array: torch.Tensor):
        self.array = array
        self._copies: Dict[str, Any] = {}
        self._digest: Optional[str] = None

    def on(self, x: IntArray) -> IntArray:
        if isinstance(x, torch.Tensor):
            if x.device == self.array.device:
                return self.array
            key = str(x.device)
            if key not in self._copies:
                self._copies[key] = self.array.to(x.device)
            return self._copies[key]
        if "numpy" not in self._copies:
            self._copies["numpy"] = self.array.detach().cpu().numpy()
        return self._copies["numpy"]

    def digest(self) -> str:
        """A short SHA-256 of the values (cached: the array is never changed in place)."""
        if self._digest is None:
            data = np.ascontiguousarray(self.array.detach().cpu().numpy().astype("<i8"))
            self._digest = hashlib.sha256(data.tobytes()).hexdigest()[:16]
        return self._digest


#: hot ids as given, or the shared lookup of a family
HotIds = Union[IdArray, _Lookup]


def _is_hot(x: IntArray, hot: IntArray, h: int) -> Tuple[IntArray, IntArray]:
    """``(position of x among the sorted hot ids, clamped to h - 1; whether x is hot)``."""
    if isinstance(x, torch.Tensor):
        pos = torch.searchsorted(hot, x.contiguous()).clamp_(max=h - 1)
        return pos, hot[pos] == x
    pos = np.minimum(np.searchsorted(hot, x), h - 1)
    return pos, hot[pos] == x


def _gather(table: IntArray, x: IntArray) -> IntArray:
    """``table[x]`` for an index array of any shape."""
    if isinstance(x, torch.Tensor):
        return table[x.reshape(-1)].reshape(x.shape)
    return table[x]


def _fill_where(out: IntArray, mask: IntArray, value: int) -> None:
    if isinstance(out, torch.Tensor):
        out.masked_fill_(mask, value)
    else:
        np.putmask(out, mask, value)


# -- the shared interface -----------------------------------------------------------------------
class DataAwareFamily(PartitionFamily):
    """A partition family whose classes come from data held in int64 lookup arrays.

    Subclasses give :meth:`arrays` (name -> 1-D int64 tensor; names are valid buffer names),
    :meth:`with_arrays` (the same structure around other arrays, validated unless
    ``check=False``) and :meth:`structure` (the spec without the arrays). A module registers the
    arrays as buffers, so they travel with ``state_dict`` and ``.to(device)``.
    """

    @abc.abstractmethod
    def arrays(self) -> Dict[str, torch.Tensor]:
        """The lookup arrays that, with :meth:`structure`, define every class id."""

    @abc.abstractmethod
    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "DataAwareFamily":
        """This family's structure around other lookup arrays (same names and lengths).

        Raises:
            KeyError: a missing array. ValueError / TypeError: arrays that do not define a
            family of this structure (wrong length, out of range, repeated ids ...), naming it.
        """

    @abc.abstractmethod
    def structure(self) -> Dict[str, Any]:
        """What defines the family apart from its arrays, as plain values."""


def _structure_of(family: PartitionFamily) -> Any:
    return family.structure() if isinstance(family, DataAwareFamily) else family.spec()


def _prefixed(prefix: str, arrays: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {f"{prefix}_{name}": a for name, a in arrays.items()}


def _unprefixed(prefix: str, arrays: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    start = prefix + "_"
    return {name[len(start):]: a for name, a in arrays.items() if name.startswith(start)}


def _codes_array(family: PartitionFamily, codes: Union[AnyIntArray, Sequence[int]]) -> Tuple[Any, bool]:
    """``codes`` as an int64 ``(k, *)`` array with every row in range; and whether it was one code tuple."""
    scalar = False
    c: Any
    if isinstance(codes, torch.Tensor):
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        c = codes.to(torch.int64)
    elif isinstance(codes, np.ndarray):
        if codes.dtype.kind not in "iu":
            raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
        c = codes.astype(np.int64)
    elif isinstance(codes, (list, tuple)):
        c = np.array([as_int(v, f"codes[{i}]") for i, v in enumerate(codes)], dtype=np.int64).reshape(-1, 1)
        scalar = True
    else:
        raise TypeError(f"codes must be a tensor, array or sequence of ints, got {type(codes).__name__}")
    if c.ndim == 0 or c.shape[0] != family.k:
        raise ValueError(f"codes must have leading dimension k = {family.k}, got shape {tuple(c.shape)}")
    if c[0].size if isinstance(c, np.ndarray) else c[0].numel():
        for i, size in enumerate(family.table_sizes):
            lo, hi = int(c[i].min()), int(c[i].max())
            if lo < 0 or hi >= size:
                bad = lo if lo < 0 else hi
                raise IndexError(f"code {bad} in row {i} is out of range [0, {size}) (table size {size})")
    return c, scalar


def _check_round_trip(family: PartitionFamily, x: Any, c: Any, scalar: bool) -> Union[AnyIntArray, int]:
    """``x`` if it encodes back to ``c`` everywhere, else ``ValueError`` naming the first bad code."""
    again = empty(tuple(c.shape), like=c)
    family.encode_into(x, again)
    bad = (again != c).any(0) if isinstance(c, torch.Tensor) else (again != c).any(axis=0)
    if bool(bad.any()):
        pos = int(to_numpy(bad).reshape(-1).argmax())
        column = to_numpy(c).reshape(family.k, -1)[:, pos]
        raise ValueError(
            f"codes {tuple(int(v) for v in column)} (position {pos}) are not the image of any index "
            f"in [0, {family.n}) under {family!r}"
        )
    return int(x[0]) if scalar else x


# -- frequency-aware ----------------------------------------------------------------------------
class HotPartition(Partition):
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
        self._hot = hot_ids if isinstance(hot_ids, _Lookup) else _Lookup(_check_hot_ids(self.n, hot_ids))

    @property
    def hot_ids(self) -> torch.Tensor:
        """The hot ids, sorted (class ``i`` is ``hot_ids[i]``)."""
        return self._hot.array

    @property
    def num_hot(self) -> int:
        return int(self._hot.array.shape[0])

    @property
    def num_classes(self) -> int:
        h = self.num_hot
        return h if h == self.n else h + 1

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        h = self.num_hot
        pos, hot = _is_hot(x, self._hot.on(x), h)
        out[...] = pos
        _fill_where(out, ~hot, h)

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
        self._hot = hot_ids if isinstance(hot_ids, _Lookup) else _Lookup(_check_hot_ids(self.n, hot_ids))

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


def _check_hot_ids(n: int, hot_ids: Any) -> torch.Tensor:
    """Distinct ids in ``[0, n)``, at least one, as a sorted int64 tensor."""
    if isinstance(hot_ids, _Lookup):
        return hot_ids.array
    t = _as_int64(hot_ids, "hot_ids")
    h = int(t.shape[0])
    if h == 0:
        raise ValueError("hot_ids is empty: give at least one hot id (num_hot >= 1)")
    if h > n:
        raise ValueError(f"hot_ids has {h} ids but n = {n}")
    t = torch.sort(t).values
    lo, hi = int(t[0]), int(t[-1])
    if lo < 0 or hi >= n:
        raise ValueError(f"hot id {lo if lo < 0 else hi} is out of range [0, {n})")
    if h > 1:
        steps = t.diff()
        if bool((steps == 0).any()):
            dup = int(t[1:][steps == 0][0])
            raise ValueError(f"hot id {dup} is repeated: hot_ids must be distinct")
    return t


class FrequencyAwareFamily(DataAwareFamily):
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
        hot = _Lookup(_check_hot_ids(base.n, hot_ids))
        self.base = base
        self._hot = hot
        parts: List[Partition] = [HotPartition(base.n, hot)]
        super().__init__(parts + [ColdPartition(p, hot) for p in base])

    @property
    def hot_ids(self) -> torch.Tensor:
        return self._hot.array

    @property
    def num_hot(self) -> int:
        return int(self._hot.array.shape[0])

    def is_complementary(self) -> bool:
        """True when the base family is complementary or every id is hot (the proof is in the module
        docstring); otherwise decided on the family itself (the hot ids may separate the base's
        collisions), exhaustively up to ``EXHAUSTIVE_LIMIT``."""
        if self.num_hot == self.n or self.base.is_complementary():
            return True
        return super().is_complementary()

    def encode_into(self, idx: IntArray, out: IntArray) -> None:
        h = self.num_hot
        pos, hot = _is_hot(idx, self._hot.on(idx), h)
        out[0][...] = pos
        _fill_where(out[0], ~hot, h)
        self.base.encode_into(idx, out[1:])
        for i, size in enumerate(self.base.table_sizes):
            _fill_where(out[i + 1], hot, size)

    def decode(self, codes: Union[AnyIntArray, Sequence[int]]) -> Union[AnyIntArray, int]:
        """The index with the given codes: ``hot_ids[code_0]`` for a hot code, else the base's decode."""
        if self.num_hot < self.n and not self.base.is_complementary():
            return super().decode(codes)  # (complementary only thanks to the hot ids: a table decoder)
        c, scalar = _codes_array(self, codes)
        h = self.num_hot
        torch_codes = isinstance(c, torch.Tensor)
        hot_code = c[0] < h
        x_hot = _gather(self._hot.on(c), c[0].clamp(max=h - 1) if torch_codes else c[0].clip(max=h - 1))
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
        return _check_round_trip(self, x, c, scalar)

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
        return {"kind": "FrequencyAwareFamily", "n": self.n, "num_hot": self.num_hot, "base": _structure_of(self.base)}

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
    if flat.numel():
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo < 0 or hi >= n:
            raise IndexError(f"index {lo if lo < 0 else hi} is out of range [0, {n})")
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


# -- relabelled and clustered -------------------------------------------------------------------
class RelabelledPartition(Partition):
    """``inner(sigma(x))`` for an injective relabelling ``sigma: [0, n) -> [0, inner.n)``.

    Built by :class:`RelabelledFamily` (which validates ``sigma`` once for all its members).
    """

    ids_follow_form = False

    def __init__(self, relabel: "_Lookup", inner: Partition):
        self.n = int(relabel.array.shape[0])
        self.inner = inner
        self._relabel = relabel

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        self.inner.encode_into(_gather(self._relabel.on(x), x), out)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "RelabelledPartition", "n": self.n, "inner": self.inner.spec(),
                "relabel_sha256": self._relabel.digest()}

    def __repr__(self) -> str:
        return f"RelabelledPartition(n={self.n}, {self.inner!r})"


def _check_relabel(relabel: IdArray, size: int) -> torch.Tensor:
    """An injective map ``[0, n) -> [0, size)`` as an int64 tensor."""
    t = _as_int64(relabel, "relabel")
    n = int(t.shape[0])
    if n == 0:
        raise ValueError("relabel is empty: a relabelling covers n >= 1 categories")
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < 0 or hi >= size:
        raise ValueError(f"relabel maps an id to {lo if lo < 0 else hi}, outside [0, {size})")
    if n > 1:
        s = torch.sort(t).values
        same = s.diff() == 0
        if bool(same.any()):
            value = int(s[1:][same][0])
            ids = torch.nonzero(t == value).reshape(-1)[:2].tolist()
            raise ValueError(f"relabel is not injective: ids {ids[0]} and {ids[1]} both map to {value}")
    return t


class RelabelledFamily(DataAwareFamily):
    """``base`` after an injective relabelling ``sigma``: codes of ``x`` are ``base``'s codes of ``sigma(x)``.

    Complementary exactly when ``base`` is complementary on the image of ``sigma``: in
    particular whenever ``base`` is (``sigma`` is injective, checked on construction); otherwise
    decided on the family itself.

    Args:
        relabel: ``sigma`` as ``n`` distinct ids in ``[0, base.n)``.
        base: a partition family over ``N = base.n >= n``.

    Example::

        >>> from compemb.partitions import quotient_remainder
        >>> fam = RelabelledFamily([5, 0, 3], quotient_remainder(6, 2))
        >>> fam.encode(torch.tensor([0, 1, 2])).tolist()
        [[1, 0, 1], [2, 0, 1]]
    """

    def __init__(self, relabel: IdArray, base: PartitionFamily, check: bool = True):
        if not isinstance(base, PartitionFamily):
            raise TypeError(f"base must be a PartitionFamily, got {type(base).__name__} {base!r}")
        array = _check_relabel(relabel, base.n) if check else _as_int64(relabel, "relabel")
        self.base = base
        self._relabel = _Lookup(array)
        self._inverse: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        super().__init__([RelabelledPartition(self._relabel, p) for p in base])

    @property
    def relabel(self) -> torch.Tensor:
        """``sigma`` as an int64 ``(n,)`` tensor."""
        return self._relabel.array

    def is_complementary(self) -> bool:
        """True when the base family is complementary (``sigma`` is injective)."""
        if self.base.is_complementary():
            return True
        return super().is_complementary()

    def encode_into(self, idx: IntArray, out: IntArray) -> None:
        self.base.encode_into(_gather(self._relabel.on(idx), idx), out)

    def decode(self, codes: Union[AnyIntArray, Sequence[int]]) -> Union[AnyIntArray, int]:
        """The index with the given codes: ``sigma^-1`` of the base's decode."""
        if not self.base.is_complementary():
            return super().decode(codes)  # (complementary on the image of sigma only: a table decoder)
        c, scalar = _codes_array(self, codes)
        y = self.base.decode(c)
        if self._inverse is None:
            values, order = torch.sort(self.relabel)
            self._inverse = (values, order)
        values, order = (like(to_numpy(a), c) for a in self._inverse)
        pos: Any
        if isinstance(y, torch.Tensor):
            pos = torch.searchsorted(values, y.contiguous()).clamp_(max=self.n - 1)
        else:
            pos = np.minimum(np.searchsorted(values, y), self.n - 1)
        x = _gather(order, pos)
        return _check_round_trip(self, x, c, scalar)

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {"relabel": self.relabel}

    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "RelabelledFamily":
        relabel = arrays["relabel"]
        if int(relabel.shape[0]) != self.n:
            raise ValueError(f"relabel has {int(relabel.shape[0])} entries, this family has n = {self.n}")
        return RelabelledFamily(relabel, self.base, check=check)

    def structure(self) -> Dict[str, Any]:
        return {"kind": "RelabelledFamily", "n": self.n, "base": _structure_of(self.base)}

    def __repr__(self) -> str:
        return f"RelabelledFamily(n={self.n}, base={self.base!r})"


class ClusteredFamily(RelabelledFamily):
    """``[cluster, rank]``: quotient–remainder over ``N = K m`` after ``sigma(x) = c(x) m + r(x)``.

    Table 0 has one row per cluster (``K``), table 1 one row per within-cluster rank
    (``m = capacity``): the sizes of QR with ``m`` collisions. The identity relabelling is QR.

    Args:
        n: number of categories.
        capacity: ``m``, the most members a cluster may have (the rank table's rows).
        num_clusters: ``K >= ceil(n / m)`` (default ``ceil(n / m)``).
        relabel: ``sigma`` (default the identity); see :func:`clustered` to build it from clusters.

    Example::

        >>> ClusteredFamily(10, 4).encode(torch.tensor([0, 5, 9])).tolist()
        [[0, 1, 2], [0, 1, 1]]
    """

    def __init__(self, n: int, capacity: int, num_clusters: Optional[int] = None,
                 relabel: Optional[IdArray] = None, check: bool = True):
        n = check_n(n)
        m = check_positive(capacity, "capacity")
        if m > n:
            raise ValueError(f"capacity = {m} exceeds n = {n}: a single cluster would hold everything")
        least = ceil_div(n, m)
        k = least if num_clusters is None else check_positive(num_clusters, "num_clusters")
        if k < least:
            raise ValueError(f"num_clusters = {k} clusters of capacity {m} cannot hold n = {n} ids (need >= {least})")
        self.capacity, self.num_clusters = m, k
        base = PartitionFamily([QuotientPartition(k * m, m), RemainderPartition(k * m, m)])
        super().__init__(torch.arange(n) if relabel is None else relabel, base, check=check)

    @property
    def clusters(self) -> torch.Tensor:
        """The cluster of every id, ``sigma // m``."""
        return torch.div(self.relabel, self.capacity, rounding_mode="floor")

    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "ClusteredFamily":
        relabel = arrays["relabel"]
        if int(relabel.shape[0]) != self.n:
            raise ValueError(f"relabel has {int(relabel.shape[0])} entries, this family has n = {self.n}")
        return ClusteredFamily(self.n, self.capacity, self.num_clusters, relabel, check=check)

    def structure(self) -> Dict[str, Any]:
        return {"kind": "ClusteredFamily", "n": self.n, "num_clusters": self.num_clusters, "capacity": self.capacity}

    def __repr__(self) -> str:
        return f"ClusteredFamily(n={self.n}, num_clusters={self.num_clusters}, capacity={self.capacity})"


def clustered(
    n: int,
    capacity: int,
    *,
    clusters: Optional[IdArray] = None,
    num_clusters: Optional[int] = None,
    order: Optional[Union[torch.Tensor, np.ndarray, Sequence[float]]] = None,
) -> ClusteredFamily:
    """A :class:`ClusteredFamily` from a cluster assignment (default: the identity, i.e. QR).

    ``sigma(x) = c(x) m + r(x)`` with ``r(x)`` the rank of ``x`` inside its cluster, by ``order``
    (ascending; ties and ``order=None`` by id).

    Args:
        n: number of categories.
        capacity: ``m``; no cluster may have more members.
        clusters: ``(n,)`` cluster ids in ``[0, num_clusters)``.
        num_clusters: ``K`` (default ``ceil(n / m)``).
        order: ``(n,)`` numbers ranking the members of each cluster.

    Raises:
        ValueError: a cluster id out of range, a cluster with more than ``capacity`` members
            (naming it and its size), arrays of the wrong length.

    Example::

        >>> clustered(6, 3, clusters=[1, 0, 1, 0, 1, 0]).relabel.tolist()
        [3, 0, 4, 1, 5, 2]
    """
    n = check_n(n)
    m = check_positive(capacity, "capacity")
    k = ceil_div(n, m) if num_clusters is None else check_positive(num_clusters, "num_clusters")
    if clusters is None:
        return ClusteredFamily(n, m, k)
    c = _as_int64(clusters, "clusters").cpu()
    if int(c.shape[0]) != n:
        raise ValueError(f"clusters has {int(c.shape[0])} entries, expected n = {n}")
    lo, hi = (int(v) for v in torch.aminmax(c))
    if lo < 0 or hi >= k:
        raise ValueError(f"cluster id {lo if lo < 0 else hi} is out of range [0, {k})")
    sizes = torch.bincount(c, minlength=k)
    if int(sizes.max()) > m:
        big = int(sizes.argmax())
        raise ValueError(f"cluster {big} has {int(sizes[big])} members, more than capacity = {m}")
    if order is None:
        key = torch.zeros(n, dtype=torch.float64)
    else:
        raw = order.detach().cpu().numpy() if isinstance(order, torch.Tensor) else order
        key = torch.as_tensor(np.asarray(raw, dtype=np.float64))
        if key.shape != (n,):
            raise ValueError(f"order has shape {tuple(key.shape)}, expected ({n},)")
    ids = torch.arange(n)
    # sort by (cluster, order, id): three stable sorts, least significant key first
    perm = ids
    for keys in (key, c):
        perm = perm[torch.sort(keys[perm], stable=True).indices]
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_c = c[perm]
    rank = torch.arange(n) - starts[sorted_c]
    relabel = torch.empty(n, dtype=torch.int64)
    relabel[perm] = sorted_c * m + rank
    return ClusteredFamily(n, m, k, relabel, check=False)
