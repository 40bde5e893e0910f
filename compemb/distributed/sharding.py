"""Shard a model holding :class:`ShardableEmbeddingBagCollection`\\ s with TorchRec.

:func:`shard` plans (TorchRec's ``EmbeddingShardingPlanner``, with the pins and pooling factors
of :func:`parameter_constraints`), wraps the model in ``DistributedModelParallel`` and copies the
unsharded weights into the shards (:func:`load_unsharded_state_dict`): on CPU, DMP initialises
shards afresh instead of copying the module's weights. :func:`combined_optimizer` pairs DMP's
fused (in-backward) optimizer of the sharded tables with an ordinary optimizer over everything
else (replicated tables, path maps, md projections, data-parallel tables, MLPs): TorchRec's
fused optimizer does not update data-parallel tables.

Facts a caller must keep (pinned by ``tests/test_distributed.py``): call the DMP module
(``dmp(x)``), never ``dmp.module(x)`` (it skips DDP's gradient allreduce); read outputs by key
(sharding reorders a ``KeyedTensor``'s keys); the sharded tables' gradients are divided by the
world size in the output all-to-all (TorchRec's default), as DDP averages the dense gradients,
so ``W`` ranks with local-mean losses equal one process with the global-mean loss.

Example (in every rank of an initialised process group)::

    coll = ShardableEmbeddingBagCollection(configs, seed=0)
    model = shard(MyModel(coll), sharding_types={"C3__t1": "row_wise"},
                  fused_params={"optimizer": "exact_sgd", "learning_rate": 0.1})
    opt = combined_optimizer(model, lambda params: torch.optim.SGD(params, lr=0.1))
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from compemb.distributed.collection import ShardableEmbeddingBagCollection
from compemb.functional import check_int
from compemb.options import SHARDING_TYPES, check_choice

__all__ = [
    "sharders",
    "collections_of",
    "parameter_constraints",
    "plan",
    "shard",
    "load_unsharded_state_dict",
    "combined_optimizer",
    "EMBEDDING_COLLECTION_SHARDING_TYPES",
]

#: the sharding types served for per-index tables (TorchRec's EmbeddingCollection). TorchRec
#: 1.8 also offers data_parallel, whose lookup returns pooled rows on CPU (a split_with_sizes
#: error): replicate such a table with ``replicate_rows`` instead.
EMBEDDING_COLLECTION_SHARDING_TYPES = ("table_wise", "row_wise", "column_wise")

ShardingTypes = Union[None, str, Mapping[str, str]]


class _EmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """TorchRec's sharder, offering row-wise sharding on CPU too (gloo serves it)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return super().sharding_types("cuda" if compute_device_type == "cpu" else compute_device_type)


