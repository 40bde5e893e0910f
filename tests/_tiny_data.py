"""A tiny tabular data set with a learnable signal, its small training configuration, and a run
killed at a given step: shared by the training tests."""
from __future__ import annotations

import numpy as np
import pytest

from dlrm.data.batching import RecDataset
from dlrm.train import TrainConfig, train

#: the training tests' small configuration (``small_config`` overrides any of it)
SMALL_CONFIG = dict(dataset="tiny", embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8, 1), batch_size=32,
                    epochs=2, learning_rate=0.05, optimizer="adagrad", eval_every=5, seed=3)


def tiny_dataset(seed=0, cards=(50, 7, 200), power_law=False):
    """A small data set of 600 rows with a learnable signal (labels from a hidden logistic teacher).

    Three one-hot features ``a``, ``b``, ``c`` with ``cards`` categories, drawn uniformly or, with
    ``power_law``, with power-law frequencies; rows 0-399 train, 400-499 validate, 500-599 test.
    """
    n = 600
    rng = np.random.default_rng(seed)
    cards = list(cards)
    if power_law:
        sparse = np.stack([np.minimum((rng.pareto(1.2, n) * c / 8).astype(np.int64), c - 1) for c in cards], axis=1)
    else:
        sparse = np.stack([rng.integers(0, c, n) for c in cards], axis=1)
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    effects = [rng.normal(size=c) * 1.5 for c in cards]
    logit = dense[:, 0] + sum(e[sparse[:, j]] for j, e in enumerate(effects))
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return RecDataset("tiny", dense, labels, sparse, ["a", "b", "c"], cards,
                      {"train": range(0, 400), "val": range(400, 500), "test": range(500, 600)})


def small_config(**kw):
    """A :class:`TrainConfig` of :data:`SMALL_CONFIG` with ``kw`` overriding it."""
    return TrainConfig(**{**SMALL_CONFIG, **kw})


class Killed(Exception):
    """Raised by a :func:`kill_at` hook: the run stops there as a crash would stop it."""


def kill_at(step):
    """A ``step_hook`` that raises :class:`Killed` at ``step``."""
    def hook(s):
        if s == step:
            raise Killed
    return hook


def train_killed_at(config, dataset, step):
    """Train ``config`` on ``dataset`` until it is killed at ``step`` (it must get there)."""
    with pytest.raises(Killed):
        train(config, dataset=dataset, step_hook=kill_at(step))
