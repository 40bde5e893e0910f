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
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from compemb.options import METHODS as METHODS
from compemb.options import check_choice, check_method
from dlrm.accounting import compression_metrics, compression_summary
from dlrm.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint, set_rng_state
from dlrm.metrics import JsonLinesWriter, binary_metrics
from dlrm.model import COLLECTION_BACKENDS, DLRM, DLRMConfig, table_specs
from dlrm.models import RecModel, build_table_model, check_model_config
from dlrm.optim import (
    FUSED_OPTIMIZER_BACKENDS,
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

#: ``TrainConfig.embedding_collection`` values (``None``: one module per table)
EMBEDDING_COLLECTIONS: Tuple[Optional[str], ...] = tuple(COLLECTION_BACKENDS)
#: the learning rate of each optimizer when none is given (``TrainConfig.learning_rate=None``,
#: ``compemb train`` without ``--learning-rate``)
#: (Adagrad 0.05 trains MovieLens-100k best in one epoch among 0.01-0.05; SGD 0.1 is DLRM's Kaggle
#: setting; Adam's usual 0.001 matches its 0.05 there and is safe elsewhere)
DEFAULT_LEARNING_RATES: Dict[str, float] = {
    "sgd": 0.1, "adagrad": 0.05, "adam": 0.001, "amsgrad": 0.001,
    "rowwise_adagrad_fbgemm": 0.05, "sgd_triton_fused": 0.1,
}
#: default ``TrainConfig.warmup_steps``: enough to keep Adagrad's sign-sized first steps from
#: blowing up DLRM's 512-wide MLPs (loss 1000 at step 2 without it), negligible in an epoch
DEFAULT_WARMUP_STEPS = 50
#: ``TrainConfig.test_with``: the weights the test split is evaluated with
TEST_WITH: Tuple[str, ...] = ("best", "final")
_VAL_KEYS = ("val_loss", "val_auc", "val_accuracy")
#: predictions spread less than this over a whole split count as constant (below float32's
#: resolution of probabilities near 0.5: the model's output no longer depends on its input)
CONSTANT_SPREAD = 1e-7


class TrainingCollapsedError(RuntimeError):
    """A training run whose model died: a non-finite loss or weight, or the same prediction for
    every sample of the validation or test split. Its metrics would be no result.

    Attributes:
        reason: what was found, where and at which step.

    Example::

        >>> err = TrainingCollapsedError("training loss is nan at step 3")
        >>> str(err), err.reason
        ('training collapsed: training loss is nan at step 3', 'training loss is nan at step 3')
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"training collapsed: {reason}")
        self.reason = str(reason)

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:  # pickles (to sweep workers) with its reason intact
        return type(self), (self.reason,)


def _check_device_name(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None


def check_device(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device`, refused with the reason when it cannot be used here.

    Raises:
        ValueError: not a device name, or a device this torch build or machine lacks
            (``'cuda'`` on a CPU build or without a visible GPU, an index past the device count).
    """
    dev = _check_device_name(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ValueError(f"device {str(device)!r} is unavailable: {why} (torch {torch.__version__}); "
                             "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r} is unavailable: {count} CUDA device(s) visible")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device {str(device)!r} is unavailable here (torch {torch.__version__}); use --device cpu")
    return dev


def _check_embedding_options(method: str, embedding_dim: int, options: Dict[str, Any]) -> None:
    """Validate the table options as a compressed table would take them, even when no table is
    large enough to be compressed (a bad value is a mistake either way)."""
    from compemb.config import EmbeddingBagConfig

    fields = {f.name for f in dataclasses.fields(EmbeddingBagConfig)}
    unknown = sorted(set(options) - (fields - {"name", "num_embeddings", "embedding_dim", "method"}))
    if unknown:
        raise ValueError(f"embedding_options has unknown fields {unknown}; the table options are "
                         f"{sorted(fields - {'name', 'num_embeddings', 'embedding_dim', 'method'})}")
    try:
        EmbeddingBagConfig(name="embedding_options", num_embeddings=1, embedding_dim=embedding_dim,
                           method=method, **options)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


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
        learning_rate: ``None``: the optimizer's default, :data:`DEFAULT_LEARNING_RATES`.
        warmup_steps: the learning rate rises linearly from ``learning_rate / warmup_steps`` to
            ``learning_rate`` over the first this many steps (DLRM's ``--lr-num-warmup-steps``; 0:
            off). Adagrad's first step moves every weight by the full learning rate whatever its
            gradient; the warm-up keeps that from blowing up wide MLPs. A fused optimizer's
            tables (``rowwise_adagrad_fbgemm``, ``sgd_triton_fused``) train at the full rate.
        batch_size, epochs: as usual. eval_batch_size: default ``4 * batch_size``.
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
        model: the model family, one of :data:`dlrm.models.MODELS`: ``"dlrm"`` (default), ``"mf"``,
            ``"fm"`` or ``"ncf"`` (:mod:`dlrm.models`; same loop, data and metrics, any table method).
        model_options: the family's options (:data:`dlrm.models.MODEL_OPTIONS`), e.g.
            ``{"features": ["user_id", "item_id"], "first_order": "tied"}``.
        recluster_every: re-cluster the ``cluster`` tables every this many steps
            (:mod:`dlrm.recluster`; ``None``/0: never; no effect on other methods).
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
    learning_rate: Optional[float] = None
    warmup_steps: int = DEFAULT_WARMUP_STEPS
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
    model: str = "dlrm"
    model_options: dict = field(default_factory=dict)
    recluster_every: Optional[int] = None

    def __post_init__(self) -> None:
        self.bottom_mlp = tuple(int(x) for x in self.bottom_mlp)
        self.top_mlp = tuple(int(x) for x in self.top_mlp)
        self.dataset_options = dict(self.dataset_options)
        self.embedding_options = dict(self.embedding_options)
        self.table_overrides = {str(k): dict(v) for k, v in self.table_overrides.items()}
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_method(self.method)
        check_choice("test_with", self.test_with, TEST_WITH)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        for name in ("batch_size", "epochs", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("eval_batch_size", "eval_every", "early_stopping_patience", "max_steps",
                     "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or a non-negative int, got {value!r}")
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES[self.optimizer]
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
                and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 0:
            raise ValueError(f"threshold must be a non-negative int, got {self.threshold!r}")
        t = self.md_temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0):
            raise ValueError(f"md_temperature must be None or a finite number >= 0, got {t!r}")
        _check_device_name(self.device)
        _check_embedding_options(self.method, self.embedding_dim, self.embedding_options)
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
        self.model_options = check_model_config(self)

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
        fused_learning_rate=float(config.learning_rate or DEFAULT_LEARNING_RATES[config.optimizer]),
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


def _check_predictions(probs: np.ndarray, split: str, step: int) -> None:
    """Raise :class:`TrainingCollapsedError` when the predictions on a split are non-finite or constant."""
    bad = ~np.isfinite(probs)
    if bad.any():
        raise TrainingCollapsedError(f"the model predicts {probs[bad][0]} for {int(bad.sum())} of {probs.size} "
                                     f"{split} samples at step {step} (non-finite output)")
    spread = float(probs.max() - probs.min())
    if spread < CONSTANT_SPREAD:
        raise TrainingCollapsedError(
            f"the model predicts the same probability {float(probs[0]):.6g} for all {probs.size} {split} samples "
            f"at step {step} (spread {spread:.1g} < {CONSTANT_SPREAD:g}): its output no longer depends on its "
            "input (dead ReLUs or vanished embeddings); try a smaller learning rate or another seed")


def _check_weights(model: RecModel, step: int) -> None:
    """Raise :class:`TrainingCollapsedError` naming the first parameter with a non-finite entry."""
    for name, p in model.named_parameters():
        finite = torch.isfinite(p.detach())
        if not bool(finite.all()):
            raise TrainingCollapsedError(f"{int((~finite).sum())} non-finite weight(s) in {name} at step {step}")


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


def _check_directory(what: str, directory: str) -> None:
    """Create ``directory`` if needed and check that files can be written in it."""
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{what} {directory} is not a directory (a file of that name is in the way)") from None
    except NotADirectoryError:
        raise ValueError(f"{what} {directory} cannot be created: a file is in the way on its path "
                         "(part of it is not a directory)") from None
    except OSError as exc:
        raise ValueError(f"{what} {directory} cannot be created ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"{what} {directory} is not writable ({exc.strerror or exc})") from None


def _check_backend(config: TrainConfig) -> None:
    """A kernel backend asked for by name must serve the compressed tables on ``config.device``:
    build one small such table there and run it once (what building the model would do)."""
    backend = config.embedding_options.get("backend")
    if backend in (None, "torch", "auto") or config.method in ("full", "hash", "md", "path"):
        return
    from compemb.config import EmbeddingBagConfig, build_embedding_bag

    spec = EmbeddingBagConfig(name="backend probe", num_embeddings=4096, embedding_dim=config.embedding_dim,
                              method=config.method, **config.embedding_options)
    bag = build_embedding_bag(spec, device=config.device)
    with torch.no_grad():
        bag(torch.zeros(1, dtype=torch.long, device=config.device),
            torch.zeros(1, dtype=torch.long, device=config.device))


def preflight(config: TrainConfig) -> None:
    """Refuse now, before data is loaded or a step is trained, what would fail later: a device
    this machine lacks, a log file that cannot be written (a directory, a read-only place), a
    checkpoint directory that cannot be (a file, read-only). Creates the checkpoint directory and
    the log file's directory.

    Raises:
        ValueError: naming the device or path and the reason.
        compemb.kernels.BackendUnavailableError: the kernel backend named in the table options
            cannot serve the tables on this device (with the reason).
    """
    check_device(config.device)
    _check_backend(config)
    if config.checkpoint_dir is not None:
        _check_directory("checkpoint directory", config.checkpoint_dir)
        ckpt = os.path.join(config.checkpoint_dir, CHECKPOINT_NAME)
        if os.path.isdir(ckpt):
            raise ValueError(f"checkpoint {ckpt} is a directory; remove it or use another --checkpoint-dir")
    if config.log_path is not None:
        log = config.log_path
        if os.path.isdir(log):
            raise ValueError(f"log file {log} is a directory; give a file path (e.g. {os.path.join(log, 'log.jsonl')})")
        _check_directory("log file directory", os.path.dirname(os.path.abspath(log)))
        try:
            with open(log, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ValueError(f"log file {log} cannot be written ({exc.strerror or exc})") from None


# -- the loop ------------------------------------------------------------------------------------
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
            _check_weights(self.model, st.step)
            _check_predictions(probs, "validation", st.step)
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
        lr = float(self.config.learning_rate or 0.0) * min(1.0, step / warmup)
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
            _check_predictions(probs, "test", tested_step)
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
