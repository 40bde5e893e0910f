"""Matrix factorisation (biased MF, Koren et al. 2009) over two designated features.

``logit = <p_u, q_i> + b_u + b_i + b_0``: ``p_u`` is the (pooled) embedding of the first feature
(the user), ``q_i`` that of the second (the item), each from its own table of any method. The
first-order weights ``b_u``, ``b_i`` are ``"tied"`` (default: ``b_u = <p_u, a_user>``, a learned
vector per feature, so no per-category parameter lives outside the compressed tables) or
``"free"`` (a full ``n x 1`` table per feature). Dense features and the other categorical
features are not used: MF is defined on a (user, item) pair, and a data set without one is
refused when the model is built, naming its features (Criteo-shaped data: designate two features
with ``features``).

Example::

    >>> import torch
    >>> from compemb.config import EmbeddingBagConfig
    >>> specs = [EmbeddingBagConfig("user_id", 5, 4), EmbeddingBagConfig("item_id", 7, 4, method="qr", num_collisions=2)]
    >>> model = MatrixFactorization.build(specs, ["user_id", "item_id"], num_dense=1)
    >>> ones = torch.arange(3)
    >>> model(torch.zeros(2, 1), [torch.tensor([0, 4]), torch.tensor([6, 1])], [ones, ones]).shape
    torch.Size([2])
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from dlrm.models.base import FIRST_ORDER, TableModel, TableModelConfig

__all__ = ["MatrixFactorization", "DEFAULT_PAIR", "pair_positions"]

#: the (user, item) features MF and NCF use by default (MovieLens-100k's)
DEFAULT_PAIR: Tuple[str, str] = ("user_id", "item_id")


def pair_positions(family: str, feature_names: Sequence[str], features: Optional[Sequence[str]]) -> Tuple[int, int]:
    """The batch positions of the (user, item) pair of ``family`` among ``feature_names``.

    Raises:
        ValueError: not two distinct features, or a feature the data set lacks, naming the data
            set's features and how to designate two.
    """
    pair = tuple(DEFAULT_PAIR if features is None else features)
    names = list(feature_names)
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"model {family!r} needs two distinct features (user, item), got {list(pair)}")
    missing = [f for f in pair if f not in names]
    if missing:
        raise ValueError(f"model {family!r} is defined on a (user, item) pair of features; the data set has no "
                         f"{missing} (its features: {names}); designate two with model_options "
                         "{'features': [USER, ITEM]} (compemb train --model-features USER,ITEM)")
    return names.index(pair[0]), names.index(pair[1])


def _bias_spec(spec: Any) -> Any:
    from compemb.config import EmbeddingBagConfig

    return EmbeddingBagConfig(f"{spec.name}_bias", spec.num_embeddings, 1, method="full", mode=spec.mode)


class MatrixFactorization(TableModel):
    """Biased matrix factorisation on a (user, item) pair (see the module docstring).

    Build it with :meth:`build`; its tables are ``[user, item]`` (+ ``[user_bias, item_bias]``
    with ``first_order="free"``).
    """

    family = "mf"

    def __init__(self, config: TableModelConfig, *, sparse: bool = False,
                 counts: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        super().__init__(config, sparse=sparse, counts=counts)
        user, item = config.tables[0], config.tables[1]
        if user.embedding_dim != item.embedding_dim:
            raise ValueError(f"mf: the user and item tables must be equally wide, got {user.name!r} "
                             f"{user.embedding_dim} and {item.name!r} {item.embedding_dim}")
        self.first_order = str(config.options.get("first_order", "tied"))
        self.bias = nn.Parameter(torch.zeros(()))
        # tied first-order weights: b_u = <p_u, a_user>, b_i = <q_i, a_item>
        self.first_order_vectors = nn.Parameter(torch.zeros(2, user.embedding_dim)) if self.first_order == "tied" else None

    @classmethod
    def build(cls, specs: Sequence[Any], feature_names: Sequence[str], num_dense: int, *,
              features: Optional[Sequence[str]] = None, first_order: str = "tied", sparse: bool = False,
              counts: Optional[Mapping[str, torch.Tensor]] = None) -> MatrixFactorization:
        """MF over the data set's table ``specs`` (one per feature, in ``feature_names`` order).

        Args:
            features: the (user, item) pair (default ``("user_id", "item_id")``).
            first_order: ``"tied"`` or ``"free"`` (:data:`dlrm.models.base.FIRST_ORDER`).
        """
        if first_order not in FIRST_ORDER:
            raise ValueError(f"mf: first_order must be one of {FIRST_ORDER}, got {first_order!r}")
        u, i = pair_positions(cls.family, feature_names, features)
        tables: List[Any] = [specs[u], specs[i]]
        positions = [u, i]
        if first_order == "free":
            tables += [_bias_spec(specs[u]), _bias_spec(specs[i])]
            positions += [u, i]
        options: Dict[str, Any] = {"features": [feature_names[u], feature_names[i]], "first_order": first_order}
        config = TableModelConfig(cls.family, list(feature_names), int(num_dense), tables, positions, options)
        return cls(config, sparse=sparse, counts=counts)

    def forward(self, dense: torch.Tensor, indices: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B,)``: ``<p_u, q_i> + b_u + b_i + b_0``."""
        self.check_batch(dense, indices, offsets)
        p = self.lookup(0, indices, offsets)
        q = self.lookup(1, indices, offsets)
        logit = (p * q).sum(1) + self.bias
        if self.first_order_vectors is not None:
            logit = logit + p @ self.first_order_vectors[0] + q @ self.first_order_vectors[1]
        else:
            logit = logit + self.lookup(2, indices, offsets).squeeze(1) + self.lookup(3, indices, offsets).squeeze(1)
        return logit

