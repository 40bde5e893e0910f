"""Embedding bags over data-aware partition families: frequency-aware and clustered (CCE-style) tables.

:class:`DataAwareEmbeddingBag` is a :class:`~compemb.modules.CompositionalEmbeddingBag` whose
family is a :class:`~compemb.partitions.DataAwareFamily`: the family's lookup arrays (hot ids,
the cluster relabelling) are registered as buffers, so they travel with ``state_dict``,
``load_state_dict`` and ``.to(device)``; the ``_extra_state`` records the family's *structure*
(``num_hot``, the base family, the cluster count and capacity), and a state saved for another
structure is refused before anything is overwritten. Everything else (operations, modes,
backends, the ``nn.EmbeddingBag`` forward contract) is the parent's.

Two ways to build one:

- :meth:`DataAwareEmbeddingBag.frequency_aware`: the ``num_hot`` most frequent categories of
  the training split get rows of their own, the rest share quotient–remainder rows (or any
  complementary base family).
- :meth:`DataAwareEmbeddingBag.clustered`: quotient–remainder over a learned relabelling, the
  quotient class being a cluster of at most ``m`` categories with similar embeddings.
  It starts as plain QR (the identity relabelling); :meth:`DataAwareEmbeddingBag.recluster` is
  the re-clustering hook of CCE (Tito Sobral and Ahle, "Clustering the Sketch", 2023): it
  clusters the current embeddings of all ``n`` categories with a seeded, capacity-constrained
  k-means (:func:`balanced_kmeans`), installs the clusters as the new partition and warm-starts
  the tables so the composed embeddings stay close to the ones before. Call it every few
  thousand steps during training (then reset the optimizer's state for the tables), or once on
  a trained full table (:meth:`DataAwareEmbeddingBag.from_table`).

Memory beyond the parameters: ``num_hot`` int64 (frequency-aware) or ``n`` int64 (clustered).

Example::

    >>> import torch
    >>> bag = DataAwareEmbeddingBag.clustered(100, 8, num_collisions=10, mode="sum")
    >>> [tuple(w.shape) for w in bag.weights]
    [(10, 8), (10, 8)]
    >>> result = bag.recluster(seed=0)
    >>> bag(torch.tensor([[1, 2], [99, 0]])).shape
    torch.Size([2, 8])
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from compemb.functional import check_int
from compemb.modules import CompositionalEmbeddingBag
from compemb.options import check_choice
from compemb.partitions import (
    ClusteredFamily,
    DataAwareFamily,
    PartitionFamily,
    clustered,
    frequency_aware,
)

__all__ = ["DataAwareEmbeddingBag", "ReclusterResult", "KMeansResult", "balanced_kmeans"]

_BUFFER_PREFIX = "partition_"


class KMeansResult(NamedTuple):
    """What :func:`balanced_kmeans` found."""

    #: ``(K, d)``: the mean of each cluster's members (the Lloyd centroid for an empty cluster)
    centroids: torch.Tensor
    #: ``(n,)`` int64: the cluster of every point; no cluster has more than ``capacity`` points
    assignment: torch.Tensor
    #: sum of squared distances of the points to their cluster's centroid
    inertia: float


class ReclusterResult(NamedTuple):
    """What :meth:`DataAwareEmbeddingBag.recluster` did."""

    #: sum of squared distances of the clustered embeddings to their cluster's centroid
    inertia: float
    #: fraction of the categories whose codes (cluster, rank) changed
    changed: float
    #: sum of squared differences between the embeddings before and after (with the warm start)
    reconstruction_error: float


# -- capacity-constrained k-means ----------------------------------------------------------------
def _sq_distances(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + c_sq).clamp_(min=0)


#: distances computed at once (rows x centroids): 2**26 floats, 256 MB in float32
_DISTANCE_BLOCK = 2**26


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int, banned: Optional[torch.Tensor] = None,
             two: bool = False) -> torch.Tensor:
    """Nearest centroid of every row (``two``: the two smallest distances instead)."""
    c_sq = (c * c).sum(1)
    chunk = max(1, min(chunk, _DISTANCE_BLOCK // max(c.shape[0], 1)))
    out = []
    for start in range(0, x.shape[0], chunk):
        d = _sq_distances(x[start:start + chunk], c, c_sq)
        if banned is not None:
            d[:, banned] = float("inf")
        if two:
            out.append(torch.topk(d, min(2, c.shape[0]), dim=1, largest=False).values)
        else:
            out.append(d.argmin(1))
    if not out:
        return torch.empty((0, 2) if two else (0,), dtype=x.dtype if two else torch.long, device=x.device)
    return torch.cat(out)


#: largest ``K`` seeded by k-means++ under ``init="auto"`` (its ``K`` sequential steps dominate beyond)
_PLUS_PLUS_LIMIT = 256


def _plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur and Vassilvitskii, 2007; ``2 + log k`` candidates a step,
    the one that lowers the potential most, as scikit-learn) with draws from ``gen``."""
    n = x.shape[0]
    tries = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    sq_norms = (x * x).sum(1).unsqueeze(0)  # (1, n), the same at every step
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # every point is a centroid already: repeat a random one
            pick = int(torch.randint(n, (1,), generator=gen))
            centroids.append(x[pick])
            continue
        u = torch.rand(tries, generator=gen, dtype=torch.float64) * total
        cum = torch.cumsum(closest.double().cpu(), 0)
        candidates = torch.searchsorted(cum, u).clamp_(max=n - 1).to(x.device)
        cand = x[candidates]
        dist = (sq_norms - 2.0 * (cand @ x.T) + (cand * cand).sum(1, keepdim=True)).clamp_(min=0)
        potentials = torch.minimum(closest.unsqueeze(0), dist).sum(1)
        best = int(potentials.argmin())
        centroids.append(x[candidates[best]])
        closest = torch.minimum(closest, dist[best])
    return torch.stack(centroids)


