"""Tensor-train embedding tables (TT-Rec: Yin, Acun, Wu and Liu, MLSys 2021).

The ``n x D`` table is a tensor-train matrix: ``n <= p_0 p_1 ... p_{c-1}`` and
``D <= q_0 q_1 ... q_{c-1}`` are factorised, row ``x`` has the mixed-radix digits
``(i_0, ..., i_{c-1})`` of the radices ``p`` (``i_0`` least significant, as
:func:`compemb.partitions.generalized_qr`), and

    W[x, (a_0, ..., a_{c-1})] = G_0[i_0][:, a_0, :] G_1[i_1][:, a_1, :] ... G_{c-1}[i_{c-1}][:, a_{c-1}, :]

a product of ``R_k x R_{k+1}`` matrices (``R_0 = R_c = 1``): core ``k`` holds
``p_k R_k q_k R_{k+1}`` numbers, the table ``sum_k p_k R_k q_k R_{k+1}`` instead of ``n D``. The
column index is row-major in ``(a_0, ..., a_{c-1})``. Like the compositional tables, the cores
are indexed by the digits of a complementary family (generalized QR); unlike them, the rows are
combined by a chain of small matrix products whose inner width, the TT rank, is the size knob.

:class:`TTEmbeddingBag` has the ``nn.EmbeddingBag`` forward contract; its forward is the plain
torch reference: the distinct looked-up rows are contracted core by core and pooled with
:func:`compemb.functional.pool_rows`.

Example::

    >>> import torch
    >>> bag = TTEmbeddingBag(1000, 16, tt_rank=4, mode="sum")
    >>> bag.tt_p_shapes, bag.tt_q_shapes, bag.tt_ranks
    ((10, 10, 10), (4, 2, 2), (1, 4, 4, 1))
    >>> bag(torch.tensor([[1, 2], [999, 0]])).shape
    torch.Size([2, 16])
    >>> sum(p.numel() for p in bag.parameters())
    560
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compemb._bag_module import EmbeddingBagModule
from compemb.functional import check_int, check_num_embeddings, check_per_sample_weights_dtype, pool_rows
from compemb.partitions import choose_radices

__all__ = ["TTEmbeddingBag", "tt_shapes", "tt_ranks", "tt_num_parameters", "balanced_factors"]

#: TT-Rec's number of cores
DEFAULT_NUM_CORES = 3


def balanced_factors(value: int, k: int) -> Tuple[int, ...]:
    """``k`` factors whose product is exactly ``value``, the largest as small as possible (descending).

    Example::

        >>> balanced_factors(16, 3), balanced_factors(64, 3), balanced_factors(13, 2)
        ((4, 2, 2), (4, 4, 4), (13, 1))
    """
    value = check_int("value", value, 1, "balanced_factors")
    k = check_int("k", k, 1, "balanced_factors")
    best: Optional[Tuple[int, ...]] = None

    def search(rest: int, slots: int, cap: int, chosen: Tuple[int, ...]) -> None:
        nonlocal best
        if slots == 1:
            if rest <= cap:
                candidate = chosen + (rest,)
                if best is None or (max(candidate), candidate) < (max(best), best):
                    best = candidate
            return
        # factors in descending order: the next one is at most cap and at least rest ** (1/slots)
        low = max(1, math.ceil(round(rest ** (1.0 / slots), 9)))
        for f in range(min(cap, rest), low - 1, -1):
            if rest % f == 0:
                search(rest // f, slots - 1, f, chosen + (f,))

    search(value, k, value, ())
    assert best is not None
    return best


def tt_shapes(num_embeddings: int, embedding_dim: int, num_cores: int = DEFAULT_NUM_CORES
              ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The automatic factorisations ``(p, q)``: ``p`` from :func:`~compemb.partitions.choose_radices`
    (product ``>= n``, near ``n ** (1/c)``), ``q`` from :func:`balanced_factors` (product ``D``).

    Example::

        >>> tt_shapes(10131227, 16)
        ((217, 217, 216), (4, 2, 2))
    """
    n = check_num_embeddings("num_embeddings", num_embeddings, "tt_shapes")
    d = check_int("embedding_dim", embedding_dim, 1, "tt_shapes")
    c = check_int("num_cores", num_cores, 1, "tt_shapes")
    return tuple(choose_radices(n, c)), balanced_factors(d, c)


