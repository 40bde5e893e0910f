"""Many compositional embedding bags in one module, served by one table-batched backend.

:class:`CompositionalEmbeddingBagCollection` serves many features (one table spec each, like
TorchRec's ``EmbeddingBagCollection``). It validates the specs and the input forms and delegates
the tables and the lookup to a :class:`compemb.kernels.CollectionBackend`: ``"fbgemm"`` (one FBGEMM
TBE over the large component tables, the small ones (remainders) composed beside it, optionally
with the optimizer fused into backward), ``"triton"``
(one flat buffer and one fused Triton launch that also encodes the indices) or ``"torch"`` (the
reference, per feature). ``mode="max"`` is refused (TBE pools with ``sum``/``mean``); each
backend says what else it refuses, naming the feature (see ``docs/architecture.md``).

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

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from compemb.functional import (
    bag_input,
    check_int,
    check_num_embeddings,
    check_table_size,
    encode_validated,
    init_bound,
)
from compemb.kernels import (
    BackendUnavailableError,
    CollectionBags,
    EncodedBag,
    FeatureBags,
    FeatureSpec,
    JaggedBags,
    LookupInput,
    get_collection_backend,
)
from compemb.options import (
    BACKENDS,
    FAMILY_METHODS,
    FUSED_OPTIMIZERS,
    check_choice,
    check_compose,
    check_mode,
    check_operation,
)
from compemb.partitions import family_for_method, naive, split_dim

__all__ = ["CompositionalEmbeddingBagCollection", "FeatureSpec", "OPTIMIZERS", "BACKENDS"]

OPTIMIZERS: Tuple[Optional[str], ...] = (None,) + FUSED_OPTIMIZERS


def _family(name: str, n: int, method: str, num_collisions: int, k: int) -> Any:
    if method not in FAMILY_METHODS:
        raise ValueError(f"feature {name!r}: method={method!r} is not compositional; the collection "
                         f"serves {FAMILY_METHODS}")
    return family_for_method(method, n, num_collisions=num_collisions, k=k)


def _to_spec(item: Any) -> FeatureSpec:
    """An ``EmbeddingBagConfig`` or a tuple ``(name, n, d, family, operation, mode[, compose])``.

    ``family`` in a tuple may be a :class:`~compemb.partitions.PartitionFamily`, an int (the
    ``num_collisions`` of quotient–remainder) or ``None`` (the full table).
    """
    if hasattr(item, "method") and hasattr(item, "num_embeddings"):
        name, n, d = item.name, item.num_embeddings, item.embedding_dim
        n, d = _check_sizes(name, n, d)
        family = _family(name, n, item.method, item.num_collisions, item.k)
        operation, mode, compose = item.operation, item.mode, item.compose
    elif isinstance(item, (tuple, list)) and len(item) in (6, 7):
        name, n, d, fam, operation, mode = item[:6]
        compose = item[6] if len(item) == 7 else "before_pool"
        n, d = _check_sizes(name, n, d)
        if fam is None:
            family = naive(n)
        elif _is_index(fam):
            family = _family(name, n, "qr", check_int("num_collisions", fam, 1, f"feature {name!r}"), 2)
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
    check_operation(operation)
    check_mode(mode)
    check_compose(compose)
    if mode == "max":
        raise ValueError(f"feature {name!r}: mode='max' is not served by the collection "
                         "(FBGEMM TBE pools with 'sum' or 'mean' only)")
    k = family.k
    if operation != "concat" or k == 1:
        widths = (d,) * k
    elif k > d:
        raise ValueError(f"feature {name!r}: concat splits embedding_dim={d} across k={k} tables")
    else:
        widths = tuple(split_dim(d, k))
    for t, (rows, width) in enumerate(zip(family.table_sizes, widths)):  # before anything is allocated
        check_table_size(f"feature {name!r}", f"{t} of its family", (rows, width), torch.float32)
    return FeatureSpec(name, n, d, family, operation, mode, compose, widths)


def _is_index(value: Any) -> bool:
    """Whether ``value`` is an integer (any type ``operator.index`` takes) and not a bool."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and (value.dim() or value.dtype == torch.bool)):
        return False
    return hasattr(type(value), "__index__")


