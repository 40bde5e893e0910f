"""Criteo preprocessing in worker processes: the same bytes whatever the workers and pieces,
resumption after ``kill -9`` at chosen points, the frequency threshold and ``max_ind_range``
against references computed here, the resource estimate, and half-written caches."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dlrm.data import criteo as criteo_mod
from dlrm.data.batching import CachedDataset
from dlrm.data.cli import main as data_main
from dlrm.data.criteo import KILL_ENV, estimate_resources, preprocess_criteo

from _criteo_text import check_against_reference, random_line, reference, write_lines

ROOT = Path(__file__).resolve().parents[1]
CACHE_FILES = ("dense.npy", "sparse.npy", "labels.npy", "meta.json")
DAYS = (60, 45, 70)  # lines per day file of the Terabyte-shaped input
PIECE = 2000  # bytes: several pieces per file


def write_days(directory: Path, seed: int = 0, vocab: int = 50, malformed_rate: float = 0.1) -> Path:
    rng = np.random.default_rng(seed)
    for i, k in enumerate(DAYS):
        write_lines(directory / f"day_{i}", [random_line(rng, malformed_rate, vocab) for _ in range(k)])
    return directory / "day"


def all_lines(directory: Path):
    return [ln for i in range(len(DAYS)) for ln in (directory / f"day_{i}").read_text().split("\n")[:-1]]


def days_reference(lines, **kw):
    """:func:`reference` with the malformed lines numbered per day file, as the report does."""
    ref = reference(lines, day_lines=list(DAYS), **kw)
    starts = np.cumsum([0] + list(DAYS))
    ref["bad"] = {k: [int(no - starts[np.searchsorted(starts, no, side="left") - 1]) for no in v] for k, v in ref["bad"].items()}
    return ref


def cache_bytes(cache: Path) -> dict:
    return {name: (cache / name).read_bytes() for name in CACHE_FILES}


def prepare(raw: Path, cache: Path, **kw) -> Path:
    kw.setdefault("dataset", "terabyte")
    kw.setdefault("days", len(DAYS))
    return preprocess_criteo(raw, cache, progress=False, **kw)


@pytest.fixture(scope="module")
def days_input(tmp_path_factory):
    """The input, and its cache built in this process with one worker and one piece per file."""
    d = tmp_path_factory.mktemp("days")
    raw = write_days(d)
    cache = prepare(raw, d / "one", workers=1, piece_bytes=1 << 30)
    return raw, cache


def test_same_bytes_for_any_workers_and_piece_size(days_input, tmp_path):
    raw, one = days_input
    check_against_reference(CachedDataset.open(one), days_reference(all_lines(raw.parent)))
    expected = cache_bytes(one)
    for workers, piece in ((1, PIECE), (2, PIECE), (2, 777)):
        cache = prepare(raw, tmp_path / f"w{workers}-{piece}", workers=workers, piece_bytes=piece, merge_workers=workers)
        assert cache_bytes(cache) == expected, (workers, piece)


def _run_cli(raw: Path, cache: Path, env_extra: dict, workers: int) -> subprocess.CompletedProcess:
    """``compemb data prepare`` in a session of its own: on a timeout the driver and every process
    it started are killed, so none outlives the test."""
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dlrm.data.cli", "prepare", "criteo", "--raw-data-file", str(raw), "--data-set", "terabyte",
           "--days", str(len(DAYS)), "--cache-dir", str(cache), "--workers", str(workers), "--piece-mb", str(PIECE / (1 << 20)),
           "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _orphans(token: str) -> list:
    """Processes still running with this test's token in their environment."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if token.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


# kill points: inside a worker's task after its files are written but before its marker ("mid"),
# in the driver once a task is recorded ("done"), and just before meta.json
@pytest.mark.parametrize("point,workers", [("parse:mid:2", 2), ("parse:done:4", 1), ("merge:mid:13", 2),
                                           ("write:mid:3", 2), ("write:done:0", 1), ("meta:mid:0", 2)])
