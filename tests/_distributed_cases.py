"""The 2-process cases of ``tests/test_distributed_multiprocess.py`` (run in every rank).

One job (2 spawned processes, gloo; :func:`dlrm.local_ranks.run_local_ranks`) runs every case in
turn and sends each rank's results back through a queue: process start-up and ``import torchrec``
dominate, so they are paid once.
"""
from __future__ import annotations

import os
import traceback
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist

from dlrm.distributed_setup import close_process_group

WORLD = 2
LOCAL_BATCH = 6


def configs():
    from compemb.config import EmbeddingBagConfig as C

    return [
        C("full", 3000, 8),
        C("hash", 3000, 8, method="hash"),
        C("qr_split", 3000, 8, method="qr"),
        C("qr_index", 3000, 8, method="qr", mode="mean"),
        C("qr_1hot", 3000, 8, method="qr"),  # one-hot bags: pooled lookup is the paper's composition
        C("qr_add", 3000, 8, method="qr", operation="add", mode="mean"),
        C("qr_cat", 3000, 8, method="qr", operation="concat"),
        C("qr_after", 3000, 8, method="qr", compose="after_pool"),
        C("gqr", 30000, 8, method="gqr"),
        C("crt", 3_000_000, 8, method="crt", k=3),
        C("md", 3000, 8, method="md", md_dim=4),
        C("path", 3000, 8, method="path", mode="mean"),
        C("path_mlp", 3000, 8, method="path", hidden_dims=(4,)),
    ]


LOOKUPS = {"qr_split": "split", "qr_index": "per_index", "qr_1hot": "pooled", "path": "split", "gqr": "per_index"}
POOLING = {"qr_split": 3.0, "qr_index": 3.0, "path": 3.0, "path_mlp": 3.0, "gqr": 3.0, "crt": 3.0}


def collection(cfgs, **kwargs):
    """The collection of ``cfgs`` with the lookups and pooling factors above (seed 3, replicate_rows 100)."""
    from compemb.distributed import ShardableEmbeddingBagCollection

    names = {c.name for c in cfgs}
    return ShardableEmbeddingBagCollection(
        cfgs, lookups={k: v for k, v in LOOKUPS.items() if k in names},
        pooling_factors={k: v for k, v in POOLING.items() if k in names}, replicate_rows=100, seed=3, **kwargs)


def global_batch(cfgs, batch: int, seed: int) -> List[Tuple[List[torch.Tensor], torch.Tensor]]:
    """Per feature: the bags (index tensors) and their lengths, for ``batch`` samples."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in cfgs:
        max_len = 2 if c.name == "qr_1hot" else 5
        lengths = torch.randint(0, max_len, (batch,), generator=g)
        out.append(([torch.randint(0, c.num_embeddings, (int(n),), generator=g) for n in lengths], lengths))
    return out


def slices(shard_metadata) -> tuple:
    """The region of the full tensor that a ShardedTensor's shard holds."""
    return tuple(slice(o, o + n) for o, n in zip(shard_metadata.shard_offsets, shard_metadata.shard_sizes))


def kjt_of(cfgs, bags, lo: int, hi: int):
    from torchrec import KeyedJaggedTensor

    values = torch.cat([v for feature_bags, _ in bags for v in feature_bags[lo:hi]] + [torch.zeros(0, dtype=torch.long)])
    lengths = torch.cat([ln[lo:hi] for _, ln in bags])
    return KeyedJaggedTensor(keys=[c.name for c in cfgs], values=values, lengths=lengths)


def reference_outputs(modules, cfgs, bags, lo: int, hi: int) -> Dict[str, torch.Tensor]:
    out = {}
    for c, (feature_bags, lengths) in zip(cfgs, bags):
        v = torch.cat(feature_bags[lo:hi] + [torch.zeros(0, dtype=torch.long)])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths[lo:hi].cumsum(0)[:-1]])
        out[c.name] = modules[c.name](v, offsets)
    return out


def pins(coll, kind: str) -> Dict[str, str]:
    """A sharding type per sharded table (per-index tables: the EmbeddingCollection's types)."""
    from compemb.distributed.sharding import EMBEDDING_COLLECTION_SHARDING_TYPES

    out = {}
    order = ["row_wise", "table_wise", "column_wise", "data_parallel"]
    for i, lay in enumerate(coll.layouts):
        for t in lay.sharded_tables:
            st = order[i % 4] if kind == "mixed" else kind
            if lay.lookup == "per_index" and st not in EMBEDDING_COLLECTION_SHARDING_TYPES:
                st = "table_wise"
            out[t.name] = st
    return out


