"""The base of compemb's ``nn.EmbeddingBag``-compatible modules.

:class:`EmbeddingBagModule` holds what they share: the checks of ``num_embeddings``,
``embedding_dim``, ``mode`` and the row options, the ``nn.EmbeddingBag`` forward contract (the
input is validated once by :func:`compemb.functional.bag_input`, then the subclass's
:meth:`~EmbeddingBagModule.pooled` embeds and pools it), the refusal of TorchScript and the
``extra_repr`` pieces of the optional arguments.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from torch import Tensor, nn

from compemb.functional import bag_input, check_int, check_max_norm, check_num_embeddings, jit_unsupported_error
from compemb.options import check_mode
from compemb.state import MappingModule

__all__ = ["EmbeddingBagModule", "OPTION_DEFAULTS", "check_size_or_collisions"]

#: the optional arguments :meth:`EmbeddingBagModule.options_repr` shows when they differ from these
OPTION_DEFAULTS = {
    "max_norm": None,
    "norm_type": 2,
    "scale_grad_by_freq": False,
    "sparse": False,
    "include_last_offset": False,
    "allow_collisions": False,
}


def check_size_or_collisions(name: str, size_name: str, size: Optional[int], num_collisions: Optional[int],
                             entries: int) -> int:
    """``size`` (an int >= 1), or ``ceil(entries / num_collisions)`` when ``num_collisions`` is given instead.

    Exactly one of the two must be given (``ValueError`` otherwise); ``size_name`` is the argument's
    name and ``name`` the class, in the error messages.

    Example::

        >>> check_size_or_collisions("Bag", "num_buckets", None, 4, 10)
        3
    """
    if (size is None) == (num_collisions is None):
        raise ValueError(f"{name}: give exactly one of {size_name} and num_collisions, got {size_name}={size!r}, "
                         f"num_collisions={num_collisions!r}")
    if size is None:
        size = -(-entries // check_int("num_collisions", num_collisions, 1, name))
    return check_int(size_name, size, 1, name)


class EmbeddingBagModule(MappingModule):
    """A :class:`~compemb.state.MappingModule` with the :class:`torch.nn.EmbeddingBag` forward contract.

    A subclass calls :meth:`init_bag` (and, with ``nn.EmbeddingBag``'s row options,
    :meth:`init_row_options`) in its constructor and implements :meth:`pooled`.
    """

    num_embeddings: Any  # n for every module but QREmbeddingBag (its tables' rows)
    embedding_dim: Any
    mode: str
    include_last_offset: bool
    max_norm: Optional[float]
    norm_type: float
    scale_grad_by_freq: bool
    sparse: bool

    def init_bag(self, num_embeddings: int, embedding_dim: int, mode: str,
                 include_last_offset: bool) -> Tuple[str, int, int]:
        """Check and set ``num_embeddings``, ``embedding_dim``, ``mode`` and ``include_last_offset``.

        Returns the class name (for error messages), ``n`` and ``D``.
        """
        name = type(self).__name__
        self.num_embeddings = n = check_num_embeddings("num_embeddings", num_embeddings, name)
        self.embedding_dim = d = check_int("embedding_dim", embedding_dim, 1, name)
        self.mode = check_mode(mode, name)
        self.include_last_offset = bool(include_last_offset)
        return name, n, d

    def init_row_options(self, max_norm: Optional[float], norm_type: float, scale_grad_by_freq: bool,
                         sparse: bool, refuse_sparse_scaled: bool = False) -> None:
        """Check and set ``max_norm``, ``norm_type``, ``scale_grad_by_freq`` and ``sparse``.

        With ``refuse_sparse_scaled``, ``sparse`` and ``scale_grad_by_freq`` together raise
        ``ValueError`` (as in torch).
        """
        self.max_norm = check_max_norm(max_norm, type(self).__name__)
        self.norm_type = norm_type
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.sparse = bool(sparse)
        if refuse_sparse_scaled and self.sparse and self.scale_grad_by_freq:
            raise ValueError("scale_grad_by_freq=True is not supported with sparse=True (as in torch)")

    def num_indices(self) -> int:
        """``n``: every index must lie in ``[0, n)``."""
        return int(self.num_embeddings)

    def pooled(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
               bag_len: Optional[int]) -> Tensor:
        """The ``(B, D)`` output of validated input (the fields of :class:`compemb.functional.BagInput`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement pooled()")

    def forward(
        self,
        input: Tensor,
        offsets: Optional[Tensor] = None,
        per_sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """The bags of ``input`` pooled as :class:`torch.nn.EmbeddingBag` does: ``(B, embedding_dim)``."""
        got = bag_input(input, offsets, per_sample_weights, self.include_last_offset, self.mode,
                        self.num_indices(), type(self).__name__)
        return self.pooled(got.indices, got.offsets, got.per_sample_weights, got.bag_len)

    def __prepare_scriptable__(self) -> nn.Module:
        raise jit_unsupported_error(type(self).__name__, "torch.jit.script")

    def options_repr(self, *names: str) -> str:
        """``", name=value"`` for each of ``names`` whose value differs from :data:`OPTION_DEFAULTS`."""
        values = [(name, getattr(self, name)) for name in names]
        return "".join(f", {name}={value}" for name, value in values if value != OPTION_DEFAULTS[name])
