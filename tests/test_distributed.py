"""compemb.distributed in one process: TorchRec interop, the KJT rewrite, converters, the dry run.

The multi-process runs (DMP over gloo) are in ``tests/test_distributed_multiprocess.py``.
"""
from __future__ import annotations

import pytest
import torch

torchrec = pytest.importorskip("torchrec")

from torchrec import KeyedJaggedTensor, KeyedTensor  # noqa: E402

from compemb.collection import CompositionalEmbeddingBagCollection  # noqa: E402
from compemb.config import EmbeddingBagConfig, build_embedding_bag  # noqa: E402
from compemb.distributed import (  # noqa: E402
    ShardableEmbeddingBagCollection,
    feature_layout,
    from_torchrec_configs,
    parameter_constraints,
    to_torchrec_configs,
)

from _distributed_cases import configs as all_method_configs, global_batch, kjt_of, reference_outputs  # noqa: E402

C = EmbeddingBagConfig

# every method, composition and lookup the rewrite serves (replicate_rows=100 below)
CONFIGS = all_method_configs()
POOLING = {c.name: 3.0 for c in CONFIGS}


@pytest.mark.parametrize("lookups", [
    {},
    {"qr_split": "split", "path": "split", "gqr": "per_index"},
    {c.name: "per_index" for c in CONFIGS},
], ids=["auto", "split", "per_index"])
def test_rewrite_equals_single_process_modules(lookups):
    coll = ShardableEmbeddingBagCollection(CONFIGS, lookups=lookups, pooling_factors=POOLING, replicate_rows=100, seed=3)
    # the modules the collection was built from: build_embedding_bag under the same seed
    with torch.random.fork_rng():
        torch.manual_seed(3)
        built = {c.name: build_embedding_bag(c) for c in CONFIGS}
    bags = global_batch(CONFIGS, 7, seed=1)
    out = coll(kjt_of(CONFIGS, bags, 0, 7))
    assert isinstance(out, KeyedTensor) and out.keys() == [c.name for c in CONFIGS]
    got = out.to_dict()
    for name, want in reference_outputs(built, CONFIGS, bags, 0, 7).items():
        torch.testing.assert_close(got[name], want, atol=1e-6, rtol=1e-5, msg=name)
    # and the gradients reach every table
    out.values().square().sum().backward()
    assert all(p.grad is not None for p in coll.parameters())


def test_layout_chooses_lookup_by_traffic():
    qr = build_embedding_bag(C("f", 10_000, 8, method="qr", num_collisions=4))
    assert feature_layout("f", qr, pooling_factor=1.0).lookup == "pooled"      # one-hot: exact pooled
    assert feature_layout("f", qr, pooling_factor=1.0).one_hot
    assert feature_layout("f", qr, pooling_factor=3.0).lookup == "per_index"   # 3 rows < 4 classes
    assert feature_layout("f", qr, pooling_factor=4.0).lookup == "split"       # tie: split
    lay = feature_layout("f", qr, pooling_factor=20.0)
    assert lay.lookup == "split" and lay.output_floats_per_sample() == 4 * 8
    add = build_embedding_bag(C("f", 10_000, 8, method="qr", operation="add"))
    assert feature_layout("f", add, pooling_factor=20.0).lookup == "pooled"    # add: pooled is exact
    with pytest.raises(ValueError, match="'f'.*split.*exact pooled"):
        feature_layout("f", add, lookup="split")
    crt = build_embedding_bag(C("f", 10_000, 8, method="crt", k=2))            # two tables of ~100 rows
    assert feature_layout("f", crt, replicate_rows=10).sharded_tables.__len__() == 2
    with pytest.raises(ValueError, match="exactly one sharded table"):
        feature_layout("f", crt, lookup="split", replicate_rows=10)
    with pytest.raises(ValueError, match="MLP"):
        feature_layout("f", build_embedding_bag(C("f", 3000, 8, method="path", hidden_dims=(4,))), lookup="split",
                       replicate_rows=100)
    # a feature whose tables are all replicated is composed locally, whatever the lookup
    assert feature_layout("f", crt, lookup="split").lookup == "per_index"


def test_one_hot_pooled_refuses_multi_hot_bags():
    coll = ShardableEmbeddingBagCollection([C("qr", 3000, 8, method="qr")], replicate_rows=100, seed=0)
    assert coll.layouts[0].lookup == "pooled" and coll.layouts[0].one_hot
    one_hot = KeyedJaggedTensor.from_lengths_sync(["qr"], torch.tensor([5, 2999]), torch.tensor([1, 0, 1]))
    mod = coll.to_modules()["qr"]
    torch.testing.assert_close(coll(one_hot).to_dict()["qr"], mod(torch.tensor([5, 2999]), torch.tensor([0, 1, 1])))
    two = KeyedJaggedTensor.from_lengths_sync(["qr"], torch.tensor([5, 7]), torch.tensor([2]))
    with pytest.raises(ValueError, match="'qr'.*bag of 2 indices.*one-hot"):
        coll(two)


