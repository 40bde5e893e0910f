"""The functional core: compositional embedding bags in plain PyTorch (the reference backend).

A compositional embedding (Shi et al., KDD 2020, arXiv 1909.02107) stores one table per partition
``P_1 .. P_k`` of the category set ``{0, ..., n-1}``; the embedding of ``x`` combines the rows
``W_i[P_i(x)]`` by element-wise multiplication (``"mult"``), addition (``"add"``) or concatenation
(``"concat"``). An embedding *bag* pools the embeddings of the indices of each bag by sum, mean or
max, exactly like :class:`torch.nn.EmbeddingBag`.

Three layers, each usable alone:

* :func:`normalize_bag_input` turns every form of the ``nn.EmbeddingBag`` forward contract (1-D input
  with offsets, 2-D input, ``include_last_offset``, ``per_sample_weights``) into one canonical form —
  flat int64 indices and ``B + 1`` offsets — and validates it (one ``aminmax`` pass over the indices).
* :func:`embedding_bag_codes` is the kernel contract of ``docs/architecture.md`` section 2 computed
  on partition *codes*; every faster backend is tested against it.
* :func:`compositional_embedding_bag` = normalise, ``family.encode``, then a backend.

Composition semantics. ``compose="before_pool"`` (the default, the paper's definition) combines
the k rows of every index and then pools the bag; ``compose="after_pool"`` pools each table's rows
over the bag and combines the pooled vectors (what the reference DLRM ``QREmbeddingBag`` does).
For ``"add"`` and ``"concat"`` with ``mode`` sum or mean the two are the same function (pooling is
linear and acts coordinate-wise), so the reference computes them with one fused
:func:`torch.nn.functional.embedding_bag` per table. For ``"mult"`` they differ as soon as a bag
holds more than one index (a sum of products is not a product of sums); for ``"max"`` they differ
for every operation. Bags of at most one index give the same result either way (with
``per_sample_weights``, ``before_pool`` scales the composed vector once whereas ``after_pool``
scales each table's row, i.e. ``w**k`` for ``"mult"``).

Evaluation (all exact, picked per call): ``after_pool``, and ``before_pool`` with add/concat and
sum/mean, or with bags of one index, use one fused ``embedding_bag`` per table; ``mult``
``before_pool`` with sum/mean uses a small autograd Function (gather, multiply in place, pool;
hand-written backward that forms each table's gradient directly, sparse when asked); the rest
(``max``, ``max_norm``, ``scale_grad_by_freq``, float16/bfloat16) gathers rows with autograd and
pools them with a reshape (bags of one length) or a segmented reduction. ``max_norm``
renormalises the looked-up rows of every table in place, as ``nn.EmbeddingBag`` does for its one.

``max`` pooling has the gradient of :func:`torch.nn.functional.embedding_bag` on every path: each
output coordinate back-propagates to exactly one element, the first index of the bag (in input
order) that holds the maximum; tied copies (a repeated index, equal rows) get nothing. With the
identity family this is ``nn.EmbeddingBag(mode="max")`` exactly, forward and backward.

Device syncs. Validation (index range, offsets) reads one small tensor back to the host — on
CUDA the single device-to-host sync of a module's forward; everything the kernels need to pick
their path (e.g. whether all bags have one length) comes from that same read. On CPU, one-index
bags (offsets ``arange(B)``) are recognised with one ``torch.equal`` and skip the offsets checks.

Initialisation (:func:`init_bound`). Component tables are drawn from symmetric uniforms
``U(-a, a)`` chosen so that every composed coordinate has mean 0 and the variance ``1 / (3n)`` of a
full table initialised ``U(-sqrt(1/n), sqrt(1/n))`` (the ``nn.EmbeddingBag`` default is N(0, 1);
DLRM initialises full tables ``U(±sqrt(1/n))``):

* ``"concat"``: every coordinate comes from one table: ``a = sqrt(1/n)``;
* ``"add"``: a sum of k independent ``U(±a)``: ``k a²/3 = 1/(3n)``, so ``a = sqrt(1/(k n))``;
* ``"mult"``: a product of k independent ``U(±a)``: variance ``(a²/3)^k = 1/(3n)``, so
  ``a = sqrt(3) (3n)^(-1/(2k))``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "OPERATIONS",
    "MODES",
    "COMPOSES",
    "normalize_bag_input",
    "module_bag_input",
    "embedding_bag_codes",
    "compositional_embedding_bag",
    "encode_validated",
    "init_bound",
    "check_operation",
    "check_mode",
    "check_compose",
    "check_max_norm",
    "check_per_sample_weights_dtype",
]

OPERATIONS = ("mult", "add", "concat")
MODES = ("sum", "mean", "max")
COMPOSES = ("before_pool", "after_pool")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_operation(operation: str) -> str:
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
    return operation


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_compose(compose: str) -> str:
    if compose not in COMPOSES:
        raise ValueError(f"compose must be one of {COMPOSES}, got {compose!r}")
    return compose


def check_max_norm(max_norm, name: str = "embedding bag") -> Optional[float]:
    """``None`` or a finite number ``> 0`` (a negative ``max_norm`` would flip the rows' signs)."""
    if max_norm is None:
        return None
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
        raise TypeError(f"{name}: max_norm must be None or a number > 0, got {max_norm!r}")
    if not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"{name}: max_norm must be None or a finite number > 0, got max_norm={max_norm!r}")
    return max_norm


