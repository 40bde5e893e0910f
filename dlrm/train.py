"""Training a :class:`dlrm.model.DLRM`: the loop, evaluation and early stopping.

:func:`train` takes a :class:`TrainConfig` and returns the final metrics as a plain dict (what
:mod:`sweeps` records per Optuna trial). Same config, same machine, same thread count: same
weights, bit for bit; a run killed and resumed from its checkpoint (:mod:`dlrm.checkpoint`) ends
as an uninterrupted one, its log included. Test metrics come from the weights of the best
validation loss (``test_with="best"``) or the final weights. Optimizers are built by :mod:`dlrm.optim`.

A run whose model dies (non-finite loss or weights, or the same prediction for every validation or
test sample) raises :class:`TrainingCollapsedError` instead of returning a result. What would fail
later (the device, the log file, the checkpoint directory) is refused before any work
(:func:`preflight`).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from compemb.options import METHODS as METHODS
from dlrm.accounting import compression_metrics, compression_summary
from dlrm.collapse import TrainingCollapsedError, check_predictions, check_weights
from dlrm.preflight import preflight
from dlrm.config import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_WARMUP_STEPS,
    EMBEDDING_COLLECTIONS,
    TEST_WITH,
    TrainConfig,
    check_device,
)
from dlrm.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint, set_rng_state
from dlrm.metrics import JsonLinesWriter, binary_metrics
from dlrm.model import DLRM, DLRMConfig, table_specs
from dlrm.models import RecModel, build_table_model
from dlrm.optim import (
    OPTIMIZERS,
    Optimizers,
    build_optimizer,
    fbgemm_rowwise_adagrad_available,
    fused_optimizer_for,
)

__all__ = [
    "TrainConfig",
    "TrainState",
    "TrainingCollapsedError",
    "CheckpointError",
    "train",
    "preflight",
    "check_device",
    "model_summary",
    "build_model",
    "build_optimizer",
    "evaluate",
    "OPTIMIZERS",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_WARMUP_STEPS",
    "EMBEDDING_COLLECTIONS",
    "TEST_WITH",
    "CHECKPOINT_NAME",
    "Optimizers",
    "fbgemm_rowwise_adagrad_available",
]

_VAL_KEYS = ("val_loss", "val_auc", "val_accuracy")
def _sparse_for(config: TrainConfig) -> bool:
    if config.sparse is not None:
        return bool(config.sparse)
    return config.optimizer in ("sgd", "adagrad", "adam")


def build_model(config: TrainConfig, dataset: Any) -> RecModel:
    """The model that ``config`` describes for ``dataset`` (seeded by ``config.seed``): a
    :class:`DLRM`, or the family ``config.model`` of :mod:`dlrm.models`. Tables of method ``freq``
    are built from the training split's counts (:func:`dlrm.counts.training_counts`)."""
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
    assert config.learning_rate is not None  # TrainConfig resolves the default
    from dlrm.counts import training_counts

    counts = training_counts(dataset, specs)
    torch.manual_seed(config.seed)
    if config.model != "dlrm":
        family = build_table_model(config.model, specs, names, num_dense, options=config.model_options,
                                   default_mlp=config.top_mlp[:-1], sparse=_sparse_for(config), counts=counts)
        return family.to(config.device)
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
    return DLRM(model_config, device=config.device if collection is not None else None,
                counts=counts).to(config.device)


# -- evaluation ----------------------------------------------------------------------------------
def _to_device(batch: Any, device: torch.device | str) -> Tuple[torch.Tensor, List[torch.Tensor],
                                                                 List[torch.Tensor], torch.Tensor]:
    dense = batch.dense.to(device, non_blocking=True)
    indices = [t.to(device, non_blocking=True) for t in batch.indices]
    offsets = [t.to(device, non_blocking=True) for t in batch.offsets]
    labels = batch.labels.to(device, non_blocking=True).float()
    return dense, indices, offsets, labels


