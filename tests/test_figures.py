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


def test_fig1_rows_are_the_collision_grid_trials(demo_study, tmp_path, drawn):
    _, _, study = demo_study
    paths = fig1_collisions.make_figure(study, tmp_path)
    title = _titles(drawn[-1])
    assert "over 2 seeds;" in title and "per point" not in title
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
    table = pd.read_csv(tmp_path / "r" / "figures" / "paper-path" / "fig3_path_table.csv")
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


def test_figures_go_to_a_folder_per_study(demo_study, tmp_path, capsys):
    _, url, _ = demo_study
    assert figures_main(["fig4", "--study", "demo", "--storage", url, "--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "demo" / "fig4_pareto.png").stat().st_size > 0
    assert (tmp_path / "figures" / "demo" / "fig4_pareto.csv").exists()
    assert not (tmp_path / "figures" / "fig4_pareto.png").exists()
    assert fig4_pareto.main(["--study", "demo", "--storage", url, "--results-dir", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "figures" / "demo" / "fig4_pareto.pdf").exists()


def test_seeds_phrase():
    from paper_figures._common import seeds_phrase

    assert seeds_phrase([3, 3, 3]) == "3 seeds" and seeds_phrase([1]) == "1 seed"
    assert seeds_phrase([3, 1, 2, 3]) == "1–3 seeds per point"


def test_titles_state_real_seed_counts_and_series_carry_their_collisions(demo_study, tmp_path, drawn):
    _, _, study = demo_study
    df = _complete(study)
    # one seed left for some points: the titles must not claim two
    uneven = df[~(df["point"].isin(["hash-c2", "qr-mult-c4-t20", "path-h16-c4"]) & (df["seed"] == 1))]
    for module in (fig1_collisions, fig2_threshold, fig3_path_table):
        module.make_figure(uneven, tmp_path / module.STEM)
        title = _titles(drawn[-1])
        assert "1–2 seeds per point" in title, (module.STEM, title)
        assert "2 seeds)" not in title and "over 2 seeds" not in title
    fig1, fig2, fig3 = drawn[-3:]
    legend = _legend(fig1)
    for series in ("hashing", "QR concat", "QR add", "QR mult"):
        assert any(t.startswith(series) and "collisions 2, 4, 8" in t for t in legend), (series, legend)
    # and every compressed point carries its count
    assert sorted(int(t.get_text()) for t in fig1.axes[0].texts) == sorted([2, 4, 8] * 4)
    assert all("4 collisions" in t for t in _legend(fig2) if t.startswith("QR"))
    assert any(t.startswith("path-based") and "4 collisions" in t for t in _legend(fig3))
    fig4_pareto.make_figure(study, tmp_path)
    legend = _legend(drawn[-1])
    assert any(t.startswith("hashing") and "collisions 2, 4, 8" in t for t in legend), legend
    assert any(t.startswith("QR mult") and "collisions 2, 4, 8" in t for t in legend), legend


def test_figure_whose_study_lacks_its_axis_is_skipped_with_one_line(tmp_path, capsys):
    from sweeps._testing import populate_study

    # full, hash-c4 and qr-mult-c4 at threshold 200: one collision count, one threshold, no path
    url = default_storage_url("tiny", tmp_path)
    populate_study(sp.get_space("tiny", seeds=(0,)), url, "tiny")
    rc = figures_main(["fig1", "fig2", "fig3", "--study", "tiny", "--storage", url, "--results-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 3 and all(": skipped: " in l for l in lines), lines
    assert lines[0].startswith("fig1: skipped: ") and "collision" in lines[0] and "4 collisions" in lines[0]
    assert lines[1].startswith("fig2: skipped: ") and "threshold 200" in lines[1]
    assert lines[2].startswith("fig3: skipped: ") and "path" in lines[2]
    assert not (tmp_path / "figures" / "tiny").exists()
    # the script form says the same in one line and succeeds
    assert fig2_threshold.main(["--study", "tiny", "--storage", url, "--results-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped" in err
    with pytest.raises(fig1_collisions.FigureSkipped, match="collision"):
        fig1_collisions.make_figure(load_study(url, "tiny"), tmp_path / "t")
