"""Criteo Kaggle (``train.txt``) and Criteo Terabyte (``day_0`` ... ``day_23``) loaders.

Line format (both data sets): ``label \\t I1 ... I13 \\t C1 ... C26 \\n``: a 0/1 label, 13 integer
fields and 26 categorical fields of (up to) 8 hexadecimal digits; any feature field may be empty.

Preprocessing (DLRM's, facebookresearch/dlrm ``data_utils.py`` / ``dlrm_data_pytorch.py``):

* dense: empty -> 0, negative -> 0, then ``log(1 + x)`` (computed in float64, stored float32); a
  dense field must be an optional ``-`` and 1 to 18 decimal digits (so it fits int64);
* categorical: the hex value, reduced modulo ``max_ind_range`` first if given, remapped per feature
  to contiguous ids ``0, 1, ...`` **in order of first appearance** in the file(s); an empty field
  is read as the hex value 0 (as DLRM does), so "missing" gets the id of value 0 (its own id:
  real Criteo data never writes ``00000000``);
* categorical: 1 to 8 hexadecimal digits, either case, or empty;
* label: must be ``0`` or ``1`` (stored float32);
* Kaggle: the file's lines (malformed ones included) are cut into ``days`` (7) equal consecutive
  pseudo-days (``divmod``; the first ``remainder`` days get one more line); days 0-5 train; day 6
  is halved: first half (ceil) test, second half validation, as DLRM does. Terabyte: file
  ``{raw_data_file}_{i}`` is day i (DLRM's naming: ``--raw-data-file /data/day``), the last day
  is halved the same way.

Malformed lines (wrong field count, bad label, non-integer dense, non-hex categorical) are
skipped, counted per reason and reported with their line numbers (the first 100 per reason) in
the cache's ``meta.json`` (``ds.info["malformed"]``); ``strict=True`` raises ``ValueError`` naming
the first one's file, line number and reason.

The text is read once per preprocessing in chunks of bytes and parsed with vectorised numpy
(two streaming passes: pass 1 counts lines, which fixes the pseudo-day boundaries and the array
sizes; pass 2 parses, builds the per-feature dictionaries as it goes and writes the memory maps).
The cache remembers each source file's size and mtime and the options; a change rebuilds it.

Memory: the rows stream (chunks in, memory maps out), but the per-feature dictionaries (value ->
id) are Python dicts held in memory while preprocessing, about 100 bytes per distinct category
(Kaggle: 33.8M categories, a few GB); ``max_ind_range`` bounds them, as in DLRM.
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
from itertools import repeat
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .batching import (
    CACHE_FORMAT_VERSION,
    CachedDataset,
    cache_root,
    day_split_ranges,
    pseudo_day_counts,
    write_cache_meta,
)

__all__ = ["NUM_DENSE", "NUM_SPARSE", "preprocess_criteo", "load_criteo", "criteo_feature_names"]

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
MAX_REPORTED_LINES = 100
REASONS = ("wrong field count", "bad label", "non-integer dense", "non-hex categorical")
_MAX_DENSE_DIGITS = 18  # fits int64

# word masks: _PREFIX64[L] keeps the first (lowest) L bytes of a little-endian word, _SUFFIX64[L]
# the last (highest) L; L = 9 (a field too long) keeps all 8
_PREFIX64 = np.array([(1 << (8 * L)) - 1 for L in range(9)] + [(1 << 64) - 1], dtype=np.uint64)
_SUFFIX64 = np.array([((1 << 64) - 1) ^ ((1 << (8 * (8 - L))) - 1) for L in range(9)], dtype=np.uint64)
_C76 = np.uint64(0x7676767676767676)
_C80 = np.uint64(0x8080808080808080)
_M1 = np.uint64(0x000F000F000F000F)
_M2 = np.uint64(0x000000FF000000FF)
_M3 = np.uint64(0xFFFF)


def criteo_feature_names() -> Tuple[List[str], List[str]]:
    """(dense names ``I1..I13``, categorical names ``C1..C26``), Criteo's own column names."""
    return [f"I{i}" for i in range(1, NUM_DENSE + 1)], [f"C{i}" for i in range(1, NUM_SPARSE + 1)]


