"""Many compositional embedding bags in one module, optionally in one FBGEMM table-batched lookup.

:class:`CompositionalEmbeddingBagCollection` serves many features (one table spec each, like
TorchRec's ``EmbeddingBagCollection``). With ``backend="fbgemm"`` every component table of every
feature lives in a single FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen`` (TBE), so one kernel
looks up and pools all of them; with a fused optimizer (``"exact_sgd"`` or
``"exact_rowwise_adagrad"``) the update happens inside the backward pass and no gradient tensor
is ever materialised. With ``backend="torch"`` each feature is computed by the reference
:func:`compemb.functional.embedding_bag_codes` (use any ``torch.optim`` optimizer).

Exactness: TBE pools each table on its own, so the collection is exact for ``add`` and ``concat``
with ``sum``/``mean`` pooling, and for ``mult`` with ``compose="after_pool"`` or one-hot bags.
``mode="max"`` is refused at construction; ``mult`` with ``compose="before_pool"`` is accepted
(Criteo features are one-hot) but a bag of more than one index raises, naming the feature.

Example::

    >>> import torch
    >>> from compemb.collection import CompositionalEmbeddingBagCollection
    >>> coll = CompositionalEmbeddingBagCollection(
    ...     [("C1", 1000, 8, 4, "mult", "sum"), ("C2", 50, 8, None, "add", "sum")])
    >>> out = coll([(torch.tensor([[3], [999]]), None), (torch.tensor([[1], [2]]), None)])
    >>> [tuple(o.shape) for o in out]
    [(2, 8), (2, 8)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from compemb import functional as CF
from compemb import partitions

__all__ = ["CompositionalEmbeddingBagCollection", "FeatureSpec", "OPTIMIZERS"]

OPTIMIZERS = (None, "exact_sgd", "exact_rowwise_adagrad")
_METHODS = ("full", "qr", "gqr", "crt")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of the collection, resolved: its family and the component table widths."""

    name: str
    num_embeddings: int
    embedding_dim: int
    family: object
    operation: str
    mode: str
    compose: str
    widths: Tuple[int, ...]

    @property
    def k(self) -> int:
        return self.family.k


def _family_for(name, n, method, num_collisions, k):
    if method not in _METHODS:
        raise ValueError(f"feature {name!r}: method={method!r} is not compositional; the collection "
                         f"serves {_METHODS}")
    if method == "full" or (method == "qr" and num_collisions >= n):
        return partitions.naive(n)
    if method == "qr":
        return partitions.quotient_remainder(n, num_collisions)
    if method == "gqr":
        return partitions.generalized_qr(n, k=k)
    return partitions.chinese_remainder(n, k=k)


def _widths(name, d, k, operation) -> Tuple[int, ...]:
    if operation != "concat" or k == 1:
        return (d,) * k
    if k > d:
        raise ValueError(f"feature {name!r}: concat splits embedding_dim={d} across k={k} tables")
    base, extra = divmod(d, k)
    return tuple(base + (1 if i < extra else 0) for i in range(k))


