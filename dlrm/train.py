"""Training a :class:`dlrm.model.DLRM`: optimizers, evaluation, early stopping, checkpoints.

:func:`train` takes a :class:`TrainConfig` and returns the final metrics as a plain dict (what
:mod:`sweeps` records per Optuna trial).

Semantics worth knowing:

* **Determinism.** ``torch.manual_seed(seed)`` before the model is built; the training order of
  epoch ``e`` is drawn with seed ``seed * 1_000_003 + e``. Same config, same machine, same
  thread count: same weights, bit for bit.
* **Evaluation** on the validation split every ``eval_every`` steps (``None`` or 0: at the end of
  every epoch) and once more at the end of training if the last step was not evaluated.
* **Early stopping** on the validation loss: after ``early_stopping_patience`` evaluations in a
  row without a new best, training stops (``stopped_early``).
* **Test metrics** are computed with the weights of the best validation loss seen
  (``test_with="best"``, the default) or with the final weights (``test_with="final"``); the
  reported ``val_*`` metrics belong to the same weights.
* **Checkpoints** (``checkpoint_dir``): every ``checkpoint_every`` steps, at every epoch end and
  at the end, the model, optimizer state, step, epoch, batch position, RNG states, early-stopping
  state (best weights included) and metrics history go to ``checkpoint.pt``, written to a
  temporary file and moved into place with :func:`os.replace` (a kill never leaves half a file).
  With ``resume=True`` (default) a run finds that file and carries on from it; a run killed and
  resumed ends with the same weights and metrics as an uninterrupted one. A finished run resumed
  with the same config returns its stored result without training.
* **Sparse gradients** (``sparse=None``: automatic): embedding tables that support them get
  sparse gradients with ``sgd``, ``adagrad`` and ``adam`` (``adam`` then uses
  :class:`torch.optim.SparseAdam` for those tables and :class:`torch.optim.Adam` for the rest);
  ``amsgrad`` has no sparse variant in torch and trains dense.
* **``rowwise_adagrad_fbgemm``** (needs the optional ``fbgemm`` extra): all tables live in one
  :class:`compemb.collection.CompositionalEmbeddingBagCollection` on FBGEMM whose exact row-wise
  Adagrad updates them inside the backward pass (methods ``full``, ``qr``, ``gqr``, ``crt``;
  component widths multiples of 4); the MLPs use ``torch.optim.Adagrad`` with the same learning
  rate. Refused with a ``ValueError`` naming the missing piece where FBGEMM is unavailable.
* **Embedding collection** (``embedding_collection``): ``"fbgemm"`` or ``"triton"`` serve all
  tables from one :class:`compemb.collection.CompositionalEmbeddingBagCollection` (triton: one
  fused, table-batched kernel launch for all features with the partition encoding in the kernel;
  its tables are one flat ``weight`` parameter). Gradients are then dense, so ``sgd``,
  ``adagrad``, ``adam`` and ``amsgrad`` all train the tables as dense parameters (no
  ``SparseAdam``). Methods ``full``, ``qr``, ``gqr``, ``crt`` with ``sum``/``mean`` pooling only
  (triton: one ``embedding_dim``, one operation among the compressed tables); anything else is
  refused when the model is built, naming the table. On CPU triton needs ``TRITON_INTERPRET=1``
  set before triton is imported (slow); on CUDA its kernels compile.
* **``sgd_triton_fused``**: the triton collection's exact SGD updates the tables inside the
  backward pass (no gradient tensor for them, no optimizer state); the MLPs use
  ``torch.optim.SGD`` with the same learning rate. Implies ``embedding_collection="triton"``.

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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from dlrm.metrics import JsonLinesWriter, binary_metrics
from dlrm.model import DLRM, DLRMConfig, METHODS, table_specs

# torch's sparse Adagrad builds its update with invariant checks off and says so on every run;
# the tensors it builds are its own, so the notice is noise to a user of `compemb train`.
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

__all__ = [
    "TrainConfig",
    "train",
    "build_model",
    "build_optimizer",
    "evaluate",
    "OPTIMIZERS",
    "EMBEDDING_COLLECTIONS",
    "CHECKPOINT_NAME",
    "fbgemm_rowwise_adagrad_available",
]

OPTIMIZERS = ("sgd", "adagrad", "adam", "amsgrad", "rowwise_adagrad_fbgemm", "sgd_triton_fused")
#: ``TrainConfig.embedding_collection`` values (``None``: one module per table)
EMBEDDING_COLLECTIONS = (None, "fbgemm", "triton")
#: the collection backend each fused optimizer needs
_FUSED = {"rowwise_adagrad_fbgemm": ("fbgemm", "exact_rowwise_adagrad"), "sgd_triton_fused": ("triton", "exact_sgd")}
CHECKPOINT_NAME = "checkpoint.pt"

# Fields that may differ between a run and the run it resumes (they do not change what the
# finished steps computed).
_RESUMABLE_DIFFERENCES = frozenset(
    {"epochs", "max_steps", "log_path", "checkpoint_dir", "checkpoint_every", "resume", "device",
     "eval_batch_size"}
)


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
        sparse: sparse embedding gradients (``None``: automatic, see the module docstring).
        checkpoint_dir: where ``checkpoint.pt`` lives (``None``: no checkpoints).
        checkpoint_every: steps between checkpoints (``None``: ``eval_every`` or epoch ends).
        resume: carry on from an existing checkpoint in ``checkpoint_dir``.
        log_path: JSON-lines log of evaluations and the final result (``None``: no log).
        device: torch device string.
        test_with: ``"best"`` (best validation loss) or ``"final"`` weights for the test split.
        embedding_collection: ``None`` (one module per table), ``"fbgemm"`` or ``"triton"``: serve
            all tables from one collection (see the module docstring); dense table gradients.
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

    def __post_init__(self):
        self.bottom_mlp = tuple(int(x) for x in self.bottom_mlp)
        self.top_mlp = tuple(int(x) for x in self.top_mlp)
        self.dataset_options = dict(self.dataset_options)
        self.embedding_options = dict(self.embedding_options)
        self.table_overrides = {str(k): dict(v) for k, v in self.table_overrides.items()}
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.test_with not in ("best", "final"):
            raise ValueError(f"test_with must be 'best' or 'final', got {self.test_with!r}")
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
        if self.embedding_collection not in EMBEDDING_COLLECTIONS:
            raise ValueError(f"embedding_collection must be one of {EMBEDDING_COLLECTIONS}, "
                             f"got {self.embedding_collection!r}")
        if self.optimizer in _FUSED and self.embedding_collection not in (None, _FUSED[self.optimizer][0]):
            raise ValueError(f"optimizer {self.optimizer!r} is fused by the {_FUSED[self.optimizer][0]!r} "
                             f"collection, got embedding_collection={self.embedding_collection!r}")
        if self.collection_backend is not None and (self.sparse or self.dlrm_compatible_qr):
            raise ValueError(f"embedding_collection={self.collection_backend!r} excludes sparse=True and "
                             "dlrm_compatible_qr (the collection's table gradients are dense)")

    @property
    def collection_backend(self) -> Optional[str]:
        """The collection the tables live in: ``embedding_collection``, or the one the fused
        optimizer needs; ``None``: one module per table."""
        if self.optimizer in _FUSED:
            return _FUSED[self.optimizer][0]
        return self.embedding_collection

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- building ------------------------------------------------------------------------------------
def _sparse_for(config: TrainConfig) -> bool:
    if config.sparse is not None:
        return bool(config.sparse)
    return config.optimizer in ("sgd", "adagrad", "adam")


def build_model(config: TrainConfig, dataset) -> DLRM:
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
    fused = config.optimizer in _FUSED
    if config.optimizer == "rowwise_adagrad_fbgemm":
        reason = fbgemm_rowwise_adagrad_available()
        if reason is not None:
            raise ValueError(f"optimizer 'rowwise_adagrad_fbgemm' is unavailable: {reason}")
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
        fused_optimizer=_FUSED[config.optimizer][1] if fused else None,
        fused_learning_rate=float(config.learning_rate),
        collection_backend=collection,
    )
    return DLRM(model_config, device=config.device if collection is not None else None).to(config.device)


class _Optimizers:
    """Several optimizers stepped as one (e.g. SparseAdam for tables + Adam for the MLPs)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> list:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list) -> None:
        if len(states) != len(self.optimizers):
            raise ValueError(f"checkpoint holds {len(states)} optimizer states, expected {len(self.optimizers)}")
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)