def check_per_sample_weights_dtype(per_sample_weights, table_dtype, name: str = "embedding bag") -> None:
    """``per_sample_weights`` must have the tables' dtype, as :class:`torch.nn.EmbeddingBag` requires."""
    if per_sample_weights is not None and per_sample_weights.dtype != table_dtype:
        raise TypeError(
            f"{name}: per_sample_weights has dtype {per_sample_weights.dtype} but the tables are "
            f"{table_dtype}; pass per_sample_weights of the tables' dtype"
        )


def init_bound(num_embeddings: int, k: int, operation: str) -> float:
    """Half-width ``a`` of the ``U(-a, a)`` each of ``k`` component tables is drawn from.

    Chosen so that the composed vectors have mean 0 and the variance ``1 / (3 n)`` of a full
    ``n``-row table drawn ``U(-sqrt(1/n), sqrt(1/n))`` (see the module docstring for the algebra).

    Args:
        num_embeddings: ``n``, the number of categories.
        k: the number of component tables.
        operation: ``"mult"``, ``"add"`` or ``"concat"``.

    Example::

        >>> round(init_bound(10_000, 1, "mult"), 4) == round((1 / 10_000) ** 0.5, 4)
        True
    """
    check_operation(operation)
    if num_embeddings < 1 or k < 1:
        raise ValueError(f"need num_embeddings >= 1 and k >= 1, got {num_embeddings} and {k}")
    if operation == "concat" or k == 1:
        return math.sqrt(1.0 / num_embeddings)
    if operation == "add":
        return math.sqrt(1.0 / (k * num_embeddings))
    return math.sqrt(3.0) * (3.0 * num_embeddings) ** (-1.0 / (2 * k))


# ----------------------------------------------------------------------------------------------
# input normalisation