def tt_ranks(tt_rank: Union[int, Sequence[int]], num_cores: int) -> Tuple[int, ...]:
    """The ``c + 1`` ranks ``(1, R_1, ..., R_{c-1}, 1)`` from one rank or the ``c - 1`` inner ones.

    Example::

        >>> tt_ranks(8, 3), tt_ranks([2, 5], 3)
        ((1, 8, 8, 1), (1, 2, 5, 1))
    """
    if isinstance(tt_rank, (list, tuple)):
        inner = tuple(check_int(f"tt_rank[{i}]", r, 1, "tt_ranks") for i, r in enumerate(tt_rank))
        if len(inner) != num_cores - 1:
            raise ValueError(f"tt_rank has {len(inner)} ranks; {num_cores} cores need {num_cores - 1}")
    else:
        inner = (check_int("tt_rank", tt_rank, 1, "tt_ranks"),) * (num_cores - 1)
    return (1,) + inner + (1,)


def tt_num_parameters(p_shapes: Sequence[int], q_shapes: Sequence[int], ranks: Sequence[int]) -> int:
    """``sum_k p_k R_k q_k R_{k+1}``: the parameters of the TT cores.

    Example::

        >>> tt_num_parameters((10, 10, 10), (4, 2, 2), (1, 4, 4, 1))
        560
    """
    return sum(p * ranks[k] * q * ranks[k + 1] for k, (p, q) in enumerate(zip(p_shapes, q_shapes)))