def fbgemm_rowwise_adagrad_available() -> Optional[str]:
    """``None`` if FBGEMM's fused row-wise Adagrad can be used, else the reason it cannot."""
    try:
        import compemb.collection  # noqa: F401
    except Exception as exc:  # ImportError, or a backend failing to load
        return f"compemb.collection cannot be imported ({type(exc).__name__}: {exc})"
    try:
        import fbgemm_gpu  # noqa: F401
    except Exception as exc:
        return f"fbgemm_gpu cannot be imported ({type(exc).__name__}: {exc})"
    return None


def build_optimizer(config: TrainConfig, model: DLRM) -> _Optimizers:
    """The optimizer(s) for ``model`` as ``config`` asks."""
    lr = float(config.learning_rate)
    name = config.optimizer
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    sparse = [p for p in model.parameters() if id(p) in sparse_ids]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    if name == "rowwise_adagrad_fbgemm":
        if model.collection is None:
            raise ValueError("optimizer 'rowwise_adagrad_fbgemm' needs a model built with "
                             "fused_optimizer='exact_rowwise_adagrad' (build_model does this)")
        # the tables are updated inside FBGEMM's backward; the MLPs use torch's Adagrad
        return _Optimizers([torch.optim.Adagrad(list(model.parameters()), lr=lr)])
    if name == "sgd_triton_fused":
        coll = model.collection
        if coll is None or coll.backend != "triton" or coll.optimizer != "exact_sgd":
            raise ValueError("optimizer 'sgd_triton_fused' needs a model built with collection_backend='triton' "
                             "and fused_optimizer='exact_sgd' (build_model does this)")
        # the tables are updated inside the triton backward; the MLPs use torch's SGD
        return _Optimizers([torch.optim.SGD(list(model.parameters()), lr=lr)])
    if name == "sgd":
        return _Optimizers([torch.optim.SGD(list(model.parameters()), lr=lr)])
    if name == "adagrad":
        return _Optimizers([torch.optim.Adagrad(list(model.parameters()), lr=lr, foreach=False)])
    if name == "adam":
        opts = []
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=lr))
        if dense:
            opts.append(torch.optim.Adam(dense, lr=lr))
        return _Optimizers(opts)
    if name == "amsgrad":
        if sparse:
            raise ValueError("optimizer 'amsgrad' cannot take sparse gradients; build with sparse=False")
        return _Optimizers([torch.optim.Adam(list(model.parameters()), lr=lr, amsgrad=True)])
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


