"""Data-aware partitions: classes chosen from the data, complementarity kept by construction.

The paper's partitions are data-blind: ``x mod m`` puts a category's neighbours in its class
whatever they are. Its closing remark is that quality depends on how closely the partitions
reflect intrinsic properties of the category set. Two ways to let the data choose, each a
:class:`~compemb.partitions.PartitionFamily` with the usual contracts (``encode`` / ``decode``,
``is_complementary`` with a proof, ``spec``), ``digit_form() is None`` for every member:

- **frequency-aware** (:mod:`compemb.partitions.frequency`): the ``h`` most frequent categories
  get rows of their own, the rest are told apart by any complementary base family;
- **relabelled / clustered** (:mod:`compemb.partitions.relabelled`): a complementary family after
  an injective relabelling, e.g. quotient–remainder over clusters learned from a trained table.

Both are :class:`DataAwareFamily` objects: their lookup arrays (hot ids, the relabelling) are
data, not parameters, given by ``arrays()``, replaced by ``with_arrays()`` and left out of
``structure()`` (see :mod:`compemb.partitions._data_aware_base`). This module gathers their
public names; the examples of those names run with its doctests.

Example::

    >>> import torch
    >>> fam = frequency_aware(10, num_hot=2, counts=[0, 9, 0, 0, 7, 0, 0, 0, 0, 1])
    >>> fam.hot_ids.tolist(), fam.table_sizes
    ([1, 4], (3, 5, 4))
    >>> fam.encode(torch.tensor([1, 4, 9]))
    tensor([[0, 1, 2],
            [4, 4, 1],
            [3, 3, 2]])
    >>> fam.is_complementary(), fam.decode(fam.encode(torch.arange(10))).tolist() == list(range(10))
    (True, True)
    >>> cl = clustered(10, capacity=4, clusters=[2, 0, 0, 1, 2, 1, 0, 2, 1, 0])
    >>> cl.table_sizes, cl.encode(torch.tensor([1, 2, 6, 9]))
    ((3, 4), tensor([[0, 0, 0, 0],
            [0, 1, 2, 3]]))
"""
from compemb.partitions._data_aware_base import DataAwareFamily
from compemb.partitions.frequency import (
    ColdPartition,
    FrequencyAwareFamily,
    HotPartition,
    count_indices,
    frequency_aware,
    most_frequent,
)
from compemb.partitions.relabelled import ClusteredFamily, RelabelledFamily, RelabelledPartition, clustered

__all__ = [
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

#: doctest runs the examples of the names gathered here with this module's own
__test__ = {name: globals()[name] for name in __all__}
