"""The configuration of a training run: :class:`TrainConfig`, its defaults and its checks.

Every field is validated when the config is built, naming the field and the value, so a bad run is
refused before any data is loaded. :mod:`dlrm.train` re-exports everything here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from compemb.options import check_choice, check_method
from dlrm.model import COLLECTION_BACKENDS
from dlrm.models import check_model_config
from dlrm.optim import (
    FUSED_OPTIMIZER_BACKENDS,
    OPTIMIZERS,
)


__all__ = [
    "TrainConfig",
    "check_device",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_WARMUP_STEPS",
    "EMBEDDING_COLLECTIONS",
    "TEST_WITH",
    "table_option_fields",
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

#: the :class:`compemb.config.EmbeddingBagConfig` fields that name a table rather than set an option
_TABLE_IDENTITY_FIELDS = ("name", "num_embeddings", "embedding_dim", "method")


def table_option_fields() -> Tuple[str, ...]:
    """The table options: every :class:`compemb.config.EmbeddingBagConfig` field but the table's
    ``name``, ``num_embeddings``, ``embedding_dim`` and ``method`` (``operation``,
    ``num_collisions``, ``k``, ``hidden_dims``, ...), in the dataclass's order; what
    ``TrainConfig.embedding_options`` may hold."""
    from compemb.config import EmbeddingBagConfig

    return tuple(f.name for f in dataclasses.fields(EmbeddingBagConfig) if f.name not in _TABLE_IDENTITY_FIELDS)

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

    fields = set(table_option_fields())
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"embedding_options has unknown fields {unknown}; the table options are {sorted(fields)}")
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
            | md | tt | robe | freq | cluster``); threshold: only tables with more rows than this
            are compressed.
        embedding_options: further :class:`compemb.config.EmbeddingBagConfig` fields, the
            :func:`table_option_fields` (``operation``, ``num_collisions``, ``k``, ``hidden_dims``,
            ``md_dim``, ``mode``, ``compose``, ``backend``, ``tt_rank``, ``num_hot``,
            ``compression``).
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
                     "checkpoint_every", "recluster_every"):
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
