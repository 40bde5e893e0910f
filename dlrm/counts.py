"""Occurrence counts of the categories of a data split: what frequency-aware tables are built from.

A ``freq`` table (:meth:`compemb.data_aware.DataAwareEmbeddingBag.frequency_aware`) gives rows of
their own to the most frequent categories *of the training split*; the model builders
(:func:`dlrm.train.build_model`) count them here, for the tables that need them only, and pass
them on (:func:`compemb.config.build_embedding_bag`'s ``counts``). Validation and test rows are
never counted, so the choice of hot rows cannot leak them.

Example::

    >>> from dlrm.data import load_dataset
    >>> ds = load_dataset("synthetic", rows=1000, scale=1e5)
    >>> counts = split_counts(ds.split("train"), ["C1"])
    >>> int(counts["C1"].sum()) == len(ds.split("train")), counts["C1"].shape == (ds.cardinalities[0],)
    (True, True)
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from compemb.partitions import count_indices

__all__ = ["METHODS_NEEDING_COUNTS", "split_counts", "training_counts"]

#: the embedding methods whose tables are built from the training split's counts
METHODS_NEEDING_COUNTS = ("freq",)
#: rows read at a time while counting
_COUNT_BATCH = 65536


def split_counts(split: Any, features: Optional[Iterable[str]] = None, *,
                 batch_size: int = _COUNT_BATCH) -> Dict[str, torch.Tensor]:
    """``{feature: (n,) int64 counts}`` of how often each category occurs in ``split``.

    Every index of a multi-hot bag counts once. ``features`` (names of the split's data set,
    default all) limits the counting to those features.

    Raises:
        KeyError: a feature the data set does not have, naming it and the features it has.
    """
    dataset = split.dataset
    names = list(dataset.feature_names)
    wanted = names if features is None else list(features)
    unknown = [f for f in wanted if f not in names]
    if unknown:
        raise KeyError(f"split_counts: data set {dataset.name!r} has no feature(s) {unknown}; it has {names}")
    positions = {f: names.index(f) for f in wanted}
    totals = {f: torch.zeros(int(dataset.cardinalities[i]), dtype=torch.int64) for f, i in positions.items()}
    if not totals:
        return {}
    for batch in split.batches(batch_size, shuffle=False):
        for f, i in positions.items():
            totals[f] += count_indices(batch.indices[i], int(dataset.cardinalities[i]))
    return totals


def training_counts(dataset: Any, specs: Sequence[Any]) -> Dict[str, torch.Tensor]:
    """The training split's counts of the features whose table spec needs them (method ``freq``),
    keyed by feature (= table spec) name; ``{}`` when no table needs counts (nothing is read)."""
    needed = [s.name for s in specs if getattr(s, "method", None) in METHODS_NEEDING_COUNTS]
    if not needed:
        return {}
    return split_counts(dataset.split("train"), needed)
