"""Neural collaborative filtering: NeuMF (He et al., WWW 2017) over a (user, item) pair.

Two branches with embeddings of their own, as in the paper:

- GMF: ``phi_GMF = p_u^G * q_i^G`` (element-wise);
- MLP: ``phi_MLP = a_L(W_L^T ( ... a_1(W_1^T [p_u^M; q_i^M] + b_1) ...) + b_L)`` with ReLU layers;

``logit = h^T [phi_GMF; phi_MLP] + b``. All four tables (``user``, ``item`` for GMF, ``user_mlp``,
``item_mlp`` for the MLP) are built from the data set's table specs of the two features, so any
method and ``compression=R`` apply to both branches. The MLP's widths are the ``mlp`` option
(``compemb train``: ``--arch-mlp-top`` without its final 1; ``()``: ``phi_MLP`` is the
concatenation itself). Dense features and the other categorical features are not used; the pair
is designated as for MF (:func:`dlrm.models.mf.pair_positions`).

Example::

    >>> import torch
    >>> from compemb.config import EmbeddingBagConfig
    >>> specs = [EmbeddingBagConfig("user_id", 5, 4), EmbeddingBagConfig("item_id", 7, 4)]
    >>> model = NeuMF.build(specs, ["user_id", "item_id"], num_dense=1, mlp=(8, 4))
    >>> ones = torch.arange(3)
    >>> model(torch.zeros(2, 1), [torch.tensor([0, 4]), torch.tensor([6, 1])], [ones, ones]).shape
    torch.Size([2])
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import nn

from dlrm.models.base import TableModel, TableModelConfig, reset_linear
from dlrm.models.mf import pair_positions

__all__ = ["NeuMF"]


class NeuMF(TableModel):
    """NeuMF (see the module docstring). Build it with :meth:`build`; tables ``[user, item,
    user_mlp, item_mlp]``."""

    family = "ncf"

    def __init__(self, config: TableModelConfig, *, sparse: bool = False,
                 counts: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        super().__init__(config, sparse=sparse, counts=counts)
        widths = [int(s.embedding_dim) for s in config.tables]
        if len(set(widths[:2])) != 1:
            raise ValueError(f"ncf: the GMF user and item tables must be equally wide, got {widths[:2]}")
        mlp = tuple(int(w) for w in config.options.get("mlp", ()))
        sizes = (widths[2] + widths[3],) + mlp
        layers: List[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.predict_layer = nn.Linear(widths[0] + sizes[-1], 1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                reset_linear(module)

    @classmethod
    def build(cls, specs: Sequence[Any], feature_names: Sequence[str], num_dense: int, *,
              features: Optional[Sequence[str]] = None, mlp: Sequence[int] = (64, 32, 16), sparse: bool = False,
              counts: Optional[Mapping[str, torch.Tensor]] = None) -> NeuMF:
        """NeuMF over the pair's table specs (``specs``: one per feature, in ``feature_names`` order).

        Args:
            features: the (user, item) pair (default ``("user_id", "item_id")``).
            mlp: the MLP branch's layer widths after the concatenated embeddings.
        """
        widths = tuple(int(w) for w in mlp)
        if any(w < 1 for w in widths):
            raise ValueError(f"ncf: mlp widths must be >= 1, got {list(mlp)}")
        u, i = pair_positions(cls.family, feature_names, features)
        gmf = [specs[u], specs[i]]
        mlp_tables = [dataclasses.replace(s, name=f"{s.name}_mlp") for s in gmf]
        options = {"features": [feature_names[u], feature_names[i]], "mlp": list(widths)}
        config = TableModelConfig(cls.family, list(feature_names), int(num_dense), gmf + mlp_tables, [u, i, u, i], options)
        return cls(config, sparse=sparse, counts=counts)

    def forward(self, dense: torch.Tensor, indices: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B,)``: ``h^T [p^G * q^G; MLP([p^M; q^M])] + b``."""
        self.check_batch(dense, indices, offsets)
        gmf = self.lookup(0, indices, offsets) * self.lookup(1, indices, offsets)
        mlp = self.mlp(torch.cat([self.lookup(2, indices, offsets), self.lookup(3, indices, offsets)], dim=1))
        return self.predict_layer(torch.cat([gmf, mlp], dim=1)).squeeze(1)
