"""Converters between compemb's and TorchRec's table configs (two classes named ``EmbeddingBagConfig``).

* ``compemb.config.EmbeddingBagConfig``: one feature's table *and its compression* (``method``,
  ``num_collisions``, ``operation`` ...); the name is the feature's.
* ``torchrec.EmbeddingBagConfig`` (``torchrec.modules.embedding_configs``): one plain table
  (``num_embeddings x embedding_dim``) read by one or more ``feature_names``, with a
  ``PoolingType``.

:func:`to_torchrec_configs` gives the TorchRec configs of the *uncompressed* tables that the
compemb configs stand for (what a plain ``EmbeddingBagCollection`` of them would report, and what
:meth:`ShardableEmbeddingBagCollection.embedding_bag_configs` returns); :func:`from_torchrec_configs`
turns TorchRec configs into compemb configs with a compression method (tables above
``threshold`` rows only, as DLRM's ``--qr-threshold``). The two are inverse for ``method="full"``.

Example::

    >>> from compemb.config import EmbeddingBagConfig
    >>> [c.name for c in to_torchrec_configs([EmbeddingBagConfig("C1", 100, 8, method="qr")])]
    ['C1']
    >>> tr = to_torchrec_configs([EmbeddingBagConfig("C1", 100, 8, method="qr")])
    >>> from_torchrec_configs(tr, method="qr", num_collisions=4)[0].method
    'qr'
"""
from __future__ import annotations

from typing import Any, List, Sequence

from torchrec.modules.embedding_configs import DataType, PoolingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig as TorchRecEmbeddingBagConfig

from compemb.config import EmbeddingBagConfig
from compemb.functional import check_int
from compemb.options import check_method

__all__ = ["to_torchrec_configs", "from_torchrec_configs", "TorchRecEmbeddingBagConfig"]

#: compemb pooling mode -> TorchRec ``PoolingType`` (the modes TorchRec pools with)
POOLING_TYPES = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def to_torchrec_configs(configs: Sequence[EmbeddingBagConfig]) -> List[TorchRecEmbeddingBagConfig]:
    """One TorchRec config per compemb config: the uncompressed ``n x embedding_dim`` table.

    Args:
        configs: ``compemb.config.EmbeddingBagConfig`` objects (any method).

    Returns:
        ``torchrec.EmbeddingBagConfig`` objects named after the features, each read by its own
        feature, pooled as the compemb config's ``mode``.

    Raises:
        TypeError: an item that is not a compemb config. ValueError: ``mode="max"`` (TorchRec
        pools with sum or mean), naming the table.
    """
    out = []
    for c in configs:
        if not isinstance(c, EmbeddingBagConfig):
            raise TypeError(f"to_torchrec_configs: expected compemb.config.EmbeddingBagConfig, got {type(c).__name__}")
        if c.mode not in POOLING_TYPES:
            raise ValueError(f"table {c.name!r}: mode={c.mode!r} has no TorchRec PoolingType (sum, mean)")
        out.append(TorchRecEmbeddingBagConfig(name=c.name, num_embeddings=c.num_embeddings,
                                              embedding_dim=c.embedding_dim, feature_names=[c.name],
                                              pooling=POOLING_TYPES[c.mode]))
    return out


def from_torchrec_configs(
    tables: Sequence[TorchRecEmbeddingBagConfig],
    method: str = "full",
    threshold: int = 0,
    **options: Any,
) -> List[EmbeddingBagConfig]:
    """compemb configs for TorchRec tables: ``method`` for tables with more than ``threshold`` rows.

    Args:
        tables: ``torchrec.EmbeddingBagConfig`` objects, each read by exactly one feature (compemb
            configs are per feature); the compemb config takes the feature's name.
        method: compemb's method for the compressed tables (the others are ``"full"``).
        threshold: compress only tables with more rows than this.
        **options: the other ``compemb.config.EmbeddingBagConfig`` fields (``num_collisions``,
            ``operation``, ``compose``, ``k`` ...).

    Raises:
        ValueError: a table read by several features, a non-FP32 table or a pooling other than
            sum/mean, naming the table; bad options (as ``EmbeddingBagConfig`` raises them).
    """
    check_method(method)
    threshold = check_int("threshold", threshold, 0, "from_torchrec_configs")
    modes = {v: k for k, v in POOLING_TYPES.items()}
    out = []
    for t in tables:
        if not isinstance(t, TorchRecEmbeddingBagConfig):
            raise TypeError(f"from_torchrec_configs: expected torchrec EmbeddingBagConfig, got {type(t).__name__}")
        features = list(t.feature_names) or [t.name]
        if len(features) != 1:
            raise ValueError(f"TorchRec table {t.name!r} is read by {len(features)} features {features}; "
                             "compemb configs are one table per feature")
        if t.pooling not in modes:
            raise ValueError(f"TorchRec table {t.name!r}: pooling {t.pooling} is not sum or mean")
        if t.data_type != DataType.FP32:
            raise ValueError(f"TorchRec table {t.name!r}: data_type {t.data_type} (compemb tables are FP32)")
        m = method if t.num_embeddings > threshold else "full"
        out.append(EmbeddingBagConfig(features[0], t.num_embeddings, t.embedding_dim, method=m,
                                      mode=modes[t.pooling], **options))
    return out
