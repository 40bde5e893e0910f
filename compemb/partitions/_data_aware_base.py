"""What every data-aware partition family shares: int64 lookup arrays and the :class:`DataAwareFamily` interface.

The lookup arrays (hot ids, a relabelling) are data, not parameters: :meth:`DataAwareFamily.arrays`
gives them as int64 tensors, :meth:`DataAwareFamily.with_arrays` rebuilds the family around new
ones (validated), and :meth:`DataAwareFamily.structure` is the spec without them (what a module
must agree on before it can load someone else's arrays). The families themselves are in
:mod:`compemb.partitions.frequency` and :mod:`compemb.partitions.relabelled`.
"""
from __future__ import annotations

import abc
import hashlib
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from compemb.partitions._numeric import IntArray
from compemb.partitions.family import PartitionFamily

__all__ = ["IdArray", "as_int64", "value_outside", "first_repeat", "Lookup", "gather", "DataAwareFamily", "structure_of"]

#: what the constructors accept as an array of ids
IdArray = Union[torch.Tensor, np.ndarray, Sequence[int]]


def as_int64(values: IdArray, name: str) -> torch.Tensor:
    """``values`` as a 1-D int64 tensor (a given tensor keeps its device); floats and bools refused."""
    if isinstance(values, torch.Tensor):
        t = values
    else:
        arr = np.asarray(values)
        if arr.dtype == object or (arr.size and arr.dtype.kind not in "iub"):
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
        if arr.dtype.kind == "b":
            raise TypeError(f"{name} must be integers, got booleans")
        t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64, copy=False)))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64).contiguous()


def value_outside(values: torch.Tensor, size: int) -> Optional[int]:
    """A value of ``values`` outside ``[0, size)`` (the least when one is negative, else the largest), or ``None``."""
    if not values.numel():
        return None
    lo, hi = (int(v) for v in torch.aminmax(values))
    if lo < 0:
        return lo
    return hi if hi >= size else None


def first_repeat(ordered: torch.Tensor) -> Optional[int]:
    """The least value that occurs more than once in the sorted 1-D ``ordered``, or ``None``."""
    same = ordered.diff() == 0
    return int(ordered[1:][same][0]) if bool(same.any()) else None


class Lookup:
    """An immutable int64 lookup array, served on the device (or as numpy) of each input."""

    def __init__(self, array: torch.Tensor):
        self.array = array
        self._copies: Dict[str, Any] = {}
        self._digest: Optional[str] = None

    def on(self, x: IntArray) -> IntArray:
        """The array as ``x`` is: a tensor on ``x``'s device, or a numpy array (copies cached)."""
        if isinstance(x, torch.Tensor):
            if x.device == self.array.device:
                return self.array
            key = str(x.device)
            if key not in self._copies:
                self._copies[key] = self.array.to(x.device)
            return self._copies[key]
        if "numpy" not in self._copies:
            self._copies["numpy"] = self.array.detach().cpu().numpy()
        return self._copies["numpy"]

    def digest(self) -> str:
        """A short SHA-256 of the values (cached: the array is never changed in place)."""
        if self._digest is None:
            data = np.ascontiguousarray(self.array.detach().cpu().numpy().astype("<i8"))
            self._digest = hashlib.sha256(data.tobytes()).hexdigest()[:16]
        return self._digest


def gather(table: IntArray, x: IntArray) -> IntArray:
    """``table[x]`` for an index array of any shape."""
    if isinstance(x, torch.Tensor):
        return table[x.reshape(-1)].reshape(x.shape)
    return table[x]


class DataAwareFamily(PartitionFamily):
    """A partition family whose classes come from data held in int64 lookup arrays.

    Subclasses give :meth:`arrays` (name -> 1-D int64 tensor; names are valid buffer names),
    :meth:`with_arrays` (the same structure around other arrays, validated unless
    ``check=False``) and :meth:`structure` (the spec without the arrays). A module registers the
    arrays as buffers, so they travel with ``state_dict`` and ``.to(device)``.
    """

    @abc.abstractmethod
    def arrays(self) -> Dict[str, torch.Tensor]:
        """The lookup arrays that, with :meth:`structure`, define every class id."""

    @abc.abstractmethod
    def with_arrays(self, arrays: Mapping[str, torch.Tensor], check: bool = True) -> "DataAwareFamily":
        """This family's structure around other lookup arrays (same names and lengths).

        Raises:
            KeyError: a missing array. ValueError / TypeError: arrays that do not define a
            family of this structure (wrong length, out of range, repeated ids ...), naming it.
        """

    @abc.abstractmethod
    def structure(self) -> Dict[str, Any]:
        """What defines the family apart from its arrays, as plain values."""


def structure_of(family: PartitionFamily) -> Any:
    """``family.structure()`` for a data-aware family, else its ``spec()`` (a base family's part of a structure)."""
    return family.structure() if isinstance(family, DataAwareFamily) else family.spec()
