"""Bytes per step on each collective, and samples/s, of a TorchRec-sharded DLRM: 1 against 2 processes.

Four variants of the same DLRM (``torchrec.models.dlrm.DLRM`` over a
:class:`compemb.distributed.ShardableEmbeddingBagCollection`, multi-hot bags of mean length
``--pooling-factor``): full tables, QR (``mult``, 4 collisions) pooled (``compose="after_pool"``,
DLRM's QR), QR split (the remainder-class split: 4 pooled pseudo-features per feature) and QR
per-index (``EmbeddingCollection`` rows). The bytes are measured, not estimated: every collective
TorchRec calls (``all_to_all_single``, functional ``all_to_all_single``, ``reduce_scatter``,
``all_gather``) is wrapped and counts the bytes this rank sends (its own share included), and a
DDP communication hook counts the allreduced gradient buckets. Reported per rank and step.

**2 processes on a 2-core CPU measure correctness and communication volume, not speed-up**:
both ranks share the cores and gloo's loopback, so samples/s shows overhead only.

Run: ``python benchmarks/bench_distributed.py [--steps 10] [--batch 512]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from typing import Any, Dict, List

import torch
import torch.distributed as dist

from dlrm.distributed_setup import close_process_group
from dlrm.local_ranks import RanksFailedError, free_port, run_local_ranks

CARDINALITIES = (2_000_000, 500_000, 100_000, 20_000, 5_000, 1_000, 200, 50)
DIM = 16
VARIANTS = ("full", "qr_pooled", "qr_split", "qr_per_index")


def _configs(variant: str) -> tuple:
    from compemb.config import EmbeddingBagConfig

    configs, lookups = [], {}
    for i, n in enumerate(CARDINALITIES):
        name = f"C{i + 1}"
        if variant == "full" or n <= 200:
            configs.append(EmbeddingBagConfig(name, n, DIM))
            continue
        compose = "after_pool" if variant == "qr_pooled" else "before_pool"
        configs.append(EmbeddingBagConfig(name, n, DIM, method="qr", num_collisions=4, compose=compose))
        if variant != "qr_pooled":
            lookups[name] = variant[3:]
    return configs, lookups


def _batch(batch: int, pooling: float, seed: int, lo: int, hi: int):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    lengths = [torch.randint(1, int(2 * pooling), (batch,), generator=g) for _ in CARDINALITIES]
    values = [torch.randint(0, n, (int(ln.sum()),), generator=g) for n, ln in zip(CARDINALITIES, lengths)]
    starts = [torch.cat([torch.zeros(1, dtype=torch.long), ln.cumsum(0)]) for ln in lengths]
    kjt = KeyedJaggedTensor(
        keys=[f"C{i + 1}" for i in range(len(CARDINALITIES))],
        values=torch.cat([v[s[lo]:s[hi]] for v, s in zip(values, starts)]),
        lengths=torch.cat([ln[lo:hi] for ln in lengths]))
    dense = torch.randn(batch, 13, generator=g)[lo:hi]
    labels = torch.randint(0, 2, (batch,), generator=g).float()[lo:hi]
    return dense, kjt, labels


class _Counter:
    """Wraps torch.distributed's collectives and counts the bytes this rank sends."""

    def __init__(self) -> None:
        self.bytes: Dict[str, float] = defaultdict(float)
        self.enabled = False
        self._saved: List[Any] = []

    def _wrap(self, module: Any, name: str, label: str, size_of: Any) -> None:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.enabled:
                self.bytes[label] += size_of(*args, **kwargs)
            return original(*args, **kwargs)

        self._saved.append((module, name, original))
        setattr(module, name, wrapped)

    def install(self) -> None:
        import torch.distributed._functional_collectives as funcol

        def nbytes(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        def a2a(output, input, *a, **k):  # dist.all_to_all_single(output, input, ...)
            return nbytes(input)

        self._wrap(dist, "all_to_all_single", "all_to_all", a2a)
        self._wrap(funcol, "all_to_all_single", "all_to_all", lambda input, *a, **k: nbytes(input))
        self._wrap(dist, "reduce_scatter_tensor", "reduce_scatter", lambda output, input, *a, **k: nbytes(input))
        self._wrap(dist, "reduce_scatter", "reduce_scatter",
                   lambda output, input_list, *a, **k: sum(nbytes(t) for t in input_list))
        self._wrap(dist, "all_gather_into_tensor", "all_gather", lambda output, input, *a, **k: nbytes(input))

    def ddp_hook(self) -> Any:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
            if self.enabled:
                self.bytes["allreduce (DDP)"] += nbytes_of(bucket.buffer())
            return allreduce_hook(state, bucket)

        def nbytes_of(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        # DDP checks the annotations as objects (this module's are strings: postponed evaluation)
        hook.__annotations__ = {"state": object, "bucket": dist.GradBucket,
                                "return": torch.futures.Future[torch.Tensor]}
        return hook


def _run_variant(variant: str, rank: int, world: int, args: argparse.Namespace, counter: _Counter) -> Dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel
    from torchrec.models.dlrm import DLRM

    from compemb.distributed import ShardableEmbeddingBagCollection, combined_optimizer, shard

    configs, lookups = _configs(variant)
    pfs = {c.name: args.pooling_factor for c in configs}
    coll = ShardableEmbeddingBagCollection(configs, lookups=lookups, pooling_factors=pfs, seed=0)
    torch.manual_seed(0)
    model = DLRM(embedding_bag_collection=coll, dense_in_features=13, dense_arch_layer_sizes=[64, DIM],
                 over_arch_layer_sizes=[64, 1])
    sharding = None if args.sharding == "planner" else args.sharding
    dmp = shard(model, sharding_types=sharding, fused_params={"optimizer": "exact_sgd", "learning_rate": 0.05})
    ddp = dmp._dmp_wrapped_module
    if isinstance(ddp, DistributedDataParallel):
        ddp.register_comm_hook(dist.GroupMember.WORLD, counter.ddp_hook())
    opt = combined_optimizer(dmp, lambda params: torch.optim.SGD(params, lr=0.05))
    local = args.batch // world
    lo, hi = rank * local, (rank + 1) * local
    batches = [_batch(args.batch, args.pooling_factor, seed, lo, hi) for seed in range(args.steps + 2)]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for i, (dense, kjt, labels) in enumerate(batches):
        if i == 2:  # two warm-up steps (lazy input-dist set-up)
            dist.barrier()
            counter.bytes.clear()
            counter.enabled = True
            start = time.perf_counter()
        opt.zero_grad()
        bce(dmp(dense, kjt).squeeze(1), labels).backward()
        opt.step()
    dist.barrier()
    seconds = time.perf_counter() - start
    counter.enabled = False
    plan = {t: ps.sharding_type for m in dmp.plan.plan.values() for t, ps in m.items()}
    return {"bytes": {k: v / args.steps for k, v in counter.bytes.items()},
            "samples_per_s": args.steps * args.batch / seconds,
            "plan": plan, "lookups": sorted({lay.lookup for lay in coll.layouts})}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, q: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counter = _Counter()
    counter.install()
    out = {}
    for variant in VARIANTS:
        out[variant] = _run_variant(variant, rank, world, args, counter)
    q.put((rank, out))
    close_process_group()


def _launch(world: int, args: argparse.Namespace) -> Dict[int, Any]:
    try:
        return run_local_ranks(_worker, world, (free_port(), args))
    except RanksFailedError as exc:
        raise SystemExit(f"bench_distributed: {exc}") from None


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=512, help="global batch (split across the processes)")
    parser.add_argument("--pooling-factor", type=float, default=8.0, help="mean indices per bag (default 8)")
    parser.add_argument("--sharding", choices=("table_wise", "row_wise", "column_wise", "planner"), default="table_wise",
                        help="sharding type of every TorchRec table, or the planner's choice (default table_wise)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 2 or args.batch % 2 or not args.pooling_factor >= 1:
        parser.error("--steps >= 1, an even --batch >= 2 and --pooling-factor >= 1 are needed")
    print("NOTE: 2 processes on a 2-core CPU measure correctness and communication volume, not speed-up.")
    print(f"DLRM, {len(CARDINALITIES)} features {CARDINALITIES}, dim {DIM}, global batch {args.batch}, "
          f"mean bag length {args.pooling_factor:g} (uniform 1..{int(2 * args.pooling_factor) - 1}); "
          f"QR with 4 collisions on tables above 200 rows; sharding {args.sharding}; bytes sent per rank per step "
          "(all-to-all: this rank's input buffers, its own share included)")
    results = {w: _launch(w, args) for w in (1, 2)}
    labels = ["all_to_all", "reduce_scatter", "all_gather", "allreduce (DDP)"]
    header = ["variant", "procs", "lookups"] + [f"{k} KB" for k in labels] + ["samples/s"]
    rows = [header]
    for variant in VARIANTS:
        for w in (1, 2):
            per_rank = [results[w][r][variant] for r in range(w)]
            row = [variant, str(w), "+".join(per_rank[0]["lookups"])]
            for k in labels:
                row.append(f"{sum(p['bytes'].get(k, 0.0) for p in per_rank) / w / 1e3:,.1f}")
            row.append(f"{per_rank[0]['samples_per_s']:,.0f}")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        print(" | ".join(c.rjust(wd) if j >= 3 else c.ljust(wd) for j, (c, wd) in enumerate(zip(r, widths))))
        if i == 0:
            print("-|-".join("-" * wd for wd in widths))
    for variant in VARIANTS:
        print(f"2-process plan, {variant}: {results[2][0][variant]['plan']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
