"""Every method through the training loop, ``--compression R``, re-clustering, the ``compression`` space
and figure 5.

Tiny data (a few hundred rows, three features) keeps each run well under a second.
"""
import math

import numpy as np
import pytest
import torch

import _tiny_data
from compemb.compression import size_for_ratio
from compemb.options import METHODS
from dlrm.train import train


def tiny_dataset():
    """Three one-hot features (60, 7 and 300 categories, power-law frequencies) with a learnable signal."""
    return _tiny_data.tiny_dataset(cards=(60, 7, 300), power_law=True)


def small_config(**kw):
    """The training tests' small configuration for one epoch, compressing tables over 20 rows."""
    return _tiny_data.small_config(**{"epochs": 1, "eval_every": None, "threshold": 20, **kw})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_in_the_dlrm_loop_at_a_compression_ratio(method):
    # freq needs the training split's counts, which the model builder must count (it used not to)
    ds = tiny_dataset()
    options = {} if method == "full" else {"compression": 4}
    r = train(small_config(method=method, embedding_options=options), dataset=ds)
    assert math.isfinite(r["test_loss"]) and 0 <= r["test_auc"] <= 1
    full = (60 + 7 + 300) * 4
    if method == "full":
        assert r["embedding_params"] == full
    else:
        # the two tables above the threshold are at most a quarter of their full size where the
        # method reaches 4x, and never larger than full
        assert r["tables"]["b"] == 7 * 4
        assert r["embedding_params"] < full
        for name, n in (("a", 60), ("c", 300)):
            reached = size_for_ratio(method, n, 4, 4, strict=False).reached
            assert r["tables"][name] <= (n * 4 // 4 if reached else n * 4), (name, reached)


class _ForcedTrial:
    """An Optuna-like trial whose categorical ``method`` is forced; other draws take the first choice / low end."""

    def __init__(self, method):
        self.method = method

    def suggest_categorical(self, name, choices):
        if name == "method":
            assert self.method in choices, (self.method, choices)
            return self.method
        return choices[-1] if name == "embedding_dim" else choices[0]

    def suggest_int(self, name, low, high, log=False):
        return low

    def suggest_float(self, name, low, high, log=False):
        return low if name != "learning_rate" else 0.05


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_open_space_draws_of_every_method_train(method):
    # the open search draws from METHODS; a freq draw used to fail (no num_hot, no counts)
    from sweeps.objective import train_config
    from sweeps.space import get_space

    space = get_space("open", n_trials=1)
    _, cfg = space.sample(_ForcedTrial(method), {"dataset": "tiny", "epochs": 1, "batch_size": 64,
                                                 "bottom_mlp": [8, 32]})
    r = train(train_config(cfg), dataset=tiny_dataset())
    assert math.isfinite(r["val_loss"])


# ------------------------------------------------------------------------------- --compression R
def test_cli_compression_prints_the_achieved_ratio_and_refuses_bad_ratios(capsys):
    from dlrm.cli import build_parser, config_from_args, train_main

    common = ["--data-set", "synthetic", "--synthetic-rows", "1500", "--synthetic-scale", "1e3",
              "--arch-sparse-feature-size", "4", "--arch-mlp-bot", "13-4", "--max-steps", "3",
              "--mini-batch-size", "64", "--no-progress", "--threshold", "200"]
    assert train_main(common + ["--embedding", "tt", "--compression", "16"]) == 0
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if li.startswith("compression:"))
    achieved = float(line.split("parameters: ")[1].split("x")[0])
    assert "target 16x" in line and achieved >= 16
    cfg = config_from_args(build_parser().parse_args(["--embedding", "freq", "--compression", "8", "--num-hot", "5",
                                                      "--tt-rank", "3"]))
    assert cfg.embedding_options == {"compression": 8.0, "num_hot": 5, "tt_rank": 3}
    for bad, why in ((["--embedding", "qr", "--compression", "1"], "must be a finite number > 1"),
                     (["--compression", "4"], "--compression 4 needs a compressed method"),
                     (["--embedding", "qr", "--recluster-every", "10"], "--recluster-every re-clusters")):
        with pytest.raises(SystemExit) if "finite" in why else pytest.raises(ValueError, match=why):
            config_from_args(build_parser().parse_args(bad))
        capsys.readouterr()