@pytest.mark.parametrize("bad, err, match", [
    (KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1]), torch.tensor([1])), KeyError, "'qr' missing"),
    (KeyedJaggedTensor.from_lengths_sync(["qr"], torch.tensor([3000]), torch.tensor([1])), IndexError, "'qr'.*3000"),
    (KeyedJaggedTensor.from_lengths_sync(["qr"], torch.tensor([-1]), torch.tensor([1])), IndexError, "'qr'.*-1"),
    (KeyedJaggedTensor.from_lengths_sync(["qr"], torch.tensor([1]), torch.tensor([1]), weights=torch.tensor([2.0])),
     ValueError, "'qr'.*weighted"),
])
def test_bad_input_names_the_feature(bad, err, match):
    coll = ShardableEmbeddingBagCollection([C("qr", 3000, 8, method="qr")], replicate_rows=100, seed=0)
    with pytest.raises(err, match=match):
        coll(bad)


def test_bad_construction_names_the_value():
    with pytest.raises(ValueError, match="mode='max'"):
        ShardableEmbeddingBagCollection([C("m", 100, 8, mode="max")])
    with pytest.raises(ValueError, match="unknown features \\['nope'\\]"):
        ShardableEmbeddingBagCollection([C("a", 100, 8)], lookups={"nope": "split"})
    with pytest.raises(ValueError, match="duplicate feature name 'a'"):
        ShardableEmbeddingBagCollection([C("a", 100, 8), C("a", 100, 8)])
    with pytest.raises(ValueError, match="lookup must be one of"):
        ShardableEmbeddingBagCollection([C("a", 100, 8)], lookups={"a": "gather"})
    with pytest.raises(ValueError, match="collides"):
        ShardableEmbeddingBagCollection([C("a", 3000, 8, method="qr"), C("a__t1", 100, 8)], replicate_rows=10)
    with pytest.raises(TypeError, match="QuantizedEmbeddingBag|cannot map"):
        from compemb.quantization import quantize

        ShardableEmbeddingBagCollection([("q", quantize(build_embedding_bag(C("q", 100, 8))))])


def test_parameter_constraints_pins_and_refusals():
    coll = ShardableEmbeddingBagCollection(
        [C("qr", 3000, 8, method="qr"), C("full", 3000, 8), C("idx", 3000, 8, method="qr")],
        lookups={"idx": "per_index"}, pooling_factors={"qr": 8.0}, replicate_rows=100, device="meta")
    cons = parameter_constraints(coll, {"qr": "row_wise", "full__t0": "data_parallel"})
    assert cons["qr__t1"].sharding_types == ["row_wise"]
    assert cons["qr__t1"].pooling_factors == [2.0] * 4  # split: 4 pseudo-features, 8/4 indices each
    assert cons["full__t0"].sharding_types == ["data_parallel"]
    assert cons["idx__t1"].sharding_types is None
    with pytest.raises(ValueError, match="'qr__t0'"):  # a replicated table is no TorchRec table
        parameter_constraints(coll, {"qr__t0": "row_wise"})
    with pytest.raises(ValueError, match="sharding type of 'qr' must be one of"):
        parameter_constraints(coll, {"qr": "diagonal"})
    with pytest.raises(ValueError, match="'idx__t1'.*per index.*data_parallel.*replicate"):
        parameter_constraints(coll, {"idx": "data_parallel"})
    twice = torch.nn.ModuleList([coll, ShardableEmbeddingBagCollection([C("full", 3000, 8)], device="meta")])
    with pytest.raises(ValueError, match="table named 'full__t0'"):
        parameter_constraints(twice)


def test_module_state_round_trip_and_to_modules():
    coll = ShardableEmbeddingBagCollection(CONFIGS, pooling_factors=POOLING, replicate_rows=100, seed=5)
    states = coll.modules_state_dict()
    other = ShardableEmbeddingBagCollection(CONFIGS, pooling_factors=POOLING, replicate_rows=100, seed=6)
    other.load_module_state(states)
    for key, value in coll.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, msg=key)
    assert set(coll.state_dict_from_modules(states)) == set(coll.state_dict())


def test_dlrm_trains_with_the_collection_unchanged():
    from torchrec.models.dlrm import DLRM

    configs = [C("qr", 3000, 8, method="qr"), C("md", 3000, 8, method="md", md_dim=4), C("full", 50, 8)]
    coll = ShardableEmbeddingBagCollection(configs, pooling_factors={"qr": 8.0}, replicate_rows=100, seed=0)
    torch.manual_seed(0)
    model = DLRM(embedding_bag_collection=coll, dense_in_features=4, dense_arch_layer_sizes=[8, 8],
                 over_arch_layer_sizes=[4, 1])
    kjt = kjt_of(configs, global_batch(configs, 16, seed=2), 0, 16)
    dense = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    labels = (torch.arange(16) % 2).float()
    before = {k: v.clone() for k, v in coll.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, kjt).squeeze(1), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(not torch.equal(before[k], v) for k, v in coll.state_dict().items())  # every table trained
    assert {c.name for c in coll.embedding_bag_configs()} == {"qr", "md", "full"}


