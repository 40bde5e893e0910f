"""The reference computation of a compositional embedding bag from partition codes, in plain PyTorch.

:func:`embedding_bag_codes` is the kernel contract every faster backend is tested against;
:func:`init_bound` the initialisation that gives composed vectors a full table's scale. This
module never imports :mod:`compemb.kernels` (the torch backend imports it).

Example::

    >>> out = embedding_bag_codes(torch.tensor([[0, 1], [1, 0]]), torch.tensor([0, 2]),
    ...                           [torch.ones(2, 3), torch.ones(2, 3)], "add", "mean", "before_pool")
    >>> out.tolist(), round(init_bound(100, 2, "add"), 4)
    ([[2.0, 2.0, 2.0]], 0.0707)
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from compemb.functional._inputs import UNKNOWN_BAG_LEN, fixed_bag_length, is_integer_tensor
from compemb.functional._pooling import (
    LOW_PRECISION,
    MultPool,
    MultRows,
    combine,
    fast_embedding_bag,
    gather_rows,
    pool_rows,
)
from compemb.options import check_compose, check_mode, check_operation

__all__ = ["embedding_bag_codes", "init_bound", "kernel_extras"]


def init_bound(num_embeddings: int, k: int, operation: str) -> float:
    """Half-width ``a`` of the ``U(-a, a)`` each of ``k`` component tables is drawn from.

    Chosen so that the composed vectors have mean 0 and the variance ``1 / (3 n)`` of a full
    ``n``-row table drawn ``U(-sqrt(1/n), sqrt(1/n))``: ``concat`` (or k = 1) ``a = sqrt(1/n)``;
    ``add`` (a sum of k draws) ``a = sqrt(1/(k n))``; ``mult`` (a product of k draws, variance
    ``(a²/3)^k``) ``a = sqrt(3) (3n)^(-1/(2k))``.

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


