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
* with ``frequency_threshold`` t > 1 (TorchRec's ``sparse_to_contiguous``): a value seen fewer
  than t times in all the files (after the modulo) maps to the shared id 0, the others to
  1, 2, ... in order of first appearance (TorchRec's ids minus one: it starts at 2 and shares 1);
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

Building the cache (``dlrm/data/_criteo_build.py`` has the details):

* **parallel**: the files are cut into pieces of ``piece_bytes`` at line ends; worker processes
  parse the pieces, then merge the 26 fields' value lists (one field per task), then write the
  pieces' rows. The text is read once, with vectorised numpy (no Python object per line).
* **deterministic**: ids are by first appearance over all files whatever the number of workers or
  the piece size, so the cache (arrays and ``meta.json``) is the same, byte for byte.
* **bounded memory**: a parse or write task holds one piece; a merge task holds one field's
  distinct values (about 64 bytes each). Peak memory depends on the distinct values, not on the
  number of lines; an estimate is logged before work starts (:func:`estimate_resources`), and
  ``max_ind_range``, ``frequency_threshold`` or fewer ``merge_workers`` bound it further.
* **resumable**: every finished piece or field is kept; a run killed at any point (``kill -9``
  included) restarts where it stopped and ends with the same bytes. ``meta.json`` is written last
  and atomically: a cache without it, or with arrays shorter than it says, is rebuilt.

The cache remembers each source file's size and mtime and the options; a change rebuilds it. One
builder at a time per cache: others wait on ``<cache>/.lock``, then use the finished cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._criteo_build import KILL_ENV, ResourceEstimate, build, estimate, fingerprint, usable_cpus  # noqa: F401
from ._criteo_parse import MAX_REPORTED_LINES, NUM_FIELDS, REASONS  # noqa: F401 (part of this module's namespace)
from ._criteo_parse import NUM_DENSE, NUM_SPARSE, criteo_feature_names
from .batching import CACHE_FORMAT_VERSION, CachedDataset, cache_root

__all__ = ["NUM_DENSE", "NUM_SPARSE", "preprocess_criteo", "load_criteo", "criteo_feature_names",
           "estimate_resources", "ResourceEstimate", "default_cache_dir", "remove_cache"]

DEFAULT_PIECE_BYTES = 64 << 20
DEFAULT_CHUNK_BYTES = 1 << 20  # faster than larger buffers (cache-resident temporaries)


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


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _validate_options(dataset: str, days: Optional[int], max_ind_range: Optional[int],
                      frequency_threshold: Optional[int] = None) -> Tuple[str, int, Optional[int], int]:
    if dataset in ("kaggle", "criteo-kaggle"):
        dataset = "kaggle"
    elif dataset in ("terabyte", "criteo-terabyte"):
        dataset = "terabyte"
    else:
        raise ValueError(f"dataset must be 'kaggle' or 'terabyte', got {dataset!r}")
    if days is None:
        days = 7 if dataset == "kaggle" else 24
    days = _positive_int("days", days, minimum=2)
    if max_ind_range is not None and (isinstance(max_ind_range, bool) or not isinstance(max_ind_range, (int, np.integer))):
        raise TypeError(f"max_ind_range must be an int, got {max_ind_range!r}")
    if max_ind_range is not None and max_ind_range <= 0:
        max_ind_range = None  # DLRM's -1 means "no reduction"
    threshold = 0 if frequency_threshold is None else _positive_int("frequency_threshold", frequency_threshold, minimum=0)
    threshold = threshold if threshold > 1 else 0  # 0 and 1 both keep every value
    return dataset, days, (int(max_ind_range) if max_ind_range is not None else None), threshold


def default_cache_dir(raw_data_file: Union[str, Path], dataset: str = "kaggle", days: Optional[int] = None,
                      max_ind_range: Optional[int] = None, frequency_threshold: Optional[int] = None) -> Path:
    """``cache_root()/criteo/<dataset>-<hash of path and options>``."""
    dataset, days, max_ind_range, threshold = _validate_options(dataset, days, max_ind_range, frequency_threshold)
    key = f"{Path(raw_data_file).expanduser().resolve()}|{days}|{max_ind_range}" + (f"|{threshold}" if threshold else "")
    return cache_root() / "criteo" / f"{dataset}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _first_malformed(meta: dict) -> Optional[Tuple[str, int, str]]:
    best = None
    for reason, rep in meta.get("malformed", {}).items():
        for e in rep["first"][:1]:
            key = (e["file_index"], e["line"])
            if best is None or key < best[0]:
                best = (key, e["file"], e["line"], reason)
    return None if best is None else best[1:]


def _complete(cache: Path, options: dict, sources: List[dict]) -> Optional[dict]:
    """The cache's meta if it is a finished cache for these options and sources, else None."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
        if meta.get("options") != options or meta.get("sources") != sources:
            return None
        n = max(int(meta["num_rows"]), 1)
        for name, width in (("dense", NUM_DENSE), ("labels", 1), ("sparse", NUM_SPARSE)):
            arr = np.load(cache / f"{name}.npy", mmap_mode="r")
            if arr.shape[0] < n or (arr.ndim == 2 and arr.shape[1] != width):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def preprocess_criteo(
    raw_data_file: Union[str, Path],
    cache_dir: Optional[Union[str, Path]] = None,
    *,
    dataset: str = "kaggle",
    days: Optional[int] = None,
    max_ind_range: Optional[int] = None,
    frequency_threshold: Optional[int] = None,
    strict: bool = False,
    progress: bool = True,
    workers: Optional[int] = 1,
    merge_workers: Optional[int] = None,
    piece_bytes: int = DEFAULT_PIECE_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    force: bool = False,
    log: Optional[Callable[[str], None]] = None,
    require_splits: bool = False,
) -> Path:
    """Preprocess Criteo text into a memory-mapped cache (once) and return the cache directory.

    Args:
        raw_data_file: Kaggle: the path of ``train.txt``. Terabyte: the prefix of the day files
            (``/data/day`` for ``/data/day_0`` ... ``/data/day_{days-1}``).
        cache_dir: where to write; default :func:`default_cache_dir`.
        dataset: ``"kaggle"`` or ``"terabyte"``.
        days: pseudo-days (Kaggle, default 7) or day files (Terabyte, default 24).
        max_ind_range: if > 0, categorical hex values are reduced modulo it before remapping.
        frequency_threshold: if > 1, values seen fewer times share id 0 (see the module doc).
        strict: raise ``ValueError`` at the first malformed line instead of skipping it (with a
            valid cache, raise if the cache recorded malformed lines).
        progress: show tqdm progress bars and log the resource estimate to stderr.
        workers: worker processes, at most one per piece; ``None``: the CPUs this process may
            use (the default of ``compemb data prepare criteo``); 1 (the default here) runs
            everything in this process. The output does not depend on it. Workers come from
            multiprocessing's forkserver, which imports the main module: a script that asks for
            more than one needs ``if __name__ == "__main__":``.
        merge_workers: fields merged at once (default ``workers``); each holds one field's
            distinct values, so this bounds the peak memory.
        piece_bytes: bytes of text per piece, the unit of work and of resumption.
        chunk_bytes: bytes parsed at once within a piece.
        force: rebuild from scratch even if a valid cache or a resumable build exists.
        log: called with the estimate and progress lines (default: stderr when ``progress``).
        require_splits: refuse, after parsing and before anything is written, a split into days
            that leaves a day empty (so the test and validation splits would be empty); the
            ``compemb data prepare`` command asks for it.

    Returns:
        The cache directory (open it with :class:`~dlrm.data.batching.CachedDataset`).

    Raises:
        FileNotFoundError: a source file is missing. ValueError: bad options, or strict mode and a
        malformed line (the message names the file, line number and reason).

    Example:
        >>> cache = preprocess_criteo("/data/day", dataset="terabyte", max_ind_range=40_000_000,
        ...                           frequency_threshold=3, workers=16)  # doctest: +SKIP
    """
    dataset, days, max_ind_range, threshold = _validate_options(dataset, days, max_ind_range, frequency_threshold)
    if workers is not None:
        workers = _positive_int("workers", workers)
    if merge_workers is not None:
        merge_workers = _positive_int("merge_workers", merge_workers)
    piece_bytes = _positive_int("piece_bytes", piece_bytes)
    chunk_bytes = _positive_int("chunk_bytes", chunk_bytes)
    files = _source_files(raw_data_file, dataset, days)
    cache = (Path(cache_dir).expanduser() if cache_dir is not None
             else default_cache_dir(raw_data_file, dataset, days, max_ind_range, threshold))
    options = {"dataset": dataset, "days": days, "max_ind_range": max_ind_range, "frequency_threshold": threshold,
               "format_version": CACHE_FORMAT_VERSION}
    sources = fingerprint(files)
    if log is None and progress:
        def log(line: str) -> None:
            print(line, file=sys.stderr)
    # A finished cache is only read: no lock file, so it also works on a read-only file system.
    meta = None if force else _complete(cache, options, sources)
    if meta is not None:
        return _finished(cache, meta, strict)
    _check_writable_cache(cache)
    # One builder at a time per cache (e.g. several sweep workers starting together): the others
    # wait here, then find its complete cache instead of rebuilding the files under it.
    with _cache_lock(cache):
        meta = None if force else _complete(cache, options, sources)
        if meta is not None:
            return _finished(cache, meta, strict)
        if force:
            for stale in cache.glob(".work-*"):
                shutil.rmtree(stale, ignore_errors=True)
        _build(files, cache, dataset=dataset, days=days, max_ind_range=max_ind_range, frequency_threshold=threshold,
               require_splits=require_splits, strict=strict, progress=progress, chunk_bytes=chunk_bytes,
               piece_bytes=piece_bytes, workers=workers,
               merge_workers=merge_workers, options=options, sources=sources, log=log)
    return cache


def _finished(cache: Path, meta: dict, strict: bool) -> Path:
    for stale in cache.glob(".work-*"):  # a build killed after its meta.json was written
        shutil.rmtree(stale, ignore_errors=True)
    if strict:
        first = _first_malformed(meta)
        if first is not None:
            raise ValueError(f"{first[0]}:{first[1]}: malformed Criteo line ({first[2]}) "
                             "(strict mode; found in the cache's report)")
    return cache


def _check_writable_cache(cache: Path) -> None:
    """Create the cache directory, or say clearly why it cannot be written."""
    if cache.exists() and not cache.is_dir():
        raise ValueError(f"cache directory {cache} is an existing file; pass --cache-dir a directory")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the cache directory {cache}: {error.strerror or error}") from error
    if not os.access(cache, os.W_OK | os.X_OK):
        raise ValueError(f"cache directory {cache} is not writable (and holds no finished cache for these "
                         "options); pass a writable --cache-dir")


def _build(files, cache, **kwargs) -> dict:
    return build(files, cache, **kwargs)


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


def estimate_resources(
    raw_data_file: Union[str, Path],
    *,
    dataset: str = "kaggle",
    days: Optional[int] = None,
    max_ind_range: Optional[int] = None,
    frequency_threshold: Optional[int] = None,
    workers: int = 1,
    merge_workers: Optional[int] = None,
    piece_bytes: int = DEFAULT_PIECE_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    distinct: Optional[Sequence[int]] = None,
) -> ResourceEstimate:
    """Memory and disk a :func:`preprocess_criteo` run will need, from file sizes and options.

    Lines are estimated from the files' sizes and the first MB; the merge's memory from
    ``distinct`` (expected distinct values per field, e.g. the data set's known cardinalities) or,
    without it, from the bound ``min(lines, max_ind_range, 2**32)`` per field.

    Example:
        >>> print(estimate_resources("/data/train.txt", workers=16))  # doctest: +SKIP
    """
    dataset, days, max_ind_range, threshold = _validate_options(dataset, days, max_ind_range, frequency_threshold)
    workers = _positive_int("workers", workers)
    files = _source_files(raw_data_file, dataset, days)
    return estimate(files, max_ind_range=max_ind_range, frequency_threshold=threshold, workers=workers,
                    merge_workers=min(merge_workers or workers, workers, NUM_SPARSE), piece_bytes=piece_bytes,
                    chunk_bytes=chunk_bytes, distinct=distinct)


def load_criteo(
    raw_data_file: Union[str, Path],
    *,
    dataset: str = "kaggle",
    cache_dir: Optional[Union[str, Path]] = None,
    days: Optional[int] = None,
    max_ind_range: Optional[int] = None,
    frequency_threshold: Optional[int] = None,
    strict: bool = False,
    progress: bool = True,
    workers: Optional[int] = 1,
    force: bool = False,
) -> CachedDataset:
    """Preprocess (if needed) and open a Criteo data set; see :func:`preprocess_criteo`.

    Example:
        >>> ds = load_criteo("/data/train.txt", max_ind_range=10_000_000)  # doctest: +SKIP
        >>> ds.cardinalities[:3], len(ds.split("train"))  # doctest: +SKIP
    """
    cache = preprocess_criteo(raw_data_file, cache_dir, dataset=dataset, days=days, max_ind_range=max_ind_range,
                              frequency_threshold=frequency_threshold, strict=strict, progress=progress,
                              workers=workers, force=force)
    return CachedDataset.open(cache)


def remove_cache(cache_dir: Union[str, Path]) -> None:
    """Delete a cache directory written by :func:`preprocess_criteo`."""
    shutil.rmtree(Path(cache_dir).expanduser(), ignore_errors=True)
