r"""Factorization machine (Rendle, ICDM 2010) over every categorical and dense feature.

.. math::

    \hat y(x) = w_0 + \sum_i w_i x_i + \sum_{i<j} \langle v_i, v_j \rangle x_i x_j

over all non-zero features ``i``: every category of every categorical feature (``x_i = 1``; in a
multi-hot bag each member is a feature of its own, ``x_i = 1`` for ``sum`` pooling and
``1 / |bag|`` for ``mean``) and every dense feature ``j`` (``x_j`` its value, with a learned
``v_j`` and ``w_j``, as DLRM-style FM implementations treat them). The pairwise term is computed
in ``O(k n)`` with Rendle's identity

.. math::

    \sum_{i<j} \langle v_i, v_j \rangle x_i x_j
      = \tfrac12 \sum_{f=1}^{k} \Big[ \big(\sum_i v_{i,f} x_i\big)^2 - \sum_i v_{i,f}^2 x_i^2 \Big].

``v_i`` of a category is its row in the feature's table (any method; the table looks up each index
of a bag on its own, so within-bag pairs count as the formula says). ``w_i``: ``"tied"``
(default, ``w_i = <v_i, a_f>`` with one learned vector ``a_f`` per feature, so every per-category
parameter stays in the compressed tables) or ``"free"`` (a full ``n x 1`` table per feature).
Every table must be ``embedding_dim`` wide (they are: a built table's width is its spec's
``embedding_dim``) and pool by ``sum`` or ``mean``.

Example::

    >>> import torch
    >>> from compemb.config import EmbeddingBagConfig
    >>> specs = [EmbeddingBagConfig("a", 5, 4), EmbeddingBagConfig("b", 9, 4, method="hash", num_collisions=3)]
    >>> model = FactorizationMachine.build(specs, ["a", "b"], num_dense=2)
    >>> ones = torch.arange(3)
    >>> model(torch.randn(2, 2), [torch.tensor([0, 4]), torch.tensor([8, 1])], [ones, ones]).shape
    torch.Size([2])
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from dlrm.models.base import FIRST_ORDER, TableModel, TableModelConfig

__all__ = ["FactorizationMachine", "pairwise_interaction"]


def pairwise_interaction(sum_vx: torch.Tensor, sum_sq_vx: torch.Tensor) -> torch.Tensor:
    r"""Rendle's identity: ``0.5 * sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]``.

    Shape:
        sum_vx, sum_sq_vx: ``(B, k)``: ``sum_i v_i x_i`` and ``sum_i (v_i x_i)^2``; output ``(B,)``.
    """
    return 0.5 * (sum_vx * sum_vx - sum_sq_vx).sum(1)


class FactorizationMachine(TableModel):
    """A second-order factorization machine (see the module docstring). Build it with :meth:`build`."""

    family = "fm"

    def __init__(self, config: TableModelConfig, *, sparse: bool = False,
                 counts: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        super().__init__(config, sparse=sparse, counts=counts)
        self.first_order = str(config.options.get("first_order", "tied"))
        self.num_fields = len(config.feature_names)
        fields = config.tables[:self.num_fields]
        widths = {int(s.embedding_dim) for s in fields}
        if len(widths) != 1:
            raise ValueError(f"fm: every table must have one embedding_dim, got "
                             f"{ {s.name: s.embedding_dim for s in fields} }")
        for s in fields:
            if s.mode not in ("sum", "mean"):
                raise ValueError(f"fm: table {s.name!r} pools by {s.mode!r}; a factorization machine needs 'sum' or 'mean'")
        d = widths.pop()
        self.embedding_dim = d
        self.bias = nn.Parameter(torch.zeros(()))
        self.dense_weights = nn.Parameter(torch.zeros(config.num_dense))
        # small random v_j: a zero one would get no gradient through the pairwise term
        self.dense_vectors = nn.Parameter(torch.randn(config.num_dense, d) * 0.01)
        self.first_order_vectors = (nn.Parameter(torch.zeros(self.num_fields, d)) if self.first_order == "tied"
                                    else None)

    @classmethod
    def build(cls, specs: Sequence[Any], feature_names: Sequence[str], num_dense: int, *,
              first_order: str = "tied", sparse: bool = False,
              counts: Optional[Mapping[str, torch.Tensor]] = None) -> FactorizationMachine:
        """An FM over all of the data set's features, one table per ``specs`` entry."""
        from compemb.config import EmbeddingBagConfig

        if first_order not in FIRST_ORDER:
            raise ValueError(f"fm: first_order must be one of {FIRST_ORDER}, got {first_order!r}")
        if len(specs) != len(feature_names):
            raise ValueError(f"fm: {len(specs)} table specs for {len(feature_names)} features")
        tables: List[Any] = list(specs)
        positions = list(range(len(specs)))
        if first_order == "free":
            tables += [EmbeddingBagConfig(f"{s.name}_w", s.num_embeddings, 1, method="full", mode=s.mode) for s in specs]
            positions += list(range(len(specs)))
        config = TableModelConfig(cls.family, list(feature_names), int(num_dense), tables, positions,
                                  {"first_order": first_order})
        return cls(config, sparse=sparse, counts=counts)

    def _field(self, f: int, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
               batch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature ``f``'s ``(sum_i v_i x_i, sum_i (v_i x_i)^2, sum_i w_i x_i)`` per sample."""
        pos = self.config.table_features[f]
        idx, off = indices[pos], offsets[pos]
        d = self.embedding_dim
        device = idx.device
        lengths = off[1:] - off[:-1]
        nnz = int(idx.numel())
        zeros = torch.zeros(batch, d, device=device, dtype=self.bias.dtype)
        if nnz == 0:
            return zeros, zeros.clone(), torch.zeros(batch, device=device, dtype=self.bias.dtype)
        sample = torch.repeat_interleave(torch.arange(batch, device=device), lengths, output_size=nnz)
        singles = torch.arange(nnz, device=device)
        v = self.embeddings[f](idx, singles)  # every index a bag of its own: v_i
        if self.config.tables[f].mode == "mean":
            x = (1.0 / lengths.clamp(min=1).to(v.dtype))[sample]
        else:
            x = torch.ones(nnz, device=device, dtype=v.dtype)
        vx = v * x.unsqueeze(1)
        s = zeros.index_add(0, sample, vx)
        q = zeros.index_add(0, sample, vx * vx)
        if self.first_order_vectors is not None:
            w = vx @ self.first_order_vectors[f]
        else:
            w = self.embeddings[self.num_fields + f](idx, singles).squeeze(1) * x
        linear = torch.zeros(batch, device=device, dtype=v.dtype).index_add(0, sample, w)
        return s, q, linear

    def forward(self, dense: torch.Tensor, indices: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B,)``: ``w_0 + sum_i w_i x_i + 0.5 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]``."""
        self.check_batch(dense, indices, offsets)
        batch = dense.shape[0]
        dvx = dense.unsqueeze(2) * self.dense_vectors.unsqueeze(0)  # (B, num_dense, k): v_j x_j
        s = dvx.sum(1)
        q = (dvx * dvx).sum(1)
        linear = self.bias + dense @ self.dense_weights
        for f in range(self.num_fields):
            fs, fq, fl = self._field(f, indices, offsets, batch)
            s, q, linear = s + fs, q + fq, linear + fl
        return linear + pairwise_interaction(s, q)
