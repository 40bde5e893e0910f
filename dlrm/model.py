"""The DLRM of Naumov et al. (arXiv 1906.00091) over compemb's embedding bags.

A bottom MLP maps the dense features to a ``d``-wide vector; one embedding bag per categorical
feature maps its bag of ids to a vector; the interaction either takes the pairwise dot products of
all these vectors (lower triangle, with or without the diagonal) or concatenates them; a top MLP
maps the result to one logit, and ``sigmoid`` gives the click probability.

Every table is built from its own :class:`compemb.config.EmbeddingBagConfig` (any mix of methods).
For the ``dot`` interaction a table whose width is not ``d`` gets a bias-free projection to ``d``,
so a size threshold never breaks the interaction (see ``docs/architecture.md``).

Example::

    >>> import torch
    >>> from dlrm.model import DLRM, DLRMConfig, table_specs
    >>> specs = table_specs([1000, 10], 8, method="qr", threshold=100, num_collisions=4)
    >>> model = DLRM(DLRMConfig(num_dense=3, bottom_mlp=(16, 8), top_mlp=(16, 1), tables=specs))
    >>> idx, offs = [torch.tensor([1, 999]), torch.tensor([0, 9])], [torch.tensor([0, 1, 2])] * 2
    >>> model(torch.randn(2, 3), idx, offs).shape
    torch.Size([2])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from compemb.kernels import get_collection_backend
from compemb.options import BACKENDS, FUSED_OPTIMIZERS, METHODS
from dlrm.models.base import reset_linear
from dlrm.tables import build_collection, build_table, enable_sparse, probe_output_width, table_specs

if TYPE_CHECKING:
    from compemb.collection import CompositionalEmbeddingBagCollection

__all__ = [
    "DLRM",
    "COLLECTION_BACKENDS",
    "DLRMConfig",
    "table_specs",
    "interaction_output_dim",
    "dot_interaction",
    "METHODS",
    "INTERACTIONS",
]

INTERACTIONS = ("dot", "cat")
#: backends of :class:`compemb.collection.CompositionalEmbeddingBagCollection` a DLRM can serve its
#: tables from (``None``: one compemb module per table, which is what the torch collection would be)
COLLECTION_BACKENDS: Tuple[Optional[str], ...] = (None,) + tuple(b for b in BACKENDS if b != "torch")


@dataclass
class DLRMConfig:
    """Architecture of a :class:`DLRM`.

    Args:
        num_dense: number of dense features (0: no bottom MLP; the interaction then uses the
            embeddings only).
        bottom_mlp: layer widths of the bottom MLP after the input (DLRM's ``--arch-mlp-bot``
            without its first entry); the last one is the interaction width ``d`` for ``dot``.
        top_mlp: layer widths of the top MLP after the interaction (DLRM's ``--arch-mlp-top``);
            must end in 1 (the logit).
        tables: one :class:`compemb.config.EmbeddingBagConfig` per categorical feature, in the
            order of the batch's ``indices``.
        interaction: ``"dot"`` or ``"cat"``.
        interaction_itself: ``dot`` only: include each vector's dot product with itself.
        arch_sparse_feature_size: the interaction width ``d``; ``None`` takes the last bottom
            MLP width, or (without dense features) the tables' ``embedding_dim``.
        dlrm_compatible_qr: build ``method="qr"`` tables with the DLRM-compatible
            :class:`compemb.modules.QREmbeddingBag` (``concat`` returns ``2 * embedding_dim``
            columns, projected to ``d`` for the dot interaction).
        sparse: ask embedding modules for sparse gradients where they support them.
        fused_optimizer: ``None``, or ``"exact_rowwise_adagrad"`` / ``"exact_sgd"``: the
            collection's optimizer updates the tables inside the backward pass (the tables are
            then no ``nn.Parameter``). Without ``collection_backend`` it means ``"fbgemm"``;
            ``collection_backend="triton"`` fuses ``"exact_sgd"`` only.
        fused_learning_rate: the fused optimizer's step size.
        collection_backend: ``None`` (one compemb module per table, unless ``fused_optimizer``
            asks for FBGEMM), ``"fbgemm"`` or ``"triton"``: serve all tables from one
            :class:`compemb.collection.CompositionalEmbeddingBagCollection` with that backend.
            Without a fused optimizer the tables stay trainable parameters with dense gradients
            (triton: one flat ``weight``) for any ``torch.optim`` optimizer. The collection serves
            methods ``full``, ``qr``, ``gqr``, ``crt`` with ``sum``/``mean`` pooling; triton also
            needs one ``embedding_dim`` for all tables and one operation among the compressed
            ones. Other configurations are refused when the :class:`DLRM` is built, with an
            error naming the table. Triton on CPU needs ``TRITON_INTERPRET=1`` set before triton
            is imported (slow; on CUDA the kernels compile).
    """

    num_dense: int
    bottom_mlp: Tuple[int, ...]
    top_mlp: Tuple[int, ...]
    tables: list = field(default_factory=list)
    interaction: str = "dot"
    interaction_itself: bool = False
    arch_sparse_feature_size: Optional[int] = None
    dlrm_compatible_qr: bool = False
    sparse: bool = False
    fused_optimizer: Optional[str] = None
    fused_learning_rate: float = 0.01
    collection_backend: Optional[str] = None

    @property
    def resolved_collection_backend(self) -> Optional[str]:
        """The collection backend actually used: ``collection_backend``, or ``"fbgemm"`` when only
        ``fused_optimizer`` is set; ``None``: one module per table."""
        if self.collection_backend is not None:
            return self.collection_backend
        return "fbgemm" if self.fused_optimizer is not None else None

    def __post_init__(self) -> None:
        self.bottom_mlp = tuple(int(x) for x in self.bottom_mlp)
        self.top_mlp = tuple(int(x) for x in self.top_mlp)
        self.tables = list(self.tables)
        if isinstance(self.num_dense, bool) or not isinstance(self.num_dense, int) or self.num_dense < 0:
            raise ValueError(f"num_dense must be a non-negative int, got {self.num_dense!r}")
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        for name, sizes in (("bottom_mlp", self.bottom_mlp), ("top_mlp", self.top_mlp)):
            for s in sizes:
                if s < 1:
                    raise ValueError(f"{name} widths must be >= 1, got {sizes}")
        if self.num_dense > 0 and not self.bottom_mlp:
            raise ValueError("bottom_mlp must not be empty when num_dense > 0")
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end in 1 (the logit), got {self.top_mlp}")
        if not self.tables and self.num_dense == 0:
            raise ValueError("a DLRM needs dense features or at least one table")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate table names {dup}")
        if self.arch_sparse_feature_size is None:
            if self.num_dense > 0:
                self.arch_sparse_feature_size = self.bottom_mlp[-1]
            else:
                self.arch_sparse_feature_size = int(self.tables[0].embedding_dim)
        d = int(self.arch_sparse_feature_size)
        if d < 1:
            raise ValueError(f"arch_sparse_feature_size must be >= 1, got {d}")
        self.arch_sparse_feature_size = d
        if self.fused_optimizer is not None and self.fused_optimizer not in FUSED_OPTIMIZERS:
            raise ValueError(
                f"fused_optimizer must be None or one of {FUSED_OPTIMIZERS}, got {self.fused_optimizer!r}"
            )
        if self.fused_optimizer is not None and (self.sparse or self.dlrm_compatible_qr):
            raise ValueError("fused_optimizer excludes sparse and dlrm_compatible_qr (FBGEMM updates the tables itself)")
        if self.collection_backend not in COLLECTION_BACKENDS:
            raise ValueError(
                f"collection_backend must be one of {COLLECTION_BACKENDS}, got {self.collection_backend!r}"
            )
        backend = self.resolved_collection_backend
        if backend is not None:
            if self.sparse or self.dlrm_compatible_qr:
                raise ValueError(
                    f"collection_backend={backend!r} excludes sparse and dlrm_compatible_qr (the collection "
                    "serves compemb's generic tables with dense gradients or a fused optimizer)"
                )
            fused = get_collection_backend(backend).fused_optimizers
            if self.fused_optimizer is not None and self.fused_optimizer not in fused:
                raise ValueError(
                    f"fused_optimizer={self.fused_optimizer!r} is not fused by collection_backend={backend!r} "
                    f"(it fuses {fused})"
                )
        if self.interaction == "dot" and self.num_dense > 0 and self.bottom_mlp[-1] != d:
            raise ValueError(
                f"dot interaction needs the bottom MLP output width ({self.bottom_mlp[-1]}) to equal "
                f"arch_sparse_feature_size ({d})"
            )

    def to_dict(self) -> dict:
        """A JSON-able view (tables as dicts)."""
        out = dataclasses.asdict(self)
        out["tables"] = [dataclasses.asdict(t) for t in self.tables]
        return out


def _mlp(sizes: Sequence[int], sigmoid_last: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        layers.append(linear)
        last = i == len(sizes) - 2
        if not (last and sigmoid_last):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def interaction_output_dim(num_vectors: int, d: int, itself: bool, has_dense: bool) -> int:
    """Width of the dot interaction's output for ``num_vectors`` vectors of width ``d``.

    The pairs of the lower triangle (``F (F - 1) / 2``, or ``F (F + 1) / 2`` with the diagonal),
    plus the bottom MLP's output (``d``) when there are dense features.
    """
    pairs = num_vectors * (num_vectors + 1) // 2 if itself else num_vectors * (num_vectors - 1) // 2
    return pairs + (d if has_dense else 0)


def dot_interaction(vectors: torch.Tensor, itself: bool = False) -> torch.Tensor:
    """Pairwise dot products of ``F`` vectors per sample, lower triangle flattened.

    Shape:
        vectors: ``(B, F, d)``; output ``(B, F (F - 1) / 2)`` (``(B, F (F + 1) / 2)`` with
        ``itself``), pairs ordered row by row: (1,0), (2,0), (2,1), ...
    """
    b, f, _ = vectors.shape
    z = torch.bmm(vectors, vectors.transpose(1, 2))
    offset = 0 if itself else -1
    li, lj = torch.tril_indices(f, f, offset=offset, device=vectors.device)
    return z[:, li, lj]


class DLRM(nn.Module):
    """Deep Learning Recommendation Model (Naumov et al., arXiv 1906.00091).

    Args:
        config: a :class:`DLRMConfig`.
        device: where a collection's tables are built (``config.collection_backend``; the
            triton backend on CUDA needs its tables there from the start). The rest is built on
            the CPU: move the model with ``.to(device)`` as usual.
        counts: ``{table name: (n,) occurrence counts of the training split}`` for ``freq``
            tables (:func:`dlrm.counts.training_counts`); the other tables ignore it.

    Shape:
        dense: ``(B, num_dense)`` float; ``indices[i]``: 1-D int64 ids of table ``i``;
        ``offsets[i]``: ``(B + 1,)`` int64 (or ``(B,)`` starts, as ``nn.EmbeddingBag``).
        Output: ``(B,)`` logits from :meth:`forward`; :meth:`predict` gives probabilities.

    Example::

        >>> import torch
        >>> from dlrm.model import DLRM, DLRMConfig, table_specs
        >>> model = DLRM(DLRMConfig(2, (4,), (1,), table_specs([7], 4)))
        >>> model.predict(torch.ones(3, 2), [torch.tensor([0, 1, 6])], [torch.tensor([0, 1, 2, 3])]).shape
        torch.Size([3])
    """

    def __init__(self, config: DLRMConfig, device: Union[str, torch.device, None] = None,
                 counts: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if not isinstance(config, DLRMConfig):
            raise TypeError(f"config must be a DLRMConfig, got {type(config).__name__}")
        self.config = config
        d = config.arch_sparse_feature_size
        assert d is not None  # set by DLRMConfig.__post_init__
        self.bottom = (
            _mlp((config.num_dense,) + config.bottom_mlp, sigmoid_last=False)
            if config.num_dense > 0 else None
        )
        self.embeddings = nn.ModuleList()
        self.projections = nn.ModuleDict()
        self.table_widths: List[int] = []
        self._sparse_params: List[nn.Parameter] = []
        self.collection: Optional[CompositionalEmbeddingBagCollection] = None
        if config.resolved_collection_backend is not None:
            self.collection = build_collection(config, device)
            for i, spec in enumerate(config.tables):
                self.table_widths.append(int(spec.embedding_dim))
                if config.interaction == "dot" and spec.embedding_dim != d:
                    self.projections[str(i)] = nn.Linear(spec.embedding_dim, d, bias=False)
        for i, spec in enumerate(config.tables if self.collection is None else []):
            self.embeddings.append(build_table(spec, config.dlrm_compatible_qr, config.sparse,
                                                (counts or {}).get(spec.name)))
            self.table_widths.append(0)
            self._adopt_table(i)
        if config.interaction == "dot":
            num_vectors = len(config.tables) + (1 if self.bottom is not None else 0)
            top_in = interaction_output_dim(
                num_vectors, d, config.interaction_itself, self.bottom is not None
            )
        else:
            top_in = sum(self.table_widths) + (config.bottom_mlp[-1] if self.bottom is not None else 0)
        self.top = _mlp((top_in,) + config.top_mlp, sigmoid_last=True)
        self.reset_mlp_parameters()

    def _adopt_table(self, i: int) -> None:
        bag = self.embeddings[i]
        sparse_ids = {id(p) for p in self._sparse_params}
        self._sparse_params.extend(p for p in enable_sparse(bag, self.config.sparse) if id(p) not in sparse_ids)
        width = probe_output_width(bag)
        self.table_widths[i] = width
        key = str(i)
        if key in self.projections:
            del self.projections[key]
        d_out = self.config.arch_sparse_feature_size
        assert d_out is not None  # set by DLRMConfig.__post_init__
        if self.config.interaction == "dot" and width != d_out:
            proj = nn.Linear(width, d_out, bias=False)
            reset_linear(proj)
            self.projections[key] = proj

    def replace_table(self, i: int, module: nn.Module) -> None:
        """Swap table ``i`` for another module (e.g. a hashed table of an exact bucket count).

        For the ``dot`` interaction a width different from ``d`` gets a projection; for ``cat``
        the width must stay the same (the top MLP's input is fixed).
        """
        if not 0 <= i < len(self.embeddings):
            raise IndexError(f"table index {i} out of range for {len(self.embeddings)} tables")
        old_width = self.table_widths[i]
        old_ids = {id(p) for p in self.embeddings[i].parameters()}
        self._sparse_params = [p for p in self._sparse_params if id(p) not in old_ids]
        self.embeddings[i] = module
        self._adopt_table(i)
        if self.config.interaction == "cat" and self.table_widths[i] != old_width:
            raise ValueError(
                f"replacement table {i} is {self.table_widths[i]} wide, the cat interaction needs {old_width}"
            )

    def reset_mlp_parameters(self) -> None:
        """Re-draw the MLP and projection weights with DLRM's initialisation."""
        for module in list(self.top.modules()) + list(self.projections.modules()) + (
            list(self.bottom.modules()) if self.bottom is not None else []
        ):
            if isinstance(module, nn.Linear):
                reset_linear(module)

    # -- parameter accounting ------------------------------------------------------------------
    def table_parameters(self) -> Dict[str, int]:
        """Parameters of each embedding table (name -> count), projections excluded."""
        if self.collection is not None:
            return {spec.name: sum(w.numel() for w in self.collection.tables(spec.name))
                    for spec in self.config.tables}
        return {
            spec.name: sum(p.numel() for p in bag.parameters())
            for spec, bag in zip(self.config.tables, self.embeddings)
        }

    def embedding_parameters(self) -> int:
        """Parameters (trainable entries) of all embedding tables."""
        return sum(self.table_parameters().values())

    def embedding_bytes(self) -> int:
        """Bytes of all embedding tables' parameters (their dtypes' sizes), projections excluded."""
        if self.collection is not None:
            return sum(w.numel() * w.element_size() for spec in self.config.tables
                       for w in self.collection.tables(spec.name))
        return sum(p.numel() * p.element_size() for bag in self.embeddings for p in bag.parameters())

    def full_table_parameters(self) -> int:
        """Parameters the tables would have uncompressed: ``sum(rows * embedding_dim)``."""
        return sum(int(spec.num_embeddings) * int(spec.embedding_dim) for spec in self.config.tables)

    def mlp_parameters(self) -> int:
        """Parameters of the bottom MLP, the top MLP and the width projections."""
        mods = [self.top, self.projections] + ([self.bottom] if self.bottom is not None else [])
        return sum(p.numel() for m in mods for p in m.parameters())

    def num_parameters(self) -> int:
        """All parameters (``embedding_parameters() + mlp_parameters()``)."""
        return self.embedding_parameters() + self.mlp_parameters()

    def sparse_parameters(self) -> List[nn.Parameter]:
        """Parameters that receive sparse gradients (empty unless ``config.sparse``)."""
        return list(self._sparse_params)

    # -- forward -------------------------------------------------------------------------------
    def embed(self, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The (projected) output of every table, each ``(B, width)``."""
        num_tables = len(self.config.tables)
        if len(indices) != num_tables or len(offsets) != num_tables:
            raise ValueError(
                f"expected {num_tables} index and offset tensors, got "
                f"{len(indices)} and {len(offsets)}"
            )
        if self.collection is not None:
            raw = self.collection(list(zip(indices, offsets)))
        else:
            # The batch format carries (B + 1,) offsets; nn.EmbeddingBag-style modules take the
            # B starts (include_last_offset is not universal), so drop the last entry.
            raw = [bag(idx, off[:-1]) for bag, idx, off in zip(self.embeddings, indices, offsets)]
        return self.project(raw)

    def project(self, outputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The tables' outputs (one ``(B, width)`` per table, in table order), each projected to
        ``d`` where its width differs (the ``dot`` interaction's projections)."""
        outs = []
        for i, y in enumerate(outputs):
            key = str(i)
            if key in self.projections:
                y = self.projections[key](y)
            outs.append(y)
        return outs

    def forward(self, dense: torch.Tensor, indices: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B,)``; use :meth:`predict` for probabilities (:meth:`head` checks ``dense``)."""
        return self.head(dense, self.embed(indices, offsets))

    def _check_dense(self, dense: torch.Tensor) -> None:
        if dense.dim() != 2 or dense.shape[1] != self.config.num_dense:
            raise ValueError(
                f"dense must be (B, {self.config.num_dense}), got {tuple(dense.shape)}"
            )

    def head(self, dense: torch.Tensor, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B,)`` from the dense features and the (projected) table outputs: the bottom
        MLP, the interaction and the top MLP (what :meth:`forward` does after :meth:`embed`; a
        sharded model looks its tables up elsewhere and calls this)."""
        self._check_dense(dense)
        vectors = list(vectors)
        if self.bottom is not None:
            x = self.bottom(dense)
            vectors = [x] + vectors
        else:
            x = None
        if self.config.interaction == "dot":
            z = dot_interaction(torch.stack(vectors, dim=1), self.config.interaction_itself)
            r = torch.cat([x, z], dim=1) if x is not None else z
        else:
            r = torch.cat(vectors, dim=1)
        return self.top(r).squeeze(-1)

    def predict(self, dense, indices, offsets) -> torch.Tensor:
        """Click probabilities ``(B,)``."""
        return torch.sigmoid(self.forward(dense, indices, offsets))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy, computed from logits for numerical stability."""
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