def _balanced_assign(x: torch.Tensor, c: torch.Tensor, capacity: int, chunk: int) -> torch.Tensor:
    """Every point to a centroid, at most ``capacity`` per centroid, nearest available first.

    Points claim centroids in rounds, in order of *regret* (how much farther their second
    choice is): in each round every unassigned point proposes to its nearest centroid that
    still has room, and each centroid accepts its proposers in priority order up to its room.
    Each round places every proposer or fills a centroid, so at most ``K + 1`` rounds.
    """
    n, k = x.shape[0], c.shape[0]
    device = x.device
    best = _nearest(x, c, chunk, two=True)
    regret = best[:, 1] - best[:, 0] if k > 1 else torch.zeros(n, dtype=x.dtype, device=device)
    pending = torch.sort(-regret, stable=True).indices
    room = torch.full((k,), capacity, dtype=torch.long, device=device)
    assign = torch.full((n,), -1, dtype=torch.long, device=device)
    while pending.numel():
        choice = _nearest(x[pending], c, chunk, banned=room == 0)
        order = torch.sort(choice, stable=True).indices  # by centroid, priority order within each
        sorted_choice = choice[order]
        first = torch.searchsorted(sorted_choice, sorted_choice)
        accepted = order[(torch.arange(order.numel(), device=device) - first) < room[sorted_choice]]
        assign[pending[accepted]] = choice[accepted]
        room -= torch.bincount(choice[accepted], minlength=k)
        keep = torch.ones(pending.numel(), dtype=torch.bool, device=device)
        keep[accepted] = False
        pending = pending[keep]
    return assign


def _move_centroids(centroids: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> None:
    """Move every centroid with members (in place) to the mean of its ``points`` (by ``labels``)."""
    sums = torch.zeros_like(centroids).index_add_(0, labels, points)
    counts = torch.bincount(labels, minlength=centroids.shape[0]).to(points.dtype)
    filled = counts > 0
    centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)


