"""Bad input and read-only use of the data commands: clear errors before work, finished caches only read."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dlrm.data import criteo as criteo_mod
from dlrm.data.batching import CachedDataset

from _criteo_text import random_line, write_lines


def _criteo_file(path, lines=40, seed=0):
    rng = np.random.default_rng(seed)
    write_lines(path, [random_line(rng, malformed_rate=0.0) for _ in range(lines)])
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "compemb", *args], capture_output=True, text=True, timeout=120)


def test_more_days_than_lines_is_refused_before_any_cache_is_written(tmp_path):
    raw = _criteo_file(tmp_path / "train.txt", lines=40)
    with pytest.raises(ValueError, match=r"days=100000 cuts 40 lines.*use days <= 40"):
        criteo_mod.preprocess_criteo(raw, tmp_path / "c", days=100000, progress=False, require_splits=True)
    assert not (tmp_path / "c" / "meta.json").exists()
    # the largest number of days that leaves a line for every day still works
    ds = CachedDataset.open(criteo_mod.preprocess_criteo(raw, tmp_path / "ok", days=40, progress=False,
                                                         require_splits=True))
    assert len(ds.split("test")) == 1 and len(ds.split("train")) == 39


def test_cli_more_days_than_lines_is_one_line(tmp_path):
    raw = _criteo_file(tmp_path / "train.txt", lines=40)
    done = _cli("data", "prepare", "criteo", "--raw-data-file", str(raw), "--days", "100000",
                "--cache-dir", str(tmp_path / "c"), "--no-progress")
    assert done.returncode != 0
    assert "days=100000" in done.stderr and "Traceback" not in done.stderr


def test_a_finished_cache_is_read_without_writing_a_lock(tmp_path):
    raw = _criteo_file(tmp_path / "train.txt")
    cache = tmp_path / "cache"
    first = criteo_mod.load_criteo(raw, cache_dir=cache, progress=False)
    # stand-in for a read-only file system (root ignores permission bits): the lock file cannot be opened
    lock = cache / ".lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    again = criteo_mod.load_criteo(raw, cache_dir=cache, progress=False)
    assert again.cardinalities == first.cardinalities
    assert np.array_equal(again.split("train").labels(), first.split("train").labels())


def test_a_cache_path_that_is_a_file_is_named(tmp_path):
    raw = _criteo_file(tmp_path / "train.txt")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not-a-dir is an existing file"):
        criteo_mod.load_criteo(raw, cache_dir=blocker, progress=False)


@pytest.mark.parametrize("text", [False, True])
def test_synthetic_out_of_the_wrong_kind_is_one_line(tmp_path, text):
    out = tmp_path / "out"
    if text:
        out.mkdir()
    else:
        out.write_text("keep me")
    done = _cli("data", "synthetic", "--out", str(out), "--rows", "10", "--no-progress", *(["--criteo-text"] if text else []))
    assert done.returncode == 2
    assert str(out) in done.stderr and "Traceback" not in done.stderr
    if not text:
        assert out.read_text() == "keep me"