def test_compression_metrics_count_only_the_compressed_tables():
    ds = tiny_dataset()
    r = train(small_config(method="hash", embedding_options={"compression": 4}), dataset=ds)
    # a (60 rows) and c (300 rows) are above the threshold 20; b (7 rows) stays full
    assert r["compressed_tables"] == 2 and r["compressed_full_params"] == (60 + 300) * 4
    assert r["compressed_params"] == r["tables"]["a"] + r["tables"]["c"] <= (60 + 300)
    assert r["compression_achieved"] == pytest.approx(r["compressed_full_params"] / r["compressed_params"])
    plain = train(small_config(method="qr"), dataset=ds)
    assert plain["compression_target"] is None and plain["compression_achieved"] > 1


# ------------------------------------------------------------------------------------ re-clustering
def test_recluster_hook_changes_the_partition_resets_state_and_resumes_exactly(tmp_path):
    from dlrm.train import CHECKPOINT_NAME

    ds = tiny_dataset()
    cfg = dict(method="cluster", embedding_options={"num_collisions": 4}, recluster_every=5, epochs=2,
               checkpoint_every=4)
    reference = train(small_config(checkpoint_dir=str(tmp_path / "ref"), **cfg), dataset=ds)
    state = torch.load(tmp_path / "ref" / CHECKPOINT_NAME, weights_only=True)["model"]
    relabel = state["embeddings.2.partition_relabel"]
    assert not torch.equal(relabel, torch.arange(300))  # no longer the identity (plain QR)
    _tiny_data.train_killed_at(small_config(checkpoint_dir=str(tmp_path / "kill"), **cfg), ds, 12)
    resumed = train(small_config(checkpoint_dir=str(tmp_path / "kill"), **cfg), dataset=ds)
    strip = ("wall_time_s", "samples_per_s")
    assert {k: v for k, v in resumed.items() if k not in strip} == {k: v for k, v in reference.items() if k not in strip}


