"""`compemb train` / `dlrm.train` under bad inputs and faults (issue 11): every one gets a clear
answer before any work, a collapsed run is an error, a crafted checkpoint runs nothing, a resumed
run's log equals an uninterrupted one's, and the CLI says what it does."""
from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

import dlrm.train as T
from dlrm.checkpoint import CheckpointError, load_checkpoint
from dlrm.cli import train_main
from dlrm.train import CHECKPOINT_NAME, TrainConfig, TrainingCollapsedError, train
from _criteo_text import random_line, write_lines
from _tiny_data import small_config, tiny_dataset, train_killed_at

TIME_KEYS = {"wall_time_s", "samples_per_s"}
# a tiny synthetic run through the CLI (13 dense features, small tables)
CLI_SYNTH = ["--data-set", "synthetic", "--synthetic-rows", "1500", "--synthetic-scale", "1e5",
             "--arch-sparse-feature-size", "4", "--arch-mlp-bot", "13-4", "--arch-mlp-top", "4-1",
             "--mini-batch-size", "64", "--no-progress"]


def _records(path):
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in TIME_KEYS})
    return out


# -- item 2: the log after a kill and a resume is the uninterrupted run's ------------------------
def test_log_after_kill_and_resume_equals_uninterrupted(tmp_path):
    # evaluations every 2 steps, checkpoints every 3: killed after step 8, the log holds the
    # evaluation of step 8, made after the checkpoint of step 6; the resumed run makes it again
    ds = tiny_dataset()
    cfg = dict(eval_every=2, checkpoint_every=3, epochs=1, method="qr", threshold=10, warmup_steps=10)
    full_log, kill_log = tmp_path / "full.jsonl", tmp_path / "killed.jsonl"
    train(small_config(checkpoint_dir=str(tmp_path / "full"), log_path=str(full_log), **cfg), dataset=ds)
    killed = small_config(checkpoint_dir=str(tmp_path / "killed"), log_path=str(kill_log), **cfg)
    train_killed_at(killed, ds, 8)
    assert [r["step"] for r in _records(kill_log)] == [2, 4, 6, 8]
    train(killed, dataset=ds)
    assert _records(kill_log) == _records(full_log)
    assert [(r["event"], r.get("step", r.get("steps"))) for r in _records(full_log)] == \
        [("eval", s) for s in (2, 4, 6, 8, 10, 12, 13)] + [("final", 13)]
    # a resumed run logging to a new file writes the whole run there
    train_killed_at(small_config(checkpoint_dir=str(tmp_path / "k2"), log_path=str(tmp_path / "a.jsonl"), **cfg),
                    ds, 10)
    train(small_config(checkpoint_dir=str(tmp_path / "k2"), log_path=str(tmp_path / "b.jsonl"), **cfg), dataset=ds)
    assert _records(tmp_path / "b.jsonl") == _records(full_log)


# -- item 3: a collapsed run is an error, not a result -------------------------------------------
def _kill_top_mlp(model):
    """Every unit of the top MLP's hidden layer dead for every input: a constant predictor."""
    hidden = model.top[0]
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.bias.fill_(-100.0)


def test_constant_predictor_raises_training_collapsed(tmp_path):
    ds = tiny_dataset()
    log = tmp_path / "log.jsonl"
    steps = []
    with pytest.raises(TrainingCollapsedError, match="same probability") as info:
        train(small_config(log_path=str(log)), dataset=ds, customize_model=_kill_top_mlp, step_hook=steps.append)
    assert isinstance(info.value, RuntimeError)
    assert "validation" in info.value.reason and "step 5" in info.value.reason
    assert steps == [1, 2, 3, 4]  # stopped at the first evaluation (step 5), not trained on
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "collapsed"


def test_non_finite_loss_raises_training_collapsed():
    ds = tiny_dataset()

    def poison(model):
        with torch.no_grad():
            model.top[-1].bias.fill_(float("nan"))

    with pytest.raises(TrainingCollapsedError, match="loss is nan at step 1"):
        train(small_config(), dataset=ds, customize_model=poison)


def test_non_finite_weight_raises_training_collapsed():
    ds = tiny_dataset()
    unused = sorted(set(range(200)) - set(np.asarray(ds._sparse)[:, 2].tolist()))[0]

    def poison_unused_row(model):
        # a row no sample looks up: the loss stays finite, the weights are not
        with torch.no_grad():
            model.embeddings[2].weight[unused, 0] = float("inf")

    with pytest.raises(TrainingCollapsedError, match="non-finite.*embeddings.2.weight"):
        train(small_config(max_steps=5), dataset=ds, customize_model=poison_unused_row)