def _is_integer_tensor(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


_OFFSETS_CACHE: dict = {}


def _standard_offsets(num_bags: int, bag_len: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(arange(B + 1) * L, arange(B) * L)`` for ``B`` bags of ``L`` indices, cached per device.

    The tensors are shared between calls: never modify them in place. ``_standard_offsets(n, 1)[1]``
    is ``arange(n)``, the offsets of ``n`` one-index bags.
    """
    key = (num_bags, bag_len, device)
    hit = _OFFSETS_CACHE.get(key)
    if hit is None:
        if len(_OFFSETS_CACHE) >= 32:
            _OFFSETS_CACHE.clear()
        # (never inference tensors, even when first asked for under torch.inference_mode():
        # autograd refuses to save those, so later training steps would fail)
        with torch.inference_mode(False):
            full = torch.arange(num_bags + 1, device=device, dtype=torch.long)
            if bag_len != 1:
                full = full * bag_len
            hit = _OFFSETS_CACHE[key] = (full, full[:num_bags])
    return hit


def _singleton_offsets(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n)`` (cached): the offsets of ``n`` bags of one index each."""
    return _standard_offsets(n, 1, device)[1]


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
    """Validate an ``nn.EmbeddingBag``-style input and bring it to the canonical form.

    Accepts exactly what :class:`torch.nn.EmbeddingBag` accepts: a 2-D ``input`` of shape
    ``(B, L)`` (``B`` bags of ``L`` indices, ``offsets`` must be ``None``) or a 1-D ``input`` of
    shape ``(N,)`` with ``offsets`` giving the start of each bag (``B`` entries, or ``B + 1`` when
    ``include_last_offset`` is true — then, as in torch, indices after the last offset belong to no
    bag and are dropped).

    Every check needs at most one device-to-host copy (one small tensor of the index range and
    the offsets' first, last, smallest and largest step), so on CUDA a forward synchronises once.

    Args:
        input: integer tensor of indices (int64 or int32).
        offsets: integer tensor of bag starts for 1-D ``input``; ``None`` for 2-D ``input``.
        per_sample_weights: float tensor of ``input``'s shape, only with ``mode="sum"`` (the modules
            require the tables' dtype, as ``nn.EmbeddingBag`` does).
        include_last_offset: whether ``offsets`` has ``B + 1`` entries.
        mode: ``"sum"``, ``"mean"`` or ``"max"`` (checked, and used for ``per_sample_weights``).
        num_embeddings: when given, every index must lie in ``[0, num_embeddings)``.
        name: the module or function named in error messages.

    Returns:
        ``(flat_input, offsets, per_sample_weights)``: int64 ``(N,)``, int64 ``(B + 1,)`` with
        ``offsets[0] == 0``, non-decreasing and ``offsets[-1] == N``, and ``None`` or a float
        ``(N,)`` tensor. The offsets may be a cached tensor shared between calls (for 2-D input
        and one-index bags): do not modify them in place.

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

        >>> flat, offs, w = normalize_bag_input(torch.tensor([[1, 2], [3, 4]]), num_embeddings=5)
        >>> flat.tolist(), offs.tolist(), w
        ([1, 2, 3, 4], [0, 2, 4], None)
    """
    return _normalize(input, offsets, per_sample_weights, include_last_offset, mode, num_embeddings, name)[:3]


def module_bag_input(module, input, offsets=None, per_sample_weights=None):
    """:func:`normalize_bag_input` with a module's ``include_last_offset``, ``mode``,
    ``num_embeddings`` and class name (for the error messages); ``per_sample_weights`` must also
    have the dtype of the module's ``weight``."""
    flat, offsets, per_sample_weights = normalize_bag_input(
        input, offsets, per_sample_weights, include_last_offset=module.include_last_offset,
        mode=module.mode, num_embeddings=module.num_embeddings, name=type(module).__name__,
    )
    check_per_sample_weights_dtype(per_sample_weights, module.weight.dtype, type(module).__name__)
    return flat, offsets, per_sample_weights


def _normalize(input, offsets, per_sample_weights, include_last_offset, mode, num_embeddings, name):
    """:func:`normalize_bag_input`, also returning ``bag_len``: ``L`` when every bag holds exactly
    ``L >= 1`` indices, else ``None`` (learnt from the same single fetch, so the kernels need no
    further device sync to pick their fixed-length paths)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor of indices, got {type(input).__name__}")
    if not _is_integer_tensor(input):
        raise TypeError(
            f"{name}: input must be an integer tensor (torch.long or torch.int), got dtype {input.dtype}"
        )
    if mode not in MODES:
        check_mode(mode)
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(
                f"{name}: per_sample_weights is only supported for mode='sum', got mode={mode!r}"
            )
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

    ndim = input.dim()
    bag_len = None
    check_offsets = False
    if ndim == 1:
        if offsets is None:
            raise ValueError(f"{name}: offsets are required with 1-D input (got None)")
        if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1:
            raise ValueError(
                f"{name}: offsets must be a 1-D tensor, got "
                f"{tuple(offsets.shape) if isinstance(offsets, torch.Tensor) else type(offsets).__name__}"
            )
        if not _is_integer_tensor(offsets):
            raise TypeError(f"{name}: offsets must be an integer tensor, got dtype {offsets.dtype}")
        flat = input
        device = input.device
        if offsets.dtype != torch.long or offsets.device != device:
            offsets = offsets.to(device=device, dtype=torch.long)
        n_idx = flat.shape[0]
        full = None
        if include_last_offset:
            if offsets.shape[0] == 0:
                raise ValueError(f"{name}: with include_last_offset=True offsets needs at least one entry")
            if device.type == "cpu" and offsets.shape[0] == n_idx + 1 and n_idx:
                std_full = _standard_offsets(n_idx, 1, device)[0]
                if torch.equal(offsets, std_full):  # one index per bag (on CPU: no sync to save)
                    full, bag_len = std_full, 1
            if full is None:
                full = offsets
                check_offsets = True
        else:
            if device.type == "cpu" and offsets.shape[0] == n_idx and n_idx:
                std_full, std_head = _standard_offsets(n_idx, 1, device)
                if torch.equal(offsets, std_head):
                    full, bag_len = std_full, 1
            if full is None:
                full = torch.cat([offsets, offsets.new_full((1,), n_idx)])
                check_offsets = True
    elif ndim == 2:
        if offsets is not None:
            raise ValueError(
                f"{name}: offsets must be None for 2-D input (each row is a bag), got offsets of "
                f"shape {tuple(offsets.shape)}"
            )
        num_bags, length = input.shape
        flat = input.reshape(-1)
        full = _standard_offsets(num_bags, length, input.device)[0]
        bag_len = length if length and num_bags else None
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    else:
        raise ValueError(f"{name}: input must be 1-D or 2-D, got shape {tuple(input.shape)}")

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
    if check_range:
        lo, hi = values[0], values[1]
        if lo < 0:
            raise IndexError(
                f"{name}: index {lo} is out of range for num_embeddings={num_embeddings}: indices "
                f"must lie in [0, {num_embeddings}) (negative indices are not wrapped)"
            )
        if hi >= num_embeddings:
            raise IndexError(
                f"{name}: index {hi} is out of range for num_embeddings={num_embeddings}: indices "
                f"must lie in [0, {num_embeddings})"
            )
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
    return flat, full, per_sample_weights, bag_len


def _check_offsets(full, first: int, last: int, smallest_step: int, n_idx: int, name: str) -> None:
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


# ----------------------------------------------------------------------------------------------
# the kernel contract

_MODE_ENUM = {"sum": 0, "mean": 1, "max": 2}  # the mode argument of torch.embedding_bag


def _fixed_bag_length(offsets: torch.Tensor, n_idx: int) -> Optional[int]:
    """``L`` when every bag holds exactly ``L >= 1`` indices, else ``None`` (one ``torch.equal``:
    a device sync on CUDA; the modules learn ``L`` from their validation fetch instead)."""
    num_bags = offsets.shape[0] - 1
    if num_bags == 0 or n_idx == 0 or n_idx % num_bags:
        return None
    length = n_idx // num_bags
    return length if torch.equal(offsets, _standard_offsets(num_bags, length, offsets.device)[0]) else None


def _embedding_bag(idx, weight, offsets, mode, per_sample_weights=None, sparse=False,
                   scale_grad_by_freq=False, max_norm=None, norm_type=2.0):
    """:func:`torch.nn.functional.embedding_bag` with ``B + 1`` offsets, minus its argument checks
    (made once by our callers; they cost ~1 µs a call, measurable on one-hot bags)."""
    if max_norm is not None:
        with torch.no_grad():  # what F.embedding_bag does: renormalise the referenced rows
            torch.embedding_renorm_(weight, idx, max_norm, norm_type)
    return torch.embedding_bag(
        weight, idx, offsets, scale_grad_by_freq, _MODE_ENUM[mode], sparse, per_sample_weights, True, None,
    )[0]


def _gather(codes_i: torch.Tensor, weight: torch.Tensor, emb_kwargs: dict) -> torch.Tensor:
    """Rows ``weight[codes_i]`` with autograd (sparse gradients when asked).

    An ``embedding_bag`` of one-index bags is the same function as ``F.embedding`` but its CPU
    kernel is about twice as fast for narrow rows (measured here: 0.23 ms against 0.5 ms for
    40k rows of width 16).
    """
    n = codes_i.shape[0]
    if n == 0 or emb_kwargs.get("scale_grad_by_freq"):
        # (F.embedding_bag's scale_grad_by_freq divides by wrong counts on CPU in torch 2.13:
        # indices [0, 0, 1, 2, 0, 3] in one-index bags give rows 1 and 2 a third of their gradient)
        return F.embedding(codes_i, weight, **emb_kwargs)
    return _embedding_bag(codes_i, weight, _standard_offsets(n, 1, codes_i.device)[0], "sum", **emb_kwargs)


def _max_pool(rows: torch.Tensor, offsets: torch.Tensor, bag_len: Optional[int]) -> torch.Tensor:
    """Max over the bags, per coordinate, with the gradient of ``torch.nn.EmbeddingBag``.

    The gradient of each output coordinate goes to exactly one element: the first row of the bag
    (in input order) holding the maximum, as ``F.embedding_bag(mode="max")`` does (its kernel
    keeps the first maximum and back-propagates to it alone). ``amax`` would split the gradient
    among tied rows and ``segment_reduce`` would give the whole gradient to each of them. Empty
    bags give zeros. NaNs propagate (as ``torch.max``; ``nn.EmbeddingBag`` keeps a NaN only in
    first place).
    """
    num_bags, dim = offsets.shape[0] - 1, rows.shape[1]
    n_idx = rows.shape[0]
    if n_idx == 0:  # (keeps the autograd graph: the gradient is all zeros)
        return rows.new_zeros(num_bags, dim) + rows.sum(0)
    if bag_len is not None:  # torch.max(dim) returns (and back-propagates to) the first maximum
        return rows.view(num_bags, bag_len, dim).max(1).values
    device = rows.device
    lengths = offsets.diff()
    bag_of = torch.repeat_interleave(torch.arange(num_bags, device=device), lengths, output_size=n_idx)
    with torch.no_grad():
        r = rows.detach()
        where = bag_of.unsqueeze(1).expand(n_idx, dim)
        best = r.new_empty(num_bags, dim).scatter_reduce_(0, where, r, "amax", include_self=False)
        hit = (r == best.index_select(0, bag_of)) | r.isnan()
        pos = torch.arange(n_idx, device=device).unsqueeze(1).expand(n_idx, dim)
        pos = torch.where(hit, pos, n_idx)
        first = torch.full((num_bags, dim), n_idx, dtype=torch.long, device=device)
        first.scatter_reduce_(0, where, pos, "amin")
        first.clamp_(max=n_idx - 1)  # (empty bags: any row, zeroed below)
    pooled = rows.gather(0, first)
    empty = (lengths == 0).unsqueeze(1)
    return torch.where(empty, torch.zeros((), dtype=rows.dtype, device=device), pooled)


def _pool_rows(
    rows: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: Optional[torch.Tensor],
    bag_len: Optional[int],
) -> torch.Tensor:
    """Pool rows ``(N, D)`` over the bags given by ``offsets`` (empty bags give zeros)."""
    if mode == "max":
        return _max_pool(rows, offsets, bag_len)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.to(rows.dtype).unsqueeze(1)
    num_bags = offsets.shape[0] - 1
    if bag_len is not None:  # every bag has bag_len >= 1 indices: a reshape and a dense reduction
        grouped = rows.view(num_bags, bag_len, rows.shape[1])
        return grouped.sum(1) if mode == "sum" else grouped.mean(1)
    if rows.shape[0] == 0:  # (keeps the autograd graph: the gradient is all zeros)
        return rows.new_zeros(num_bags, rows.shape[1]) + rows.sum(0)
    pooled = torch.segment_reduce(rows, "sum", offsets=offsets)
    if mode == "mean":
        lengths = (offsets[1:] - offsets[:-1]).clamp_(min=1).to(rows.dtype)
        pooled = pooled / lengths.unsqueeze(1)
    return pooled


def _combine(parts: List[torch.Tensor], operation: str) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    if operation == "concat":
        return torch.cat(parts, dim=1)
    out = parts[0]
    for part in parts[1:]:
        out = out * part if operation == "mult" else out + part
    return out


class _MultPool(torch.autograd.Function):
    """``mult`` composed per index, then pooled by sum or mean, with a hand-written backward.

    Plain autograd through ``rows_0 * rows_1`` and a pooling op keeps k + 1 temporaries of shape
    ``(N, D)`` alive from the forward to the backward and pools variable-length bags slowly. Here
    the forward multiplies in place into one buffer and pools it (a reshape for bags of one
    length, else one ``embedding_bag`` over an identity index); the backward gathers the rows
    again (cheap) and multiplies the bag gradient into them in place, so each table's gradient
    (sparse when asked) is formed with no further temporaries. The tables are saved for backward,
    so modifying them in place in between raises autograd's usual error.

    Inputs after the five options: ``k`` code tensors ``(N,)``, then the ``k`` tables.
    """

    @staticmethod
    def forward(ctx, offsets, per_sample_weights, mode, sparse, bag_len, *tensors):
        k = len(tensors) // 2
        codes, weights = tensors[:k], tensors[k:]
        # (detached: embedding_bag takes a slower path that records backward data otherwise)
        prod = _gather(codes[0], weights[0].detach(), {})
        for i in range(1, k):
            prod.mul_(_gather(codes[i], weights[i].detach(), {}))
        pooled = _pool_rows_no_grad(prod, offsets, mode, per_sample_weights, bag_len)
        keep_prod = per_sample_weights is not None and ctx.needs_input_grad[1]
        ctx.save_for_backward(offsets, per_sample_weights, prod if keep_prod else None, *codes, *weights)
        ctx.mode, ctx.sparse, ctx.bag_len, ctx.k = mode, sparse, bag_len, k
        return pooled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        offsets, psw, prod, *rest = ctx.saved_tensors
        k, bag_len = ctx.k, ctx.bag_len
        codes, weights = rest[:k], rest[k:]
        n_idx = codes[0].shape[0]
        num_bags, dim = grad_out.shape
        if ctx.mode == "mean":
            lengths = (offsets[1:] - offsets[:-1]).clamp(min=1).to(grad_out.dtype)
            grad_out = grad_out / lengths.unsqueeze(1)
        if bag_len is not None:  # broadcast the bag gradient without materialising it
            g = grad_out.unsqueeze(1)
            shape = (num_bags, bag_len, dim)
        else:
            lengths = offsets[1:] - offsets[:-1]
            bag_of = torch.repeat_interleave(
                torch.arange(num_bags, device=grad_out.device), lengths, output_size=n_idx
            )
            g = grad_out.index_select(0, bag_of)
            shape = (n_idx, dim)
        grad_psw = None
        if prod is not None:
            grad_psw = (prod.view(shape) * g).sum(-1).reshape(n_idx)
        scale = None if psw is None else psw.view(shape[:-1] + (1,))
        grads = []
        for i in range(k):
            if not ctx.needs_input_grad[5 + k + i]:
                grads.append(None)
                continue
            others = [j for j in range(k) if j != i]
            gi = _gather(codes[others[0]], weights[others[0]].detach(), {})
            for j in others[1:]:
                gi.mul_(_gather(codes[j], weights[j].detach(), {}))
            gi.view(shape).mul_(g)
            if scale is not None:
                gi.view(shape).mul_(scale)
            if ctx.sparse:
                grads.append(torch.sparse_coo_tensor(
                    codes[i].unsqueeze(0), gi, weights[i].shape, check_invariants=False))
            else:
                grads.append(gi.new_zeros(weights[i].shape).index_add_(0, codes[i], gi))
        return (None, grad_psw, None, None, None, *([None] * k), *grads)


class _MultRows(torch.autograd.Function):
    """``mult`` for bags of exactly one index (one-hot features): the product of the k rows of
    each index, which every mode and both composes pool to itself.

    Autograd through k ``embedding_bag`` calls and a product would, in the backward, copy each
    bag gradient once per table (``embedding_bag``'s backward gathers it by bag) and run k + 1
    graph nodes; here the rows saved from the forward (what ``MulBackward`` would save anyway)
    give each table's gradient with one multiply, as a sparse tensor when asked. This is what
    makes one-hot QR lookups as fast as two bare ``F.embedding_bag`` calls despite validation.

    Inputs after the two options: ``k`` code tensors ``(N,)``, then the ``k`` tables. A
    per-sample weight scales the composed vector once (``before_pool`` semantics).
    """

    @staticmethod
    def forward(ctx, per_sample_weights, sparse, *tensors):
        k = len(tensors) // 2
        codes, weights = tensors[:k], tensors[k:]
        rows = [_gather(codes[i], weights[i].detach(), {}) for i in range(k)]
        prod = rows[0] * rows[1]
        for r in rows[2:]:
            prod.mul_(r)
        keep_prod = per_sample_weights is not None and ctx.needs_input_grad[0]
        out = prod if per_sample_weights is None else prod * per_sample_weights.to(prod.dtype).unsqueeze(1)
        ctx.save_for_backward(per_sample_weights, prod if keep_prod else None, *codes, *rows)
        ctx.sparse, ctx.k, ctx.shapes = sparse, k, [w.shape for w in weights]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        psw, prod, *rest = ctx.saved_tensors
        k = ctx.k
        codes, rows = rest[:k], rest[k:]
        grad_psw = None
        if prod is not None:
            grad_psw = (grad_out * prod).sum(1).to(psw.dtype)
        g = grad_out if psw is None else grad_out * psw.to(grad_out.dtype).unsqueeze(1)
        grads = []
        for i in range(k):
            if not ctx.needs_input_grad[2 + k + i]:
                grads.append(None)
                continue
            others = [rows[j] for j in range(k) if j != i]
            gi = g * others[0]
            for o in others[1:]:
                gi.mul_(o)
            if ctx.sparse:
                grads.append(torch.sparse_coo_tensor(
                    codes[i].unsqueeze(0), gi, ctx.shapes[i], check_invariants=False))
            else:
                grads.append(gi.new_zeros(ctx.shapes[i]).index_add_(0, codes[i], gi))
        return (grad_psw, None, *([None] * k), *grads)


def _pool_rows_no_grad(rows, offsets, mode, per_sample_weights, bag_len):
    """Forward-only pooling for sum/mean (the custom backward above handles gradients)."""
    num_bags = offsets.shape[0] - 1
    if rows.shape[0] == 0:
        return rows.new_zeros(num_bags, rows.shape[1])
    if bag_len is not None and per_sample_weights is None:
        grouped = rows.view(num_bags, bag_len, rows.shape[1])
        return grouped.sum(1) if mode == "sum" else grouped.mean(1)
    return _embedding_bag(_singleton_offsets(rows.shape[0], rows.device), rows, offsets, mode, per_sample_weights)


def embedding_bag_codes(
    codes: torch.Tensor,
    offsets: torch.Tensor,
    weights: Sequence[torch.Tensor],
    operation: str,
    mode: str,
    compose: str,
    per_sample_weights: Optional[torch.Tensor] = None,
    *,
    sparse: bool = False,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> torch.Tensor:
    """The kernel contract, computed in plain PyTorch with autograd (the reference backend).

    Args:
        codes: int64 ``(k, N)``; ``codes[i]`` are row ids into ``weights[i]`` (e.g. from
            ``family.encode(indices)``).
        offsets: int64 ``(B + 1,)``: starts at 0, non-decreasing, ``offsets[-1] == N``.
        weights: k tables ``(rows_i, d_i)``; all ``d_i`` equal for ``"add"``/``"mult"``.
        operation: ``"mult"``, ``"add"`` or ``"concat"``.
        mode: ``"sum"``, ``"mean"`` or ``"max"``. ``max`` back-propagates, per coordinate, to the
            first index of the bag holding the maximum (of the composed vectors for
            ``before_pool``, of each table's rows for ``after_pool``), as
            :func:`torch.nn.functional.embedding_bag` does: ties are not shared.
        compose: ``"before_pool"`` (combine the k rows of each index, then pool) or
            ``"after_pool"`` (pool each table, then combine).
        per_sample_weights: ``None`` or float ``(N,)`` of any float dtype (cast to the dtype the
            rows are pooled in), only with ``mode="sum"``; scales the composed vector of each index
            (``before_pool``) or each table's row (``after_pool``).
        sparse: give every table a sparse gradient (for ``torch.optim.SGD`` / ``SparseAdam``).
        max_norm: renormalise, in place, every referenced row of every table whose ``norm_type``
            norm exceeds ``max_norm`` (as :func:`torch.nn.functional.embedding_bag` does).
        norm_type: the p of the p-norm for ``max_norm``.
        scale_grad_by_freq: scale each table's gradient by the inverse frequency of its codes in
            the batch.

    Returns:
        ``(B, D_out)`` in the weights' dtype (``D_out = d`` for add/mult, ``sum(d_i)`` for concat;
        float16/bfloat16 tables are pooled and combined in float32). Empty bags give zeros. The
        output is part of the autograd graph whenever a table requires grad, also when there are
        no indices at all (the gradients are then zeros).

    Example::

        >>> w = [torch.ones(3, 2), torch.full((4, 2), 2.0)]
        >>> codes = torch.tensor([[0, 1, 2], [3, 0, 1]])
        >>> embedding_bag_codes(codes, torch.tensor([0, 1, 3]), w, "mult", "sum", "before_pool")
        tensor([[2., 2.],
                [4., 4.]])
    """
    _check_kernel_args(codes, offsets, weights, operation, mode, compose, per_sample_weights,
                       sparse, scale_grad_by_freq)
    return _embedding_bag_codes_unchecked(
        codes.long(), offsets.long(), weights, operation, mode, compose, per_sample_weights,
        sparse, max_norm, norm_type, scale_grad_by_freq,
    )


def _check_kernel_args(codes, offsets, weights, operation, mode, compose, per_sample_weights,
                       sparse, scale_grad_by_freq) -> None:
    check_operation(operation)
    check_mode(mode)
    check_compose(compose)
    k = len(weights)
    if k == 0:
        raise ValueError("embedding_bag_codes needs at least one table, got an empty weights list")
    if codes.dim() != 2 or codes.shape[0] != k:
        raise ValueError(f"codes must have shape (k={k}, N), got {tuple(codes.shape)}")
    if not _is_integer_tensor(codes):
        raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"offsets must have shape (B + 1,), got {tuple(offsets.shape)}")
    if len({w.dtype for w in weights}) != 1 or len({w.device for w in weights}) != 1:
        raise ValueError(
            f"the tables must share one dtype and device, got {[(str(w.dtype), str(w.device)) for w in weights]}"
        )
    if operation != "concat":
        dims = {int(w.shape[1]) for w in weights}
        if len(dims) != 1:
            raise ValueError(
                f"operation={operation!r} needs tables of one width, got widths "
                f"{[int(w.shape[1]) for w in weights]}"
            )
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"per_sample_weights is only supported for mode='sum', got mode={mode!r}")
        if not per_sample_weights.is_floating_point():
            raise TypeError(f"per_sample_weights must be a floating point tensor, got {per_sample_weights.dtype}")
        if per_sample_weights.shape != (codes.shape[1],):
            raise ValueError(
                f"per_sample_weights must have shape ({codes.shape[1]},), got "
                f"{tuple(per_sample_weights.shape)}"
            )
    if sparse and scale_grad_by_freq:
        raise ValueError("scale_grad_by_freq=True is not supported with sparse=True (as in torch)")


_UNKNOWN = -1  # bag_len not known yet (None: bags of unequal length)


def _embedding_bag_codes_unchecked(
    codes, offsets, weights, operation, mode, compose, per_sample_weights,
    sparse=False, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, bag_len=_UNKNOWN,
):
    """:func:`embedding_bag_codes` without the argument checks, for callers that made them (the
    modules validate their configuration once, at construction, and their input once a call).

    ``codes`` may be a ``(k, N)`` tensor or a sequence of k int64 ``(N,)`` tensors (no stack
    needed); ``bag_len`` is ``L`` when every bag is known to hold ``L >= 1`` indices, ``None`` when
    known not to, ``_UNKNOWN`` to have it computed here (a device sync on CUDA) when needed.
    """
    k = len(weights)
    n_idx = codes[0].shape[0]
    out_dtype = weights[0].dtype
    low_precision = out_dtype in _LOW_PRECISION
    if per_sample_weights is not None:
        # the contract takes float weights of any dtype: bring them to the dtype rows are pooled in
        psw_dtype = torch.float32 if low_precision else out_dtype
        if per_sample_weights.dtype != psw_dtype:
            per_sample_weights = per_sample_weights.to(psw_dtype)

    # Choose the cheapest exact evaluation.
    scale_after = None  # per-bag factor for bags of exactly one index (see below)
    if k == 1:
        compose = "after_pool"  # nothing to combine
    elif compose == "before_pool" and operation != "mult" and mode != "max":
        compose = "after_pool"  # pooling is linear and coordinate-wise: add/concat commute with it
    # F.embedding_bag pools exactly (max: the gradient to the first maximum) except that its max
    # mode refuses sparse gradients, and its scale_grad_by_freq miscounts (see _gather)
    fused = not low_precision and not scale_grad_by_freq and not (mode == "max" and sparse)
    if bag_len == _UNKNOWN and (compose == "before_pool" or not fused):
        bag_len = _fixed_bag_length(offsets, n_idx)  # every bag bag_len >= 1 long: pool by a reshape
    if (
        bag_len == 1 and operation == "mult" and k > 1 and max_norm is None and not scale_grad_by_freq
        and not low_precision and (compose == "before_pool" or per_sample_weights is None)
    ):
        # one index per bag (one-hot features): pooling is the identity, any mode, any compose
        return _MultRows.apply(per_sample_weights, sparse, *codes, *weights)
    if compose == "before_pool" and bag_len == 1:
        # One index per bag: combining then pooling is pooling then combining; the per-sample
        # weight must scale the composed vector once, not every table.
        compose = "after_pool"
        scale_after, per_sample_weights = per_sample_weights, None

    emb_kwargs = {}
    if sparse:
        emb_kwargs["sparse"] = True
    if scale_grad_by_freq:
        emb_kwargs["scale_grad_by_freq"] = True
    if max_norm is not None:
        emb_kwargs["max_norm"], emb_kwargs["norm_type"] = max_norm, norm_type
    if compose == "after_pool":
        if fused:
            parts = [
                _embedding_bag(codes[i], w, offsets, mode, per_sample_weights, **emb_kwargs)
                for i, w in enumerate(weights)
            ]
        else:
            parts = []
            for i, w in enumerate(weights):
                rows = _gather(codes[i], w, emb_kwargs)
                if low_precision:
                    rows = rows.float()
                parts.append(_pool_rows(rows, offsets, mode, per_sample_weights, bag_len))
        out = _combine(parts, operation)
        if scale_after is not None:
            out = out * scale_after.to(out.dtype).unsqueeze(1)
    elif (
        operation == "mult" and mode != "max" and max_norm is None and not scale_grad_by_freq
        and not low_precision
    ):
        out = _MultPool.apply(offsets, per_sample_weights, mode, sparse, bag_len, *codes, *weights)
    else:
        rows = []
        for i, w in enumerate(weights):
            r = _gather(codes[i], w, emb_kwargs)
            rows.append(r.float() if low_precision else r)
        out = _pool_rows(_combine(rows, operation), offsets, mode, per_sample_weights, bag_len)
    return out.to(out_dtype) if out.dtype != out_dtype else out


# ----------------------------------------------------------------------------------------------
# the whole pipeline


def compositional_embedding_bag(
    input: torch.Tensor,
    offsets: Optional[torch.Tensor],
    weights: Sequence[torch.Tensor],
    family,
    operation: str = "mult",
    mode: str = "mean",
    compose: str = "before_pool",
    per_sample_weights: Optional[torch.Tensor] = None,
    include_last_offset: bool = False,
    sparse: bool = False,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    backend: Union[None, str, "object"] = None,
    name: str = "compositional_embedding_bag",
) -> torch.Tensor:
    """Compositional embedding bag of raw indices: normalise, encode with ``family``, pool.

    Args:
        input, offsets, per_sample_weights, include_last_offset: the ``nn.EmbeddingBag`` forward
            contract (see :func:`normalize_bag_input`).
        weights: one table per partition of ``family``: ``weights[i]`` has
            ``family.table_sizes[i]`` rows.
        family: a :class:`compemb.partitions.PartitionFamily` over ``n`` categories.
        operation, mode, compose, sparse, max_norm, norm_type, scale_grad_by_freq: see
            :func:`embedding_bag_codes`.
        backend: ``None`` or ``"torch"`` for the reference, a backend name (resolved with
            :func:`compemb.kernels.resolve_backend`) or a :class:`compemb.kernels.Backend`.
        name: named in error messages.

    Shape:
        - input: ``(B, L)`` or ``(N,)`` with offsets ``(B,)`` / ``(B + 1,)``.
        - output: ``(B, D_out)``.

    Example::

        >>> from compemb.partitions import quotient_remainder
        >>> fam = quotient_remainder(10, 4)
        >>> w = [torch.randn(s, 3) for s in fam.table_sizes]
        >>> compositional_embedding_bag(torch.tensor([[1, 9], [0, 5]]), None, w, fam).shape
        torch.Size([2, 3])
    """
    if len(weights) != family.k:
        raise ValueError(f"{name}: family has k={family.k} partitions but {len(weights)} tables were given")
    flat, full_offsets, psw, bag_len = _normalize(
        input, offsets, per_sample_weights, include_last_offset, mode, family.n, name
    )
    codes = encode_validated(family, flat)
    extras = dict(sparse=sparse, max_norm=max_norm, norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq)
    if backend is None or backend == "torch" or getattr(backend, "name", None) == "torch":
        _check_kernel_args(codes, full_offsets, weights, operation, mode, compose, psw, sparse, scale_grad_by_freq)
        return _embedding_bag_codes_unchecked(
            codes, full_offsets, weights, operation, mode, compose, psw, bag_len=bag_len, **extras
        )
    if isinstance(backend, str):
        from compemb.kernels import resolve_backend

        backend = resolve_backend(
            backend, operation=operation, mode=mode, compose=compose, k=len(weights),
            dtype=weights[0].dtype, device=weights[0].device, per_sample_weights=psw is not None,
            sparse=sparse, max_norm=max_norm,
            requires_grad=torch.is_grad_enabled() and any(w.requires_grad for w in weights),
        )
    return backend.embedding_bag(
        codes, full_offsets, weights, operation, mode, compose, psw, **kernel_extras(**extras)
    )


def encode_validated(family, flat: torch.Tensor) -> torch.Tensor:
    """``family.encode(flat)`` for indices already checked to lie in ``[0, family.n)``.

    ``PartitionFamily.encode`` validates its input again (an ``aminmax`` and, on CUDA, a device
    sync); after :func:`normalize_bag_input` that is redundant, so this writes the codes
    directly. Families without the internal ``_encode_into`` fall back to ``encode``.

    Example::

        >>> from compemb.partitions import quotient_remainder
        >>> encode_validated(quotient_remainder(10, 4), torch.tensor([0, 9])).tolist()
        [[0, 1], [0, 2]]
    """
    into = getattr(family, "_encode_into", None)
    if into is None:
        return family.encode(flat)
    out = torch.empty((family.k, flat.shape[0]), dtype=torch.long, device=flat.device)
    into(flat, out)
    return out


def kernel_extras(
    sparse: bool = False,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> dict:
    """The keyword arguments to pass a backend beyond the kernel contract: only non-defaults.

    A backend that accepts ``sparse=True`` or ``max_norm`` (it said so in ``unsupported_reason``)
    takes them as keyword arguments of ``embedding_bag``; backends that do not are never asked.
    """
    extras = {}
    if sparse:
        extras["sparse"] = True
    if max_norm is not None:
        extras["max_norm"] = max_norm
        extras["norm_type"] = norm_type
    if scale_grad_by_freq:
        extras["scale_grad_by_freq"] = True
    return extras