@torch.no_grad()
def _predict(model: RecModel, split: Any, batch_size: int, device: torch.device | str,
             parallel: Any = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` of ``model`` on a whole split (with ``parallel``, a
    :class:`dlrm.distributed.DistributedTraining`: every rank's, gathered)."""
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
    if parallel is not None:
        return parallel.gather(np.concatenate(labels), np.concatenate(probs), getattr(split, "name", ""))
    return np.concatenate(labels), np.concatenate(probs)


def evaluate(model: RecModel, split: Any, batch_size: int, device: torch.device | str = "cpu",
             prefix: str = "") -> Dict[str, float]:
    """Log loss, ROC AUC and accuracy of ``model`` on a data split."""
    labels, probs = _predict(model, split, batch_size, device)
    return binary_metrics(labels, probs, prefix=prefix)


def model_summary(model: RecModel) -> str:
    """One line on the model's size: embedding parameters, their megabytes, the compression ratio
    against full tables, and the MLP parameters.

    Example::

        >>> from dlrm.model import DLRMConfig, table_specs
        >>> line = model_summary(DLRM(DLRMConfig(2, (4,), (1,), table_specs([100], 4, "qr", num_collisions=4))))
        >>> line.split("; ")[:2]
        ['embedding parameters 116 (0.000 MB) in 1 table (1 compressed)', 'full tables 400 (0.002 MB): compression 3.45x']
    """
    emb, full = model.embedding_parameters(), model.full_table_parameters()
    nbytes = model.embedding_bytes()
    per_param = nbytes / emb if emb else 4.0
    tables = model.config.tables
    compressed = sum(1 for t in tables if t.method != "full")
    ratio = full / emb if emb else math.inf
    return (f"embedding parameters {emb:,} ({nbytes / 1e6:.3f} MB) in {len(tables)} table{'s' if len(tables) != 1 else ''} "
            f"({compressed} compressed); full tables {full:,} ({full * per_param / 1e6:.3f} MB): "
            f"compression {ratio:.2f}x; MLP parameters {model.mlp_parameters():,}")


def _epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of epoch ``epoch``: each epoch has its own order, fixed by ``seed``."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


@dataclass
class TrainState:
    """Where a training run stands; a checkpoint stores it as :meth:`to_dict`.

    ``best_model`` holds the weights of the best validation loss (early-stopping state) and
    ``history`` one record per evaluation; ``running_loss / running_n`` is the mean training loss
    since the last evaluation; ``log_bytes`` the size of the log file when the state was saved (a
    resumed run cuts the log back to it: records written after the checkpoint are written again).
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
    log_bytes: Optional[int] = None

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

    def __init__(self, config: TrainConfig, model: RecModel, optimizer: Optimizers, splits: Tuple[Any, Any, Any],
                 device: torch.device, parallel: Any = None) -> None:
        self.config, self.model, self.optimizer, self.device = config, model, optimizer, device
        self.parallel = parallel  # (a dlrm.distributed.DistributedTraining, or None: one process)
        self.train_split, self.val_split, self.test_split = splits
        self.eval_batch_size = config.eval_batch_size or 4 * config.batch_size
        self.num_batches = -(-len(self.train_split) // config.batch_size)
        self.checkpoint_every = config.checkpoint_every if config.checkpoint_every is not None else config.eval_every
        self.state = TrainState()
        self.log = JsonLinesWriter(config.log_path if parallel is None or parallel.is_main else None)
        self.ckpt_path: Optional[str] = None
        if config.checkpoint_dir is not None:
            os.makedirs(config.checkpoint_dir, exist_ok=True)
            self.ckpt_path = os.path.join(config.checkpoint_dir,
                                          CHECKPOINT_NAME if parallel is None else parallel.checkpoint_name)

    def resume(self, say: Callable[[str], None]) -> Optional[Dict[str, Any]]:
        """Carry on from the checkpoint, if any; returns the stored result of a finished run."""
        if self.ckpt_path is None or not self.config.resume:
            return None
        load = load_checkpoint if self.parallel is None else self.parallel.load
        ckpt = load(self.ckpt_path, self.config.to_dict(), self.device)
        if ckpt is None:
            return None
        if ckpt["state"]["finished"] and ckpt["config"] == self.config.to_dict():
            say(f"{self.ckpt_path} holds this run, finished at step {ckpt['state']['step']}: its stored result "
                "follows (--no-resume trains it again)")
            return dict(ckpt["state"]["result"])
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.state = TrainState.from_dict(ckpt["state"])
            set_rng_state(ckpt["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {self.ckpt_path} does not fit this run "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  "delete it or pass --no-resume (resume=False) to start the run afresh") from None
        self.state.finished = False
        self._restore_log(ckpt["config"].get("log_path"))
        st = self.state
        say(f"resuming from {self.ckpt_path} at step {st.step} (epoch {st.epoch}, batch {st.batch_in_epoch} "
            f"of {self.num_batches})")
        return None

    def _restore_log(self, saved_log_path: Optional[str]) -> None:
        """Make the log what it was when the checkpoint was saved: cut off the records written
        after it (they will be written again), or, in a new log file, write the run's history."""
        path, st = self.config.log_path, self.state
        if path is None:
            return
        same = saved_log_path is not None and os.path.abspath(saved_log_path) == os.path.abspath(path)
        if same and st.log_bytes is not None and (self.log.size() or 0) >= st.log_bytes:
            self.log.truncate(st.log_bytes)
        elif not same:
            for record in st.history:
                self.log.write(record)

    def save(self) -> None:
        if self.ckpt_path is not None:
            self.state.log_bytes = self.log.size()
            save = save_checkpoint if self.parallel is None else self.parallel.save
            save(self.ckpt_path, self.config.to_dict(), self.model, self.optimizer, self.state.to_dict())

    def collapsed(self, error: TrainingCollapsedError) -> TrainingCollapsedError:
        """Log the collapse and return ``error`` to raise."""
        self.log.write({"event": "collapsed", "step": self.state.step, "epoch": self.state.epoch,
                        "reason": error.reason})
        return error

    def capped(self) -> bool:
        return self.config.max_steps is not None and self.state.step >= self.config.max_steps

    def validate(self) -> None:
        """Evaluate on the validation split; track the best weights and early stopping."""
        st = self.state
        labels, probs = _predict(self.model, self.val_split, self.eval_batch_size, self.device, self.parallel)
        try:
            check_weights(self.model, st.step)
            check_predictions(probs, "validation", st.step)
        except TrainingCollapsedError as exc:
            raise self.collapsed(exc) from None
        metrics = binary_metrics(labels, probs, prefix="val_")
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
            if cfg.recluster_every and st.step % cfg.recluster_every == 0:
                from dlrm.recluster import recluster_model

                recluster_model(self.model, self.optimizer, seed=cfg.seed, step=st.step)
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
        self._warm_up(self.state.step + 1)  # (before zero_grad: TorchRec's fused optimizer reads its rate there)
        self.optimizer.zero_grad()
        n = int(y.shape[0])
        if self.parallel is None:
            loss = DLRM.loss(self.model(dense, indices, offsets), y)
            value = float(loss.detach())
        else:  # the global batch's mean loss (every rank's samples), and its size
            loss, value, n = self.parallel.loss(self.model(dense, indices, offsets), y)
        if not math.isfinite(value):
            raise self.collapsed(TrainingCollapsedError(f"training loss is {value} at step {self.state.step + 1} "
                                                        "(non-finite)"))
        loss.backward()
        self.optimizer.step()
        self.state.step += 1
        self.state.batch_in_epoch += 1
        self.state.samples_seen += n
        self.state.running_loss += value * n
        self.state.running_n += n
        return value

    def _warm_up(self, step: int) -> None:
        """Set the learning rate of step ``step`` (1-based): linear warm-up, then the base rate.
        A function of the step alone, so a resumed run takes the same rates."""
        warmup = self.config.warmup_steps
        if not warmup or step > warmup + 1:
            return
        assert self.config.learning_rate is not None  # TrainConfig resolves the default
        lr = float(self.config.learning_rate) * min(1.0, step / warmup)
        for opt in self.optimizer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

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
        labels, probs = _predict(model, self.test_split, self.eval_batch_size, self.device, self.parallel)
        tested_step = st.best_step if final_weights is not None and st.best_step is not None else st.step
        try:
            check_predictions(probs, "test", tested_step)
        except TrainingCollapsedError as exc:
            raise self.collapsed(exc) from None
        test = binary_metrics(labels, probs, prefix="test_")
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
            **compression_metrics(model),
        }
        # the final record first, then the checkpoint that says the run is finished: a kill between
        # the two resumes before the record (cut off) and writes it again
        self.log.write({"event": "final", **result})
        st.finished = True
        st.result = result
        self.save()
        return result


def _splits(config: TrainConfig, dataset: Any) -> Tuple[Any, Tuple[Any, Any, Any]]:
    """The data set (loaded as ``config`` says when ``None``) and its train / val / test splits,
    refused now, not after an epoch of training, when one is empty."""
    if dataset is None:
        from dlrm.data import load_dataset

        dataset = load_dataset(config.dataset, **config.dataset_options)
    splits = tuple(dataset.split(s) for s in ("train", "val", "test"))
    info = getattr(dataset, "info", None) or {}
    for split in splits:
        if len(split) == 0:
            skipped = int(info.get("num_malformed") or 0)
            why = (f" ({skipped} of {info.get('num_lines')} lines were malformed and skipped: "
                   f"{sorted(info.get('malformed') or {})})" if skipped else "")
            raise ValueError(f"split {split.name!r} of data set {getattr(dataset, 'name', '?')!r} is empty{why}; "
                             "training needs rows in 'train', 'val' and 'test'")
    return dataset, splits


def train(
    config: TrainConfig,
    *,
    progress: bool = False,
    step_hook: Optional[Callable[[int], None]] = None,
    dataset: Any = None,
    customize_model: Optional[Callable[[RecModel], None]] = None,
    say: Optional[Callable[[str], None]] = None,
    parallel: Any = None,
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
        say: called with one line each on the model's size (:func:`model_summary`), where the
            log and checkpoints go, and a resume (``compemb train`` prints them).
        parallel: a :class:`dlrm.distributed.DistributedTraining` when this process is one rank
            of several (``--mini-batch-size`` is then the global batch; see :mod:`dlrm.distributed`),
            ``None`` for one process.

    Returns:
        ``val_loss, val_auc, val_accuracy, test_loss, test_auc, test_accuracy,
        embedding_params, mlp_params, total_params, steps, epochs_completed, best_step,
        samples_per_s, wall_time_s, stopped_early, tables`` (parameters per table).

    Raises:
        TrainingCollapsedError: the model died (non-finite loss or weights, constant predictions).
        CheckpointError: the checkpoint to resume from is unreadable, unsafe or not this run's.
        ValueError: a bad config, an unusable device, log file or checkpoint directory (before
            any work).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    wall_start = time.perf_counter()
    tell: Callable[[str], None] = say if say is not None else (lambda line: None)
    preflight(config)
    device = torch.device(config.device)
    dataset, splits = _splits(config, dataset)
    random.seed(config.seed)
    np.random.seed(config.seed % (2**32))
    model = build_model(config if parallel is None else parallel.model_config(config), dataset)
    if customize_model is not None:
        customize_model(model)
        model.to(device)
    tell(model_summary(model))
    compression_line = compression_summary(model)
    if compression_line is not None:
        tell(compression_line)
    if parallel is None:
        run = _Run(config, model, build_optimizer(config, model), splits, device)
    else:
        wrapped, optimizer, splits = parallel.prepare(config, model, splits, dataset)
        run = _Run(config, wrapped, optimizer, splits, device, parallel)
    every = run.checkpoint_every or "epoch end"
    tell(f"log: {config.log_path or 'none (--log-file)'}; checkpoints: "
         + (f"{run.ckpt_path} (every {every}{' steps' if isinstance(every, int) else ''})" if run.ckpt_path
            else "none (--checkpoint-dir)"))
    stored = run.resume(tell)
    if stored is not None:
        return stored
    run.fit(progress, step_hook)
    return run.finish(wall_start)
