"""Training loop: determinism, optimizers, early stopping, checkpoint resume, MovieLens run.

The triton collection tests run on CPU under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it
before triton is imported).
"""
import json
import math

import pytest
import torch

from dlrm.data.batching import RecDataset
from dlrm.train import CHECKPOINT_NAME, TrainConfig, train
from _tiny_data import small_config, tiny_dataset, train_killed_at

TIME_KEYS = {"wall_time_s", "samples_per_s"}


def _strip(result):
    return {k: v for k, v in result.items() if k not in TIME_KEYS}


def test_result_fields_and_determinism(tmp_path):
    ds = tiny_dataset()
    log = tmp_path / "log.jsonl"
    r1 = train(small_config(log_path=str(log), method="qr", threshold=10, embedding_options={"num_collisions": 4}),
               dataset=ds)
    r2 = train(small_config(method="qr", threshold=10, embedding_options={"num_collisions": 4}), dataset=ds)
    for key in ("val_loss", "val_auc", "val_accuracy", "test_loss", "test_auc", "test_accuracy",
                "embedding_params", "mlp_params", "total_params", "steps", "samples_per_s",
                "wall_time_s", "stopped_early"):
        assert key in r1, key
    assert _strip(r1) == _strip(r2)
    assert r1["steps"] == 2 * math.ceil(400 / 32)
    assert r1["total_params"] == r1["embedding_params"] + r1["mlp_params"]
    # a = 50 rows and c = 200 rows are compressed (4 collisions), b = 7 rows stays full
    assert r1["tables"] == {"a": (13 + 4) * 4, "b": 7 * 4, "c": (50 + 4) * 4}
    records = [json.loads(line) for line in log.read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals][:2] == [5, 10]
    assert records[-1]["event"] == "final"
    # test_with="best": the reported validation loss is the best one seen
    assert r1["val_loss"] == pytest.approx(min(r["val_loss"] for r in evals), rel=1e-9)
    r3 = train(small_config(seed=4, epochs=1), dataset=ds)
    assert r3["val_loss"] != r1["val_loss"] and r3["steps"] == r1["steps"] // 2


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam", "amsgrad", "rowwise_adagrad_fbgemm"])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, optimizer):
    if optimizer == "rowwise_adagrad_fbgemm":
        pytest.importorskip("fbgemm_gpu")  # the optional [fbgemm] extra
    ds = tiny_dataset()
    cfg = dict(optimizer=optimizer, checkpoint_every=3, learning_rate=0.02 if optimizer != "sgd" else 0.2,
               method="qr", threshold=10)
    full_dir, kill_dir = tmp_path / "full", tmp_path / "killed"
    reference = train(small_config(checkpoint_dir=str(full_dir), **cfg), dataset=ds)
    train_killed_at(small_config(checkpoint_dir=str(kill_dir), **cfg), ds, 10)
    partial = torch.load(kill_dir / CHECKPOINT_NAME, weights_only=True)
    assert partial["state"]["step"] == 9 and not partial["state"]["finished"]
    resumed = train(small_config(checkpoint_dir=str(kill_dir), **cfg), dataset=ds)
    assert _strip(resumed) == _strip(reference)
    a = torch.load(full_dir / CHECKPOINT_NAME, weights_only=True)
    b = torch.load(kill_dir / CHECKPOINT_NAME, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # tensors, and the tables' extra state (what defines their mapping)
        va, vb = a["model"][key], b["model"][key]
        assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, key
    assert [h["val_loss"] for h in a["state"]["history"]] == [h["val_loss"] for h in b["state"]["history"]]
    # a finished run resumed with the same config returns its stored result without training
    again = train(small_config(checkpoint_dir=str(kill_dir), **cfg), dataset=ds)
    assert again == resumed


def test_resume_refuses_a_different_run(tmp_path):
    ds = tiny_dataset()
    train(small_config(checkpoint_dir=str(tmp_path), max_steps=3), dataset=ds)
    with pytest.raises(ValueError, match="learning_rate"):
        train(small_config(checkpoint_dir=str(tmp_path), max_steps=3, learning_rate=0.5), dataset=ds)


def test_max_steps_and_early_stopping():
    ds = tiny_dataset()
    assert train(small_config(max_steps=7), dataset=ds)["steps"] == 7
    # a learning rate far too large makes the validation loss stop improving
    r = train(small_config(optimizer="sgd", learning_rate=30.0, eval_every=1, early_stopping_patience=2,
                           epochs=3), dataset=ds)
    assert r["stopped_early"]
    assert r["steps"] < 3 * math.ceil(400 / 32)
    assert r["steps"] - r["best_step"] == 2  # two evaluations (one per step) without improvement


def test_sparse_adam_split_and_bad_options():
    ds = tiny_dataset()
    r = train(small_config(optimizer="adam", sparse=True, max_steps=4), dataset=ds)
    assert r["steps"] == 4
    with pytest.raises(ValueError, match="amsgrad"):
        small_config(optimizer="amsgrad", sparse=True)
    with pytest.raises(ValueError, match="'lbfgs'"):
        small_config(optimizer="lbfgs")
    with pytest.raises(ValueError, match="zzz"):
        train(small_config(table_overrides={"zzz": {"num_collisions": 2}}), dataset=ds)


def test_movielens_short_run_beats_constant_predictor():
    from dlrm.data import load_dataset

    ds = load_dataset("movielens-100k")
    r = train(TrainConfig(dataset="movielens-100k", embedding_dim=8, bottom_mlp=(8,), top_mlp=(16, 1),
                          optimizer="adagrad", learning_rate=0.1, batch_size=512, epochs=1, seed=0),
              dataset=ds)
    assert r["test_auc"] > 0.70, r


def test_cli_flags_map_to_config():
    from dlrm.cli import build_parser, config_from_args

    parse = build_parser().parse_args
    cfg = config_from_args(parse(["--arch-sparse-feature-size", "8", "--arch-mlp-bot", "2-32-8",
                                  "--arch-mlp-top", "16-1", "--qr-flag", "--qr-collisions", "3",
                                  "--qr-operation", "concat", "--qr-threshold", "100",
                                  "--arch-interaction-itself", "--data-set", "kaggle",
                                  "--raw-data-file", "x.txt"]), num_dense=2)
    assert (cfg.method, cfg.threshold, cfg.bottom_mlp, cfg.top_mlp) == ("qr", 100, (32, 8), (16, 1))
    assert cfg.embedding_options == {"operation": "concat", "num_collisions": 3}
    assert cfg.dataset == "criteo-kaggle" and cfg.dataset_options["raw_data_file"] == "x.txt"
    assert cfg.interaction_itself
    md = config_from_args(parse(["--md-flag", "--md-temperature", "0.5", "--md-threshold", "7"]))
    assert (md.method, md.md_temperature, md.threshold) == ("md", 0.5, 7)
    gen = config_from_args(parse(["--embedding", "path", "--hidden-dims", "4-4", "--threshold", "5"]))
    assert gen.embedding_options == {"hidden_dims": (4, 4)} and gen.threshold == 5
    with pytest.raises(ValueError, match="13 but data set"):
        config_from_args(parse(["--arch-mlp-bot", "13-8"]), num_dense=2)
    with pytest.raises(ValueError, match="exclude"):
        config_from_args(parse(["--qr-flag", "--md-flag"]))
    assert gen.embedding_collection is None
    coll = config_from_args(parse(["--qr-flag", "--embedding-collection", "triton", "--optimizer", "adam"]))
    assert (coll.embedding_collection, coll.collection_backend, coll.optimizer) == ("triton", "triton", "adam")
    fused = config_from_args(parse(["--qr-flag", "--optimizer", "sgd_triton_fused"]))
    assert (fused.embedding_collection, fused.collection_backend) == (None, "triton")
    with pytest.raises(ValueError, match="'sgd_triton_fused' is fused by the 'triton' collection"):
        config_from_args(parse(["--qr-flag", "--optimizer", "sgd_triton_fused", "--embedding-collection", "fbgemm"]))


def test_cli_train_main_json(tmp_path, capsys):
    from dlrm.cli import train_main

    log = tmp_path / "log.jsonl"
    rc = train_main(["--data-set", "synthetic", "--synthetic-rows", "1500", "--synthetic-scale", "1e5",
                     "--arch-sparse-feature-size", "4",
                     "--arch-mlp-bot", "13-4", "--arch-mlp-top", "4-1", "--max-steps", "5",
                     "--mini-batch-size", "64", "--embedding", "hash", "--num-collisions", "2",
                     "--threshold", "100", "--log-file", str(log), "--json", "--no-progress"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 5 and 0 <= result["test_auc"] <= 1
    assert log.exists()
    assert train_main(["--data-set", "synthetic", "--synthetic-rows", "1500", "--synthetic-scale", "1e5",
                       "--arch-mlp-bot", "2-4", "--arch-sparse-feature-size", "4", "--no-progress"]) == 2
    assert "has 13 dense features" in capsys.readouterr().err


def test_fbgemm_rowwise_adagrad_updates_tables_in_backward(monkeypatch):
    pytest.importorskip("fbgemm_gpu")  # the optional [fbgemm] extra
    import dlrm.train as T

    ds = tiny_dataset()
    cfg = small_config(optimizer="rowwise_adagrad_fbgemm", method="qr", threshold=10, max_steps=3)
    model = T.build_model(cfg, ds)
    assert model.collection is not None and model.sparse_parameters() == []
    assert model.table_parameters() == {"a": (13 + 4) * 4, "b": 7 * 4, "c": (50 + 4) * 4}
    before = [w.clone() for w in model.collection.tables()]
    opt = T.build_optimizer(cfg, model)
    batch = next(ds.split("train").batches(32, shuffle=True, seed=0))
    loss = model.loss(model(batch.dense, batch.indices, batch.offsets), batch.labels)
    opt.zero_grad()
    loss.backward()  # the fused optimizer updates the touched rows here
    changed = [not torch.equal(a, b) for a, b in zip(before, model.collection.tables())]
    assert any(changed)
    with pytest.raises(ValueError, match="hash"):
        train(small_config(optimizer="rowwise_adagrad_fbgemm", method="hash", threshold=10), dataset=ds)
    monkeypatch.setattr(T, "fbgemm_rowwise_adagrad_available", lambda: "fbgemm_gpu missing")
    with pytest.raises(ValueError, match="rowwise_adagrad_fbgemm.*fbgemm_gpu missing"):
        train(cfg, dataset=ds)


@pytest.mark.parametrize("empty", ["train", "val", "test"])
def test_empty_split_fails_before_any_training_step(empty):
    # e.g. a small Criteo file whose last pseudo-day has one line: its validation half is empty.
    # That must be refused up front, naming the split, not after an epoch of training.
    ds = tiny_dataset()
    splits = {"train": range(0, 400), "val": range(400, 500), "test": range(500, 600)}
    splits[empty] = range(600, 600)
    ds = RecDataset("tiny", ds._dense, ds._labels, ds._sparse, ["a", "b", "c"], [50, 7, 200], splits)
    steps = []
    with pytest.raises(ValueError, match=f"'{empty}'.*empty|empty.*'{empty}'"):
        train(small_config(eval_every=None), dataset=ds, step_hook=steps.append)
    assert steps == []


def test_resume_ignores_the_progress_bar_option_of_the_data_set(tmp_path):
    # `compemb train --data-set kaggle` puts progress=(not --no-progress) into dataset_options; a
    # run resumed with or without --no-progress is the same run. Other data options still count.
    ds = tiny_dataset()
    first = small_config(checkpoint_dir=str(tmp_path), max_steps=3, dataset_options={"progress": True})
    train(first, dataset=ds)
    more = small_config(checkpoint_dir=str(tmp_path), max_steps=6, dataset_options={"progress": False})
    assert train(more, dataset=ds)["steps"] == 6
    other = small_config(checkpoint_dir=str(tmp_path), max_steps=9, dataset_options={"max_ind_range": 5})
    with pytest.raises(ValueError, match="dataset_options"):
        train(other, dataset=ds)


@pytest.mark.parametrize("optimizer", ["adam", "sgd_triton_fused"])
@pytest.mark.triton_cpu
def test_triton_collection_trains_and_resumes(tmp_path, optimizer):
    from compemb.kernels import _triton_tbe
    import dlrm.train as T

    assert _triton_tbe.INTERPRETED, "compemb.kernels._triton was imported before TRITON_INTERPRET=1 was set"
    full = tiny_dataset()  # few rows: the interpreter is slow
    ds = RecDataset("tiny", full._dense, full._labels, full._sparse, ["a", "b", "c"], [50, 7, 200],
                    {"train": range(0, 64), "val": range(400, 416), "test": range(500, 516)})
    cfg = dict(optimizer=optimizer, method="qr", threshold=10, max_steps=4, checkpoint_every=2, eval_every=2,
               batch_size=8, eval_batch_size=16,
               learning_rate=0.2 if optimizer == "sgd_triton_fused" else 0.02, embedding_collection="triton")
    model = T.build_model(small_config(**cfg), ds)
    assert model.collection.backend == "triton" and model.sparse_parameters() == []
    assert model.collection.optimizer == ("exact_sgd" if optimizer == "sgd_triton_fused" else None)
    assert model.table_parameters() == {"a": (13 + 4) * 4, "b": 7 * 4, "c": (50 + 4) * 4}
    reference = train(small_config(checkpoint_dir=str(tmp_path / "full"), **cfg), dataset=ds)
    assert reference["steps"] == 4 and reference["embedding_params"] == (17 + 7 + 54) * 4
    train_killed_at(small_config(checkpoint_dir=str(tmp_path / "killed"), **cfg), ds, 3)
    resumed = train(small_config(checkpoint_dir=str(tmp_path / "killed"), **cfg), dataset=ds)
    assert _strip(resumed) == _strip(reference)
    a = torch.load(tmp_path / "full" / CHECKPOINT_NAME, weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / CHECKPOINT_NAME, weights_only=True)["model"]
    assert a.keys() == b.keys() and "collection.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key
    # the tables trained: the final flat weight differs from the initial one
    assert not torch.equal(a["collection.weight"], model.collection.weight.detach())


def test_triton_collection_refuses_unservable_tables_before_training():
    ds = tiny_dataset()
    steps = []
    with pytest.raises(ValueError, match="table 'a'.*method='path'"):
        train(small_config(method="path", threshold=10, embedding_collection="triton"), dataset=ds,
              step_hook=steps.append)
    assert steps == []
    with pytest.raises(ValueError, match="excludes sparse"):
        small_config(embedding_collection="triton", sparse=True)
    with pytest.raises(ValueError, match="embedding_collection must be one of"):
        small_config(embedding_collection="torch")
