"""The Criteo loader on files written here in the exact Criteo format, checked value by value
against a straightforward per-line reference."""
from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from dlrm.data import load_dataset
from dlrm.data import criteo as criteo_mod
from dlrm.data.batching import CachedDataset
from dlrm.data.cli import main as data_main
from dlrm.data.criteo import load_criteo, preprocess_criteo

from _criteo_text import HAND, check_against_reference, random_line, reference, write_lines


def test_hand_written_file_every_value(tmp_path):
    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    ds = load_criteo(p, cache_dir=tmp_path / "c", progress=False)
    ref = reference(HAND)
    check_against_reference(ds, ref)
    # spelled out for the first lines: log1p with missing/negative -> 0, ids by first appearance
    dense = np.asarray(ds._dense)
    np.testing.assert_allclose(dense[0, :5], [math.log(2), 0.0, 0.0, 0.0, math.log(11)], rtol=1e-6)
    # "" is the value 0; case-insensitive hex
    np.testing.assert_array_equal(np.asarray(ds._sparse)[:2, :3], [[0, 0, 0], [0, 0, 1]])
    assert ds.info["malformed"]["bad label"]["first"][0]["line"] == 3
    assert ds.info["malformed"]["wrong field count"]["count"] == 2
    assert ds.info["num_lines"] == len(HAND)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(7, 400), chunk=st.sampled_from([64, 1000, 1 << 20]),
       piece=st.sampled_from([1500, 1 << 26]), mod=st.sampled_from([None, 7, 1000]), final_newline=st.booleans())
def test_random_files_match_reference(tmp_path_factory, seed, n, chunk, piece, mod, final_newline):
    rng = np.random.default_rng(seed)
    lines = [random_line(rng) for _ in range(n)]
    if lines[-1] == "":
        final_newline = True  # a blank last line exists only if a newline ends it
    d = tmp_path_factory.mktemp("crit")
    p = d / "train.txt"
    write_lines(p, lines, final_newline)
    ds = CachedDataset.open(preprocess_criteo(p, d / "c", max_ind_range=mod, progress=False, chunk_bytes=chunk,
                                              piece_bytes=piece, workers=1))
    check_against_reference(ds, reference(lines, max_ind_range=mod))


def test_kaggle_pseudo_days_sizes(tmp_path):
    rng = np.random.default_rng(0)
    lines = [random_line(rng, malformed_rate=0.0) for _ in range(7 * 30 + 5)]
    p = tmp_path / "train.txt"
    write_lines(p, lines)
    ds = load_dataset("criteo-kaggle", raw_data_file=p, cache_dir=tmp_path / "c", progress=False)
    # 215 = 7 * 30 + 5: days 0-4 have 31 lines, days 5-6 have 30; day 6 -> test 15, val 15
    assert ds.info["day_lines"] == [31] * 5 + [30] * 2
    assert len(ds.split("train")) == 185 and len(ds.split("test")) == 15 and len(ds.split("val")) == 15
    lab = np.asarray(ds._labels)
    exp = np.array([float(ln[0]) for ln in lines], dtype=np.float32)
    np.testing.assert_array_equal(ds.split("test").labels(), exp[185:200])
    np.testing.assert_array_equal(ds.split("val").labels(), exp[200:])
    assert len(lab) == 215


