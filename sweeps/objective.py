"""The real sweep objective: one DLRM training run per trial, through :func:`dlrm.train.train`.

A trial's config is flat (what a search space writes); :func:`train_config` sorts its fields into a
:class:`dlrm.train.TrainConfig`: the :class:`compemb.config.EmbeddingBagConfig` fields
(``operation``, ``num_collisions``, ``k``, ``hidden_dims``, ``compose``, ``backend``, ``mode``,
``md_dim``, ``tt_rank``, ``num_hot``, ``compression``) go to ``embedding_options`` and the rest must be
``TrainConfig`` fields (an unknown field is a ``ValueError`` naming it and its close matches). Each
worker process loads a data set once and reuses it for all its trials. :data:`train_objective` also
has ``check_config``, which the sweep runner calls on every trial's config before the first trial,
so that a typo in ``--set`` fails at once rather than in every trial.

Example::

    >>> cfg = train_config({"method": "qr", "operation": "mult", "num_collisions": 4, "seed": 1})
    >>> cfg.method, cfg.embedding_options, cfg.seed
    ('qr', {'operation': 'mult', 'num_collisions': 4}, 1)
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple

if TYPE_CHECKING:
    from dlrm.train import TrainConfig

__all__ = ["train_config", "train_objective", "TrainObjective", "config_fields", "EMBEDDING_FIELDS"]


#: flat config fields that belong to the tables' EmbeddingBagConfig
#: (:func:`dlrm.config.table_option_fields`, read on first access: this module imports no torch)
EMBEDDING_FIELDS: Tuple[str, ...]


def _embedding_fields() -> Tuple[str, ...]:
    """The flat config fields that belong to the tables' EmbeddingBagConfig (imported here, so that
    this module stays free of torch until a config is read)."""
    from dlrm.config import table_option_fields

    return table_option_fields()


def __getattr__(name: str) -> Any:
    # EMBEDDING_FIELDS: :func:`dlrm.config.table_option_fields`, computed on first access
    if name == "EMBEDDING_FIELDS":
        return _embedding_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_DATASETS: Dict[Tuple[str, str], Any] = {}


def config_fields() -> List[str]:
    """Every field a flat sweep config may hold: :class:`dlrm.train.TrainConfig`'s and
    :data:`EMBEDDING_FIELDS` (the table options), sorted."""
    from dlrm.train import TrainConfig

    return sorted({f.name for f in dataclasses.fields(TrainConfig)} | set(_embedding_fields()))


def _unknown_field(key: str) -> ValueError:
    known = config_fields()
    close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else f"known fields: {', '.join(known)}")
    return ValueError(f"unknown training config field {key!r} (not a TrainConfig or embedding field); {hint}")


def train_config(config: Mapping[str, Any]) -> TrainConfig:
    """Flat sweep config -> :class:`dlrm.train.TrainConfig`.

    Raises:
        ValueError: a field that is not a config field (naming it and its close matches), or a
            value :class:`dlrm.train.TrainConfig` refuses.
    """
    from dlrm.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    table_fields = _embedding_fields()
    kwargs: Dict[str, Any] = {}
    emb: Dict[str, Any] = {}
    for key, value in config.items():
        if key in table_fields:
            emb[key] = tuple(value) if key == "hidden_dims" else value
        elif key in names:
            kwargs[key] = value
        else:
            raise _unknown_field(key)
    method = kwargs.get("method", "full")
    # only the options the method uses, so that 'full' does not carry stray collisions
    used = {
        "full": (), "hash": ("num_collisions",), "qr": ("operation", "num_collisions"),
        "gqr": ("operation", "k"), "crt": ("operation", "k"), "path": ("num_collisions", "hidden_dims"),
        "md": ("md_dim",), "tt": ("tt_rank",), "robe": ("num_collisions",),
        "freq": ("operation", "num_collisions", "num_hot"), "cluster": ("operation", "num_collisions"),
    }.get(method, table_fields)
    common = ("compose", "backend", "mode", "compression")
    emb = {k: v for k, v in emb.items() if k in used or k in common}
    if emb:
        merged = dict(kwargs.get("embedding_options", {}))
        merged.update(emb)
        kwargs["embedding_options"] = merged
    for key in ("bottom_mlp", "top_mlp"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return TrainConfig(**kwargs)


def _dataset(cfg: TrainConfig) -> Any:
    import json

    from dlrm.data import load_dataset

    key = (cfg.dataset, json.dumps(cfg.dataset_options, sort_keys=True, default=str))
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cfg.dataset, **cfg.dataset_options)
    return _DATASETS[key]


class TrainObjective:
    """The sweep objective: train one DLRM as a flat config says and return
    :func:`dlrm.train.train`'s metrics. ``check_config`` validates a config without training."""

    def __call__(self, config: Mapping[str, Any]) -> Dict[str, Any]:
        import warnings

        from dlrm.train import train

        cfg = train_config(config)
        with warnings.catch_warnings():
            # torch's note on sparse Adagrad gradients, once per process: noise in a sweep's log
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            return train(cfg, dataset=_dataset(cfg))

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when ``config`` is not a valid training config (nothing is trained)."""
        try:
            train_config(config)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ValueError(f"invalid training config: {exc}") from None


#: what ``--objective sweeps.objective:train_objective`` (the default) names
train_objective = TrainObjective()