def test_kill_and_resume_equals_uninterrupted(days_input, tmp_path, point, workers):
    raw, one = days_input
    cache = tmp_path / "c"
    token = f"compemb-test-{os.getpid()}-{uuid.uuid4().hex}"  # (no process of an earlier run carries it)
    res = _run_cli(raw, cache, {KILL_ENV: point, "COMPEMB_TEST_TOKEN": token}, workers)
    assert res.returncode == -signal.SIGKILL, res.stderr
    # a half-written cache is not a cache
    assert not (cache / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="not a complete data cache"):
        CachedDataset.open(cache)
    work = list(cache.glob(".work-*"))
    assert len(work) == 1
    deadline = time.monotonic() + 30
    while _orphans(token) and time.monotonic() < deadline:  # workers notice their parent died
        time.sleep(0.1)
    assert _orphans(token) == []
    stage, _, unit = point.split(":")
    log = []
    prepare(raw, cache, workers=1, piece_bytes=PIECE, log=log.append)
    resumed = next(line for line in log if line.startswith(("resume:", "parse:")))
    if stage == "parse":
        done = int(resumed.split()[1].split("/")[0])
        assert done >= (int(unit) + 1 if point.endswith(":4") else 1)  # finished pieces were kept
    else:
        assert resumed.startswith("resume:") and resumed.split()[1].split("/")[0] == resumed.split()[1].split("/")[1]
    assert cache_bytes(cache) == cache_bytes(one)
    assert not list(cache.glob(".work-*"))


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="makes a zombie driver, read through /proc")
def test_a_worker_started_after_its_driver_died_exits():
    # the pool starts its workers on demand: one may start after a kill -9 of the driver, which
    # stays a zombie until its parent reaps it; such a worker must exit, not wait for tasks
    driver = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while _state(driver.pid) != "Z":
            assert time.monotonic() < deadline, "the driver did not exit"
            time.sleep(0.05)
        code = ("import time; from dlrm.data._criteo_tasks import watch_driver; "
                f"watch_driver({driver.pid}); time.sleep(60)")
        res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
        assert res.returncode == 1
    finally:
        driver.wait()


def threshold_reference(lines, threshold, max_ind_range=None, day_lines=None):
    """Ids with a frequency threshold, computed the plain way: count every value over all good
    lines, then number the frequent ones 1, 2, ... by first appearance; the rare ones are 0."""
    ref = reference(lines, max_ind_range=max_ind_range, day_lines=day_lines)
    good = [ln.split("\t") for ln in lines]
    rows = []
    for no, f in enumerate(good, 1):
        if not any(no in v for v in ref["bad"].values()):
            cats = [int(x, 16) if x else 0 for x in f[14:]]
            rows.append([c % max_ind_range for c in cats] if max_ind_range else cats)
    ids = np.zeros((len(rows), 26), dtype=np.int64)
    cards = []
    for j in range(26):
        counts = Counter(r[j] for r in rows)
        numbering = {}
        for i, r in enumerate(rows):
            v = r[j]
            if counts[v] >= threshold:
                numbering.setdefault(v, len(numbering) + 1)
                ids[i, j] = numbering[v]
        cards.append(len(numbering) + 1)
    return ids, cards


@pytest.mark.parametrize("threshold,max_ind_range", [(2, None), (3, 40), (5, None)])
def test_frequency_threshold_against_reference(tmp_path, threshold, max_ind_range):
    raw = write_days(tmp_path, seed=threshold, vocab=30)
    lines = all_lines(tmp_path)
    ids, cards = threshold_reference(lines, threshold, max_ind_range, day_lines=list(DAYS))
    ds = CachedDataset.open(prepare(raw, tmp_path / "c", workers=1, piece_bytes=PIECE, frequency_threshold=threshold,
                                    max_ind_range=max_ind_range))
    np.testing.assert_array_equal(np.asarray(ds._sparse, dtype=np.int64), ids)
    assert ds.cardinalities == cards
    assert ds.info["options"]["frequency_threshold"] == threshold
    assert (ids == 0).any() and (ids > 0).any()  # both kinds occur
    # thresholds 0 and 1 keep every value: the plain first-appearance ids
    plain = CachedDataset.open(prepare(raw, tmp_path / "p", frequency_threshold=1, max_ind_range=max_ind_range))
    check_against_reference(plain, days_reference(lines, max_ind_range=max_ind_range))


