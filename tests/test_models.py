"""The seed's model families (MF, FM, NCF): each against a direct computation of its formula, with
any table method, and a short training run that learns, through the DLRM's training loop and CLI."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from compemb.config import EmbeddingBagConfig
from compemb.options import METHODS
from dlrm.data.batching import Bag, RecDataset
from dlrm.models import (
    MODELS,
    FactorizationMachine,
    MatrixFactorization,
    NeuMF,
    build_table_model,
    check_model_options,
)
from dlrm.train import TrainConfig, train


def _one_hot_offsets(batch):
    return torch.arange(batch + 1)


def _bags(rng, batch, n, max_len):
    lengths = rng.integers(0, max_len + 1, batch)
    idx = torch.from_numpy(rng.integers(0, n, int(lengths.sum())))
    off = torch.zeros(batch + 1, dtype=torch.long)
    off[1:] = torch.from_numpy(np.cumsum(lengths))
    return idx, off


def _vector(module, i):
    """A table's vector of category ``i`` on its own (what v_i is)."""
    return module(torch.tensor([i]), torch.tensor([0]))[0]


# ---------------------------------------------------------------------------------------------- FM
@given(seed=st.integers(0, 2**31 - 1), first_order=st.sampled_from(["tied", "free"]),
       method=st.sampled_from(["full", "qr", "hash", "tt"]), mode=st.sampled_from(["sum", "mean"]))
def test_fm_identity_equals_the_naive_double_sum(seed, first_order, method, mode):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    specs = [EmbeddingBagConfig("a", 9, 3, method=method, num_collisions=3),
             EmbeddingBagConfig("b", 5, 3),
             EmbeddingBagConfig("g", 12, 3, method=method, num_collisions=2, mode=mode)]
    model = FactorizationMachine.build(specs, ["a", "b", "g"], num_dense=2, first_order=first_order).double()
    with torch.no_grad():  # non-zero first-order vectors and bias, so every term counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    batch = 4
    dense = torch.from_numpy(rng.normal(size=(batch, 2)))
    idx_a = torch.from_numpy(rng.integers(0, 9, batch))
    idx_b = torch.from_numpy(rng.integers(0, 5, batch))
    idx_g, off_g = _bags(rng, batch, 12, 3)  # multi-hot, possibly empty bags
    indices, offsets = [idx_a, idx_b, idx_g], [_one_hot_offsets(batch)] * 2 + [off_g]
    got = model(dense, indices, offsets)

    expected = []
    for s in range(batch):
        feats = []  # (v_i, x_i, w_i) for every non-zero feature of sample s
        for f, (idx, off) in enumerate(zip(indices, offsets)):
            members = idx[off[s]:off[s + 1]].tolist()
            x = 1.0 / len(members) if specs[f].mode == "mean" and members else 1.0
            for i in members:
                v = _vector(model.embeddings[f], i)
                w = (v @ model.first_order_vectors[f] if first_order == "tied"
                     else _vector(model.embeddings[3 + f], i)[0])
                feats.append((v, x, w))
        for j in range(2):
            feats.append((model.dense_vectors[j], float(dense[s, j]), model.dense_weights[j]))
        y = model.bias + sum(w * x for _, x, w in feats)
        for a in range(len(feats)):
            for b in range(a + 1, len(feats)):
                y = y + (feats[a][0] @ feats[b][0]) * feats[a][1] * feats[b][1]
        expected.append(y)
    torch.testing.assert_close(got, torch.stack(expected).detach(), rtol=1e-10, atol=1e-12)


def test_fm_refuses_max_pooling_and_unequal_widths():
    with pytest.raises(ValueError, match="pools by 'max'"):
        FactorizationMachine.build([EmbeddingBagConfig("a", 5, 3, mode="max")], ["a"], 1)
    with pytest.raises(ValueError, match="one embedding_dim"):
        FactorizationMachine.build([EmbeddingBagConfig("a", 5, 3), EmbeddingBagConfig("b", 5, 4)], ["a", "b"], 1)