def test_reset_optimizer_state_drops_only_the_given_parameters():
    from dlrm.recluster import reset_optimizer_state

    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adagrad([a, b], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    before = opt.state[b]["sum"].clone()
    assert reset_optimizer_state(opt, [a]) == 1
    assert a not in opt.state and torch.equal(opt.state[b]["sum"], before)
    opt.step()  # Adagrad starts a's state afresh
    assert torch.equal(opt.state[a]["sum"], torch.ones(3))


# ------------------------------------------------------------------------ the space and figure 5
def test_compression_space_is_every_compressed_method_at_each_ratio():
    from compemb.compression import COMPRESSED_METHODS
    from sweeps.objective import train_objective
    from sweeps.space import COMPRESSION_RATIOS, get_space

    space = get_space("compression")
    assert COMPRESSION_RATIOS == (4, 16, 64) and space.seeds == (0, 1, 2)
    assert space.size == (1 + len(COMPRESSED_METHODS) * 3) * 3
    assert space.point("full") == {"method": "full"}
    for method in COMPRESSED_METHODS:
        for ratio in COMPRESSION_RATIOS:
            point = space.point(f"{method}-r{ratio}")
            assert point["method"] == method and point["compression"] == ratio
            train_objective.check_config({**space.base, **point, "seed": 0})
    assert space.point("gqr-r16")["k"] == 3 and space.point("cluster-r4")["recluster_every"] > 0


@pytest.mark.parametrize("label", ["cluster-r64", "freq-r16", "tt-r4"])
def test_compression_points_train_through_the_sweep_objective(label):
    from sweeps.objective import train_objective
    from sweeps.space import get_space

    space = get_space("compression")
    config = {**space.base, **space.point(label), "seed": 0, "dataset": "synthetic",
              "dataset_options": {"rows": 3000, "scale": 1e4}, "epochs": 1, "eval_every": 0, "max_steps": 8,
              "batch_size": 64}
    if label.startswith("cluster"):
        config["recluster_every"] = 4
    r = train_objective(config)
    assert r["steps"] == 8 and r["compression_target"] == float(space.point(label)["compression"])
    assert r["compressed_params"] < r["compressed_full_params"]


@pytest.fixture(scope="module")
def compression_study(tmp_path_factory):
    from sweeps._testing import populate_study
    from sweeps.runner import default_storage_url, load_study
    from sweeps.space import get_space

    root = tmp_path_factory.mktemp("fig5")
    url = default_storage_url("compression", root)
    populate_study(get_space("compression", seeds=(0, 1)), url, "compression")
    return load_study(url, "compression")


def test_fig5_draws_every_method_with_the_full_line_and_its_table(compression_study, tmp_path):
    import matplotlib.image as mpimg
    import pandas as pd

    from paper_figures import fig5_compression as fig5
    from paper_figures.cli import FIGURES

    assert FIGURES["fig5"] == ("paper_figures.fig5_compression", "compression")
    paths = fig5.make_figure(compression_study, tmp_path)
    img = mpimg.imread(paths["png"])
    assert img.shape[0] > 100 and float(np.std(img[..., :3])) > 0.01
    trials = pd.read_csv(paths["csv"])
    table = pd.read_csv(paths["summary_csv"])
    assert len(trials) == 31 * 2 and len(table) == 31
    assert table["series"].iloc[0] == "full" and (table["seeds"] == 2).all()
    row = table[(table["method"] == "qr") & (table["ratio"] == 16)].iloc[0]
    qr = trials[trials["point"] == "qr-r16"]
    assert row["test_auc_mean"] == pytest.approx(qr["test_auc"].mean())
    assert row["test_auc_std"] == pytest.approx(qr["test_auc"].std())
    full = trials[trials["method"] == "full"]["test_auc"].mean()
    assert row["auc_vs_full"] == pytest.approx(qr["test_auc"].mean() / full)


def test_fig5_choice_is_the_best_validation_auc_at_16x_not_the_best_test_auc():
    import pandas as pd

    from paper_figures.fig5_compression import chosen_configuration

    rows = []
    for seed in (0, 1):
        rows.append(dict(point="full", seed=seed, method="full", compression=None, embedding_params=1000,
                         val_auc=0.80, test_auc=0.80, grid_key=f"full/s{seed}", number=len(rows)))
        for method, ratio, achieved, val, test in (("qr", 16, 15.5, 0.85, 0.85),  # short of 16x: not eligible
                                                   ("hash", 16, 16.0, 0.79, 0.70),
                                                   ("tt", 16, 20.0, 0.795, 0.799),
                                                   ("robe", 64, 64.0, 0.78, 0.81)):  # best test, worse validation
            rows.append(dict(point=f"{method}-r{ratio}", seed=seed, method=method, compression=ratio,
                             embedding_params=1000 / achieved, compression_achieved=achieved, val_auc=val,
                             test_auc=test, grid_key=f"{method}-r{ratio}/s{seed}", number=len(rows)))
    choice = chosen_configuration(pd.DataFrame(rows))
    assert choice["series"] == "TT-Rec" and choice["ratio"] == 16 and choice["reached"]
    assert choice["auc_vs_full"] == pytest.approx(0.799 / 0.80)
    assert not chosen_configuration(pd.DataFrame(rows), fraction=1.0)["reached"]
    assert chosen_configuration(pd.DataFrame(rows), min_ratio=100)["series"] is None


def test_fig5_skips_a_study_without_compression_ratios():
    import pandas as pd

    from paper_figures._common import FigureSkipped
    from paper_figures.fig5_compression import make_figure

    df = pd.DataFrame([dict(method="full", embedding_params=10, val_auc=0.7, test_auc=0.7, number=0)])
    with pytest.raises(FigureSkipped, match="compression ratio"):
        make_figure(df, "/nonexistent")
