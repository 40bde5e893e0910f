"""MovieLens-100k, the real data (downloaded once per cache from the recbole 1.2.1 wheel on PyPI)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrm.data import load_dataset
from dlrm.data.cli import main as data_main
from dlrm.data.movielens import AGE_BUCKETS, FEATURES, fetch_movielens_100k


@pytest.fixture(scope="session")
def ml_dir():
    # the default user cache ($COMPEMB_CACHE or ~/.cache/compemb): downloads at most once
    return fetch_movielens_100k()


@pytest.fixture(scope="session")
def ml(ml_dir):
    return load_dataset("movielens-100k", cache_dir=ml_dir)


def _raw(ml_dir, name):
    lines = (ml_dir / name).read_text(encoding="utf-8").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    return header, [ln.split("\t") for ln in lines[1:] if ln]


def test_files_and_headers(ml_dir):
    for name, cols in (("ml-100k.inter", ["user_id", "item_id", "rating", "timestamp"]),
                       ("ml-100k.user", ["user_id", "age", "gender", "occupation", "zip_code"]),
                       ("ml-100k.item", ["item_id", "movie_title", "release_year", "class"])):
        header, rows = _raw(ml_dir, name)
        assert header == cols
    assert (ml_dir / "source.json").is_file()


def test_real_facts(ml, ml_dir):
    assert ml.num_rows == 100_000
    assert ml.feature_names == list(FEATURES)
    card = dict(zip(ml.feature_names, ml.cardinalities))
    assert card["user_id"] == 943 and card["item_id"] == 1682 and card["gender"] == 2
    assert card["occupation"] == 21 and card["genres"] == 19 and card["age"] == len(AGE_BUCKETS) + 1
    assert ml.multi_hot == [False] * 8 + [True]
    assert ml.num_dense == 2
    # the label rate computed independently from the raw ratings
    _, inter = _raw(ml_dir, "ml-100k.inter")
    rate = np.mean([float(r[2]) >= 4 for r in inter])
    assert 0.4 < rate < 0.7
    assert abs(ml.info["label_rate"] - rate) < 1e-9
    sizes = {k: len(ml.split(k)) for k in ("train", "val", "test")}
    assert sizes == {"train": 80_000, "val": 10_000, "test": 10_000}
    allrows = np.concatenate([ml.split(k).rows for k in ("train", "val", "test")])
    assert len(np.unique(allrows)) == 100_000


def test_rows_match_raw_files(ml, ml_dir):
    _, inter = _raw(ml_dir, "ml-100k.inter")
    _, users = _raw(ml_dir, "ml-100k.user")
    _, items = _raw(ml_dir, "ml-100k.item")
    user = {int(u[0]): u for u in users}
    item = {int(i[0]): i for i in items}
    genre_vocab = ml.info["vocab"]["genres"]
    occ_vocab = ml.info["vocab"]["occupation"]
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(100_000, size=300, replace=False))
    # read these rows through the batching code: a split made of just them
    from dlrm.data.batching import RecSplit

    batch = next(RecSplit(ml, "probe", rows).batches(len(rows)))
    for k, r in enumerate(rows.tolist()):
        u, it, rating, _ = inter[r]
        assert batch.labels[k].item() == float(float(rating) >= 4)
        assert batch.indices[0][k].item() == int(u) - 1  # ids are sorted 1..943 -> 0..942
        assert batch.indices[1][k].item() == int(it) - 1
        urow, irow = user[int(u)], item[int(it)]
        assert batch.indices[2][k].item() == int(np.searchsorted(AGE_BUCKETS, int(urow[1]), side="right"))
        assert occ_vocab[batch.indices[4][k].item()] == urow[3]
        lo, hi = batch.offsets[8][k].item(), batch.offsets[8][k + 1].item()
        genres = sorted(genre_vocab[g] for g in batch.indices[8][lo:hi].tolist())
        assert genres == sorted(irow[3].split()) and hi > lo


def test_batches_cover_split_and_bags_are_well_formed(ml):
    val = ml.split("val")
    n = 0
    for b in val.batches(1024, shuffle=True, seed=3):
        n += len(b)
        assert b.dense.shape == (len(b), 2) and torch.isfinite(b.dense).all()
        for f, (idx, off) in enumerate(zip(b.indices, b.offsets)):
            assert off[0] == 0 and off[-1] == len(idx) and (off[1:] >= off[:-1]).all()
            assert (idx >= 0).all() and (idx < ml.cardinalities[f]).all()
        assert (b.offsets[8][1:] > b.offsets[8][:-1]).all()  # every movie has >= 1 genre
    assert n == 10_000


def test_split_depends_on_seed_only(ml_dir, ml):
    again = load_dataset("movielens-100k", cache_dir=ml_dir, split_seed=0)
    other = load_dataset("movielens-100k", cache_dir=ml_dir, split_seed=1)
    np.testing.assert_array_equal(again.split("test").rows, ml.split("test").rows)
    assert not np.array_equal(other.split("test").rows, ml.split("test").rows)


def test_cli_fetch_prints_location(ml_dir, capsys):
    assert data_main(["fetch", "movielens-100k", "--cache-dir", str(ml_dir)]) == 0
    out = capsys.readouterr().out
    assert str(ml_dir) in out and "ml-100k.inter" in out


def test_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="compemb data fetch movielens-100k"):
        load_dataset("movielens-100k", cache_dir=tmp_path / "empty", download=False)


def test_failed_download_names_the_command_the_cache_and_a_manual_route(tmp_path, monkeypatch, capsys):
    import subprocess

    from dlrm.data import movielens as ml_mod
    from dlrm.data.cli import main as data_main

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for recbole==1.2.1")

    monkeypatch.setattr(ml_mod.subprocess, "run", offline)
    target = tmp_path / "ml"
    with pytest.raises(RuntimeError) as info:
        ml_mod.fetch_movielens_100k(target)
    msg = str(info.value)
    assert "pip download --no-deps" in msg and "No matching distribution" in msg
    assert str(target) in msg and "ml-100k.inter" in msg  # where to put the files by hand
    assert not list(target.glob("*.part*"))
    # the CLI says so in one line on stderr and exits non-zero instead of a traceback
    assert data_main(["fetch", "movielens-100k", "--cache-dir", str(target)]) == 1
    assert str(target) in capsys.readouterr().err
