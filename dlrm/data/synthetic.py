"""Criteo-shaped synthetic data: 13 dense and 26 categorical features with the real Kaggle
cardinalities (divided by ``scale``), power-law category frequencies and labels from a hidden
teacher model.

Generation is deterministic per ``seed`` and done in fixed chunks of :data:`CHUNK_ROWS` rows, each
drawn from its own seed (``SeedSequence([seed, chunk])``), so the first N rows are the same
whatever the total and big data sets never need to be in memory at once.

* Categories: feature f with ``n_f = max(2, ceil(kaggle_card_f / scale))`` categories draws a rank
  from a continuous power law ``p(r) ~ r^-alpha`` on ``[1, n_f + 1)`` (Zipf-like, alpha = 1.1 by
  default) and maps ranks to ids by a seeded affine permutation ``id = (a r + b) mod n_f``, so the
  frequent ids are spread over the id range rather than being 0, 1, 2, ...
* Dense: raw integer counts ``floor(exp(N(mu, sigma))) - 1`` (so some are -1, i.e. negative), some
  missing; the data set's dense features are DLRM's ``log(1 + max(x, 0))`` with missing -> 0.
* Teacher: every (feature, category) owns a random vector ``e_f(c)`` in R^4 whose entries are
  uniform with unit variance, computed by hashing (seed, f, j, c) (so identity, not the id's
  size, carries the signal, and no table is stored). The logit is
  ``bias + w . dense + 0.35 sum_f e_f(c_f)[0] + 0.35 sum_{(f,g) in P} <e_f(c_f), e_g(c_g)> / 2``
  over 13 random feature pairs P, and the label is Bernoulli(sigmoid(logit)); the bias is set on
  a pilot sample so that the click rate is about 25% (Criteo's is 25.6%). A model whose tables
  merge categories (hashing) loses the per-category values; a full table can learn them.
* Splits: the 7 pseudo-day convention of Criteo Kaggle (days 0-5 train, day 6 halved into test,
  then validation).
* Text: :func:`write_criteo_text` writes the rows in the exact Criteo format. Category c of
  feature f is written as the 8-hex-digit value ``mix_f(c)`` of a bijection of 32-bit integers
  with ``mix_f(0) == 0``; category 0 of features C3, C4, C12, C16, C19-C21, C24 and C26 (ones that
  are often empty in Criteo) is written as an empty field, which the Criteo loader reads as 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from .batching import (
    CACHE_FORMAT_VERSION,
    CachedDataset,
    RecDataset,
    day_split_ranges,
    pseudo_day_counts,
    write_cache_meta,
)

__all__ = [
    "KAGGLE_CARDINALITIES",
    "SyntheticCriteo",
    "load_synthetic",
    "write_criteo_text",
    "write_synthetic_cache",
    "scaled_cardinalities",
]

# DESIGN.md: Criteo Kaggle cardinalities after DLRM-style preprocessing.
KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
NUM_DENSE = 13
NUM_SPARSE = 26
CHUNK_ROWS = 1 << 16
TEACHER_DIM = 4
EMPTY_WHEN_ZERO = (2, 3, 11, 15, 18, 19, 20, 23, 25)  # 0-based features whose category 0 is written empty
_MASK32 = np.uint64(0xFFFFFFFF)


def scaled_cardinalities(scale: float) -> List[int]:
    """``max(2, ceil(c / scale))`` for each Kaggle cardinality c."""
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 1:
        raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
    return [max(2, math.ceil(c / scale)) for c in KAGGLE_CARDINALITIES]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _mix32(x: np.ndarray, f: int) -> np.ndarray:
    """A bijection of 32-bit integers for feature f with 0 -> 0 (odd multiplies and xor-shifts)."""
    odd = np.uint64((int(_splitmix64(np.array([1000 + f]))[0]) & 0xFFFFFFFF) | 1)
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) * odd) & _MASK32
        z ^= z >> np.uint64(16)
        z = (z * np.uint64(0x45D9F3B)) & _MASK32
        z ^= z >> np.uint64(16)
    return z


@dataclass
class SyntheticCriteo:
    """The generator. ``chunk(i)`` is rows ``[i * CHUNK_ROWS, (i + 1) * CHUNK_ROWS)``.

    Args:
        seed: everything (teacher, rows) is a function of it.
        scale: Kaggle cardinalities are divided by it (>= 1).
        alpha: the power-law exponent of the category frequencies (> 0, != 1).

    Example:
        >>> gen = SyntheticCriteo(seed=0, scale=1000.0)
        >>> raw_dense, missing, cats, labels = gen.rows(0, 10)
        >>> cats.shape, labels.shape
        ((10, 26), (10,))
    """

    seed: int = 0
    scale: float = 100.0
    alpha: float = 1.1
    cardinalities: List[int] = field(init=False)

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not (self.alpha > 0) or self.alpha == 1.0:
            raise ValueError(f"alpha must be > 0 and != 1, got {self.alpha!r}")
        self.cardinalities = scaled_cardinalities(self.scale)
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 7919]))
        self._perm_a = []
        self._perm_b = []
        for n in self.cardinalities:
            a = int(rng.integers(1, n)) if n > 1 else 1
            while math.gcd(a, n) != 1:
                a += 1
            self._perm_a.append(a)
            self._perm_b.append(int(rng.integers(0, n)))
        self._dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
        self._dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self._dense_missing = rng.uniform(0.0, 0.4, NUM_DENSE)
        self._w_dense = rng.normal(0.0, 0.15, NUM_DENSE)
        pairs = [(f, g) for f in range(NUM_SPARSE) for g in range(f + 1, NUM_SPARSE)]
        pick = rng.choice(len(pairs), size=13, replace=False)
        self.teacher_pairs = [pairs[i] for i in sorted(pick)]
        self._keys = _splitmix64(np.array([int(self.seed) * 1_000_003 + f * 16 + j for f in range(NUM_SPARSE)
                                           for j in range(TEACHER_DIM)], dtype=np.uint64)).reshape(NUM_SPARSE, TEACHER_DIM)
        self._bias = 0.0
        logits = self._logits(*self._features(np.random.default_rng(np.random.SeedSequence([int(self.seed), 104729])), 20000))
        # bias such that the mean click probability on the pilot sample is 0.25
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (1 / (1 + np.exp(-(logits + mid)))).mean() < 0.25:
                lo = mid
            else:
                hi = mid
        self._bias = (lo + hi) / 2

    def teacher_vectors(self, f: int, cats: np.ndarray) -> np.ndarray:
        """``e_f(c)`` for an int array of categories: float64 ``(len, 4)``, entries U(-sqrt3, sqrt3)."""
        c = np.asarray(cats, dtype=np.uint64)
        h = _splitmix64(c[:, None] ^ self._keys[f][None, :])
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return (u * 2.0 - 1.0) * math.sqrt(3.0)

    def _features(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw = np.floor(np.exp(rng.normal(self._dense_mu, self._dense_sigma, size=(n, NUM_DENSE)))).astype(np.int64) - 1
        missing = rng.random((n, NUM_DENSE)) < self._dense_missing
        cats = np.empty((n, NUM_SPARSE), dtype=np.int64)
        u = rng.random((n, NUM_SPARSE))
        a1 = 1.0 - self.alpha
        for f, card in enumerate(self.cardinalities):
            top = (card + 1.0) ** a1
            rank = np.floor((1.0 + u[:, f] * (top - 1.0)) ** (1.0 / a1)).astype(np.int64) - 1
            np.clip(rank, 0, card - 1, out=rank)
            cats[:, f] = (self._perm_a[f] * rank + self._perm_b[f]) % card
        return raw, missing, cats

    @staticmethod
    def dense_features(raw: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """DLRM's preprocessing of raw dense counts: missing -> 0, negative -> 0, log(1 + x)."""
        x = np.where(missing, 0, np.maximum(raw, 0))
        return np.log(x.astype(np.float64) + 1.0).astype(np.float32)

    def _logits(self, raw, missing, cats) -> np.ndarray:
        dense = self.dense_features(raw, missing).astype(np.float64)
        logit = self._bias + (dense - 1.5) @ self._w_dense
        vecs = [self.teacher_vectors(f, cats[:, f]) for f in range(NUM_SPARSE)]
        for v in vecs:
            logit += 0.35 * v[:, 0]
        for f, g in self.teacher_pairs:
            logit += 0.35 * (vecs[f] * vecs[g]).sum(axis=1) / math.sqrt(TEACHER_DIM)
        return logit

    def chunk(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Chunk ``index``: (raw dense int64 (C, 13), missing bool (C, 13), categories int64
        (C, 26), labels float32 (C,)) with C = CHUNK_ROWS."""
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 1, int(index)]))
        raw, missing, cats = self._features(rng, CHUNK_ROWS)
        p = 1.0 / (1.0 + np.exp(-self._logits(raw, missing, cats)))
        labels = (rng.random(CHUNK_ROWS) < p).astype(np.float32)
        return raw, missing, cats, labels

    def click_probability(self, raw: np.ndarray, missing: np.ndarray, cats: np.ndarray) -> np.ndarray:
        """The teacher's P(label = 1) for given rows (the Bayes-optimal predictor)."""
        return 1.0 / (1.0 + np.exp(-self._logits(raw, missing, cats)))

    def rows(self, start: int, stop: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``[start, stop)`` as in :meth:`chunk`."""
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got {start}, {stop}")
        parts = [self.chunk(i) for i in range(start // CHUNK_ROWS, -(-stop // CHUNK_ROWS))]
        if not parts:
            return (np.zeros((0, NUM_DENSE), np.int64), np.zeros((0, NUM_DENSE), bool),
                    np.zeros((0, NUM_SPARSE), np.int64), np.zeros(0, np.float32))
        off = start - (start // CHUNK_ROWS) * CHUNK_ROWS
        dense, missing, sparse, labels = (np.concatenate(a)[off:off + stop - start] for a in zip(*parts))
        return dense, missing, sparse, labels

    def iter_rows(self, num_rows: int, block: int = CHUNK_ROWS) -> Iterator[Tuple[int, Tuple[np.ndarray, ...]]]:
        """Yield (start, rows) blocks covering ``[0, num_rows)``."""
        for start in range(0, num_rows, block):
            yield start, self.rows(start, min(start + block, num_rows))


def _check_rows(rows: int) -> int:
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 7:
        raise ValueError(f"rows must be an int >= 7 (one per pseudo-day), got {rows!r}")
    return int(rows)


def load_synthetic(rows: int = 100_000, scale: float = 100.0, seed: int = 0, alpha: float = 1.1,
                   days: int = 7, path: Optional[Union[str, Path]] = None) -> RecDataset:
    """The synthetic data set in memory (or, with ``path``, a cache written by
    :func:`write_synthetic_cache`, memory-mapped).

    Args:
        rows: number of samples. scale: cardinality divisor. seed: generator seed.
        alpha: power-law exponent. days: pseudo-days (last one halved into test and val).
        path: open this synthetic cache directory instead of generating.

    Example:
        >>> ds = load_synthetic(rows=1000, scale=1e5)
        >>> ds.num_dense, len(ds.feature_names), len(ds.split("train"))
        (13, 26, 858)
    """
    if path is not None:
        return CachedDataset.open(path)
    rows = _check_rows(rows)
    gen = SyntheticCriteo(seed=seed, scale=scale, alpha=alpha)
    dense = np.empty((rows, NUM_DENSE), dtype=np.float32)
    sparse = np.empty((rows, NUM_SPARSE), dtype=np.int32)
    labels = np.empty(rows, dtype=np.float32)
    for start, (raw, missing, cats, lab) in gen.iter_rows(rows):
        stop = start + len(lab)
        dense[start:stop] = gen.dense_features(raw, missing)
        sparse[start:stop] = cats
        labels[start:stop] = lab
    splits = day_split_ranges(pseudo_day_counts(rows, days))
    info = {"seed": seed, "scale": scale, "alpha": alpha, "rows": rows, "days": days,
            "label_rate": float(labels.mean(dtype=np.float64))}
    return RecDataset("synthetic", dense, labels, sparse, [f"C{i}" for i in range(1, NUM_SPARSE + 1)],
                      gen.cardinalities, splits, dense_names=[f"I{i}" for i in range(1, NUM_DENSE + 1)], info=info)


def hex_values(cats: np.ndarray) -> np.ndarray:
    """The 32-bit values written for categories ``cats`` (N, 26): ``mix_f(c)`` per feature."""
    out = np.empty(cats.shape, dtype=np.uint64)
    for f in range(cats.shape[1]):
        out[:, f] = _mix32(cats[:, f], f)
    return out


def format_criteo_lines(raw: np.ndarray, missing: np.ndarray, cats: np.ndarray, labels: np.ndarray) -> List[str]:
    """Rows as Criteo text lines (no newline)."""
    hexv = hex_values(cats)
    cols: List[List[str]] = [[str(int(x)) for x in labels.tolist()]]
    for j in range(NUM_DENSE):
        cols.append(["" if m else str(v) for v, m in zip(raw[:, j].tolist(), missing[:, j].tolist())])
    for f in range(NUM_SPARSE):
        col = [format(v, "08x") for v in hexv[:, f].tolist()]
        if f in EMPTY_WHEN_ZERO:
            col = ["" if c == 0 else s for s, c in zip(col, cats[:, f].tolist())]
        cols.append(col)
    return ["\t".join(fields) for fields in zip(*cols)]


def write_criteo_text(path: Union[str, Path], rows: int, scale: float = 100.0, seed: int = 0,
                      alpha: float = 1.1, progress: bool = False) -> Path:
    """Write ``rows`` synthetic samples to ``path`` in the Criteo text format, chunk by chunk.

    Example:
        >>> import tempfile, os
        >>> p = write_criteo_text(os.path.join(tempfile.mkdtemp(), "train.txt"), 20, scale=1e5)
        >>> len(p.read_text().splitlines())
        20
    """
    from tqdm.auto import tqdm

    rows = _check_rows(rows)
    gen = SyntheticCriteo(seed=seed, scale=scale, alpha=alpha)
    path = Path(path)
    with open(path, "w", newline="\n") as f, tqdm(total=rows, unit="rows", disable=not progress, desc="synthetic") as bar:
        for _, (raw, missing, cats, lab) in gen.iter_rows(rows):
            f.write("\n".join(format_criteo_lines(raw, missing, cats, lab)))
            f.write("\n")
            bar.update(len(lab))
    return path


def write_synthetic_cache(directory: Union[str, Path], rows: int, scale: float = 100.0, seed: int = 0,
                          alpha: float = 1.1, days: int = 7, progress: bool = False) -> Path:
    """Write the synthetic data set as a memory-mapped cache (the Criteo cache's layout), chunk by
    chunk; open it with ``load_dataset("synthetic", path=directory)``."""
    from tqdm.auto import tqdm

    rows = _check_rows(rows)
    gen = SyntheticCriteo(seed=seed, scale=scale, alpha=alpha)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "meta.json").exists():
        (directory / "meta.json").unlink()
    dense = np.lib.format.open_memmap(directory / "dense.npy", mode="w+", dtype=np.float32, shape=(rows, NUM_DENSE))
    sparse = np.lib.format.open_memmap(directory / "sparse.npy", mode="w+", dtype=np.int32, shape=(rows, NUM_SPARSE))
    labels = np.lib.format.open_memmap(directory / "labels.npy", mode="w+", dtype=np.float32, shape=(rows,))
    total_pos = 0.0
    with tqdm(total=rows, unit="rows", disable=not progress, desc="synthetic") as bar:
        for start, (raw, missing, cats, lab) in gen.iter_rows(rows):
            stop = start + len(lab)
            dense[start:stop] = gen.dense_features(raw, missing)
            sparse[start:stop] = cats
            labels[start:stop] = lab
            total_pos += float(lab.sum())
            bar.update(len(lab))
    for mm in (dense, sparse, labels):
        mm.flush()
    del dense, sparse, labels
    day_rows = pseudo_day_counts(rows, days)
    meta = {
        "name": "synthetic",
        "options": {"seed": seed, "scale": scale, "alpha": alpha, "days": days, "format_version": CACHE_FORMAT_VERSION},
        "num_rows": rows,
        "day_rows": day_rows,
        "splits": {k: [r.start, r.stop] for k, r in day_split_ranges(day_rows).items()},
        "feature_names": [f"C{i}" for i in range(1, NUM_SPARSE + 1)],
        "dense_names": [f"I{i}" for i in range(1, NUM_DENSE + 1)],
        "cardinalities": gen.cardinalities,
        "label_rate": total_pos / rows,
    }
    write_cache_meta(directory, meta)
    return directory