# -- evaluation ----------------------------------------------------------------------------------
def _to_device(batch, device):
    dense = batch.dense.to(device, non_blocking=True)
    indices = [t.to(device, non_blocking=True) for t in batch.indices]
    offsets = [t.to(device, non_blocking=True) for t in batch.offsets]
    labels = batch.labels.to(device, non_blocking=True).float()
    return dense, indices, offsets, labels


@torch.no_grad()
def evaluate(model: DLRM, split, batch_size: int, device="cpu", prefix: str = "") -> Dict[str, float]:
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


# -- checkpoints ---------------------------------------------------------------------------------
def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# Data-set options that do not change the data (only how loading looks).
_RESUMABLE_DATASET_OPTIONS = frozenset({"progress"})


def _check_resumable(saved: dict, current: dict, path: str) -> None:
    saved, current = dict(saved), dict(current)
    for cfg in (saved, current):
        cfg["dataset_options"] = {k: v for k, v in (cfg.get("dataset_options") or {}).items()
                                  if k not in _RESUMABLE_DATASET_OPTIONS}
    diffs = sorted(
        k for k in set(saved) | set(current)
        if k not in _RESUMABLE_DIFFERENCES and saved.get(k) != current.get(k)
    )
    if diffs:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diffs)
        raise ValueError(f"checkpoint {path} belongs to a different run ({detail}); "
                         "use another checkpoint_dir or resume=False")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


