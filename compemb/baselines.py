"""Baselines the paper compares against: the hashing trick and mixed-dimension embeddings.

- :class:`HashEmbeddingBag`: the hashing trick (Weinberger et al., ICML 2009): ids are mapped to
  ``num_buckets`` rows, by remainder or by a seeded universal hash; colliding ids share a row.
- :func:`md_dims` and :class:`MixedDimEmbeddingBag`: mixed-dimension embeddings (Ginart, Naumov,
  Mudigere, Yang, Zou, "Mixed Dimension Embeddings with Application to Memory-Efficient
  Recommendation Systems", arXiv:1909.11810): each feature gets its own width by a power rule and
  is projected to the common base width.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compemb._bag_module import EmbeddingBagModule, check_size_or_collisions
from compemb.functional import check_float_tables, check_int, check_per_sample_weights_dtype, check_table_size, pool_rows
from compemb.options import HASH_FUNCTIONS, check_choice
from compemb.partitions import HashPartition, Partition, RemainderPartition

__all__ = ["HashEmbeddingBag", "MixedDimEmbeddingBag", "md_dims"]

class HashEmbeddingBag(EmbeddingBagModule):
    r"""The hashing trick: ``n`` categories share ``num_buckets`` rows of one table.

    Index ``x`` reads row ``h(x)`` with ``h(x) = x mod num_buckets`` (``hash="remainder"``,
    :class:`~compemb.partitions.RemainderPartition`) or a seeded universal hash
    (``hash="universal"``, :class:`~compemb.partitions.HashPartition`); the rows are pooled like
    :class:`torch.nn.EmbeddingBag`. Give ``num_buckets`` or ``num_collisions`` (then
    ``num_buckets = ceil(n / num_collisions)``), not both.

    The table is initialised U(-sqrt(1/n), sqrt(1/n)) with the ``n`` of the categories, i.e. like
    the full table it replaces, so outputs have the same scale.

    Args:
        num_embeddings (int): n, the number of categories; indices must lie in ``[0, n)``.
        embedding_dim (int): the output width.
        num_buckets (int, optional): rows of the shared table.
        num_collisions (int, optional): categories per bucket; ``num_buckets = ceil(n / m)``.
        hash (str): ``"remainder"`` or ``"universal"``.
        seed (int): seed of the universal hash.
        max_norm, norm_type, scale_grad_by_freq, mode, sparse, include_last_offset:
            as in :class:`torch.nn.EmbeddingBag`. Default ``mode="mean"``.
        device, dtype: factory arguments.

    Shape:
        ``input`` ``(B, L)`` or ``(N,)`` with ``offsets``; output ``(B, embedding_dim)``.

    Example::

        >>> bag = HashEmbeddingBag(1000, 16, num_collisions=4, mode="sum")
        >>> bag.weight.shape
        torch.Size([250, 16])
        >>> bag(torch.tensor([[1, 2], [999, 0]])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_buckets: Optional[int] = None,
        num_collisions: Optional[int] = None,
        hash: str = "remainder",
        seed: int = 0,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        _weight: Optional[Tensor] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name, num_embeddings, embedding_dim = self.init_bag(num_embeddings, embedding_dim, mode, include_last_offset)
        num_buckets = check_size_or_collisions(name, "num_buckets", num_buckets, num_collisions, num_embeddings)
        if num_buckets > num_embeddings:
            raise ValueError(
                f"{name}: num_buckets={num_buckets} exceeds num_embeddings={num_embeddings}; "
                "a hashed table must not have more rows than categories"
            )
        check_choice("hash", hash, HASH_FUNCTIONS, name)
        self.num_buckets = num_buckets
        self.hash = hash
        self.seed = seed = check_int("seed", seed, None, name)
        if hash == "remainder":
            self.partition: Partition = RemainderPartition(num_embeddings, num_buckets)
        else:
            self.partition = HashPartition(num_embeddings, num_buckets, seed)
        self.init_row_options(max_norm, norm_type, scale_grad_by_freq, sparse)
        if _weight is None:
            check_table_size(name, "weight", (num_buckets, embedding_dim), dtype)
            self.weight = nn.Parameter(torch.empty(num_buckets, embedding_dim, device=device, dtype=dtype))
            self.reset_parameters()
        else:
            check_float_tables([_weight], ["_weight"], name)
            if tuple(_weight.shape) != (num_buckets, embedding_dim):
                raise ValueError(
                    f"{name}: _weight has shape {tuple(_weight.shape)}, expected {(num_buckets, embedding_dim)}"
                )
            self.weight = nn.Parameter(_weight)

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, num_embeddings: int, freeze: bool = True,
                        **kwargs: Any) -> "HashEmbeddingBag":
        """Build from a given shared table of ``num_buckets = embeddings.shape[0]`` rows.

        Args:
            embeddings: the ``(num_buckets, embedding_dim)`` table (used as is, not copied).
            num_embeddings: n, the number of categories hashed into it.
            freeze: do not train the table (``requires_grad=False``), as ``nn.EmbeddingBag``.
            **kwargs: the other constructor arguments (``hash``, ``seed``, ``mode`` ...).

        Example::

            >>> bag = HashEmbeddingBag.from_pretrained(torch.ones(4, 3), num_embeddings=10, mode="sum")
            >>> bag(torch.tensor([[1, 9]]))
            tensor([[2., 2., 2.]])
        """
        where = f"{cls.__name__}.from_pretrained"
        check_float_tables([embeddings], ["embeddings"], where)
        if embeddings.dim() != 2:
            raise ValueError(f"{where}: embeddings must be a 2-D tensor, got shape {tuple(embeddings.shape)}")
        rows, dim = embeddings.shape
        bag = cls(num_embeddings, dim, num_buckets=rows, _weight=embeddings, **kwargs)
        bag.weight.requires_grad_(not freeze)
        return bag

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """U(-sqrt(1/n), sqrt(1/n)) with n = num_embeddings (the full table's init)."""
        bound = math.sqrt(1.0 / self.num_embeddings)
        nn.init.uniform_(self.weight, -bound, bound)

    def buckets(self, indices: Tensor) -> Tensor:
        """The row of each index (validated: out-of-range indices raise ``IndexError``)."""
        return cast(Tensor, self.partition(indices))  # (a tensor in, a tensor out)

    def _buckets_validated(self, flat: Tensor) -> Tensor:
        # the indices were just checked by the forward: no second range check (and sync)
        out = torch.empty_like(flat)
        self.partition.encode_into(flat, out)
        return out

    def mapping_state(self) -> Dict[str, Any]:
        """``n``, the buckets, the hash and (universal hash) its seed, for ``state_dict``."""
        return {"num_embeddings": self.num_embeddings, "num_buckets": self.num_buckets, "hash": self.hash,
                "seed": self.seed if self.hash == "universal" else None}

    def pooled(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
               bag_len: Optional[int]) -> Tensor:
        return _pool_table(self, self._buckets_validated(indices), offsets, per_sample_weights)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, num_buckets={self.num_buckets}, hash={self.hash!r}"
        if self.hash == "universal":
            s += f", seed={self.seed}"
        return s + self.options_repr("max_norm") + f", mode={self.mode!r}" + self.options_repr("sparse")


