"""Partitions of the category set S = {0, ..., n-1} and families of them (exact integer algebra).

A family ``P1 ... Pk`` is *complementary* when ``x -> (P1(x), ..., Pk(x))`` is injective (Shi et
al., KDD 2020, Definition 1); one embedding table per partition, ``table_sizes`` rows each. All
arithmetic is on int64 integers, never floats, so ``n`` may be as large as ``2**63``.

Example::

    >>> import torch
    >>> from compemb.partitions import quotient_remainder, chinese_remainder
    >>> family = quotient_remainder(10, 4)
    >>> family.table_sizes
    (4, 3)
    >>> family.encode(torch.tensor([0, 5, 9]))
    tensor([[0, 1, 1],
            [0, 1, 2]])
    >>> family.decode(family.encode(torch.tensor([0, 5, 9])))
    tensor([0, 5, 9])
    >>> chinese_remainder(1000, k=3).table_sizes
    (10, 11, 13)
"""
from compemb.options import OPERATIONS
from compemb.partitions._numeric import EXHAUSTIVE_LIMIT, MAX_N, UndecidableError
from compemb.partitions.constructors import (
    chinese_remainder,
    choose_moduli,
    choose_radices,
    family_for_method,
    generalized_qr,
    naive,
    quotient_remainder,
)
from compemb.partitions.data_aware import (
    ClusteredFamily,
    ColdPartition,
    DataAwareFamily,
    FrequencyAwareFamily,
    HotPartition,
    RelabelledFamily,
    RelabelledPartition,
    clustered,
    count_indices,
    frequency_aware,
    most_frequent,
)
from compemb.partitions.family import PartitionFamily, split_dim
from compemb.partitions.kinds import (
    DigitPartition,
    HashPartition,
    IdentityPartition,
    MeetPartition,
    Partition,
    QuotientPartition,
    RemainderPartition,
    ResiduePartition,
    meet,
)

__all__ = [
    "EXHAUSTIVE_LIMIT",
    "MAX_N",
    "UndecidableError",
    "Partition",
    "IdentityPartition",
    "RemainderPartition",
    "QuotientPartition",
    "DigitPartition",
    "ResiduePartition",
    "HashPartition",
    "MeetPartition",
    "PartitionFamily",
    "meet",
    "naive",
    "quotient_remainder",
    "generalized_qr",
    "chinese_remainder",
    "choose_radices",
    "choose_moduli",
    "family_for_method",
    "split_dim",
    "OPERATIONS",
    # data-aware families
    "DataAwareFamily",
    "HotPartition",
    "ColdPartition",
    "FrequencyAwareFamily",
    "RelabelledPartition",
    "RelabelledFamily",
    "ClusteredFamily",
    "count_indices",
    "most_frequent",
    "frequency_aware",
    "clustered",
]
