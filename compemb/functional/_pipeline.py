"""The whole pipeline on raw indices: validate the bag input, encode with a family, pool with a backend.

Example::

    >>> from compemb.partitions import quotient_remainder
    >>> fam = quotient_remainder(10, 4)
    >>> w = [torch.ones(s, 3) for s in fam.table_sizes]
    >>> compositional_embedding_bag(torch.tensor([[1, 9]]), None, w, fam, mode="sum").tolist()
    [[2.0, 2.0, 2.0]]
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

from compemb.functional._inputs import bag_input
from compemb.functional.reference import embedding_bag_codes, kernel_extras
from compemb.kernels import Backend, resolve_backend
from compemb.options import BagOptions

if TYPE_CHECKING:
    from compemb.partitions import PartitionFamily

__all__ = ["compositional_embedding_bag", "encode_validated", "backend_options"]


def compositional_embedding_bag(
    input: torch.Tensor,
    offsets: Optional[torch.Tensor],
    weights: Sequence[torch.Tensor],
    family: "PartitionFamily",
    operation: str = "mult",
    mode: str = "mean",
    compose: str = "before_pool",
    per_sample_weights: Optional[torch.Tensor] = None,
    include_last_offset: bool = False,
    sparse: bool = False,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    backend: Union[None, str, Backend] = None,
    name: str = "compositional_embedding_bag",
) -> torch.Tensor:
    """Compositional embedding bag of raw indices: normalise, encode with ``family``, pool.

    Args:
        input, offsets, per_sample_weights, include_last_offset: the ``nn.EmbeddingBag`` forward
            contract (see :func:`compemb.functional.bag_input`).
        weights: one table per partition of ``family``: ``weights[i]`` has
            ``family.table_sizes[i]`` rows.
        family: a :class:`compemb.partitions.PartitionFamily` over ``n`` categories.
        operation, mode, compose, sparse, max_norm, norm_type, scale_grad_by_freq: see
            :func:`compemb.functional.embedding_bag_codes`.
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
    flat, full_offsets, psw, bag_len = bag_input(
        input, offsets, per_sample_weights, include_last_offset, mode, family.n, name
    )
    codes = encode_validated(family, flat)
    if backend is None or backend == "torch" or getattr(backend, "name", None) == "torch":
        return embedding_bag_codes(
            codes, full_offsets, weights, operation, mode, compose, psw, sparse=sparse, max_norm=max_norm,
            norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, bag_len=bag_len,
        )
    if isinstance(backend, str):
        options = backend_options(weights, operation, mode, compose, psw is not None, sparse, max_norm,
                                  scale_grad_by_freq)
        backend = resolve_backend(backend, options)
    extras = kernel_extras(sparse, max_norm, norm_type, scale_grad_by_freq)
    return backend.embedding_bag(codes, full_offsets, weights, operation, mode, compose, psw, **extras)


def backend_options(
    weights: Sequence[torch.Tensor],
    operation: str,
    mode: str,
    compose: str,
    per_sample_weights: bool = False,
    sparse: bool = False,
    max_norm: Optional[float] = None,
    scale_grad_by_freq: bool = False,
) -> BagOptions:
    """The :class:`compemb.options.BagOptions` of a call over ``weights``, to resolve a backend with.

    ``k``, dtype and device come from the tables; ``requires_grad`` is whether autograd is on and
    a table requires grad.

    Example::

        >>> backend_options([torch.zeros(2, 3)] * 2, "mult", "sum", "before_pool").k
        2
    """
    return BagOptions(
        operation=operation, mode=mode, compose=compose, k=len(weights), dtype=weights[0].dtype,
        device=weights[0].device, per_sample_weights=per_sample_weights, sparse=sparse, max_norm=max_norm,
        requires_grad=torch.is_grad_enabled() and any(w.requires_grad for w in weights),
        scale_grad_by_freq=scale_grad_by_freq,
    )


def encode_validated(family: "PartitionFamily", flat: torch.Tensor) -> torch.Tensor:
    """``family.encode(flat)`` for indices already checked to lie in ``[0, family.n)``.

    ``PartitionFamily.encode`` validates its input again (an ``aminmax`` and, on CUDA, a device
    sync); after :func:`compemb.functional.bag_input` that is redundant, so this writes the codes
    with ``family.encode_into`` (which every :class:`~compemb.partitions.PartitionFamily` has).

    Example::

        >>> from compemb.partitions import quotient_remainder
        >>> encode_validated(quotient_remainder(10, 4), torch.tensor([0, 9])).tolist()
        [[0, 1], [0, 2]]
    """
    out = torch.empty((family.k, flat.shape[0]), dtype=torch.long, device=flat.device)
    family.encode_into(flat, out)
    return out
