"""The raw input of the table-batched collections: per-feature bags packed feature-major, and checked.

The collection backends that take their input as given (``raw_input``) pack the features'
``nn.EmbeddingBag`` forms into one jagged batch (``F * B + 1`` offsets, the KeyedJaggedTensor
layout), check the offsets and the index ranges with one host read, and raise the errors
``nn.EmbeddingBag`` raises, naming the feature. Plain torch.

Example::

    >>> values, offsets, B, owned = pack_features(["a", "b"], [(torch.tensor([[1, 2]]), None, False),
    ...                                                      (torch.tensor([3]), torch.tensor([0]), False)])
    >>> values.tolist(), offsets.tolist(), B
    ([1, 2, 3], [0, 2, 3], 1)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "check_bag_form",
    "pack_features",
    "offsets_flags",
    "raise_bad_offsets",
    "bag_lengths",
    "check_range",
    "out_of_range_error",
    "raise_out_of_range",
]


def check_bag_form(name: str, x: Any, off: Any) -> None:
    """Raise the ``TypeError``/``ValueError`` ``nn.EmbeddingBag`` raises for feature ``name``'s
    indices ``x`` and offsets ``off``: integer indices, 2-D without offsets or 1-D with 1-D
    integer offsets."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"feature {name!r}: indices must be an integer tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 2:
        if off is not None:
            raise ValueError(f"feature {name!r}: offsets must be None for 2-D input, got shape {tuple(off.shape)}")
    elif x.dim() == 1:
        if off is None:
            raise ValueError(f"feature {name!r}: offsets are required with 1-D input (got None)")
        if not isinstance(off, torch.Tensor) or off.dim() != 1 or off.is_floating_point():
            raise ValueError(f"feature {name!r}: offsets must be a 1-D integer tensor")
    else:
        raise ValueError(f"feature {name!r}: input must be 1-D or 2-D, got shape {tuple(x.shape)}")


_ARANGE_CACHE: Dict[Tuple[int, Tuple[int, ...], str], torch.Tensor] = {}