# ---------------------------------------------------------------------------------------------- MF
@pytest.mark.parametrize("first_order", ["tied", "free"])
def test_mf_equals_explicit_dot_products_plus_biases(first_order):
    torch.manual_seed(0)
    specs = [EmbeddingBagConfig("x", 3, 2), EmbeddingBagConfig("user_id", 6, 4), EmbeddingBagConfig("item_id", 8, 4)]
    model = MatrixFactorization.build(specs, ["x", "user_id", "item_id"], num_dense=1,
                                      first_order=first_order).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    users, items = torch.tensor([0, 5, 3, 5]), torch.tensor([7, 0, 2, 2])
    ones = _one_hot_offsets(4)
    got = model(torch.zeros(4, 1, dtype=torch.float64), [torch.tensor([0, 1, 2, 0]), users, items], [ones] * 3)
    P, Q = model.embeddings[0].weight, model.embeddings[1].weight  # full tables: rows are the vectors
    for s, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        if first_order == "tied":
            bu = P[u] @ model.first_order_vectors[0]
            bi = Q[i] @ model.first_order_vectors[1]
        else:
            bu, bi = model.embeddings[2].weight[u, 0], model.embeddings[3].weight[i, 0]
        expected = float((P[u] @ Q[i] + bu + bi + model.bias).detach())
        assert float(got[s].detach()) == pytest.approx(expected, rel=1e-12)
    assert model.table_parameters() == ({"user_id": 24, "item_id": 32} if first_order == "tied" else
                                        {"user_id": 24, "item_id": 32, "user_id_bias": 6, "item_id_bias": 8})


def test_mf_and_ncf_refuse_data_without_the_pair_naming_its_features():
    specs = [EmbeddingBagConfig("C1", 5, 2), EmbeddingBagConfig("C2", 5, 2)]
    for model in ("mf", "ncf"):
        with pytest.raises(ValueError, match=r"no \['user_id', 'item_id'\] \(its features: \['C1', 'C2'\]\)"):
            build_table_model(model, specs, ["C1", "C2"], 1)
        built = build_table_model(model, specs, ["C1", "C2"], 1, options={"features": ["C2", "C1"]})
        assert built.config.table_features[:2] == [1, 0]
    with pytest.raises(ValueError, match="two distinct feature names"):
        check_model_options("mf", {"features": ["C1", "C1"]})
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['mlp'\]"):
        check_model_options("fm", {"mlp": [4]})


