"""The real sweep objective: one DLRM training run per trial, through :func:`dlrm.train.train`.

A trial's config is flat (what a search space writes); :func:`train_config` sorts its fields into a
:class:`dlrm.train.TrainConfig`: the :class:`compemb.config.EmbeddingBagConfig` fields
(``operation``, ``num_collisions``, ``k``, ``hidden_dims``, ``compose``, ``backend``, ``mode``,
``md_dim``) go to ``embedding_options`` and the rest must be ``TrainConfig`` fields (an unknown
field is a ``ValueError`` naming it). Each worker process loads a data set once and reuses it for
all its trials.

Example::

    >>> cfg = train_config({"method": "qr", "operation": "mult", "num_collisions": 4, "seed": 1})
    >>> cfg.method, cfg.embedding_options, cfg.seed
    ('qr', {'operation': 'mult', 'num_collisions': 4}, 1)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

__all__ = ["train_config", "train_objective", "EMBEDDING_FIELDS"]

#: flat config fields that belong to the tables' EmbeddingBagConfig
EMBEDDING_FIELDS = ("operation", "num_collisions", "k", "hidden_dims", "compose", "backend", "mode", "md_dim")

_DATASETS: Dict[Tuple[str, str], Any] = {}


def train_config(config: Mapping[str, Any]):
    """Flat sweep config -> :class:`dlrm.train.TrainConfig`."""
    from dlrm.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs: Dict[str, Any] = {}
    emb: Dict[str, Any] = {}
    for key, value in config.items():
        if key in EMBEDDING_FIELDS:
            emb[key] = tuple(value) if key == "hidden_dims" else value
        elif key in names:
            kwargs[key] = value
        else:
            raise ValueError(f"config field {key!r} is neither a TrainConfig nor an embedding field")
    method = kwargs.get("method", "full")
    # only the options the method uses, so that 'full' does not carry stray collisions
    used = {
        "full": (), "hash": ("num_collisions",), "qr": ("operation", "num_collisions"),
        "gqr": ("operation", "k"), "crt": ("operation", "k"), "path": ("num_collisions", "hidden_dims"),
        "md": ("md_dim",),
    }.get(method, EMBEDDING_FIELDS)
    common = ("compose", "backend", "mode")
    emb = {k: v for k, v in emb.items() if k in used or k in common}
    if emb:
        merged = dict(kwargs.get("embedding_options", {}))
        merged.update(emb)
        kwargs["embedding_options"] = merged
    for key in ("bottom_mlp", "top_mlp"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return TrainConfig(**kwargs)


def _dataset(cfg):
    import json

    from dlrm.data import load_dataset

    key = (cfg.dataset, json.dumps(cfg.dataset_options, sort_keys=True, default=str))
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cfg.dataset, **cfg.dataset_options)
    return _DATASETS[key]


def train_objective(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Train one DLRM as ``config`` says and return :func:`dlrm.train.train`'s metrics."""
    import warnings

    from dlrm.train import train

    cfg = train_config(config)
    with warnings.catch_warnings():
        # torch's note on sparse Adagrad gradients, once per process: noise in a sweep's log
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return train(cfg, dataset=_dataset(cfg))