def test_cli_reports_a_collapsed_run_and_exits_non_zero(monkeypatch, capsys):
    def collapse(*args, **kwargs):
        raise TrainingCollapsedError("the model predicts the same probability 0.5 for all 100 validation samples")

    monkeypatch.setattr(T, "train", collapse)
    rc = train_main(CLI_SYNTH + ["--max-steps", "2", "--json"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "compemb train: error: training collapsed: the model predicts the same probability" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


# -- item 4: every numeric flag is validated before any work -------------------------------------
BAD_FLAGS = [
    ("--qr-collisions", "0"), ("--qr-collisions", "-3"), ("--md-temperature", "-1"),
    ("--md-temperature", "nan"), ("--learning-rate", "0"), ("--learning-rate", "inf"),
    ("--mini-batch-size", "0"), ("--nepochs", "0"), ("--arch-sparse-feature-size", "0"), ("--k", "0"),
    ("--num-collisions", "0"), ("--threshold", "-1"), ("--qr-threshold", "-1"), ("--md-threshold", "-1"),
    ("--md-dim", "0"), ("--eval-every", "-1"), ("--early-stopping", "0"), ("--max-steps", "0"),
    ("--checkpoint-every", "0"), ("--seed", "-1"), ("--split-seed", "-1"), ("--synthetic-rows", "0"),
    ("--synthetic-scale", "0"), ("--synthetic-scale", "nan"), ("--max-ind-range", "0"),
    ("--arch-mlp-top", "64-0-1"), ("--arch-mlp-top", "64-2"), ("--hidden-dims", "0"),
    ("--arch-mlp-bot", "13-0-4"),
]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_every_numeric_flag_is_validated_before_any_work(flag, value, monkeypatch, capsys):
    import dlrm.data

    def no_data(*a, **k):
        raise AssertionError("the data set was loaded before the flags were checked")

    monkeypatch.setattr(dlrm.data, "load_dataset", no_data)
    with pytest.raises(SystemExit) as info:
        train_main(CLI_SYNTH + [flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert flag in err and value in err and "Traceback" not in err


@pytest.mark.parametrize("field,value,match", [
    ("md_temperature", -1.0, "md_temperature"), ("md_temperature", float("nan"), "md_temperature"),
    ("threshold", -1, "threshold"), ("embedding_options", {"num_collisions": 0}, "num_collisions"),
    ("embedding_options", {"k": -3}, "k"), ("device", "bogus", "bogus"),
])
def test_train_config_validates_fields_that_no_table_uses(field, value, match):
    with pytest.raises(ValueError, match=match):
        small_config(**{field: value})  # method 'full': no table is compressed


# -- item 5: checkpoints are loaded without running code ------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_is_refused_without_running_anything(tmp_path):
    ds = tiny_dataset()
    marker = tmp_path / "pwned"
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    torch.save({"config": _Evil(str(marker)), "model": {}, "optimizer": [], "state": {}, "rng": {}},
               ckdir / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="checkpoint.pt") as info:
        train(small_config(checkpoint_dir=str(ckdir)), dataset=ds)
    assert not marker.exists()
    assert "--no-resume" in str(info.value) and "not loaded" in str(info.value)
    # plain pickle too (not torch's zip format)
    with open(ckdir / CHECKPOINT_NAME, "wb") as fh:
        pickle.dump(_Evil(str(marker)), fh)
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        load_checkpoint(str(ckdir / CHECKPOINT_NAME), small_config().to_dict(), "cpu")
    assert not marker.exists()


def test_checkpoints_hold_only_what_the_safe_loader_accepts(tmp_path):
    ds = tiny_dataset()
    train(small_config(checkpoint_dir=str(tmp_path), optimizer="adam", max_steps=4), dataset=ds)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["state"]["step"] == 4 and set(ckpt["rng"]) >= {"torch", "numpy", "python"}


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not a dict"])
def test_damaged_checkpoint_names_the_file_and_suggests_no_resume(tmp_path, damage, capsys):
    ds = tiny_dataset()
    path = tmp_path / CHECKPOINT_NAME
    train(small_config(checkpoint_dir=str(tmp_path), max_steps=3), dataset=ds)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00\x01nonsense" * 10,
                      "not a dict": b""}[damage])
    if damage == "not a dict":
        torch.save([1, 2, 3], path)
    steps = []
    with pytest.raises(CheckpointError) as info:
        train(small_config(checkpoint_dir=str(tmp_path), max_steps=6), dataset=ds, step_hook=steps.append)
    assert str(path) in str(info.value) and "--no-resume" in str(info.value)
    assert steps == []


def test_cli_damaged_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"")
    rc = train_main(CLI_SYNTH + ["--max-steps", "2", "--checkpoint-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("compemb train: error: checkpoint ")
    assert "--no-resume" in err
    assert train_main(CLI_SYNTH + ["--max-steps", "2", "--checkpoint-dir", str(tmp_path), "--no-resume"]) == 0


# -- item 6: outputs and the device are checked before training ----------------------------------
def test_log_file_that_is_a_directory_is_refused_before_training(tmp_path):
    steps = []
    with pytest.raises(ValueError, match=f"log.*{tmp_path}.*directory"):
        train(small_config(log_path=str(tmp_path)), dataset=tiny_dataset(), step_hook=steps.append)
    assert steps == []


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    steps = []
    with pytest.raises(ValueError, match=f"checkpoint.*{path}.*not a directory"):
        train(small_config(checkpoint_dir=str(path)), dataset=tiny_dataset(), step_hook=steps.append)
    assert steps == []
    with pytest.raises(ValueError, match="not a directory"):
        train(small_config(checkpoint_dir=str(path / "sub")), dataset=tiny_dataset(), step_hook=steps.append)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_checkpoint_dir_is_refused_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            train(small_config(checkpoint_dir=str(ro)), dataset=tiny_dataset())
    finally:
        ro.chmod(0o700)


def test_unavailable_device_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda'.*(CUDA|cuda)"):
        train(small_config(device="cuda"), dataset=tiny_dataset())


@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_cli_device_errors_are_one_line(device, monkeypatch, capsys):
    import dlrm.data

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dlrm.data, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    rc = train_main(CLI_SYNTH + ["--device", device])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"'{device}'" in err and "Traceback" not in err


def test_cli_unavailable_backend_is_one_line(monkeypatch, capsys):
    from compemb.kernels import BackendUnavailableError

    def unavailable(*a, **k):
        raise BackendUnavailableError("backend 'triton' cannot serve this configuration: no GPU")

    monkeypatch.setattr(T, "build_model", unavailable)
    rc = train_main(CLI_SYNTH + ["--max-steps", "2", "--embedding", "qr", "--backend", "triton"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("compemb train: error: backend 'triton' cannot serve this configuration: no GPU; --backend torch")


def test_cli_log_file_directory_is_one_line_before_data(tmp_path, monkeypatch, capsys):
    import dlrm.data

    monkeypatch.setattr(dlrm.data, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    rc = train_main(CLI_SYNTH + ["--log-file", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(tmp_path) in err


# -- item 7: the CLI says what it does; no warnings of our own -----------------------------------
def test_cli_echoes_config_model_size_outputs_and_resume(tmp_path, capsys):
    args = CLI_SYNTH + ["--embedding", "hash", "--num-collisions", "2", "--threshold", "100",
                        "--checkpoint-dir", str(tmp_path / "ck"), "--log-file", str(tmp_path / "log.jsonl"), "--json"]
    assert train_main(args + ["--max-steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and json.loads(out)["steps"] == 2
    assert "method=hash" in err and "num_collisions=2" in err and "learning_rate=" in err
    assert "embedding parameters" in err and "compression" in err and "MB" in err
    assert str(tmp_path / "log.jsonl") in err and str(tmp_path / "ck") in err
    assert "resuming" not in err
    assert train_main(args + ["--max-steps", "4"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["steps"] == 4 and "resuming from" in err and "step 2" in err
    # without --json the same lines go to stdout
    assert train_main(CLI_SYNTH + ["--max-steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert "embedding parameters" in out and "test_auc" in out


def test_compression_summary_numbers(tmp_path, capsys):
    assert train_main(CLI_SYNTH + ["--max-steps", "1", "--embedding", "qr", "--num-collisions", "4",
                                   "--threshold", "0", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    from dlrm.data import load_dataset

    cards = load_dataset("synthetic", rows=1500, scale=1e5, seed=0).cardinalities
    full = sum(cards) * 4
    line = next(x for x in err.splitlines() if "embedding parameters" in x)
    assert f"{result['embedding_params']:,}" in line and f"{full:,}" in line
    assert f"{full / result['embedding_params']:.2f}x" in line
    assert f"{result['embedding_params'] * 4 / 1e6:.3f} MB" in line


def test_a_normal_run_raises_no_warning_of_our_own(tmp_path):
    ds = tiny_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for opt in ("adagrad", "adam"):  # sparse Adagrad, SparseAdam + Adam
            train(small_config(optimizer=opt, max_steps=5, method="qr", threshold=10, checkpoint_dir=str(tmp_path / opt),
                               log_path=str(tmp_path / f"{opt}.jsonl")), dataset=ds, progress=True)


# -- item 1: malformed Criteo lines are reported, --strict refuses them --------------------------
def _write_criteo(path, n, bad_every=None, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(1, n + 1):
        line = random_line(rng, malformed_rate=0.0, vocab=30)  # well-formed
        if bad_every and i % bad_every == 0:
            line = "7" + line[1:]  # a bad label
        lines.append(line)
    write_lines(path, lines)
    return [i for i in range(1, n + 1) if bad_every and i % bad_every == 0]


def test_cli_reports_malformed_criteo_lines(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    bad = _write_criteo(raw, 280, bad_every=10)
    args = ["--data-set", "kaggle", "--raw-data-file", str(raw), "--data-cache-dir", str(tmp_path / "c"),
            "--arch-sparse-feature-size", "4", "--arch-mlp-bot", "13-4", "--arch-mlp-top", "4-1",
            "--max-steps", "2", "--no-progress", "--json"]
    assert train_main(args) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["malformed_lines"]["count"] == len(bad) == 28
    assert result["malformed_lines"]["first"][:3] == [f"train.txt:{n}" for n in bad[:3]]
    assert "28 of 280 lines" in err and "train.txt:10" in err and "bad label" in err
    rc = train_main(args + ["--strict"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.txt:10" in err and err.count("\n") == 1


def test_cli_refuses_a_file_where_every_line_is_malformed(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    _write_criteo(raw, 70, bad_every=1)
    rc = train_main(["--data-set", "kaggle", "--raw-data-file", str(raw), "--data-cache-dir", str(tmp_path / "c"),
                     "--arch-mlp-bot", "13-64-16", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "all 70 lines" in err and "bad label" in err and "train.txt:1" in err


def test_cli_says_a_gzip_file_given_as_text_is_compressed(tmp_path, capsys):
    import gzip

    text = tmp_path / "plain.txt"
    _write_criteo(text, 70)
    raw = tmp_path / "train.txt"
    raw.write_bytes(gzip.compress(text.read_bytes()))
    rc = train_main(["--data-set", "kaggle", "--raw-data-file", str(raw), "--data-cache-dir", str(tmp_path / "c"),
                     "--arch-mlp-bot", "13-64-16", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "are malformed" in err and "train.txt is compressed: decompress it first" in err


# -- item 7: default learning rates and the warm-up ----------------------------------------------
def _step_losses(monkeypatch):
    losses = []
    original = T._Run._train_step

    def record(self, batch):
        value = original(self, batch)
        losses.append(value)
        return value

    monkeypatch.setattr(T._Run, "_train_step", record)
    return losses


def test_default_warmup_keeps_adagrad_from_blowing_up_wide_mlps(monkeypatch):
    # DLRM's Kaggle widths (bottom 512-256-64-d, top 512-256-1): Adagrad's first step moves every
    # weight by the whole learning rate (its accumulator starts at 0: g / sqrt(g^2) = sign(g))
    ds = tiny_dataset()
    wide = dict(embedding_dim=16, bottom_mlp=(512, 256, 64, 16), top_mlp=(512, 256, 1), learning_rate=None,
                max_steps=3, eval_every=None)
    losses = _step_losses(monkeypatch)
    train(small_config(warmup_steps=0, **wide), dataset=ds)
    assert losses[1] > 10 * losses[0]  # 24 after 0.75
    losses.clear()
    train(small_config(**wide), dataset=ds)  # the default warm-up
    assert max(losses) < 1.2 * losses[0]


def test_warmup_schedule_and_default_learning_rates(monkeypatch):
    from dlrm.optim import Optimizers

    assert set(T.DEFAULT_LEARNING_RATES) == set(T.OPTIMIZERS)
    assert TrainConfig(optimizer="adam").learning_rate == 0.001
    assert TrainConfig(optimizer="sgd").learning_rate == 0.1
    assert TrainConfig().learning_rate == 0.05 and TrainConfig().warmup_steps == T.DEFAULT_WARMUP_STEPS
    rates = []
    original = Optimizers.step

    def record(self):
        rates.append(self.optimizers[0].param_groups[0]["lr"])
        original(self)

    monkeypatch.setattr(Optimizers, "step", record)
    train(small_config(optimizer="sgd", learning_rate=0.4, warmup_steps=4, max_steps=6), dataset=tiny_dataset())
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match="warmup_steps"):
        small_config(warmup_steps=-1)


def test_training_collapsed_error_pickles_with_its_reason():
    # sweep workers send it between processes; the reason must not gain a second prefix
    err = pickle.loads(pickle.dumps(TrainingCollapsedError("training loss is nan at step 3")))
    assert isinstance(err, TrainingCollapsedError) and err.reason == "training loss is nan at step 3"
    assert str(err) == "training collapsed: training loss is nan at step 3"