def md_dims(
    cardinalities: Sequence[int],
    alpha: float,
    base_dim: int,
    round_dims: bool = True,
    min_dim: int = 1,
    frequencies: Optional[Sequence[float]] = None,
) -> List[int]:
    r"""Per-feature embedding widths by the power rule of Ginart et al. (arXiv:1909.11810).

    The rule gives feature ``i`` the width ``d_i = lambda * p_i^(-alpha)`` where ``p_i`` is its
    popularity proxy; ``lambda`` is fixed so that the feature with the smallest proxy gets
    exactly ``base_dim``. As in the paper (and DLRM's ``md_solver``) the proxy is the number of rows
    ``n_i``, divided by ``frequencies[i]`` (average queries per sample) when given. ``alpha = 0``
    gives every feature ``base_dim``; larger ``alpha`` shrinks the big tables faster.

    Each width is rounded to the nearest integer, raised to at least ``min_dim`` and, with
    ``round_dims``, rounded to the nearest power of two (in log scale). No width exceeds
    ``base_dim``: a mixed-dimension table is projected *up* to ``base_dim``.

    Args:
        cardinalities: rows ``n_i`` of each table (ints >= 1).
        alpha (float): temperature of the power rule, >= 0.
        base_dim (int): width of the smallest-proxy table and of every projected output.
        round_dims (bool): round each width to a power of two.
        min_dim (int): smallest width allowed (1 <= min_dim <= base_dim).
        frequencies: optional positive average query counts per table.

    Returns:
        list of int widths, in the order of ``cardinalities``.

    Example::

        >>> md_dims([10, 1000, 100000], alpha=0.5, base_dim=16)
        [16, 2, 1]
        >>> md_dims([10, 1000, 100000], alpha=0.25, base_dim=16, round_dims=False)
        [16, 5, 2]
    """
    cards = list(cardinalities)
    if not cards:
        raise ValueError("md_dims: cardinalities is empty")
    cards = [check_int(f"cardinalities[{i}]", n, 1, "md_dims") for i, n in enumerate(cards)]
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"md_dims: alpha must be a finite number >= 0, got {alpha!r}")
    base_dim = check_int("base_dim", base_dim, 1, "md_dims")
    min_dim = check_int("min_dim", min_dim, 1, "md_dims")
    if min_dim > base_dim:
        raise ValueError(f"md_dims: min_dim={min_dim} exceeds base_dim={base_dim}")
    if frequencies is None:
        proxies = [float(n) for n in cards]
    else:
        freqs = list(frequencies)
        if len(freqs) != len(cards):
            raise ValueError(
                f"md_dims: {len(freqs)} frequencies for {len(cards)} cardinalities"
            )
        for f in freqs:
            if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
                raise ValueError(f"md_dims: every frequency must be a finite number > 0, got {f!r}")
        proxies = [n / f for n, f in zip(cards, freqs)]
    smallest = min(proxies)
    dims = []
    for p in proxies:
        d = base_dim * (smallest / p) ** alpha  # = lambda * p^(-alpha), lambda = base_dim * min^alpha
        d = max(min_dim, int(math.floor(d + 0.5)))
        if round_dims:
            d = 2 ** int(math.floor(math.log2(d) + 0.5))
            d = max(d, min_dim)
        dims.append(min(d, base_dim))
    return dims


