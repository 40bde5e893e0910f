"""Pooling and combining rows, and the autograd Functions of the ``mult`` fast paths.

:func:`pool_rows` pools per-index vectors into bags (sum, mean, or max with the gradient of
``torch.nn.EmbeddingBag``); :func:`combine` joins the k component rows of an index.

Example::

    >>> rows = torch.tensor([[1.0], [2.0], [4.0]])
    >>> pool_rows(rows, torch.tensor([0, 1, 3]), "sum").tolist()
    [[1.0], [6.0]]
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from compemb.functional._inputs import standard_offsets

__all__ = [
    "LOW_PRECISION",
    "pool_rows",
    "combine",
    "fast_embedding_bag",
    "gather_rows",
    "MultPool",
    "MultRows",
]

#: table dtypes that are pooled and combined in float32
LOW_PRECISION = (torch.float16, torch.bfloat16)

_MODE_ENUM = {"sum": 0, "mean": 1, "max": 2}  # the mode argument of torch.embedding_bag


def fast_embedding_bag(
    idx: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: Optional[torch.Tensor] = None,
    sparse: bool = False,
    scale_grad_by_freq: bool = False,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
) -> torch.Tensor:
    """:func:`torch.nn.functional.embedding_bag` with ``B + 1`` offsets, minus its argument checks
    (the callers made them once; they cost about a microsecond a call)."""
    if max_norm is not None:
        with torch.no_grad():  # what F.embedding_bag does: renormalise the referenced rows
            torch.embedding_renorm_(weight, idx, max_norm, norm_type)
    return torch.embedding_bag(
        weight, idx, offsets, scale_grad_by_freq, _MODE_ENUM[mode], sparse, per_sample_weights, True, None,
    )[0]


def gather_rows(codes_i: torch.Tensor, weight: torch.Tensor, emb_kwargs: Dict[str, Any]) -> torch.Tensor:
    """Rows ``weight[codes_i]`` with autograd (``emb_kwargs``: ``F.embedding``'s sparse, max_norm …).

    An ``embedding_bag`` of one-index bags is the same function as ``F.embedding`` with a faster
    CPU kernel for narrow rows.
    """
    n = codes_i.shape[0]
    if n == 0 or emb_kwargs.get("scale_grad_by_freq"):
        # F.embedding_bag's scale_grad_by_freq miscounts repeated indices on CPU (torch 2.13)
        return F.embedding(codes_i, weight, **emb_kwargs)
    return fast_embedding_bag(codes_i, weight, standard_offsets(n, 1, codes_i.device)[0], "sum", **emb_kwargs)


def _max_pool(rows: torch.Tensor, offsets: torch.Tensor, bag_len: Optional[int]) -> torch.Tensor:
    """Max over the bags, per coordinate, with the gradient of ``torch.nn.EmbeddingBag``.

    The gradient of each output coordinate goes to exactly one element: the first row of the bag
    (in input order) holding the maximum, as ``F.embedding_bag(mode="max")`` does. ``amax`` would
    split the gradient among tied rows and ``segment_reduce`` would give the whole gradient to
    each of them. Empty bags give zeros. NaNs propagate (as ``torch.max``).
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


def pool_rows(
    rows: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: Optional[torch.Tensor] = None,
    bag_len: Optional[int] = None,
) -> torch.Tensor:
    """Pool per-index vectors ``rows`` ``(N, D)`` into the bags given by ``offsets``, with autograd.

    Args:
        rows: ``(N, D)`` floating point; float16/bfloat16 are pooled in float32 and cast back.
        offsets: int64 ``(B + 1,)``: starts at 0, non-decreasing, ends at ``N`` (not checked).
        mode: ``"sum"``, ``"mean"`` or ``"max"`` (max back-propagates to the first maximum of each
            bag, per coordinate, as ``torch.nn.EmbeddingBag``).
        per_sample_weights: ``None`` or float ``(N,)`` scaling each row, with ``mode="sum"``.
        bag_len: ``L`` when every bag is known to hold ``L >= 1`` indices (pooled by a reshape).

    Returns:
        ``(B, D)``; empty bags give zeros.
    """
    if rows.dtype in LOW_PRECISION:
        return pool_rows(rows.float(), offsets, mode, per_sample_weights, bag_len).to(rows.dtype)
    if mode == "max":
        return _max_pool(rows, offsets, bag_len)
    num_bags, n_idx = offsets.shape[0] - 1, rows.shape[0]
    if n_idx == 0:  # (keeps the autograd graph: the gradient is all zeros)
        return rows.new_zeros(num_bags, rows.shape[1]) + rows.sum(0)
    if bag_len is not None and per_sample_weights is None:  # a reshape and a dense reduction
        grouped = rows.view(num_bags, bag_len, rows.shape[1])
        return grouped.sum(1) if mode == "sum" else grouped.mean(1)
    if per_sample_weights is not None and per_sample_weights.dtype != rows.dtype:
        per_sample_weights = per_sample_weights.to(rows.dtype)
    # an embedding bag over the identity index pools the rows themselves
    return fast_embedding_bag(standard_offsets(n_idx, 1, rows.device)[1], rows, offsets, mode, per_sample_weights)


def combine(parts: Sequence[torch.Tensor], operation: str) -> torch.Tensor:
    """The k component vectors ``parts`` (each ``(M, d_i)``) joined by ``operation``.

    ``"concat"`` concatenates along dim 1; ``"mult"`` / ``"add"`` multiply / add element-wise.

    Example::

        >>> combine([torch.tensor([[2.0]]), torch.tensor([[3.0]])], "mult").item()
        6.0
    """
    if len(parts) == 1:
        return parts[0]
    if operation == "concat":
        return torch.cat(list(parts), dim=1)
    out = parts[0]
    for part in parts[1:]:
        out = out * part if operation == "mult" else out + part
    return out


def _table_grad(codes_i: torch.Tensor, rows_grad: torch.Tensor, shape: torch.Size, sparse: bool) -> torch.Tensor:
    """The gradient of a table of ``shape`` whose rows ``codes_i`` received ``rows_grad``."""
    if sparse:
        return torch.sparse_coo_tensor(codes_i.unsqueeze(0), rows_grad, shape, check_invariants=False)
    return rows_grad.new_zeros(shape).index_add_(0, codes_i, rows_grad)


class MultPool(torch.autograd.Function):
    """``mult`` composed per index, then pooled by sum or mean, with a hand-written backward.

    Plain autograd through ``rows_0 * rows_1`` and a pooling op keeps k + 1 ``(N, D)``
    temporaries alive until the backward. Here the forward multiplies in place into one buffer
    and pools it; the backward gathers the rows again and multiplies the bag gradient into them in
    place, forming each table's gradient (sparse when asked) with no further temporaries.

    ``apply(offsets, per_sample_weights, mode, sparse, bag_len, *codes, *weights)`` with ``k``
    code tensors ``(N,)`` and the ``k`` tables.
    """

    @staticmethod
    def forward(ctx: Any, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor], mode: str,
                sparse: bool, bag_len: Optional[int], *tensors: torch.Tensor) -> torch.Tensor:
        k = len(tensors) // 2
        codes, weights = tensors[:k], tensors[k:]
        # (detached: embedding_bag takes a slower path that records backward data otherwise)
        prod = gather_rows(codes[0], weights[0].detach(), {})
        for i in range(1, k):
            prod.mul_(gather_rows(codes[i], weights[i].detach(), {}))
        pooled = pool_rows(prod, offsets, mode, per_sample_weights, bag_len)
        keep_prod = per_sample_weights is not None and ctx.needs_input_grad[1]
        ctx.save_for_backward(offsets, per_sample_weights, prod if keep_prod else None, *codes, *weights)
        ctx.mode, ctx.sparse, ctx.bag_len, ctx.k = mode, sparse, bag_len, k
        return pooled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
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
            shape: Tuple[int, ...] = (num_bags, bag_len, dim)
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
        grads: List[Optional[torch.Tensor]] = []
        for i in range(k):
            if not ctx.needs_input_grad[5 + k + i]:
                grads.append(None)
                continue
            others = [j for j in range(k) if j != i]
            gi = gather_rows(codes[others[0]], weights[others[0]].detach(), {})
            for j in others[1:]:
                gi.mul_(gather_rows(codes[j], weights[j].detach(), {}))
            gi.view(shape).mul_(g)
            if scale is not None:
                gi.view(shape).mul_(scale)
            grads.append(_table_grad(codes[i], gi, weights[i].shape, ctx.sparse))
        return (None, grad_psw, None, None, None, *([None] * k), *grads)


