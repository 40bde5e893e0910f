"""The optimizers of a DLRM training run, by name.

``sgd``, ``adagrad``, ``adam`` and ``amsgrad`` are torch's (``adam`` with sparse table gradients
uses :class:`torch.optim.SparseAdam` for those tables). ``rowwise_adagrad_fbgemm`` and
``sgd_triton_fused`` are fused: a table-batched collection updates the tables inside the backward
pass, and torch's Adagrad / SGD with the same learning rate trains the MLPs. Which collection
backend fuses which optimizer is asked of :func:`compemb.kernels.get_collection_backend`.

Example::

    >>> fused_optimizer_for("sgd_triton_fused")
    ('triton', 'exact_sgd')
    >>> fused_optimizer_for("adam") is None
    True
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    from dlrm.models import RecModel
    from dlrm.train import TrainConfig

__all__ = [
    "OPTIMIZERS",
    "FUSED_OPTIMIZER_BACKENDS",
    "Optimizers",
    "fused_optimizer_for",
    "fused_optimizer_unavailable",
    "fbgemm_rowwise_adagrad_available",
    "build_optimizer",
    "dense_optimizer",
]

#: the DLRM optimizer names that a collection fuses -> (collection backend, its fused optimizer)
FUSED_OPTIMIZER_BACKENDS: Dict[str, Tuple[str, str]] = {
    "rowwise_adagrad_fbgemm": ("fbgemm", "exact_rowwise_adagrad"),
    "sgd_triton_fused": ("triton", "exact_sgd"),
}
OPTIMIZERS: Tuple[str, ...] = ("sgd", "adagrad", "adam", "amsgrad", *FUSED_OPTIMIZER_BACKENDS)


def fused_optimizer_for(name: str) -> Optional[Tuple[str, str]]:
    """``(collection backend, fused optimizer)`` for a fused DLRM optimizer name, else ``None``.

    Raises:
        ValueError: the backend does not fuse that optimizer (the table and the backend disagree).
    """
    if name not in FUSED_OPTIMIZER_BACKENDS:
        return None
    from compemb.kernels import get_collection_backend

    backend, fused = FUSED_OPTIMIZER_BACKENDS[name]
    offered = get_collection_backend(backend).fused_optimizers
    if fused not in offered:
        raise ValueError(f"optimizer {name!r} needs {fused!r} from the {backend!r} collection, which fuses {offered}")
    return backend, fused


def fused_optimizer_unavailable(name: str) -> Optional[str]:
    """``None`` if the fused optimizer ``name`` can run here, else the reason it cannot (the
    collection backend is asked; dlrm never imports its packages itself)."""
    try:
        from compemb.kernels import get_collection_backend
    except Exception as exc:  # ImportError, or a backend failing to load
        return f"compemb.kernels cannot be imported ({type(exc).__name__}: {exc})"
    backend, _ = FUSED_OPTIMIZER_BACKENDS[name]
    return get_collection_backend(backend).unavailable_reason()


def fbgemm_rowwise_adagrad_available() -> Optional[str]:
    """``None`` if FBGEMM's fused row-wise Adagrad can be used, else the reason it cannot."""
    return fused_optimizer_unavailable("rowwise_adagrad_fbgemm")


class Optimizers:
    """Several optimizers stepped as one (e.g. SparseAdam for tables + Adam for the MLPs)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        # torch's sparse Adagrad builds its update tensors without choosing whether their
        # invariants are checked, and warns so; they are well formed: opt out, explicitly
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            for opt in self.optimizers:
                opt.step()

    def state_dict(self) -> List[Dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: Sequence[Dict[str, Any]]) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(states)} optimizer states, expected {len(self.optimizers)}")
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)


def _check_fused_model(name: str, model: RecModel) -> None:
    """The model's collection must be the one that fuses optimizer ``name``."""
    backend, fused = FUSED_OPTIMIZER_BACKENDS[name]
    coll = model.collection
    if coll is None or coll.backend != backend or coll.optimizer != fused:
        raise ValueError(f"optimizer {name!r} needs a model built with collection_backend={backend!r} "
                         f"and fused_optimizer={fused!r} (build_model does this)")


def build_optimizer(config: TrainConfig, model: RecModel) -> Optimizers:
    """The optimizer(s) for ``model`` as ``config`` (its ``optimizer`` and ``learning_rate``) asks."""
    assert config.learning_rate is not None  # TrainConfig resolves the default
    lr = float(config.learning_rate)
    name = config.optimizer
    params = list(model.parameters())
    if name in FUSED_OPTIMIZER_BACKENDS:
        _check_fused_model(name, model)
        # the tables are updated inside the collection's backward; the MLPs use torch's optimizer
        return Optimizers([dense_optimizer(name, params, lr)])
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    sparse = [p for p in params if id(p) in sparse_ids]
    dense = [p for p in params if id(p) not in sparse_ids]
    if name == "adam":
        opts: List[torch.optim.Optimizer] = []
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=lr))
        if dense:
            opts.append(dense_optimizer(name, dense, lr))
        return Optimizers(opts)
    if name == "amsgrad" and sparse:
        raise ValueError("optimizer 'amsgrad' cannot take sparse gradients; build with sparse=False")
    return Optimizers([dense_optimizer(name, params, lr)])


def dense_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """torch's optimizer that trains dense parameters (all of them, or the MLPs beside tables a
    fused optimizer or SparseAdam updates) for the DLRM optimizer ``name``, at learning rate ``lr``.

    Raises:
        ValueError: ``name`` is no optimizer of :data:`OPTIMIZERS`.
    """
    if name in ("sgd", "sgd_triton_fused"):
        return torch.optim.SGD(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, foreach=False)
    if name == "rowwise_adagrad_fbgemm":
        return torch.optim.Adagrad(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "amsgrad":
        return torch.optim.Adam(params, lr=lr, amsgrad=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
