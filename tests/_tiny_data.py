"""A tiny tabular data set with a learnable signal, shared by the training tests."""
from __future__ import annotations

import numpy as np

from dlrm.data.batching import RecDataset


def tiny_dataset(n=600, seed=0):
    """A small data set with a learnable signal (labels from a hidden logistic teacher)."""
    rng = np.random.default_rng(seed)
    cards = [50, 7, 200]
    sparse = np.stack([rng.integers(0, c, n) for c in cards], axis=1)
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    effects = [rng.normal(size=c) * 1.5 for c in cards]
    logit = dense[:, 0] + sum(e[sparse[:, j]] for j, e in enumerate(effects))
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return RecDataset("tiny", dense, labels, sparse, ["a", "b", "c"], cards,
                      {"train": range(0, 400), "val": range(400, 500), "test": range(500, 600)})
