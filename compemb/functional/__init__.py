"""The functional core: compositional embedding bags in plain PyTorch (Shi et al., KDD 2020).

A compositional embedding stores one table per partition ``P_1 .. P_k`` of ``{0, ..., n-1}`` and
combines the rows ``W_i[P_i(x)]`` by ``"mult"``, ``"add"`` or ``"concat"``; a bag pools them by
sum, mean or max, as :class:`torch.nn.EmbeddingBag`. Three layers, each usable alone:
:func:`bag_input` (validated canonical input), :func:`embedding_bag_codes` (the reference kernel
on partition codes, in :mod:`compemb.functional.reference`) and
:func:`compositional_embedding_bag` (normalise, encode, pick a backend). See
``docs/architecture.md`` for the composition semantics and the evaluation paths.

Example::

    >>> from compemb.partitions import quotient_remainder
    >>> fam = quotient_remainder(10, 4)
    >>> w = [torch.ones(s, 2) for s in fam.table_sizes]
    >>> compositional_embedding_bag(torch.tensor([[3, 7]]), None, w, fam, "add", "sum").tolist()
    [[4.0, 4.0]]
"""
from __future__ import annotations

import torch  # noqa: F401  (the doctests use it)

from compemb.functional._inputs import (
    UNKNOWN_BAG_LEN,
    BagInput,
    bag_input,
    check_float_tables,
    check_int,
    check_max_norm,
    check_num_embeddings,
    check_per_sample_weights_dtype,
    check_table_size,
    fixed_bag_length,
    jit_unsupported_error,
    module_bag_input,
    normalize_bag_input,
)
from compemb.functional._pooling import combine, pool_rows
from compemb.functional.reference import embedding_bag_codes, init_bound, kernel_extras
from compemb.options import COMPOSES, MODES, OPERATIONS, check_compose, check_mode, check_operation

# last: the pipeline imports compemb.kernels, whose modules may import the names above
from compemb.functional._pipeline import backend_options, compositional_embedding_bag, encode_validated

__all__ = [
    "OPERATIONS",
    "MODES",
    "COMPOSES",
    "BagInput",
    "UNKNOWN_BAG_LEN",
    "bag_input",
    "normalize_bag_input",
    "module_bag_input",
    "fixed_bag_length",
    "embedding_bag_codes",
    "compositional_embedding_bag",
    "encode_validated",
    "kernel_extras",
    "backend_options",
    "pool_rows",
    "combine",
    "init_bound",
    "check_operation",
    "check_mode",
    "check_compose",
    "check_int",
    "check_num_embeddings",
    "check_table_size",
    "check_float_tables",
    "jit_unsupported_error",
    "check_max_norm",
    "check_per_sample_weights_dtype",
]
