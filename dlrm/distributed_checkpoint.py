"""The checkpoints of a run on ``N`` ranks: each mode's format, every rank's save and load, and one-process loading.

``data`` writes the single-process ``checkpoint.pt`` (rank 0); ``hybrid`` writes
``checkpoint.dcp/step-N/`` with ``torch.distributed.checkpoint`` plus one ``rank{r}.pt`` per rank;
``independent`` writes ``checkpoint.ranks/step-N/rank{r}.pt``. ``step-N`` becomes the checkpoint
when the ``latest`` file naming it is replaced, after every rank wrote its part.
:func:`save_distributed` and :func:`load_distributed` are what
:class:`dlrm.distributed.DistributedTraining`'s ``save`` and ``load`` do; :func:`load_unsharded`
loads any of the three into one process. :mod:`dlrm.distributed` re-exports the public names.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from dlrm.distributed_model import ShardedDLRM, dlrm_state_from_sharded

if TYPE_CHECKING:
    from dlrm.train import TrainConfig

__all__ = ["DCP_DIR", "RANKS_DIR", "LATEST", "checkpoint_name", "save_distributed", "load_distributed",
           "load_unsharded"]

#: where a hybrid run's checkpoints live (inside ``--checkpoint-dir``); an independent run's
DCP_DIR = "checkpoint.dcp"
RANKS_DIR = "checkpoint.ranks"
#: the file naming the step directory that is the checkpoint
LATEST = "latest"


def checkpoint_name(mode: str) -> str:
    """Where a ``--parallel mode`` run's checkpoint lives inside ``--checkpoint-dir``."""
    from dlrm.checkpoint import CHECKPOINT_NAME

    return {"hybrid": DCP_DIR, "data": CHECKPOINT_NAME, "independent": RANKS_DIR}[mode]


