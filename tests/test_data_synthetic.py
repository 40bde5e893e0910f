"""Criteo-shaped synthetic data: determinism, shapes, skew, the teacher, and the round trip
through the Criteo text format and the real Criteo loader."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from dlrm.data import load_dataset
from dlrm.data.cli import main as data_main
from dlrm.data.criteo import load_criteo
from dlrm.data.synthetic import (
    CHUNK_ROWS,
    EMPTY_WHEN_ZERO,
    KAGGLE_CARDINALITIES,
    SyntheticCriteo,
    format_criteo_lines,
    hex_values,
    scaled_cardinalities,
    write_criteo_text,
    write_synthetic_cache,
)


def test_kaggle_cardinalities_match_design():
    assert len(KAGGLE_CARDINALITIES) == 26 and sum(KAGGLE_CARDINALITIES) == 33_762_577


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1.0, 1e9))
def test_scaled_cardinalities(scale):
    cards = scaled_cardinalities(scale)
    for c, full in zip(cards, KAGGLE_CARDINALITIES):
        assert c >= 2 and c == max(2, math.ceil(full / scale))


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        scaled_cardinalities(0.5)
    with pytest.raises(ValueError, match="alpha"):
        SyntheticCriteo(alpha=1.0)
    with pytest.raises(ValueError, match="rows"):
        load_dataset("synthetic", rows=3)
    with pytest.raises(ValueError, match="seed"):
        SyntheticCriteo(seed=-1)


def test_determinism_and_shapes():
    a = load_dataset("synthetic", rows=3000, scale=1e4, seed=3)
    b = load_dataset("synthetic", rows=3000, scale=1e4, seed=3)
    c = load_dataset("synthetic", rows=3000, scale=1e4, seed=4)
    assert a.num_dense == 13 and len(a.feature_names) == 26 and a.cardinalities == scaled_cardinalities(1e4)
    for x, y in ((a._dense, b._dense), (a._sparse, b._sparse), (a._labels, b._labels)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a._sparse, c._sparse)
    sp = np.asarray(a._sparse)
    assert sp.shape == (3000, 26) and (sp >= 0).all() and (sp < np.array(a.cardinalities)).all()
    assert np.asarray(a._dense).shape == (3000, 13) and (np.asarray(a._dense) >= 0).all()
    # the 7 pseudo-day split: 3000 = 7 * 428 + 4 -> days of 429 x 4, 428 x 3; day 6 -> 214 + 214
    assert (len(a.split("train")), len(a.split("test")), len(a.split("val"))) == (4 * 429 + 2 * 428, 214, 214)
    bt = next(a.split("val").batches(100, shuffle=True, seed=0))
    assert bt.dense.shape == (100, 13) and len(bt.indices) == 26 and bt.labels.dtype == torch.float32


def test_rows_do_not_depend_on_total_or_chunking():
    gen = SyntheticCriteo(seed=1, scale=1e5)
    first = gen.chunk(0)
    second = gen.chunk(1)
    mid = gen.rows(CHUNK_ROWS - 5, CHUNK_ROWS + 5)
    for full0, full1, part in zip(first, second, mid):
        np.testing.assert_array_equal(part, np.concatenate([full0[-5:], full1[:5]]))
    small = load_dataset("synthetic", rows=500, scale=1e5, seed=1)
    np.testing.assert_array_equal(np.asarray(small._sparse), first[2][:500])


def test_power_law_skew():
    scale = 1e4  # the 10M-row feature keeps 1014 categories
    ds = load_dataset("synthetic", rows=20000, scale=scale, seed=0)
    f = int(np.argmax(ds.cardinalities))
    n = ds.cardinalities[f]
    counts = np.bincount(np.asarray(ds._sparse)[:, f], minlength=n)
    top = counts.max() / counts.sum()
    assert top > 20 / n  # far above the uniform 1 / n
    # frequencies fall like a power law: the top 1% of categories hold a large share
    share = np.sort(counts)[::-1][: max(1, n // 100)].sum() / counts.sum()
    assert share > 0.2
    # the frequent ids are spread over the range, not 0, 1, 2, ...
    assert np.argsort(counts)[::-1][:5].max() > 5


def test_teacher_is_fine_grained_and_predictive():
    gen = SyntheticCriteo(seed=2, scale=100.0)
    # neighbouring ids have unrelated values (identity, not magnitude, carries the signal)
    c = np.arange(0, 20000)
    v = gen.teacher_vectors(2, c)[:, 0]
    assert abs(np.corrcoef(v[:-1], v[1:])[0, 1]) < 0.05
    assert abs(v.mean()) < 0.05 and abs(v.var() - 1.0) < 0.05
    raw, missing, cats, labels = gen.chunk(0)
    assert 0.2 < labels.mean() < 0.3
    p = gen.click_probability(raw, missing, cats)
    auc_teacher = roc_auc_score(labels, p)
    assert auc_teacher > 0.75
    # merging categories (as heavy hashing does) loses signal: the best predictor that only sees
    # hashed ids of the big features (teacher vectors averaged within a bucket) does worse
    hashed = cats.copy()
    big = [f for f, n in enumerate(gen.cardinalities) if n > 1000]
    rng = np.random.default_rng(0)
    for f in big:
        hashed[:, f] = rng.integers(0, gen.cardinalities[f], size=len(cats))  # identity destroyed
    auc_hashed = roc_auc_score(labels, gen.click_probability(raw, missing, hashed))
    assert auc_hashed < auc_teacher - 0.02


def test_hex_values_injective_and_zero_is_zero():
    cats = np.array([[0] * 26, list(range(1, 27))], dtype=np.int64)
    hv = hex_values(cats)
    assert (hv[0] == 0).all() and (hv < 2 ** 32).all()
    many = np.arange(0, 200000, dtype=np.int64)[:, None].repeat(26, axis=1)
    hv = hex_values(many)
    for f in (0, 2, 25):
        assert len(np.unique(hv[:, f])) == len(many)


def test_text_format_fields():
    gen = SyntheticCriteo(seed=0, scale=1e6)
    raw, missing, cats, labels = gen.rows(0, 200)
    lines = format_criteo_lines(raw, missing, cats, labels)
    assert len(lines) == 200
    for ln, c, m in zip(lines, cats, missing):
        f = ln.split("\t")
        assert len(f) == 40 and f[0] in ("0", "1")
        assert all((x == "") == mm for x, mm in zip(f[1:14], m))
        for j, x in enumerate(f[14:]):
            assert x == "" and c[j] == 0 and j in EMPTY_WHEN_ZERO or len(x) == 8 and int(x, 16) >= 0


def test_round_trip_through_criteo_loader(tmp_path):
    rows, scale, seed = 4000, 1e3, 7
    p = write_criteo_text(tmp_path / "train.txt", rows, scale=scale, seed=seed)
    loaded = load_criteo(p, cache_dir=tmp_path / "cache", progress=False)
    mem = load_dataset("synthetic", rows=rows, scale=scale, seed=seed)
    assert loaded.info["num_malformed"] == 0 and loaded.info["num_rows"] == rows
    np.testing.assert_array_equal(np.asarray(loaded._labels), np.asarray(mem._labels))
    np.testing.assert_allclose(np.asarray(loaded._dense), np.asarray(mem._dense), rtol=1e-6, atol=0)
    a, b = np.asarray(mem._sparse, dtype=np.int64), np.asarray(loaded._sparse, dtype=np.int64)
    for f in range(26):
        # the same partition of the rows: ids correspond one to one
        pairs = np.unique(np.stack([a[:, f], b[:, f]], axis=1), axis=0)
        assert len(pairs) == len(np.unique(a[:, f])) == len(np.unique(b[:, f]))
        assert loaded.cardinalities[f] == len(np.unique(a[:, f]))
    for name in ("train", "val", "test"):
        assert len(loaded.split(name)) == len(mem.split(name))


def test_cache_writer_equals_in_memory(tmp_path, capsys):
    rc = data_main(["synthetic", "--out", str(tmp_path / "syn"), "--rows", "1500", "--scale", "1e4", "--seed", "5",
                    "--no-progress"])
    assert rc == 0 and "1500 rows" in capsys.readouterr().out
    cached = load_dataset("synthetic", path=tmp_path / "syn")
    mem = load_dataset("synthetic", rows=1500, scale=1e4, seed=5)
    assert cached.cardinalities == mem.cardinalities and cached.feature_names == mem.feature_names
    for name in ("train", "val", "test"):
        x = list(cached.split(name).batches(256, shuffle=True, seed=1))
        y = list(mem.split(name).batches(256, shuffle=True, seed=1))
        assert len(x) == len(y)
        for bx, by in zip(x, y):
            assert torch.equal(bx.dense, by.dense) and torch.equal(bx.labels, by.labels)
            assert all(torch.equal(i, j) for i, j in zip(bx.indices, by.indices))
    rc = data_main(["synthetic", "--out", str(tmp_path / "t.txt"), "--rows", "50", "--scale", "1e4", "--criteo-text",
                    "--no-progress"])
    assert rc == 0 and len((tmp_path / "t.txt").read_text().splitlines()) == 50
    assert write_synthetic_cache(tmp_path / "syn2", 100, scale=1e4).is_dir()


def test_split_and_batch_argument_checks():
    ds = load_dataset("synthetic", rows=700, scale=1e6)
    train = ds.split("train")
    with pytest.raises(KeyError, match="'dev'"):
        ds.split("dev")
    with pytest.raises(ValueError, match="batch_size"):
        next(train.batches(0))
    with pytest.raises(ValueError, match="start_batch=9"):
        next(train.batches(100, start_batch=9))
    assert list(train.batches(100, start_batch=train.num_batches(100))) == []
    assert train.num_batches(100, drop_last=True) == len(train) // 100
    assert all(len(b) == 100 for b in train.batches(100, drop_last=True))
    b = next(train.batches(64, shuffle=True, seed=0))
    c = b.to("cpu")
    assert len(c) == 64 and c.num_features == 26 and torch.equal(c.dense, b.dense)
    assert all(torch.equal(x, y) for x, y in zip(c.offsets, b.offsets))
