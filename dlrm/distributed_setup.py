"""What a run on ``N`` ranks may combine, checked before any rank trains, and the rank's place in the world.

:func:`check_parallel` refuses a ``--parallel`` combination that cannot run (naming the value);
:func:`fused_optimizer_name` maps a torch optimizer onto the FBGEMM one that trains a hybrid run's
sharded tables; :func:`world_from_env` reads the rank and world size torchrun sets; :func:`close_process_group`
takes the default group down without gloo's teardown deadlock. Imported by
:mod:`dlrm.launch` before any process group exists; :mod:`dlrm.distributed` re-exports its names.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional, Tuple

import torch

if TYPE_CHECKING:
    from dlrm.train import TrainConfig

__all__ = ["PARALLEL_MODES", "check_parallel", "world_from_env", "fused_optimizer_name", "close_process_group"]

#: ``compemb train --parallel`` values
PARALLEL_MODES: Tuple[str, ...] = ("hybrid", "data", "independent")
#: the torch optimizers a hybrid run maps onto FBGEMM's fused ones (CPU serves the first two)
_FUSED = {"sgd": "exact_sgd", "adagrad": "exact_adagrad", "adam": "adam"}
_CPU_FUSED = ("exact_sgd", "exact_adagrad")


def world_from_env() -> Tuple[int, int, int]:
    """``(rank, world size, local rank)`` as torchrun sets them (``(0, 1, 0)`` outside a launcher)."""
    def get(name: str, default: int) -> int:
        text = os.environ.get(name)
        try:
            return int(text) if text not in (None, "") else default
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    return get("RANK", 0), get("WORLD_SIZE", 1), get("LOCAL_RANK", 0)


def close_process_group() -> None:
    """Destroy the default process group (if any) after the objects that use it are collected.

    A ``DistributedDataParallel`` module (also inside TorchRec's ``DistributedModelParallel``) holds
    the group in C++ through its reducer. When that reducer is freed after the group left
    ``torch.distributed``, it destroys the group while holding the GIL, and gloo's destructor waits
    for its worker thread, which may need the GIL to release a finished collective's tensors: the
    process hangs. Callers drop their references to the wrapped models first; this collects what
    cycles still hold, so that ``destroy_process_group`` (which releases the GIL) destroys the group.
    """
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def fused_optimizer_name(optimizer: str, device_type: str) -> str:
    """The FBGEMM optimizer that trains a hybrid run's sharded tables as ``optimizer`` would.

    Raises:
        ValueError: naming the optimizer when no fused optimizer matches it on ``device_type``.
    """
    fused = _FUSED.get(optimizer)
    if fused is None:
        raise ValueError(f"--optimizer {optimizer} cannot train TorchRec-sharded tables (--parallel hybrid trains "
                         f"them with FBGEMM's fused {sorted(_FUSED)}): use --parallel data or independent, "
                         "or another --optimizer")
    if device_type != "cuda" and fused not in _CPU_FUSED:
        raise ValueError(f"--optimizer {optimizer} cannot train TorchRec-sharded tables on {device_type} (FBGEMM's "
                         f"CPU kernels fuse {list(_CPU_FUSED)}): use --optimizer sgd or adagrad, --device cuda, "
                         "or --parallel data")
    return fused


def check_parallel(config: TrainConfig, mode: str, world_size: int, *, sharding_type: Optional[str] = None,
                   replicate_rows: Optional[int] = None, memory_per_rank_gb: Optional[float] = None) -> None:
    """Refuse, before any process starts training, what ``mode`` on ``world_size`` ranks cannot run.

    Raises:
        ValueError: naming the value: a world size that does not divide ``config.batch_size``, an
            unknown mode, flags that only one mode takes, a table collection, fused optimizer,
            model family or option the mode cannot serve.
    """
    from compemb.options import SHARDING_TYPES, check_choice

    check_choice("--parallel", mode, PARALLEL_MODES)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"--parallel {mode} needs at least 2 processes (--nproc-per-node N or torchrun), "
                         f"got a world size of {world_size!r}")
    if config.batch_size % world_size:
        low = config.batch_size // world_size * world_size
        hint = f"{low} or {low + world_size}" if low else str(world_size)
        raise ValueError(f"--mini-batch-size {config.batch_size} (the global batch) is not divisible by the world size "
                         f"{world_size}: each rank takes an equal slice of every batch; use e.g. {hint}")
    if sharding_type is not None:
        check_choice("--sharding-type", sharding_type, SHARDING_TYPES)
    model = getattr(config, "model", "dlrm")
    if getattr(config, "recluster_every", None):
        raise ValueError(f"--recluster-every {config.recluster_every} cannot combine with --parallel {mode} "
                         "(re-clustering rebuilds the tables in one process)")
    if config.device.startswith("cuda:"):
        raise ValueError(f"--device {config.device} names one GPU; with {world_size} processes give --device cuda "
                         "(rank r uses GPU LOCAL_RANK)")
    if memory_per_rank_gb is not None and not (memory_per_rank_gb > 0 and math.isfinite(memory_per_rank_gb)):
        raise ValueError(f"--memory-per-rank-gb must be a finite number > 0, got {memory_per_rank_gb}")
    if mode != "hybrid":
        for flag, value in (("--sharding-type", sharding_type), ("--replicate-rows", replicate_rows)):
            if value is not None:
                raise ValueError(f"{flag} {value} cannot combine with --parallel {mode}: only --parallel hybrid "
                                 "shards tables")
    if mode == "hybrid":
        if model != "dlrm":
            raise ValueError(f"--model {model} cannot combine with --parallel hybrid (its tables are sharded for the "
                             "DLRM only): use --parallel data or independent")
        if config.embedding_collection is not None:
            raise ValueError(f"--embedding-collection {config.embedding_collection} cannot combine with --parallel "
                             "hybrid: TorchRec's sharded collection serves the tables there; use --parallel data "
                             "or independent")
        if config.collection_backend is not None:
            raise ValueError(f"--optimizer {config.optimizer} (fused into the {config.collection_backend} collection) "
                             "cannot combine with --parallel hybrid: TorchRec's fused optimizer trains the sharded "
                             "tables there; use --optimizer sgd or adagrad, or --parallel independent")
        if config.dlrm_compatible_qr:
            raise ValueError("--dlrm-compatible-qr cannot combine with --parallel hybrid (DLRM's QREmbeddingBag is "
                             "no compemb table TorchRec can shard); drop it or use --parallel data")
        fused_optimizer_name(config.optimizer, torch.device(config.device).type)
        if replicate_rows is not None and (isinstance(replicate_rows, bool) or replicate_rows < 0):
            raise ValueError(f"--replicate-rows must be >= 0, got {replicate_rows}")
    elif mode == "data":
        from dlrm.optim import FUSED_OPTIMIZER_BACKENDS

        if config.optimizer in FUSED_OPTIMIZER_BACKENDS:
            raise ValueError(f"--optimizer {config.optimizer} cannot combine with --parallel data: it updates the "
                             "tables inside the backward pass, before DDP could average their gradients; use "
                             "--parallel independent or a torch optimizer")
        if config.sparse:
            raise ValueError("--sparse on cannot combine with --parallel data (DDP averages dense gradients); "
                             "use --sparse auto or off")
