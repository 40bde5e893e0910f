"""compemb on TorchRec: compressed tables sharded by ``DistributedModelParallel``.

Beside the modules, never inside them (as ``torchrec.distributed`` beside ``torchrec.modules``):
compemb's single-device modules are mapped onto TorchRec by a KJT rewrite.

* :class:`ShardableEmbeddingBagCollection` — compemb tables behind TorchRec's
  ``EmbeddingBagCollection`` interface (``KeyedJaggedTensor`` in, ``KeyedTensor`` out,
  ``embedding_bag_configs()``): ``torchrec.models.dlrm.DLRM`` takes it; its component tables are
  plain TorchRec modules that DMP shards (:mod:`compemb.distributed.layout` says how).
* :func:`shard`, :func:`plan`, :func:`parameter_constraints`, :func:`sharders`,
  :func:`load_unsharded_state_dict`, :func:`combined_optimizer` — sharding with TorchRec
  (:mod:`compemb.distributed.sharding`).
* :func:`to_torchrec_configs`, :func:`from_torchrec_configs` — config converters
  (:mod:`compemb.distributed.interop`).
* :func:`dry_run` — TorchRec's planner without devices, behind ``compemb plan --world-size``
  (:mod:`compemb.distributed.planning`).

Names are imported on first use: ``import compemb.distributed`` does not import TorchRec
(``import torchrec`` takes seconds); the TorchRec extra is installed by ``make setup``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from compemb._lazy import load_export

if TYPE_CHECKING:  # (for editors and type checkers)
    from compemb.distributed.collection import ShardableEmbeddingBagCollection  # noqa: F401
    from compemb.distributed.interop import from_torchrec_configs, to_torchrec_configs  # noqa: F401
    from compemb.distributed.layout import REPLICATE_ROWS, ComponentTable, FeatureLayout, feature_layout  # noqa: F401
    from compemb.distributed.planning import MethodPlan, dry_run  # noqa: F401
    from compemb.distributed.sharding import (  # noqa: F401
        collections_of, combined_optimizer, load_unsharded_state_dict, parameter_constraints, plan, shard, sharders,
    )

_EXPORTS = {
    "ShardableEmbeddingBagCollection": "compemb.distributed.collection",
    "to_torchrec_configs": "compemb.distributed.interop",
    "from_torchrec_configs": "compemb.distributed.interop",
    "ComponentTable": "compemb.distributed.layout",
    "FeatureLayout": "compemb.distributed.layout",
    "feature_layout": "compemb.distributed.layout",
    "REPLICATE_ROWS": "compemb.distributed.layout",
    "dry_run": "compemb.distributed.planning",
    "MethodPlan": "compemb.distributed.planning",
    "sharders": "compemb.distributed.sharding",
    "collections_of": "compemb.distributed.sharding",
    "parameter_constraints": "compemb.distributed.sharding",
    "plan": "compemb.distributed.sharding",
    "shard": "compemb.distributed.sharding",
    "load_unsharded_state_dict": "compemb.distributed.sharding",
    "combined_optimizer": "compemb.distributed.sharding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return load_export(globals(), _EXPORTS, name)


def __dir__() -> List[str]:
    return __all__
