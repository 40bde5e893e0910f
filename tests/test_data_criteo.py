"""The Criteo loader on files written here in the exact Criteo format, checked value by value
against a straightforward per-line reference."""
from __future__ import annotations

import math
import os
import re
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

REASONS = criteo_mod.REASONS
_INT = re.compile(r"-?[0-9]{1,18}")  # documented: at most 18 digits (fits int64)
_HEXRE = re.compile(r"[0-9a-fA-F]{1,8}")


def reference(lines, days=7, max_ind_range=None, day_lines=None):
    """Parse Criteo lines one by one, the obvious way."""
    rows, bad = [], {r: [] for r in REASONS}
    for no, line in enumerate(lines, 1):
        f = line.split("\t")
        if len(f) != 40:
            bad["wrong field count"].append(no)
        elif f[0] not in ("0", "1"):
            bad["bad label"].append(no)
        elif any(x != "" and not _INT.fullmatch(x) for x in f[1:14]):
            bad["non-integer dense"].append(no)
        elif any(x != "" and not _HEXRE.fullmatch(x) for x in f[14:]):
            bad["non-hex categorical"].append(no)
        else:
            dense = [math.log(1 + max(int(x), 0)) if x else 0.0 for x in f[1:14]]
            cats = [int(x, 16) if x else 0 for x in f[14:]]
            if max_ind_range:
                cats = [c % max_ind_range for c in cats]
            rows.append((no - 1, float(f[0]), dense, cats))
    dicts = [dict() for _ in range(26)]
    ids = []
    for _, _, _, cats in rows:
        ids.append([dicts[j].setdefault(c, len(dicts[j])) for j, c in enumerate(cats)])
    if day_lines is None:
        base, extra = divmod(len(lines), days)
        day_lines = [base + (d < extra) for d in range(days)]
    ends = np.cumsum(day_lines)
    day_of = [int(np.searchsorted(ends, r[0], side="right")) for r in rows]
    last = [i for i, d in enumerate(day_of) if d == len(day_lines) - 1]
    n_train = sum(1 for d in day_of if d < len(day_lines) - 1)
    n_test = (len(last) + 1) // 2
    return {
        "labels": np.array([r[1] for r in rows], dtype=np.float32),
        "dense": np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 13),
        "sparse": np.array(ids, dtype=np.int64).reshape(-1, 26),
        "cards": [max(len(d), 1) for d in dicts],
        "bad": {k: v for k, v in bad.items() if v},
        "splits": {"train": (0, n_train), "test": (n_train, n_train + n_test), "val": (n_train + n_test, len(rows))},
    }