def _count_lines(path: Path, block: int = 1 << 24) -> int:
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while True:
            buf = f.read(block)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (0 if last == b"\n" else 1)


def _read_line_chunks(path: Path, chunk_bytes: int) -> Iterator[Tuple[bytes, int]]:
    """Yield (buffer of whole lines, its size in bytes); each buffer holds complete lines."""
    carry = b""
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk_bytes)
            if not buf:
                break
            data = carry + buf
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            yield data[:cut], len(buf)
    if carry:
        yield carry, 0


def _parse_buffer(buf: bytes, max_ind_range: Optional[int]):
    """Parse and validate the lines of ``buf`` (whole lines joined by ``\\n``, no final newline).

    Everything is vectorised over the bytes: no Python object per line or field.

    Returns:
        (line_start int64 (n,), line_end int64 (n,), reason int8 (n,), labels float32 (m,),
        dense float32 (m, 13) after log(1 + x), categorical values int64 (m, 26) after the
        optional modulo), where reason is 0 for a good line else 1 + index into REASONS and the
        last three hold the m good lines in order.
    """
    a = np.frombuffer(buf + b"\n", dtype=np.uint8)
    is_nl = a == 10
    line_end = np.flatnonzero(is_nl)
    n = len(line_end)
    line_start = np.empty(n, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = line_end[:-1] + 1
    delims = np.flatnonzero(is_nl | (a == 9))
    nl_at = np.flatnonzero(is_nl[delims])  # index in delims of each line's newline
    first_delim = np.empty(n, dtype=np.int64)  # index in delims of each line's first delimiter
    first_delim[0] = 0
    first_delim[1:] = nl_at[:-1] + 1
    fields = nl_at - first_delim + 1
    reason = np.zeros(n, dtype=np.int8)
    reason[fields != NUM_FIELDS] = 1
    ok_idx = np.flatnonzero(reason == 0)
    m = len(ok_idx)
    empty = (line_start, line_end, reason, np.zeros(0, np.float32), np.zeros((0, NUM_DENSE), np.float32),
             np.zeros((0, NUM_SPARSE), np.int64))
    if m == 0:
        return empty
    ends = delims[first_delim[ok_idx, None] + np.arange(NUM_FIELDS)]  # (m, 40) end of each field
    starts = np.empty_like(ends)
    starts[:, 0] = line_start[ok_idx]
    starts[:, 1:] = ends[:, :-1] + 1
    lengths = ends - starts

    lab_len = lengths[:, 0]
    lab_char = a[starts[:, 0]]
    bad_label = (lab_len != 1) | ((lab_char != 48) & (lab_char != 49))

    # Fields are decoded with 64-bit word operations: w64[i] is the 8 bytes from a_pad[i] as a
    # little-endian uint64 (an unaligned, overlapping view: one index per field, not per byte).
    c0, d0 = 1 + NUM_DENSE, 1
    pad = 24
    a_pad = np.concatenate([np.zeros(pad, np.uint8), a, np.zeros(pad, np.uint8)])
    w64 = np.ndarray(shape=(len(a_pad) - 7,), dtype="<u8", buffer=a_pad, strides=(1,))

    # categorical: 8 bytes from the field's start; bytes past its end masked off
    clen = np.minimum(lengths[:, c0:], 9)
    inside = _PREFIX64[clen]
    raw = w64[starts[:, c0:] + pad] & inside
    b = raw.view(np.uint8).reshape(m, NUM_SPARSE, 8)
    folded = b | np.uint8(0x20)  # 'A'-'F' -> 'a'-'f'
    valid = ((b - np.uint8(48)) < 10) | ((folded - np.uint8(97)) < 6)
    bad_cat = (((valid.view("<u8")[:, :, 0] * np.uint64(255)) ^ inside) & inside != 0).any(axis=1)
    bad_cat |= (clen > 8).any(axis=1)
    x = ((b & np.uint8(15)) + np.uint8(9) * (b >> np.uint8(6))).view("<u8")[:, :, 0]  # digit values

    # dense: a right-aligned window of 8, 16 or 24 bytes ending at the field's end, digit values
    # ('0' -> 0); only the field's digits are kept (a leading '-' is dropped: negative -> 0)
    dlen = lengths[:, d0:c0]
    dmax = int(min(dlen.max(), _MAX_DENSE_DIGITS + 1))
    nw = max(1, -(-dmax // 8))
    dw = 8 * nw
    isminus0 = (a_pad[starts[:, d0:c0] + pad] == 45) & (dlen > 0)
    ndig = np.minimum(dlen - isminus0, dw)  # digits kept from the right
    first = ends[:, d0:c0, None] + (pad - dw) + 8 * np.arange(nw)
    words = w64[first]  # (m, 13, nw)
    words = (words.view(np.uint8) - np.uint8(48)).view("<u8")
    kept = np.clip(ndig[:, :, None] - (dw - 8 * (np.arange(nw) + 1)), 0, 8)
    words &= _SUFFIX64[kept]
    with np.errstate(over="ignore"):
        bad_dense = (((words + _C76) | words) & _C80 != 0).any(axis=(1, 2))  # a byte > 9: not a digit
    bad_dense |= ((dlen > _MAX_DENSE_DIGITS + 1) | (isminus0 & (dlen == 1))
                  | (~isminus0 & (dlen > _MAX_DENSE_DIGITS))).any(axis=1)

    sub = np.zeros(m, dtype=np.int8)
    sub[bad_cat] = 4
    sub[bad_dense] = 3
    sub[bad_label] = 2
    reason[ok_idx] = sub
    keep = sub == 0
    if not keep.all():
        x, clen, words, isminus0, lab_char = x[keep], clen[keep], words[keep], isminus0[keep], lab_char[keep]

    dval = np.zeros(words.shape[:2], dtype=np.uint64)
    for j in range(nw):
        dval = dval * np.uint64(100_000_000) + _eight_digits(words[:, :, j])
    dval[isminus0] = 0
    dense = np.log(dval.astype(np.float64) + 1.0).astype(np.float32)

    # categorical value: pack the 8 left-aligned nibbles (byte k = k-th digit) into one 32-bit
    # number, then right-align by the field's length
    y = ((x & _M1) << np.uint64(4)) | ((x >> np.uint64(8)) & _M1)  # 16-bit lane i: digits 2i, 2i+1
    z = ((y & _M2) << np.uint64(8)) | ((y >> np.uint64(16)) & _M2)  # 32-bit lane j: digits 4j..4j+3
    v = ((z & _M3) << np.uint64(16)) | ((z >> np.uint64(32)) & _M3)
    cval = (v >> (np.uint64(4) * (np.uint64(8) - clen.astype(np.uint64)))).astype(np.int64)
    if max_ind_range is not None:
        cval %= max_ind_range
    labels = (lab_char == 49).astype(np.float32)
    return line_start, line_end, reason, labels, dense, cval


def _eight_digits(w: np.ndarray) -> np.ndarray:
    """The number written by 8 digit values (0..9), most significant in the lowest byte.

    The multiply-and-shift parse of eight digits in a 64-bit word (as in Lemire's fast number
    parsing): pairs, then the four pairs in one multiply pair.
    """
    with np.errstate(over="ignore"):
        w = w * np.uint64(10) + (w >> np.uint64(8))  # byte 2i: 10 d_2i + d_2i+1
        lo = w & _M2
        hi = (w >> np.uint64(16)) & _M2
        return (lo * np.uint64(100 + (1_000_000 << 32)) + hi * np.uint64(1 + (10_000 << 32))) >> np.uint64(32)


class _Remapper:
    """Per-feature dictionaries value -> contiguous id, in order of first appearance."""

    def __init__(self, num_features: int):
        self.dicts: List[Dict[int, int]] = [dict() for _ in range(num_features)]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        import pandas as pd  # its hash-table factorize keeps first-appearance order, no sort

        out = np.empty(values.shape, dtype=np.int64)
        for j, d in enumerate(self.dicts):
            codes, uniq = pd.factorize(values[:, j])
            keys = uniq.tolist()
            ids = np.fromiter(map(d.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
            new = np.flatnonzero(ids < 0)  # in order of first appearance already
            if len(new):
                start = len(d)
                ids[new] = np.arange(start, start + len(new), dtype=np.int64)
                d.update(zip(uniq[new].tolist(), range(start, start + len(new))))
            out[:, j] = ids[codes]
        return out

    @property
    def cardinalities(self) -> List[int]:
        return [len(d) for d in self.dicts]


def _source_files(raw_data_file: Union[str, Path], dataset: str, days: int) -> List[Path]:
    raw = Path(raw_data_file).expanduser()
    if dataset == "kaggle":
        if not raw.is_file():
            raise FileNotFoundError(f"Criteo Kaggle file {raw} not found (expected train.txt)")
        return [raw]
    files = [Path(f"{raw}_{i}") for i in range(days)]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Criteo Terabyte day files not found: {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                                f"(--raw-data-file is the prefix, e.g. /data/day for /data/day_0 ... /data/day_{days - 1})")
    return files


def _validate_options(dataset: str, days: Optional[int], max_ind_range: Optional[int]) -> Tuple[str, int, Optional[int]]:
    if dataset in ("kaggle", "criteo-kaggle"):
        dataset = "kaggle"
    elif dataset in ("terabyte", "criteo-terabyte"):
        dataset = "terabyte"
    else:
        raise ValueError(f"dataset must be 'kaggle' or 'terabyte', got {dataset!r}")
    if days is None:
        days = 7 if dataset == "kaggle" else 24
    if isinstance(days, bool) or not isinstance(days, (int, np.integer)) or days < 2:
        raise ValueError(f"days must be an int >= 2, got {days!r}")
    if max_ind_range is not None and max_ind_range <= 0:
        max_ind_range = None  # DLRM's -1 means "no reduction"
    if max_ind_range is not None and (isinstance(max_ind_range, bool) or not isinstance(max_ind_range, (int, np.integer))):
        raise TypeError(f"max_ind_range must be an int, got {max_ind_range!r}")
    return dataset, int(days), (int(max_ind_range) if max_ind_range is not None else None)


def _fingerprint(files: Sequence[Path]) -> List[dict]:
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def default_cache_dir(raw_data_file: Union[str, Path], dataset: str = "kaggle", days: Optional[int] = None,
                      max_ind_range: Optional[int] = None) -> Path:
    """``cache_root()/criteo/<dataset>-<hash of path and options>``."""
    dataset, days, max_ind_range = _validate_options(dataset, days, max_ind_range)
    key = f"{Path(raw_data_file).expanduser().resolve()}|{days}|{max_ind_range}"
    return cache_root() / "criteo" / f"{dataset}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _first_malformed(meta: dict) -> Optional[Tuple[str, int, str]]:
    best = None
    for reason, rep in meta.get("malformed", {}).items():
        for e in rep["first"][:1]:
            key = (e["file_index"], e["line"])
            if best is None or key < best[0]:
                best = (key, e["file"], e["line"], reason)
    return None if best is None else best[1:]


def preprocess_criteo(
    raw_data_file: Union[str, Path],
    cache_dir: Optional[Union[str, Path]] = None,
    *,
    dataset: str = "kaggle",
    days: Optional[int] = None,
    max_ind_range: Optional[int] = None,
    strict: bool = False,
    progress: bool = True,
    chunk_bytes: int = 1 << 22,
    force: bool = False,
) -> Path:
    """Preprocess Criteo text into a memory-mapped cache (once) and return the cache directory.

    Args:
        raw_data_file: Kaggle: the path of ``train.txt``. Terabyte: the prefix of the day files
            (``/data/day`` for ``/data/day_0`` ... ``/data/day_{days-1}``).
        cache_dir: where to write; default :func:`default_cache_dir`.
        dataset: ``"kaggle"`` or ``"terabyte"``.
        days: pseudo-days (Kaggle, default 7) or day files (Terabyte, default 24).
        max_ind_range: if > 0, categorical hex values are reduced modulo it before remapping.
        strict: raise ``ValueError`` at the first malformed line instead of skipping it (with a
            valid cache, raise if the cache recorded malformed lines).
        progress: show a tqdm progress bar over the bytes read.
        chunk_bytes: bytes read per chunk.
        force: rebuild even if a valid cache exists.

    Returns:
        The cache directory (open it with :class:`~dlrm.data.batching.CachedDataset`).

    Raises:
        FileNotFoundError: a source file is missing. ValueError: bad options, or strict mode and a
        malformed line (the message names the file, line number and reason).
    """
    dataset, days, max_ind_range = _validate_options(dataset, days, max_ind_range)
    files = _source_files(raw_data_file, dataset, days)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(raw_data_file, dataset, days, max_ind_range)
    options = {"dataset": dataset, "days": days, "max_ind_range": max_ind_range, "format_version": CACHE_FORMAT_VERSION}
    fingerprint = _fingerprint(files)
    meta_path = cache / "meta.json"
    cache.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache (e.g. several sweep workers starting together): the others
    # wait here, then find its complete cache instead of rebuilding the files under it.
    with _cache_lock(cache):
        if not force and meta_path.is_file():
            import json

            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                meta = {}
            if meta.get("options") == options and meta.get("sources") == fingerprint:
                if strict:
                    first = _first_malformed(meta)
                    if first is not None:
                        raise ValueError(f"{first[0]}:{first[1]}: malformed Criteo line ({first[2]}) (strict mode; found in the cache's report)")
                return cache
        _build(files, cache, dataset, days, max_ind_range, strict, progress, chunk_bytes, options, fingerprint)
    return cache


@contextlib.contextmanager
def _cache_lock(cache: Path):
    """An exclusive ``flock`` on ``<cache>/.lock`` (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(cache / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(files, cache: Path, dataset, days, max_ind_range, strict, progress, chunk_bytes, options, fingerprint) -> None:
    from tqdm.auto import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    for name in ("meta.json", "dense.npy", "sparse.npy", "labels.npy"):
        if (cache / name).exists():
            (cache / name).unlink()

    # pass 1: line counts (fix the pseudo-day boundaries and the array sizes)
    line_counts = [_count_lines(p) for p in files]
    total_lines = sum(line_counts)
    if dataset == "kaggle":
        day_lines = pseudo_day_counts(total_lines, days)
    else:
        day_lines = line_counts
    day_ends = np.cumsum(day_lines, dtype=np.int64)  # global 0-based line index boundaries
    max_id = min(total_lines, max_ind_range or total_lines, 1 << 32)
    sparse_dtype = np.int32 if max_id <= np.iinfo(np.int32).max else np.int64
    rows_alloc = max(total_lines, 1)
    dense_mm = np.lib.format.open_memmap(cache / "dense.npy", mode="w+", dtype=np.float32, shape=(rows_alloc, NUM_DENSE))
    sparse_mm = np.lib.format.open_memmap(cache / "sparse.npy", mode="w+", dtype=sparse_dtype, shape=(rows_alloc, NUM_SPARSE))
    labels_mm = np.lib.format.open_memmap(cache / "labels.npy", mode="w+", dtype=np.float32, shape=(rows_alloc,))

    # pass 2: parse, remap, write
    remap = _Remapper(NUM_SPARSE)
    report = {r: {"count": 0, "first": []} for r in REASONS}
    day_rows = np.zeros(days, dtype=np.int64)
    row = 0
    line0 = 0  # global 0-based index of the current chunk's first line
    total_bytes = sum(f["size"] for f in fingerprint)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="criteo preprocess", disable=not progress) as bar:
        for fi, path in enumerate(files):
            file_line0 = line0
            for buf, nbytes in _read_line_chunks(path, chunk_bytes):
                if b"\r" in buf:  # tolerate CRLF line ends
                    buf = buf.replace(b"\r\n", b"\n")
                    if buf.endswith(b"\r"):
                        buf = buf[:-1]
                lstart, lend, reason, labels, dense, cval = _parse_buffer(buf, max_ind_range)
                nlines = len(reason)
                bad = np.flatnonzero(reason)
                if len(bad):
                    if strict:
                        i = int(bad[0])
                        raise ValueError(f"{path}:{line0 - file_line0 + i + 1}: malformed Criteo line "
                                         f"({REASONS[reason[i] - 1]}): {buf[lstart[i]:min(lend[i], lstart[i] + 200)]!r}")
                    for r in range(1, len(REASONS) + 1):
                        hits = bad[reason[bad] == r]
                        if len(hits):
                            rep = report[REASONS[r - 1]]
                            rep["count"] += int(len(hits))
                            room = MAX_REPORTED_LINES - len(rep["first"])
                            for i in hits[:max(room, 0)].tolist():
                                rep["first"].append({"file": path.name, "file_index": fi, "line": line0 - file_line0 + i + 1})
                m = len(labels)
                if m:
                    good_lines = line0 + np.flatnonzero(reason == 0)
                    day_rows += np.bincount(np.searchsorted(day_ends, good_lines, side="right"), minlength=days)[:days]
                    dense_mm[row:row + m] = dense
                    sparse_mm[row:row + m] = remap(cval)
                    labels_mm[row:row + m] = labels
                    row += m
                line0 += nlines
                bar.update(nbytes)
    for mm in (dense_mm, sparse_mm, labels_mm):
        mm.flush()
    del dense_mm, sparse_mm, labels_mm
    if line0 != total_lines:  # the files changed between the passes
        raise RuntimeError(f"line count changed while preprocessing ({total_lines} then {line0}); rerun")
    dense_names, sparse_names = criteo_feature_names()
    cards = [max(c, 1) for c in remap.cardinalities]  # an all-malformed file still gets valid tables
    meta = {
        "name": f"criteo-{dataset}",
        "options": options,
        "sources": fingerprint,
        "num_lines": total_lines,
        "num_rows": row,
        "num_malformed": total_lines - row,
        "malformed": {k: v for k, v in report.items() if v["count"]},
        "day_lines": [int(x) for x in day_lines],
        "day_rows": day_rows.tolist(),
        "splits": {k: [r.start, r.stop] for k, r in day_split_ranges(day_rows.tolist()).items()},
        "feature_names": sparse_names,
        "dense_names": dense_names,
        "cardinalities": cards,
        "sparse_dtype": np.dtype(sparse_dtype).name,
    }
    write_cache_meta(cache, meta)


def load_criteo(
    raw_data_file: Union[str, Path],
    *,
    dataset: str = "kaggle",
    cache_dir: Optional[Union[str, Path]] = None,
    days: Optional[int] = None,
    max_ind_range: Optional[int] = None,
    strict: bool = False,
    progress: bool = True,
    force: bool = False,
) -> CachedDataset:
    """Preprocess (if needed) and open a Criteo data set; see :func:`preprocess_criteo`.

    Example:
        >>> ds = load_criteo("/data/train.txt", max_ind_range=10_000_000)  # doctest: +SKIP
        >>> ds.cardinalities[:3], len(ds.split("train"))  # doctest: +SKIP
    """
    cache = preprocess_criteo(raw_data_file, cache_dir, dataset=dataset, days=days, max_ind_range=max_ind_range,
                              strict=strict, progress=progress, force=force)
    return CachedDataset.open(cache)


def remove_cache(cache_dir: Union[str, Path]) -> None:
    """Delete a cache directory written by :func:`preprocess_criteo`."""
    shutil.rmtree(Path(cache_dir).expanduser(), ignore_errors=True)