def test_converters_round_trip_and_refusals():
    configs = [C("C1", 10_000, 16, method="qr", num_collisions=4), C("C2", 100, 16, mode="mean")]
    tr = to_torchrec_configs(configs)
    assert [(t.name, t.num_embeddings, t.embedding_dim, t.feature_names) for t in tr] == [
        ("C1", 10_000, 16, ["C1"]), ("C2", 100, 16, ["C2"])]
    assert tr[1].pooling == torchrec.PoolingType.MEAN
    back = from_torchrec_configs(tr, method="qr", threshold=200, num_collisions=4)
    assert [(c.name, c.method, c.mode) for c in back] == [("C1", "qr", "sum"), ("C2", "full", "mean")]
    assert from_torchrec_configs(to_torchrec_configs([configs[1]])) == [configs[1]]
    shared = torchrec.EmbeddingBagConfig(name="t", num_embeddings=10, embedding_dim=4, feature_names=["a", "b"])
    with pytest.raises(ValueError, match="'t' is read by 2 features"):
        from_torchrec_configs([shared])
    with pytest.raises(ValueError, match="'m': mode='max'"):
        to_torchrec_configs([C("m", 10, 4, mode="max")])


def test_compositional_collection_takes_a_real_kjt_and_returns_a_keyed_tensor():
    coll = CompositionalEmbeddingBagCollection([("a", 100, 4, 10, "mult", "sum"), ("b", 50, 4, None, "add", "mean")],
                                               backend="torch", seed=0)
    kjt = KeyedJaggedTensor.from_lengths_sync(["b", "a"], torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32),
                                              torch.tensor([2, 0, 1, 2]))
    got = coll(kjt)
    # "b" holds bags [1, 2] and [], "a" bags [3] and [4, 5]
    want = coll([(torch.tensor([3, 4, 5]), torch.tensor([0, 1])), (torch.tensor([1, 2]), torch.tensor([0, 2]))])
    torch.testing.assert_close(got["a"], want[0])
    torch.testing.assert_close(got["b"], want[1])
    kt = coll(kjt, keyed_tensor=True)
    assert isinstance(kt, KeyedTensor) and kt.keys() == ["a", "b"] and kt.length_per_key() == [4, 4]
    torch.testing.assert_close(kt.to_dict()["b"], want[1])
    weighted = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2]), torch.tensor([1, 0, 1, 0]),
                                                   weights=torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="weights"):
        coll(weighted)


def test_dry_run_plans_every_method_on_meta():
    from compemb.distributed import dry_run

    configs = [C(f"C{i}", n, 16, method="qr", num_collisions=4) for i, n in enumerate([2_000_000, 50_000, 300])]
    p = dry_run(configs, 4, method="qr", local_batch_size=128, hbm_gb=1.0)
    assert len(p.bytes_per_rank) == 4
    assert p.parameters == sum(4 * 16 + -(-n // 4) * 16 for n in (2_000_000, 50_000, 300))
    sharded = [t for t in p.tables if t.sharding_type != "replicated"]
    assert {t.table for t in sharded} == {"C0__t1", "C1__t1"}  # the quotients; remainders replicated
    # one-hot pooled features of 16 floats, 8-byte ids: per sharded table and step, the ids go out once per
    # column shard and the pooled vectors out and back once per row shard (each row shard returns a partial
    # sum; TorchRec's planner picks row_wise for both quotients here); data-parallel tables send nothing
    expected = 0
    for t in sharded:
        if t.sharding_type == "data_parallel":
            continue
        col_shards = len(t.shard_cols) if t.sharding_type in ("column_wise", "table_column_wise") else 1
        row_shards = len(t.shard_rows) if t.sharding_type in ("row_wise", "table_row_wise") else 1
        expected += 128 * (8 * col_shards + 2 * 16 * 4 * row_shards)
    assert expected > 0 and p.all_to_all_bytes == expected
    with pytest.raises(ValueError, match="no plan.*'C0__t0'"):
        dry_run([C("C0", 100_000_000, 64)], 2, method="full", hbm_gb=0.5)


def test_plan_cli_world_size(tmp_path, capsys):
    from compemb.plan import main

    cards = tmp_path / "cards.txt"
    cards.write_text("2000000\n50000\n300\n12\n")
    assert main(["--cardinalities", str(cards), "--dim", "16", "--world-size", "2", "--local-batch-size", "64"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
            ("full", "hash", "qr", "gqr", "crt", "md", "path")}
    assert set(rows) == {"full", "hash", "qr", "gqr", "crt", "md", "path"}
    assert "full" in rows and f"{2_050_312 * 16:,}" in rows["full"]  # the uncompressed parameters
    assert "qr: placement of each TorchRec component table" in out and "C1__t1" in out
    with pytest.raises(SystemExit) as e:
        main(["--cardinalities", str(cards), "--world-size", "2", "--pooling-factor", "0"])
    assert e.value.code == 2
    assert "compemb plan: error: --pooling-factor must be a finite number > 0, got 0.0" in capsys.readouterr().err
