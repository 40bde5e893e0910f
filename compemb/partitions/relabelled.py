"""Relabelled and clustered partition families: any complementary family after an injective relabelling.

Any complementary family composed with an injective relabelling ``sigma: S -> [0, N)`` is
complementary (the composition of injections is injective): :class:`RelabelledFamily`. A
clustered family (:func:`clustered`, :class:`ClusteredFamily`) is quotient–remainder over
``N = K m`` after ``sigma(x) = c(x) m + r(x)``, where ``c(x)`` is ``x``'s cluster (at most ``m``
members each) and ``r(x)`` its rank inside the cluster: the quotient class *is* the cluster, the
remainder the within-cluster rank. Tables of ``K`` and ``m`` rows, as QR with ``m`` collisions;
with ``sigma`` the identity it *is* QR. The clusters come from the rows of a trained table (CCE,
Tito Sobral and Ahle 2023; see :mod:`compemb.data_aware` for the k-means and the re-clustering
hook).

The relabelling is the family's lookup array (``n`` int64): see :class:`DataAwareFamily`; the
examples are on the classes and functions, and in :mod:`compemb.partitions.data_aware`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

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
from compemb.partitions._numeric import AnyIntArray, IntArray, ceil_div, check_n, check_positive, like, to_numpy
from compemb.partitions.family import PartitionFamily
from compemb.partitions.kinds import Partition, QuotientPartition, RemainderPartition

__all__ = ["RelabelledPartition", "RelabelledFamily", "ClusteredFamily", "clustered"]


class RelabelledPartition(Partition):
    """``inner(sigma(x))`` for an injective relabelling ``sigma: [0, n) -> [0, inner.n)``.

    Built by :class:`RelabelledFamily` (which validates ``sigma`` once for all its members).
    """

    ids_follow_form = False

    def __init__(self, relabel: Lookup, inner: Partition):
        self.n = int(relabel.array.shape[0])
        self.inner = inner
        self._relabel = relabel

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    def encode_into(self, x: IntArray, out: IntArray) -> None:
        self.inner.encode_into(gather(self._relabel.on(x), x), out)

    def spec(self) -> Dict[str, Any]:
        return {"kind": "RelabelledPartition", "n": self.n, "inner": self.inner.spec(),
                "relabel_sha256": self._relabel.digest()}

    def __repr__(self) -> str:
        return f"RelabelledPartition(n={self.n}, {self.inner!r})"


def _check_relabel(relabel: IdArray, size: int) -> torch.Tensor:
    """An injective map ``[0, n) -> [0, size)`` as an int64 tensor."""
    t = as_int64(relabel, "relabel")
    n = int(t.shape[0])
    if n == 0:
        raise ValueError("relabel is empty: a relabelling covers n >= 1 categories")
    bad = value_outside(t, size)
    if bad is not None:
        raise ValueError(f"relabel maps an id to {bad}, outside [0, {size})")
    value = first_repeat(torch.sort(t).values)
    if value is not None:
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
        array = _check_relabel(relabel, base.n) if check else as_int64(relabel, "relabel")
        self.base = base
        self._relabel = Lookup(array)
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
        self.base.encode_into(gather(self._relabel.on(idx), idx), out)

    def decode(self, codes: Union[AnyIntArray, Sequence[int]]) -> Union[AnyIntArray, int]:
        """The index with the given codes: ``sigma^-1`` of the base's decode."""
        if not self.base.is_complementary():
            return super().decode(codes)  # (complementary on the image of sigma only: a table decoder)
        c, scalar = self._prepare_codes(codes)
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
        return self._checked_decode(c, scalar, gather(order, pos))

    def arrays(self) -> Dict[str, torch.Tensor]:
        return {"relabel": self.relabel}

    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "RelabelledFamily":
        return RelabelledFamily(self._new_relabel(arrays), self.base, check=check)

    def _new_relabel(self, arrays: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``arrays["relabel"]``, once its length is this family's ``n``."""
        relabel = arrays["relabel"]
        if int(relabel.shape[0]) != self.n:
            raise ValueError(f"relabel has {int(relabel.shape[0])} entries, this family has n = {self.n}")
        return relabel

    def structure(self) -> Dict[str, Any]:
        return {"kind": "RelabelledFamily", "n": self.n, "base": structure_of(self.base)}

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
        # the identity relabelling is valid by construction: checking it costs seconds at n = 10M
        super().__init__(torch.arange(n) if relabel is None else relabel, base, check=check and relabel is not None)

    @property
    def clusters(self) -> torch.Tensor:
        """The cluster of every id, ``sigma // m``."""
        return torch.div(self.relabel, self.capacity, rounding_mode="floor")

    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "ClusteredFamily":
        return ClusteredFamily(self.n, self.capacity, self.num_clusters, self._new_relabel(arrays), check=check)

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
    c = as_int64(clusters, "clusters").cpu()
    if int(c.shape[0]) != n:
        raise ValueError(f"clusters has {int(c.shape[0])} entries, expected n = {n}")
    bad = value_outside(c, k)
    if bad is not None:
        raise ValueError(f"cluster id {bad} is out of range [0, {k})")
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
