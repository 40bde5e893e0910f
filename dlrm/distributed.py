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

This module holds the run (:class:`DistributedTraining`, :class:`RankSplit`); the checks before it
are in :mod:`dlrm.distributed_setup`, the wrapped model in :mod:`dlrm.distributed_model`, the
checkpoints in :mod:`dlrm.distributed_checkpoint`; every public name is importable from here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dlrm.distributed_checkpoint import (DCP_DIR, LATEST, RANKS_DIR, checkpoint_name, load_distributed,
                                         load_unsharded, save_distributed)
from dlrm.distributed_model import ParallelModel, ShardedDLRM, dlrm_state_from_sharded
from dlrm.distributed_setup import PARALLEL_MODES, check_parallel, fused_optimizer_name, world_from_env

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

#: bytes of optimizer state per weight byte, for the memory check
_STATE_FACTOR = {"sgd": 0, "adagrad": 1, "adam": 2, "amsgrad": 3}


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
        """The data set positions of every global batch, as ``split.batches`` visits them
        (the split's :meth:`~dlrm.data.batching.RecSplit.batch_rows` as int64 arrays)."""
        for sel in self.split.batch_rows(batch_size, shuffle, seed, drop_last, start_batch):
            yield np.arange(sel.start, sel.stop, dtype=np.int64) if isinstance(sel, slice) else np.asarray(sel)

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
                p.grad = flat[at:at + n].view_as(p)  # (views of one fresh tensor, each its own slice)
                at += n
        self.inner.step()

    def state_dict(self) -> Any:
        return self.inner.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.inner.load_state_dict(state)



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
        return checkpoint_name(self.mode)

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
        from dlrm.optim import Optimizers, dense_optimizer

        assert config.learning_rate is not None  # TrainConfig resolves the default
        lr = float(config.learning_rate)
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
        name = config.optimizer  # (one fused_optimizer_name accepted: sgd, adagrad or adam)
        combined = combined_optimizer(dmp, lambda params: dense_optimizer(name, params, lr))
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
        params = model.table_parameters()
        tables = {spec.name: params[spec.name] * 4 * factor for spec in model.config.tables}
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
        whole = self.sharding_type in ("table_wise", "data_parallel")  # (a table on one rank)
        if (biggest if whole else biggest / self.world_size) > budget:
            raise ValueError(f"table {name!r} ({biggest / gb:.3g} GB of weights and optimizer state) fits no rank's "
                             f"memory budget of {budget_gb:g} GB"
                             + (f" (--sharding-type {self.sharding_type})" if whole
                                else f" even split {self.world_size} ways")
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

    def release(self) -> None:
        """Drop this run's model and optimizer (before the process group is taken down:
        :func:`dlrm.distributed_setup.close_process_group`)."""
        self.model = self.optimizer = None

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self, path: str, config: Mapping[str, Any], model: Any, optimizer: Any, state: Mapping[str, Any]) -> None:
        """Write this rank's part of the checkpoint at ``path`` (all ranks call it at the same step;
        :func:`dlrm.distributed_checkpoint.save_distributed`)."""
        save_distributed(path, config, model, optimizer, state, mode=self.mode, rank=self.rank,
                         world_size=self.world_size, layout=self.layout)

    def load(self, path: str, config: Mapping[str, Any], device: Any) -> Optional[Dict[str, Any]]:
        """This rank's checkpoint at ``path`` (``None`` when there is none), as
        :func:`dlrm.checkpoint.load_checkpoint` returns one (``model`` and ``optimizer`` in the
        form the wrapped model's and optimizer's ``load_state_dict`` take)."""
        return load_distributed(path, config, device, mode=self.mode, rank=self.rank, world_size=self.world_size,
                                model=self.model, optimizer=self.optimizer)