# -- the loop ------------------------------------------------------------------------------------
def train(
    config: TrainConfig,
    *,
    progress: bool = False,
    step_hook: Optional[Callable[[int], None]] = None,
    dataset=None,
    customize_model: Optional[Callable[[DLRM], None]] = None,
) -> dict:
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
    if dataset is None:
        from dlrm.data import load_dataset

        dataset = load_dataset(config.dataset, **config.dataset_options)
    train_split, val_split, test_split = (dataset.split(s) for s in ("train", "val", "test"))
    for split in (train_split, val_split, test_split):
        if len(split) == 0:  # refuse now, not after an epoch of training
            raise ValueError(f"split {split.name!r} of data set {getattr(dataset, 'name', '?')!r} is empty; "
                             "training needs rows in 'train', 'val' and 'test'")
    eval_bs = config.eval_batch_size or 4 * config.batch_size

    random.seed(config.seed)
    np.random.seed(config.seed % (2**32))
    model = build_model(config, dataset)
    if customize_model is not None:
        customize_model(model)
        model.to(device)
    optimizer = build_optimizer(config, model)
    log = JsonLinesWriter(config.log_path)

    state = {
        "step": 0, "epoch": 0, "batch_in_epoch": 0,
        "best_val_loss": math.inf, "best_step": None, "bad_evals": 0, "best_model": None,
        "last_eval_step": None, "history": [], "stopped_early": False, "finished": False,
        "train_time_s": 0.0, "samples_seen": 0, "result": None,
        "running_loss": 0.0, "running_n": 0, "best_metrics": None,
    }
    ckpt_path = None
    if config.checkpoint_dir is not None:
        os.makedirs(config.checkpoint_dir, exist_ok=True)
        ckpt_path = os.path.join(config.checkpoint_dir, CHECKPOINT_NAME)
        if config.resume and os.path.exists(ckpt_path):
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
            _check_resumable(ckpt["config"], config.to_dict(), ckpt_path)
            if ckpt["state"]["finished"] and ckpt["config"] == config.to_dict():
                return dict(ckpt["state"]["result"])
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
            state["finished"] = False
            _set_rng_state(ckpt["rng"])

    def save_checkpoint():
        if ckpt_path is None:
            return
        _atomic_save(
            {"config": config.to_dict(), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "state": state, "rng": _rng_state()},
            ckpt_path,
        )

    def run_eval():
        metrics = evaluate(model, val_split, eval_bs, device, prefix="val_")
        state["last_eval_step"] = state["step"]
        improved = metrics["val_loss"] < state["best_val_loss"]
        if improved:
            state["best_val_loss"] = metrics["val_loss"]
            state["best_step"] = state["step"]
            state["bad_evals"] = 0
            state["best_model"] = copy.deepcopy(model.state_dict())
            state["best_metrics"] = dict(metrics)
        else:
            state["bad_evals"] += 1
        record = {"event": "eval", "step": state["step"], "epoch": state["epoch"], **metrics,
                  "train_loss": state["running_loss"] / state["running_n"] if state["running_n"] else None,
                  "samples_per_s": state["samples_seen"] / state["train_time_s"] if state["train_time_s"] else None}
        state["history"].append(record)
        log.write(record)
        state["running_loss"], state["running_n"] = 0.0, 0
        patience = config.early_stopping_patience
        if patience and state["bad_evals"] >= patience:
            state["stopped_early"] = True

    def capped() -> bool:
        return config.max_steps is not None and state["step"] >= config.max_steps

    num_batches = -(-len(train_split) // config.batch_size)
    total_steps = config.epochs * num_batches
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=min(state["step"], total_steps), unit="step",
                   dynamic_ncols=True)

    checkpoint_every = config.checkpoint_every if config.checkpoint_every is not None else config.eval_every
    model.train()
    try:
        while state["epoch"] < config.epochs and not state["stopped_early"] and not capped():
            if state["batch_in_epoch"] < num_batches:
                batches = train_split.batches(
                    config.batch_size, shuffle=True, seed=_epoch_seed(config.seed, state["epoch"]),
                    start_batch=state["batch_in_epoch"],
                )
                tick = time.perf_counter()
                for batch in batches:
                    dense, indices, offsets, y = _to_device(batch, device)
                    optimizer.zero_grad()
                    loss = DLRM.loss(model(dense, indices, offsets), y)
                    loss.backward()
                    optimizer.step()
                    state["step"] += 1
                    state["batch_in_epoch"] += 1
                    state["samples_seen"] += int(y.shape[0])
                    state["running_loss"] += float(loss.detach()) * int(y.shape[0])
                    state["running_n"] += int(y.shape[0])
                    now = time.perf_counter()
                    state["train_time_s"] += now - tick
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{float(loss):.4f}",
                                        samples_per_s=f"{state['samples_seen'] / max(state['train_time_s'], 1e-9):.0f}")
                    if config.eval_every and state["step"] % config.eval_every == 0:
                        run_eval()
                    if checkpoint_every and state["step"] % checkpoint_every == 0:
                        save_checkpoint()
                    if step_hook is not None:
                        step_hook(state["step"])
                    tick = time.perf_counter()
                    if state["stopped_early"] or capped():
                        break
                if state["batch_in_epoch"] < num_batches:
                    break  # stopped inside the epoch
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if not config.eval_every:
                run_eval()
            save_checkpoint()
    finally:
        if bar is not None:
            bar.close()

    if state["last_eval_step"] != state["step"] or not state["history"]:
        run_eval()
    final_model = None
    if config.test_with == "best" and state["best_model"] is not None:
        # the validation metrics of the best weights were recorded when they were evaluated
        val = {k: state["best_metrics"][k] for k in ("val_loss", "val_auc", "val_accuracy")}
        if state["best_step"] != state["step"]:
            final_model = copy.deepcopy(model.state_dict())
            model.load_state_dict(state["best_model"])
    else:
        last = state["history"][-1]
        val = {k: last[k] for k in ("val_loss", "val_auc", "val_accuracy")}
    test = evaluate(model, test_split, eval_bs, device, prefix="test_")
    if final_model is not None:
        model.load_state_dict(final_model)
    table_params = model.table_parameters()
    result = {
        **val, **test,
        "embedding_params": model.embedding_parameters(),
        "mlp_params": model.mlp_parameters(),
        "total_params": model.num_parameters(),
        "tables": table_params,
        "steps": state["step"],
        "epochs_completed": state["epoch"],
        "best_step": state["best_step"],
        "samples_per_s": state["samples_seen"] / state["train_time_s"] if state["train_time_s"] else 0.0,
        "wall_time_s": time.perf_counter() - wall_start,
        "stopped_early": bool(state["stopped_early"]),
    }
    state["finished"] = True
    state["result"] = result
    save_checkpoint()
    log.write({"event": "final", **result})
    return result
