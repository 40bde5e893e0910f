"""The re-clustering hook of ``cluster`` tables during training (CCE, Tito Sobral and Ahle 2023).

A ``cluster`` table (:meth:`compemb.data_aware.DataAwareEmbeddingBag.clustered`) starts as plain
quotient–remainder; :func:`recluster_model` re-clusters every such table of a model by its current
embeddings (:meth:`~compemb.data_aware.DataAwareEmbeddingBag.recluster`, warm-started), then
drops the optimizer state of those tables (Adagrad's sums, Adam's moments described the old rows;
torch's optimizers start it afresh at their next step). :func:`dlrm.train.train` calls it every
``TrainConfig.recluster_every`` steps (``compemb train --recluster-every N``), after the optimizer
step of a multiple of ``N``. Each call is reproducible: the k-means seed is a function of the run's
seed, the step and the table (:func:`recluster_seed`); the new partition is module state, so
checkpoints and resumed runs carry it.

Example::

    >>> from dlrm.model import DLRM, DLRMConfig, table_specs
    >>> model = DLRM(DLRMConfig(2, (4,), (1,), table_specs([500], 4, "cluster", num_collisions=8)))
    >>> sorted(recluster_model(model, None, seed=0, step=100))
    ['t0']
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import torch

from compemb.data_aware import DataAwareEmbeddingBag, ReclusterResult
from compemb.partitions import ClusteredFamily
from dlrm.accounting import table_modules

__all__ = ["clustered_tables", "recluster_seed", "recluster_model", "reset_optimizer_state"]


def clustered_tables(model: Any) -> List[Tuple[str, DataAwareEmbeddingBag]]:
    """``(name, module)`` of every table of ``model`` with a clustered (re-clusterable) family."""
    return [(name, module) for name, module in table_modules(model).items()
            if isinstance(module, DataAwareEmbeddingBag) and isinstance(module.family, ClusteredFamily)]


def recluster_seed(seed: int, step: int, table: int) -> int:
    """The k-means seed of table number ``table`` re-clustered at ``step`` of a run seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(table)) % (2**63)


def reset_optimizer_state(optimizer: Any, params: Iterable[torch.nn.Parameter]) -> int:
    """Drop the state ``optimizer`` keeps for ``params`` (a torch optimizer, or an object with an
    ``optimizers`` list such as :class:`dlrm.optim.Optimizers`); returns how many states went."""
    opts = list(getattr(optimizer, "optimizers", [optimizer] if optimizer is not None else []))
    dropped = 0
    for p in params:
        for opt in opts:
            if opt.state.pop(p, None) is not None:
                dropped += 1
    return dropped


def recluster_model(model: Any, optimizer: Any, *, seed: int, step: int) -> Dict[str, ReclusterResult]:
    """Re-cluster every clustered table of ``model`` and reset ``optimizer``'s state for it.

    Returns:
        ``{table name: what the re-clustering did}`` (empty when the model has no clustered table).
    """
    results: Dict[str, ReclusterResult] = {}
    for t, (name, bag) in enumerate(clustered_tables(model)):
        results[name] = bag.recluster(seed=recluster_seed(seed, step, t))
        reset_optimizer_state(optimizer, bag.parameters())
    return results