# --------------------------------------------------------------------------------------------- NCF
def test_ncf_equals_a_manual_neumf_forward():
    torch.manual_seed(1)
    specs = [EmbeddingBagConfig("user_id", 6, 4), EmbeddingBagConfig("item_id", 8, 4)]
    model = NeuMF.build(specs, ["user_id", "item_id"], num_dense=1, mlp=(5, 3)).double()
    users, items = torch.tensor([0, 5, 3]), torch.tensor([7, 0, 2])
    ones = _one_hot_offsets(3)
    got = model(torch.zeros(3, 1, dtype=torch.float64), [users, items], [ones, ones])
    Pg, Qg, Pm, Qm = (model.embeddings[t].weight for t in range(4))
    l1, l2 = model.mlp[0], model.mlp[2]
    for s, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        gmf = Pg[u] * Qg[i]
        h = torch.relu(l1.weight @ torch.cat([Pm[u], Qm[i]]) + l1.bias)
        h = torch.relu(l2.weight @ h + l2.bias)
        expected = model.predict_layer.weight[0] @ torch.cat([gmf, h]) + model.predict_layer.bias[0]
        assert float(got[s].detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert set(model.table_parameters()) == {"user_id", "item_id", "user_id_mlp", "item_id_mlp"}


# --------------------------------------------------------------------- training through dlrm.train
def pair_dataset(n=3000, seed=0):
    """user_id x item_id with a rank-2 teacher, plus a small third feature and a multi-hot bag."""
    rng = np.random.default_rng(seed)
    users, items = 80, 120
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    pu, qi = rng.normal(size=(users, 2)), rng.normal(size=(items, 2))
    bu, bi = rng.normal(size=users), rng.normal(size=items)
    logit = bu[u] + bi[i] + (pu[u] * qi[i]).sum(1)
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    extra = rng.integers(0, 5, n)
    lengths = rng.integers(0, 3, n)
    row_ptr = np.zeros(n + 1, dtype=np.int64)
    row_ptr[1:] = np.cumsum(lengths)
    bag = Bag(values=rng.integers(0, 6, int(row_ptr[-1])), row_ptr=row_ptr)
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    cut = [int(n * 0.7), int(n * 0.85)]
    return RecDataset("pairs", dense, labels, np.stack([u, i, extra], axis=1), ["user_id", "item_id", "x", "tags"],
                      [users, items, 5, 6], {"train": range(0, cut[0]), "val": range(cut[0], cut[1]),
                                             "test": range(cut[1], n)},
                      layout=[("onehot", 0), ("onehot", 1), ("onehot", 2), ("bag", "tags")], bags={"tags": bag})


def pair_config(**kw):
    base = dict(dataset="pairs", embedding_dim=8, top_mlp=(16, 1), bottom_mlp=(8,), batch_size=64, epochs=3,
                learning_rate=0.1, optimizer="adagrad", seed=0, threshold=10)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("model", ["mf", "fm", "ncf"])
def test_each_family_learns_with_compressed_tables(model):
    ds = pair_dataset()
    r = train(pair_config(model=model, method="qr", embedding_options={"compression": 2}), dataset=ds)
    assert r["test_auc"] > 0.6, r
    assert r["compression_target"] == 2.0 and r["compression_achieved"] >= 2.0
    assert r["total_params"] == r["embedding_params"] + r["mlp_params"]


@pytest.mark.parametrize("model", ["mf", "fm", "ncf"])
@pytest.mark.parametrize("method", METHODS)
def test_each_family_takes_every_table_method(model, method):
    ds = pair_dataset(n=300)
    options = {} if method == "full" else {"compression": 2}
    r = train(pair_config(model=model, method=method, embedding_options=options, epochs=1, max_steps=3),
              dataset=ds)
    assert math.isfinite(r["val_loss"]) and r["steps"] == 3


def test_family_fields_are_checked_before_any_work():
    assert MODELS == ("mf", "fm", "ncf", "dlrm")
    with pytest.raises(ValueError, match="model must be one of"):
        pair_config(model="deepfm")
    with pytest.raises(ValueError, match="serves a DLRM only"):
        pair_config(model="fm", embedding_collection="fbgemm")
    with pytest.raises(ValueError, match="recluster_every must be None or a non-negative int"):
        pair_config(recluster_every=-1)
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['features'\]"):
        pair_config(model="fm", model_options={"features": ["user_id", "item_id"]})


def test_cli_model_flag_trains_fm_and_mf_refuses_criteo_shaped_data(capsys):
    from dlrm.cli import train_main

    common = ["--data-set", "synthetic", "--synthetic-rows", "1500", "--synthetic-scale", "1e5",
              "--arch-sparse-feature-size", "4", "--max-steps", "5", "--mini-batch-size", "64", "--no-progress"]
    assert train_main(common + ["--model", "fm", "--embedding", "qr", "--compression", "2", "--threshold", "50",
                                "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["steps"] == 5 and result["compression_achieved"] >= 2
    assert "compression: target 2x;" in out.err
    assert train_main(common + ["--model", "mf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compemb train: error: model 'mf' is defined on a (user, item) pair") and "'C1'" in err
    assert len(err.splitlines()) == 1
    assert train_main(common + ["--model", "mf", "--model-features", "C1,C2"]) == 0
    capsys.readouterr()
    assert train_main(common + ["--model", "ncf", "--arch-mlp-bot", "13-4"]) == 2
    assert "--arch-mlp-bot applies to --model dlrm" in capsys.readouterr().err