def check_against_reference(ds: CachedDataset, ref) -> None:
    n = len(ref["labels"])
    assert ds.info["num_rows"] == n
    np.testing.assert_array_equal(np.asarray(ds._labels), ref["labels"])
    np.testing.assert_allclose(np.asarray(ds._dense, dtype=np.float64), ref["dense"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(ds._sparse, dtype=np.int64), ref["sparse"])
    assert ds.cardinalities == ref["cards"]
    report = ds.info["malformed"]
    assert set(report) == set(ref["bad"])
    for reason, lines in ref["bad"].items():
        assert report[reason]["count"] == len(lines)
        assert [e["line"] for e in report[reason]["first"]] == lines[:100]
    for name, (a, b) in ref["splits"].items():
        r = ds.split(name).rows
        assert (r.start, r.stop) == (a, b), name


def random_line(rng: np.random.Generator, malformed_rate: float = 0.1, vocab: int = 50) -> str:
    label = str(rng.integers(0, 2))
    dense = []
    for _ in range(13):
        u = rng.random()
        if u < 0.2:
            dense.append("")
        elif u < 0.3:
            dense.append(str(int(rng.integers(-3, 0))) if u < 0.29 else str(-int(rng.integers(0, 10 ** 18))))
        elif u < 0.32:
            dense.append(str(int(rng.integers(10 ** 16, 10 ** 18))))  # up to 18 digits: still an int64
        else:
            dense.append(str(int(rng.integers(0, 10 ** rng.integers(1, 9)))))
    cats = []
    for _ in range(26):
        u = rng.random()
        if u < 0.15:
            cats.append("")
        else:
            v = int(rng.integers(0, vocab)) * 2654435761 % (1 << 32)
            s = format(v, "08x")
            cats.append(s.upper() if rng.random() < 0.05 else s)
    fields = [label] + dense + cats
    if rng.random() < malformed_rate:
        kind = int(rng.integers(0, 8))
        if kind == 0:
            fields = fields[:-1]
        elif kind == 1:
            fields = fields + ["00ff00ff"]
        elif kind == 2:
            fields[0] = rng.choice(["2", "", "x", "-1", "01"])
        elif kind == 3:
            fields[int(rng.integers(1, 14))] = rng.choice(["1.5", "abc", "-", "1e3", " 4", "+3"])
        elif kind == 4:
            fields[int(rng.integers(14, 40))] = rng.choice(["zz", "123456789", "g0", "-1f", "0x1f", " ab"])
        elif kind == 5:
            return ""
        elif kind == 6:
            fields[int(rng.integers(1, 14))] = "9" * 25
        else:
            return "\t".join(fields).replace("\t", " ", 1)
    return "\t".join(fields)


def write_lines(path, lines, final_newline=True) -> None:
    with open(path, "w", newline="") as f:
        f.write("\n".join(lines) + ("\n" if final_newline else ""))


HAND = [
    "\t".join(["1"] + ["1", "", "-5", "0", "10"] + [""] * 8 + ["0000abcd", "", "ffffffff"] + ["deadbeef"] * 23),
    "\t".join(["0"] + ["3"] * 13 + ["0000ABCD", "0", "12"] + ["deadbeef"] * 23),
    "\t".join(["2"] + ["3"] * 13 + ["00000001"] * 26),  # bad label
    "\t".join(["0"] + ["3.5"] + ["3"] * 12 + ["00000001"] * 26),  # non-integer dense
    "\t".join(["0"] + ["3"] * 13 + ["0000000g"] + ["00000001"] * 25),  # non-hex categorical
    "\t".join(["0"] + ["3"] * 13 + ["00000001"] * 25),  # 39 fields
    "",  # blank line
    "\t".join(["1"] + ["-1"] * 13 + ["1"] * 26),
    "\t".join(["0"] + [str(2 ** 40)] + ["0"] * 12 + ["7fffffff"] * 26),
]


def test_hand_written_file_every_value(tmp_path):
    p = tmp_path / "train.txt"
    write_lines(p, HAND)
    ds = load_criteo(p, cache_dir=tmp_path / "c", progress=False)
    ref = reference(HAND)
    check_against_reference(ds, ref)
    # spelled out for the first lines: log1p with missing/negative -> 0, ids by first appearance
    dense = np.asarray(ds._dense)
    np.testing.assert_allclose(dense[0, :5], [math.log(2), 0.0, 0.0, 0.0, math.log(11)], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(ds._sparse)[:2, :3], [[0, 0, 0], [0, 0, 1]])  # "" is the value 0; case-insensitive hex
    assert ds.info["malformed"]["bad label"]["first"][0]["line"] == 3
    assert ds.info["malformed"]["wrong field count"]["count"] == 2
    assert ds.info["num_lines"] == len(HAND)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(7, 400), chunk=st.sampled_from([64, 1000, 1 << 20]),
       mod=st.sampled_from([None, 7, 1000]), final_newline=st.booleans())
def test_random_files_match_reference(tmp_path_factory, seed, n, chunk, mod, final_newline):
    rng = np.random.default_rng(seed)
    lines = [random_line(rng) for _ in range(n)]
    if lines[-1] == "":
        final_newline = True  # a blank last line exists only if a newline ends it
    d = tmp_path_factory.mktemp("crit")
    p = d / "train.txt"
    write_lines(p, lines, final_newline)
    ds = CachedDataset.open(preprocess_criteo(p, d / "c", max_ind_range=mod, progress=False, chunk_bytes=chunk))
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
    for reason, rep in ds.info["malformed"].items():
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
    rc = data_main(["prepare", "criteo", "--raw-data-file", str(p), "--cache-dir", str(tmp_path / "c2"), "--strict", "--no-progress"])
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
