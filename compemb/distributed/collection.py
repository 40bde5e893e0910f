"""A TorchRec ``EmbeddingBagCollection`` look-alike whose compressed tables TorchRec can shard.

:class:`ShardableEmbeddingBagCollection` serves compemb's tables (full, hash, qr, gqr, crt, md,
path) behind TorchRec's interface: ``forward(KeyedJaggedTensor) -> KeyedTensor`` and
``embedding_bag_configs()``, so ``torchrec.models.dlrm.DLRM(embedding_bag_collection=...)``
takes it unchanged. Inside, every feature is rewritten into component features
(:mod:`compemb.distributed.layout`) looked up in a plain TorchRec ``EmbeddingBagCollection``
(``ebc``, pooled and split lookups) and ``EmbeddingCollection``\\ s (``ecs``, per-index lookups,
one per width), the modules ``DistributedModelParallel`` shards; tiny tables, md projections
and path maps are ordinary parameters (``replicated``, ``path_maps``) that DMP leaves to DDP.
The module itself is single-device: sharding is :func:`compemb.distributed.shard`'s job.

Example::

    >>> import torch
    >>> from torchrec import KeyedJaggedTensor
    >>> from compemb.config import EmbeddingBagConfig
    >>> coll = ShardableEmbeddingBagCollection(
    ...     [EmbeddingBagConfig("C1", 10_000, 8, method="qr", num_collisions=4)], pooling_factors={"C1": 2.0}, seed=0)
    >>> coll.layouts[0].lookup  # multi-hot mult before pooling: per-index rows (2 per bag < 4 classes)
    'per_index'
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(["C1"], torch.tensor([3, 9_999, 7]), torch.tensor([2, 1]))
    >>> out = coll(kjt)
    >>> out.keys(), tuple(out.values().shape)
    (['C1'], (2, 8))
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig as TorchRecEmbeddingBagConfig
from torchrec.modules.embedding_configs import EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollection,
    EmbeddingBagCollectionInterface,
    EmbeddingCollection,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from compemb.config import EmbeddingBagConfig, build_embedding_bag
from compemb.distributed.interop import POOLING_TYPES
from compemb.distributed.layout import REPLICATE_ROWS, FeatureLayout, feature_layout
from compemb.functional import combine, encode_validated, pool_rows
from compemb.path import compose_path

__all__ = ["ShardableEmbeddingBagCollection"]

TableSpec = Union[EmbeddingBagConfig, Tuple[str, nn.Module]]


def _meta_twin(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters live on the meta device (no data copied)."""
    memo: Dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
                            for p in module.parameters()}
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


class ShardableEmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """compemb's tables as a TorchRec embedding bag collection that DMP can shard.

    Args:
        tables: one entry per feature: a compemb :class:`compemb.config.EmbeddingBagConfig`
            (built with :func:`compemb.config.build_embedding_bag`, including its fallback to a
            full table) or a ``(feature_name, module)`` pair whose weights are copied (modules
            as ``build_embedding_bag`` builds them). Feature names must be unique.
        lookups: feature -> ``"auto"`` (default), ``"pooled"``, ``"split"`` or ``"per_index"``
            (:mod:`compemb.distributed.layout`).
        pooling_factors: feature -> expected indices per bag (default 1.0, one-hot); picks the
            lookup and informs TorchRec's planner.
        replicate_rows: component tables with at most this many rows are replicated parameters,
            not TorchRec tables.
        device: where the tables live (``"meta"`` for planning without memory).
        seed: seeds the initialisation of tables built from configs (every rank must build the
            same weights before :func:`compemb.distributed.shard` copies them into the shards).

    Raises:
        ValueError: duplicate features, a lookup that cannot be exact, an option TorchRec
            cannot serve (``mode="max"``, ``max_norm``), naming the feature; component names
            that collide with another feature's.
        TypeError: a module of an unsupported kind.

    Shape:
        - input: a ``KeyedJaggedTensor`` holding every feature (others are ignored), batch ``B``,
          int indices in ``[0, num_embeddings)``, no weights.
        - output: a ``KeyedTensor`` keyed by feature in ``tables`` order, ``(B, sum of widths)``.

    Attributes:
        layouts: the :class:`~compemb.distributed.layout.FeatureLayout` of every feature.
        ebc: the TorchRec ``EmbeddingBagCollection`` of pooled and split component tables (or
            ``None``); ecs: TorchRec ``EmbeddingCollection``\\ s of per-index tables by width.
        replicated: the replicated tables (``{f}__t{i}``) and md projections (``{f}__projection``).
        path_maps: the per-class maps of path features.
    """

    def __init__(
        self,
        tables: Sequence[TableSpec],
        *,
        lookups: Optional[Mapping[str, str]] = None,
        pooling_factors: Optional[Mapping[str, float]] = None,
        replicate_rows: int = REPLICATE_ROWS,
        device: Union[str, torch.device, None] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        device = torch.device(device) if device is not None else torch.device("cpu")
        modules = self._modules_of(tables, device, seed)
        lookups, pooling_factors = dict(lookups or {}), dict(pooling_factors or {})
        for what, given in (("lookups", lookups), ("pooling_factors", pooling_factors)):
            unknown = sorted(set(given) - set(modules))
            if unknown:
                raise ValueError(f"{what} names unknown features {unknown}; features are {list(modules)}")
        self.layouts: List[FeatureLayout] = [
            feature_layout(name, m, lookups.get(name, "auto"), pooling_factors.get(name, 1.0), replicate_rows)
            for name, m in modules.items()
        ]
        self.replicate_rows = replicate_rows
        self._check_names()
        self._twins: Dict[str, nn.Module] = {name: _meta_twin(m) for name, m in modules.items()}
        self._build(device)
        self._param_map: Dict[str, Tuple[str, str]] = self._parameter_map()
        if device.type != "meta":
            self.load_module_state({name: m.state_dict() for name, m in modules.items()})

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def _modules_of(tables: Sequence[TableSpec], device: torch.device, seed: Optional[int]) -> Dict[str, nn.Module]:
        if isinstance(tables, (str, bytes)) or not isinstance(tables, Sequence) or not tables:
            raise ValueError(f"tables must be a non-empty sequence of EmbeddingBagConfig or (name, module), got {tables!r}")
        out: Dict[str, nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            for item in tables:
                if isinstance(item, EmbeddingBagConfig):
                    name, module = item.name, build_embedding_bag(item, device=device)
                elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], nn.Module):
                    name, module = item
                    if not isinstance(name, str) or not name:
                        raise TypeError(f"feature name must be a non-empty str, got {name!r}")
                else:
                    raise TypeError(f"expected a compemb.config.EmbeddingBagConfig or a (name, module) pair, got {item!r}")
                if name in out:
                    raise ValueError(f"duplicate feature name {name!r}")
                out[name] = module
        return out

    def _check_names(self) -> None:
        features = {lay.name for lay in self.layouts}
        seen: Dict[str, str] = {}
        for lay in self.layouts:
            for key in [t.name for t in lay.tables] + lay.kjt_features():
                if key in features and key != lay.name or seen.get(key, lay.name) != lay.name:
                    raise ValueError(f"feature {lay.name!r}: component name {key!r} collides with another feature's")
                seen[key] = lay.name

    def _build(self, device: torch.device) -> None:
        bag_tables: List[TorchRecEmbeddingBagConfig] = []
        seq_tables: Dict[int, List[EmbeddingConfig]] = {}
        self.replicated = nn.ParameterDict()
        self.path_maps = nn.ModuleDict()
        for lay in self.layouts:
            twin = self._twins[lay.name]
            for t in lay.tables:
                if not t.sharded:
                    self.replicated[t.name] = nn.Parameter(torch.empty(t.rows, t.dim, device=device))
                elif lay.lookup == "per_index":
                    seq_tables.setdefault(t.dim, []).append(EmbeddingConfig(
                        name=t.name, num_embeddings=t.rows, embedding_dim=t.dim, feature_names=[t.name]))
                else:
                    features = lay.kjt_features() if lay.lookup == "split" else [t.name]
                    pooling = PoolingType.SUM if lay.lookup == "split" else POOLING_TYPES[lay.mode]
                    bag_tables.append(TorchRecEmbeddingBagConfig(
                        name=t.name, num_embeddings=t.rows, embedding_dim=t.dim, feature_names=features,
                        pooling=pooling))
            projection = getattr(twin, "projection", None)
            if lay.operation == "project" and isinstance(projection, torch.Tensor):
                self.replicated[f"{lay.name}__projection"] = nn.Parameter(torch.empty(projection.shape, device=device))
            maps = getattr(twin, "maps", None)
            if lay.operation == "path" and isinstance(maps, nn.Module):
                self.path_maps[lay.name] = copy.deepcopy(maps).to_empty(device=device)
        self.ebc: Optional[EmbeddingBagCollection] = (
            EmbeddingBagCollection(bag_tables, device=device) if bag_tables else None)
        self.ecs = nn.ModuleDict(
            {f"dim{d}": EmbeddingCollection(tabs, device=device) for d, tabs in sorted(seq_tables.items())})

    def _parameter_map(self) -> Dict[str, Tuple[str, str]]:
        """Our parameter name -> (feature, the single-process module's parameter name)."""
        out: Dict[str, Tuple[str, str]] = {}
        for lay in self.layouts:
            twin_names = [n for n, _ in self._twins[lay.name].named_parameters()]
            for t in lay.tables:
                module_name = f"weights.{t.index}" if lay.method == "compositional" else "weight"
                if not t.sharded:
                    ours = f"replicated.{t.name}"
                elif lay.lookup == "per_index":
                    ours = f"ecs.dim{t.dim}.embeddings.{t.name}.weight"
                else:
                    ours = f"ebc.embedding_bags.{t.name}.weight"
                out[ours] = (lay.name, module_name)
            if f"{lay.name}__projection" in self.replicated:
                out[f"replicated.{lay.name}__projection"] = (lay.name, "projection")
            for n in twin_names:
                if n.startswith("maps."):
                    out[f"path_maps.{lay.name}.{n[len('maps.'):]}"] = (lay.name, n)
            covered = {m for f, m in out.values() if f == lay.name}
            missing = sorted(set(twin_names) - covered)
            if missing:  # (a module kind the layout does not know all parameters of)
                raise TypeError(f"feature {lay.name!r}: parameters {missing} have no place in the collection")
        return out

    # -- TorchRec's EmbeddingBagCollection interface --------------------------------------------
    def embedding_bag_configs(self) -> List[TorchRecEmbeddingBagConfig]:
        """One TorchRec config per feature, as a plain ``EmbeddingBagCollection`` of the same
        (uncompressed) tables would report them: what ``torchrec.models.dlrm.DLRM`` reads."""
        return [TorchRecEmbeddingBagConfig(name=lay.name, num_embeddings=lay.num_embeddings,
                                           embedding_dim=lay.embedding_dim, feature_names=[lay.name],
                                           pooling=POOLING_TYPES[lay.mode]) for lay in self.layouts]

    def is_weighted(self) -> bool:
        return False

    @property
    def feature_names(self) -> List[str]:
        return [lay.name for lay in self.layouts]

    # -- weights ----------------------------------------------------------------------------------
    def parameter_map(self) -> Dict[str, Tuple[str, str]]:
        """``state_dict`` key -> ``(feature, parameter name in the single-process module)``."""
        return dict(self._param_map)

    def state_dict_from_modules(self, module_states: Mapping[str, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """This collection's (unsharded) ``state_dict`` entries from single-process module states.

        Args:
            module_states: feature -> ``module.state_dict()`` of the module serving it (as
                :meth:`modules_state_dict` returns or ``build_embedding_bag`` modules hold).
        """
        out: Dict[str, torch.Tensor] = {}
        for ours, (feature, name) in self._param_map.items():
            state = module_states.get(feature)
            if state is None or name not in state:
                raise KeyError(f"feature {feature!r}: {name!r} missing from the given module state")
            out[ours] = state[name]
        return out

    def modules_state_dict(self, state: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, Dict[str, torch.Tensor]]:
        """Feature -> the single-process module's ``state_dict`` (the inverse of :meth:`state_dict_from_modules`).

        ``state`` defaults to this collection's own (unsharded) ``state_dict()``.
        """
        state = self.state_dict() if state is None else state
        out: Dict[str, Dict[str, torch.Tensor]] = {lay.name: {} for lay in self.layouts}
        for ours, (feature, name) in self._param_map.items():
            out[feature][name] = state[ours]
        return out

    @torch.no_grad()
    def load_module_state(self, module_states: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Copy single-process module weights (feature -> ``state_dict``) into the unsharded tables."""
        own = dict(self.named_parameters())
        for ours, value in self.state_dict_from_modules(module_states).items():
            target = own[ours]
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"{ours}: shape {tuple(value.shape)} given, {tuple(target.shape)} expected")
            target.copy_(value)

    def to_modules(self) -> Dict[str, nn.Module]:
        """Single-process compemb modules holding this (unsharded) collection's current weights."""
        out: Dict[str, nn.Module] = {}
        for feature, state in self.modules_state_dict().items():
            module = copy.deepcopy(self._twins[feature]).to_empty(device=torch.device("cpu"))
            module.load_state_dict({k: v.detach().cpu() for k, v in state.items()}, strict=False)
            out[feature] = module
        return out

    # -- forward ------------------------------------------------------------------------------------
    def _check(self, jts: Mapping[str, JaggedTensor], batch: int) -> None:
        """Every feature present, integer, unweighted, in range; one-hot where required (one sync)."""
        stats: List[torch.Tensor] = []
        names: List[Tuple[str, str]] = []
        for lay in self.layouts:
            jt = jts.get(lay.name)
            if jt is None:
                raise KeyError(f"feature {lay.name!r} missing from the input (got {sorted(jts)})")
            v = jt.values()
            if v.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"feature {lay.name!r}: indices must be int64 or int32, got {v.dtype}")
            if jt.weights_or_none() is not None:
                raise ValueError(f"feature {lay.name!r}: weighted features are not served")
            if jt.lengths().numel() != batch:
                raise ValueError(f"feature {lay.name!r}: {jt.lengths().numel()} bags, the batch has {batch}")
            if v.numel():
                lo, hi = torch.aminmax(v)
                stats += [lo.long(), hi.long()]
                names += [(lay.name, "min"), (lay.name, "max")]
            if lay.one_hot and jt.lengths().numel():
                stats.append(jt.lengths().max().long())
                names.append((lay.name, "len"))
        if not stats:
            return
        by_feature = {lay.name: lay for lay in self.layouts}
        for (feature, what), value in zip(names, torch.stack(stats).tolist()):
            n = by_feature[feature].num_embeddings
            if what == "min" and value < 0 or what == "max" and value >= n:
                raise IndexError(f"feature {feature!r}: index {value} out of range [0, {n})")
            if what == "len" and value > 1:
                lay = by_feature[feature]
                raise ValueError(
                    f"feature {feature!r}: a bag of {value} indices, but {lay.operation!r} before pooling is "
                    f"looked up pooled, exact only for one-hot bags (pooling_factor={lay.pooling_factor}); "
                    "pass pooling_factors or lookups={...: 'split' or 'per_index'}")

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Look up every feature of ``features`` (see the class docstring)."""
        if not isinstance(features, KeyedJaggedTensor):
            raise TypeError(f"expected a torchrec KeyedJaggedTensor, got {type(features).__name__}")
        batch = features.stride()
        jts = features.to_dict()
        self._check(jts, batch)
        codes: Dict[str, torch.Tensor] = {}
        bag_in: Tuple[List[str], List[torch.Tensor], List[torch.Tensor]] = ([], [], [])
        seq_in: Dict[int, Tuple[List[str], List[torch.Tensor], List[torch.Tensor]]] = {}
        split_lengths: Dict[str, torch.Tensor] = {}
        for lay in self.layouts:
            jt = jts[lay.name]
            values, lengths = jt.values().long(), jt.lengths().long()
            c = codes[lay.name] = encode_validated(lay.family, values)
            if lay.lookup == "split":
                keys, split_values, split_lens = self._split(lay, c, lengths, batch)
                bag_in[0].extend(keys)
                bag_in[1].append(split_values)
                bag_in[2].append(split_lens)
                split_lengths[lay.name] = lengths
                continue
            for t in lay.sharded_tables:
                target = seq_in.setdefault(t.dim, ([], [], [])) if lay.lookup == "per_index" else bag_in
                target[0].append(t.name)
                target[1].append(c[t.index])
                target[2].append(lengths)
        pooled: Dict[str, torch.Tensor] = {}
        if self.ebc is not None:
            pooled = self.ebc(self._kjt(*bag_in)).to_dict()  # (read by key: sharding reorders keys)
        rows: Dict[str, torch.Tensor] = {}
        for d, (seq_keys, seq_values, seq_lens) in seq_in.items():
            for key, seq in self.ecs[f"dim{d}"](self._kjt(seq_keys, seq_values, seq_lens)).items():
                rows[key] = seq.values()
        outs = []
        for lay in self.layouts:
            jt = jts[lay.name]
            offsets = jt.offsets().long()
            if lay.lookup == "pooled":
                out = self._compose_pooled(lay, codes[lay.name], offsets, pooled)
            elif lay.lookup == "split":
                out = self._compose_split(lay, pooled, split_lengths[lay.name])
            else:
                out = self._compose_per_index(lay, codes[lay.name], offsets, rows)
            outs.append(out)
        return KeyedTensor(keys=self.feature_names, length_per_key=[lay.embedding_dim for lay in self.layouts],
                           values=torch.cat(outs, dim=1))

    @staticmethod
    def _kjt(keys: List[str], values: List[torch.Tensor], lengths: List[torch.Tensor]) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))

    def _class_ids(self, lay: FeatureLayout, codes: torch.Tensor) -> torch.Tensor:
        """The joint class (mixed radix over :attr:`FeatureLayout.class_partitions`) of every index."""
        cls = torch.zeros_like(codes[0])
        for i in lay.class_partitions:
            cls = cls * int(lay.family.table_sizes[i]) + codes[i]
        return cls

    def _class_digits(self, lay: FeatureLayout, device: torch.device) -> List[Tuple[int, torch.Tensor]]:
        """(partition, its code) for every joint class ``j = 0 .. C-1``, in the same mixed radix."""
        out = []
        stride = lay.split_classes
        j = torch.arange(lay.split_classes, device=device)
        for i in lay.class_partitions:
            size = int(lay.family.table_sizes[i])
            stride //= size
            out.append((i, (j // stride) % size))
        return out

    def _split(self, lay: FeatureLayout, codes: torch.Tensor, lengths: torch.Tensor,
               batch: int) -> Tuple[List[str], torch.Tensor, torch.Tensor]:
        """The ``C`` pseudo-features: feature-major, class ``j``'s indices of each bag, bag order kept."""
        (table,) = lay.sharded_tables
        bag = torch.repeat_interleave(torch.arange(batch, device=codes.device), lengths)
        key = self._class_ids(lay, codes) * batch + bag
        order = torch.argsort(key, stable=True)
        lens = torch.bincount(key, minlength=lay.split_classes * batch)
        return lay.kjt_features(), codes[table.index][order], lens

    def _table(self, lay: FeatureLayout, index: int) -> torch.Tensor:
        return self.replicated[lay.tables[index].name]

    def _finish(self, lay: FeatureLayout, x: torch.Tensor) -> torch.Tensor:
        """md: project the pooled (or per-index) vectors to the output width."""
        if lay.operation == "project" and f"{lay.name}__projection" in self.replicated:
            return x @ self.replicated[f"{lay.name}__projection"].t()
        return x

    def _compose_pooled(self, lay: FeatureLayout, codes: torch.Tensor, offsets: torch.Tensor,
                        pooled: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for t in lay.tables:
            if t.sharded:
                parts.append(pooled[t.name])
            else:
                parts.append(F.embedding_bag(codes[t.index], self._table(lay, t.index), offsets, mode=lay.mode,
                                             include_last_offset=True))
        if lay.method == "compositional":
            return combine(parts, lay.operation)
        return self._finish(lay, parts[0])

    def _compose_split(self, lay: FeatureLayout, pooled: Mapping[str, torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([pooled[key] for key in lay.kjt_features()])  # (C, B, d)
        digits = self._class_digits(lay, stacked.device)
        if lay.operation == "path":
            maps: Any = self.path_maps[lay.name]
            mats: Optional[torch.Tensor] = None
            for (_, code), class_maps in zip(digits, maps):
                w = class_maps.weights[0][code]  # (C, D, D): x @ W[c]
                mats = w if mats is None else mats @ w
            assert mats is not None
            out = torch.einsum("cbd,cde->be", stacked, mats)
        else:
            rows = [self._table(lay, i)[code] for i, code in digits]
            out = torch.einsum("cd,cbd->bd", combine(rows, "mult"), stacked)
        if lay.mode == "mean":
            out = out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)
        return out

    def _compose_per_index(self, lay: FeatureLayout, codes: torch.Tensor, offsets: torch.Tensor,
                           rows: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [rows[t.name] if t.sharded else F.embedding(codes[t.index], self._table(lay, t.index))
                 for t in lay.tables]
        if lay.operation == "path":
            path_maps: Any = self.path_maps[lay.name]
            x = compose_path(parts[0], codes[1:], path_maps, getattr(self._twins[lay.name], "activation", "identity"))
            return pool_rows(x, offsets, lay.mode)
        if lay.method == "compositional" and lay.compose == "after_pool":
            return combine([pool_rows(p, offsets, lay.mode) for p in parts], lay.operation)
        if lay.method == "compositional":
            return pool_rows(combine(parts, lay.operation), offsets, lay.mode)
        return self._finish(lay, pool_rows(parts[0], offsets, lay.mode))

    def extra_repr(self) -> str:
        feats = ", ".join(f"{lay.name}:{lay.method}/{lay.lookup}" for lay in self.layouts)
        return f"replicate_rows={self.replicate_rows}, features=[{feats}]"
