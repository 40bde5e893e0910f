"""Many compositional embedding bags in one module, in one FBGEMM or Triton table-batched lookup.

:class:`CompositionalEmbeddingBagCollection` serves many features (one table spec each, like
TorchRec's ``EmbeddingBagCollection``). With ``backend="fbgemm"`` every component table of every
feature lives in a single FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen`` (TBE), so one kernel
looks up and pools all of them; with a fused optimizer (``"exact_sgd"`` or
``"exact_rowwise_adagrad"``) the update happens inside the backward pass and no gradient tensor
is ever materialised. With ``backend="triton"`` every component table lives in one flat buffer
and one fused Triton launch (:mod:`compemb.kernels._triton_tbe`) encodes the raw indices in the
kernel, gathers, combines and pools all features (one more launch for backward, with an optional
fused ``"exact_sgd"``). With ``backend="torch"`` each feature is computed by the reference
:func:`compemb.functional.embedding_bag_codes` (use any ``torch.optim`` optimizer).

The triton backend is exact for every operation and composition with ``sum``/``mean``; it needs one
``embedding_dim`` for all features, one operation among the features with k > 1 (one
``compose`` among the ``mult`` ones), and partitions of digit form ``(x // P) % m`` (``full``,
``qr``, ``gqr``, ``crt``). Inputs are validated for all features at once, with a single device
sync (``validate=False`` skips it for trusted inputs).

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

__all__ = ["CompositionalEmbeddingBagCollection", "FeatureSpec", "OPTIMIZERS", "BACKENDS"]

OPTIMIZERS = (None, "exact_sgd", "exact_rowwise_adagrad")
BACKENDS = ("fbgemm", "triton", "torch")
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
        backend: ``"fbgemm"`` (one TBE over all component tables), ``"triton"`` (one fused
            Triton launch over a flat buffer of all component tables, encoding in the kernel) or
            ``"torch"`` (the reference).
        optimizer: ``"exact_sgd"`` (fbgemm, triton) or ``"exact_rowwise_adagrad"`` (fbgemm) fuse
            the update into backward (the tables are then not ``nn.Parameter``s); ``None`` keeps
            dense trainable parameters (FBGEMM's dense TBE; triton's flat ``weight``) for any
            ``torch.optim`` optimizer.
        learning_rate: the fused optimizer's step size.
        eps: row-wise Adagrad's epsilon.
        sparse: torch backend only: sparse gradients (for ``torch.optim.SparseAdam`` / sparse
            Adagrad / SGD).
        include_last_offset: the ``nn.EmbeddingBag`` meaning, for 1-D inputs with offsets.
        device: where the tables live.
        seed: seeds the table initialisation.
        validate: triton only: check the indices and offsets of all features before each lookup
            (default ``True``; one batched check, one device sync). ``False`` trusts the input
            (benchmarks): an out-of-range index then reads or writes out of bounds.

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
        validate: bool = True,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if optimizer is not None and backend == "torch":
            raise ValueError(f"optimizer={optimizer!r} is fused into backward: it needs backend='fbgemm' (or "
                             f"'triton' for 'exact_sgd'), got backend={backend!r}")
        if optimizer == "exact_rowwise_adagrad" and backend == "triton":
            raise ValueError("optimizer='exact_rowwise_adagrad' is not fused by backend='triton' (it fuses "
                             "'exact_sgd' only); use backend='fbgemm'")
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
        self.validate = bool(validate)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self._tables = [(f, t) for f, s in enumerate(self.specs) for t in range(s.k)]
        shapes = [(self.specs[f].family.table_sizes[t], self.specs[f].widths[t]) for f, t in self._tables]
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init = [self._init_table(self.specs[f], r, d, gen) for (f, _), (r, d) in zip(self._tables, shapes)]

        self.layout = None
        if backend == "torch":
            self.weights = nn.ParameterList([nn.Parameter(w.to(device)) for w in init])
            self.tbe = None
        elif backend == "triton":
            self.weights = None
            self.tbe = None
            self._build_triton(init, device)
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

    def _build_triton(self, init, device):
        from compemb.kernels import _triton_tbe

        if device.type == "cpu" and not _triton_tbe.INTERPRETED:
            raise ValueError("backend='triton' on CPU needs TRITON_INTERPRET=1 set before triton is imported "
                             "(the compiled kernels run on CUDA)")
        dims = {s.embedding_dim for s in self.specs}
        if len(dims) != 1:
            raise ValueError(f"backend='triton' needs one embedding_dim for all features, got "
                             f"{ {s.name: s.embedding_dim for s in self.specs} }")
        multi = [s for s in self.specs if s.k > 1]
        ops = sorted({s.operation for s in multi})
        if len(ops) > 1:
            raise ValueError(f"backend='triton' serves one operation per collection, got {ops} "
                             f"({ {s.name: s.operation for s in multi} })")
        operation = ops[0] if ops else "add"
        composes = sorted({s.compose for s in multi if s.operation == "mult"})
        if len(composes) > 1:
            raise ValueError(f"backend='triton' serves one compose for the 'mult' features, got {composes}")
        compose = composes[0] if composes else "before_pool"
        widths = [s.widths if s.k > 1 or operation != "concat" else (s.embedding_dim,) for s in self.specs]
        self.layout = _triton_tbe.tbe_layout(
            [s.name for s in self.specs], [s.family for s in self.specs], dims.pop(), operation,
            [s.mode for s in self.specs], compose, widths)
        flat = torch.cat([w.reshape(-1) for w in init]).to(device)
        if self.optimizer is None:
            self.weight = nn.Parameter(flat)
        else:
            self.register_buffer("weight", flat)
            # exact SGD for mult accumulates into a scratch that every step leaves all-zero
            scratch = torch.zeros(flat.numel() if operation == "mult" else 0, device=device)
            self.register_buffer("_sgd_scratch", scratch, persistent=False)
            # autograd runs backward only through a tensor that requires grad (FBGEMM does the same)
            self.register_buffer("_placeholder", torch.zeros(0, device=device, requires_grad=True),
                                 persistent=False)

    # -- access -------------------------------------------------------------------------------
    @property
    def feature_names(self) -> List[str]:
        return [s.name for s in self.specs]

    def tables(self, name: Optional[str] = None) -> List[torch.Tensor]:
        """The component tables (live views: writing them changes the module), all or one feature's."""
        if self.backend == "torch":
            all_tables = list(self.weights)
        elif self.backend == "triton":
            flat = self.weight.detach()
            all_tables = [flat[b: b + r * w].view(r, w)
                          for bases, shapes in zip(self.layout.table_bases, self.layout.table_shapes)
                          for b, (r, w) in zip(bases, shapes)]
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

    def forward(self, features, concat: bool = False, validate: Optional[bool] = None):
        """Look up all features (see the class docstring for the input forms).

        ``validate`` (triton only) overrides the module's ``validate`` for this call.
        """
        if self.backend == "triton":
            return self._forward_triton(features, concat, self.validate if validate is None else validate)
        pairs, keyed = self._features(features)
        # the indices were range-checked in _features: encode without a second check (and sync)
        codes = [CF.encode_validated(spec.family, flat) for spec, (flat, _) in zip(self.specs, pairs)]
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

    # -- triton --------------------------------------------------------------------------------
    def _pack(self, features):
        """Concatenate the features feature-major without device syncs: ``(values, offsets, keyed, checks)``.

        ``checks`` are ``(flag, raise_fn)`` pairs for :func:`validate_tbe_input` (every feature's
        own offsets start at 0 and end at its number of indices).
        """
        if hasattr(features, "keys") and hasattr(features, "values") and hasattr(features, "offsets") \
                and callable(getattr(features, "offsets")) and list(features.keys()) == self.feature_names:
            return features.values(), features.offsets(), True, []
        if hasattr(features, "keys") and hasattr(features, "values") and callable(getattr(features, "offsets", None)):
            pairs, _ = self._features(features)  # other key order: the per-feature path
            return self._pack([(x, o, True) for x, o in pairs])[:2] + (True, [])
        if isinstance(features, Mapping):
            missing = [s.name for s in self.specs if s.name not in features]
            if missing:
                raise KeyError(f"features {missing} missing from the input (got {sorted(features)})")
            items, keyed = [features[s.name] for s in self.specs], True
        else:
            items, keyed = list(features), False
            if len(items) != len(self.specs):
                raise ValueError(f"expected {len(self.specs)} features {self.feature_names}, got {len(items)}")
        values, offsets, firsts, lasts, counts, batch = [], [], [], [], [], []
        base = 0
        for spec, item in zip(self.specs, items):
            if isinstance(item, torch.Tensor):
                item = (item, None)
            x, off = item[0], item[1]
            last = item[2] if len(item) > 2 else self.include_last_offset
            name = f"feature {spec.name!r}"
            if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise TypeError(f"{name}: indices must be an integer tensor, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
            if x.dim() == 2:
                if off is not None:
                    raise ValueError(f"{name}: offsets must be None for 2-D input, got shape {tuple(off.shape)}")
                B, L = x.shape
                off = torch.arange(B + 1, device=x.device) * L
                x = x.reshape(-1)
            elif x.dim() == 1:
                if off is None:
                    raise ValueError(f"{name}: offsets are required with 1-D input (got None)")
                if not isinstance(off, torch.Tensor) or off.dim() != 1 or off.is_floating_point():
                    raise ValueError(f"{name}: offsets must be a 1-D integer tensor")
                off = off.to(device=x.device, dtype=torch.long)
                if not last:
                    off = torch.cat([off, off.new_full((1,), x.numel())])
                if off.numel() < 1:
                    raise ValueError(f"{name}: with include_last_offset=True offsets needs at least one entry")
            else:
                raise ValueError(f"{name}: input must be 1-D or 2-D, got shape {tuple(x.shape)}")
            batch.append(off.numel() - 1)
            values.append(x.long())
            offsets.append(off[:-1] + base)
            firsts.append(off[0])
            lasts.append(off[-1])
            counts.append(x.numel())
            base += x.numel()
        if len(set(batch)) != 1:
            raise ValueError(f"all features need one batch size, got {batch}")
        device = values[0].device
        offsets.append(torch.tensor([base], device=device))
        firsts, lasts = torch.stack(firsts), torch.stack(lasts)
        counts_t = torch.tensor(counts, device=device)
        names = self.feature_names

        def bad_first():
            f = int((firsts != 0).nonzero()[0, 0])
            raise ValueError(f"feature {names[f]!r}: offsets[0] must be 0, got {int(firsts[f])}")

        def bad_last():
            f = int((lasts != counts_t).nonzero()[0, 0])
            raise ValueError(f"feature {names[f]!r}: the last offset is {int(lasts[f])} but the feature has "
                             f"{counts[f]} indices (backend='triton' needs every index in a bag)")

        checks = [((firsts != 0).any(), bad_first), ((lasts != counts_t).any(), bad_last)]
        return torch.cat(values), torch.cat(offsets), keyed, checks

    def _forward_triton(self, features, concat, validate):
        from compemb.kernels._triton_tbe import tbe_embedding_bags, validate_tbe_input

        values, offsets, keyed, checks = self._pack(features)
        if validate:
            validate_tbe_input(values, offsets, self.layout, checks)
        if self.optimizer is None:
            out = tbe_embedding_bags(values, offsets, self.weight, self.layout, validate=False)
        else:
            out = tbe_embedding_bags(values, offsets, self.weight, self.layout, validate=False,
                                     optimizer=self.optimizer, learning_rate=self.learning_rate,
                                     scratch=self._sgd_scratch if self._sgd_scratch.numel() else None,
                                     placeholder=self._placeholder)
        if concat:
            return out
        outs = torch.split(out, self.layout.dim, dim=1)
        if keyed:
            return {s.name: o for s, o in zip(self.specs, outs)}
        return list(outs)

    def extra_repr(self) -> str:
        feats = ", ".join(f"{s.name}:{s.num_embeddings}x{s.embedding_dim}/{s.operation}/k={s.k}" for s in self.specs)
        opt = f", optimizer={self.optimizer!r}, learning_rate={self.learning_rate}" if self.optimizer else ""
        if self.backend == "triton":
            opt += f", validate={self.validate}"
        return f"backend={self.backend!r}{opt}, features=[{feats}]"