def embedding_bag_codes(
    codes: Union[torch.Tensor, Sequence[torch.Tensor]],
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
    trusted: bool = False,
    bag_len: Optional[int] = UNKNOWN_BAG_LEN,
) -> torch.Tensor:
    """The kernel contract, computed in plain PyTorch with autograd (the reference backend).

    Args:
        codes: int64 ``(k, N)``; ``codes[i]`` are row ids into ``weights[i]`` (e.g. from
            ``family.encode(indices)``). With ``trusted=True`` also a sequence of k int64 ``(N,)``.
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
        trusted: skip the argument checks (and the int64 casts): for callers that validated the
            configuration once and the input already (e.g. with
            :func:`compemb.functional.bag_input`).
        bag_len: ``L`` when every bag is known to hold ``L >= 1`` indices, ``None`` when known
            not to (:attr:`compemb.functional.BagInput.bag_len`), :data:`UNKNOWN_BAG_LEN` to
            compute it where a path needs it (a device sync on CUDA).

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
    if not trusted:
        if not isinstance(codes, torch.Tensor):
            codes = torch.stack(list(codes))
        _check_kernel_args(codes, offsets, weights, operation, mode, compose, per_sample_weights,
                           sparse, scale_grad_by_freq)
        codes, offsets = codes.long(), offsets.long()
    k = len(weights)
    n_idx = codes[0].shape[0]
    out_dtype = weights[0].dtype
    low_precision = out_dtype in LOW_PRECISION
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
    # mode refuses sparse gradients, and its scale_grad_by_freq miscounts (see gather_rows)
    fused = not low_precision and not scale_grad_by_freq and not (mode == "max" and sparse)
    if bag_len == UNKNOWN_BAG_LEN and (compose == "before_pool" or not fused):
        bag_len = fixed_bag_length(offsets, n_idx)  # every bag bag_len >= 1 long: pool by a reshape
    if (
        bag_len == 1 and operation == "mult" and k > 1 and max_norm is None and not scale_grad_by_freq
        and not low_precision and (compose == "before_pool" or per_sample_weights is None)
    ):
        # one index per bag (one-hot features): pooling is the identity, any mode, any compose
        return MultRows.apply(per_sample_weights, sparse, *codes, *weights)
    if compose == "before_pool" and bag_len == 1:
        # One index per bag: combining then pooling is pooling then combining; the per-sample
        # weight must scale the composed vector once, not every table.
        compose = "after_pool"
        scale_after, per_sample_weights = per_sample_weights, None
    if bag_len == UNKNOWN_BAG_LEN:
        bag_len = None  # (only the fused after_pool path is left: it does not need it)

    emb_kwargs = kernel_extras(sparse, max_norm, norm_type, scale_grad_by_freq)
    if compose == "after_pool":
        if fused:
            parts = [
                fast_embedding_bag(codes[i], w, offsets, mode, per_sample_weights, **emb_kwargs)
                for i, w in enumerate(weights)
            ]
        else:
            parts = [
                pool_rows(_rows(codes[i], w, emb_kwargs, low_precision), offsets, mode, per_sample_weights, bag_len)
                for i, w in enumerate(weights)
            ]
        out = combine(parts, operation)
        if scale_after is not None:
            out = out * scale_after.to(out.dtype).unsqueeze(1)
    elif (
        operation == "mult" and mode != "max" and max_norm is None and not scale_grad_by_freq
        and not low_precision
    ):
        out = MultPool.apply(offsets, per_sample_weights, mode, sparse, bag_len, *codes, *weights)
    else:
        rows = [_rows(codes[i], w, emb_kwargs, low_precision) for i, w in enumerate(weights)]
        out = pool_rows(combine(rows, operation), offsets, mode, per_sample_weights, bag_len)
    return out.to(out_dtype) if out.dtype != out_dtype else out


def kernel_extras(
    sparse: bool = False,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> Dict[str, Any]:
    """The keyword arguments to pass a backend beyond the kernel contract: only non-defaults.

    A backend that accepts ``sparse=True`` or ``max_norm`` (it said so in ``unsupported_reason``)
    takes them as keyword arguments of ``embedding_bag``; backends that do not are never asked.

    Example::

        >>> kernel_extras(sparse=True)
        {'sparse': True}
    """
    extras: Dict[str, Any] = {}
    if sparse:
        extras["sparse"] = True
    if max_norm is not None:
        extras["max_norm"] = max_norm
        extras["norm_type"] = norm_type
    if scale_grad_by_freq:
        extras["scale_grad_by_freq"] = True
    return extras


def _rows(codes_i: torch.Tensor, weight: torch.Tensor, emb_kwargs: Dict[str, Any], low_precision: bool) -> torch.Tensor:
    rows = gather_rows(codes_i, weight, emb_kwargs)
    return rows.float() if low_precision else rows


def _check_kernel_args(codes: torch.Tensor, offsets: torch.Tensor, weights: Sequence[torch.Tensor],
                       operation: str, mode: str, compose: str, per_sample_weights: Optional[torch.Tensor],
                       sparse: bool, scale_grad_by_freq: bool) -> None:
    check_operation(operation)
    check_mode(mode)
    check_compose(compose)
    k = len(weights)
    if k == 0:
        raise ValueError("embedding_bag_codes needs at least one table, got an empty weights list")
    if codes.dim() != 2 or codes.shape[0] != k:
        raise ValueError(f"codes must have shape (k={k}, N), got {tuple(codes.shape)}")
    if not is_integer_tensor(codes):
        raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError(f"offsets must have shape (B + 1,), got {tuple(offsets.shape)}")
    if len({w.dtype for w in weights}) != 1 or len({w.device for w in weights}) != 1:
        raise ValueError(
            f"the tables must share one dtype and device, got {[(str(w.dtype), str(w.device)) for w in weights]}"
        )
    if operation != "concat":
        widths: List[int] = [int(w.shape[1]) for w in weights]
        if len(set(widths)) != 1:
            raise ValueError(f"operation={operation!r} needs tables of one width, got widths {widths}")
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
