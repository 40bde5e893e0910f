"""compemb: compositional embeddings using complementary partitions (Shi et al., KDD 2020).

The package root re-exports the public names only; they are imported on first use so that
``import compemb`` stays cheap and an optional backend never breaks the import.

Example::

    >>> import torch
    >>> from compemb import QREmbeddingBag
    >>> bag = QREmbeddingBag(1000, 16, num_collisions=4, mode="sum")
    >>> bag(torch.tensor([[1, 2], [999, 0]])).shape
    torch.Size([2, 16])
"""
from __future__ import annotations

from typing import Any, List

from compemb._lazy import load_export

_VERSION_FALLBACK = "0+unknown"  # no package metadata: a source tree that was never installed

# public name -> module that defines it
_EXPORTS = {
    # partition algebra
    "Partition": "compemb.partitions",
    "PartitionFamily": "compemb.partitions",
    "IdentityPartition": "compemb.partitions",
    "RemainderPartition": "compemb.partitions",
    "QuotientPartition": "compemb.partitions",
    "DigitPartition": "compemb.partitions",
    "ResiduePartition": "compemb.partitions",
    "HashPartition": "compemb.partitions",
    "naive": "compemb.partitions",
    "quotient_remainder": "compemb.partitions",
    "generalized_qr": "compemb.partitions",
    "chinese_remainder": "compemb.partitions",
    "frequency_aware": "compemb.partitions",
    "clustered": "compemb.partitions",
    "FrequencyAwareFamily": "compemb.partitions",
    "ClusteredFamily": "compemb.partitions",
    # modules
    "CompositionalEmbeddingBag": "compemb.modules",
    "QREmbeddingBag": "compemb.modules",
    "PathEmbeddingBag": "compemb.path",
    "HashEmbeddingBag": "compemb.baselines",
    "MixedDimEmbeddingBag": "compemb.baselines",
    "md_dims": "compemb.baselines",
    "TTEmbeddingBag": "compemb.tt",
    "ROBEEmbeddingBag": "compemb.robe",
    "DataAwareEmbeddingBag": "compemb.data_aware",
    "size_for_ratio": "compemb.compression",
    "SizeChoice": "compemb.compression",
    "num_parameters": "compemb.config",
    "compression_ratio": "compemb.config",
    "EmbeddingBagConfig": "compemb.config",
    "build_embedding_bag": "compemb.config",
    # kernels and deployment
    "CompositionalEmbeddingBagCollection": "compemb.collection",
    "quantize": "compemb.quantization",
    "QuantizedEmbeddingBag": "compemb.quantization",
    "quantization_error": "compemb.quantization",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def _version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("compemb")
    except PackageNotFoundError:
        return _VERSION_FALLBACK


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: metadata lookups cost milliseconds
        value = globals()["__version__"] = _version()
        return value
    return load_export(globals(), _EXPORTS, name)


def __dir__() -> List[str]:
    return __all__