class TTEmbeddingBag(EmbeddingBagModule):
    r"""An embedding bag whose ``n x D`` table is a tensor train of ``c`` cores (TT-Rec).

    Initialisation: every core is drawn ``U(-a, a)`` with one ``a`` for all, chosen so that the
    entries of the table have mean 0 and the variance ``1 / (3 n)`` of a full table drawn
    ``U(-sqrt(1/n), sqrt(1/n))``: an entry is a sum of ``R_1 ... R_{c-1}`` products of ``c``
    independent draws of variance ``a^2 / 3``, so ``(a^2/3)^c prod R_k = 1 / (3 n)``.

    Args:
        num_embeddings: ``n``.
        embedding_dim: ``D``, the output width.
        tt_rank: the inner ranks: one int for all, or ``c - 1`` ints (default 8).
        tt_p_shapes: the row factorisation, product ``>= n`` (default :func:`tt_shapes`).
        tt_q_shapes: the column factorisation, product ``>= D`` (default :func:`tt_shapes`:
            product exactly ``D``; a larger product is cropped to the first ``D`` columns).
        num_cores: ``c`` when no shapes are given (default 3, as TT-Rec).
        mode: ``"sum"``, ``"mean"`` (default) or ``"max"``.
        include_last_offset, sparse: as :class:`torch.nn.EmbeddingBag` (``sparse``: the cores
            get sparse gradients).
        device, dtype: of the cores.

    Attributes:
        cores (nn.ParameterList): core ``k`` of shape ``(p_k, R_k q_k R_{k+1})``, one row per digit.
        tt_p_shapes, tt_q_shapes, tt_ranks: the factorisations and the ``c + 1`` ranks.

    Shape:
        - input: ``(B, L)``, or ``(N,)`` with ``offsets`` ``(B,)`` (``(B + 1,)`` with
          ``include_last_offset``); per_sample_weights: the shape of input (``mode="sum"``).
        - output: ``(B, D)``.

    Example::

        >>> bag = TTEmbeddingBag(100, 6, tt_rank=[2, 3], tt_p_shapes=(5, 5, 4), tt_q_shapes=(3, 2, 1))
        >>> [tuple(c.shape) for c in bag.cores]
        [(5, 6), (5, 12), (4, 3)]
        >>> bag.materialize().shape
        torch.Size([100, 6])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        tt_rank: Union[int, Sequence[int]] = 8,
        *,
        tt_p_shapes: Optional[Sequence[int]] = None,
        tt_q_shapes: Optional[Sequence[int]] = None,
        num_cores: Optional[int] = None,
        mode: str = "mean",
        include_last_offset: bool = False,
        sparse: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name, n, d = self.init_bag(num_embeddings, embedding_dim, mode, include_last_offset)
        self.sparse = bool(sparse)
        given = [len(s) for s in (tt_p_shapes, tt_q_shapes) if s is not None]
        if num_cores is None:
            c = given[0] if given else DEFAULT_NUM_CORES
        else:
            c = check_int("num_cores", num_cores, 1, name)
        if any(g != c for g in given):
            raise ValueError(f"{name}: tt_p_shapes and tt_q_shapes must both have num_cores = {c} factors, got "
                             f"{tt_p_shapes!r} and {tt_q_shapes!r}")
        auto_p, auto_q = tt_shapes(n, d, c)
        p = auto_p if tt_p_shapes is None else tuple(check_int(f"tt_p_shapes[{i}]", v, 1, name)
                                                     for i, v in enumerate(tt_p_shapes))
        q = auto_q if tt_q_shapes is None else tuple(check_int(f"tt_q_shapes[{i}]", v, 1, name)
                                                     for i, v in enumerate(tt_q_shapes))
        if math.prod(p) < n:
            raise ValueError(f"{name}: tt_p_shapes {p} have product {math.prod(p)} < num_embeddings = {n}")
        if math.prod(q) < d:
            raise ValueError(f"{name}: tt_q_shapes {q} have product {math.prod(q)} < embedding_dim = {d}")
        self.tt_p_shapes, self.tt_q_shapes = p, q
        self.tt_ranks = ranks = tt_ranks(tt_rank, c)
        factory: Dict[str, Any] = {"device": device, "dtype": dtype}
        self.cores = nn.ParameterList(
            [nn.Parameter(torch.empty(p[k], ranks[k] * q[k] * ranks[k + 1], **factory)) for k in range(c)]
        )
        self.reset_parameters()

    def init_bound(self) -> float:
        """The half-width ``a`` every core is drawn from (see the class docstring)."""
        c = len(self.cores)
        variance = (1.0 / (3.0 * self.num_embeddings * math.prod(self.tt_ranks))) ** (1.0 / c)
        return math.sqrt(3.0 * variance)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every core ``U(-a, a)`` with ``a = init_bound()``."""
        bound = self.init_bound()
        for core in self.cores:
            core.uniform_(-bound, bound)

    def mapping_state(self) -> Dict[str, Any]:
        """``n``, ``D``, the factorisations and ranks (they define which numbers make each row)."""
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "tt_p_shapes": list(self.tt_p_shapes), "tt_q_shapes": list(self.tt_q_shapes),
                "tt_ranks": list(self.tt_ranks)}

    def tt_rows(self, ids: Tensor) -> Tensor:
        """The table rows of validated ids ``(N,)`` in ``[0, n)``: ``(N, D)``, with autograd."""
        ranks, qs = self.tt_ranks, self.tt_q_shapes
        num = ids.shape[0]
        rest = ids
        v: Optional[Tensor] = None
        width = 1  # columns so far: q_0 ... q_{k-1} (explicit: N may be 0)
        for k, (core, p) in enumerate(zip(self.cores, self.tt_p_shapes)):
            if k < len(self.cores) - 1:
                digit = torch.remainder(rest, p)
                rest = torch.div(rest, p, rounding_mode="floor")
            else:
                digit = rest
            g = F.embedding(digit, core, sparse=self.sparse).view(num, ranks[k], qs[k], ranks[k + 1])
            if v is None:
                v = g.reshape(num, qs[k], ranks[k + 1])  # R_0 = 1
            else:
                v = torch.einsum("uar,urbs->uabs", v, g).reshape(num, width * qs[k], ranks[k + 1])
            width *= qs[k]
        assert v is not None
        return v.reshape(num, width)[:, : self.embedding_dim]

    @torch.no_grad()
    def materialize(self, chunk_size: int = 65536) -> Tensor:
        """The full ``(n, D)`` table (for small ``n``: tests, export, inspection)."""
        device = self.cores[0].device
        parts: List[Tensor] = []
        for start in range(0, self.num_embeddings, chunk_size):
            parts.append(self.tt_rows(torch.arange(start, min(start + chunk_size, self.num_embeddings), device=device)))
        return torch.cat(parts)

    def pooled(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
               bag_len: Optional[int]) -> Tensor:
        check_per_sample_weights_dtype(per_sample_weights, self.cores[0].dtype, type(self).__name__)
        # each distinct row once (TT-Rec's point: the contraction dominates the cost)
        uniq, inverse = torch.unique(indices, return_inverse=True)
        rows = self.tt_rows(uniq).index_select(0, inverse)
        return pool_rows(rows, offsets, self.mode, per_sample_weights, bag_len)

    def extra_repr(self) -> str:
        s = (f"{self.num_embeddings}, {self.embedding_dim}, tt_p_shapes={self.tt_p_shapes}, "
             f"tt_q_shapes={self.tt_q_shapes}, tt_ranks={self.tt_ranks}, mode={self.mode}")
        return s + self.options_repr("sparse", "include_last_offset")
