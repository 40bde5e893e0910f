"""Table-batched fused Triton lookup: all features of a collection in one launch (like FBGEMM's TBE).

:func:`tbe_embedding_bags` encodes, gathers, combines and pools every feature of a
:class:`~compemb.kernels.TBELayout` in one launch, and backpropagates into the flat weight buffer:
a dense fp32-accumulated gradient, or with ``optimizer="exact_sgd"`` the SGD step applied in
place (exact, since SGD is linear in the gradient). The layout and the :class:`LaunchPlan` live in
:mod:`compemb.kernels._tbe_layout` (no Triton import), the kernels in ``_tbe_kernels``. On CPU the
kernels run only under ``TRITON_INTERPRET=1`` (set before triton is imported).

Example::

    >>> import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # doctest: +SKIP
    >>> from compemb.partitions import quotient_remainder
    >>> lay = tbe_layout(["a", "b"], [quotient_remainder(10, 4)] * 2, 8, "mult", ["sum", "sum"])
    >>> w = torch.randn(lay.numel)
    >>> idx = torch.tensor([1, 9, 3, 0, 0])
    >>> tbe_embedding_bags(idx, torch.tensor([0, 2, 3, 3, 5]), w, lay).shape  # doctest: +SKIP
    torch.Size([2, 16])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

from compemb.kernels._tbe_layout import (
    KERNEL_DTYPES,
    SMALL_ROWS,
    LaunchPlan,
    TBELayout,
    launch_plan,
    tbe_layout,
    validate_tbe_input,
)
from compemb.kernels._triton import INTERPRETED  # before the kernels are decorated
from compemb.kernels._tbe_kernels import (
    tbe_apply_kernel,
    tbe_bwd_kernel,
    tbe_fwd_kernel,
    tbe_small_apply_kernel,
)

__all__ = ["TBELayout", "tbe_layout", "tbe_embedding_bags", "validate_tbe_input", "OPTIMIZERS", "INTERPRETED"]

#: what the ``optimizer`` argument of :func:`tbe_embedding_bags` takes
OPTIMIZERS = (None, "exact_sgd")


@dataclass(frozen=True)
class _SgdStep:
    """The fused exact SGD of one lookup: step size, and for ``mult`` the all-zero fp32 scratch."""

    learning_rate: float
    scratch: Optional[torch.Tensor]


def _table_args(t: dict, uniform: bool) -> Tuple[torch.Tensor, ...]:
    base = t["base_rows"] if uniform else t["base"]
    return (t["place"], t["modulus"], base, t["width"], t["col"], t["kf"], t["mean"])


class _TBEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, placeholder: Optional[torch.Tensor], indices: torch.Tensor,
                offsets: torch.Tensor, layout: TBELayout, plan: LaunchPlan,
                sgd: Optional[_SgdStep]) -> torch.Tensor:
        F, B, D = plan.num_features, plan.batch, plan.dim
        out = torch.empty(B, F * D, dtype=weight.dtype, device=weight.device)
        if B > 0:
            t = layout.tensors(weight.device)
            tbe_fwd_kernel[plan.grid](
                indices, offsets, weight, out, *_table_args(t, plan.uniform), B, D, F * D,
                OP=plan.op, AFTER_POOL=plan.after_pool, **plan.constexprs())
        if sgd is None:
            ctx.save_for_backward(indices, offsets, weight)  # autograd checks it is not modified meanwhile
        else:
            ctx.save_for_backward(indices, offsets)
            ctx.weight = weight  # fused SGD updates it in place, in backward
        ctx.layout, ctx.plan, ctx.sgd = layout, plan, sgd
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        indices, offsets, *saved = ctx.saved_tensors
        weight = saved[0] if saved else ctx.weight
        layout, plan, sgd = ctx.layout, ctx.plan, ctx.sgd
        none = (None,) * 6
        F, B, D, R = plan.num_features, plan.batch, plan.dim, plan.small_bound
        grad_out = grad_out.contiguous()
        t = layout.tensors(weight.device)
        args = _table_args(t, plan.uniform)
        consts = plan.constexprs()
        run = B > 0 and indices.numel() > 0

        def bwd(dst: torch.Tensor, alpha: float, part: int = 0) -> None:
            tbe_bwd_kernel[plan.grid](indices, offsets, weight, grad_out, dst, *args, B, D, F * D, alpha,
                                      OP=plan.op, AFTER_POOL=plan.after_pool, PRE_REDUCE=plan.pre_reduce,
                                      R=R, PART=part, **consts)

        def apply_small(neg_lr: float) -> None:
            tbe_small_apply_kernel[(F, plan.k)](weight, sgd.scratch, t["modulus"], t["base"], t["width"],
                                                t["kf"], neg_lr, K=plan.k, R=R, BLOCK=1024, num_warps=4)

        if sgd is None:
            grad = torch.zeros(weight.numel(), dtype=torch.float32, device=weight.device)
            if run:
                bwd(grad, 1.0)
            return (grad.to(weight.dtype),) + none
        if not run:
            return (None,) + none
        lr = sgd.learning_rate
        if plan.op != 1:  # add / concat: the gradient reads no weights, so update in place
            bwd(weight, -lr)
        elif plan.pre_reduce and plan.one_large:
            # mult, at most one large component per feature: (1) the small components' gradients,
            # pre-reduced, into the scratch, reading the original weights; (2) each large component
            # updated in place: its gradient reads only the small rows, which nothing writes
            # before (3) applies the scratch to them and zeroes it
            bwd(sgd.scratch, 1.0, part=1)
            if plan.has_large:
                bwd(weight, -lr, part=2)
            apply_small(-lr)
        else:
            # mult: the gradient reads the other tables, so accumulate first, then update every
            # touched element once (the small components' blocks in one go when pre-reduced)
            bwd(sgd.scratch, 1.0)
            if plan.has_large:
                tbe_apply_kernel[plan.grid](indices, offsets, weight, sgd.scratch.view(torch.int32), *args, B, D,
                                            -lr, SKIP_SMALL=plan.pre_reduce, R=R, **consts)
            if plan.pre_reduce:
                apply_small(-lr)
        return (None,) + none


def tbe_embedding_bags(
    indices: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    layout: TBELayout,
    validate: bool = True,
    optimizer: Optional[str] = None,
    learning_rate: float = 0.01,
    scratch: Optional[torch.Tensor] = None,
    placeholder: Optional[torch.Tensor] = None,
    block_b: Optional[int] = None,
    *,
    pre_reduce_small: bool = True,
    small_rows: int = SMALL_ROWS,
    prefetch_indices: bool = True,
) -> torch.Tensor:
    """All features' compositional embedding bags in one fused Triton launch (encode + gather + pool).

    Args:
        indices: int64 ``(N,)``, the raw indices of all features, concatenated feature-major.
        offsets: int64 ``(F * B + 1,)``: bag ``b`` of feature ``f`` is
            ``indices[offsets[f*B + b] : offsets[f*B + b + 1]]`` (the KeyedJaggedTensor layout).
        weight: the flat 1-D buffer of ``layout.numel`` elements (fp32, fp16 or bf16).
        layout: from :func:`tbe_layout`.
        validate: check indices and offsets first (default ``True``): one batched check for all
            features and one device-to-host copy. ``False`` skips it for trusted inputs (e.g.
            benchmarks); out-of-range indices then read and write out of bounds.
        optimizer: ``None`` (backward returns the dense fp32-accumulated gradient of ``weight``)
            or ``"exact_sgd"`` (backward applies ``weight -= learning_rate * grad`` in place and
            returns no gradient; fp32 weights only; pass a ``placeholder`` that requires grad).
        learning_rate: the fused SGD step size.
        scratch: ``exact_sgd`` with ``mult``: an all-zero fp32 buffer of ``layout.numel``
            elements, left all-zero after every step (allocated per call when ``None``).
        placeholder: ``exact_sgd``: a tensor that requires grad, so that autograd calls backward.
        block_b: bags per program (a power of two); default from ``d`` and ``k``.
        pre_reduce_small, small_rows, prefetch_indices: the backward's pre-reduction of small
            components and the forward's index prefetch (see :func:`launch_plan`; A/B knobs for
            benchmarks).

    Shape:
        output ``(B, F * d)``: feature ``f`` in columns ``f*d : (f+1)*d``, in ``weight``'s dtype.
    """
    if not isinstance(layout, TBELayout):
        raise TypeError(f"layout must be a TBELayout (from tbe_layout), got {type(layout).__name__}")
    F = layout.num_features
    if indices.dim() != 1 or offsets.dim() != 1:
        raise ValueError(f"indices and offsets must be 1-D, got {tuple(indices.shape)} and {tuple(offsets.shape)}")
    if indices.dtype not in (torch.int64, torch.int32) or offsets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices and offsets must be integer tensors, got {indices.dtype} and {offsets.dtype}")
    if offsets.numel() < 1 or (offsets.numel() - 1) % F:
        raise ValueError(f"offsets must have F * B + 1 entries for F={F} features, got {offsets.numel()}")
    if weight.dim() != 1 or weight.numel() != layout.numel:
        raise ValueError(f"weight must be the flat 1-D buffer of {layout.numel} elements, got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype not in KERNEL_DTYPES:
        raise TypeError(f"triton TBE serves {KERNEL_DTYPES}, got weight dtype {weight.dtype}")
    device = weight.device
    if indices.device != device or offsets.device != device:
        raise ValueError(f"indices ({indices.device}), offsets ({offsets.device}) and weight ({device}) "
                         "must be on one device")
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError("the triton TBE kernel on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "triton is imported")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} for the triton TBE kernel, got {optimizer!r}")
    indices = indices.long().contiguous()
    offsets = offsets.long().contiguous()
    if validate:
        validate_tbe_input(indices, offsets, layout)
    plan = launch_plan(layout, (offsets.numel() - 1) // F, block_b, pre_reduce_small=pre_reduce_small,
                       small_rows=small_rows, prefetch_indices=prefetch_indices)
    if optimizer is None:
        return _TBEFunction.apply(weight, None, indices, offsets, layout, plan, None)
    if weight.dtype != torch.float32:
        raise TypeError(f"optimizer={optimizer!r} updates the weights with fp32 atomics: weight dtype "
                        f"must be float32, got {weight.dtype}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if placeholder is None or not placeholder.requires_grad:
        raise ValueError("optimizer='exact_sgd' needs a placeholder tensor that requires grad "
                         "(autograd only runs backward through such a tensor)")
    if layout.operation == "mult" and scratch is None:
        scratch = torch.zeros(layout.numel, dtype=torch.float32, device=device)
    return _TBEFunction.apply(weight.detach(), placeholder, indices, offsets, layout, plan,
                              _SgdStep(float(learning_rate), scratch))
