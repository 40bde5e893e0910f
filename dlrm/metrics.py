"""Binary classification metrics for click prediction, in numpy, plus a JSON-lines writer.

* :func:`log_loss`: mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``).
* :func:`accuracy`: fraction of samples whose probability falls on the label's side of 0.5
  (``p >= 0.5`` predicts 1, as ``sklearn``'s thresholding of ``predict_proba`` would).
* :func:`roc_auc`: the exact area under the ROC curve from ranks (Mann–Whitney U), tied scores
  counting one half, ``O(N log N)``.

Example::

    >>> import numpy as np
    >>> from dlrm.metrics import roc_auc
    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["log_loss", "accuracy", "roc_auc", "binary_metrics", "JsonLinesWriter", "write_jsonl",
           "jsonable"]


def _as_arrays(labels: ArrayLike, scores: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if np.isnan(s).any():
        raise ValueError(f"scores contain NaN at position {int(np.flatnonzero(np.isnan(s))[0])}")
    yb = y.astype(np.float64)
    bad = ~((yb == 0) | (yb == 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels must be 0 or 1, got {y[i]!r} at position {i}")
    return yb, s


def log_loss(labels: ArrayLike, probabilities: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy ``-mean(y log p + (1 - y) log(1 - p))``.

    Args:
        labels: 0/1 array ``(N,)``.
        probabilities: predicted ``P(y = 1)``, ``(N,)``, in ``[0, 1]``.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` so a confident mistake costs a
            finite amount.
    """
    y, p = _as_arrays(labels, probabilities)
    if (p < 0).any() or (p > 1).any():
        i = int(np.flatnonzero((p < 0) | (p > 1))[0])
        raise ValueError(f"probabilities must lie in [0, 1], got {p[i]!r} at position {i}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def accuracy(labels: ArrayLike, probabilities: ArrayLike, threshold: float = 0.5) -> float:
    """Fraction of samples with ``(p >= threshold) == label``."""
    y, p = _as_arrays(labels, probabilities)
    return float(np.mean((p >= threshold) == (y == 1)))


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC: the probability that a random positive outscores a random negative, ties
    counting one half.

    Computed from average ranks (``O(N log N)``): ``(R+ - P (P + 1) / 2) / (P N)`` with ``R+`` the
    sum of the positives' ranks. Returns ``nan`` when only one class is present (the AUC is
    undefined there; scikit-learn raises instead).
    """
    y, s = _as_arrays(labels, scores)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Ranks 1..N; a group of t tied scores starting after `before` smaller ones gets the
    # average rank before + (t + 1) / 2.
    before = np.cumsum(counts) - counts
    avg_rank = before + (counts + 1) / 2.0
    rank_sum_pos = float(avg_rank[inverse.reshape(-1)][y == 1].sum())
    return (rank_sum_pos - pos * (pos + 1) / 2.0) / (pos * neg)


def binary_metrics(labels: ArrayLike, probabilities: ArrayLike, prefix: str = "") -> Dict[str, float]:
    """``{prefix + "loss", prefix + "auc", prefix + "accuracy"}`` for one split."""
    return {
        f"{prefix}loss": log_loss(labels, probabilities),
        f"{prefix}auc": roc_auc(labels, probabilities),
        f"{prefix}accuracy": accuracy(labels, probabilities),
    }


def jsonable(value: Any) -> Any:
    """``value`` as plain, strict JSON: NaN and infinities become ``None``.

    Mappings become dicts with string keys, lists and tuples become lists, numpy and torch scalars
    their Python value, dataclasses their :func:`dataclasses.asdict`, anything else its ``str``.

    Example::

        >>> jsonable({"auc": float("nan"), "steps": np.int64(3), "dims": (16, 8)})
        {'auc': None, 'steps': 3, 'dims': [16, 8]}
    """
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy / torch scalars
        return jsonable(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return str(value)


def write_jsonl(path: str, record: Mapping) -> None:
    """Append one record as a JSON line (NaN and inf become ``null``)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(jsonable(record), sort_keys=True) + "\n")
        fh.flush()


class JsonLinesWriter:
    """Append records to a JSON-lines file; a ``None`` path makes every write a no-op."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def write(self, record: Mapping) -> None:
        if self.path is not None:
            write_jsonl(self.path, record)

    def size(self) -> Optional[int]:
        """Bytes in the file now (0 when it does not exist yet; ``None`` without a path)."""
        if self.path is None:
            return None
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def truncate(self, size: int) -> None:
        """Cut the file back to its first ``size`` bytes (what :meth:`size` said at some point)."""
        if self.path is not None and os.path.exists(self.path):
            with open(self.path, "r+b") as fh:
                fh.truncate(int(size))
