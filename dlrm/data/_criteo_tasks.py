"""The tasks of the Criteo cache builder and the processes that run them.

Private; :mod:`dlrm.data._criteo_build` describes the stages. Every task writes its outputs under
temporary names, renames them into place, then writes its JSON marker, so a task killed at any
point leaves either nothing valid or everything. This module imports numpy and pandas only (no
torch): it is what each worker process imports.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ._criteo_parse import NUM_DENSE, NUM_SPARSE, parse_buffer, read_line_chunks

KILL_ENV = "COMPEMB_TEST_KILL_AT"  # test hook: "<stage>:<mid|done>:<unit>" SIGKILLs the build there
MIN_MERGE_BATCH = 1 << 22  # entries factorized at once in a merge, at least

# ------------------------------------------------------------------------------------------------
# Files


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def save(path: Path, **arrays: Any) -> None:
    """``np.savez`` under a temporary name, then rename."""
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def save_raw(path: Path, arr: np.ndarray) -> None:
    """The raw bytes (read back slices with ``np.fromfile(offset=...)``), then rename."""
    tmp = _tmp(path)
    arr.tofile(tmp)
    os.replace(tmp, path)


def mark(path: Path, obj: dict) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def marker(path: Path, plan_id: str) -> Optional[dict]:
    """The marker's content if it exists, parses and belongs to this plan."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("plan") == plan_id else None