class MixedDimEmbeddingBag(EmbeddingBagModule):
    r"""A table of its own width ``md_dim``, projected to the common width ``embedding_dim``.

    ``e(x) = P w_x`` with ``w_x`` a row of ``weight`` (``n x md_dim``) and ``P`` the
    ``embedding_dim x md_dim`` matrix ``projection`` (Ginart et al., arXiv:1909.11810). With
    ``md_dim == embedding_dim`` there is no projection. Bags are pooled like
    :class:`torch.nn.EmbeddingBag`; for ``sum``/``mean`` the projection is applied once per bag
    (it commutes with weighted sums), for ``max`` once per index, before pooling.

    **Initialisation.** ``weight`` is U(-sqrt(1/n), sqrt(1/n)); ``projection`` has orthonormal
    columns times ``sqrt(embedding_dim / md_dim)``, so the norm of ``P w`` is that of ``w`` scaled
    to ``embedding_dim`` coordinates: every output coordinate has the variance 1/(3n) of a full
    table's entries.

    Only ``weight`` gets a sparse gradient with ``sparse=True``; ``projection`` is a small dense
    matrix (give it a dense optimiser, e.g. SparseAdam for ``weight`` and Adam for ``projection``).

    Args:
        num_embeddings (int): n, the number of categories.
        embedding_dim (int): the base (output) width.
        md_dim (int): this table's width, ``1 <= md_dim <= embedding_dim`` (see :func:`md_dims`).
        max_norm, norm_type, scale_grad_by_freq, mode, sparse, include_last_offset:
            as in :class:`torch.nn.EmbeddingBag` (``sparse``: for ``weight`` only). Default ``mode="mean"``.
        device, dtype: factory arguments.

    Shape:
        ``input`` ``(B, L)`` or ``(N,)`` with ``offsets``; output ``(B, embedding_dim)``.

    Example::

        >>> bag = MixedDimEmbeddingBag(100000, 16, md_dim=4, mode="sum")
        >>> bag.weight.shape, bag.projection.shape
        (torch.Size([100000, 4]), torch.Size([16, 4]))
        >>> bag(torch.tensor([[1, 2], [99999, 0]])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        md_dim: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name, num_embeddings, embedding_dim = self.init_bag(num_embeddings, embedding_dim, mode, include_last_offset)
        md_dim = embedding_dim if md_dim is None else md_dim
        self.md_dim = md_dim = check_int("md_dim", md_dim, 1, name)
        if md_dim > embedding_dim:
            raise ValueError(
                f"{name}: md_dim={md_dim} exceeds embedding_dim={embedding_dim}; "
                "a mixed-dimension table is projected up to the base width, never down"
            )
        self.init_row_options(max_norm, norm_type, scale_grad_by_freq, sparse)
        factory: Dict[str, Any] = {"device": device, "dtype": dtype}
        check_table_size(name, "weight", (num_embeddings, md_dim), dtype)
        self.weight = nn.Parameter(torch.empty(num_embeddings, md_dim, **factory))
        if md_dim < embedding_dim:
            self.projection = nn.Parameter(torch.empty(embedding_dim, md_dim, **factory))
        else:
            self.register_parameter("projection", None)
        self.reset_parameters()

    def mapping_state(self) -> Dict[str, Any]:
        """``n``, the base width and this table's width, for ``state_dict``."""
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "md_dim": self.md_dim}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = math.sqrt(1.0 / self.num_embeddings)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.projection is not None:
            gain = math.sqrt(self.embedding_dim / self.md_dim)
            if self.projection.dtype in (torch.float16, torch.bfloat16) and self.projection.device.type != "meta":
                # (no QR for half types on every device: draw in float32, then round)
                full = torch.empty(self.projection.shape, dtype=torch.float32, device=self.projection.device)
                self.projection.copy_(nn.init.orthogonal_(full, gain=gain))
            else:
                nn.init.orthogonal_(self.projection, gain=gain)

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, projection: Optional[Tensor] = None, freeze: bool = True,
                        **kwargs: Any) -> "MixedDimEmbeddingBag":
        """Build from a given table and projection (used as is, not copied).

        Args:
            embeddings: the ``(num_embeddings, md_dim)`` table.
            projection: the ``(embedding_dim, md_dim)`` matrix ``P`` with ``md_dim < embedding_dim``,
                or ``None`` for no projection (``embedding_dim = md_dim``).
            freeze: do not train the table nor the projection (``requires_grad=False``).
            **kwargs: the other constructor arguments (``mode``, ``sparse`` ...).

        Example::

            >>> bag = MixedDimEmbeddingBag.from_pretrained(torch.ones(10, 2), torch.ones(4, 2), mode="sum")
            >>> bag(torch.tensor([[1, 9]]))
            tensor([[4., 4., 4., 4.]])
        """
        where = f"{cls.__name__}.from_pretrained"
        check_float_tables([embeddings], ["embeddings"], where)
        if embeddings.dim() != 2:
            raise ValueError(f"{where}: embeddings must be a 2-D tensor (num_embeddings, md_dim), got shape "
                             f"{tuple(embeddings.shape)}")
        n, md_dim = embeddings.shape
        dim = md_dim
        if projection is not None:
            check_float_tables([projection], ["projection"], where)
            if projection.dim() != 2 or projection.shape[1] != md_dim:
                raise ValueError(
                    f"{where}: projection must be a 2-D tensor (embedding_dim, md_dim={md_dim}), got "
                    f"{tuple(projection.shape) if isinstance(projection, Tensor) else type(projection).__name__}"
                )
            dim = projection.shape[0]
            if dim == md_dim:
                raise ValueError(f"{where}: a square projection {tuple(projection.shape)} is not a mixed dimension; "
                                 "pass projection=None")
            if projection.dtype != embeddings.dtype or projection.device != embeddings.device:
                raise ValueError(f"{where}: projection ({projection.dtype}, {projection.device}) and embeddings "
                                 f"({embeddings.dtype}, {embeddings.device}) must share dtype and device")
        kwargs.pop("device", None), kwargs.pop("dtype", None)  # (the given tensors decide both)
        bag = cls(n, dim, md_dim=md_dim, device="meta", **kwargs)  # no second table allocated
        bag.weight = nn.Parameter(embeddings, requires_grad=not freeze)
        if projection is not None:
            bag.projection = nn.Parameter(projection, requires_grad=not freeze)
        return bag

    def pooled(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
               bag_len: Optional[int]) -> Tensor:
        return _pool_table(self, indices, offsets, per_sample_weights, self.projection)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, md_dim={self.md_dim}"
        return s + self.options_repr("max_norm") + f", mode={self.mode!r}" + self.options_repr("sparse")