def test_terabyte_days_are_files(tmp_path):
    rng = np.random.default_rng(1)
    per_day = [[random_line(rng) for _ in range(k)] for k in (20, 13, 9)]
    for i, lines in enumerate(per_day):
        write_lines(tmp_path / f"day_{i}", lines)
    ds = load_dataset("criteo-terabyte", raw_data_file=tmp_path / "day", days=3, cache_dir=tmp_path / "c", progress=False)
    flat = [ln for lines in per_day for ln in lines]
    ref = reference(flat, day_lines=[20, 13, 9])
    n = len(ref["labels"])
    np.testing.assert_array_equal(np.asarray(ds._sparse, dtype=np.int64), ref["sparse"])
    np.testing.assert_array_equal(np.asarray(ds._labels), ref["labels"])
    for name, (a, b) in ref["splits"].items():
        assert (ds.split(name).rows.start, ds.split(name).rows.stop) == (a, b)
    assert ds.split("val").rows.stop == n
    # line numbers are per file
    for rep in ds.info["malformed"].values():
        for e in rep["first"]:
            fi = int(e["file"].split("_")[1])
            assert 1 <= e["line"] <= len(per_day[fi])
    with pytest.raises(FileNotFoundError, match="day_3"):
        load_dataset("criteo-terabyte", raw_data_file=tmp_path / "day", days=4, cache_dir=tmp_path / "c2", progress=False)


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    lines = [random_line(rng) for _ in range(50)]
    p = tmp_path / "train.txt"
    write_lines(p, lines)
    cache = preprocess_criteo(p, tmp_path / "c", progress=False)
    calls = []
    real_build = criteo_mod._build
    monkeypatch.setattr(criteo_mod, "_build", lambda *a, **k: (calls.append(1), real_build(*a, **k))[1])
    assert preprocess_criteo(p, tmp_path / "c", progress=False) == cache
    assert calls == []  # reused
    # a changed file (size and mtime) invalidates the cache
    more = [random_line(rng, malformed_rate=0.0) for _ in range(5)]
    write_lines(p, lines + more)
    st_ = os.stat(p)
    os.utime(p, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10 ** 9))
    ds = CachedDataset.open(preprocess_criteo(p, tmp_path / "c", progress=False))
    assert calls == [1]
    check_against_reference(ds, reference(lines + more))
    # other options invalidate it too
    ds = CachedDataset.open(preprocess_criteo(p, tmp_path / "c", max_ind_range=3, progress=False))
    assert calls == [1, 1]
    assert max(ds.cardinalities) <= 3
    check_against_reference(ds, reference(lines + more, max_ind_range=3))
    # an incomplete cache (no meta.json) is rebuilt
    (tmp_path / "c" / "meta.json").unlink()
    preprocess_criteo(p, tmp_path / "c", max_ind_range=3, progress=False)
    assert calls == [1, 1, 1]


def test_default_cache_dir_uses_compemb_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPEMB_CACHE", str(tmp_path / "root"))
    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    cache = preprocess_criteo(p, progress=False)
    assert cache.parent == tmp_path / "root" / "criteo" and (cache / "meta.json").is_file()
    assert preprocess_criteo(p, max_ind_range=10, progress=False) != cache


def test_strict_mode_names_line_and_reason(tmp_path):
    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    with pytest.raises(ValueError, match=r"train\.txt:3: .*bad label"):
        preprocess_criteo(p, tmp_path / "c", strict=True, progress=False)
    lines = HAND[:2] + HAND[4:5]
    write_lines(p, lines)
    with pytest.raises(ValueError, match=r":3: .*non-hex categorical"):
        preprocess_criteo(p, tmp_path / "c", strict=True, progress=False, chunk_bytes=50)
    # a valid cache that recorded malformed lines also fails in strict mode
    preprocess_criteo(p, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match=r":3: .*non-hex categorical"):
        preprocess_criteo(p, tmp_path / "c", strict=True, progress=False)
    write_lines(p, HAND[:2])
    assert preprocess_criteo(p, tmp_path / "c", strict=True, progress=False).is_dir()


def test_crlf_line_ends(tmp_path):
    p = tmp_path / "train.txt"
    with open(p, "w", newline="") as f:
        f.write("\r\n".join(HAND[:2]) + "\r\n")
    ds = load_criteo(p, cache_dir=tmp_path / "c", progress=False)
    check_against_reference(ds, reference(HAND[:2]))


