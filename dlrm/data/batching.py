"""Batches, splits and data sets shared by every loader in :mod:`dlrm.data`.

A data set is a set of column arrays (dense features, labels, one-hot categorical columns and,
optionally, multi-hot *bags* stored as CSR) plus named row selections (the splits). Batches are
cut from a split in a deterministic order (a permutation drawn from ``seed``), so a training run
resumed at batch ``k`` with ``start_batch=k`` sees exactly the batches an uninterrupted run sees.

The arrays may be numpy memory maps (:class:`CachedDataset`): only the rows of the current batch
are read, so data sets larger than memory stream from disk.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "Batch",
    "Bag",
    "RecSplit",
    "RecDataset",
    "CachedDataset",
    "cache_root",
    "write_cache_meta",
    "day_split_ranges",
    "pseudo_day_counts",
    "CACHE_FORMAT_VERSION",
]

CACHE_FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")


def cache_root() -> Path:
    """The root of compemb's user cache: ``$COMPEMB_CACHE`` if set, else ``~/.cache/compemb``."""
    env = os.environ.get("COMPEMB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compemb"


@dataclass
class Batch:
    """One mini-batch in the form ``torch.nn.EmbeddingBag`` takes (1-D indices with offsets).

    Attributes:
        dense: float32 ``(B, num_dense)``.
        indices: one int64 1-D tensor per categorical feature, the bag members of all B samples
            one after another (a one-hot feature has exactly one index per sample).
        offsets: one int64 ``(B + 1,)`` tensor per feature; ``offsets[f][0] == 0`` and
            ``offsets[f][-1] == len(indices[f])``; sample ``b`` owns
            ``indices[f][offsets[f][b]:offsets[f][b + 1]]``.
        labels: float32 ``(B,)`` of 0.0 / 1.0.

    Example:
        >>> b = Batch(torch.zeros(2, 1), [torch.tensor([3, 1])], [torch.tensor([0, 1, 2])],
        ...           torch.tensor([1.0, 0.0]))
        >>> len(b), b.num_features
        (2, 1)
    """

    dense: torch.Tensor
    indices: List[torch.Tensor]
    offsets: List[torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_features(self) -> int:
        return len(self.indices)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        """A copy on ``device`` (tensors already there are not copied)."""
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            [t.to(device, non_blocking=non_blocking) for t in self.indices],
            [t.to(device, non_blocking=non_blocking) for t in self.offsets],
            self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "Batch":
        return Batch(
            self.dense.pin_memory(),
            [t.pin_memory() for t in self.indices],
            [t.pin_memory() for t in self.offsets],
            self.labels.pin_memory(),
        )


@dataclass(frozen=True)
class Bag:
    """A multi-hot feature stored as CSR over all rows of a data set.

    ``values[row_ptr[r]:row_ptr[r + 1]]`` are the category ids of row ``r``.
    """

    values: np.ndarray  # int (nnz,)
    row_ptr: np.ndarray  # int64 (N + 1,)


def _as_positions(rows: Union[range, np.ndarray]) -> Union[range, np.ndarray]:
    if isinstance(rows, range):
        if rows.step != 1:
            raise ValueError(f"a split's row range must have step 1, got {rows!r}")
        return rows
    arr = np.asarray(rows)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"split rows must be a range or a 1-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


class RecSplit:
    """The rows of one split (``train``, ``val`` or ``test``) of a :class:`RecDataset`.

    ``len(split)`` is its number of samples; :meth:`batches` cuts it into :class:`Batch` es.
    """

    def __init__(self, dataset: "RecDataset", name: str, rows: Union[range, np.ndarray]):
        self.dataset = dataset
        self.name = name
        self.rows = _as_positions(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"RecSplit({self.dataset.name!r}, {self.name!r}, rows={len(self)})"

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields from ``start_batch=0``."""
        _check_batch_size(batch_size)
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def labels(self) -> np.ndarray:
        """All labels of the split in row order (float32), e.g. for a constant-predictor baseline."""
        return np.asarray(self._global_rows_labels(), dtype=np.float32)

    def _global_rows_labels(self) -> np.ndarray:
        lab = self.dataset._labels
        if isinstance(self.rows, range):
            return np.array(lab[self.rows.start:self.rows.stop])
        return np.asarray(lab[self.rows])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[Batch]:
        """Yield the split's batches in a deterministic order.

        Args:
            batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
            shuffle: visit the rows in the order of a permutation drawn from ``seed``
                (``numpy.random.default_rng(seed)``); otherwise in storage order. Use a different
                seed per epoch (e.g. ``seed + epoch``) for a fresh order each epoch.
            seed: the permutation's seed (ignored without ``shuffle``).
            drop_last: drop a final batch smaller than ``batch_size``.
            start_batch: skip the first ``start_batch`` batches without reading them, so a run
                resumed at batch k sees the same batches as an uninterrupted one.

        Example:
            >>> ds = load_dataset("synthetic", rows=700, scale=1e6)  # doctest: +SKIP
            >>> next(ds.split("train").batches(128, shuffle=True, seed=1)).dense.shape  # doctest: +SKIP
            torch.Size([128, 13])
        """
        for sel in self.batch_rows(batch_size, shuffle, seed, drop_last, start_batch):
            yield self.dataset._make_batch(sel)

    def batch_rows(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[Union[slice, np.ndarray]]:
        """The data set rows of every batch :meth:`batches` yields (same arguments, same checks),
        without reading them: a ``slice`` for a contiguous unshuffled batch, else an int64 array."""
        _check_batch_size(batch_size)
        if not isinstance(start_batch, (int, np.integer)) or start_batch < 0:
            raise ValueError(f"start_batch must be a non-negative int, got {start_batch!r}")
        n = len(self)
        total = self.num_batches(batch_size, drop_last)
        if start_batch > total:
            raise ValueError(f"start_batch={start_batch} is past the end: the split {self.name!r} has "
                             f"{total} batches of {batch_size}")
        order: Optional[np.ndarray] = None
        if shuffle:
            order = np.random.default_rng(seed).permutation(n)
        for b in range(start_batch, total):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            if order is None:
                if isinstance(self.rows, range):
                    yield slice(self.rows.start + lo, self.rows.start + hi)
                else:
                    yield self.rows[lo:hi]
            else:
                pos = order[lo:hi]
                yield (self.rows.start + pos) if isinstance(self.rows, range) else self.rows[pos]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


class RecDataset:
    """A recommendation data set: dense features, categorical features, binary labels, splits.

    Args:
        name: the data set's name.
        dense: float32 ``(N, num_dense)`` (a numpy array or memory map).
        labels: ``(N,)`` 0/1 labels.
        sparse: integer ``(N, F1)`` one-hot categorical columns (may be ``None`` when F1 == 0).
        feature_names: names of all F categorical features, in batch order.
        cardinalities: rows of each feature's table; every id of feature f is in ``[0, card_f)``.
        splits: split name -> rows (a ``range`` or an int array of row numbers).
        layout: for each feature, ``("onehot", column of sparse)`` or ``("bag", name in bags)``;
            default: all one-hot, column f for feature f.
        bags: name -> :class:`Bag` for the multi-hot features.
        dense_names: names of the dense features (default ``dense_0`` ...).
        info: free-form facts about the data set (sources, counts, preprocessing report).

    Attributes: ``feature_names``, ``cardinalities``, ``num_dense``, ``dense_names``,
    ``multi_hot`` (per feature), ``split_names``, ``info``.
    """

    def __init__(
        self,
        name: str,
        dense: np.ndarray,
        labels: np.ndarray,
        sparse: Optional[np.ndarray],
        feature_names: Sequence[str],
        cardinalities: Sequence[int],
        splits: Mapping[str, Union[range, np.ndarray]],
        layout: Optional[Sequence[Tuple[str, Union[int, str]]]] = None,
        bags: Optional[Mapping[str, Bag]] = None,
        dense_names: Optional[Sequence[str]] = None,
        info: Optional[dict] = None,
    ):
        self.name = name
        n = len(labels)
        if dense.ndim != 2 or dense.shape[0] != n:
            raise ValueError(f"dense must be (N={n}, num_dense), got {tuple(dense.shape)}")
        if dense.shape[1] < 1:
            raise ValueError("a DLRM data set needs at least one dense feature (the bottom MLP's input)")
        self.feature_names = list(feature_names)
        self.cardinalities = [int(c) for c in cardinalities]
        if len(self.feature_names) != len(self.cardinalities):
            raise ValueError(f"{len(self.feature_names)} feature names but {len(self.cardinalities)} cardinalities")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"duplicate feature names in {self.feature_names}")
        for fname, c in zip(self.feature_names, self.cardinalities):
            if c < 1:
                raise ValueError(f"feature {fname!r} has cardinality {c}; must be >= 1")
        self.bags = dict(bags or {})
        if layout is None:
            layout = [("onehot", j) for j in range(len(self.feature_names))]
        self.layout = [(kind, key) for kind, key in layout]
        if len(self.layout) != len(self.feature_names):
            raise ValueError(f"layout has {len(self.layout)} entries for {len(self.feature_names)} features")
        for kind, key in self.layout:
            if kind == "onehot":
                if sparse is None or sparse.ndim != 2 or sparse.shape[0] != n or not 0 <= int(key) < sparse.shape[1]:
                    raise ValueError(f"one-hot column {key} is not a column of sparse {None if sparse is None else sparse.shape}")
            elif kind == "bag":
                if key not in self.bags:
                    raise ValueError(f"bag {key!r} missing from bags {sorted(self.bags)}")
                if len(self.bags[key].row_ptr) != n + 1:
                    raise ValueError(f"bag {key!r} row_ptr has {len(self.bags[key].row_ptr)} entries, expected N + 1 = {n + 1}")
            else:
                raise ValueError(f"layout kind must be 'onehot' or 'bag', got {kind!r}")
        self._dense = dense
        self._labels = labels
        self._sparse = sparse
        self.dense_names = list(dense_names) if dense_names is not None else [f"dense_{i}" for i in range(dense.shape[1])]
        self.info = dict(info or {})
        self._splits: Dict[str, RecSplit] = {}
        for sname, rows in splits.items():
            split = RecSplit(self, sname, rows)
            if len(split) and isinstance(split.rows, range) and split.rows.stop > n:
                raise ValueError(f"split {sname!r} rows {split.rows} exceed N={n}")
            self._splits[sname] = split

    @property
    def num_dense(self) -> int:
        return int(self._dense.shape[1])

    @property
    def num_rows(self) -> int:
        return int(len(self._labels))

    @property
    def multi_hot(self) -> List[bool]:
        return [kind == "bag" for kind, _ in self.layout]

    @property
    def split_names(self) -> Tuple[str, ...]:
        return tuple(self._splits)

    def split(self, name: str) -> RecSplit:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        try:
            return self._splits[name]
        except KeyError:
            raise KeyError(f"unknown split {name!r}; this data set has {list(self._splits)}") from None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return (f"{type(self).__name__}({self.name!r}, features={len(self.feature_names)}, "
                f"num_dense={self.num_dense}, {sizes})")

    def _make_batch(self, sel: Union[slice, np.ndarray]) -> Batch:
        dense = torch.from_numpy(np.array(self._dense[sel], dtype=np.float32))
        labels = torch.from_numpy(np.array(self._labels[sel], dtype=np.float32))
        bsz = labels.shape[0]
        onehot = None
        if self._sparse is not None:
            onehot = np.array(self._sparse[sel], dtype=np.int64)
        ones = torch.arange(bsz + 1, dtype=torch.int64)
        indices: List[torch.Tensor] = []
        offsets: List[torch.Tensor] = []
        rows = np.arange(sel.start, sel.stop) if isinstance(sel, slice) else sel
        for kind, key in self.layout:
            if kind == "onehot":
                assert onehot is not None  # the layout has one-hot columns only with a sparse array
                indices.append(torch.from_numpy(np.ascontiguousarray(onehot[:, int(key)])))
                offsets.append(ones)
            else:
                bag = self.bags[str(key)]
                starts = np.asarray(bag.row_ptr[rows], dtype=np.int64)
                lengths = np.asarray(bag.row_ptr[rows + 1], dtype=np.int64) - starts
                off = np.zeros(bsz + 1, dtype=np.int64)
                np.cumsum(lengths, out=off[1:])
                gather = np.repeat(starts - off[:-1], lengths) + np.arange(off[-1], dtype=np.int64)
                indices.append(torch.from_numpy(np.asarray(bag.values[gather], dtype=np.int64)))
                offsets.append(torch.from_numpy(off))
        return Batch(dense, indices, offsets, labels)


# ---------------------------------------------------------------------------------------------
# Pseudo-days and the on-disk cache shared by the Criteo loader and the synthetic writer.


def pseudo_day_counts(num_lines: int, days: int) -> List[int]:
    """Lines per pseudo-day when ``num_lines`` consecutive lines are cut into ``days`` parts.

    DLRM's convention (facebookresearch/dlrm ``data_utils.getCriteoAdData``): ``divmod`` the
    count by ``days`` and give one extra line to each of the first ``remainder`` days.
    """
    if days < 2:
        raise ValueError(f"days must be >= 2 (the last day is the test/validation day), got {days}")
    base, extra = divmod(int(num_lines), days)
    return [base + (1 if d < extra else 0) for d in range(days)]


def day_split_ranges(day_rows: Sequence[int]) -> Dict[str, range]:
    """Train / val / test row ranges from rows per day: days 0..D-2 train, day D-1 halved.

    The first half of the last day (``ceil(n / 2)`` rows) is the test set and the second half the
    validation set, as ``numpy.array_split(last_day, 2)`` in DLRM's ``dlrm_data_pytorch.py``.
    """
    starts = np.concatenate([[0], np.cumsum(day_rows, dtype=np.int64)])
    train_end = int(starts[-2])
    last = int(day_rows[-1])
    test_end = train_end + (last + 1) // 2
    return {"train": range(0, train_end), "val": range(test_end, int(starts[-1])),
            "test": range(train_end, test_end)}


def write_cache_meta(directory: Union[str, Path], meta: dict) -> None:
    """Write ``meta.json`` atomically (a cache without it is incomplete and is rebuilt)."""
    directory = Path(directory)
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, directory / "meta.json")


class CachedDataset(RecDataset):
    """A :class:`RecDataset` over a cache directory of memory-mapped numpy arrays.

    The directory holds ``dense.npy`` (float32 ``(M, num_dense)``), ``sparse.npy`` (int32 or int64
    ``(M, F)``), ``labels.npy`` (float32 ``(M,)``) and ``meta.json`` with at least ``num_rows``
    (``N <= M``: rows past N are unused, e.g. room left by skipped malformed lines),
    ``feature_names``, ``cardinalities``, ``dense_names`` and ``splits`` (name -> [start, stop)).
    Batches read only their own rows from disk.

    Example:
        >>> ds = CachedDataset.open("~/.cache/compemb/criteo/kaggle-0123abcd")  # doctest: +SKIP
    """

    #: the cache directory the data set was opened from
    directory: Optional[Path] = None

    @classmethod
    def open(cls, directory: Union[str, Path]) -> "CachedDataset":
        directory = Path(directory).expanduser()
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {directory} is not a complete data cache")
        meta = json.loads(meta_path.read_text())
        n = int(meta["num_rows"])
        dense = np.load(directory / "dense.npy", mmap_mode="r")[:n]
        sparse = np.load(directory / "sparse.npy", mmap_mode="r")[:n]
        labels = np.load(directory / "labels.npy", mmap_mode="r")[:n]
        if dense.shape[0] != n or sparse.shape[0] != n or labels.shape[0] != n:
            raise ValueError(f"{directory}: arrays hold fewer rows than num_rows={n}")
        splits = {k: range(int(a), int(b)) for k, (a, b) in meta["splits"].items()}
        ds = cls(meta.get("name", directory.name), dense, labels, sparse, meta["feature_names"],
                 meta["cardinalities"], splits, dense_names=meta.get("dense_names"), info=meta)
        ds.directory = directory
        return ds
