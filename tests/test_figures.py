"""Figure scripts: each writes a non-empty image and a CSV whose rows are the study's trials."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paper_figures import fig1_collisions, fig2_threshold, fig3_path_table, fig4_pareto
from paper_figures.cli import main as figures_main
from paper_figures.fig4_pareto import pareto_mask
from sweeps import space as sp
from sweeps.results import trials_frame
from sweeps.runner import default_storage_url, load_study

ROOT = Path(__file__).resolve().parent.parent
SYNTH = "sweeps._testing:synthetic_objective"


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    """The demo grid (all four figures' points), two seeds, metrics from the stand-in objective."""
    from sweeps._testing import populate_study

    root = tmp_path_factory.mktemp("figs")
    url = default_storage_url("demo", root)
    populate_study(sp.get_space("demo", seeds=(0, 1)), url, "demo")  # what `run_sweep` records, without the loop
    study = load_study(url, "demo")
    assert len(study.get_trials()) == 36
    return root, url, study


def _image_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img[..., :3])) > 0.01  # not a blank canvas


def _numbers(csv: Path):
    return sorted(pd.read_csv(csv)["number"].tolist())


def _complete(study):
    return trials_frame(study, complete_only=True)


def test_fig1_rows_are_the_collision_grid_trials(demo_study, tmp_path):
    _, _, study = demo_study
    paths = fig1_collisions.make_figure(study, tmp_path)
    for kind in ("png", "pdf", "csv", "summary_csv"):
        assert paths[kind].exists() and paths[kind].stat().st_size > 0
    _image_ok(paths["png"])
    df = _complete(study)
    labels = {label for label, _ in sp.collisions_points((2, 4, 8))}
    assert _numbers(paths["csv"]) == sorted(df[df["point"].isin(labels)]["number"])
    summary = pd.read_csv(paths["summary_csv"])
    assert set(summary["series"]) == {"full", "hashing", "QR concat", "QR add", "QR mult"}
    assert (summary["n"] == 2).all()  # two seeds per point
    one = df[df["point"] == "qr-mult-c4"]["test_loss"]
    row = summary[(summary["series"] == "QR mult") & (summary["num_collisions"] == 4)].iloc[0]
    assert row["test_loss_mean"] == pytest.approx(one.mean()) and row["test_loss_std"] == pytest.approx(one.std())


def test_fig2_rows_are_qr_trials_at_four_collisions(demo_study, tmp_path):
    _, _, study = demo_study
    paths = fig2_threshold.make_figure(study, tmp_path)
    _image_ok(paths["png"])
    assert paths["pdf"].stat().st_size > 0
    df = _complete(study)
    expected = df[(df["method"] == "qr") & (df["num_collisions"] == 4)]["number"]
    assert _numbers(paths["csv"]) == sorted(expected)
    summary = pd.read_csv(paths["summary_csv"])
    assert set(summary[summary["operation"] == "mult"]["threshold"]) == {1, 20, 200, 2000}


def test_fig3_table_rows_and_markdown(demo_study, tmp_path):
    _, _, study = demo_study
    paths = fig3_path_table.make_figure(study, tmp_path)
    _image_ok(paths["png"])
    df = _complete(study)
    expected = df[(df["method"] == "path") | (df["point"] == "qr-mult-c4")]["number"]
    assert _numbers(paths["csv"]) == sorted(expected)
    md = paths["markdown"].read_text()
    assert "path, hidden 16" in md and "path, hidden 64" in md and "QR mult" in md
    assert md.count("\n") == 2 + 3  # header, rule, three rows


def test_fig4_every_trial_and_a_true_front(demo_study, tmp_path):
    _, _, study = demo_study
    paths = fig4_pareto.make_figure(study, tmp_path)
    _image_ok(paths["png"])
    out = pd.read_csv(paths["csv"])
    assert sorted(out["number"]) == sorted(_complete(study)["number"])
    front = out[out["on_front"]]
    assert len(front) >= 1
    for _, r in out.iterrows():  # no trial dominates a front trial
        for _, f in front.iterrows():
            assert not (r["embedding_params"] <= f["embedding_params"] and r["val_loss"] <= f["val_loss"]
                        and (r["embedding_params"] < f["embedding_params"] or r["val_loss"] < f["val_loss"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)), min_size=1, max_size=30))
