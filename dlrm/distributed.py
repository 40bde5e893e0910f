"""Training on ``N`` processes: hybrid (TorchRec-sharded tables + DDP MLPs), data or independent parallelism.

``torchrun --nproc-per-node N -m compemb train ...`` (or the shorthand ``compemb train
--nproc-per-node N ...``, :mod:`dlrm.launch`) runs one copy of :func:`dlrm.train.train` per rank
with a :class:`DistributedTraining` that says how the ranks share the work:

``hybrid`` (the default for ``N > 1``)
    the DLRM paper's scheme: the tables become a
    :class:`compemb.distributed.ShardableEmbeddingBagCollection` whose large component tables
    TorchRec's planner shards across the ranks (all-to-all), the small ones (remainder tables,
    md projections, path maps) and the MLPs replicated and averaged by DDP. The sharded tables
    are trained by TorchRec's fused optimizer (FBGEMM's ``exact_sgd`` / ``exact_adagrad`` with
    torch's epsilon; ``adam`` on CUDA only), everything else by the run's torch optimizer.
``data``
    every table replicated: the whole model under DDP, dense gradients. It wins when the
    compressed tables fit every device: a QR/CRT/hash model 4-60x smaller than the full tables
    often does, and then no all-to-all is needed (one allreduce of ``parameters x 4`` bytes per
    step instead); full tables that do not fit one device need ``hybrid``.
``independent``
    only the dense parts (MLPs, projections) are averaged; each rank trains its own tables on its
    own data shard (the communication-saving variant). Evaluation: every rank evaluates the whole
    validation and test splits with its own tables and the shared MLPs; the headline metrics
    (``val_*``, ``test_*``, best step, early stopping) are rank 0's, and ``rank_metrics`` lists
    every rank's test loss, AUC and accuracy.

In every mode ``--mini-batch-size`` is the **global** batch: rank ``r`` of ``W`` reads the ``r``-th
contiguous slice of every global batch (:class:`RankSplit`; a final batch that does not divide
evenly is padded with masked copies so every rank holds the same number of samples), and the loss
of a step is the global batch's mean (each rank's sum, scaled by ``W / global size``: TorchRec and
DDP then average to the global mean's gradient). So ``hybrid`` and ``data`` train as one process
with the same global batch and seed does, up to floating-point reduction order; the log's training
loss is the global one. Validation and test metrics are computed over all ranks' predictions
(gathered; loss, AUC and accuracy do not depend on their order).

Checkpoints: ``data`` writes the single-process ``checkpoint.pt`` (rank 0; every rank resumes
from it); ``hybrid`` writes ``checkpoint.dcp/step-N/`` with ``torch.distributed.checkpoint``
(sharded tables, optimizer state, the best weights) plus one small ``rank{r}.pt`` per rank
(config, loop state, RNG); ``independent`` writes ``checkpoint.ranks/step-N/rank{r}.pt``, one
single-process checkpoint per rank. ``step-N`` becomes the checkpoint only when every rank has
written it (the ``latest`` file is replaced atomically afterwards), so a rank killed at any point
leaves the previous checkpoint loadable. :func:`load_unsharded` loads any of them into one process
(a plain :class:`dlrm.model.DLRM`) for evaluation or export. The DCP metadata is unpickled by
torch when read: load only checkpoints you trust (the ``rank{r}.pt`` files are read safely).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dlrm.train import TrainConfig

__all__ = [
    "PARALLEL_MODES",
    "DCP_DIR",
    "RANKS_DIR",
    "LATEST",
    "RankSplit",
    "ShardedDLRM",
    "ParallelModel",
    "DistributedTraining",
    "check_parallel",
    "world_from_env",
    "fused_optimizer_name",
    "pooling_factors",
    "dlrm_state_from_sharded",
    "load_unsharded",
]

#: ``compemb train --parallel`` values
PARALLEL_MODES: Tuple[str, ...] = ("hybrid", "data", "independent")
#: where a hybrid run's checkpoints live (inside ``--checkpoint-dir``); an independent run's
DCP_DIR = "checkpoint.dcp"
RANKS_DIR = "checkpoint.ranks"
#: the file naming the step directory that is the checkpoint
LATEST = "latest"
#: the torch optimizers a hybrid run maps onto FBGEMM's fused ones (CPU serves the first two)
_FUSED = {"sgd": "exact_sgd", "adagrad": "exact_adagrad", "adam": "adam"}
_CPU_FUSED = ("exact_sgd", "exact_adagrad")
#: bytes of optimizer state per weight byte, for the memory check
_STATE_FACTOR = {"sgd": 0, "adagrad": 1, "adam": 2, "amsgrad": 3}


def world_from_env() -> Tuple[int, int, int]:
    """``(rank, world size, local rank)`` as torchrun sets them (``(0, 1, 0)`` outside a launcher)."""
    def get(name: str, default: int) -> int:
        text = os.environ.get(name)
        try:
            return int(text) if text not in (None, "") else default
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    return get("RANK", 0), get("WORLD_SIZE", 1), get("LOCAL_RANK", 0)


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
        if config.optimizer in ("rowwise_adagrad_fbgemm", "sgd_triton_fused"):
            raise ValueError(f"--optimizer {config.optimizer} cannot combine with --parallel data: it updates the "
                             "tables inside the backward pass, before DDP could average their gradients; use "
                             "--parallel independent or a torch optimizer")
        if config.sparse:
            raise ValueError("--sparse on cannot combine with --parallel data (DDP averages dense gradients); "
                             "use --sparse auto or off")


def pooling_factors(dataset: Any, sample_rows: int = 4096) -> Dict[str, float]:
    """Expected indices per bag of every multi-hot feature (mean over the first ``sample_rows``
    training rows in storage order: deterministic, the same on every rank); one-hot features 1.0."""
    names = list(dataset.feature_names)
    multi = list(getattr(dataset, "multi_hot", None) or [False] * len(names))
    out = {name: 1.0 for name in names}
    if not any(multi):
        return out
    train = dataset.split("train")
    batch = next(train.batches(max(1, min(sample_rows, len(train)))))
    for i, name in enumerate(names):
        if multi[i]:
            lengths = (batch.offsets[i][1:] - batch.offsets[i][:-1]).double()
            out[name] = max(1.0, float(lengths.mean())) if lengths.numel() else 1.0
    return out


class RankSplit:
    """Rank ``rank``'s share of a data split: the ``rank``-th contiguous slice of every global batch.

    A global batch of ``m`` samples gives every rank ``k = ceil(m / world_size)`` samples; where
    ``m`` does not divide evenly (a final batch), the short slices are padded with copies of the
    batch's first sample whose label is NaN (masked out of the loss and the metrics). Otherwise it
    behaves as the split (``len``, ``name``, ``batches`` with the same arguments): the global
    batches are the split's own, in the split's order (``numpy.random.default_rng(seed)``
    permutation when shuffled), and only the rank's rows are read.
    """

    def __init__(self, split: Any, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.split, self.rank, self.world_size = split, int(rank), int(world_size)
        self.name = split.name
        self.dataset = split.dataset

    def __len__(self) -> int:
        return len(self.split)

    def __repr__(self) -> str:
        return f"RankSplit({self.split!r}, rank={self.rank}, world_size={self.world_size})"

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return int(self.split.num_batches(batch_size, drop_last))

    def labels(self) -> np.ndarray:
        return np.asarray(self.split.labels())

    def global_rows(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                    start_batch: int = 0) -> Iterator[np.ndarray]:
        """The data set positions of every global batch, as ``split.batches`` visits them."""
        n = len(self.split)
        total = self.num_batches(batch_size, drop_last)
        if not isinstance(start_batch, (int, np.integer)) or start_batch < 0 or start_batch > total:
            raise ValueError(f"start_batch={start_batch!r} outside the {total} batches of split {self.name!r}")
        rows = self.split.rows
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        for b in range(start_batch, total):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            pos = np.arange(lo, hi, dtype=np.int64) if order is None else order[lo:hi]
            yield (rows.start + pos) if isinstance(rows, range) else np.asarray(rows)[pos]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                start_batch: int = 0) -> Iterator[Any]:
        """This rank's slice of every global batch (see the class docstring)."""
        from dlrm.data.batching import RecSplit

        for rows in self.global_rows(batch_size, shuffle, seed, drop_last, start_batch):
            k = -(-len(rows) // self.world_size)
            mine = rows[self.rank * k:(self.rank + 1) * k]
            valid = len(mine)
            if valid < k:
                mine = np.concatenate([mine, np.repeat(rows[:1], k - valid)])
            batch = next(RecSplit(self.dataset, self.name, mine).batches(k))
            if valid < k:
                batch.labels[valid:] = float("nan")
            yield batch


def _kjt(names: Sequence[str], indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> Any:
    from torchrec import KeyedJaggedTensor

    lengths = [o[1:] - o[:-1] for o in offsets]
    return KeyedJaggedTensor(keys=list(names), values=torch.cat(list(indices)), lengths=torch.cat(lengths))


class ShardedDLRM(nn.Module):
    """A :class:`dlrm.model.DLRM` whose tables are one :class:`ShardableEmbeddingBagCollection`.

    Built from a DLRM (its table modules' weights are copied, its MLPs and projections taken
    over: ``dense_arch`` is the DLRM without its tables), it computes what the DLRM computes:
    ``forward(dense, features)`` takes a ``KeyedJaggedTensor`` of the DLRM's features;
    :meth:`logits` takes the DLRM's ``(dense, indices, offsets)``. ``DistributedModelParallel``
    shards ``sparse_arch``'s TorchRec tables and wraps the rest in DDP.

    Args:
        model: the DLRM (its ``embeddings`` are emptied: the collection holds the tables now).
        pooling_factors, replicate_rows: as :class:`compemb.distributed.ShardableEmbeddingBagCollection`.
    """

    def __init__(self, model: Any, *, pooling_factors: Optional[Mapping[str, float]] = None,
                 replicate_rows: Optional[int] = None) -> None:
        from compemb.distributed import REPLICATE_ROWS, ShardableEmbeddingBagCollection

        super().__init__()
        if getattr(model, "collection", None) is not None or len(model.embeddings) != len(model.config.tables):
            raise ValueError("ShardedDLRM takes a DLRM with one compemb module per table (no embedding collection)")
        self.feature_names = [spec.name for spec in model.config.tables]
        pairs = [(name, bag) for name, bag in zip(self.feature_names, model.embeddings)]
        try:
            self.sparse_arch = ShardableEmbeddingBagCollection(
                pairs, pooling_factors=dict(pooling_factors or {}),
                replicate_rows=REPLICATE_ROWS if replicate_rows is None else int(replicate_rows),
                device=next(model.parameters()).device)
        except TypeError as exc:  # a module kind TorchRec cannot serve
            raise ValueError(f"--parallel hybrid cannot shard these tables: {exc}") from None
        model.embeddings = nn.ModuleList()
        self.dense_arch = model

    def forward(self, dense: torch.Tensor, features: Any) -> torch.Tensor:
        pooled = self.sparse_arch(features).to_dict()
        return self.dense_arch.head(dense, self.dense_arch.project([pooled[n] for n in self.feature_names]))

    def logits(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        return self(dense, _kjt(self.feature_names, indices, offsets))


def dlrm_state_from_sharded(state: Mapping[str, Any], collection: Any, feature_names: Sequence[str]) -> Dict[str, Any]:
    """A :class:`ShardedDLRM`'s (unsharded) ``state_dict`` as the DLRM's keys (``bottom.*``,
    ``embeddings.{i}.*``, ...); ``collection`` is its ``sparse_arch``."""
    index = {name: i for i, name in enumerate(feature_names)}
    mapping = collection.parameter_map()
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("dense_arch."):
            out[key[len("dense_arch."):]] = value
        elif key.startswith("sparse_arch."):
            ours = key[len("sparse_arch."):]
            if ours not in mapping:
                continue  # (a TorchRec buffer, not a weight)
            feature, name = mapping[ours]
            out[f"embeddings.{index[feature]}.{name}"] = value
    return out


class ParallelModel:
    """What the training loop calls ``model`` in a distributed run: the wrapped network's forward,
    ``predict``, ``train``/``eval``, ``named_parameters`` and ``state_dict``/``load_state_dict``
    (the DLRM's keys in ``data`` and ``independent`` mode, the sharded model's in ``hybrid``), and
    the size accounting of the model it was built from (which sharding does not change)."""

    def __init__(self, net: nn.Module, model: Any, mode: str) -> None:
        self.net, self.mode = net, mode
        self.module: nn.Module = getattr(net, "module", net) if mode == "data" else net
        self.config = model.config
        self._embedding, self._mlp = int(model.embedding_parameters()), int(model.mlp_parameters())
        self._total = int(model.num_parameters())
        self._tables: Dict[str, int] = {str(k): int(v) for k, v in model.table_parameters().items()}

    def __call__(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.mode == "hybrid":
            return self.net(dense, _kjt(self._names(), indices, offsets))
        return self.net(dense, indices, offsets)

    def _names(self) -> List[str]:
        return [spec.name for spec in self.config.tables]

    def predict(self, dense: torch.Tensor, indices: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(dense, indices, offsets))

    @property
    def training(self) -> bool:
        return bool(self.net.training)

    def train(self, mode: bool = True) -> ParallelModel:
        self.net.train(mode)
        return self

    def eval(self) -> ParallelModel:
        return self.train(False)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.net.parameters()

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.net.named_parameters()

    def state_dict(self) -> Dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        return self.module.load_state_dict(state)

    def embedding_parameters(self) -> int:
        return self._embedding

    def mlp_parameters(self) -> int:
        return self._mlp

    def num_parameters(self) -> int:
        return self._total

    def table_parameters(self) -> Dict[str, int]:
        return dict(self._tables)


def _table_parameter_ids(model: nn.Module) -> set:
    """The parameters of ``model``'s embedding tables (one module per table, or a collection)."""
    out = {id(p) for bag in getattr(model, "embeddings", []) for p in bag.parameters()}
    coll = getattr(model, "collection", None)
    if isinstance(coll, nn.Module):
        out |= {id(p) for p in coll.parameters()}
    return out


class _DenseSynchronised:
    """``independent`` mode's optimizer: averages the dense parameters' gradients over the ranks
    (one allreduce of their concatenation), then steps the run's optimizer(s)."""

    def __init__(self, inner: Any, dense: List[nn.Parameter], world_size: int) -> None:
        self.inner, self.dense, self.world_size = inner, dense, world_size
        self.optimizers = inner.optimizers

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def step(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.dense]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world_size
            at = 0
            for p, g in zip(self.dense, grads):
                n = g.numel()
                p.grad = flat[at:at + n].view_as(p).clone()
                at += n
        self.inner.step()

    def state_dict(self) -> Any:
        return self.inner.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.inner.load_state_dict(state)


def _tensors_only(tree: Any) -> Any:
    """``tree`` (nested dicts) with only its tensors kept (what DCP stores and loads)."""
    if isinstance(tree, Mapping):
        out = {str(k): _tensors_only(v) for k, v in tree.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    return tree if isinstance(tree, torch.Tensor) else None


def _read_meta(path: str) -> Dict[str, Any]:
    from dlrm.checkpoint import CheckpointError

    way_out = "delete the checkpoint directory or pass --no-resume to start afresh"
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing (written by fewer ranks?); {way_out}") from None
    except Exception as exc:  # truncated, corrupt or unsafe: nothing in it ran
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint file {path} cannot be read safely ({first}); {way_out}") from None
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


class DistributedTraining:
    """How the ranks of an initialised process group share one training run (module docstring).

    :func:`dlrm.train.train` takes it as ``parallel=`` and calls it at the points where a
    distributed run differs: :meth:`model_config` and :meth:`prepare` (wrap the model, build the
    optimizer, slice the splits), :meth:`loss` (the global batch's mean), :meth:`gather` (all
    ranks' predictions), :meth:`save` and :meth:`load` (checkpoints), :meth:`finish`.

    Args:
        mode: one of :data:`PARALLEL_MODES`.
        device: this rank's device (``cuda:LOCAL_RANK`` with NCCL, ``cpu`` with gloo).
        sharding_type: pin every sharded table to one TorchRec sharding type (hybrid; default: the
            planner chooses per table).
        replicate_rows: component tables with at most this many rows are replicated (hybrid;
            default 1024).
        memory_per_rank_gb: refuse a model whose tables (weights and optimizer state) fit no rank
            (default: the GPU's memory on CUDA, no limit on CPU).
    """

    def __init__(self, mode: str, *, device: Any = "cpu", sharding_type: Optional[str] = None,
                 replicate_rows: Optional[int] = None, memory_per_rank_gb: Optional[float] = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedTraining needs an initialised process group (torchrun sets one up)")
        self.mode = mode
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device)
        self.sharding_type, self.replicate_rows = sharding_type, replicate_rows
        self.memory_per_rank_gb = memory_per_rank_gb
        self.comm_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.model: Optional[ParallelModel] = None
        self.optimizer: Any = None
        self.layout: Dict[str, Any] = {}
        self.sharding: Dict[str, str] = {}
        self.rank_metrics: Dict[str, Dict[str, float]] = {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_name(self) -> str:
        return {"hybrid": DCP_DIR, "data": "checkpoint.pt", "independent": RANKS_DIR}[self.mode]

    # -- building -----------------------------------------------------------------------------------
    def model_config(self, config: TrainConfig) -> TrainConfig:
        """The config the model is built from: ``data`` mode turns sparse gradients off (DDP
        averages dense ones; the same weights either way)."""
        return dataclasses.replace(config, sparse=False) if self.mode == "data" else config

    def prepare(self, config: TrainConfig, model: Any, splits: Tuple[Any, Any, Any],
                dataset: Any) -> Tuple[ParallelModel, Any, Tuple[Any, Any, Any]]:
        """Wrap ``model`` for the mode, build its optimizer and slice the splits per rank.

        Raises:
            ValueError: the tables fit no rank's memory budget, or TorchRec cannot serve the
                pinned sharding type (naming the table and the value); the same on every rank.
        """
        from dlrm.optim import build_optimizer

        self._check_memory(config, model)
        train, val, test = splits
        if self.mode == "hybrid":
            wrapped, optimizer = self._hybrid(config, model, dataset)
        elif self.mode == "data":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
            wrapped, optimizer = ParallelModel(net, model, "data"), build_optimizer(config, model)
        else:
            tables = _table_parameter_ids(model)
            dense = [p for p in model.parameters() if id(p) not in tables and p.requires_grad]
            with torch.no_grad():  # (the same seed built the same weights; make sure of it)
                for p in dense:
                    dist.broadcast(p.data, src=0)
            wrapped = ParallelModel(model, model, "independent")
            optimizer = _DenseSynchronised(build_optimizer(config, model), dense, self.world_size)
        self.model, self.optimizer = wrapped, optimizer
        rank_train = RankSplit(train, self.rank, self.world_size)
        if self.mode == "independent":
            return wrapped, optimizer, (rank_train, val, test)
        return wrapped, optimizer, (rank_train, RankSplit(val, self.rank, self.world_size),
                                    RankSplit(test, self.rank, self.world_size))

    def _hybrid(self, config: TrainConfig, model: Any, dataset: Any) -> Tuple[ParallelModel, Any]:
        from torchrec.distributed.planner.types import PlannerError

        from compemb.distributed import combined_optimizer, plan, shard
        from dlrm.optim import Optimizers

        lr = float(config.learning_rate or 0.0)
        fused = fused_optimizer_name(config.optimizer, self.device.type)
        fused_params: Dict[str, Any] = {"optimizer": fused, "learning_rate": lr}
        if fused == "exact_adagrad":
            fused_params["eps"] = 1e-10  # (torch's Adagrad's; FBGEMM's default is 1e-8)
        pfs = pooling_factors(dataset)
        accounting = ParallelModel(model, model, "independent")  # (sizes before the tables move)
        sharded = ShardedDLRM(model, pooling_factors=pfs, replicate_rows=self.replicate_rows)
        self.layout = {"pooling_factors": pfs, "replicate_rows": sharded.sparse_arch.replicate_rows,
                       "sharding_type": self.sharding_type}
        try:
            local_plan = plan(sharded, world_size=self.world_size, compute_device=self.device.type,
                              sharding_types=self.sharding_type, fused_params=fused_params,
                              local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)),
                              batch_size=config.batch_size // self.world_size)
        except PlannerError as exc:
            what = f"--sharding-type {self.sharding_type}" if self.sharding_type else "TorchRec's planner"
            raise ValueError(f"{what} cannot place the tables on {self.world_size} {self.device.type} ranks: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from None
        shared: List[Any] = [local_plan]
        dist.broadcast_object_list(shared, src=0)  # (every rank shards by rank 0's plan)
        dmp = shard(sharded, device=self.device, fused_params=fused_params, sharding_plan=shared[0])
        self.sharding = {t: ps.sharding_type for m in dmp.plan.plan.values() for t, ps in m.items()}
        dense = _optimizer_class(config.optimizer)
        combined = combined_optimizer(dmp, lambda params: dense(params, lr))
        wrapped = ParallelModel(dmp, accounting, "hybrid")
        return wrapped, Optimizers([combined])

    def _check_memory(self, config: TrainConfig, model: Any) -> None:
        budget_gb = self.memory_per_rank_gb
        if budget_gb is None and self.device.type == "cuda":
            budget_gb = torch.cuda.get_device_properties(self.device).total_memory / 1024**3
        if budget_gb is None:
            return
        budget = budget_gb * 1024**3
        factor = 1 + _STATE_FACTOR.get(config.optimizer, 1)
        tables = {spec.name: n * 4 * factor for spec, n in
                  zip(model.config.tables, (model.table_parameters()[s.name] for s in model.config.tables))}
        dense = sum(p.numel() for p in model.parameters()) * 4 * factor - sum(tables.values())
        name, biggest = max(tables.items(), key=lambda kv: kv[1]) if tables else ("", 0)
        gb = 1024**3
        if self.mode != "hybrid":
            total = sum(tables.values()) + dense
            if total > budget:
                raise ValueError(f"the model ({total / gb:.3g} GB of weights and optimizer state; largest table "
                                 f"{name!r}, {biggest / gb:.3g} GB) fits no rank's memory budget of {budget_gb:g} GB: "
                                 f"--parallel {self.mode} keeps every table on every rank; use --parallel hybrid "
                                 "or compress the tables")
            return
        per_rank = [biggest / self.world_size]
        if self.sharding_type in ("table_wise", "data_parallel"):
            per_rank = [biggest]
        if per_rank[0] > budget:
            raise ValueError(f"table {name!r} ({biggest / gb:.3g} GB of weights and optimizer state) fits no rank's "
                             f"memory budget of {budget_gb:g} GB"
                             + (f" even split {self.world_size} ways" if len(per_rank) and self.sharding_type not in
                                ("table_wise", "data_parallel") else f" (--sharding-type {self.sharding_type})")
                             + ": compress it, add ranks or raise --memory-per-rank-gb")
        if (sum(tables.values()) + dense) / self.world_size > budget:
            raise ValueError(f"the tables ({sum(tables.values()) / gb:.3g} GB of weights and optimizer state) do not "
                             f"fit {self.world_size} ranks of {budget_gb:g} GB: compress them or add ranks")

    # -- the loop's hooks ----------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, float, int]:
        """``(loss to backpropagate, the global batch's mean loss, its size)``.

        Each rank's loss is its samples' summed cross-entropy times ``W / global size`` (padding
        masked out): averaged by DDP and TorchRec, the gradient is the global mean's.
        """
        valid = ~torch.isnan(labels)
        per = F.binary_cross_entropy_with_logits(logits, torch.where(valid, labels, torch.zeros_like(labels)),
                                                 reduction="none")
        total = torch.where(valid, per, torch.zeros_like(per)).sum()
        stats = torch.stack([total.detach().double(), valid.sum().double()]).to(self.comm_device)
        dist.all_reduce(stats)
        loss_sum, n = stats.tolist()
        return total * (self.world_size / n), loss_sum / n, int(n)

    def gather(self, labels: np.ndarray, probs: np.ndarray, split: str = "") -> Tuple[np.ndarray, np.ndarray]:
        """All ranks' ``(labels, probabilities)`` (hybrid, data: padding dropped); in
        ``independent`` mode rank 0's (every rank's own metrics are kept for :meth:`finish`)."""
        if self.mode == "independent":
            from dlrm.metrics import binary_metrics

            self.rank_metrics[split] = binary_metrics(labels, probs)
            both = torch.from_numpy(np.stack([labels.astype(np.float64), probs.astype(np.float64)])).to(self.comm_device)
            dist.broadcast(both, src=0)
            out = both.cpu().numpy()
            return out[0].astype(labels.dtype), out[1]
        local = torch.from_numpy(np.stack([labels.astype(np.float64), probs.astype(np.float64)])).to(self.comm_device)
        every = torch.empty((self.world_size * 2, local.shape[1]), dtype=local.dtype, device=self.comm_device)
        dist.all_gather_into_tensor(every, local)
        arr = every.cpu().numpy()
        all_labels, all_probs = arr[0::2].reshape(-1), arr[1::2].reshape(-1)
        keep = ~np.isnan(all_labels)
        return all_labels[keep].astype(labels.dtype), all_probs[keep]

    def finish(self, result: Dict[str, Any]) -> Dict[str, Any]:
        """``result`` with the run's distribution: ``parallel``, ``world_size``, ``sharding``
        (hybrid: TorchRec's sharding type per component table) and ``rank_metrics`` (independent)."""
        out = {**result, "parallel": self.mode, "world_size": self.world_size}
        if self.sharding:
            out["sharding"] = dict(sorted(self.sharding.items()))
        if self.mode == "independent":
            mine = {f"test_{k}": v for k, v in self.rank_metrics.get("test", {}).items()}
            every: List[Any] = [None] * self.world_size
            dist.all_gather_object(every, {"rank": self.rank, **mine})
            out["rank_metrics"] = every
        return out

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self, path: str, config: Mapping[str, Any], model: Any, optimizer: Any, state: Mapping[str, Any]) -> None:
        """Write this rank's part of the checkpoint at ``path`` (all ranks call it at the same step)."""
        from dlrm.checkpoint import atomic_save, rng_state, save_checkpoint

        if self.mode == "data":
            if self.is_main:
                save_checkpoint(path, config, model, optimizer, state)
            dist.barrier()
            return
        step_dir = os.path.join(path, f"step-{int(state['step']):09d}")
        if self.is_main:
            os.makedirs(path, exist_ok=True)
            shutil.rmtree(step_dir, ignore_errors=True)  # (a save killed half-way)
            os.makedirs(step_dir)
        dist.barrier()
        rest = {k: v for k, v in state.items() if k != "best_model"}
        if self.mode == "hybrid":
            import torch.distributed.checkpoint as dcp

            tensors = {"model": _tensors_only(model.state_dict()),
                       "optimizer": {str(i): _tensors_only(s) for i, s in enumerate(optimizer.state_dict())}}
            if state.get("best_model") is not None:
                tensors["best_model"] = _tensors_only(state["best_model"])
            dcp.save(tensors, checkpoint_id=step_dir)
            meta = {"config": dict(config), "state": rest, "rng": rng_state(), "world_size": self.world_size,
                    "parallel": self.mode, "rank": self.rank, "has_best": state.get("best_model") is not None,
                    "layout": dict(self.layout)}
            atomic_save(meta, os.path.join(step_dir, f"rank{self.rank}.pt"))
        else:
            save_checkpoint(os.path.join(step_dir, f"rank{self.rank}.pt"), config, model, optimizer, state)
        dist.barrier()
        if self.is_main:
            tmp = os.path.join(path, f"{LATEST}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(os.path.basename(step_dir) + "\n")
            os.replace(tmp, os.path.join(path, LATEST))
            for old in os.listdir(path):
                if old.startswith("step-") and old != os.path.basename(step_dir):
                    shutil.rmtree(os.path.join(path, old), ignore_errors=True)
        dist.barrier()

    def _refuse_other_formats(self, path: str) -> None:
        from dlrm.checkpoint import CHECKPOINT_NAME, CheckpointError

        directory = os.path.dirname(path)
        for name, mode in ((CHECKPOINT_NAME, "data (or one process)"), (DCP_DIR, "hybrid"), (RANKS_DIR, "independent")):
            other = os.path.join(directory, name)
            if name != self.checkpoint_name and os.path.exists(other):
                raise CheckpointError(f"{directory} holds a checkpoint of a --parallel {mode} run ({other}); this "
                                      f"--parallel {self.mode} run cannot resume it: use another --checkpoint-dir "
                                      "or pass --no-resume")

    def load(self, path: str, config: Mapping[str, Any], device: Any) -> Optional[Dict[str, Any]]:
        """This rank's checkpoint at ``path`` (``None`` when there is none), as
        :func:`dlrm.checkpoint.load_checkpoint` returns one (``model`` and ``optimizer`` in the
        form the wrapped model's and optimizer's ``load_state_dict`` take)."""
        from dlrm.checkpoint import CheckpointError, check_resumable, load_checkpoint

        self._refuse_other_formats(path)
        if self.mode == "data":
            ckpt = load_checkpoint(path, config, device)
            if ckpt is not None:  # (rank 0 wrote it; each rank has its own device, which may differ)
                ckpt["config"] = {**ckpt["config"], "device": config["device"]}
            return ckpt
        step_dir = _latest(path) if os.path.isdir(path) else None
        if step_dir is None:
            return None
        mine = os.path.join(step_dir, f"rank{self.rank}.pt")
        if self.mode == "independent":
            ckpt = load_checkpoint(mine, config, device)
            if ckpt is None:
                raise CheckpointError(f"{mine} is missing: the checkpoint was written by fewer than "
                                      f"{self.world_size} ranks; resume with as many processes as wrote it")
            self._check_world(step_dir)
            return ckpt
        meta = _read_meta(mine)
        if meta.get("world_size") != self.world_size:
            raise CheckpointError(f"{step_dir} was written by {meta.get('world_size')} ranks, this run has "
                                  f"{self.world_size}: resume with --nproc-per-node {meta.get('world_size')}")
        check_resumable(meta["config"], config, step_dir)
        import torch.distributed.checkpoint as dcp

        from torchrec.optim.keyed import KeyedOptimizerWrapper

        assert self.model is not None and self.optimizer is not None, "prepare() first"
        for _, opt in self.optimizer.optimizers[0].optimizers:
            if isinstance(opt, KeyedOptimizerWrapper):  # (the dense part; the fused states exist from the start)
                opt.init_state()  # (lazily created states, e.g. Adam's moments, must exist to be loaded into)
        model_state = self.model.state_dict()
        opt_states = self.optimizer.state_dict()
        target: Dict[str, Any] = {"model": _tensors_only(model_state),
                                  "optimizer": {str(i): _tensors_only(s) for i, s in enumerate(opt_states)}}
        best = copy.deepcopy(model_state) if meta.get("has_best") else None
        if best is not None:
            target["best_model"] = _tensors_only(best)
        try:
            dcp.load(target, checkpoint_id=step_dir)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise CheckpointError(f"checkpoint {step_dir} does not load into this run ({first}); delete it or pass "
                                  "--no-resume") from None
        state = dict(meta["state"])
        state["best_model"] = best
        return {"config": meta["config"], "model": model_state, "optimizer": opt_states, "state": state,
                "rng": meta["rng"]}

    def _check_world(self, step_dir: str) -> None:
        from dlrm.checkpoint import CheckpointError

        ranks = sorted(int(f[4:-3]) for f in os.listdir(step_dir) if f.startswith("rank") and f.endswith(".pt"))
        if ranks != list(range(self.world_size)):
            raise CheckpointError(f"{step_dir} holds the checkpoints of ranks {ranks}, this run has {self.world_size} "
                                  f"ranks: resume with --nproc-per-node {len(ranks)}")


def _optimizer_class(name: str) -> Callable[[Any, float], torch.optim.Optimizer]:
    """The torch optimizer that trains a hybrid run's dense parameters, as :func:`dlrm.optim.build_optimizer`
    builds it for one process."""
    if name == "sgd":
        return lambda params, lr: torch.optim.SGD(params, lr=lr)
    if name == "adagrad":
        return lambda params, lr: torch.optim.Adagrad(params, lr=lr, foreach=False)
    if name == "adam":
        return lambda params, lr: torch.optim.Adam(params, lr=lr)
    raise ValueError(f"--optimizer {name} cannot combine with --parallel hybrid")


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