class MultRows(torch.autograd.Function):
    """``mult`` for bags of exactly one index (one-hot features): the product of the k rows of
    each index, which every mode and both composes pool to itself.

    The rows saved from the forward give each table's gradient with one multiply (sparse when
    asked), instead of k ``embedding_bag`` backwards that each copy the bag gradient.

    ``apply(per_sample_weights, sparse, *codes, *weights)`` with ``k`` code tensors ``(N,)`` and
    the ``k`` tables. A per-sample weight scales the composed vector once (``before_pool``).
    """

    @staticmethod
    def forward(ctx: Any, per_sample_weights: Optional[torch.Tensor], sparse: bool,
                *tensors: torch.Tensor) -> torch.Tensor:
        k = len(tensors) // 2
        codes, weights = tensors[:k], tensors[k:]
        rows = [gather_rows(codes[i], weights[i].detach(), {}) for i in range(k)]
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
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        psw, prod, *rest = ctx.saved_tensors
        k = ctx.k
        codes, rows = rest[:k], rest[k:]
        grad_psw = None
        if prod is not None:
            grad_psw = (grad_out * prod).sum(1).to(psw.dtype)
        g = grad_out if psw is None else grad_out * psw.to(grad_out.dtype).unsqueeze(1)
        grads: List[Optional[torch.Tensor]] = []
        for i in range(k):
            if not ctx.needs_input_grad[2 + k + i]:
                grads.append(None)
                continue
            others = [rows[j] for j in range(k) if j != i]
            gi = g * others[0]
            for o in others[1:]:
                gi.mul_(o)
            grads.append(_table_grad(codes[i], gi, ctx.shapes[i], ctx.sparse))
        return (grad_psw, None, *([None] * k), *grads)
