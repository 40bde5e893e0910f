"""The model of a run on ``N`` ranks: the DLRM with its tables in one shardable collection, and the loop's view of it.

:class:`ShardedDLRM` is what ``DistributedModelParallel`` wraps in a hybrid run (TorchRec shards
its ``sparse_arch``, DDP replicates its ``dense_arch``); :func:`dlrm_state_from_sharded` maps its
state back onto the DLRM's keys; :class:`ParallelModel` is what :func:`dlrm.train.train` calls
``model`` in every distributed mode. :mod:`dlrm.distributed` re-exports these names.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["ShardedDLRM", "ParallelModel", "dlrm_state_from_sharded"]


def _kjt(names: Sequence[str], indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> Any:
    from torchrec import KeyedJaggedTensor

    lengths = [o[1:] - o[:-1] for o in offsets]
    return KeyedJaggedTensor(keys=list(names), values=torch.cat(list(indices)), lengths=torch.cat(lengths))


class ShardedDLRM(nn.Module):
    """A :class:`dlrm.model.DLRM` whose tables are one :class:`ShardableEmbeddingBagCollection`.

    Built from a DLRM (its table modules' weights are copied, its MLPs and projections taken
    over: ``dense_arch`` is the DLRM without its tables), it computes what the DLRM computes:
    ``forward(dense, features)`` takes a ``KeyedJaggedTensor`` of the DLRM's features;
    :meth:`logits` takes the DLRM's ``(dense, indices, offsets)``. ``DistributedModelParallel``
    shards ``sparse_arch``'s TorchRec tables and wraps the rest in DDP.

    Args:
        model: the DLRM (its ``embeddings`` are emptied: the collection holds the tables now).
        pooling_factors, replicate_rows: as :class:`compemb.distributed.ShardableEmbeddingBagCollection`.
    """

    def __init__(self, model: Any, *, pooling_factors: Optional[Mapping[str, float]] = None,
                 replicate_rows: Optional[int] = None) -> None:
        from compemb.distributed import REPLICATE_ROWS, ShardableEmbeddingBagCollection

        super().__init__()
        if getattr(model, "collection", None) is not None or len(model.embeddings) != len(model.config.tables):
            raise ValueError("ShardedDLRM takes a DLRM with one compemb module per table (no embedding collection)")
        self.feature_names = [spec.name for spec in model.config.tables]
        pairs = [(name, bag) for name, bag in zip(self.feature_names, model.embeddings)]
        try:
            self.sparse_arch = ShardableEmbeddingBagCollection(
                pairs, pooling_factors=dict(pooling_factors or {}),
                replicate_rows=REPLICATE_ROWS if replicate_rows is None else int(replicate_rows),
                device=next(model.parameters()).device)
        except TypeError as exc:  # a module kind TorchRec cannot serve
            raise ValueError(f"--parallel hybrid cannot shard these tables: {exc}") from None
        model.embeddings = nn.ModuleList()
        self.dense_arch = model

    def forward(self, dense: torch.Tensor, features: Any) -> torch.Tensor:
        pooled = self.sparse_arch(features).to_dict()
        return self.dense_arch.head(dense, self.dense_arch.project([pooled[n] for n in self.feature_names]))

    def logits(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self(dense, _kjt(self.feature_names, indices, offsets))


def dlrm_state_from_sharded(state: Mapping[str, Any], collection: Any, feature_names: Sequence[str]) -> Dict[str, Any]:
    """A :class:`ShardedDLRM`'s (unsharded) ``state_dict`` as the DLRM's keys (``bottom.*``,
    ``embeddings.{i}.*``, ...); ``collection`` is its ``sparse_arch``."""
    index = {name: i for i, name in enumerate(feature_names)}
    mapping = collection.parameter_map()
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("dense_arch."):
            out[key[len("dense_arch."):]] = value
        elif key.startswith("sparse_arch."):
            ours = key[len("sparse_arch."):]
            if ours not in mapping:
                continue  # (a TorchRec buffer, not a weight)
            feature, name = mapping[ours]
            out[f"embeddings.{index[feature]}.{name}"] = value
    return out


class ParallelModel:
    """What the training loop calls ``model`` in a distributed run: the wrapped network's forward,
    ``predict``, ``train``/``eval``, ``named_parameters`` and ``state_dict``/``load_state_dict``
    (the DLRM's keys in ``data`` and ``independent`` mode, the sharded model's in ``hybrid``), and
    the size accounting of the model it was built from (which sharding does not change)."""

    def __init__(self, net: nn.Module, model: Any, mode: str) -> None:
        self.net, self.mode = net, mode
        self.module: nn.Module = getattr(net, "module", net) if mode == "data" else net
        self.config = model.config
        self._embedding, self._mlp = int(model.embedding_parameters()), int(model.mlp_parameters())
        self._total = int(model.num_parameters())
        self._tables: Dict[str, int] = {str(k): int(v) for k, v in model.table_parameters().items()}

    def __call__(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.mode == "hybrid":
            return self.net(dense, _kjt(self._names(), indices, offsets))
        return self.net(dense, indices, offsets)

    def _names(self) -> List[str]:
        return [spec.name for spec in self.config.tables]

    def predict(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(dense, indices, offsets))

    @property
    def training(self) -> bool:
        return bool(self.net.training)

    def train(self, mode: bool = True) -> ParallelModel:
        self.net.train(mode)
        return self

    def eval(self) -> ParallelModel:
        return self.train(False)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.net.parameters()

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.net.named_parameters()

    def state_dict(self) -> Dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        return self.module.load_state_dict(state)

    def embedding_parameters(self) -> int:
        return self._embedding

    def mlp_parameters(self) -> int:
        return self._mlp

    def num_parameters(self) -> int:
        return self._total

    def table_parameters(self) -> Dict[str, int]:
        return dict(self._tables)