class _EmbeddingCollectionSharder(EmbeddingCollectionSharder):
    """TorchRec's sharder without data_parallel (see :data:`EMBEDDING_COLLECTION_SHARDING_TYPES`)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [t for t in super().sharding_types(compute_device_type) if t in EMBEDDING_COLLECTION_SHARDING_TYPES]


def _fused(fused_params: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    if fused_params is None:
        return None
    out = dict(fused_params)
    opt = out.get("optimizer")
    if isinstance(opt, str):  # "exact_sgd", "exact_rowwise_adagrad", ... as FBGEMM's OptimType
        from fbgemm_gpu.split_embedding_configs import EmbOptimType

        try:
            out["optimizer"] = EmbOptimType(opt)
        except ValueError:
            raise ValueError(f"fused_params optimizer {opt!r} is not an FBGEMM EmbOptimType "
                             f"({[o.value for o in EmbOptimType]})") from None
    return out


def sharders(fused_params: Optional[Mapping[str, Any]] = None) -> List[ModuleSharder[nn.Module]]:
    """TorchRec sharders for the ``ebc`` and ``ecs`` of a :class:`ShardableEmbeddingBagCollection`.

    Args:
        fused_params: the sharded tables' in-backward optimizer, e.g. ``{"optimizer":
            "exact_sgd", "learning_rate": 0.1}`` (FBGEMM ``EmbOptimType`` values or members).
    """
    fused = _fused(fused_params)
    return [_EmbeddingBagCollectionSharder(fused_params=fused), _EmbeddingCollectionSharder(fused_params=fused)]


def collections_of(model: nn.Module) -> List[ShardableEmbeddingBagCollection]:
    """Every :class:`ShardableEmbeddingBagCollection` inside ``model`` (``model`` itself included)."""
    return [m for m in model.modules() if isinstance(m, ShardableEmbeddingBagCollection)]


def parameter_constraints(model: nn.Module, sharding_types: ShardingTypes = None,
                          device_memory_only: bool = False) -> Dict[str, ParameterConstraints]:
    """TorchRec planner constraints for every sharded component table of ``model``.

    Args:
        model: a module holding :class:`ShardableEmbeddingBagCollection`\\ s.
        sharding_types: ``None`` (the planner chooses), one of
            :data:`compemb.options.SHARDING_TYPES` for every table, or a mapping from a component
            table (``"C3__t1"``) or a feature (``"C3"``: all its sharded tables) to one.
        device_memory_only: allow only the kernels that keep a table in device memory (no UVM
            or host caching), so that a plan exists only when the tables fit the devices.

    Returns:
        table name -> ``ParameterConstraints`` with the pinned sharding type (if any) and the
        table's pooling factors (one per TorchRec feature that reads it).

    Raises:
        ValueError: an unknown sharding type, a name that is no sharded table or feature, or a
            type the table's TorchRec module cannot serve (per-index tables: no table-row-wise),
            each naming the value.
    """
    colls = collections_of(model)
    if not colls:
        raise ValueError(f"{type(model).__name__} holds no ShardableEmbeddingBagCollection")
    tables: Dict[str, Any] = {}
    for coll in colls:
        for lay in coll.layouts:
            for t in lay.sharded_tables:
                if t.name in tables:  # (TorchRec plans tables by name, model-wide)
                    raise ValueError(f"two collections in {type(model).__name__} have a table named {t.name!r}: "
                                     "give their features distinct names")
                pf = [lay.pooling_factor / lay.split_classes] * lay.split_classes if lay.lookup == "split" \
                    else [lay.pooling_factor]
                tables[t.name] = (lay, t, pf)
    pins: Dict[str, str] = {}
    if isinstance(sharding_types, str):
        check_choice("sharding type", sharding_types, SHARDING_TYPES)
        pins = {name: sharding_types for name in tables}
    elif sharding_types is not None:
        features = {lay.name: [t.name for t in lay.sharded_tables] for lay, _, _ in tables.values()}
        all_features = {lay.name: lay for coll in colls for lay in coll.layouts}
        for key, value in sharding_types.items():
            check_choice(f"sharding type of {key!r}", value, SHARDING_TYPES)
            if key in tables:
                pins[key] = value
            elif key in features:
                pins.update({name: value for name in features[key]})
            elif key in all_features:
                raise ValueError(f"feature {key!r} has no sharded table (all its tables have at most "
                                 f"replicate_rows rows and are replicated): cannot pin {value!r}")
            else:
                raise ValueError(f"sharding_types names {key!r}, which is no sharded table or feature; "
                                 f"tables are {sorted(tables)}")
    out: Dict[str, ParameterConstraints] = {}
    for name, (lay, t, pf) in tables.items():
        pin = pins.get(name)
        if pin is not None and lay.lookup == "per_index" and pin not in EMBEDDING_COLLECTION_SHARDING_TYPES:
            raise ValueError(f"table {name!r} is looked up per index (TorchRec EmbeddingCollection), which "
                             f"serves {EMBEDDING_COLLECTION_SHARDING_TYPES}, not {pin!r}"
                             + ("; replicate it instead (replicate_rows >= its rows)" if pin == "data_parallel" else ""))
        kwargs: Dict[str, Any] = {"pooling_factors": pf}
        if device_memory_only:
            kwargs["compute_kernels"] = ["fused", "dense"]
        if pin is not None:
            kwargs["sharding_types"] = [pin]
            if pin in ("column_wise", "table_column_wise") and t.dim % 4 == 0 and t.dim >= 8:
                kwargs["min_partition"] = 4  # (let the planner split narrow tables too)
        out[name] = ParameterConstraints(**kwargs)
    return out


def plan(
    model: nn.Module,
    *,
    world_size: Optional[int] = None,
    compute_device: str = "cpu",
    sharding_types: ShardingTypes = None,
    fused_params: Optional[Mapping[str, Any]] = None,
    process_group: Optional[dist.ProcessGroup] = None,
    local_world_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    hbm_cap: Optional[int] = None,
    device_memory_only: bool = False,
) -> ShardingPlan:
    """TorchRec's sharding plan for ``model``.

    With ``process_group`` (or an initialised default group and no ``world_size``) the plan is
    computed collectively (rank 0's plan, broadcast); otherwise it is a dry run for
    ``world_size`` devices of ``compute_device`` (no device or process group needed: build the
    model on ``device="meta"``). ``device_memory_only``: see :func:`parameter_constraints`.

    Raises:
        torchrec.distributed.planner.types.PlannerError: no plan fits the devices.
    """
    if world_size is None:
        if process_group is None:
            if not dist.is_initialized():
                raise ValueError("plan: give world_size (dry run) or initialise a process group")
            process_group = dist.GroupMember.WORLD
        assert process_group is not None
        world_size = process_group.size()
    world_size = check_int("world_size", world_size, 1, "plan")
    topology = Topology(world_size=world_size, compute_device=compute_device, hbm_cap=hbm_cap,
                        local_world_size=local_world_size or world_size)
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size,
                                       constraints=parameter_constraints(model, sharding_types, device_memory_only),
                                       debug=False)
    if process_group is not None:
        return planner.collective_plan(model, sharders(fused_params), process_group)
    return planner.plan(model, sharders(fused_params))


def _shard_slices(shard_metadata: Any) -> tuple:
    return tuple(slice(o, o + s) for o, s in zip(shard_metadata.shard_offsets, shard_metadata.shard_sizes))


@torch.no_grad()
def load_unsharded_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> List[str]:
    """Copy full (unsharded) tensors into a sharded model's shards and replicas.

    Args:
        model: a ``DistributedModelParallel`` (or any module whose ``state_dict`` holds
            ``ShardedTensor``\\ s and plain tensors).
        state: key -> the full tensor (e.g. the unsharded model's ``state_dict()`` on every rank).
        strict: every key of ``model.state_dict()`` must be in ``state``.

    Returns:
        The keys of ``model.state_dict()`` that ``state`` did not hold (empty when ``strict``).
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    target = model.state_dict()
    missing = [k for k in target if k not in state]
    if strict and missing:
        raise KeyError(f"load_unsharded_state_dict: {missing[:5]} missing from the given state")
    for key, dst in target.items():
        if key not in state:
            continue
        src = state[key]
        if not isinstance(dst, torch.Tensor):  # a module's extra state (e.g. a compemb family spec)
            target[key] = src
            continue
        if tuple(dst.shape) != tuple(src.shape):
            raise ValueError(f"{key}: the given tensor has shape {tuple(src.shape)}, the model's {tuple(dst.shape)}")
        if isinstance(dst, ShardedTensor):
            for shard in dst.local_shards():
                shard.tensor.copy_(src[_shard_slices(shard.metadata)])
        else:
            dst.copy_(src)
    model.load_state_dict(target, strict=False)  # (writes through where state_dict gave copies)
    return missing


def shard(
    model: nn.Module,
    *,
    env: Optional[ShardingEnv] = None,
    device: Union[str, torch.device, None] = None,
    sharding_types: ShardingTypes = None,
    fused_params: Optional[Mapping[str, Any]] = None,
    sharding_plan: Optional[ShardingPlan] = None,
    copy_weights: bool = True,
) -> DistributedModelParallel:
    """Wrap ``model`` in ``DistributedModelParallel``, its compemb tables sharded by TorchRec.

    Every rank calls it with the same model (same weights: build with one ``seed``). The sharded
    component tables go where TorchRec's planner (or ``sharding_plan``) puts them; everything else
    (replicated tables, MLPs) is wrapped in DDP. With ``copy_weights`` the model's weights are
    copied into the shards afterwards (DMP would otherwise re-initialise them).

    Args:
        model: a module holding :class:`ShardableEmbeddingBagCollection`\\ s.
        env: TorchRec's ``ShardingEnv`` (default: the default process group).
        device: the compute device (default CPU; ``cuda`` with NCCL).
        sharding_types, fused_params: see :func:`parameter_constraints` and :func:`sharders`.
        sharding_plan: a plan from :func:`plan` (default: planned here, collectively).
        copy_weights: copy the unsharded weights into the shards.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if env is None:
        if not dist.is_initialized():
            raise RuntimeError("shard: initialise a process group first (torch.distributed.init_process_group)")
        env = ShardingEnv.from_process_group(dist.GroupMember.WORLD)
    assert env.process_group is not None
    full = ({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
            if copy_weights else None)
    if sharding_plan is None:
        sharding_plan = plan(model, compute_device=device.type, sharding_types=sharding_types,
                             fused_params=fused_params, process_group=env.process_group)
    dmp = DistributedModelParallel(model, env=env, device=device, plan=sharding_plan, sharders=sharders(fused_params))
    if full is not None:
        load_unsharded_state_dict(dmp, full)
    return dmp


def combined_optimizer(
    model: DistributedModelParallel,
    dense: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
) -> CombinedOptimizer:
    """DMP's fused optimizer (sharded tables) plus ``dense(params)`` over every other parameter.

    The other parameters are the replicated component tables, md projections, path maps,
    data-parallel TorchRec tables (the fused optimizer skips them) and the dense layers.
    """
    params = dict(in_backward_optimizer_filter(model.named_parameters()))
    parts: List[Any] = [model.fused_optimizer]
    if params:
        parts.append(KeyedOptimizerWrapper(params, lambda ps: dense(ps)))
    return CombinedOptimizer(parts)
