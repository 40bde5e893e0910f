"""Criteo preprocessing at realistic cardinalities: lines/s, peak memory and disk, 1 vs N workers.

The input is Criteo text (the exact format) whose categorical fields look like the real data
set's at this size:

* Each field draws ranks from a power law ``p(r) ~ (r + 1)^-alpha`` over its **real** full-size
  cardinality (Criteo Kaggle's, or Criteo Terabyte's without a frequency threshold). Fields of
  more than 100k values get the alpha whose expected number of distinct values in ``--lines``
  draws is the full data set's distinct values per line times ``--lines`` (at least 100k), so the
  dictionary work per line is at least the full data set's; smaller fields use alpha = 1.1.
* Ranks map to 32-bit values by a per-field odd multiplier (8 hex digits); 4% of categorical
  fields and 20% of dense fields are empty; dense values are log-normal counts (some -1).

Every run is ``preprocess_criteo`` in a fresh child process, timed after its imports, while this
process samples the child tree every 20 ms: resident memory (``RssAnon``, the memory the run
needs; page cache is not counted), CPU seconds, and the disk used by the cache directory. It
prints lines/s at each worker count and the ratio to one worker (the baseline: same input, same
code, one process), the tasks' CPU seconds per stage (what a shared machine cannot distort:
the same work in two processes should cost the same CPU), peak memory, bytes written (work files
and cache) and peak disk. Then:

* TorchRec's pipeline (``tsv_to_npys`` per file + ``sparse_to_contiguous``) and compemb with one
  worker on the same prefix of the input (``--torchrec-lines``), when ``torchrec`` is installed;
* a full-scale merge of Kaggle's largest field (10.1M distinct values, one value list per piece
  of the full data set): CPU per entry and peak bytes per distinct value;
* the projection for Criteo Kaggle and Terabyte on 2, 16 and 64 cores (README.md) from these
  measurements.

Usage: ``python benchmarks/bench_criteo_preprocess.py [--lines N] [--like kaggle|terabyte]
[--workers 1 2] [--files K]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from compemb.plan import CRITEO_KAGGLE_CARDINALITIES

ROOT = Path(__file__).resolve().parents[1]

KAGGLE_LINES = 45_840_617
KAGGLE = CRITEO_KAGGLE_CARDINALITIES
TERABYTE_LINES = 4_373_472_329
# Criteo 1TB without a frequency threshold, C1..C26 (NVIDIA DeepLearningExamples DLRM, "criteo_t0")
TERABYTE = (227605432, 39061, 17296, 7425, 20266, 4, 7123, 1544, 64, 130229467, 3067956, 405283, 11, 2209,
            11939, 155, 4, 977, 15, 292775614, 40790948, 187188510, 590152, 12974, 109, 37)
LIKE = {"kaggle": (KAGGLE, KAGGLE_LINES), "terabyte": (TERABYTE, TERABYTE_LINES)}
SMALL, SMALL_ALPHA = 100_000, 1.1
EMPTY_CAT, EMPTY_DENSE = 0.04, 0.2


# ------------------------------------------------------------------------------------------------
# The input


def _cdf(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """P(rank < x) of the continuous power law on [1, n + 1) shifted to ranks 0..n-1."""
    if abs(alpha - 1.0) < 1e-9:
        return np.log1p(x) / math.log1p(n)
    a1 = 1.0 - alpha
    return ((x + 1.0) ** a1 - 1.0) / ((n + 1.0) ** a1 - 1.0)


def expected_distinct(n: int, alpha: float, draws: int, bins: int = 4000) -> float:
    """E[distinct ranks] in ``draws`` draws: sum_r 1 - exp(-draws p_r), p_r constant per log bin."""
    edges = np.unique(np.concatenate([np.arange(min(n, 256) + 1), np.geomspace(256, n, bins).astype(np.int64)]))
    edges = edges[edges <= n]
    width = np.diff(edges).astype(np.float64)
    p = np.diff(_cdf(edges.astype(np.float64), n, alpha)) / width
    return float((width * -np.expm1(-draws * (1 - EMPTY_CAT) * p)).sum())


def field_alphas(cards: Sequence[int], full_lines: int, lines: int) -> List[float]:
    """Per field, the exponent whose expected distinct count at ``lines`` is the target."""
    alphas = []
    for n in cards:
        if n <= SMALL:
            alphas.append(SMALL_ALPHA)
            continue
        target = max(n * lines / full_lines, SMALL)
        lo, hi = 0.0, 4.0  # expected distinct falls as alpha grows
        if expected_distinct(n, lo, lines) <= target:
            alphas.append(lo)
            continue
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if expected_distinct(n, mid, lines) > target else (lo, mid)
        alphas.append((lo + hi) / 2)
    return alphas


def draw_ranks(rng: np.random.Generator, n: int, card: int, alpha: float) -> np.ndarray:
    """``n`` ranks in ``[0, card)`` from the power law of :func:`_cdf` (inverse transform)."""
    u = rng.random(n)
    if abs(alpha - 1.0) < 1e-9:
        r = np.expm1(u * math.log1p(card))
    else:
        a1 = 1.0 - alpha
        r = (1.0 + u * ((card + 1.0) ** a1 - 1.0)) ** (1.0 / a1) - 1.0
    return np.minimum(np.floor(r).astype(np.uint64), np.uint64(card - 1))


def _digits(buf: np.ndarray, end: np.ndarray, x: np.ndarray) -> None:
    """Write the decimal digits of x >= 0 right-aligned to end at ``end`` (exclusive)."""
    pos = end - 1
    while len(x):
        buf[pos] = 48 + x % 10
        x = x // 10
        keep = x > 0
        x, pos = x[keep], pos[keep] - 1


def criteo_block(rng: np.random.Generator, n: int, cards, alphas, mult) -> bytes:
    """``n`` lines of Criteo text."""
    label = (rng.random(n) < 0.256).astype(np.int64)
    dense = np.floor(np.exp(rng.normal(rng.uniform(0, 4, 13), rng.uniform(0.5, 1.5, 13), (n, 13)))).astype(np.int64) - 1
    dense_empty = rng.random((n, 13)) < EMPTY_DENSE
    cats = np.empty((n, 26), dtype=np.uint64)
    for f, (card, alpha) in enumerate(zip(cards, alphas)):
        cats[:, f] = (draw_ranks(rng, n, card, alpha) * np.uint64(mult[f]) + np.uint64(f)) & np.uint64(0xFFFFFFFF)
    cat_empty = rng.random((n, 26)) < EMPTY_CAT
    dlen = np.where(dense_empty, 0, np.floor(np.log10(np.maximum(np.abs(dense), 1))).astype(np.int64) + 1 + (dense < 0))
    lens = np.concatenate([np.ones((n, 1), np.int64), dlen, np.where(cat_empty, 0, 8)], axis=1)  # (n, 40)
    span = lens + 1  # a tab or the newline after each field
    ends = np.cumsum(span.ravel()).reshape(n, 40) - 1  # index of the delimiter after each field
    starts = ends - lens
    buf = np.full(int(ends[-1, -1]) + 1, 9, dtype=np.uint8)
    buf[ends[:, -1]] = 10
    buf[starts[:, 0]] = 48 + label
    ok = ~dense_empty
    neg = ok & (dense < 0)
    buf[starts[:, 1:14][neg]] = 45
    _digits(buf, ends[:, 1:14][ok], np.abs(dense[ok]))
    hexd = np.frombuffer(b"0123456789abcdef", np.uint8)
    st, v = starts[:, 14:][~cat_empty], cats[~cat_empty]
    for k in range(8):
        buf[st + k] = hexd[(v >> np.uint64(4 * (7 - k))) & np.uint64(15)]
    return buf.tobytes()


def write_input(directory: Path, like: str, lines: int, files: int, seed: int = 0) -> Path:
    """Write ``lines`` lines in ``files`` files (Kaggle: ``train.txt``; Terabyte: ``day_i``)."""
    cards, full = LIKE[like]
    alphas = field_alphas(cards, full, lines)
    rng = np.random.default_rng(seed)
    mult = [int(m) | 1 for m in rng.integers(1 << 20, 1 << 32, 26)]
    paths = [directory / "train.txt"] if like == "kaggle" else [directory / f"day_{i}" for i in range(files)]
    per = [lines // len(paths) + (i < lines % len(paths)) for i in range(len(paths))]
    block = 1 << 17
    for path, count in zip(paths, per):
        with open(path, "wb") as fh:
            for a in range(0, count, block):
                fh.write(criteo_block(rng, min(block, count - a), cards, alphas, mult))
    return paths[0] if like == "kaggle" else directory / "day"


def prefix_input(raw: Path, like: str, files: int, lines: int, directory: Path) -> Path:
    """The first ``lines`` lines of the input (spread over the day files) in ``directory``."""
    directory.mkdir()
    srcs = [raw] if like == "kaggle" else [raw.parent / f"day_{i}" for i in range(files)]
    for i, src in enumerate(srcs):
        want = lines // len(srcs) + (i < lines % len(srcs))
        with open(src, "rb") as fi, open(directory / src.name, "wb") as fo:
            for _ in range(want):
                fo.write(fi.readline())
    return directory / ("train.txt" if like == "kaggle" else "day")


# ------------------------------------------------------------------------------------------------
# Running and measuring


def _tree(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except OSError:
            pass
    return out


def _proc(pid: int) -> Dict[str, float]:
    """RssAnon (bytes) and CPU seconds of one process."""
    out = {"rss": 0.0, "cpu": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                out["rss"] = int(line.split()[1]) * 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        pass
    return out


def _disk(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _wait_quiet(pct: float, poll: float = 3.0) -> None:
    """Wait until the share of the last 10 s in which tasks waited for a CPU is under ``pct``."""
    while True:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        if float(some.split()[1].split("=")[1]) < pct:
            return
        time.sleep(poll)


def _busy_seconds() -> float:
    """CPU seconds spent by the whole machine so far (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_child(code: str, watch: Path) -> Dict:
    """Run ``code`` (which prints the seconds it spent, after its imports, as its last line) in a
    child process; sample the child tree every 20 ms. ``others`` is the cores that processes
    outside the tree kept busy meanwhile (0 on an idle machine)."""
    busy, t = _busy_seconds(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peak = {"rss": 0.0, "disk": 0}
    last: Dict[int, Dict[str, float]] = {}  # per process of the tree, the largest value seen
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = {p: _proc(p) for p in _tree(proc.pid)}
            peak["rss"] = max(peak["rss"], sum(v["rss"] for v in now.values()))
            peak["disk"] = max(peak["disk"], _disk(watch))
            for p, v in now.items():  # counters only grow (an exited process reads as zeros)
                last[p] = {k: max(x, last.get(p, {}).get(k, 0.0)) for k, x in v.items()}
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"the child failed with exit code {proc.returncode}")
    busy, wall = _busy_seconds() - busy, time.perf_counter() - t
    result = json.loads(out.strip().splitlines()[-1])
    others = [v["rss"] for p, v in last.items() if p != proc.pid]
    cpu = sum(v["cpu"] for v in last.values())
    return {**result, "rss": peak["rss"], "disk_peak": peak["disk"], "cpu": cpu, "others": max(busy - cpu, 0.0) / wall,
            "rss_driver": last.get(proc.pid, {}).get("rss", 0.0),
            "rss_worker": max(others, default=0.0)}


def run_prepare(raw: Path, like: str, cache: Path, workers: int, piece_bytes: int, threshold: int) -> Dict:
    """One ``preprocess_criteo`` into an empty ``cache`` in a child process (timed after its imports)."""
    shutil.rmtree(cache, ignore_errors=True)
    code = f"""
import json, time
import dlrm.data.criteo as C
stats = {{}}
real = C._build
def spy(*a, **k):
    stats.update(real(*a, **k)); return stats
C._build = spy
if __name__ == "__main__":
    t = time.perf_counter()
    C.preprocess_criteo({str(raw)!r}, {str(cache)!r}, dataset={like!r}, workers={workers}, piece_bytes={piece_bytes},
                        frequency_threshold={threshold}, progress=False, force=True)
    print(json.dumps({{"seconds": time.perf_counter() - t, "stats": stats}}))
"""
    r = run_child(code, cache)
    r["workers"] = workers
    r["meta"] = json.loads((cache / "meta.json").read_text())
    r["final"] = sum((cache / f"{n}.npy").stat().st_size for n in ("dense", "sparse", "labels"))
    return r


def run_torchrec(raw: Path, like: str, files: int, out: Path) -> Dict:  # pragma: no cover - needs torchrec
    """TorchRec's numpy pipeline: ``tsv_to_npys`` per file, then ``sparse_to_contiguous`` (no
    frequency threshold), its own prints silenced."""
    ins = [raw] if like == "kaggle" else [raw.parent / f"day_{i}" for i in range(files)]
    out.mkdir()
    code = f"""
import contextlib, io, json, time
from torchrec.datasets.criteo import BinaryCriteoUtils as B
if __name__ == "__main__":
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        sparse = []
        for i, path in enumerate({[str(p) for p in ins]!r}):
            B.tsv_to_npys(path, f"{out}/day_{{i}}_dense.npy", f"{out}/day_{{i}}_sparse.npy", f"{out}/day_{{i}}_labels.npy")
            sparse.append(f"{out}/day_{{i}}_sparse.npy")
        B.sparse_to_contiguous(sparse, {str(out)!r}, frequency_threshold=0)
    print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""
    return run_child(code, out)


def merge_check(card: int, full_lines: int, lines_per_piece: int, alpha: float, seed: int = 0) -> Dict:
    """The merge of one field at full size in a child process: per-piece value lists drawn as in
    the input (``full_lines / lines_per_piece`` pieces), merged by ``FieldMerge``. Returns its
    time per entry and peak memory per distinct value."""
    code = f"""
import json, os, sys, time, tracemalloc
import numpy as np, pandas as pd
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_criteo_preprocess import draw_ranks
from dlrm.data._criteo_tasks import FieldMerge
if __name__ == "__main__":
    rng = np.random.default_rng({seed})
    pieces, per = -(-{full_lines} // {lines_per_piece}), {lines_per_piece}
    values = []
    for _ in range(pieces):
        _, u = pd.factorize(draw_ranks(rng, per, {card}, {alpha}).astype(np.uint32), sort=False)
        values.append(u)
    tracemalloc.start()  # numpy's and pandas' hash tables report to it
    with open(os.devnull, "wb") as out:
        m = FieldMerge(out, 0)
        t = time.process_time()
        for u in values:
            m.add(u, None)
        m.finish()
        seconds = time.process_time() - t  # CPU seconds: the machine may be shared
    peak = tracemalloc.get_traced_memory()[1]
    entries = sum(len(u) for u in values)
    print(json.dumps({{"pieces": pieces, "entries": entries, "distinct": len(m.seen), "seconds": seconds,
                      "bytes_per_distinct": peak / len(m.seen)}}))
"""
    return run_child(code, Path(tempfile.gettempdir()) / "nonexistent")


# ------------------------------------------------------------------------------------------------
# Projection


CORES = (2, 16, 64)
DISK_GBPS = 2.0  # a single NVMe drive, for the I/O-bound column


def projection(one: Dict, two: Dict, lines: int, bytes_per_line: float, merge: Dict) -> List[Dict]:
    """Time, memory and disk for the full Criteo data sets on 2, 16 and 64 cores (README.md).

    * parse + write: the one-worker run's wall seconds per line in these stages (so I/O waits and
      the driver are in), times the CPU inflation measured with 2 workers (the same tasks in two
      processes), divided by the cores;
    * merge: entries per field = pieces x the field's values per piece (measured here, same piece
      size), at the CPU cost per entry of the full-scale merge check; ``min(cores, 26)`` fields at
      once, the largest field is the floor;
    * I/O: text read once, work files written and read back, the cache written; the time at
      ``DISK_GBPS`` is the floor when the disk, not the CPUs, is the limit;
    * memory: the driver, plus ``cores`` x one worker's measured peak, or during the merge
      ``min(cores, 26)`` workers holding the largest fields at the measured bytes per value;
    * disk: the cache (160 bytes a row with int32 ids) times the measured peak / cache ratio.
    """
    c1, c2 = one["stats"]["cpu"], two["stats"]["cpu"]
    per_line = (one["stats"]["seconds"]["parse"] + one["stats"]["seconds"]["write"]) / lines
    inflation = max((c2["parse"] + c2["write"]) / (c1["parse"] + c1["write"]), 1.0)
    per_entry = merge["seconds"] / merge["entries"]
    st = one["stats"]
    per_piece = np.array(st["merge_entries"], dtype=np.float64) / st["pieces"]
    lines_per_piece = lines / st["pieces"]
    work_per_line = one["stats"]["work_bytes"] / lines  # work files, written once and read once
    io_per_line = bytes_per_line + 2 * work_per_line + one["final"] / lines
    worker_rss = max(two["rss_worker"], 1.0)
    disk_ratio = one["disk_peak"] / one["final"]
    rows = []
    cases = [(name, cards, full) for name, (cards, full) in LIKE.items()]
    cases.append(("terabyte, --max-ind-range 40M", [min(c, 40_000_000) for c in TERABYTE], TERABYTE_LINES))  # MLPerf's
    for name, cards, full in cases:
        entries = np.minimum(per_piece, lines_per_piece) * (full / lines_per_piece)
        for cores in CORES:
            cpu = full * per_line * inflation / cores
            merge_s = max(entries.sum() * per_entry / min(cores, 26), entries.max() * per_entry)
            io = full * io_per_line / (DISK_GBPS * 1e9)
            biggest = sorted(cards, reverse=True)[:min(cores, 26)]
            mem = max(cores * worker_rss, min(cores, 26) * worker_rss + merge["bytes_per_distinct"] * sum(biggest))
            cache = full * (4 * 14 + 4 * 26)
            rows.append({"data": name, "cores": cores, "cpu_h": (cpu + merge_s) / 3600, "merge_h": merge_s / 3600,
                         "disk_gbps": full * io_per_line / (cpu + merge_s) / 1e9, "io_h": (io + merge_s) / 3600,
                         "ram_gb": (mem + one["rss_driver"]) / 1e9, "text_gb": full * bytes_per_line / 1e9,
                         "cache_gb": cache / 1e9, "peak_disk_gb": disk_ratio * cache / 1e9})
    return rows


def _hours(h: float) -> str:
    return f"{h:.1f} h" if h >= 1 else f"{60 * h:.0f} min" if h >= 1 / 60 else f"{3600 * h:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--like", choices=sorted(LIKE), default="kaggle")
    ap.add_argument("--files", type=int, default=4, help="day files (terabyte-like input)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--piece-mb", type=float, default=64.0)
    ap.add_argument("--frequency-threshold", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs per worker count")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="PCT",
                    help="before each round of runs, wait until /proc/pressure/cpu avg10 < PCT (0: do not wait)")
    ap.add_argument("--torchrec-lines", type=int, default=500_000, help="prefix for TorchRec's pipeline (0: skip)")
    ap.add_argument("--no-merge-check", action="store_true", help="skip the full-scale merge of Kaggle's largest field")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_criteo_"))
    piece_bytes = int(args.piece_mb * (1 << 20))
    try:
        t = time.perf_counter()
        raw = write_input(tmp, args.like, args.lines, args.files)
        text = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        print(f"input: {args.lines:,} lines, {args.like}-like, {text / 1e6:.0f} MB ({text / args.lines:.0f} B/line), "
              f"written in {time.perf_counter() - t:.1f} s", flush=True)
        runs = []
        for _ in range(args.repeat):
            if args.wait_quiet:
                _wait_quiet(args.wait_quiet)
            for w in args.workers:
                r = run_prepare(raw, args.like, tmp / f"cache{w}", w, piece_bytes, args.frequency_threshold)
                runs.append(r)
                tasks = r["stats"]["cpu"]
                print(f"  workers {w}: {r['seconds']:.1f} s, {args.lines / r['seconds']:,.0f} lines/s, process tree cpu "
                      f"{r['cpu']:.1f} s (tasks: " + ", ".join(f"{k} {v:.1f}" for k, v in tasks.items())
                      + f"), other processes used {r['others']:.2f} cores meanwhile", flush=True)
        # the round whose runs had the least other load (all rounds when nothing else runs)
        rounds = [runs[i:i + len(args.workers)] for i in range(0, len(runs), len(args.workers))]
        quiet = min(rounds, key=lambda rd: (round(max(r["others"] for r in rd), 1), sum(r["seconds"] for r in rd)))
        best = {r["workers"]: r for r in quiet}
        print(f"kept the round with other load <= {max(r['others'] for r in quiet):.2f} cores")
        base = best[args.workers[0]]
        same = all((tmp / f"cache{w}" / n).read_bytes() == (tmp / f"cache{args.workers[0]}" / n).read_bytes()
                   for w in args.workers for n in ("dense.npy", "sparse.npy", "labels.npy", "meta.json"))
        cards = base["meta"]["cardinalities"]
        print(f"distinct values: {sum(cards):,} ({sum(cards) / args.lines:.2f} per line; full {args.like}: "
              f"{sum(LIKE[args.like][0]) / LIKE[args.like][1]:.2f}); largest fields {sorted(cards, reverse=True)[:4]}")
        print(f"caches identical across worker counts: {same}")
        print("| workers | seconds | lines/s | ratio | other load | task CPU s (parse/merge/write) | stage s (parse/merge/write) "
              "| peak RssAnon (driver, worker) | written (work + cache) | peak disk | cache |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for w, r in best.items():
            s, c = r["stats"]["seconds"], r["stats"]["cpu"]
            written = r["stats"]["work_bytes"] + r["final"]
            print(f"| {w} | {r['seconds']:.1f} | {args.lines / r['seconds']:,.0f} | {base['seconds'] / r['seconds']:.2f}x "
                  f"| {r['others']:.2f} cores "
                  f"| {sum(c.values()):.1f} ({c['parse']:.1f}/{c['merge']:.1f}/{c['write']:.1f}) "
                  f"| {s['parse']:.1f}/{s['merge']:.1f}/{s['write']:.1f} | {r['rss'] / 1e6:.0f} MB ({r['rss_driver'] / 1e6:.0f}, "
                  f"{r['rss_worker'] / 1e6:.0f}) | {written / 1e6:.0f} MB | {r['disk_peak'] / 1e6:.0f} MB "
                  f"| {r['final'] / 1e6:.0f} MB |")
        result = {"args": vars(args), "text_bytes": text, "runs": runs}
        if args.torchrec_lines:
            try:
                import torchrec  # noqa: F401
            except ImportError:
                print("TorchRec baseline: torchrec is not installed, skipped")
            else:  # pragma: no cover
                n = min(args.torchrec_lines, args.lines)
                pre = prefix_input(raw, args.like, args.files, n, tmp / "prefix")
                ours = run_prepare(pre, args.like, tmp / "prefix_cache", 1, piece_bytes, 0)
                theirs = run_torchrec(pre, args.like, args.files, tmp / "torchrec")
                print(f"same {n:,}-line prefix: TorchRec tsv_to_npys + sparse_to_contiguous {theirs['seconds']:.1f} s "
                      f"({n / theirs['seconds']:,.0f} lines/s, peak RssAnon {theirs['rss'] / 1e6:.0f} MB); "
                      f"compemb 1 worker {ours['seconds']:.1f} s ({n / ours['seconds']:,.0f} lines/s, "
                      f"{ours['rss'] / 1e6:.0f} MB): {theirs['seconds'] / ours['seconds']:.1f}x")
                result["torchrec"] = {"lines": n, "torchrec": theirs, "compemb": ours}
        if not args.no_merge_check and len(best) > 1:
            card, full = KAGGLE[2], KAGGLE_LINES  # calibrated at full size: ~10M distinct, near uniform
            alpha = field_alphas([card], full, full)[0]
            merge = merge_check(card, full, int(args.lines / base["stats"]["pieces"]), alpha)
            ns = 1e9 * merge["seconds"] / merge["entries"]
            print(f"full-scale merge of Kaggle's C3 ({merge['pieces']} pieces, {merge['entries']:,} entries, "
                  f"{merge['distinct']:,} distinct): {merge['seconds']:.1f} CPU s, {ns:.0f} ns per entry, "
                  f"{merge['bytes_per_distinct']:.0f} B per distinct value at its peak", flush=True)
            two = best[args.workers[1]]
            rows = projection(base, two, args.lines, text / args.lines, merge)
            result["merge_check"], result["projection"] = merge, rows
            print(f"projection (README.md); I/O-bound column at {DISK_GBPS:g} GB/s:")
            print("| data set | cores | time, compute-bound (of which merge) | disk bandwidth to keep up | time at "
                  f"{DISK_GBPS:g} GB/s | RAM | cache | peak disk |")
            print("|---|---|---|---|---|---|---|---|")
            for row in rows:
                print(f"| Criteo {row['data']} | {row['cores']} | {_hours(row['cpu_h'])} ({_hours(row['merge_h'])}) "
                      f"| {row['disk_gbps']:.1f} GB/s | {_hours(max(row['cpu_h'], row['io_h']))} | {row['ram_gb']:.1f} GB "
                      f"| {row['cache_gb']:.0f} GB | {row['peak_disk_gb']:.0f} GB |")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