def kill_hook(stage: str, event: str, unit: int, driver: int) -> None:
    """SIGKILL the build (its driver, then this process) at a point a test chose."""
    if os.environ.get(KILL_ENV) == f"{stage}:{event}:{unit}":
        os.kill(driver, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# Stage 1: parse a piece


def parse_piece(task: dict) -> dict:
    import pandas as pd  # its hash-table factorize keeps first-appearance order, no sort

    t0 = time.process_time()
    work, p = Path(task["work"]), task["piece"]
    dense, labels, cats, bad = [], [], [], []
    first_bad = None
    n = 0
    for buf in read_line_chunks(Path(task["path"]), task["chunk_bytes"], task["start"], task["end"]):
        lstart, lend, reason, lab, den, cval = parse_buffer(buf, task["max_ind_range"])
        idx = np.flatnonzero(reason)
        if len(idx):
            i = int(idx[0])
            if first_bad is None:
                first_bad = {"line": n + i, "reason": int(reason[i]), "text": repr(buf[lstart[i]:min(lend[i], lstart[i] + 200)])}
            bad.append(np.stack([n + idx, reason[idx].astype(np.int64)], axis=1))
        dense.append(den)
        labels.append(lab)
        cats.append(cval.T.astype(np.uint32))  # hex values < 2**32, also after the modulo
        n += len(reason)
    cat = np.concatenate(cats, axis=1) if cats else np.zeros((NUM_SPARSE, 0), np.uint32)
    codes = np.empty(cat.shape, dtype=np.int32)
    uniq, counts = [], []
    for f in range(NUM_SPARSE):
        c, u = pd.factorize(cat[f], sort=False)
        codes[f] = c
        uniq.append(u.astype(np.uint32, copy=False))
        if task["counts"]:
            counts.append(np.bincount(c, minlength=len(u)).astype(np.uint32))
    stem = work / f"p{p}"
    save(stem.with_suffix(".rows.npz"), codes=codes,
         dense=np.concatenate(dense) if dense else np.zeros((0, NUM_DENSE), np.float32),
         labels=np.concatenate(labels) if labels else np.zeros(0, np.float32))
    if bad:  # (line in the piece, reason), kept until the end for the report
        save(stem.with_suffix(".bad.npz"), bad=np.concatenate(bad))
    save_raw(stem.with_suffix(".vals.u32"), np.concatenate(uniq + counts))  # the values, then their counts
    kill_hook("parse", "mid", p, task["driver"])
    written = sum(f.stat().st_size for f in (stem.with_suffix(".rows.npz"), stem.with_suffix(".vals.u32")))
    out = {"plan": task["plan"], "lines": n, "rows": cat.shape[1], "uniq": [len(u) for u in uniq], "first_bad": first_bad,
           "cpu": time.process_time() - t0, "bytes": written}
    mark(stem.with_suffix(".json"), out)
    return out


# ------------------------------------------------------------------------------------------------
# Stage 2: merge a field


class FieldMerge:
    """One field's values by first appearance, fed piece by piece in piece order; the ids of each
    piece's values are appended to ``out`` (a binary file).

    A batch of pieces is factorized after the values seen so far, which keep their codes (being
    first and distinct); a new value's code is its rank of first appearance. Batches hold at least
    as many entries as values seen, so the total work stays linear in the entries and the memory
    in the distinct values.
    """

    def __init__(self, out, threshold: int):
        self.out, self.threshold = out, threshold
        self.seen = np.zeros(0, dtype=np.uint32)
        self.count = np.zeros(0, dtype=np.int64)
        self.batch: List[Tuple[np.ndarray, Optional[np.ndarray]]] = []
        self.size = 0

    def add(self, values: np.ndarray, counts: Optional[np.ndarray]) -> None:
        self.batch.append((values, counts))
        self.size += len(values)
        if self.size >= max(len(self.seen), MIN_MERGE_BATCH):
            self.flush()

    def flush(self) -> None:
        import pandas as pd

        if not self.batch:
            return
        cat = np.concatenate([self.seen] + [u for u, _ in self.batch])
        codes, values = pd.factorize(cat, sort=False, size_hint=len(cat))
        del cat
        old = len(self.seen)
        if self.threshold > 1:
            grown = np.zeros(len(values), dtype=np.int64)
            grown[:old] = self.count
            pos = old
            for u, c in self.batch:  # one piece's values are distinct: a plain fancy-index add
                grown[codes[pos:pos + len(u)]] += c
                pos += len(u)
            self.count = grown
        self.out.write(codes[old:].astype(np.uint32).tobytes())
        self.seen = values.astype(np.uint32, copy=False)
        self.batch, self.size = [], 0

    def finish(self) -> int:
        """Apply the frequency threshold to the ids written; return the cardinality."""
        self.flush()
        if self.threshold <= 1:
            return len(self.seen)
        # values seen fewer than `threshold` times share id 0; the others are 1, 2, ... in order
        frequent = self.count >= self.threshold
        remap = np.where(frequent, np.cumsum(frequent), 0).astype(np.uint32)
        self.out.flush()
        end, step = self.out.tell(), 4 << 24
        for a in range(0, end, step):
            self.out.seek(a)
            block = np.frombuffer(self.out.read(min(step, end - a)), dtype=np.uint32)
            self.out.seek(a)
            self.out.write(remap[block].tobytes())
        return int(frequent.sum()) + 1


def merge_field(task: dict) -> dict:
    """Ids of field f by first appearance over all pieces."""
    t0 = time.process_time()
    work, f, threshold = Path(task["work"]), task["field"], task["threshold"]
    path = work / f"f{f}.ids.u32"
    tmp = _tmp(path)
    total = 0
    with open(tmp, "w+b") as out:
        merge = FieldMerge(out, threshold)
        for p, off, n, size in task["segments"]:  # (piece, offset in its value file, length, values in it)
            vals = work / f"p{p}.vals.u32"
            values = np.fromfile(vals, dtype=np.uint32, count=n, offset=4 * off)
            counts = np.fromfile(vals, dtype=np.uint32, count=n, offset=4 * (size + off)) if threshold > 1 else None
            merge.add(values, counts)
            total += n
        card = merge.finish()
    if card > 1 << 32:
        raise ValueError(f"field C{f + 1}: {card} ids do not fit 32 bits")
    os.replace(tmp, path)
    kill_hook("merge", "mid", f, task["driver"])
    res = {"plan": task["plan"], "cardinality": max(card, 1), "distinct": len(merge.seen), "entries": total,
           "cpu": time.process_time() - t0, "bytes": 4 * total}
    mark(work / f"f{f}.json", res)
    return res


# ------------------------------------------------------------------------------------------------
# Stage 3: write a piece's rows


def write_piece(task: dict) -> dict:
    t0 = time.process_time()
    work, p, m = Path(task["work"]), task["piece"], task["rows"]
    stem = work / f"p{p}"
    if m:
        rows = np.load(stem.with_suffix(".rows.npz"))
        codes = rows["codes"]
        sparse = np.empty((m, NUM_SPARSE), dtype=task["sparse_dtype"])
        for f, off in enumerate(task["id_offsets"]):
            ids = np.fromfile(work / f"f{f}.ids.u32", dtype=np.uint32, count=task["uniq"][f], offset=4 * off)
            sparse[:, f] = ids[codes[f]]
        del codes
        # pwrite at the piece's rows, no fsync: the page cache outlives a killed process, and the
        # driver fsyncs the arrays before it writes meta.json
        for name, (path, offset) in task["arrays"].items():
            arr = sparse if name == "sparse" else rows[name]
            fd = os.open(path, os.O_WRONLY)
            try:
                data = np.ascontiguousarray(arr).tobytes()
                os.pwrite(fd, data, offset + task["row"] * (len(data) // m))
            finally:
                os.close(fd)
    kill_hook("write", "mid", p, task["driver"])
    mark(stem.with_suffix(".written.json"), {"plan": task["plan"]})
    for ext in (".rows.npz", ".vals.u32"):
        stem.with_suffix(ext).unlink(missing_ok=True)
    return {"cpu": time.process_time() - t0}


# ------------------------------------------------------------------------------------------------
# Processes


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _process_identity(pid: int) -> Optional[str]:
    """``pid``'s start time (Linux ``/proc``), or None once it has exited (a zombie has exited);
    where there is no ``/proc``, "alive" while the pid exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if stat[0] in ("Z", "X") else stat[19]
    except FileNotFoundError:
        return None
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return "alive"


def watch_driver(driver: int) -> None:
    """Exit when the build's driver process is gone (e.g. ``kill -9``), so that no orphan keeps
    working on a cache a rerun is resuming. (A forkserver worker's parent is the forkserver, which
    lives as long as any of its workers, so the driver itself is watched.) A worker that starts
    after the driver is gone exits at once: it would otherwise wait for tasks forever, and keep
    the forkserver and the driver's output pipes open with it."""
    identity = _process_identity(driver)
    if identity is None:
        os._exit(1)

    def loop() -> None:
        while _process_identity(driver) == identity:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=loop, daemon=True).start()


class Runner:
    """Run tasks in ``workers`` processes (forkserver: workers inherit no locks, threads or torch),
    or in this process when ``workers == 1``; results come back as they finish."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: Optional[ProcessPoolExecutor] = None
        if workers > 1:
            import multiprocessing

            ctx: Any
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload([__name__, "pandas"])  # imported once, before the workers fork
            else:  # pragma: no cover - Windows
                ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=watch_driver, initargs=(os.getpid(),))

    def run(self, fn: Callable[[dict], dict], tasks: Iterable[Tuple[int, dict]],
            limit: Optional[int] = None) -> Iterator[Tuple[int, dict]]:
        """Yield ``(key, fn(task))`` for every ``(key, task)``, at most ``limit`` at a time."""
        if self.pool is None:
            for key, task in tasks:
                yield key, fn(task)
            return
        limit = limit or self.workers
        todo = iter(tasks)
        running: Dict[Any, int] = {}
        while True:
            while len(running) < limit:
                nxt = next(todo, None)
                if nxt is None:
                    break
                running[self.pool.submit(fn, nxt[1])] = nxt[0]
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                yield running.pop(fut), fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