def balanced_kmeans(
    points: torch.Tensor,
    num_clusters: int,
    capacity: int,
    *,
    seed: int = 0,
    num_iters: int = 25,
    sample_size: Optional[int] = None,
    chunk_size: int = 65536,
    init: str = "auto",
) -> KMeansResult:
    """k-means whose clusters hold at most ``capacity`` points each, reproducible by ``seed``.

    Lloyd's algorithm (``num_iters`` iterations) on a sample of the points, then every point is
    assigned with the capacity constraint (nearest centroid with room, in order of regret) and
    the centroids become the means of their members. All random draws come from a CPU
    ``torch.Generator`` seeded with ``seed``; on CPU the result is bitwise reproducible.

    Cost: exact distances, ``O(n K d)`` per iteration and for the final assignment (blocks of
    at most 2**26 distances at a time). That is seconds on a CPU for ``n K ~ 1e9`` and calls for
    a GPU (the points' device is used) for QR-sized clusterings of tables beyond ~1e5 rows.

    Args:
        points: ``(n, d)`` floating point.
        num_clusters: ``K``; ``K * capacity >= n``.
        capacity: ``m``, the most points a cluster may hold.
        seed: the seed of every random draw.
        num_iters: Lloyd iterations on the sample (stops early when nothing moves).
        sample_size: points the centroids are fitted on (default ``min(n, 256 K)``).
        chunk_size: rows per distance computation (fewer when ``K`` is large).
        init: ``"k-means++"`` (greedy seeding, ``K`` sequential steps), ``"random"`` (``K``
            distinct sample points) or ``"auto"`` (k-means++ on at most ``64 K`` of the points up
            to ``K = 256``, else random).

    Example::

        >>> pts = torch.tensor([[0.0], [0.1], [5.0], [5.1], [5.2], [0.2]])
        >>> res = balanced_kmeans(pts, 2, 3, seed=0)
        >>> sorted(res.assignment.tolist()) == [0, 0, 0, 1, 1, 1], res.assignment[0] == res.assignment[5]
        (True, tensor(True))
    """
    name = "balanced_kmeans"
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or not points.is_floating_point():
        raise ValueError(f"{name}: points must be a 2-D floating point tensor, got "
                         f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
    n = points.shape[0]
    k = check_int("num_clusters", num_clusters, 1, name)
    m = check_int("capacity", capacity, 1, name)
    seed = check_int("seed", seed, None, name)
    num_iters = check_int("num_iters", num_iters, 0, name)
    chunk = check_int("chunk_size", chunk_size, 1, name)
    if n == 0:
        raise ValueError(f"{name}: no points to cluster")
    if k * m < n:
        raise ValueError(f"{name}: {k} clusters of capacity {m} cannot hold {n} points")
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{name}: points hold NaN or infinite values")
    gen = torch.Generator().manual_seed(seed)
    x = points.detach()
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    size = min(n, 256 * k) if sample_size is None else min(n, check_int("sample_size", sample_size, 1, name))
    sample = work if size == n else work[torch.randperm(n, generator=gen)[:size].sort().values.to(x.device)]
    check_choice("init", init, ("auto", "k-means++", "random"), name)
    if init == "k-means++" or (init == "auto" and k <= _PLUS_PLUS_LIMIT):
        seeds = sample if sample.shape[0] <= 64 * k else sample[torch.randperm(sample.shape[0], generator=gen)[:64 * k]
                                                                 .to(sample.device)]
        centroids = _plus_plus(seeds, k, gen)
    else:
        picks = torch.randperm(sample.shape[0], generator=gen)[:k]
        if picks.numel() < k:  # fewer points than clusters: repeat some
            picks = torch.cat([picks, torch.randint(sample.shape[0], (k - picks.numel(),), generator=gen)])
        centroids = sample[picks.to(sample.device)].clone()
    labels: Optional[torch.Tensor] = None
    for _ in range(num_iters):
        new = _nearest(sample, centroids, chunk)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        _move_centroids(centroids, sample, labels)
    assignment = _balanced_assign(work, centroids, m, chunk)
    _move_centroids(centroids, work, assignment)
    inertia = float(((work - centroids[assignment]) ** 2).sum())
    return KMeansResult(centroids.to(points.dtype), assignment, inertia)


# -- the module ---------------------------------------------------------------------------------
class DataAwareEmbeddingBag(CompositionalEmbeddingBag):
    r"""A compositional embedding bag over a data-aware family, whose lookup arrays are module state.

    Same arguments, forward contract and initialisation as
    :class:`~compemb.modules.CompositionalEmbeddingBag`; ``family`` must be a
    :class:`~compemb.partitions.DataAwareFamily`. Its arrays are buffers named
    ``partition_<name>`` (``partition_hot_ids``, ``partition_relabel``).

    Args:
        num_embeddings, embedding_dim: ``n`` and ``D``.
        family: the data-aware family over ``n``.
        **kwargs: the other arguments of :class:`~compemb.modules.CompositionalEmbeddingBag`.

    Example::

        >>> counts = torch.tensor([0, 50, 3, 0, 9, 1, 0, 0])
        >>> bag = DataAwareEmbeddingBag.frequency_aware(8, 4, num_hot=2, counts=counts, num_collisions=3)
        >>> bag.family.hot_ids.tolist(), sorted(bag.state_dict())[:1]
        ([1, 4], ['_extra_state'])
        >>> bag.partition_hot_ids.tolist()
        [1, 4]
    """

    family: DataAwareFamily

    def __init__(self, num_embeddings: int, embedding_dim: int, family: DataAwareFamily, **kwargs: Any) -> None:
        if not isinstance(family, DataAwareFamily):
            raise TypeError(
                f"{type(self).__name__}: family must be a DataAwareFamily (e.g. from "
                f"compemb.partitions.frequency_aware or clustered), got {type(family).__name__} {family!r}"
            )
        super().__init__(num_embeddings, embedding_dim, family=family, **kwargs)
        device = self.weights[0].device
        for name, array in family.arrays().items():
            self.register_buffer(_BUFFER_PREFIX + name, array.to(device).clone())
        self._sync_family()

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def frequency_aware(
        cls,
        num_embeddings: int,
        embedding_dim: int,
        num_hot: int,
        *,
        counts: Optional[Union[torch.Tensor, np.ndarray, Sequence[float]]] = None,
        indices: Optional[Union[torch.Tensor, np.ndarray, Sequence[int]]] = None,
        hot_ids: Optional[Union[torch.Tensor, np.ndarray, Sequence[int]]] = None,
        base: Optional[PartitionFamily] = None,
        num_collisions: int = 4,
        **kwargs: Any,
    ) -> "DataAwareEmbeddingBag":
        """The ``num_hot`` most frequent categories get rows of their own (:func:`~compemb.partitions.frequency_aware`).

        Args:
            num_embeddings, embedding_dim: ``n`` and ``D``.
            num_hot: ``h``, ``1 <= h <= n``.
            counts / indices / hot_ids: the training split's counts, a sample of its indices, or
                the hot ids; with none of them the hot ids are the placeholder ``0 .. h-1``, for a
                module built to load a saved state into.
            base: complementary family for the rest (default ``quotient_remainder(n, num_collisions)``).
            num_collisions: ``m`` of the default base.
            **kwargs: as :class:`~compemb.modules.CompositionalEmbeddingBag` (operation, mode, ...).

        Tables: ``h + 1`` rows, then every base table with one extra row (shared by the hot ids).
        """
        if counts is None and indices is None and hot_ids is None:
            hot_ids = torch.arange(check_int("num_hot", num_hot, 1, cls.__name__))
        family = frequency_aware(num_embeddings, num_hot, counts=counts, indices=indices, hot_ids=hot_ids,
                                 base=base, num_collisions=num_collisions)
        return cls(num_embeddings, embedding_dim, family, **kwargs)

    @classmethod
    def clustered(
        cls,
        num_embeddings: int,
        embedding_dim: int,
        num_collisions: int = 4,
        *,
        num_clusters: Optional[int] = None,
        clusters: Optional[Union[torch.Tensor, np.ndarray, Sequence[int]]] = None,
        **kwargs: Any,
    ) -> "DataAwareEmbeddingBag":
        """Quotient–remainder over a learned relabelling (:func:`~compemb.partitions.clustered`).

        Args:
            num_embeddings, embedding_dim: ``n`` and ``D``.
            num_collisions: ``m``, the cluster capacity and the rank table's rows (as QR's ``m``).
            num_clusters: ``K >= ceil(n / m)`` (default ``ceil(n / m)``): the cluster table's rows.
            clusters: an initial assignment (default: the identity relabelling, i.e. plain QR).
            **kwargs: as :class:`~compemb.modules.CompositionalEmbeddingBag`.
        """
        m = check_int("num_collisions", num_collisions, 1, cls.__name__)
        family = clustered(num_embeddings, min(m, num_embeddings), clusters=clusters, num_clusters=num_clusters)
        return cls(num_embeddings, embedding_dim, family, **kwargs)

    @classmethod
    def from_table(cls, table: torch.Tensor, num_collisions: int = 4, *, seed: int = 0, num_iters: int = 25,
                   **kwargs: Any) -> "DataAwareEmbeddingBag":
        """A clustered bag fitted to a trained ``(n, D)`` table (clusters of its rows, warm-started tables).

        Example::

            >>> table = torch.randn(50, 4)
            >>> DataAwareEmbeddingBag.from_table(table, 5, operation="add").family.capacity
            5
        """
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or not table.is_floating_point():
            raise ValueError(f"{cls.__name__}.from_table: table must be a 2-D floating point tensor")
        kwargs.setdefault("device", table.device)
        kwargs.setdefault("dtype", table.dtype)
        bag = cls.clustered(int(table.shape[0]), int(table.shape[1]), num_collisions, **kwargs)
        bag.recluster(seed, embeddings=table, num_iters=num_iters)
        return bag

    # -- the family as state ------------------------------------------------------------------
    def _array_buffers(self) -> Dict[str, torch.Tensor]:
        return {name: self._buffers[_BUFFER_PREFIX + name] for name in self.family.arrays()}  # type: ignore[misc]

    def _sync_family(self) -> None:
        """Rebuild the family around the buffers (after a move or a load: they are the truth)."""
        self.family = self.family.with_arrays(self._array_buffers(), check=False)

    def mapping_state(self) -> Dict[str, Any]:
        """The family's structure (not its arrays, which are buffers) and the operation."""
        return {"num_embeddings": self.num_embeddings, "family": self.family.structure(), "operation": self.operation}

    def set_family(self, family: DataAwareFamily) -> None:
        """Install another family of the same structure (new hot ids, new clusters); the tables stay.

        The rows then embed the categories the new family maps to them: use it before training,
        or re-initialise the tables (:meth:`recluster` does that for clustered families).

        Raises:
            ValueError: a family of another structure, naming both.
        """
        if not isinstance(family, DataAwareFamily) or family.structure() != self.family.structure():
            got = family.structure() if isinstance(family, DataAwareFamily) else repr(family)
            raise ValueError(f"{type(self).__name__}.set_family: the family's structure {got} differs from this "
                             f"module's {self.family.structure()}")
        with torch.no_grad():
            for name, buf in self._array_buffers().items():
                buf.copy_(family.arrays()[name])
        self._sync_family()

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        result = super()._apply(fn, recurse)
        if "family" in self.__dict__:
            self._sync_family()
        return result

    def _refusal(self, state_dict: Mapping[str, Any], prefix: str) -> Optional[str]:
        """The mapping's refusal, or else the saved arrays' (validated before anything is overwritten)."""
        problem = super()._refusal(state_dict, prefix)
        if problem is not None:
            return problem
        names = self.family.arrays()
        incoming = {name: state_dict.get(prefix + _BUFFER_PREFIX + name) for name in names}
        arrays = {name: a for name, a in incoming.items() if isinstance(a, torch.Tensor)}
        if len(arrays) == len(names):
            try:
                self.family.with_arrays(arrays, check=True)
            except (KeyError, TypeError, ValueError) as error:
                return (f"{self._where(prefix)}: the saved partition arrays do not define a "
                        f"{type(self.family).__name__}: {error}")
        return None

    def _loaded(self) -> None:
        self._sync_family()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", family={self.family!r}"

    # -- re-clustering ------------------------------------------------------------------------
    @torch.no_grad()
    def embeddings(self, chunk_size: int = 65536) -> torch.Tensor:
        """The composed embedding of every category, ``(n, D)`` (no pooling, no gradient)."""
        device = self.weights[0].device
        rows = []
        for start in range(0, self.num_embeddings, chunk_size):
            ids = torch.arange(start, min(start + chunk_size, self.num_embeddings), device=device)
            rows.append(self(ids.view(-1, 1)))
        return torch.cat(rows)

    @torch.no_grad()
    def recluster(
        self,
        seed: int = 0,
        *,
        embeddings: Optional[torch.Tensor] = None,
        num_iters: int = 25,
        sample_size: Optional[int] = None,
        chunk_size: int = 65536,
        warm_start: bool = True,
    ) -> ReclusterResult:
        """Re-cluster the categories by their embeddings (the CCE hook); reproducible by ``seed``.

        1. The rows to cluster: ``embeddings`` (e.g. a trained full table) or the module's own
           current embeddings of all ``n`` categories.
        2. :func:`balanced_kmeans` with ``K`` clusters of capacity ``m`` (the family's sizes),
           seeded with ``seed``.
        3. Within a cluster, categories are ranked by their offset from the centroid projected on
           the residuals' top principal direction, so that a rank row is shared by categories
           that sit on the same side of their clusters.
        4. The new relabelling replaces the old one (the buffers change in place, the
           structure and the table shapes stay).
        5. ``warm_start``: the cluster table gets the centroids and the rank table the
           least-squares fit of what remains (per coordinate: the mean residual for ``add``, the
           mean of the rest of the row for ``concat``, ``sum(E C) / sum(C^2)`` for ``mult``), so
           the composed embeddings approximate the clustered rows at least as well as the
           centroids alone.

        The table parameters are changed in place: optimizer state kept for them (Adagrad sums,
        momentum) describes the old rows; reset or rebuild it after this call.

        Cost: :func:`balanced_kmeans` with ``K = n / m`` clusters takes ``O(n^2 d / m)``: about a
        minute on two busy CPU cores for ``n = 1e5, m = 16``; run it on the GPU for larger tables.

        Raises:
            TypeError: the family is not a :class:`~compemb.partitions.ClusteredFamily`.
            ValueError: ``embeddings`` of the wrong shape or with NaN/inf values.
        """
        family = self.family
        name = f"{type(self).__name__}.recluster"
        if not isinstance(family, ClusteredFamily):
            raise TypeError(f"{name}: only a ClusteredFamily can be re-clustered, this module has {family!r}")
        seed = check_int("seed", seed, None, name)
        n = self.num_embeddings
        device = self.weights[0].device
        if embeddings is None:
            target = self.embeddings(chunk_size)
        else:
            if not isinstance(embeddings, torch.Tensor) or tuple(embeddings.shape) != (n, self.embedding_dim):
                shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
                raise ValueError(f"{name}: embeddings must be a ({n}, {self.embedding_dim}) tensor, got {shape}")
            target = embeddings.detach().to(device)
        before_codes = self._codes()
        # k-means in the tables' precision (float32: half the time of float64), the fit in float64
        points = target if target.dtype in (torch.float32, torch.float64) else target.float()
        result = balanced_kmeans(points, family.num_clusters, family.capacity, seed=seed, num_iters=num_iters,
                                 sample_size=sample_size, chunk_size=chunk_size)
        target = target.double()
        centroids = result.centroids.double()
        resid = target - centroids[result.assignment]
        _, vectors = torch.linalg.eigh(resid.T @ resid)
        direction = vectors[:, -1]
        direction = direction * torch.sign(direction[direction.abs().argmax()])  # a fixed sign
        new = clustered(n, family.capacity, clusters=result.assignment.cpu(), num_clusters=family.num_clusters,
                        order=(resid @ direction).cpu())
        self.set_family(new)
        codes = self._codes()
        changed = float((codes != before_codes).any(0).double().mean())
        if warm_start:
            self._fit_tables(target, centroids, codes)
        after = self.embeddings(chunk_size).double()
        error = float(((after - target) ** 2).sum())
        return ReclusterResult(result.inertia, changed, error)

    def _codes(self) -> torch.Tensor:
        ids = torch.arange(self.num_embeddings, device=self.weights[0].device)
        out = torch.empty((self.family.k, self.num_embeddings), dtype=torch.long, device=ids.device)
        self.family.encode_into(ids, out)
        return out

    def _fit_tables(self, target: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor) -> None:
        """Cluster table <- centroids; rank table <- least-squares fit of the rest (see recluster)."""
        cl, rk = codes[0], codes[1]
        w0, w1 = self.weights[0], self.weights[1]
        m = w1.shape[0]
        counts = torch.bincount(rk, minlength=m).to(target.dtype).unsqueeze(1)
        if self.operation == "concat":
            d0 = self.dims[0]
            rest = torch.zeros(m, target.shape[1] - d0, dtype=target.dtype, device=target.device)
            rest.index_add_(0, rk, target[:, d0:])
            w0.copy_(centroids[:, :d0])
            w1.copy_(torch.where(counts > 0, rest / counts.clamp(min=1), torch.zeros_like(rest)))
            return
        c = centroids[cl]
        if self.operation == "add":
            sums = torch.zeros(m, target.shape[1], dtype=target.dtype, device=target.device)
            sums.index_add_(0, rk, target - c)
            fit = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
        else:  # mult: per coordinate, min sum (E - C r)^2 over r
            num = torch.zeros(m, target.shape[1], dtype=target.dtype, device=target.device).index_add_(0, rk, target * c)
            den = torch.zeros_like(num).index_add_(0, rk, c * c)
            fit = torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), torch.ones_like(num))
        w0.copy_(centroids)
        w1.copy_(fit)