def _fixed_offsets(batch: int, lengths: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Offsets (``F * B + 1``) of 2-D inputs: feature ``f`` has ``B`` bags of ``lengths[f]`` (cached)."""
    key = (batch, lengths, str(device))
    off = _ARANGE_CACHE.get(key)
    if off is None:
        parts, base = [], 0
        for L in lengths:
            parts.append(torch.arange(batch, dtype=torch.long) * L + base)
            base += batch * L
        off = torch.cat(parts + [torch.tensor([base])]).to(device)
        if len(_ARANGE_CACHE) > 64:
            _ARANGE_CACHE.clear()
        _ARANGE_CACHE[key] = off
    return off


def pack_features(names: Sequence[str], bags: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor], bool]]
                  ) -> Tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Concatenate per-feature bags (``nn.EmbeddingBag`` forms) feature-major.

    Returns ``(values, offsets, B, owned)``: ``offsets`` has ``F * B + 1`` entries; ``owned``
    says that ``values`` is a new tensor (no caller holds it). Checks each feature's form and, with one host read for
    all features, that its offsets start at 0 and stay within its indices (naming the feature).

    Raises:
        TypeError, ValueError: a form ``nn.EmbeddingBag`` refuses, or features of different
            batch sizes.
    """
    values: List[torch.Tensor] = []
    lengths: List[int] = []
    batch: List[int] = []
    fixed = True
    for name, (x, off, _) in zip(names, bags):
        check_bag_form(name, x, off)
        if x.dim() == 2:
            batch.append(x.shape[0])
            lengths.append(x.shape[1])
        else:
            fixed = False
        values.append(x.reshape(-1))
    device = values[0].device
    if fixed:
        if len(set(batch)) != 1:
            raise ValueError(f"all features need one batch size, got {batch}")
        owned = len(values) > 1 or values[0].dtype != torch.long
        flat = torch.cat(values).long() if len(values) > 1 else values[0].long()
        return flat, _fixed_offsets(batch[0], tuple(lengths), device), batch[0], owned
    offs: List[torch.Tensor] = []
    firsts: List[torch.Tensor] = []
    lasts: List[torch.Tensor] = []
    counts: List[int] = []
    base = 0
    for name, (x, off, last) in zip(names, bags):
        n = x.numel()
        if x.dim() == 2:
            B, L = x.shape
            off = torch.arange(B + 1, device=device) * L
        else:
            assert off is not None
            off = off.to(device=device, dtype=torch.long)
            if not last:
                off = torch.cat([off, off.new_full((1,), n)])
            elif off.numel() < 1:
                raise ValueError(f"feature {name!r}: with include_last_offset=True offsets needs at least one entry")
        batch.append(off.numel() - 1)
        offs.append(off[:-1] + base)
        firsts.append(off[0])
        lasts.append(off[-1])
        counts.append(n)
        base += n
    if len(set(batch)) != 1:
        raise ValueError(f"all features need one batch size, got {batch}")
    first = torch.stack(firsts).tolist()
    last_ = torch.stack(lasts).tolist()
    for name, a, z, n in zip(names, first, last_, counts):
        if a != 0:
            raise ValueError(f"feature {name!r}: offsets[0] must be 0, got {a}")
        if z != n:
            raise ValueError(f"feature {name!r}: the last offset is {z} but the feature has {n} indices "
                             "(every index must lie in a bag)")
    offs.append(torch.tensor([base], device=device))
    owned = len(values) > 1 or values[0].dtype != torch.long
    return torch.cat(values).long() if len(values) > 1 else values[0].long(), torch.cat(offs), batch[0], owned


def offsets_flags(offsets: torch.Tensor, count: int) -> List[torch.Tensor]:
    """Three 0-d bool tensors, true when ``offsets[0] != 0``, ``offsets[-1] != count`` and when the
    offsets decrease (to read with other checks in one copy; :func:`raise_bad_offsets` raises)."""
    decrease = ((offsets[1:] < offsets[:-1]).any() if offsets.numel() > 1
                else torch.zeros((), dtype=torch.bool, device=offsets.device))
    return [offsets[0] != 0, offsets[-1] != count, decrease]


def raise_bad_offsets(offsets: torch.Tensor, count: int, flags: Sequence[bool]) -> None:
    """Raise the ``ValueError`` of the first error that :func:`offsets_flags` found (read as bools)."""
    if flags[0]:
        raise ValueError(f"offsets[0] must be 0, got {int(offsets[0])}")
    if flags[1]:
        raise ValueError(f"offsets[-1] must equal the number of indices N={count}, got {int(offsets[-1])}")
    if flags[2]:
        p = int((offsets[1:] < offsets[:-1]).nonzero()[0, 0]) + 1
        raise ValueError(f"offsets must be non-decreasing, got offsets[{p - 1}]={int(offsets[p - 1])} > "
                         f"offsets[{p}]={int(offsets[p])}")


def bag_lengths(names: Sequence[str], offsets: torch.Tensor, count: int, batch: int) -> List[int]:
    """Check jagged ``offsets`` (start at 0, non-decreasing, end at ``count``); the largest bag per feature."""
    raise_bad_offsets(offsets, count, torch.stack(offsets_flags(offsets, count)).tolist())
    F = len(names)
    if batch == 0:
        return [0] * F
    lengths = (offsets[1:] - offsets[:-1]).view(F, batch)
    return lengths.amax(1).tolist()


def check_range(names: Sequence[str], num_embeddings: Sequence[int], values: torch.Tensor,
                offsets: torch.Tensor, batch: int) -> None:
    """Raise ``IndexError`` naming the feature, the value and ``n`` for an index outside ``[0, n)``."""
    F = len(names)
    if values.numel() == 0:
        return
    bounds = offsets[::batch] if batch else torch.zeros(F + 1, dtype=torch.long, device=values.device)
    counts = (bounds[1:] - bounds[:-1])
    n = torch.tensor(list(num_embeddings), device=values.device)
    limit = torch.repeat_interleave(n, counts, output_size=values.numel())
    bad = (values < 0) | (values >= limit)
    if bool(bad.any()):
        raise_out_of_range(names, num_embeddings, values, offsets, batch, int(bad.nonzero()[0, 0]))


def out_of_range_error(name: str, value: int, n: int) -> IndexError:
    """The ``IndexError`` for index ``value`` of feature ``name`` outside ``[0, n)``."""
    return IndexError(f"feature {name!r}: index {value} is out of range for num_embeddings={n}: "
                      f"indices must lie in [0, {n})")


def raise_out_of_range(names: Sequence[str], num_embeddings: Sequence[int], values: torch.Tensor,
                       offsets: torch.Tensor, batch: int, position: int) -> None:
    """Raise the ``IndexError`` for the index at ``position`` of ``values``."""
    bounds = offsets[::batch].tolist()
    f = next(i for i in range(len(names)) if bounds[i] <= position < bounds[i + 1])
    raise out_of_range_error(names[f], int(values[position]), num_embeddings[f])