def case_forward(rank: int, kind: str) -> Dict[str, Any]:
    from compemb.distributed import shard

    cfgs = configs()
    coll = collection(cfgs)
    lookups = {lay.name: lay.lookup for lay in coll.layouts}
    modules = coll.to_modules()  # (before DMP: it replaces the TorchRec children in place)
    bags = global_batch(cfgs, WORLD * LOCAL_BATCH, seed=11)
    lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
    dmp = shard(coll, sharding_types=pins(coll, kind) if kind != "planner" else None)
    out = dmp(kjt_of(cfgs, bags, lo, hi))
    want = reference_outputs(modules, cfgs, bags, lo, hi)
    got = out.to_dict()
    result: Dict[str, Any] = {
        "keys": out.keys(),
        "lookups": lookups,
        "errors": {name: (got[name] - want[name]).abs().max().item() for name in want},
        "plan": {t: ps.sharding_type for m in dmp.plan.plan.values() for t, ps in m.items()},
    }
    return result


def case_keyed_tensor_order(rank: int) -> Dict[str, Any]:
    """A plain TorchRec EBC sharded three ways: the output KeyedTensor's key order (the pitfall)."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    from compemb.distributed import sharders

    names = ["a", "b", "c"]
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name=n, num_embeddings=50, embedding_dim=4, feature_names=[n])
                                  for n in names])
    kinds = {"a": "table_wise", "b": "row_wise", "c": "table_wise"}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=WORLD, compute_device="cpu"),
                                       constraints={n: ParameterConstraints(sharding_types=[k]) for n, k in kinds.items()})
    sharding_plan = planner.collective_plan(ebc, sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(ebc, device=torch.device("cpu"), plan=sharding_plan, sharders=sharders())
    kjt = KeyedJaggedTensor(keys=names, values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 0, 1, 0, 0, 1]))
    return {"keys": dmp(kjt).keys()}


def case_no_weight_copy(rank: int) -> Dict[str, Any]:
    """Without copying the weights in, DMP serves re-initialised shards (the pitfall)."""
    from compemb.distributed import shard

    cfgs = [c for c in configs() if c.name in ("full", "qr_split")]
    coll = collection(cfgs)
    modules = coll.to_modules()
    bags = global_batch(cfgs, WORLD * LOCAL_BATCH, seed=12)
    lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
    dmp = shard(coll, sharding_types="table_wise", copy_weights=False)
    got = dmp(kjt_of(cfgs, bags, lo, hi)).to_dict()
    want = reference_outputs(modules, cfgs, bags, lo, hi)
    return {"errors": {n: (got[n] - want[n]).abs().max().item() for n in want}}


def _dlrm(coll):
    from torchrec.models.dlrm import DLRM

    torch.manual_seed(0)
    return DLRM(embedding_bag_collection=coll, dense_in_features=4, dense_arch_layer_sizes=[8, 8],
                over_arch_layer_sizes=[4, 1])


def _train_configs():
    names = ("full", "hash", "qr_split", "qr_index", "gqr", "md", "path")
    return [c for c in configs() if c.name in names]


def case_train(rank: int, steps: int = 2, lr: float = 0.5) -> Dict[str, Any]:
    """DLRM over the collection: 2 ranks (local batch) against 1 process (global batch), SGD."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from compemb.distributed import combined_optimizer, shard

    cfgs = _train_configs()

    def build():
        return _dlrm(collection(cfgs))

    g = torch.Generator().manual_seed(5)
    batches = []
    for step in range(steps):
        bags = global_batch(cfgs, WORLD * LOCAL_BATCH, seed=100 + step)
        dense = torch.randn(WORLD * LOCAL_BATCH, 4, generator=g)
        labels = torch.randint(0, 2, (WORLD * LOCAL_BATCH,), generator=g).float()
        batches.append((bags, dense, labels))
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    ref = build()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr)
    ref_losses = []
    for bags, dense, labels in batches:
        ref_opt.zero_grad()
        loss = bce(ref(dense, kjt_of(cfgs, bags, 0, WORLD * LOCAL_BATCH)).squeeze(1), labels)
        loss.backward()
        ref_opt.step()
        ref_losses.append(loss.item())
    ref_state = ref.state_dict()

    model = build()
    dp_table = "sparse_arch.embedding_bag_collection.ebc.embedding_bags.full__t0.weight"
    dmp = shard(model, sharding_types={"full": "data_parallel", "hash": "row_wise", "qr_split": "column_wise"},
                fused_params={"optimizer": "exact_sgd", "learning_rate": lr})
    opt = combined_optimizer(dmp, lambda params: torch.optim.SGD(params, lr=lr))
    dense_names = set(dict(in_backward_optimizer_filter(dmp.named_parameters())))
    lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
    losses = []
    for bags, dense, labels in batches:
        opt.zero_grad()
        loss = bce(dmp(dense[lo:hi], kjt_of(cfgs, bags, lo, hi)).squeeze(1), labels[lo:hi])
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / WORLD)
    errors: Dict[str, float] = {}
    for key, value in dmp.state_dict().items():
        want = ref_state[key]
        if isinstance(value, ShardedTensor):
            err = max([(s.tensor - want[slices(s.metadata)]).abs().max().item() for s in value.local_shards()]
                      or [0.0])
        else:
            err = (value - want).abs().max().item()
        errors[key] = err
    before = build().state_dict()[dp_table]
    return {"losses": losses, "ref_losses": ref_losses, "errors": errors,
            "dp_table_in_dense_optimizer": any(n.endswith("ebc.embedding_bags.full__t0.weight") for n in dense_names),
            "dp_table_moved": (ref_state[dp_table] - before).abs().max().item(),
            "gradient_division": _gradient_division()}