def test_pareto_mask_is_exactly_the_non_dominated_set(points):
    p = np.array([a for a, _ in points], dtype=float)
    l = np.array([b for _, b in points], dtype=float)
    mask = pareto_mask(p, l)
    for i in range(len(p)):
        dominated = any(p[j] <= p[i] and l[j] <= l[i] and (p[j] < p[i] or l[j] < l[i]) for j in range(len(p)))
        assert mask[i] == (not dominated)


def test_figure_without_its_trials_names_the_figure(demo_study, tmp_path):
    _, _, study = demo_study
    df = _complete(study)
    with pytest.raises(ValueError, match="figure 3"):
        fig3_path_table.make_figure(df[df["method"] != "path"], tmp_path)
    with pytest.raises(TypeError, match="int"):
        fig1_collisions.make_figure(3, tmp_path)


def test_scripts_run_as_modules_and_the_cli(demo_study, tmp_path):
    root, url, _ = demo_study
    r = subprocess.run([sys.executable, "-m", "paper_figures.fig4_pareto", "--storage", url, "--study", "demo",
                        "--out-dir", str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "fig4_pareto.png").stat().st_size > 0
    assert figures_main(["fig1", "fig2", "--study", "demo", "--storage", url, "--out-dir", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "fig1_collisions.pdf").exists() and (tmp_path / "c" / "fig2_threshold.pdf").exists()
    # a missing study is an error naming it unless --run-missing runs its grid
    assert fig3_path_table.main(["--study", "paper-path", "--results-dir", str(tmp_path / "r")]) == 2
    rc = fig3_path_table.main(["--study", "paper-path", "--results-dir", str(tmp_path / "r"), "--run-missing",
                               "--seeds", "0", "--objective", SYNTH])
    assert rc == 0
    table = pd.read_csv(tmp_path / "r" / "figures" / "fig3_path_table.csv")
    assert len(table) == len(sp.get_space("paper-path", seeds=(0,)).points)


def test_study_with_only_failed_trials_says_so(tmp_path):
    # every trial of the study failed: each figure explains that there is nothing COMPLETE to draw
    from sweeps.runner import run_sweep

    run_sweep("tiny", study_name="bad", seeds=(0,), objective="sweeps._testing:failing_objective",
              results_dir=tmp_path, max_retry=0, overrides={"fail_all": True})
    study = load_study(default_storage_url("bad", tmp_path), "bad")
    assert study.get_trials() and all(t.state.name == "FAIL" for t in study.get_trials())
    for module, name in ((fig1_collisions, "figure 1"), (fig2_threshold, "figure 2"), (fig3_path_table, "figure 3"),
                         (fig4_pareto, "figure 4")):
        with pytest.raises(ValueError, match=f"{name}.*no COMPLETE trials.*3 FAIL"):
            module.make_figure(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ issue 11


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the figure scripts save, kept open for inspection."""
    from paper_figures import _common

    figs = []
    real_close = _common.plt.close

    def keep(fig=None):
        figs.append(fig)

    monkeypatch.setattr(_common.plt, "close", keep)
    yield figs
    for f in figs:
        real_close(f)


def _titles(fig) -> str:
    parts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    parts += [ax.get_title() for ax in fig.axes]
    return " | ".join(parts)


def _legend(fig):
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_figures_go_to_a_folder_per_study(demo_study, tmp_path, capsys):
    _, url, _ = demo_study
    assert figures_main(["fig1", "fig4", "--study", "demo", "--storage", url, "--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "demo" / "fig1_collisions.png").stat().st_size > 0
    assert (tmp_path / "figures" / "demo" / "fig4_pareto.csv").exists()
    assert not (tmp_path / "figures" / "fig1_collisions.png").exists()
    assert fig1_collisions.main(["--study", "demo", "--storage", url, "--results-dir", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "figures" / "demo" / "fig1_collisions.pdf").exists()


def test_titles_state_the_real_number_of_seeds_per_point(demo_study, tmp_path, drawn):
    _, _, study = demo_study
    df = _complete(study)
    fig1_collisions.make_figure(df, tmp_path / "a")
    assert "2 seeds" in _titles(drawn[-1]) and "per point" not in _titles(drawn[-1])
    # one seed left for the hashing points: the title must not claim two
    uneven = df[~((df["method"] == "hash") & (df["seed"] == 1))]
    for module in (fig1_collisions, fig2_threshold, fig3_path_table):
        sub = uneven if module is not fig2_threshold else df[~((df["point"] == "qr-mult-c4-t20") & (df["seed"] == 1))]
        if module is fig3_path_table:
            sub = df[~((df["point"] == "path-h16-c4") & (df["seed"] == 1))]
        module.make_figure(sub, tmp_path / module.STEM)
        title = _titles(drawn[-1])
        assert "1–2 seeds per point" in title, (module.STEM, title)
        assert "2 seeds)" not in title and "over 2 seeds" not in title


def test_figure_whose_study_lacks_its_axis_is_skipped_with_one_line(tmp_path, capsys):
    from sweeps._testing import populate_study

    url = default_storage_url("coll", tmp_path)
    populate_study(sp.get_space("paper-collisions", seeds=(0,)), url, "coll")
    rc = figures_main(["--study", "coll", "--storage", url, "--results-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    skipped = [l for l in (out + err).splitlines() if "skipped" in l]
    assert len(skipped) == 2 and "Traceback" not in err, out + err
    fig2_line = next(l for l in skipped if l.startswith("fig2"))
    assert "threshold" in fig2_line and "200" in fig2_line
    assert any(l.startswith("fig3") and "path" in l for l in skipped)
    assert not (tmp_path / "figures" / "coll" / "fig2_threshold.png").exists()
    assert (tmp_path / "figures" / "coll" / "fig1_collisions.png").exists()
    # the script form says the same and succeeds
    assert fig2_threshold.main(["--study", "coll", "--storage", url, "--results-dir", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().err
    # and figure 1 from a thresholds-only study (one collision count) is skipped too
    url2 = default_storage_url("thr", tmp_path)
    populate_study(sp.get_space("paper-thresholds", seeds=(0,)), url2, "thr")
    with pytest.raises(fig1_collisions.FigureSkipped, match="collision"):
        fig1_collisions.make_figure(load_study(url2, "thr"), tmp_path / "t")


def test_every_series_is_labelled_with_its_collision_counts(demo_study, tmp_path, drawn):
    _, _, study = demo_study
    fig1_collisions.make_figure(study, tmp_path)
    legend = _legend(drawn[-1])
    for series in ("hashing", "QR concat", "QR add", "QR mult"):
        assert any(t.startswith(series) and "2, 4, 8" in t for t in legend), (series, legend)
    # and every compressed point carries its count
    loss_ax = drawn[-1].axes[0]
    assert sorted(int(t.get_text()) for t in loss_ax.texts) == sorted([2, 4, 8] * 4)
    fig2_threshold.make_figure(study, tmp_path)
    assert all("4 collisions" in t for t in _legend(drawn[-1]) if t.startswith("QR"))
    fig3_path_table.make_figure(study, tmp_path)
    assert any(t.startswith("path-based") and "4 collisions" in t for t in _legend(drawn[-1]))
    fig4_pareto.make_figure(study, tmp_path)
    legend = _legend(drawn[-1])
    assert any(t.startswith("hashing") and "2, 4, 8" in t for t in legend), legend
    assert any(t.startswith("QR mult") and "2, 4, 8" in t for t in legend), legend
