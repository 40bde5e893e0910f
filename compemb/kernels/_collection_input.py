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

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = [
    "check_bag_form",
    "Check",
    "EVERY_INDEX",
    "PackedBags",
    "pack_deferred",
    "raise_failed",
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


_ARANGE_CACHE: Dict[Tuple[int, Tuple[int, ...], torch.device], torch.Tensor] = {}


def _build_fixed_offsets(batch: int, lengths: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    parts, base = [], 0
    for L in lengths:
        parts.append(torch.arange(batch, dtype=torch.long, device=device) * L + base)
        base += batch * L
    return torch.cat(parts + [torch.tensor([base], device=device)])


def _fixed_offsets(batch: int, lengths: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Offsets (``F * B + 1``) of 2-D inputs: feature ``f`` has ``B`` bags of ``lengths[f]``.

    Cached per shape and device (shared between calls: never modify in place), with the guards of
    :func:`compemb.functional.standard_offsets`: no cache inside a compiled graph, and never an
    inference tensor (autograd refuses to save those, so a training step after a first lookup
    under ``torch.inference_mode()`` would fail).
    """
    if torch.compiler.is_compiling():
        return _build_fixed_offsets(batch, lengths, device)
    key = (batch, lengths, device)
    off = _ARANGE_CACHE.get(key)
    if off is None:
        with torch.inference_mode(False):
            off = _build_fixed_offsets(batch, lengths, device)
        if len(_ARANGE_CACHE) > 64:
            _ARANGE_CACHE.clear()
        _ARANGE_CACHE[key] = off
    return off


#: a deferred check: a 0-d bool tensor, true on an error, and a function that raises the error
Check = Tuple[torch.Tensor, Callable[[], None]]

#: what the last-offset error of :func:`pack_deferred` says by default
EVERY_INDEX = "every index must lie in a bag"


class PackedBags(NamedTuple):
    """Features packed feature-major by :func:`pack_deferred`.

    ``offsets`` has ``F * B + 1`` entries (the KeyedJaggedTensor layout); ``owned`` says that
    ``values`` is a new tensor (no caller holds it); ``checks`` are the deferred per-feature
    offset checks (:func:`raise_failed` reads them in one copy, or the caller reads them with
    its own checks).
    """

    values: torch.Tensor
    offsets: torch.Tensor
    batch: int
    owned: bool
    checks: List[Check]


def pack_deferred(names: Sequence[str], bags: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor], bool]],
              every_index: str = EVERY_INDEX) -> PackedBags:
    """Concatenate per-feature bags (``nn.EmbeddingBag`` forms) feature-major, without device reads.

    Each feature's form is checked at once; that its own offsets start at 0 and end at its number
    of indices is left to the returned ``checks`` (``every_index`` ends the last-offset error).
    2-D inputs get shared cached offsets (never modify them in place) and no checks.

    Raises:
        TypeError, ValueError: a form ``nn.EmbeddingBag`` refuses, naming the feature, or features
            of different batch sizes.
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
    owned = len(values) > 1 or values[0].dtype != torch.long
    flat = torch.cat(values).long() if len(values) > 1 else values[0].long()
    if fixed:
        if len(set(batch)) != 1:
            raise ValueError(f"all features need one batch size, got {batch}")
        return PackedBags(flat, _fixed_offsets(batch[0], tuple(lengths), device), batch[0], owned, [])
    offs: List[torch.Tensor] = []
    firsts: List[torch.Tensor] = []
    lasts: List[torch.Tensor] = []
    counts: List[int] = []
    batch = []
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
    offs.append(torch.tensor([base], device=device))
    first, last_ = torch.stack(firsts), torch.stack(lasts)
    counts_t = torch.tensor(counts, device=device)
    feature_names = list(names)

    def bad_offsets() -> None:  # the first bad feature, in feature order
        for name, a, z, n in zip(feature_names, first.tolist(), last_.tolist(), counts):
            if a != 0:
                raise ValueError(f"feature {name!r}: offsets[0] must be 0, got {a}")
            if z != n:
                raise ValueError(f"feature {name!r}: the last offset is {z} but the feature has {n} indices "
                                 f"({every_index})")

    flag = (first != 0).any() | (last_ != counts_t).any()
    return PackedBags(flat, torch.cat(offs), batch[0], owned, [(flag, bad_offsets)])


def raise_failed(checks: Sequence[Check], flags: Optional[Sequence[bool]] = None) -> None:
    """Raise the error of the first failed check (``flags``: the checks' flags already read;
    ``None``: read them now, in one copy)."""
    if not checks:
        return
    if flags is None:
        flags = torch.stack([flag.to(torch.bool) for flag, _ in checks]).tolist()
    for flag, (_, raise_fn) in zip(flags, checks):
        if flag:
            raise_fn()


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
    packed = pack_deferred(names, bags)
    raise_failed(packed.checks)
    return packed.values, packed.offsets, packed.batch, packed.owned


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
