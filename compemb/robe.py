"""ROBE: one shared array of parameters read at hashed offsets (Desai, Chou and Shrivastava, MLSys 2022).

Random Offset Block Embedding keeps a single circular array ``w`` of ``size`` numbers. The row of
category ``x`` is cut into blocks of ``Z = block_size`` coordinates; block ``j`` reads the ``Z``
consecutive entries of ``w`` starting at ``h(x, j)``, wrapping around the end. Memory is
``size`` numbers whatever ``n`` and ``D`` are, so any compression ratio can be met to one
parameter, which makes ROBE the natural "equal memory" baseline of the hashing family (the
hashing trick shares whole rows, ROBE shares overlapping windows).

The offset ``h(x, j)`` is :class:`compemb.partitions.HashPartition` (seeded splitmix64) of
``x * num_blocks + j`` modulo ``size``.

Example::

    >>> import torch
    >>> bag = ROBEEmbeddingBag(1000, 16, size=4000, mode="sum")
    >>> bag.weight.shape, bag(torch.tensor([[1, 2], [999, 0]])).shape
    (torch.Size([4000]), torch.Size([2, 16]))
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from compemb._bag_module import EmbeddingBagModule, check_size_or_collisions
from compemb.functional import check_int, check_per_sample_weights_dtype, check_table_size, pool_rows
from compemb.partitions import HashPartition

__all__ = ["ROBEEmbeddingBag"]


class ROBEEmbeddingBag(EmbeddingBagModule):
    r"""An embedding bag whose rows are windows of one shared, circular parameter array (ROBE-Z).

    Args:
        num_embeddings: ``n``.
        embedding_dim: ``D``, the output width.
        size: the array's length (the parameter count); or
        num_collisions: ``size = ceil(n D / num_collisions)`` (each parameter shared by about
            ``num_collisions`` table entries, as the hashing trick's rows); exactly one of the two.
        block_size: ``Z``, coordinates read contiguously (default ``D``: one window per row).
        seed: the hash seed.
        mode: ``"sum"``, ``"mean"`` (default) or ``"max"``.
        include_last_offset: as :class:`torch.nn.EmbeddingBag`.
        device, dtype: of the array.

    Initialisation: ``U(-sqrt(1/n), sqrt(1/n))``, so each coordinate of a row has the variance of
    a full table's.

    Shape:
        - input: ``(B, L)``, or ``(N,)`` with ``offsets``; per_sample_weights: the shape of input.
        - output: ``(B, D)``.

    Example::

        >>> bag = ROBEEmbeddingBag(10, 4, num_collisions=2, block_size=2, seed=3)
        >>> bag.size, bag.num_blocks
        (20, 2)
        >>> bag.offsets(torch.tensor([0, 9])).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        size: Optional[int] = None,
        *,
        num_collisions: Optional[int] = None,
        block_size: Optional[int] = None,
        seed: int = 0,
        mode: str = "mean",
        include_last_offset: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name, n, d = self.init_bag(num_embeddings, embedding_dim, mode, include_last_offset)
        self.size = check_size_or_collisions(name, "size", size, num_collisions, n * d)
        self.block_size = z = d if block_size is None else check_int("block_size", block_size, 1, name)
        if z > d:
            raise ValueError(f"{name}: block_size={z} exceeds embedding_dim={d}")
        self.num_blocks = b = math.ceil(d / z)
        self.seed = check_int("seed", seed, None, name)
        if n * b > 2**63:
            raise ValueError(f"{name}: num_embeddings * num_blocks = {n * b} exceeds the int64 hash domain")
        self._hash = HashPartition(n * b, self.size, self.seed)
        check_table_size(name, "weight", (self.size,), dtype)
        self.weight = nn.Parameter(torch.empty(self.size, device=device, dtype=dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the array ``U(-sqrt(1/n), sqrt(1/n))``."""
        bound = math.sqrt(1.0 / self.num_embeddings)
        self.weight.uniform_(-bound, bound)

    def mapping_state(self) -> Dict[str, Any]:
        """``n``, ``D``, the array size, the block size and the seed (they define every window)."""
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "size": self.size,
                "block_size": self.block_size, "seed": self.seed}

    def offsets(self, ids: Tensor) -> Tensor:
        """The array positions each of the validated ``ids`` ``(N,)`` reads: ``(N, D)`` int64."""
        b, z = self.num_blocks, self.block_size
        keys = ids.unsqueeze(1) * b + torch.arange(b, device=ids.device)
        starts = torch.empty_like(keys)
        self._hash.encode_into(keys, starts)
        where = (starts.unsqueeze(2) + torch.arange(z, device=ids.device)).remainder_(self.size)
        return where.reshape(ids.shape[0], b * z)[:, : self.embedding_dim]

    def pooled(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
               bag_len: Optional[int]) -> Tensor:
        check_per_sample_weights_dtype(per_sample_weights, self.weight.dtype, type(self).__name__)
        rows = self.weight[self.offsets(indices)]
        return pool_rows(rows, offsets, self.mode, per_sample_weights, bag_len)

    def extra_repr(self) -> str:
        s = (f"{self.num_embeddings}, {self.embedding_dim}, size={self.size}, block_size={self.block_size}, "
             f"seed={self.seed}, mode={self.mode}")
        return s + self.options_repr("include_last_offset")