def test_bad_options(tmp_path):
    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    with pytest.raises(ValueError, match="dataset"):
        preprocess_criteo(p, tmp_path / "c", dataset="avazu")
    with pytest.raises(ValueError, match="days"):
        preprocess_criteo(p, tmp_path / "c", days=1)
    with pytest.raises(FileNotFoundError, match="nope"):
        preprocess_criteo(tmp_path / "nope.txt", tmp_path / "c")
    with pytest.raises(TypeError, match="raw_data_file"):
        load_dataset("criteo-kaggle")


def test_batches_stream_from_memmap(tmp_path):
    rng = np.random.default_rng(3)
    lines = [random_line(rng) for _ in range(300)]
    p = tmp_path / "train.txt"
    write_lines(p, lines)
    ds = load_criteo(p, cache_dir=tmp_path / "c", progress=False)
    assert isinstance(ds._dense, np.memmap) or isinstance(getattr(ds._dense, "base", None), np.memmap)
    train = ds.split("train")
    ref = reference(lines)
    a, b = ref["splits"]["train"]
    batches = list(train.batches(32))
    assert len(batches) == train.num_batches(32) == -(-(b - a) // 32)
    np.testing.assert_array_equal(torch.cat([x.labels for x in batches]).numpy(), ref["labels"][a:b])
    for f in range(26):
        idx = torch.cat([x.indices[f] for x in batches]).numpy()
        np.testing.assert_array_equal(idx, ref["sparse"][a:b, f])
        for x in batches:
            assert torch.equal(x.offsets[f], torch.arange(len(x) + 1))
    # shuffled: a permutation of the split; the same for the same seed; resumable
    sh = list(train.batches(32, shuffle=True, seed=5))
    np.testing.assert_array_equal(np.sort(torch.cat([x.labels for x in sh]).numpy()), np.sort(ref["labels"][a:b]))
    resumed = list(train.batches(32, shuffle=True, seed=5, start_batch=3))
    assert len(resumed) == len(sh) - 3
    for x, y in zip(sh[3:], resumed):
        assert torch.equal(x.dense, y.dense) and all(torch.equal(i, j) for i, j in zip(x.indices, y.indices))
    other = next(train.batches(32, shuffle=True, seed=6))
    assert not torch.equal(other.dense, sh[0].dense)


def test_cli_prepare(tmp_path, capsys):
    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    rc = data_main(["prepare", "criteo", "--raw-data-file", str(p), "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "malformed 5" in out and "bad label: 1" in out and "train.txt:3" in out
    rc = data_main(["prepare", "criteo", "--raw-data-file", str(p), "--cache-dir", str(tmp_path / "c2"), "--strict",
                    "--no-progress"])
    assert rc == 1 and "bad label" in capsys.readouterr().err


@pytest.mark.slow
def test_preprocessing_speed_report(tmp_path):
    """Not a timing assertion: prints lines/s on a 200k-line synthetic file."""
    from dlrm.data.synthetic import write_criteo_text

    p = write_criteo_text(tmp_path / "train.txt", 200_000, scale=100.0)
    t = time.perf_counter()
    ds = load_criteo(p, cache_dir=tmp_path / "c", progress=False)
    dt = time.perf_counter() - t
    print(f"criteo preprocessing: {200_000 / dt:,.0f} lines/s")
    assert ds.info["num_rows"] == 200_000


def test_concurrent_preprocessing_of_one_cache_waits_for_the_first(tmp_path):
    # Two sweep workers (or two `compemb train` runs) opening the same Criteo cache at once must not
    # rebuild it on top of each other: the second waits on the cache's lock file, then finds the
    # first's complete cache (here the test holds the lock, as a first builder would).
    import fcntl
    import threading

    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    cache = tmp_path / "c"
    cache.mkdir()
    lock = open(cache / ".lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = []
    t = threading.Thread(target=lambda: done.append(preprocess_criteo(p, cache, progress=False)))
    t.start()
    t.join(0.5)
    assert t.is_alive() and not (cache / "meta.json").exists()  # waiting, wrote nothing
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    t.join(30)
    assert done == [cache]
    check_against_reference(CachedDataset.open(cache), reference(HAND))