def test_frequency_threshold_is_torchrecs_example_minus_one(tmp_path):
    # BinaryCriteoUtils.sparse_to_contiguous's docstring, frequency_threshold=2: day_0 columns
    # (abc, xyz), (iop, xyz); day_1 (iop, tuv), (lkj, xyz) -> 1 2 / 2 2 and 2 1 / 1 2 in TorchRec,
    # whose ids start at 2 and share 1; ours start at 1 and share 0.
    vals = {"abc": "a", "xyz": "b", "iop": "c", "tuv": "d", "lkj": "e"}
    days = [[("abc", "xyz"), ("iop", "xyz")], [("iop", "tuv"), ("lkj", "xyz")]]
    for i, rows in enumerate(days):
        write_lines(tmp_path / f"day_{i}", ["\t".join(["1"] + ["1"] * 13 + [vals[x], vals[y]] + ["0"] * 24) for x, y in rows])
    ds = CachedDataset.open(preprocess_criteo(tmp_path / "day", tmp_path / "c", dataset="terabyte", days=2,
                                              frequency_threshold=2, progress=False))
    torchrec = np.array([[1, 2], [2, 2], [2, 1], [1, 2]])
    np.testing.assert_array_equal(np.asarray(ds._sparse)[:, :2], torchrec - 1)


def test_max_ind_range_with_workers(days_input, tmp_path):
    raw, _ = days_input
    lines = all_lines(raw.parent)
    ds = CachedDataset.open(prepare(raw, tmp_path / "c", workers=2, piece_bytes=PIECE, max_ind_range=13))
    check_against_reference(ds, days_reference(lines, max_ind_range=13))
    assert max(ds.cardinalities) <= 13
    # the CLI flags reach the loader
    rc = data_main(["prepare", "criteo", "--raw-data-file", str(raw), "--data-set", "terabyte", "--days", "3",
                    "--cache-dir", str(tmp_path / "cli"), "--max-ind-range", "13", "--workers", "2", "--no-progress",
                    "--piece-mb", str(PIECE / (1 << 20))])
    assert rc == 0 and cache_bytes(tmp_path / "cli") == cache_bytes(tmp_path / "c")


