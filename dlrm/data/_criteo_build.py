"""The Criteo cache builder: parallel over byte ranges, bounded in memory, resumable.

Private: :func:`dlrm.data.criteo.preprocess_criteo` is the interface; its docstring states the
guarantees. How they are kept:

* **Pieces.** Each source file is cut into pieces of about ``piece_bytes`` bytes, each ending
  just after a newline; the cut depends only on the file and ``piece_bytes``. A piece is the unit
  of work of two of the three stages and the unit of resumption.
* **Stage 1, parse (one task per piece).** Parse the piece's lines; write its dense features and
  labels, and per categorical field its values in order of first appearance in the piece
  (``pandas.factorize``), their counts (with a frequency threshold) and the piece-local code of
  every line. Memory: the piece.
* **Stage 2, merge (one task per field).** Concatenate the field's per-piece value lists in piece
  order, a batch of pieces at a time, after the values already seen, and factorize again: the
  first appearance in that sequence is the first appearance in the data, so the codes are the
  contiguous ids, whatever the pieces and the workers. Write, for every (piece, value), its id.
  Memory: the field's distinct values (a batch holds about as many entries as the values seen
  so far, at least ``MIN_MERGE_BATCH``).
* **Stage 3, write (one task per piece).** ``id = piece_ids[local_code]`` (a gather, no hashing),
  written with the dense features and labels at the piece's rows of the final arrays; the
  piece's work files are deleted, so the disk holds about one copy of the data at any time.
* **Resume.** Every task writes its outputs under temporary names, renames them into place,
  then writes a JSON marker; a unit with a marker is never redone. The work lives in
  ``<cache>/.work-<hash of the plan>`` (the plan: options, source fingerprints, pieces, boot id),
  so a rerun with other sources or options, or after a reboot, starts afresh, while any number of
  workers resumes the same plan. ``meta.json`` (what makes a cache complete) is removed when a
  build starts and written last, after the arrays are fsynced.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ._criteo_parse import MAX_REPORTED_LINES, NUM_DENSE, NUM_SPARSE, REASONS, criteo_feature_names
from ._criteo_tasks import KILL_ENV, Runner, kill_hook, mark, marker, merge_field, parse_piece, usable_cpus, write_piece

__all__ = ["KILL_ENV", "ResourceEstimate", "build", "estimate", "fingerprint", "plan_pieces", "usable_cpus"]

_ROW_BYTES = 4 * (NUM_DENSE + 1)  # dense float32 + label float32 per row, plus the sparse ids
# Memory model of the estimate (bytes), fitted to measured peaks (BENCHMARKS.md): a worker's
# fixed part, its per-line cost in a piece, its parse buffer's multiple, and a merge's bytes per
# distinct value (values, ids, hash table, a batch as large as the values seen).
_BASE_RSS = 110 << 20
_PIECE_BYTES_PER_LINE = 420
_PARSE_BUFFER_FACTOR = 16
_MERGE_BYTES_PER_ID = 64
_COUNT_BYTES_PER_ID = 16

Log = Callable[[str], None]


@dataclass(frozen=True)
class Piece:
    file_index: int
    start: int
    end: int


def plan_pieces(files: Sequence[Path], piece_bytes: int) -> List[Piece]:
    """Cut every file into pieces of about ``piece_bytes`` bytes ending just after a newline."""
    pieces = []
    for fi, path in enumerate(files):
        size = path.stat().st_size
        cuts = [0]
        with open(path, "rb") as f:
            k = 1
            while k * piece_bytes < size:
                pos = max(k * piece_bytes, cuts[-1] + 1) - 1  # the cut follows the first newline at or after pos
                f.seek(pos)
                while True:
                    block = f.read(1 << 16)
                    if not block:
                        pos = size
                        break
                    nl = block.find(b"\n")
                    if nl >= 0:
                        pos += nl + 1
                        break
                    pos += len(block)
                if pos >= size:
                    break
                cuts.append(pos)
                k = pos // piece_bytes + 1
        cuts.append(size)
        pieces += [Piece(fi, a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return pieces


# ------------------------------------------------------------------------------------------------
# The estimate


@dataclass
class ResourceEstimate:
    """What a preprocessing run will need, from the file sizes and the options alone.

    ``distinct_bound`` is an upper bound on one field's distinct values (``min(lines,
    max_ind_range, 2**32)``); the real Criteo counts are far lower (Kaggle's largest field: 10.1M
    of 45.8M lines), so ``peak_memory`` is a ceiling; pass ``distinct`` to
    :func:`estimate_resources` for a value.
    """

    files: int
    input_bytes: int
    bytes_per_line: float
    lines: int
    workers: int
    merge_workers: int
    pieces: int
    piece_bytes: int
    distinct_bound: int
    worker_memory: int
    merge_memory: int
    peak_memory: int
    cache_bytes: int
    work_bytes: int

    def __str__(self) -> str:
        g = _fmt_bytes
        return "\n".join([
            f"input: {self.files} file(s), {g(self.input_bytes)}, ~{self.lines:,} lines ({self.bytes_per_line:.0f} B/line "
            f"sampled), {self.pieces} pieces of {g(self.piece_bytes)}, {self.workers} worker(s)",
            f"memory estimate: parse/write {self.workers} x {g(self.worker_memory)}; "
            f"merge {self.merge_workers} field(s) at once, "
            f"{_MERGE_BYTES_PER_ID} B per distinct value, <= {self.distinct_bound:,} each: {g(self.merge_memory)}; "
            f"peak <= {g(self.peak_memory)} (a function of distinct values, not of lines)",
            f"disk estimate: cache {g(self.cache_bytes)}, work files <= {g(self.work_bytes)} more (freed as pieces are written)",
        ])


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def estimate(files: Sequence[Path], *, max_ind_range: Optional[int], frequency_threshold: int, workers: int,
             merge_workers: int, piece_bytes: int, chunk_bytes: int,
             distinct: Optional[Sequence[int]] = None) -> ResourceEstimate:
    sizes = [p.stat().st_size for p in files]
    total = sum(sizes)
    sample = b""
    for p in files:
        with open(p, "rb") as fh:
            sample = fh.read(1 << 20)
        if sample:
            break
    per_line = len(sample) / max(sample.count(b"\n"), 1) if sample else 1.0
    lines = int(total / per_line)
    pieces = sum(max(1, -(-s // piece_bytes)) for s in sizes if s)
    bound = min(lines, max_ind_range or 1 << 32, 1 << 32)
    per_id = _MERGE_BYTES_PER_ID + (_COUNT_BYTES_PER_ID if frequency_threshold > 1 else 0)
    if distinct is None:
        largest = [bound] * min(merge_workers, NUM_SPARSE)
    else:
        largest = sorted((min(int(d), bound) for d in distinct), reverse=True)[:merge_workers]
    piece_lines = min(piece_bytes, max(sizes, default=0)) / per_line
    worker = _BASE_RSS + int(piece_lines * _PIECE_BYTES_PER_LINE) + _PARSE_BUFFER_FACTOR * chunk_bytes
    merge = len(largest) * _BASE_RSS + per_id * sum(largest)
    id_bytes = 4 if bound < 1 << 31 else 8
    cache = lines * (_ROW_BYTES + NUM_SPARSE * id_bytes)
    work = lines * (_ROW_BYTES + NUM_SPARSE * 4 * 2)  # dense, labels, local codes, piece values
    return ResourceEstimate(len(files), total, per_line, lines, workers, merge_workers, pieces, piece_bytes, bound,
                            worker, merge, _BASE_RSS + max(workers * worker, merge), cache, work)


# ------------------------------------------------------------------------------------------------
# The driver


def build(files: Sequence[Path], cache: Path, *, dataset: str, days: int, max_ind_range: Optional[int],
          frequency_threshold: int, require_splits: bool, strict: bool, progress: bool, chunk_bytes: int, piece_bytes: int,
          workers: Optional[int], merge_workers: Optional[int], options: dict, sources: List[dict],
          log: Optional[Log]) -> dict:
    """Build the cache (see the module docstring); return what was done and reused."""
    (cache / "meta.json").unlink(missing_ok=True)
    b = _Build(files, cache, piece_bytes, options, sources, log, progress)
    workers = max(1, min(workers or usable_cpus(), len(b.pieces)))
    merge_workers = max(1, min(merge_workers or workers, workers, NUM_SPARSE))
    b.say(str(estimate(files, max_ind_range=max_ind_range, frequency_threshold=frequency_threshold, workers=workers,
                       merge_workers=merge_workers, piece_bytes=piece_bytes, chunk_bytes=chunk_bytes)))
    b.stats["workers"] = workers
    runner = Runner(workers)
    try:
        parsed = b.parse(runner, strict, chunk_bytes=chunk_bytes, max_ind_range=max_ind_range,
                         counts=frequency_threshold > 1)
        if fingerprint(files) != sources:
            raise RuntimeError("a source file changed while preprocessing; rerun")
        if require_splits:
            _check_days(files, b.pieces, parsed, dataset, days)  # before the merge and the writes
        uniq = np.array([parsed[p]["uniq"] for p in range(len(b.pieces))], dtype=np.int64).reshape(-1, NUM_SPARSE)
        cards = b.merge(runner, uniq, frequency_threshold, merge_workers)
        rows = np.array([parsed[p]["rows"] for p in range(len(b.pieces))], dtype=np.int64)
        sparse_dtype = np.int32 if max(cards) <= np.iinfo(np.int32).max else np.int64
        b.write(runner, uniq, rows, sparse_dtype)
    finally:
        runner.close()
    for name in ("dense", "labels", "sparse"):  # durable before the cache is declared complete
        with open(cache / f"{name}.npy", "rb+") as fh:
            os.fsync(fh.fileno())
    meta = _meta(files, b.pieces, parsed, b.work, dataset, days, cards, int(rows.sum()), sparse_dtype, options, sources)
    kill_hook("meta", "mid", 0, b.driver)
    from .batching import write_cache_meta  # imports torch: the driver only

    write_cache_meta(cache, meta)
    shutil.rmtree(b.work, ignore_errors=True)
    return b.stats


class _Build:
    """The plan, its work directory and the three stages; each stage skips the units that have a
    marker of this plan and runs the others."""

    def __init__(self, files, cache: Path, piece_bytes: int, options: dict, sources: List[dict], log, progress: bool):
        self.files, self.cache, self.progress = files, cache, progress
        self.say: Log = log or (lambda line: None)
        self.pieces = plan_pieces(files, piece_bytes)
        # work from before a reboot is not trusted: files renamed into place may not have reached the disk
        plan = {"options": options, "sources": sources, "piece_bytes": piece_bytes, "boot": _boot_id(),
                "pieces": [[q.file_index, q.start, q.end] for q in self.pieces]}
        self.plan_id = hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
        self.work = cache / f".work-{self.plan_id}"
        for stale in cache.glob(".work-*"):
            if stale != self.work:
                shutil.rmtree(stale, ignore_errors=True)
        self.work.mkdir(exist_ok=True)
        self.driver = os.getpid()
        self.common = {"work": str(self.work), "plan": self.plan_id, "driver": self.driver}
        self.stats: Dict[str, Any] = {"pieces": len(self.pieces), "seconds": {}, "cpu": {}, "before": {}, "work_bytes": 0}

    def _stage(self, runner: Runner, name: str, fn, units: Sequence[int], marker_name: str, make_task, unit: str,
               limit: Optional[int] = None, on_result=None) -> Dict[int, dict]:
        """Run ``fn`` over the units without a marker; return every unit's result (or marker)."""
        from tqdm.auto import tqdm

        t = time.perf_counter()
        results = {}
        for u in units:
            m = marker(self.work / marker_name.format(u), self.plan_id)
            if m is not None:
                results[u] = m
        self.stats["before"][name] = len(results)
        if results:
            self.say(f"resume: {len(results)}/{len(units)} {unit}s done before ({name})")
        tasks = ((u, {**self.common, **make_task(u)}) for u in units if u not in results)
        with tqdm(total=len(units), initial=len(results), unit=unit, desc=f"criteo {name}", disable=not self.progress) as bar:
            if on_result is not None:
                on_result(results)
            for u, res in runner.run(fn, tasks, limit=limit):
                results[u] = res
                self.stats["cpu"][name] = self.stats["cpu"].get(name, 0.0) + res["cpu"]
                self.stats["work_bytes"] += res.get("bytes", 0)
                bar.update(1)
                kill_hook(name, "done", u, self.driver)
                if on_result is not None:
                    on_result(results)
        self.stats["seconds"][name] = time.perf_counter() - t
        self.say(f"{name}: {len(units) - self.stats['before'][name]} {unit}s in {self.stats['seconds'][name]:.1f} s")
        return results

    def parse(self, runner: Runner, strict: bool, **options) -> Dict[int, dict]:
        pieces, files = self.pieces, self.files
        checked = 0  # pieces before this one were checked for malformed lines (strict mode)

        def check_strict(parsed: Dict[int, dict]) -> None:
            nonlocal checked
            while strict and checked in parsed:  # in piece order: the first malformed line of all
                first = parsed[checked]["first_bad"]
                if first is not None:
                    fi = pieces[checked].file_index
                    line = sum(parsed[k]["lines"] for k in range(checked) if pieces[k].file_index == fi) + first["line"] + 1
                    reason = REASONS[first["reason"] - 1]
                    raise ValueError(f"{files[fi]}:{line}: malformed Criteo line ({reason}): {first['text']}")
                checked += 1

        def task(p: int) -> dict:
            q = pieces[p]
            return {"piece": p, "path": str(files[q.file_index]), "start": q.start, "end": q.end, **options}

        return self._stage(runner, "parse", parse_piece, range(len(pieces)), "p{}.json", task, "piece", on_result=check_strict)

    def merge(self, runner: Runner, uniq: np.ndarray, threshold: int, merge_workers: int) -> List[int]:
        """Merge the fields, largest first; return their cardinalities."""
        within = np.zeros_like(uniq)  # offset of field f in piece p's value file
        within[:, 1:] = np.cumsum(uniq, axis=1)[:, :-1]
        sizes = uniq.sum(axis=1)

        def task(f: int) -> dict:
            return {"field": f, "threshold": threshold,
                    "segments": [(p, int(within[p, f]), int(uniq[p, f]), int(sizes[p])) for p in np.flatnonzero(uniq[:, f])]}

        order = sorted(range(NUM_SPARSE), key=lambda f: -int(uniq[:, f].sum()))
        merged = self._stage(runner, "merge", merge_field, order, "f{}.json", task, "field", limit=merge_workers)
        self.stats["distinct"] = [merged[f]["distinct"] for f in range(NUM_SPARSE)]
        self.stats["merge_entries"] = [merged[f]["entries"] for f in range(NUM_SPARSE)]
        return [merged[f]["cardinality"] for f in range(NUM_SPARSE)]

    def write(self, runner: Runner, uniq: np.ndarray, rows: np.ndarray, sparse_dtype) -> None:
        n = max(int(rows.sum()), 1)
        if marker(self.work / "arrays.json", self.plan_id) is None:  # sparse files: blocks come as rows are written
            for name, dtype, shape in (("dense", np.float32, (n, NUM_DENSE)), ("labels", np.float32, (n,)),
                                       ("sparse", sparse_dtype, (n, NUM_SPARSE))):
                np.lib.format.open_memmap(self.cache / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
            mark(self.work / "arrays.json", {"plan": self.plan_id})
        arrays = {name: (str(self.cache / f"{name}.npy"), _data_offset(self.cache / f"{name}.npy"))
                  for name in ("dense", "labels", "sparse")}
        row0 = np.concatenate([[0], np.cumsum(rows)])
        id_off = np.zeros_like(uniq)  # offset of piece p in field f's id file
        id_off[1:] = np.cumsum(uniq, axis=0)[:-1]

        def task(p: int) -> dict:
            return {"piece": p, "row": int(row0[p]), "rows": int(rows[p]), "uniq": uniq[p].tolist(),
                    "id_offsets": id_off[p].tolist(), "sparse_dtype": np.dtype(sparse_dtype).name, "arrays": arrays}

        self._stage(runner, "write", write_piece, range(len(self.pieces)), "p{}.written.json", task, "piece")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


def _data_offset(path: Path) -> int:
    """Where the data of a ``.npy`` file starts."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
        return f.tell()


def fingerprint(files: Sequence[Path]) -> List[dict]:
    """Each source file's path, size and mtime: a change of any rebuilds the cache."""
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def check_day_lines(day_lines: Sequence[int], total_lines: int, days: int) -> None:
    """Refuse a cut into pseudo-days that leaves a day, and so the test and validation splits, empty."""
    if min(day_lines) < 1:
        raise ValueError(f"days={days} cuts {total_lines} lines into pseudo-days of {min(day_lines)} lines: the last "
                         f"day, halved into the test and validation splits, would be empty; use days <= {max(total_lines, 1)}")


def _check_days(files, pieces, parsed, dataset: str, days: int) -> None:
    from .batching import pseudo_day_counts  # imports torch: the driver only

    if dataset == "kaggle":  # Terabyte's days are its files: an empty day file is the user's data
        total = sum(parsed[p]["lines"] for p in range(len(pieces)))
        check_day_lines(pseudo_day_counts(total, days), total, days)


def _meta(files, pieces, parsed, work, dataset, days, cards, num_rows, sparse_dtype, options, sources) -> dict:
    from .batching import day_split_ranges, pseudo_day_counts  # imports torch: the driver only

    total_lines = sum(parsed[p]["lines"] for p in range(len(pieces)))
    file_lines = [0] * len(files)
    for p, q in enumerate(pieces):
        file_lines[q.file_index] += parsed[p]["lines"]
    day_lines = pseudo_day_counts(total_lines, days) if dataset == "kaggle" else file_lines
    day_ends = np.cumsum(day_lines, dtype=np.int64)
    report: Dict[str, Dict[str, Any]] = {r: {"count": 0, "first": []} for r in REASONS}
    bad_per_day = np.zeros(len(day_lines), dtype=np.int64)
    line0 = 0  # global index of the piece's first line
    file_line0: Dict[int, int] = {}  # line number offset of the piece within its file
    for p, q in enumerate(pieces):
        in_file = file_line0.get(q.file_index, 0)
        path = work / f"p{p}.bad.npz"
        bad = np.load(path)["bad"] if path.exists() else np.zeros((0, 2), np.int64)
        if len(bad):
            day = np.searchsorted(day_ends, line0 + bad[:, 0], side="right")
            bad_per_day += np.bincount(day, minlength=len(day_lines))[:len(day_lines)]
            for r in range(1, len(REASONS) + 1):
                hits = bad[bad[:, 1] == r, 0]
                rep = report[REASONS[r - 1]]
                rep["count"] += int(len(hits))
                room = max(MAX_REPORTED_LINES - len(rep["first"]), 0)
                rep["first"] += [{"file": files[q.file_index].name, "file_index": q.file_index, "line": in_file + int(i) + 1}
                                 for i in hits[:room].tolist()]
        line0 += parsed[p]["lines"]
        file_line0[q.file_index] = in_file + parsed[p]["lines"]
    day_rows = (np.asarray(day_lines, dtype=np.int64) - bad_per_day).tolist()
    dense_names, sparse_names = criteo_feature_names()
    return {
        "name": f"criteo-{dataset}",
        "options": options,
        "sources": sources,
        "num_lines": total_lines,
        "num_rows": num_rows,
        "num_malformed": total_lines - num_rows,
        "malformed": {k: v for k, v in report.items() if v["count"]},
        "day_lines": [int(x) for x in day_lines],
        "day_rows": day_rows,
        "splits": {k: [r.start, r.stop] for k, r in day_split_ranges(day_rows).items()},
        "feature_names": sparse_names,
        "dense_names": dense_names,
        "cardinalities": cards,
        "sparse_dtype": np.dtype(sparse_dtype).name,
    }
