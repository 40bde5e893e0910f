"""compemb.distributed under DistributedModelParallel: real 2-process gloo runs (spawned ranks).

All cases run in one 2-process job (``tests/_distributed_cases.py``) started once per module:
process start-up and ``import torchrec`` cost seconds, each case a fraction of one. Each test
reads its case's results from both ranks.
"""
from __future__ import annotations

import pytest

from dlrm.local_ranks import RanksFailedError, free_port, run_local_ranks

pytest.importorskip("torchrec")

import _distributed_cases as cases  # noqa: E402

TIMEOUT_S = 240
TOL = 1e-5


@pytest.fixture(scope="module")
def results():
    try:
        return run_local_ranks(cases.worker, cases.WORLD, (free_port(),), timeout=TIMEOUT_S)
    except RanksFailedError as exc:
        pytest.fail(str(exc))


def case(results, name):
    out = []
    for rank in range(cases.WORLD):
        res = results[rank][name]
        if isinstance(res, str):
            pytest.fail(f"rank {rank}, case {name}: {res}")
        out.append(res)
    return out


@pytest.mark.parametrize("kind", ["table_wise", "row_wise", "column_wise", "data_parallel", "mixed", "planner"])
def test_sharded_output_equals_single_process_modules(results, kind):
    for rank, res in enumerate(case(results, f"forward_{kind}")):
        # every method, composition and lookup kind is present ...
        assert set(res["lookups"].values()) == {"pooled", "split", "per_index"}
        assert res["keys"] == [c.name for c in cases.configs()]  # read by key, returned in config order
        # ... and equals the single-process module on this rank's local batch
        bad = {k: v for k, v in res["errors"].items() if not v <= TOL}
        assert not bad, f"rank {rank}, {kind}: {bad}"
        if kind not in ("mixed", "planner"):
            assert set(res["plan"].values()) <= {kind, "table_wise"}, res["plan"]  # (per-index tables: no DP)
            assert kind in res["plan"].values()


def test_mixed_sharding_reorders_torchrec_keys(results):
    # the pitfall the collection reads around: a sharded EBC's KeyedTensor is not in config order
    for res in case(results, "keyed_tensor_order"):
        assert sorted(res["keys"]) == ["a", "b", "c"] and res["keys"] != ["a", "b", "c"]
    # ... while the collection, sharded four ways at once, answers in config order (checked above)
    res = case(results, "forward_mixed")[0]
    assert {"row_wise", "table_wise", "column_wise", "data_parallel"} <= set(res["plan"].values())


def test_dmp_reinitialises_shards_unless_weights_are_copied(results):
    for res in case(results, "no_weight_copy"):
        assert res["errors"]["full"] > 1e-3 and res["errors"]["qr_split"] > 1e-3


def test_two_ranks_train_as_one_process_with_the_global_batch(results):
    for rank, res in enumerate(case(results, "train")):
        assert res["gradient_division"]  # TorchRec divides the sharded tables' gradients by W, as DDP averages
        for got, want in zip(res["losses"], res["ref_losses"]):
            assert abs(got - want) <= 1e-5, (res["losses"], res["ref_losses"])
        bad = {k: v for k, v in res["errors"].items() if not v <= TOL}
        assert not bad, f"rank {rank}: {bad}"
        # the data-parallel table is trained by the dense optimizer (the fused one skips it)
        assert res["dp_table_in_dense_optimizer"] and res["dp_table_moved"] > 1e-4


def test_calling_dmp_module_skips_the_allreduce(results):
    for res in case(results, "module_call"):
        assert res["dmp"] == 0.0           # dmp(...): DDP keeps the replicated tables identical
        assert res["module"] > 1e-6        # dmp.module(...): no allreduce, the replicas drift apart