def test_memory_estimate_printed_before_work(days_input, tmp_path, capsys):
    raw, _ = days_input
    rc = data_main(["prepare", "criteo", "--raw-data-file", str(raw), "--data-set", "terabyte", "--days", "3",
                    "--cache-dir", str(tmp_path / "c"), "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    first_stage = next(i for i, line in enumerate(out) if line.startswith(("parse:", "resume:")))
    assert any(line.startswith("memory estimate:") for line in out[:first_stage])
    assert data_main(["prepare", "criteo", "--raw-data-file", str(raw), "--data-set", "terabyte", "--days", "3",
                      "--estimate-only"]) == 0
    assert "peak <=" in capsys.readouterr().out


def test_memory_estimate_depends_on_distinct_values_not_lines(tmp_path):
    rng = np.random.default_rng(5)
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    write_lines(small, [random_line(rng, 0.0) for _ in range(400)])
    write_lines(big, [random_line(rng, 0.0) for _ in range(4000)])
    kw = dict(workers=2, piece_bytes=20_000)
    a = estimate_resources(small, max_ind_range=100, **kw)
    b = estimate_resources(big, max_ind_range=100, **kw)
    assert b.lines > 5 * a.lines
    assert a.merge_memory == b.merge_memory and a.distinct_bound == b.distinct_bound == 100
    assert a.peak_memory == pytest.approx(b.peak_memory, rel=0.01)  # the sampled bytes per line differ a little
    c = estimate_resources(big, **kw)  # unbounded: the bound is the number of lines
    assert c.distinct_bound == c.lines and c.merge_memory > b.merge_memory
    d = estimate_resources(big, distinct=[10] * 26, **kw)  # known cardinalities
    assert d.merge_memory < c.merge_memory and d.cache_bytes == c.cache_bytes


def test_half_written_caches_are_rebuilt(days_input, tmp_path, monkeypatch):
    raw, one = days_input
    cache = tmp_path / "c"
    prepare(raw, cache, workers=1, piece_bytes=PIECE)
    calls = []
    real = criteo_mod._build
    monkeypatch.setattr(criteo_mod, "_build", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    # arrays shorter than meta.json says: not finished
    with open(cache / "sparse.npy", "r+b") as fh:
        fh.truncate(200)
    prepare(raw, cache, workers=1, piece_bytes=PIECE)
    assert calls == [1] and cache_bytes(cache) == cache_bytes(one)
    # an unreadable meta.json: not finished
    (cache / "meta.json").write_text("{\"num_rows\": ")
    prepare(raw, cache, workers=1, piece_bytes=PIECE)
    assert calls == [1, 1] and cache_bytes(cache) == cache_bytes(one)
    # work left by a build of other sources is dropped
    stale = cache / ".work-0123456789abcdef"
    stale.mkdir()
    (stale / "p0.json").write_text("{}")
    prepare(raw, cache, workers=1, piece_bytes=PIECE, force=True)
    assert not stale.exists() and cache_bytes(cache) == cache_bytes(one)


def test_interrupted_build_with_a_torn_marker_resumes(days_input, tmp_path, monkeypatch):
    # a build that stops after parsing (an exception here, a kill in the subprocess tests); a
    # marker cut short is not trusted: its piece is parsed again
    from dlrm.data import _criteo_build

    raw, one = days_input
    cache = tmp_path / "c"
    monkeypatch.setattr(_criteo_build._Build, "merge", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare(raw, cache, workers=1, piece_bytes=PIECE)
    monkeypatch.undo()
    (work,) = cache.glob(".work-*")
    torn = work / "p1.json"
    torn.write_text(torn.read_text()[:10])
    log = []
    prepare(raw, cache, workers=1, piece_bytes=PIECE, log=log.append)
    done, total = next(line for line in log if "(parse)" in line).split()[1].split("/")
    assert int(done) == int(total) - 1  # all but the torn one
    assert cache_bytes(cache) == cache_bytes(one)


def test_strict_mode_names_the_first_malformed_line_across_workers(tmp_path):
    rng = np.random.default_rng(9)
    good = [random_line(rng, 0.0) for _ in range(200)]
    bad = "\t".join(["2"] + ["1"] * 13 + ["0"] * 26)  # bad label
    write_lines(tmp_path / "day_0", good[:80])
    write_lines(tmp_path / "day_1", good[80:140] + [bad] + good[140:])  # line 61 of day_1
    write_lines(tmp_path / "day_2", [bad] + good[:5])
    with pytest.raises(ValueError, match=r"day_1:61: .*bad label"):
        preprocess_criteo(tmp_path / "day", tmp_path / "c", dataset="terabyte", days=3, strict=True, progress=False,
                          workers=2, piece_bytes=500)


def test_empty_and_all_malformed_files(tmp_path):
    write_lines(tmp_path / "day_0", ["x", "1\t2"])
    (tmp_path / "day_1").write_bytes(b"")
    ds = CachedDataset.open(preprocess_criteo(tmp_path / "day", tmp_path / "c", dataset="terabyte", days=2, progress=False,
                                              workers=2, frequency_threshold=3))
    assert ds.info["num_rows"] == 0 and ds.info["num_lines"] == 2 and ds.cardinalities == [1] * 26
    assert ds.info["day_lines"] == [2, 0]


def test_bad_parallel_options(days_input, tmp_path):
    raw, _ = days_input
    for kw in ({"workers": 0}, {"merge_workers": -1}, {"piece_bytes": 0}, {"frequency_threshold": -2}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            prepare(raw, tmp_path / "c", **kw)
