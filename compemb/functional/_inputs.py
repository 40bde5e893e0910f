"""Bag input: the ``nn.EmbeddingBag`` forward contract brought to one canonical form, and validators.

:func:`bag_input` validates ``input``/``offsets``/``per_sample_weights`` with one device-to-host
copy and returns flat int64 indices, ``B + 1`` offsets and the common bag length when there is one.

Example::

    >>> bag_input(torch.tensor([[1, 2], [3, 4]]), num_embeddings=5).bag_len
    2
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from compemb.options import MODES, check_max_norm, check_mode
from compemb.partitions import MAX_N
from compemb.partitions._numeric import as_int

__all__ = [
    "BagInput",
    "UNKNOWN_BAG_LEN",
    "bag_input",
    "normalize_bag_input",
    "module_bag_input",
    "fixed_bag_length",
    "standard_offsets",
    "is_integer_tensor",
    "check_int",
    "check_num_embeddings",
    "check_table_size",
    "check_float_tables",
    "jit_unsupported_error",
    "check_max_norm",
    "check_per_sample_weights_dtype",
]

#: a ``bag_len`` not learnt yet: computed where a path needs it (``None`` means bags of unequal length)
UNKNOWN_BAG_LEN = -1

_INT64_MAX = 2**63 - 1


class BagInput(NamedTuple):
    """Canonical bag input (see :func:`bag_input`).

    Attributes:
        indices: int64 ``(N,)``, every index validated.
        offsets: int64 ``(B + 1,)``: starts at 0, non-decreasing, ends at ``N``. May be a cached
            tensor shared between calls: never modify it in place.
        per_sample_weights: ``None`` or float ``(N,)``.
        bag_len: ``L`` when every bag holds exactly ``L >= 1`` indices, else ``None``.
    """

    indices: torch.Tensor
    offsets: torch.Tensor
    per_sample_weights: Optional[torch.Tensor]
    bag_len: Optional[int]


def check_int(name: str, value: Any, minimum: Optional[int] = 1, owner: str = "") -> int:
    """``value`` as a Python int ``>= minimum`` (``None``: any): any integer ``operator.index`` accepts.

    Python ints, numpy integers (facebookresearch/dlrm passes table sizes as ``np.int64``) and
    0-d integer tensors are accepted; bools (``bool``, ``np.bool_``, bool tensors), floats and
    everything else are refused rather than truncated (the rule of
    ``compemb.partitions._numeric.as_int``, which the partition constructors use too).

    Raises:
        TypeError: not an integer, naming ``owner``, ``name`` and the value.
        ValueError: below ``minimum``.

    Example::

        >>> check_int("embedding_dim", 16, 1, "MyBag")
        16
        >>> import numpy as np
        >>> check_int("num_embeddings", np.int64(1460))
        1460
    """
    result = as_int(value, name, owner)
    if minimum is not None and result < minimum:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{name} must be >= {minimum}, got {result}")
    return result


def check_num_embeddings(name: str, value: Any, owner: str = "") -> int:
    """A number of categories: :func:`check_int` ``>= 1`` and at most ``compemb.partitions.MAX_N = 2**63``
    (indices are int64).

    Example::

        >>> check_num_embeddings("num_embeddings", 2**63)
        9223372036854775808
    """
    n = check_int(name, value, 1, owner)
    if n > MAX_N:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(
            f"{prefix}{name}={n} exceeds the int64 index range: at most 2**63 = {MAX_N} "
            "categories (indices are int64)"
        )
    return n


def check_table_size(owner: str, what: str, shape: Sequence[int], dtype: Optional[torch.dtype] = None) -> None:
    """Refuse a table that torch could not allocate, before allocating it.

    A table of ``prod(shape)`` entries of ``dtype`` (default: torch's default dtype) must fit
    int64 byte counts, as torch's storage does; otherwise the allocation fails with an internal
    "storage size overflowed" that names neither the table nor its size.

    Raises:
        ValueError: naming ``owner``, the table ``what``, its shape and its size in bytes.

    Example::

        >>> check_table_size("MyBag", "weight", (2**62, 4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: MyBag: the table weight of 4611686018427387904 x 4 float32 would take ... bytes, ...
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    numel = math.prod(int(s) for s in shape)
    if numel * itemsize > _INT64_MAX:
        dims = " x ".join(str(int(s)) for s in shape)
        raise ValueError(
            f"{owner}: the table {what} of {dims} {str(dtype).replace('torch.', '')} would take "
            f"{numel * itemsize} bytes, more than torch can address (2**63 - 1 bytes); use fewer rows "
            "(more collisions) or a smaller width"
        )


def check_float_tables(tables: Sequence[Any], names: Sequence[str], owner: str) -> None:
    """Given tables must be floating-point tensors of one dtype and device.

    Raises:
        TypeError: a table that is not a floating-point tensor (an integer or bool table, a list),
            naming ``owner`` and the table.
        ValueError: tables of different dtypes or devices.

    Example::

        >>> check_float_tables([torch.ones(2, 3, dtype=torch.long)], ["weight"], "MyBag")
        Traceback (most recent call last):
        ...
        TypeError: MyBag: weight must be a floating point tensor, got torch.int64
    """
    for name, t in zip(names, tables):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{owner}: {name} must be a floating point tensor, got {got}")
    kinds = [(str(t.dtype).replace("torch.", ""), str(t.device)) for t in tables]
    if len(set(kinds)) > 1:
        raise ValueError(f"{owner}: {', '.join(names)} must share one dtype and device, got (dtype, device) {kinds}")


def jit_unsupported_error(name: str, how: str) -> RuntimeError:
    """The error for ``torch.jit.trace`` / ``torch.jit.script`` of a compemb module or function.

    Both would be wrong rather than slow: a forward validates its input and reads the bag
    structure on the host, so a trace would freeze the example's offsets and index checks into
    the graph (other bags computed wrongly, out-of-range indices read), and TorchScript cannot
    compile the Python it is written in. ``torch.compile`` runs the same code correctly.

    Example::

        >>> str(jit_unsupported_error("QREmbeddingBag", "torch.jit.script"))[:49]
        'QREmbeddingBag: torch.jit.script is not supported'
    """
    why = {
        "torch.jit.trace": "a trace would record the example's bag structure and index checks as constants, "
                           "so other inputs would be computed wrongly or read out of range",
        "torch.jit.script": "its forward validates the input in Python, which TorchScript cannot compile",
    }.get(how, "")
    return RuntimeError(
        f"{name}: {how} is not supported ({why}); use torch.compile(module) or eager mode instead"
    )


def check_per_sample_weights_dtype(
    per_sample_weights: Optional[torch.Tensor], table_dtype: torch.dtype, name: str = "embedding bag"
) -> None:
    """``per_sample_weights`` must have the tables' dtype, as :class:`torch.nn.EmbeddingBag` requires."""
    if per_sample_weights is not None and per_sample_weights.dtype != table_dtype:
        raise TypeError(
            f"{name}: per_sample_weights has dtype {per_sample_weights.dtype} but the tables are "
            f"{table_dtype}; pass per_sample_weights of the tables' dtype"
        )


def is_integer_tensor(t: torch.Tensor) -> bool:
    """Whether ``t`` holds integers (not floating point, complex or bool)."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


_OFFSETS_CACHE: Dict[Tuple[int, int, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}


def standard_offsets(num_bags: int, bag_len: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(arange(B + 1) * L, arange(B) * L)`` for ``B`` bags of ``L`` indices, cached per device.

    The tensors are shared between calls: never modify them in place. ``standard_offsets(n, 1)[1]``
    is ``arange(n)``, the offsets of ``n`` one-index bags.
    """
    if torch.compiler.is_compiling():
        # no cache inside a compiled graph: storing graph tensors in a global is a side effect
        # torch.compile cannot keep
        full = torch.arange(num_bags + 1, device=device, dtype=torch.long) * bag_len
        return full, full[:num_bags]
    key = (num_bags, bag_len, device)
    hit = _OFFSETS_CACHE.get(key)
    if hit is None:
        if len(_OFFSETS_CACHE) >= 32:
            _OFFSETS_CACHE.clear()
        # never inference tensors, even when first asked for under torch.inference_mode():
        # autograd refuses to save those, so later training steps would fail
        with torch.inference_mode(False):
            full = torch.arange(num_bags + 1, device=device, dtype=torch.long)
            if bag_len != 1:
                full = full * bag_len
            hit = _OFFSETS_CACHE[key] = (full, full[:num_bags])
    return hit


def fixed_bag_length(offsets: torch.Tensor, n_idx: int) -> Optional[int]:
    """``L`` when the ``B + 1`` ``offsets`` over ``n_idx`` indices make every bag ``L >= 1`` long, else ``None``.

    One ``torch.equal`` (a device sync on CUDA); :func:`bag_input` learns ``L`` without it.
    """
    num_bags = offsets.shape[0] - 1
    if num_bags == 0 or n_idx == 0 or n_idx % num_bags:
        return None
    length = n_idx // num_bags
    return length if torch.equal(offsets, standard_offsets(num_bags, length, offsets.device)[0]) else None


def _fetch(stats: List[torch.Tensor]) -> List[int]:
    """The integer values of 0-d tensors, with at most one device-to-host copy."""
    if not stats:
        return []
    if stats[0].device.type == "cpu":  # no copy to save: skip the stack
        return [int(s) for s in stats]
    return torch.stack(stats).tolist()  # the forward's one device-to-host sync


def normalize_bag_input(
    input: torch.Tensor,
    offsets: Optional[torch.Tensor] = None,
    per_sample_weights: Optional[torch.Tensor] = None,
    include_last_offset: bool = False,
    mode: str = "mean",
    num_embeddings: Optional[int] = None,
    name: str = "embedding bag",
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """:func:`bag_input` without the bag length: ``(flat_input, offsets, per_sample_weights)``.

    Example::

        >>> flat, offs, w = normalize_bag_input(torch.tensor([[1, 2], [3, 4]]), num_embeddings=5)
        >>> flat.tolist(), offs.tolist(), w
        ([1, 2, 3, 4], [0, 2, 4], None)
    """
    got = bag_input(input, offsets, per_sample_weights, include_last_offset, mode, num_embeddings, name)
    return got.indices, got.offsets, got.per_sample_weights


def module_bag_input(
    module: Any,
    input: torch.Tensor,
    offsets: Optional[torch.Tensor] = None,
    per_sample_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """:func:`normalize_bag_input` with a module's ``include_last_offset``, ``mode``,
    ``num_embeddings`` and class name (for the error messages); ``per_sample_weights`` must also
    have the dtype of the module's ``weight``.

    ``module`` is any ``nn.Module`` with those four attributes (``weight`` a tensor).
    """
    if torch.compiler.is_compiling():  # (see bag_input)
        return torch._dynamo.disable(_module_bag_input)(module, input, offsets, per_sample_weights)
    return _module_bag_input(module, input, offsets, per_sample_weights)


def _module_bag_input(
    module: Any, input: torch.Tensor, offsets: Optional[torch.Tensor], per_sample_weights: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    name = type(module).__name__
    flat, offsets, per_sample_weights = normalize_bag_input(
        input, offsets, per_sample_weights, include_last_offset=module.include_last_offset,
        mode=module.mode, num_embeddings=module.num_embeddings, name=name,
    )
    check_per_sample_weights_dtype(per_sample_weights, module.weight.dtype, name)
    return flat, offsets, per_sample_weights


def bag_input(
    input: torch.Tensor,
    offsets: Optional[torch.Tensor] = None,
    per_sample_weights: Optional[torch.Tensor] = None,
    include_last_offset: bool = False,
    mode: str = "mean",
    num_embeddings: Optional[int] = None,
    name: str = "embedding bag",
) -> BagInput:
    """Validate an ``nn.EmbeddingBag``-style input and bring it to the canonical form.

    Accepts exactly what :class:`torch.nn.EmbeddingBag` accepts: a 2-D ``input`` of shape
    ``(B, L)`` (``B`` bags of ``L`` indices, ``offsets`` must be ``None``) or a 1-D ``input`` of
    shape ``(N,)`` with ``offsets`` giving the start of each bag (``B`` entries, or ``B + 1`` when
    ``include_last_offset`` is true — then, as in torch, indices after the last offset belong to no
    bag and are dropped).

    Every check needs at most one device-to-host copy (the index range and the offsets' first,
    last, smallest and largest step), so on CUDA a forward synchronises once; the bag length comes
    from the same copy. On CPU, offsets equal to ``arange(B)`` (one-index bags) are recognised
    with one ``torch.equal`` and skip the offsets checks.

    Args:
        input: integer tensor of indices (int64 or int32).
        offsets: integer tensor of bag starts for 1-D ``input``; ``None`` for 2-D ``input``.
        per_sample_weights: float tensor of ``input``'s shape, only with ``mode="sum"``.
        include_last_offset: whether ``offsets`` has ``B + 1`` entries.
        mode: ``"sum"``, ``"mean"`` or ``"max"`` (checked, and used for ``per_sample_weights``).
        num_embeddings: when given, every index must lie in ``[0, num_embeddings)``.
        name: the module or function named in error messages.

    Returns:
        a :class:`BagInput` ``(indices, offsets, per_sample_weights, bag_len)``.

    Raises:
        TypeError: ``input`` or ``offsets`` is not an integer tensor, ``per_sample_weights`` not a
            float tensor.
        IndexError: an index is negative or ``>= num_embeddings`` (names ``name``, the value, n).
        ValueError: malformed offsets (not starting at 0, decreasing, past the end of ``input``),
            ``offsets`` given with 2-D input or missing with 1-D input, ``per_sample_weights``
            with a mode other than sum or of a shape other than ``input``'s.

    Shape:
        - input: ``(B, L)`` or ``(N,)``; offsets: ``(B,)`` or ``(B + 1,)``.
        - output: ``(N,)``, ``(B + 1,)``, ``(N,)``.

    Example::

        >>> got = bag_input(torch.tensor([1, 2, 3]), torch.tensor([0, 1]), num_embeddings=5)
        >>> got.offsets.tolist(), got.bag_len
        ([0, 1, 3], None)
    """
    if torch.compiler.is_compiling():
        # the checks copy values to the host: under torch.compile they run outside the graph
        # (one graph break, no recompilation per module, no Tensor.item() warnings)
        return torch._dynamo.disable(_bag_input)(
            input, offsets, per_sample_weights, include_last_offset, mode, num_embeddings, name
        )
    return _bag_input(input, offsets, per_sample_weights, include_last_offset, mode, num_embeddings, name)


def _bag_input(
    input: torch.Tensor,
    offsets: Optional[torch.Tensor],
    per_sample_weights: Optional[torch.Tensor],
    include_last_offset: bool,
    mode: str,
    num_embeddings: Optional[int],
    name: str,
) -> BagInput:
    if torch.jit.is_tracing():
        raise jit_unsupported_error(name, "torch.jit.trace")
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor of indices, got {type(input).__name__}")
    if not is_integer_tensor(input):
        raise TypeError(
            f"{name}: input must be an integer tensor (torch.long or torch.int), got dtype {input.dtype}"
        )
    if mode not in MODES:
        check_mode(mode)
    if per_sample_weights is not None:
        _check_per_sample_weights(per_sample_weights, input, mode, name)

    ndim = input.dim()
    bag_len: Optional[int] = None
    check_offsets = False
    if ndim == 1:
        if offsets is None:
            raise ValueError(f"{name}: offsets are required with 1-D input (got None)")
        flat = input
        if isinstance(offsets, torch.Tensor) and offsets.dtype == torch.uint64:
            offsets = _uint64_offsets(offsets, input.shape[0], name)
        full, bag_len = _one_index_offsets(input, offsets, include_last_offset, name)
        if full is None:
            full = offsets.to(device=input.device, dtype=torch.long)
            if not include_last_offset:
                full = torch.cat([full, full.new_full((1,), input.shape[0])])
            check_offsets = True
    elif ndim == 2:
        if offsets is not None:
            raise ValueError(
                f"{name}: offsets must be None for 2-D input (each row is a bag), got offsets of "
                f"shape {tuple(offsets.shape)}"
            )
        num_bags, length = input.shape
        flat = input.reshape(-1)
        full = standard_offsets(num_bags, length, input.device)[0]
        bag_len = length if length and num_bags else None
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    else:
        raise ValueError(f"{name}: input must be 1-D or 2-D, got shape {tuple(input.shape)}")

    unsigned = flat.dtype == torch.uint64  # values >= 2**63 turn negative in int64
    if flat.dtype != torch.long:
        flat = flat.long()
    # everything to check goes into one list of 0-d tensors, fetched once
    stats: List[torch.Tensor] = []
    check_range = num_embeddings is not None and flat.shape[0] > 0
    if check_range:
        stats += torch.aminmax(flat)
    if check_offsets:
        # offsets[0] == 0 and non-decreasing steps bound every offset by the last one
        stats += [full[0], full[-1]]
        if full.shape[0] > 1:
            stats += torch.aminmax(full.diff())
    values = _fetch(stats)
    if check_range and num_embeddings is not None:
        _check_range(values[0], values[1], num_embeddings, name, unsigned)
    if check_offsets:
        first, last = values[-4:-2] if full.shape[0] > 1 else values[-2:]
        smallest, biggest = values[-2:] if full.shape[0] > 1 else (0, 0)
        _check_offsets(full, first, last, smallest, flat.shape[0], name)
        if full.shape[0] > 1 and smallest == biggest and smallest > 0:
            bag_len = smallest
        if include_last_offset and last < flat.shape[0]:
            # torch.nn.EmbeddingBag ignores indices after the last offset
            flat = flat[:last]
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights[:last]
    return BagInput(flat, full, per_sample_weights, bag_len)


def _check_per_sample_weights(per_sample_weights: Any, input: torch.Tensor, mode: str, name: str) -> None:
    if mode != "sum":
        raise ValueError(f"{name}: per_sample_weights is only supported for mode='sum', got mode={mode!r}")
    if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
        raise TypeError(
            f"{name}: per_sample_weights must be a floating point tensor, got "
            f"{getattr(per_sample_weights, 'dtype', type(per_sample_weights).__name__)}"
        )
    if per_sample_weights.shape != input.shape:
        raise ValueError(
            f"{name}: per_sample_weights must have the shape of input {tuple(input.shape)}, "
            f"got {tuple(per_sample_weights.shape)}"
        )


def _one_index_offsets(
    input: torch.Tensor, offsets: Any, include_last_offset: bool, name: str
) -> Tuple[Optional[torch.Tensor], Optional[int]]:
    """Check the offsets of 1-D ``input``; ``(B + 1 offsets, 1)`` when they are one-index bags on CPU.

    ``(None, None)`` when the offsets must be checked in full.
    """
    if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1:
        raise ValueError(
            f"{name}: offsets must be a 1-D tensor, got "
            f"{tuple(offsets.shape) if isinstance(offsets, torch.Tensor) else type(offsets).__name__}"
        )
    if not is_integer_tensor(offsets):
        raise TypeError(f"{name}: offsets must be an integer tensor, got dtype {offsets.dtype}")
    if include_last_offset and offsets.shape[0] == 0:
        raise ValueError(f"{name}: with include_last_offset=True offsets needs at least one entry")
    device, n_idx = input.device, input.shape[0]
    # on CPU there is no sync to save: one torch.equal spots one index per bag
    if device.type != "cpu" or not n_idx or offsets.shape[0] != n_idx + bool(include_last_offset):
        return None, None
    std_full, std_head = standard_offsets(n_idx, 1, device)
    if offsets.dtype != torch.long or offsets.device != device:
        offsets = offsets.to(device=device, dtype=torch.long)
    if torch.equal(offsets, std_full if include_last_offset else std_head):
        return std_full, 1
    return None, None


def _uint64_offsets(offsets: torch.Tensor, n_idx: int, name: str) -> torch.Tensor:
    """uint64 ``offsets`` as int64, refusing (with its true value) an offset that int64 cannot hold."""
    signed = offsets.long()
    negative = signed < 0
    if bool(negative.any()):
        value = int(signed[negative][0]) + 2**64
        raise ValueError(f"{name}: offsets point past the end of input: offset {value} > N={n_idx}")
    return signed


def _check_range(lo: int, hi: int, num_embeddings: int, name: str, unsigned: bool = False) -> None:
    if lo < 0 and unsigned:  # a uint64 index >= 2**63, wrapped by the int64 conversion
        hi = lo + 2**64
    elif lo < 0:
        raise IndexError(
            f"{name}: index {lo} is out of range for num_embeddings={num_embeddings}: indices "
            f"must lie in [0, {num_embeddings}) (negative indices are not wrapped)"
        )
    if hi >= num_embeddings:
        raise IndexError(
            f"{name}: index {hi} is out of range for num_embeddings={num_embeddings}: indices "
            f"must lie in [0, {num_embeddings})"
        )


def _check_offsets(full: torch.Tensor, first: int, last: int, smallest_step: int, n_idx: int, name: str) -> None:
    if first != 0:
        raise ValueError(f"{name}: offsets[0] must be 0 (the first bag starts at input[0]), got {first}")
    biggest = last if smallest_step >= 0 else int(full.max())  # (the error paths may be slow)
    if biggest > n_idx:
        raise ValueError(f"{name}: offsets point past the end of input: offset {biggest} > N={n_idx}")
    if smallest_step < 0:
        pos = int((full[1:] < full[:-1]).nonzero()[0, 0]) + 1
        raise ValueError(
            f"{name}: offsets must be non-decreasing, got offsets[{pos - 1}]={int(full[pos - 1])} > "
            f"offsets[{pos}]={int(full[pos])}"
        )
