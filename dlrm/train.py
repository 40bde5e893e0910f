"""Training a :class:`dlrm.model.DLRM`: the loop, evaluation and early stopping.

:func:`train` takes a :class:`TrainConfig` and returns the final metrics as a plain dict (what
:mod:`sweeps` records per Optuna trial). Same config, same machine, same thread count: same
weights, bit for bit; a run killed and resumed from its checkpoint (:mod:`dlrm.checkpoint`) ends
as an uninterrupted one. Test metrics come from the weights of the best validation loss
(``test_with="best"``) or the final weights. Optimizers are built by :mod:`dlrm.optim`.

Example::

    >>> from dlrm.train import TrainConfig, train
    >>> result = train(TrainConfig(dataset="movielens-100k", epochs=1))  # doctest: +SKIP
    >>> round(result["test_auc"], 2)  # doctest: +SKIP
    0.79
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from compemb.options import METHODS as METHODS
from compemb.options import check_choice, check_method
from dlrm.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, set_rng_state
from dlrm.metrics import JsonLinesWriter, binary_metrics
from dlrm.model import COLLECTION_BACKENDS, DLRM, DLRMConfig, table_specs
from dlrm.optim import (
    FUSED_OPTIMIZER_BACKENDS,
    OPTIMIZERS,
    Optimizers,
    build_optimizer,
    fbgemm_rowwise_adagrad_available,
    fused_optimizer_for,
)

# torch's sparse Adagrad builds its update with invariant checks off and says so on every run;
# the tensors it builds are its own, so the notice is noise to a user of `compemb train`.
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

__all__ = [
    "TrainConfig",
    "TrainState",
    "train",
    "build_model",
    "build_optimizer",
    "evaluate",
    "OPTIMIZERS",
    "EMBEDDING_COLLECTIONS",
    "TEST_WITH",
    "CHECKPOINT_NAME",
    "Optimizers",
    "fbgemm_rowwise_adagrad_available",
]

#: ``TrainConfig.embedding_collection`` values (``None``: one module per table)
EMBEDDING_COLLECTIONS: Tuple[Optional[str], ...] = tuple(COLLECTION_BACKENDS)
#: ``TrainConfig.test_with``: the weights the test split is evaluated with
TEST_WITH: Tuple[str, ...] = ("best", "final")
_VAL_KEYS = ("val_loss", "val_auc", "val_accuracy")


@dataclass
class TrainConfig:
    """Everything one training run needs.

    Args:
        dataset: name for :func:`dlrm.data.load_dataset` (``movielens-100k``, ``synthetic``,
            ``kaggle``, ``terabyte``).
        dataset_options: keyword options of that loader.
        seed: seeds the model's initialisation and the training order.
        embedding_dim: ``d`` (DLRM's ``--arch-sparse-feature-size``).
        bottom_mlp: bottom MLP widths after the dense input; for ``dot`` the last must be
            ``embedding_dim`` (ignored when the data set has no dense features).
        top_mlp: top MLP widths after the interaction, ending in 1.
        interaction: ``dot`` or ``cat``; interaction_itself: include self dot products.
        method: embedding method of the compressed tables (``full | hash | qr | gqr | crt | path
            | md``); threshold: only tables with more rows than this are compressed.
        embedding_options: further :class:`compemb.config.EmbeddingBagConfig` fields
            (``operation``, ``num_collisions``, ``k``, ``hidden_dims``, ``compose``, ``backend``,
            ``mode``, ``md_dim``).
        md_temperature: ``alpha`` of the mixed-dimension rule (``method="md"``).
        dlrm_compatible_qr: build QR tables with the DLRM-compatible ``QREmbeddingBag``
            (``concat`` is ``2d`` wide and gets projected).
        table_overrides: ``{table name: {field: value}}`` applied to the derived table specs.
        optimizer: ``sgd | adagrad | adam | amsgrad | rowwise_adagrad_fbgemm | sgd_triton_fused``.
        learning_rate, batch_size, epochs: as usual. eval_batch_size: default ``4 * batch_size``.
        eval_every: evaluate every this many steps (``None``/0: every epoch end).
        early_stopping_patience: evaluations without improvement before stopping (``None``: off).
        max_steps: stop after this many optimizer steps in total (``None``: no cap).
        sparse: sparse embedding gradients (``None``: automatic: on with ``sgd``, ``adagrad``
            and ``adam``, whose sparse tables ``SparseAdam`` trains; ``amsgrad`` has no sparse variant).
        checkpoint_dir: where ``checkpoint.pt`` lives (``None``: no checkpoints).
        checkpoint_every: steps between checkpoints (``None``: ``eval_every`` or epoch ends).
        resume: carry on from an existing checkpoint in ``checkpoint_dir``.
        log_path: JSON-lines log of evaluations and the final result (``None``: no log).
        device: torch device string.
        test_with: ``"best"`` (best validation loss) or ``"final"`` weights for the test split.
        embedding_collection: ``None`` (one module per table), ``"fbgemm"`` or ``"triton"``: serve
            all tables from one table-batched collection (methods full, qr, gqr, crt;
            sum/mean pooling); dense table gradients.
    """

    dataset: str = "movielens-100k"
    dataset_options: dict = field(default_factory=dict)
    seed: int = 0
    embedding_dim: int = 16
    bottom_mlp: Tuple[int, ...] = (64, 16)
    top_mlp: Tuple[int, ...] = (64, 1)
    interaction: str = "dot"
    interaction_itself: bool = False
    method: str = "full"
    threshold: int = 0
    embedding_options: dict = field(default_factory=dict)
    md_temperature: Optional[float] = None
    dlrm_compatible_qr: bool = False
    table_overrides: dict = field(default_factory=dict)
    optimizer: str = "adagrad"
    learning_rate: float = 0.05
    batch_size: int = 128
    eval_batch_size: Optional[int] = None
    epochs: int = 1
    eval_every: Optional[int] = None
    early_stopping_patience: Optional[int] = None
    max_steps: Optional[int] = None
    sparse: Optional[bool] = None
    checkpoint_dir: Optional[str] = None
    checkpoint_every: Optional[int] = None
    resume: bool = True
    log_path: Optional[str] = None
    device: str = "cpu"
    test_with: str = "best"
    embedding_collection: Optional[str] = None

    def __post_init__(self) -> None:
        self.bottom_mlp = tuple(int(x) for x in self.bottom_mlp)
        self.top_mlp = tuple(int(x) for x in self.top_mlp)
        self.dataset_options = dict(self.dataset_options)
        self.embedding_options = dict(self.embedding_options)
        self.table_overrides = {str(k): dict(v) for k, v in self.table_overrides.items()}
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_method(self.method)
        check_choice("test_with", self.test_with, TEST_WITH)
        for name in ("batch_size", "epochs", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("eval_batch_size", "eval_every", "early_stopping_patience", "max_steps",
                     "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or a non-negative int, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
                and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.optimizer == "amsgrad" and self.sparse:
            raise ValueError("optimizer 'amsgrad' has no sparse variant in torch; use sparse=False")
        check_choice("embedding_collection", self.embedding_collection, EMBEDDING_COLLECTIONS)
        fused_by = FUSED_OPTIMIZER_BACKENDS.get(self.optimizer, (None,))[0]
        if fused_by is not None and self.embedding_collection not in (None, fused_by):
            raise ValueError(f"optimizer {self.optimizer!r} is fused by the {fused_by!r} "
                             f"collection, got embedding_collection={self.embedding_collection!r}")
        if self.collection_backend is not None and (self.sparse or self.dlrm_compatible_qr):
            raise ValueError(f"embedding_collection={self.collection_backend!r} excludes sparse=True and "
                             "dlrm_compatible_qr (the collection's table gradients are dense)")

    @property
    def collection_backend(self) -> Optional[str]:
        """The collection the tables live in: ``embedding_collection``, or the one the fused
        optimizer needs; ``None``: one module per table."""
        if self.optimizer in FUSED_OPTIMIZER_BACKENDS:
            return FUSED_OPTIMIZER_BACKENDS[self.optimizer][0]
        return self.embedding_collection

    def to_dict(self) -> Dict[str, Any]:
        """The config as a plain dict (what a checkpoint records)."""
        return dataclasses.asdict(self)


# -- building ------------------------------------------------------------------------------------
def _sparse_for(config: TrainConfig) -> bool:
    if config.sparse is not None:
        return bool(config.sparse)
    return config.optimizer in ("sgd", "adagrad", "adam")


def build_model(config: TrainConfig, dataset: Any) -> DLRM:
    """The :class:`DLRM` that ``config`` describes for ``dataset`` (seeded by ``config.seed``)."""
    names = list(getattr(dataset, "feature_names", None) or
                 [f"t{i}" for i in range(len(dataset.cardinalities))])
    specs = table_specs(
        list(dataset.cardinalities), config.embedding_dim, config.method,
        threshold=config.threshold, feature_names=names, md_temperature=config.md_temperature,
        **config.embedding_options,
    )
    if config.table_overrides:
        unknown = sorted(set(config.table_overrides) - set(names))
        if unknown:
            raise ValueError(f"table_overrides name unknown tables {unknown}; tables are {names}")
        specs = [dataclasses.replace(s, **config.table_overrides.get(s.name, {})) for s in specs]
    num_dense = int(dataset.num_dense)
    if config.optimizer == "rowwise_adagrad_fbgemm":
        reason = fbgemm_rowwise_adagrad_available()
        if reason is not None:
            raise ValueError(f"optimizer 'rowwise_adagrad_fbgemm' is unavailable: {reason}")
    fused = fused_optimizer_for(config.optimizer)
    collection = config.collection_backend
    torch.manual_seed(config.seed)
    model_config = DLRMConfig(
        num_dense=num_dense,
        bottom_mlp=config.bottom_mlp if num_dense > 0 else (),
        top_mlp=config.top_mlp,
        tables=specs,
        interaction=config.interaction,
        interaction_itself=config.interaction_itself,
        arch_sparse_feature_size=config.embedding_dim,
        dlrm_compatible_qr=config.dlrm_compatible_qr,
        sparse=_sparse_for(config) and collection is None,
        fused_optimizer=fused[1] if fused is not None else None,
        fused_learning_rate=float(config.learning_rate),
        collection_backend=collection,
    )
    return DLRM(model_config, device=config.device if collection is not None else None).to(config.device)


# -- evaluation ----------------------------------------------------------------------------------
def _to_device(batch: Any, device: torch.device | str) -> Tuple[torch.Tensor, List[torch.Tensor],
                                                                 List[torch.Tensor], torch.Tensor]:
    dense = batch.dense.to(device, non_blocking=True)
    indices = [t.to(device, non_blocking=True) for t in batch.indices]
    offsets = [t.to(device, non_blocking=True) for t in batch.offsets]
    labels = batch.labels.to(device, non_blocking=True).float()
    return dense, indices, offsets, labels


@torch.no_grad()
def evaluate(model: DLRM, split: Any, batch_size: int, device: torch.device | str = "cpu",
             prefix: str = "") -> Dict[str, float]:
    """Log loss, ROC AUC and accuracy of ``model`` on a data split."""
    was_training = model.training
    model.eval()
    probs: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    try:
        for batch in split.batches(batch_size, shuffle=False, seed=0):
            dense, indices, offsets, y = _to_device(batch, device)
            probs.append(model.predict(dense, indices, offsets).double().cpu().numpy())
            labels.append(y.cpu().numpy())
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("cannot evaluate on an empty split")
    return binary_metrics(np.concatenate(labels), np.concatenate(probs), prefix=prefix)


# -- the loop ------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of epoch ``epoch``: each epoch has its own order, fixed by ``seed``."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


@dataclass
class TrainState:
    """Where a training run stands; a checkpoint stores it as :meth:`to_dict`.

    ``best_model`` holds the weights of the best validation loss (early-stopping state) and
    ``history`` one record per evaluation; ``running_loss / running_n`` is the mean training loss
    since the last evaluation.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val_loss: float = math.inf
    best_step: Optional[int] = None
    bad_evals: int = 0
    best_model: Optional[Dict[str, Any]] = None
    last_eval_step: Optional[int] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    finished: bool = False
    train_time_s: float = 0.0
    samples_seen: int = 0
    result: Optional[Dict[str, Any]] = None
    running_loss: float = 0.0
    running_n: int = 0
    best_metrics: Optional[Dict[str, float]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict (no copies: the best weights are large)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, state: Dict[str, Any]) -> TrainState:
        return cls(**state)

    def samples_per_s(self) -> Optional[float]:
        """Training throughput so far (``None`` before the first step)."""
        return self.samples_seen / self.train_time_s if self.train_time_s else None


class _Run:
    """One training run: the model, its optimizer, the loop's state and its checkpoint."""

    def __init__(self, config: TrainConfig, model: DLRM, optimizer: Optimizers, splits: Tuple[Any, Any, Any],
                 device: torch.device) -> None:
        self.config, self.model, self.optimizer, self.device = config, model, optimizer, device
        self.train_split, self.val_split, self.test_split = splits
        self.eval_batch_size = config.eval_batch_size or 4 * config.batch_size
        self.num_batches = -(-len(self.train_split) // config.batch_size)
        self.checkpoint_every = config.checkpoint_every if config.checkpoint_every is not None else config.eval_every
        self.state = TrainState()
        self.log = JsonLinesWriter(config.log_path)
        self.ckpt_path: Optional[str] = None
        if config.checkpoint_dir is not None:
            os.makedirs(config.checkpoint_dir, exist_ok=True)
            self.ckpt_path = os.path.join(config.checkpoint_dir, CHECKPOINT_NAME)

    def resume(self) -> Optional[Dict[str, Any]]:
        """Carry on from the checkpoint, if any; returns the stored result of a finished run."""
        if self.ckpt_path is None or not self.config.resume:
            return None
        ckpt = load_checkpoint(self.ckpt_path, self.config.to_dict(), self.device)
        if ckpt is None:
            return None
        if ckpt["state"]["finished"] and ckpt["config"] == self.config.to_dict():
            return dict(ckpt["state"]["result"])
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState.from_dict(ckpt["state"])
        self.state.finished = False
        set_rng_state(ckpt["rng"])
        return None

    def save(self) -> None:
        if self.ckpt_path is not None:
            save_checkpoint(self.ckpt_path, self.config.to_dict(), self.model, self.optimizer, self.state.to_dict())

    def capped(self) -> bool:
        return self.config.max_steps is not None and self.state.step >= self.config.max_steps

    def validate(self) -> None:
        """Evaluate on the validation split; track the best weights and early stopping."""
        st = self.state
        metrics = evaluate(self.model, self.val_split, self.eval_batch_size, self.device, prefix="val_")
        st.last_eval_step = st.step
        if metrics["val_loss"] < st.best_val_loss:
            st.best_val_loss, st.best_step, st.bad_evals = metrics["val_loss"], st.step, 0
            st.best_model = copy.deepcopy(self.model.state_dict())
            st.best_metrics = dict(metrics)
        else:
            st.bad_evals += 1
        record = {"event": "eval", "step": st.step, "epoch": st.epoch, **metrics,
                  "train_loss": st.running_loss / st.running_n if st.running_n else None,
                  "samples_per_s": st.samples_per_s()}
        st.history.append(record)
        self.log.write(record)
        st.running_loss, st.running_n = 0.0, 0
        patience = self.config.early_stopping_patience
        if patience and st.bad_evals >= patience:
            st.stopped_early = True

    def fit(self, progress: bool, step_hook: Optional[Callable[[int], None]]) -> None:
        """Train epoch after epoch until the epochs, ``max_steps`` or the patience run out."""
        bar = self._progress_bar() if progress else None
        self.model.train()
        try:
            while self.state.epoch < self.config.epochs and not self.state.stopped_early and not self.capped():
                if self.state.batch_in_epoch < self.num_batches and not self._train_epoch(bar, step_hook):
                    break  # stopped inside the epoch
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                if not self.config.eval_every:
                    self.validate()
                self.save()
        finally:
            if bar is not None:
                bar.close()

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        total = self.config.epochs * self.num_batches
        if self.config.max_steps is not None:
            total = min(total, self.config.max_steps)
        return tqdm(total=total, initial=min(self.state.step, total), unit="step", dynamic_ncols=True)

    def _train_epoch(self, bar: Any, step_hook: Optional[Callable[[int], None]]) -> bool:
        """Train the rest of the current epoch; ``False`` when stopped inside it."""
        cfg, st = self.config, self.state
        batches = self.train_split.batches(cfg.batch_size, shuffle=True, seed=_epoch_seed(cfg.seed, st.epoch),
                                           start_batch=st.batch_in_epoch)
        tick = time.perf_counter()
        for batch in batches:
            loss = self._train_step(batch)
            st.train_time_s += time.perf_counter() - tick
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{st.samples_per_s() or 0.0:.0f}")
            if cfg.eval_every and st.step % cfg.eval_every == 0:
                self.validate()
            if self.checkpoint_every and st.step % self.checkpoint_every == 0:
                self.save()
            if step_hook is not None:
                step_hook(st.step)
            tick = time.perf_counter()
            if st.stopped_early or self.capped():
                break
        return st.batch_in_epoch >= self.num_batches

    def _train_step(self, batch: Any) -> float:
        """One optimizer step on ``batch``; returns its loss."""
        dense, indices, offsets, y = _to_device(batch, self.device)
        self.optimizer.zero_grad()
        loss = DLRM.loss(self.model(dense, indices, offsets), y)
        loss.backward()
        self.optimizer.step()
        n = int(y.shape[0])
        value = float(loss.detach())
        self.state.step += 1
        self.state.batch_in_epoch += 1
        self.state.samples_seen += n
        self.state.running_loss += value * n
        self.state.running_n += n
        return value

    def finish(self, wall_start: float) -> Dict[str, Any]:
        """Validate if the last step was not, test, record the result and return it."""
        st, model = self.state, self.model
        if st.last_eval_step != st.step or not st.history:
            self.validate()
        final_weights = None
        if self.config.test_with == "best" and st.best_model is not None and st.best_metrics is not None:
            # the validation metrics of the best weights were recorded when they were evaluated
            val = {k: st.best_metrics[k] for k in _VAL_KEYS}
            if st.best_step != st.step:
                final_weights = copy.deepcopy(model.state_dict())
                model.load_state_dict(st.best_model)
        else:
            val = {k: st.history[-1][k] for k in _VAL_KEYS}
        test = evaluate(model, self.test_split, self.eval_batch_size, self.device, prefix="test_")
        if final_weights is not None:
            model.load_state_dict(final_weights)
        result = {
            **val, **test,
            "embedding_params": model.embedding_parameters(),
            "mlp_params": model.mlp_parameters(),
            "total_params": model.num_parameters(),
            "tables": model.table_parameters(),
            "steps": st.step,
            "epochs_completed": st.epoch,
            "best_step": st.best_step,
            "samples_per_s": st.samples_per_s() or 0.0,
            "wall_time_s": time.perf_counter() - wall_start,
            "stopped_early": bool(st.stopped_early),
        }
        st.finished = True
        st.result = result
        self.save()
        self.log.write({"event": "final", **result})
        return result


def _splits(config: TrainConfig, dataset: Any) -> Tuple[Any, Tuple[Any, Any, Any]]:
    """The data set (loaded as ``config`` says when ``None``) and its train / val / test splits,
    refused now, not after an epoch of training, when one is empty."""
    if dataset is None:
        from dlrm.data import load_dataset

        dataset = load_dataset(config.dataset, **config.dataset_options)
    splits = tuple(dataset.split(s) for s in ("train", "val", "test"))
    for split in splits:
        if len(split) == 0:
            raise ValueError(f"split {split.name!r} of data set {getattr(dataset, 'name', '?')!r} is empty; "
                             "training needs rows in 'train', 'val' and 'test'")
    return dataset, splits


def train(
    config: TrainConfig,
    *,
    progress: bool = False,
    step_hook: Optional[Callable[[int], None]] = None,
    dataset: Any = None,
    customize_model: Optional[Callable[[DLRM], None]] = None,
) -> Dict[str, Any]:
    """Train a DLRM as ``config`` describes and return its final metrics.

    Args:
        config: a :class:`TrainConfig`.
        progress: show a tqdm progress bar with samples/s.
        step_hook: called with the step number after every optimizer step (after any
            evaluation and checkpoint of that step); an exception raised there aborts training
            as a kill would (used to test resuming).
        dataset: an already loaded data set (default: ``dlrm.data.load_dataset(config.dataset,
            **config.dataset_options)``).
        customize_model: called with the freshly built model before the optimizer is made
            (e.g. to swap in a table of an exact size with :meth:`DLRM.replace_table`). It is not
            part of the config: a resumed run must pass the same one.

    Returns:
        ``val_loss, val_auc, val_accuracy, test_loss, test_auc, test_accuracy,
        embedding_params, mlp_params, total_params, steps, epochs_completed, best_step,
        samples_per_s, wall_time_s, stopped_early, tables`` (parameters per table).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    wall_start = time.perf_counter()
    device = torch.device(config.device)
    dataset, splits = _splits(config, dataset)
    random.seed(config.seed)
    np.random.seed(config.seed % (2**32))
    model = build_model(config, dataset)
    if customize_model is not None:
        customize_model(model)
        model.to(device)
    run = _Run(config, model, build_optimizer(config, model), splits, device)
    stored = run.resume()
    if stored is not None:
        return stored
    run.fit(progress, step_hook)
    return run.finish(wall_start)