def _pool_table(bag: Union[HashEmbeddingBag, MixedDimEmbeddingBag], indices: Tensor, offsets: Tensor,
                per_sample_weights: Optional[Tensor], projection: Optional[Tensor] = None) -> Tensor:
    """Rows ``indices`` of ``bag.weight`` pooled as ``nn.EmbeddingBag`` with the bag's options,
    then multiplied by ``projection.t()`` when given; ``offsets`` ``(B + 1,)``."""
    check_per_sample_weights_dtype(per_sample_weights, bag.weight.dtype, type(bag).__name__)
    if (projection is not None and bag.mode == "max") or bag.scale_grad_by_freq:
        # max does not commute with the projection: project each index, then pool; and
        # F.embedding_bag's scale_grad_by_freq divides by wrong counts (torch 2.13, CPU)
        rows = F.embedding(indices, bag.weight, max_norm=bag.max_norm, norm_type=bag.norm_type,
                           scale_grad_by_freq=bag.scale_grad_by_freq, sparse=bag.sparse)
        if projection is None:
            return pool_rows(rows, offsets, bag.mode, per_sample_weights)
        if bag.mode == "max":
            return pool_rows(rows @ projection.t(), offsets, bag.mode, None)
        return pool_rows(rows, offsets, bag.mode, per_sample_weights) @ projection.t()
    pooled = F.embedding_bag(indices, bag.weight, offsets, max_norm=bag.max_norm, norm_type=bag.norm_type,
                             scale_grad_by_freq=bag.scale_grad_by_freq, mode=bag.mode, sparse=bag.sparse,
                             per_sample_weights=per_sample_weights, include_last_offset=True)
    return pooled if projection is None else pooled @ projection.t()