def _to_spec(item) -> FeatureSpec:
    """An ``EmbeddingBagConfig`` or a tuple ``(name, n, d, family, operation, mode[, compose])``.

    ``family`` in a tuple may be a :class:`~compemb.partitions.PartitionFamily`, an int (the
    ``num_collisions`` of quotient–remainder) or ``None`` (the full table).
    """
    if hasattr(item, "method") and hasattr(item, "num_embeddings"):
        name, n, d = item.name, item.num_embeddings, item.embedding_dim
        family = _family_for(name, n, item.method, item.num_collisions, item.k)
        operation, mode, compose = item.operation, item.mode, item.compose
    elif isinstance(item, (tuple, list)) and len(item) in (6, 7):
        name, n, d, fam, operation, mode = item[:6]
        compose = item[6] if len(item) == 7 else "before_pool"
        if fam is None:
            family = partitions.naive(n)
        elif isinstance(fam, int) and not isinstance(fam, bool):
            family = _family_for(name, n, "qr", fam, 2)
        elif hasattr(fam, "encode") and hasattr(fam, "table_sizes"):
            family = fam
            if family.n != n:
                raise ValueError(f"feature {name!r}: family is over n={family.n}, num_embeddings={n}")
        else:
            raise TypeError(f"feature {name!r}: family must be a PartitionFamily, an int or None, got {fam!r}")
    else:
        raise TypeError(f"expected an EmbeddingBagConfig or a (name, num_embeddings, embedding_dim, "
                        f"family, operation, mode) tuple, got {item!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"feature name must be a non-empty str, got {name!r}")
    CF.check_operation(operation)
    CF.check_mode(mode)
    CF.check_compose(compose)
    if mode == "max":
        raise ValueError(f"feature {name!r}: mode='max' is not served by the collection "
                         "(FBGEMM TBE pools with 'sum' or 'mean' only)")
    widths = _widths(name, d, family.k, operation)
    return FeatureSpec(name, n, d, family, operation, mode, compose, widths)


class CompositionalEmbeddingBagCollection(nn.Module):
    """Compositional embedding bags of many features, batched into one FBGEMM lookup.

    Args:
        configs: one spec per feature: :class:`compemb.config.EmbeddingBagConfig` (methods
            ``full``, ``qr``, ``gqr``, ``crt``) or tuples ``(name, num_embeddings, embedding_dim,
            family, operation, mode[, compose])`` with ``family`` a ``PartitionFamily``, an int
            (quotient–remainder ``num_collisions``) or ``None`` (full table). Names must be unique.
        backend: ``"fbgemm"`` (one TBE over all component tables) or ``"torch"`` (the reference).
        optimizer: fbgemm only: ``"exact_sgd"`` or ``"exact_rowwise_adagrad"`` fuse the update
            into backward (the tables are then not ``nn.Parameter``s); ``None`` keeps dense
            trainable parameters (FBGEMM's dense TBE) for any ``torch.optim`` optimizer.
        learning_rate: the fused optimizer's step size.
        eps: row-wise Adagrad's epsilon.
        sparse: torch backend only: sparse gradients (for ``torch.optim.SparseAdam`` / sparse
            Adagrad / SGD).
        include_last_offset: the ``nn.EmbeddingBag`` meaning, for 1-D inputs with offsets.
        device: where the tables live.

    Shape:
        - input: a list (in config order) or a dict (by name) of ``(indices, offsets)`` pairs
          (``nn.EmbeddingBag`` forms: 2-D ``(B, L)`` with ``None``, or 1-D with offsets), or a
          TorchRec ``KeyedJaggedTensor``-like object (``keys()``, ``values()``, ``offsets()``).
          All features share the batch size ``B``.
        - output: a list (or dict, for dict / KJT input) of ``(B, embedding_dim)`` tensors;
          ``concat=True`` gives one ``(B, sum embedding_dim)`` tensor.

    Example::

        >>> coll = CompositionalEmbeddingBagCollection([("a", 100, 4, 10, "add", "sum")], backend="torch")
        >>> coll([(torch.tensor([[1, 2], [3, 99]]), None)], concat=True).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        configs: Sequence,
        backend: str = "fbgemm",
        optimizer: Optional[str] = None,
        learning_rate: float = 0.01,
        eps: float = 1e-8,
        sparse: bool = False,
        include_last_offset: bool = False,
        device: Union[str, torch.device, None] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        if backend not in ("fbgemm", "torch"):
            raise ValueError(f"backend must be 'fbgemm' or 'torch', got {backend!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if optimizer is not None and backend != "fbgemm":
            raise ValueError(f"optimizer={optimizer!r} is fused into FBGEMM's backward: it needs "
                             f"backend='fbgemm', got backend={backend!r}")
        if sparse and backend != "torch":
            raise ValueError("sparse=True is for backend='torch' (fbgemm fuses the sparse update)")
        if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        self.specs: List[FeatureSpec] = [_to_spec(c) for c in configs]
        if not self.specs:
            raise ValueError("configs is empty: the collection needs at least one feature")
        names = [s.name for s in self.specs]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"duplicate feature name {name!r}")
        self.backend = backend
        self.optimizer = optimizer
        self.learning_rate = float(learning_rate)
        self.eps = float(eps)
        self.sparse = bool(sparse)
        self.include_last_offset = bool(include_last_offset)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self._tables = [(f, t) for f, s in enumerate(self.specs) for t in range(s.k)]
        shapes = [(self.specs[f].family.table_sizes[t], self.specs[f].widths[t]) for f, t in self._tables]
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init = [self._init_table(self.specs[f], r, d, gen) for (f, _), (r, d) in zip(self._tables, shapes)]

        if backend == "torch":
            self.weights = nn.ParameterList([nn.Parameter(w.to(device)) for w in init])
            self.tbe = None
        else:
            self.weights = None
            self.tbe = self._build_tbe(shapes, device)
            with torch.no_grad():
                for dst, src in zip(self.tables(), init):
                    dst.copy_(src)

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _init_table(spec: FeatureSpec, rows: int, dim: int, gen) -> torch.Tensor:
        # the composed vectors get the scale of a full table's U(+-sqrt(1/n)) (compemb.functional)
        bound = CF.init_bound(spec.num_embeddings, spec.k, spec.operation)
        return (torch.rand(rows, dim, generator=gen) * 2 - 1) * bound

    def _build_tbe(self, shapes, device):
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            DenseTableBatchedEmbeddingBagsCodegen,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        # one pooling mode for all tables: SUM, then mean features are divided by bag lengths
        if self.optimizer is None:
            return DenseTableBatchedEmbeddingBagsCodegen(
                shapes, pooling_mode=PoolingMode.SUM, use_cpu=device.type == "cpu",
            ).to(device)
        for f, spec in enumerate(self.specs):
            bad = [d for d in spec.widths if d % 4]
            if bad:
                # padding would change row-wise Adagrad's mean over the row: refuse instead
                raise ValueError(
                    f"feature {spec.name!r}: optimizer={self.optimizer!r} needs component widths that are "
                    f"multiples of 4 (FBGEMM's row alignment), got widths {spec.widths}")
        on_cpu = device.type == "cpu"
        location = EmbeddingLocation.HOST if on_cpu else EmbeddingLocation.DEVICE
        compute = ComputeDevice.CPU if on_cpu else ComputeDevice.CUDA
        opt = {"exact_sgd": EmbOptimType.EXACT_SGD,
               "exact_rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}[self.optimizer]
        return SplitTableBatchedEmbeddingBagsCodegen(
            [(r, d, location, compute) for r, d in shapes],
            optimizer=opt, learning_rate=self.learning_rate, eps=self.eps,
            pooling_mode=PoolingMode.SUM, device=device,
        )

    # -- access -------------------------------------------------------------------------------
    @property
    def feature_names(self) -> List[str]:
        return [s.name for s in self.specs]

    def tables(self, name: Optional[str] = None) -> List[torch.Tensor]:
        """The component tables (live views: writing them changes the module), all or one feature's."""
        if self.backend == "torch":
            all_tables = list(self.weights)
        else:
            all_tables = list(self.tbe.split_embedding_weights())
        if name is None:
            return all_tables
        f = self._index(name)
        return [w for (g, _), w in zip(self._tables, all_tables) if g == f]

    def optimizer_states(self, name: Optional[str] = None) -> List[torch.Tensor]:
        """Row-wise Adagrad's per-row sum of mean squared gradients, per component table."""
        if self.optimizer != "exact_rowwise_adagrad":
            raise ValueError(f"optimizer={self.optimizer!r} keeps no row-wise state")
        states = [s[0] for s in self.tbe.split_optimizer_states()]
        if name is None:
            return states
        f = self._index(name)
        return [s for (g, _), s in zip(self._tables, states) if g == f]

    def _index(self, name: str) -> int:
        for f, s in enumerate(self.specs):
            if s.name == name:
                return f
        raise KeyError(f"no feature named {name!r}; features are {self.feature_names}")

    def num_parameters(self) -> int:
        return sum(r * d for r, d in ((w.shape[0], w.shape[1]) for w in self.tables()))

    # -- forward ------------------------------------------------------------------------------
    def _features(self, features):
        """Normalise the input to a list of ``(indices, offsets)`` in spec order; say if keyed."""
        if hasattr(features, "keys") and hasattr(features, "values") and hasattr(features, "offsets") \
                and callable(getattr(features, "offsets")):
            keys = list(features.keys())
            values, offsets = features.values(), features.offsets()
            B = (offsets.numel() - 1) // max(len(keys), 1)
            pairs = {}
            for i, key in enumerate(keys):
                off = offsets[i * B: (i + 1) * B + 1]
                pairs[key] = (values[off[0]: off[-1]], off - off[0], True)
            features = pairs
        if isinstance(features, Mapping):
            missing = [s.name for s in self.specs if s.name not in features]
            if missing:
                raise KeyError(f"features {missing} missing from the input (got {sorted(features)})")
            items = [features[s.name] for s in self.specs]
            keyed = True
        else:
            items = list(features)
            keyed = False
            if len(items) != len(self.specs):
                raise ValueError(f"expected {len(self.specs)} features {self.feature_names}, got {len(items)}")
        out = []
        for spec, item in zip(self.specs, items):
            if isinstance(item, torch.Tensor):
                item = (item, None)
            indices, offsets = item[0], item[1]
            last = item[2] if len(item) > 2 else self.include_last_offset
            flat, full_offsets, _ = CF.normalize_bag_input(
                indices, offsets, None, last, spec.mode, spec.num_embeddings, f"feature {spec.name!r}")
            out.append((flat, full_offsets))
        sizes = {o.numel() - 1 for _, o in out}
        if len(sizes) != 1:
            raise ValueError(f"all features need one batch size, got {[o.numel() - 1 for _, o in out]}")
        return out, keyed

    def forward(self, features, concat: bool = False):
        pairs, keyed = self._features(features)
        codes = [spec.family.encode(flat) for spec, (flat, _) in zip(self.specs, pairs)]
        if self.backend == "torch":
            outs = []
            tables = self.tables()
            for f, (spec, (_, offsets), c) in enumerate(zip(self.specs, pairs, codes)):
                ws = [w for (g, _), w in zip(self._tables, tables) if g == f]
                outs.append(CF.embedding_bag_codes(c, offsets, ws, spec.operation, spec.mode, spec.compose,
                                                   sparse=self.sparse))
        else:
            outs = self._forward_tbe(pairs, codes)
        if concat:
            return torch.cat(outs, dim=1)
        if keyed:
            return {s.name: o for s, o in zip(self.specs, outs)}
        return outs

    def _forward_tbe(self, pairs, codes):
        B = pairs[0][1].numel() - 1
        idx_parts, off_parts = [], []
        base = 0
        for spec, (_, offsets), c in zip(self.specs, pairs, codes):
            lengths = offsets[1:] - offsets[:-1]
            if spec.operation == "mult" and spec.compose == "before_pool" and spec.k > 1 \
                    and lengths.numel() and int(lengths.max()) > 1:
                raise ValueError(
                    f"feature {spec.name!r}: operation='mult' with compose='before_pool' is exact on "
                    f"FBGEMM only for one-hot bags, got a bag of {int(lengths.max())} indices "
                    "(use compose='after_pool' or backend='torch')")
            n = c.shape[1]
            for t in range(spec.k):
                idx_parts.append(c[t])
                off_parts.append(offsets[:-1] + base + t * n)
            base += spec.k * n
        device = pairs[0][1].device
        indices = torch.cat(idx_parts).long()
        tbe_offsets = torch.cat(off_parts + [torch.tensor([base], dtype=torch.long, device=device)])
        pooled = self.tbe(indices, tbe_offsets)  # (B, sum of all widths)
        outs = []
        # one split (its backward is one cat), not a slice per feature (a zero-filled copy each)
        blocks = torch.split(pooled, [sum(spec.widths) for spec in self.specs], dim=1)
        for spec, (_, offsets), block in zip(self.specs, pairs, blocks):
            if spec.mode == "mean":
                lengths = (offsets[1:] - offsets[:-1]).clamp(min=1).to(block.dtype)
                block = block / lengths.unsqueeze(1)
            if spec.operation == "concat" or spec.k == 1:
                outs.append(block)
            else:
                parts = torch.split(block, list(spec.widths), dim=1)
                o = parts[0]
                for p in parts[1:]:
                    o = o * p if spec.operation == "mult" else o + p
                outs.append(o)
        assert all(o.shape[0] == B for o in outs)
        return outs

    def extra_repr(self) -> str:
        feats = ", ".join(f"{s.name}:{s.num_embeddings}x{s.embedding_dim}/{s.operation}/k={s.k}" for s in self.specs)
        opt = f", optimizer={self.optimizer!r}, learning_rate={self.learning_rate}" if self.optimizer else ""
        return f"backend={self.backend!r}{opt}, features=[{feats}]"
