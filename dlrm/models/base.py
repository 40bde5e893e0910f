"""What the model families over compemb's tables share: building the tables, reading a batch,
parameter accounting, sparse gradients.

A :class:`TableModel` takes the batches of :mod:`dlrm.data` (``dense``, one index and one offset
tensor per categorical feature of the data set, in its order) and returns one logit per sample,
as :class:`dlrm.model.DLRM` does, so the training loop, the metrics and the checkpoints of
:mod:`dlrm.train` serve every family alike. Each table is built from its
:class:`compemb.config.EmbeddingBagConfig` by :func:`compemb.config.build_embedding_bag`, so any
method (and ``compression=R``) works in any family.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from dlrm.tables import sparse_gradient_parameters

__all__ = ["TableModelConfig", "TableModel", "FIRST_ORDER", "sparse_gradient_parameters", "reset_linear"]

#: how a family gets a category's first-order weight (MF's biases, FM's ``w_i``): ``"tied"`` reads it
#: from the category's embedding, ``w_i = <v_i, a_f>`` with a learned vector ``a_f`` per feature (every
#: per-category parameter stays in the compressed table); ``"free"``: a full ``n x 1`` table per feature
FIRST_ORDER: Tuple[str, ...] = ("tied", "free")


@dataclass
class TableModelConfig:
    """The architecture of a :class:`TableModel`.

    Args:
        family: ``"mf"``, ``"fm"`` or ``"ncf"``.
        feature_names: every categorical feature of the data set, in batch order.
        num_dense: the data set's number of dense features.
        tables: the :class:`compemb.config.EmbeddingBagConfig` of every table the model holds, in
            its order (the family decides which features get tables, and how many).
        table_features: for every table, the position in ``feature_names`` of the feature it embeds.
        options: the family's options (see each family).
    """

    family: str
    feature_names: List[str]
    num_dense: int
    tables: List[Any]
    table_features: List[int]
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.tables) != len(self.table_features):
            raise ValueError(f"{len(self.tables)} tables but {len(self.table_features)} table features")
        for i in self.table_features:
            if not 0 <= i < len(self.feature_names):
                raise ValueError(f"table feature position {i} outside the {len(self.feature_names)} features")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able view (tables as dicts)."""
        out = asdict(self)
        out["tables"] = [asdict(t) for t in self.tables]
        return out


def reset_linear(linear: nn.Linear) -> None:
    """DLRM's initialisation (Naumov et al.): ``W ~ N(0, sqrt(2 / (fan_in + fan_out)))``,
    ``b ~ N(0, sqrt(1 / fan_out))``."""
    fan_out, fan_in = linear.weight.shape
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        if linear.bias is not None:
            linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out))


class TableModel(nn.Module):
    """The base of the families: its tables, the batch contract and the parameter accounting.

    Subclasses build their own dense parameters and implement :meth:`forward`.

    Args:
        config: a :class:`TableModelConfig`.
        sparse: sparse gradients for the tables that support them.
        counts: ``{feature name: (n,) counts of the training split}`` for ``freq`` tables.

    Shape:
        dense: ``(B, num_dense)``; ``indices[f]`` / ``offsets[f]`` for every feature of the data
        set (``(B + 1,)`` offsets); output ``(B,)`` logits.
    """

    family: ClassVar[str] = ""
    #: no table-batched collection: one module per table (the fused optimizers need a DLRM)
    collection: None = None

    def __init__(self, config: TableModelConfig, *, sparse: bool = False,
                 counts: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        super().__init__()
        from compemb.config import build_embedding_bag

        self.config = config
        self.embeddings = nn.ModuleList()
        self._sparse_params: List[nn.Parameter] = []
        counts = counts or {}
        for spec, pos in zip(config.tables, config.table_features):
            feature = config.feature_names[pos]
            bag = build_embedding_bag(spec, sparse=sparse, counts=counts.get(feature))
            self.embeddings.append(bag)
            if sparse:
                self._sparse_params.extend(sparse_gradient_parameters(bag))

    # -- the batch ---------------------------------------------------------------------------
    def check_batch(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> None:
        """Refuse a batch of another data set's shape, naming what differs."""
        f = len(self.config.feature_names)
        if len(indices) != f or len(offsets) != f:
            raise ValueError(f"{self.family}: expected {f} index and offset tensors (one per feature of the data set), "
                             f"got {len(indices)} and {len(offsets)}")
        if dense.dim() != 2 or dense.shape[1] != self.config.num_dense:
            raise ValueError(f"{self.family}: dense must be (B, {self.config.num_dense}), got {tuple(dense.shape)}")

    def lookup(self, table: int, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Table ``table``'s pooled vectors of the batch, ``(B, width)``."""
        pos = self.config.table_features[table]
        # the batch carries (B + 1,) offsets; the modules take the B starts
        return self.embeddings[table](indices[pos], offsets[pos][:-1])

    # -- accounting (the names dlrm.train reads) ----------------------------------------------
    def table_parameters(self) -> Dict[str, int]:
        """Parameters of each table (name -> count)."""
        return {spec.name: sum(p.numel() for p in bag.parameters())
                for spec, bag in zip(self.config.tables, self.embeddings)}

    def embedding_parameters(self) -> int:
        """Parameters of all tables."""
        return sum(self.table_parameters().values())

    def embedding_bytes(self) -> int:
        """Bytes of all tables' parameters."""
        return sum(p.numel() * p.element_size() for bag in self.embeddings for p in bag.parameters())

    def full_table_parameters(self) -> int:
        """Parameters the tables would have uncompressed: ``sum(rows * embedding_dim)``."""
        return sum(int(s.num_embeddings) * int(s.embedding_dim) for s in self.config.tables)

    def num_parameters(self) -> int:
        """All parameters."""
        return sum(p.numel() for p in self.parameters())

    def mlp_parameters(self) -> int:
        """Parameters outside the tables (weights, biases, MLPs; the DLRM's name for them)."""
        return self.num_parameters() - self.embedding_parameters()

    def sparse_parameters(self) -> List[nn.Parameter]:
        """Parameters that receive sparse gradients (empty unless built with ``sparse=True``)."""
        return list(self._sparse_params)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, dense: torch.Tensor, indices: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Click probabilities ``(B,)``."""
        return torch.sigmoid(self.forward(dense, indices, offsets))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy from logits."""
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