def _gradient_division() -> bool:
    from torchrec.distributed.comm_ops import get_gradient_division

    return bool(get_gradient_division())


def case_module_call_skips_allreduce(rank: int, lr: float = 0.5) -> Dict[str, Any]:
    """A step through ``dmp.module(...)`` leaves the replicated tables different on the ranks."""
    from compemb.distributed import combined_optimizer, shard

    cfgs = [c for c in configs() if c.name in ("qr_split", "path")]
    out: Dict[str, Any] = {}
    for how in ("dmp", "module"):
        dmp = shard(_dlrm(collection(cfgs)), fused_params={"optimizer": "exact_sgd", "learning_rate": lr})
        opt = combined_optimizer(dmp, lambda params: torch.optim.SGD(params, lr=lr))
        bags = global_batch(cfgs, WORLD * LOCAL_BATCH, seed=21)
        dense = torch.randn(WORLD * LOCAL_BATCH, 4, generator=torch.Generator().manual_seed(1))
        lo, hi = rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH
        call = dmp if how == "dmp" else dmp.module
        opt.zero_grad()
        call(dense[lo:hi], kjt_of(cfgs, bags, lo, hi)).square().mean().backward()
        opt.step()
        remainder = dmp.state_dict()["sparse_arch.embedding_bag_collection.replicated.qr_split__t0"].clone()
        gathered = [torch.empty_like(remainder) for _ in range(WORLD)]
        dist.all_gather(gathered, remainder)
        out[how] = (gathered[0] - gathered[1]).abs().max().item()
    return out


CASES = {
    "forward_table_wise": lambda r: case_forward(r, "table_wise"),
    "forward_row_wise": lambda r: case_forward(r, "row_wise"),
    "forward_column_wise": lambda r: case_forward(r, "column_wise"),
    "forward_data_parallel": lambda r: case_forward(r, "data_parallel"),
    "forward_mixed": lambda r: case_forward(r, "mixed"),
    "forward_planner": lambda r: case_forward(r, "planner"),
    "keyed_tensor_order": case_keyed_tensor_order,
    "no_weight_copy": case_no_weight_copy,
    "train": case_train,
    "module_call": case_module_call_skips_allreduce,
}


def worker(rank: int, world: int, port: int, queue: Any) -> None:
    """Run every case in this rank and put ``(rank, {case: result or "error: ..."})`` on ``queue``."""
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results: Dict[str, Any] = {}
    for name, case in CASES.items():
        t0 = time.perf_counter()
        try:
            results[name] = case(rank)
        except Exception:  # reported by the test that reads this case
            results[name] = "error: " + traceback.format_exc()[-3000:]
        results[name + ":seconds"] = time.perf_counter() - t0
        dist.barrier()
    queue.put((rank, results))
    close_process_group()