def _check_sizes(name: Any, n: Any, d: Any) -> Tuple[int, int]:
    """A feature's ``(num_embeddings, embedding_dim)`` as Python ints >= 1, naming the feature."""
    where = f"feature {name!r}"
    return check_num_embeddings("num_embeddings", n, where), check_int("embedding_dim", d, 1, where)


def _is_keyed_jagged(features: Any) -> bool:
    return hasattr(features, "keys") and hasattr(features, "values") and callable(getattr(features, "offsets", None))


class CompositionalEmbeddingBagCollection(nn.Module):
    """Compositional embedding bags of many features, batched into one table-batched lookup.

    Args:
        configs: one spec per feature: :class:`compemb.config.EmbeddingBagConfig` (methods
            ``full``, ``qr``, ``gqr``, ``crt``) or tuples ``(name, num_embeddings, embedding_dim,
            family, operation, mode[, compose])`` with ``family`` a ``PartitionFamily``, an int
            (quotient–remainder ``num_collisions``) or ``None`` (full table). Names must be unique.
        backend: ``"fbgemm"`` (one TBE over the large component tables, tables of at most 64
            rows beside it; ``mult`` before pooling on multi-hot bags by the remainder-class
            split), ``"triton"`` (one fused
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

    Raises:
        ValueError: an option outside its set, a bad spec, duplicate names, or a configuration
            the backend does not serve (naming the feature).
        BackendUnavailableError: the backend's package does not import here.

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
        configs: Sequence[Any],
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
        check_choice("backend", backend, BACKENDS)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        backend_cls = get_collection_backend(backend)
        if sparse and not backend_cls.sparse_gradients:
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
        device = torch.device(device) if device is not None else torch.device("cpu")
        reason = backend_cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend={backend!r} is not available here: {reason}")
        reason = backend_cls.unsupported_reason(self.specs, optimizer, device)
        if reason is not None:
            raise ValueError(reason)
        self.backend = backend
        self.optimizer = optimizer
        self.learning_rate = float(learning_rate)
        self.eps = float(eps)
        self.sparse = bool(sparse)
        self.include_last_offset = bool(include_last_offset)
        self.validate = bool(validate)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init = [self._init_table(s, s.family.table_sizes[t], s.widths[t], gen) for s in self.specs for t in range(s.k)]
        self._backend = backend_cls(self.specs, optimizer, self.learning_rate, self.eps, self.sparse)
        self._backend.build(self, init, device)

    @staticmethod
    def _init_table(spec: FeatureSpec, rows: int, dim: int, gen: Optional[torch.Generator]) -> torch.Tensor:
        # the composed vectors get the scale of a full table's U(+-sqrt(1/n)) (compemb.functional)
        bound = init_bound(spec.num_embeddings, spec.k, spec.operation)
        return (torch.rand(rows, dim, generator=gen) * 2 - 1) * bound

    # -- access -------------------------------------------------------------------------------
    @property
    def feature_names(self) -> List[str]:
        return [s.name for s in self.specs]

    def tables(self, name: Optional[str] = None) -> List[torch.Tensor]:
        """The component tables (live views: writing them changes the module), all or one feature's."""
        return self._select(self._backend.tables(self), name)

    def optimizer_states(self, name: Optional[str] = None) -> List[torch.Tensor]:
        """Row-wise Adagrad's per-row sum of mean squared gradients, per component table."""
        return self._select(self._backend.optimizer_states(self), name)

    def _select(self, per_table: List[torch.Tensor], name: Optional[str]) -> List[torch.Tensor]:
        if name is None:
            return per_table
        for spec, items in zip(self.specs, self._backend.per_feature(per_table)):
            if spec.name == name:
                return items
        raise KeyError(f"no feature named {name!r}; features are {self.feature_names}")

    def num_parameters(self) -> int:
        return sum(w.shape[0] * w.shape[1] for w in self.tables())

    # -- forward ------------------------------------------------------------------------------
    def _bags(self, features: Any) -> Tuple[CollectionBags, bool]:
        """The input in feature order, and whether the output is keyed by name."""
        if _is_keyed_jagged(features):
            weights = getattr(features, "weights_or_none", None)
            if callable(weights) and weights() is not None:
                raise ValueError("the KeyedJaggedTensor carries weights (per_sample_weights), which the collection "
                                 "does not serve; pass it without weights")
            keys = list(features.keys())
            jagged = JaggedBags(features.values(), features.offsets())
            if keys == self.feature_names:
                return jagged, True
            features = dict(zip(keys, jagged.split(len(keys))))
        if isinstance(features, Mapping):
            missing = [s.name for s in self.specs if s.name not in features]
            if missing:
                raise KeyError(f"features {missing} missing from the input (got {sorted(features)})")
            items, keyed = [features[s.name] for s in self.specs], True
        else:
            items, keyed = list(features), False
            if len(items) != len(self.specs):
                raise ValueError(f"expected {len(self.specs)} features {self.feature_names}, got {len(items)}")
        bags = []
        for item in items:
            if isinstance(item, torch.Tensor):
                item = (item, None)
            last = item[2] if len(item) > 2 else self.include_last_offset
            bags.append(FeatureBags(item[0], item[1], bool(last)))
        return bags, keyed

    def _encode(self, bags: CollectionBags) -> List[EncodedBag]:
        """Every feature validated as the modules do (one device sync each) and encoded."""
        if isinstance(bags, JaggedBags):
            bags = bags.split(len(self.specs))
        got = [bag_input(b.indices, b.offsets, None, b.include_last_offset, s.mode, s.num_embeddings,
                         f"feature {s.name!r}") for s, b in zip(self.specs, bags)]
        sizes = [g.offsets.numel() - 1 for g in got]
        if len(set(sizes)) != 1:
            raise ValueError(f"all features need one batch size, got {sizes}")
        # the indices were range-checked: encode without a second check (and sync)
        return [EncodedBag(encode_validated(s.family, g.indices), g.offsets, g.bag_len)
                for s, g in zip(self.specs, got)]

    def forward(
        self, features: Any, concat: bool = False, validate: Optional[bool] = None, keyed_tensor: bool = False
    ) -> Any:
        """Look up all features (see the class docstring for the input forms).

        ``validate`` (triton only) overrides the module's ``validate`` for this call.
        ``keyed_tensor=True`` returns a ``torchrec.KeyedTensor`` keyed by feature in config order
        (TorchRec's ``EmbeddingBagCollection`` output; needs torchrec).
        """
        if keyed_tensor:
            from torchrec.sparse.jagged_tensor import KeyedTensor

            if concat:
                raise ValueError("keyed_tensor=True already concatenates the features: drop concat=True")
            # the concatenated columns are in config order (a keyed input is read in config order)
            return KeyedTensor(keys=self.feature_names, length_per_key=[s.embedding_dim for s in self.specs],
                               values=self.forward(features, concat=True, validate=validate))
        raw, keyed = self._bags(features)
        bags: LookupInput = raw if self._backend.raw_input else self._encode(raw)
        out = self._backend.lookup(self, bags, concat, self.validate if validate is None else validate)
        if concat:
            return out
        if keyed:
            return {s.name: o for s, o in zip(self.specs, out)}
        return out

    def extra_repr(self) -> str:
        feats = ", ".join(f"{s.name}:{s.num_embeddings}x{s.embedding_dim}/{s.operation}/k={s.k}" for s in self.specs)
        opt = f", optimizer={self.optimizer!r}, learning_rate={self.learning_rate}" if self.optimizer else ""
        if self._backend.raw_input:
            opt += f", validate={self.validate}"
        return f"backend={self.backend!r}{opt}, features=[{feats}]"