def _tensors_only(tree: Any) -> Any:
    """``tree`` (nested dicts) with only its tensors kept (what DCP stores and loads)."""
    if isinstance(tree, Mapping):
        out = {str(k): _tensors_only(v) for k, v in tree.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    return tree if isinstance(tree, torch.Tensor) else None


def _dcp_tree(model_state: Mapping[str, Any], optimizer_states: Sequence[Any],
              best_model: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """What a hybrid rank saves with DCP and loads back into: the tensors of the model, of every
    optimizer and of the best weights (when there are some)."""
    tree: Dict[str, Any] = {"model": _tensors_only(model_state),
                            "optimizer": {str(i): _tensors_only(s) for i, s in enumerate(optimizer_states)}}
    if best_model is not None:
        tree["best_model"] = _tensors_only(best_model)
    return tree


def _read_meta(path: str) -> Dict[str, Any]:
    from dlrm.checkpoint import CheckpointError, safe_load

    way_out = "delete the checkpoint directory or pass --no-resume to start afresh"
    if not os.path.lexists(path):
        raise CheckpointError(f"checkpoint file {path} is missing (written by fewer ranks?); {way_out}")
    meta = safe_load(path, "cpu", way_out)
    if not isinstance(meta, dict) or "config" not in meta or "state" not in meta:
        raise CheckpointError(f"{path} is not a compemb rank checkpoint; {way_out}")
    return meta


def _latest(directory: str) -> Optional[str]:
    """The step directory ``directory/latest`` names (``None`` without one)."""
    pointer = os.path.join(directory, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer, encoding="utf-8") as fh:
        name = fh.read().strip()
    path = os.path.join(directory, name)
    if not name or os.sep in name or not os.path.isdir(path):
        from dlrm.checkpoint import CheckpointError

        raise CheckpointError(f"{pointer} names {name!r}, which is no step directory beside it; delete "
                              f"{directory} or pass --no-resume")
    return path


def save_distributed(path: str, config: Mapping[str, Any], model: Any, optimizer: Any, state: Mapping[str, Any], *,
                     mode: str, rank: int, world_size: int, layout: Mapping[str, Any]) -> None:
    """Write rank ``rank``'s part of a ``mode`` run's checkpoint at ``path``; every rank calls it at
    the same step (``layout``: how a hybrid run's tables were laid out, for :func:`load_unsharded`)."""
    from dlrm.checkpoint import atomic_save, rng_state, save_checkpoint

    is_main = rank == 0
    if mode == "data":
        if is_main:
            save_checkpoint(path, config, model, optimizer, state)
        dist.barrier()
        return
    step_dir = os.path.join(path, f"step-{int(state['step']):09d}")
    if is_main:
        os.makedirs(path, exist_ok=True)
        shutil.rmtree(step_dir, ignore_errors=True)  # (a save killed half-way)
        os.makedirs(step_dir)
    dist.barrier()
    rest = {k: v for k, v in state.items() if k != "best_model"}
    if mode == "hybrid":
        import torch.distributed.checkpoint as dcp

        dcp.save(_dcp_tree(model.state_dict(), optimizer.state_dict(), state.get("best_model")),
                 checkpoint_id=step_dir)
        meta = {"config": dict(config), "state": rest, "rng": rng_state(), "world_size": world_size,
                "parallel": mode, "rank": rank, "has_best": state.get("best_model") is not None,
                "layout": dict(layout)}
        atomic_save(meta, os.path.join(step_dir, f"rank{rank}.pt"))
    else:
        save_checkpoint(os.path.join(step_dir, f"rank{rank}.pt"), config, model, optimizer, state)
    dist.barrier()
    if is_main:
        tmp = os.path.join(path, f"{LATEST}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(os.path.basename(step_dir) + "\n")
        os.replace(tmp, os.path.join(path, LATEST))
        for old in os.listdir(path):
            if old.startswith("step-") and old != os.path.basename(step_dir):
                shutil.rmtree(os.path.join(path, old), ignore_errors=True)
    dist.barrier()


def _refuse_other_formats(path: str, mode: str) -> None:
    from dlrm.checkpoint import CHECKPOINT_NAME, CheckpointError

    directory = os.path.dirname(path)
    for name, other_mode in ((CHECKPOINT_NAME, "data (or one process)"), (DCP_DIR, "hybrid"),
                             (RANKS_DIR, "independent")):
        other = os.path.join(directory, name)
        if name != checkpoint_name(mode) and os.path.exists(other):
            raise CheckpointError(f"{directory} holds a checkpoint of a --parallel {other_mode} run ({other}); this "
                                  f"--parallel {mode} run cannot resume it: use another --checkpoint-dir "
                                  "or pass --no-resume")


def _check_world(step_dir: str, world_size: int) -> None:
    from dlrm.checkpoint import CheckpointError

    ranks = sorted(int(f[4:-3]) for f in os.listdir(step_dir) if f.startswith("rank") and f.endswith(".pt"))
    if ranks != list(range(world_size)):
        raise CheckpointError(f"{step_dir} holds the checkpoints of ranks {ranks}, this run has {world_size} "
                              f"ranks: resume with --nproc-per-node {len(ranks)}")


def load_distributed(path: str, config: Mapping[str, Any], device: Any, *, mode: str, rank: int, world_size: int,
                     model: Any = None, optimizer: Any = None) -> Optional[Dict[str, Any]]:
    """Rank ``rank``'s checkpoint of a ``mode`` run at ``path`` (``None`` when there is none), as
    :func:`dlrm.checkpoint.load_checkpoint` returns one. ``model`` and ``optimizer`` (hybrid: the
    wrapped model and the combined optimizer) give the form their ``load_state_dict`` takes.

    Raises:
        dlrm.checkpoint.CheckpointError: a checkpoint of another mode or world size, or one that
            does not load into this run.
    """
    from dlrm.checkpoint import CheckpointError, check_resumable, load_checkpoint

    _refuse_other_formats(path, mode)
    if mode == "data":
        ckpt = load_checkpoint(path, config, device)
        if ckpt is not None:  # (rank 0 wrote it; each rank has its own device, which may differ)
            ckpt["config"] = {**ckpt["config"], "device": config["device"]}
        return ckpt
    step_dir = _latest(path) if os.path.isdir(path) else None
    if step_dir is None:
        return None
    mine = os.path.join(step_dir, f"rank{rank}.pt")
    if mode == "independent":
        ckpt = load_checkpoint(mine, config, device)
        if ckpt is None:
            raise CheckpointError(f"{mine} is missing: the checkpoint was written by fewer than "
                                  f"{world_size} ranks; resume with as many processes as wrote it")
        _check_world(step_dir, world_size)
        return ckpt
    meta = _read_meta(mine)
    if meta.get("world_size") != world_size:
        raise CheckpointError(f"{step_dir} was written by {meta.get('world_size')} ranks, this run has "
                              f"{world_size}: resume with --nproc-per-node {meta.get('world_size')}")
    check_resumable(meta["config"], config, step_dir)
    import torch.distributed.checkpoint as dcp

    from torchrec.optim.keyed import KeyedOptimizerWrapper

    assert model is not None and optimizer is not None, "prepare() first"
    for _, opt in optimizer.optimizers[0].optimizers:
        if isinstance(opt, KeyedOptimizerWrapper):  # (the dense part; the fused states exist from the start)
            opt.init_state()  # (lazily created states, e.g. Adam's moments, must exist to be loaded into)
    model_state = model.state_dict()
    opt_states = optimizer.state_dict()
    best = copy.deepcopy(model_state) if meta.get("has_best") else None
    try:
        dcp.load(_dcp_tree(model_state, opt_states, best), checkpoint_id=step_dir)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {step_dir} does not load into this run ({first}); delete it or pass "
                              "--no-resume") from None
    state = dict(meta["state"])
    state["best_model"] = best
    return {"config": meta["config"], "model": model_state, "optimizer": opt_states, "state": state,
            "rng": meta["rng"]}


def load_unsharded(checkpoint_dir: str, *, dataset: Any = None, rank: int = 0,
                   device: Any = "cpu") -> Tuple[TrainConfig, nn.Module]:
    """The model of a checkpoint written by ``N`` ranks, loaded into this one process (no process
    group) for evaluation or export: a plain :class:`dlrm.model.DLRM` (or model family) with the
    checkpoint's weights.

    Args:
        checkpoint_dir: the run's ``--checkpoint-dir``.
        dataset: the run's data set (default: loaded as the checkpoint's config says; only its
            cardinalities and features are used).
        rank: ``independent`` checkpoints: whose tables (default rank 0's, the headline's).
        device: where the model goes.

    Raises:
        dlrm.checkpoint.CheckpointError: no distributed checkpoint in ``checkpoint_dir``, or an
            unreadable one.

    Example::

        >>> config, model = load_unsharded("runs/hybrid")  # doctest: +SKIP
        >>> evaluate(model, dataset.split("test"), 4096)   # doctest: +SKIP
    """
    from dlrm.checkpoint import CHECKPOINT_NAME, CheckpointError, read_checkpoint
    from dlrm.train import TrainConfig, build_model

    def config_of(saved: Mapping[str, Any]) -> TrainConfig:
        return dataclasses.replace(TrainConfig(**dict(saved)), device=str(device), checkpoint_dir=None, log_path=None)

    def model_for(config: TrainConfig) -> Any:
        nonlocal dataset
        if dataset is None:
            from dlrm.data import load_dataset

            dataset = load_dataset(config.dataset, **config.dataset_options)
        return build_model(config, dataset)

    dcp_dir, ranks_dir = os.path.join(checkpoint_dir, DCP_DIR), os.path.join(checkpoint_dir, RANKS_DIR)
    if os.path.isdir(dcp_dir) and _latest(dcp_dir) is not None:
        step_dir = _latest(dcp_dir)
        assert step_dir is not None
        meta = _read_meta(os.path.join(step_dir, "rank0.pt"))
        config = config_of(meta["config"])
        model = model_for(config)
        template = ShardedDLRM(model_for(config), pooling_factors=meta["layout"]["pooling_factors"],
                               replicate_rows=meta["layout"]["replicate_rows"])
        state = _tensors_only(template.state_dict())
        import torch.distributed.checkpoint as dcp

        dcp.load({"model": state}, checkpoint_id=step_dir)
        weights = dlrm_state_from_sharded(state, template.sparse_arch, template.feature_names)
    elif os.path.isdir(ranks_dir) and _latest(ranks_dir) is not None:
        step_dir = _latest(ranks_dir)
        assert step_dir is not None
        ckpt = read_checkpoint(os.path.join(step_dir, f"rank{rank}.pt"), "cpu")
        config = config_of(ckpt["config"])
        model, weights = model_for(config), ckpt["model"]
    elif os.path.isfile(os.path.join(checkpoint_dir, CHECKPOINT_NAME)):
        ckpt = read_checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_NAME), "cpu")
        config = config_of(ckpt["config"])
        model, weights = model_for(config), ckpt["model"]
    else:
        raise CheckpointError(f"{checkpoint_dir} holds no checkpoint ({DCP_DIR}/, {RANKS_DIR}/ or {CHECKPOINT_NAME})")
    params = {name for name, _ in model.named_parameters()}
    missing = sorted(params - set(weights))
    if missing:
        raise CheckpointError(f"the checkpoint in {checkpoint_dir} lacks weights {missing[:5]} of the model its "
                              "config builds")
    current = model.state_dict()
    current.update({k: v for k, v in weights.items() if k in current})
    model.load_state_dict(current)
    return config, model.to(device)
