"""Thin ``nn.Module``s over :mod:`compemb.functional`, in the style of ``torch.nn.EmbeddingBag``.

:class:`CompositionalEmbeddingBag` takes any partition family and operation and always returns
``embedding_dim`` wide vectors; :class:`QREmbeddingBag` is a drop-in for the ``QREmbeddingBag`` of
facebookresearch/dlrm with its faults fixed. Both have the ``nn.EmbeddingBag`` forward contract
and validate their input with one device-to-host copy.

Example::

    >>> bag = QREmbeddingBag(1000, 16, num_collisions=4, mode="sum")
    >>> bag(torch.tensor([[1, 2], [999, 0]])).shape
    torch.Size([2, 16])
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from compemb import functional as CF
from compemb._bag_module import EmbeddingBagModule
from compemb.kernels import Backend, resolve_backend
from compemb.options import check_backend, check_compose, check_mode, check_operation
from compemb.partitions import (
    PartitionFamily, QuotientPartition, RemainderPartition, ResiduePartition, quotient_remainder, split_dim,
)

__all__ = ["CompositionalEmbeddingBag", "QREmbeddingBag"]


class _BackendBag(EmbeddingBagModule):
    """The base of both modules: resolves ``self.backend`` once per configuration and calls it."""

    backend: str
    operation: str
    compose: str

    def _resolve(self, weights: Sequence[torch.Tensor], has_psw: bool) -> Backend:
        requires_grad = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
        key = (
            self.backend, self.operation, self.mode, self.compose, len(weights), weights[0].dtype,
            weights[0].device, has_psw, self.sparse, self.max_norm, self.scale_grad_by_freq,
            requires_grad,
        )
        cache = self.__dict__.setdefault("_backend_cache", {})
        backend = cache.get(key)
        if backend is None:
            options = CF.backend_options(
                weights, self.operation, self.mode, self.compose, has_psw, self.sparse, self.max_norm,
                self.scale_grad_by_freq,
            )
            backend = resolve_backend(self.backend, options)
            cache[key] = backend
        self.__dict__["_last_backend"] = backend.name
        return backend

    def _backend_repr(self) -> str:
        last = self.__dict__.get("_last_backend")
        if self.backend == "auto" and last is not None:
            return f"backend=auto ({last})"
        return f"backend={self.backend}"

    def _run(
        self,
        codes: Union[torch.Tensor, Sequence[torch.Tensor]],
        offsets: torch.Tensor,
        weights: Sequence[torch.Tensor],
        psw: Optional[torch.Tensor],
        bag_len: Optional[int] = CF.UNKNOWN_BAG_LEN,
    ) -> torch.Tensor:
        """Pool ``codes`` (a ``(k, N)`` tensor or k ``(N,)`` tensors) with the configured backend."""
        if psw is not None and psw.dtype != weights[0].dtype:  # (as nn.EmbeddingBag: no silent cast)
            CF.check_per_sample_weights_dtype(psw, weights[0].dtype, type(self).__name__)
        # backend="torch" needs no resolution: the constructor validated the configuration and
        # the reference serves every floating-point table (the one thing it could refuse)
        if self.backend != "torch" or not weights[0].is_floating_point():
            backend = self._resolve(weights, psw is not None)
            if backend.name != "torch":
                if not isinstance(codes, torch.Tensor):  # the kernel contract: one (k, N) tensor
                    codes = torch.stack(list(codes))
                extras = CF.kernel_extras(self.sparse, self.max_norm, self.norm_type, self.scale_grad_by_freq)
                return backend.embedding_bag(
                    codes, offsets, list(weights), self.operation, self.mode, self.compose, psw, **extras
                )
        return CF.embedding_bag_codes(
            codes, offsets, weights, self.operation, self.mode, self.compose, psw, sparse=self.sparse,
            max_norm=self.max_norm, norm_type=self.norm_type, scale_grad_by_freq=self.scale_grad_by_freq,
            trusted=True, bag_len=bag_len,
        )


class CompositionalEmbeddingBag(_BackendBag):
    r"""An embedding bag whose table is composed from one small table per partition.

    Category ``x`` of ``{0, ..., n-1}`` is mapped by the family ``P_1 .. P_k`` to codes
    ``P_i(x)``; its embedding combines the rows ``W_i[P_i(x)]`` by ``operation``; a bag pools the
    embeddings of its indices by ``mode`` (Shi et al., KDD 2020). With a complementary family
    every category gets its own embedding while the tables hold ``sum_i |P_i| d_i`` numbers
    instead of ``n D``.

    Composition semantics: ``compose="before_pool"`` (default, the paper's definition) combines
    the rows of each index and then pools; ``"after_pool"`` pools each table over the bag and then
    combines. For ``"add"`` and ``"concat"`` with sum/mean the two coincide; for ``"mult"`` they
    differ on bags of more than one index, and for ``"max"`` they differ for every operation.

    Initialisation: the tables are drawn ``U(-a, a)`` with ``a`` from
    :func:`compemb.functional.init_bound`, so that the composed vectors have mean 0 and the
    variance of a full table drawn ``U(-sqrt(1/n), sqrt(1/n))``: ``concat`` draws every part at
    ``a = sqrt(1/n)``; ``add`` (a sum of k tables) at ``a = sqrt(1/(k n))``; ``mult`` (a product of
    k tables) at ``a = sqrt(3) (3n)^(-1/(2k))``, i.e. ``(a²/3)^k = 1/(3n)``.

    Args:
        num_embeddings: ``n``, the number of categories.
        embedding_dim: the output width ``D`` (for every operation).
        family: a :class:`compemb.partitions.PartitionFamily` over ``n``; default the
            quotient–remainder family ``quotient_remainder(n, num_collisions)``.
        operation: ``"mult"`` (default), ``"add"`` or ``"concat"``.
        mode: ``"sum"``, ``"mean"`` (default) or ``"max"``.
        compose: ``"before_pool"`` (default) or ``"after_pool"``.
        num_collisions: ``m`` of the default quotient–remainder family.
        concat_dims: per-partition widths for ``"concat"`` (they must add up to ``D``); default
            ``D`` split evenly, the remainder going to the first partitions.
        allow_collisions: accept a family that is not complementary (distinct categories may then
            share an embedding); refused otherwise.
        include_last_offset, sparse, max_norm, norm_type, scale_grad_by_freq: as in
            :class:`torch.nn.EmbeddingBag` (``max_norm`` renormalises each table's rows).
        backend: ``"torch"`` (the reference), ``"triton"``, ``"fbgemm"`` or ``"auto"`` (the
            fastest available backend that is exact for the configuration, resolved at the first
            forward and cached per configuration).
        device, dtype: of the tables.
        _weights: k tensors to use as the tables (shapes ``(table_sizes[i], d_i)``).

    Attributes:
        weights (nn.ParameterList): the k tables, ``weights[i]`` of shape ``(|P_i|, d_i)``.
        family: the partition family; ``dims``: the tables' widths.

    Shape:
        - input: ``(B, L)``, or ``(N,)`` with ``offsets`` ``(B,)`` (``(B + 1,)`` with
          ``include_last_offset``); per_sample_weights: the shape of input.
        - output: ``(B, embedding_dim)``.

    Example::

        >>> bag = CompositionalEmbeddingBag(1000, 16, num_collisions=4, mode="sum")
        >>> [tuple(w.shape) for w in bag.weights]
        [(4, 16), (250, 16)]
        >>> bag(torch.tensor([[1, 2], [999, 0]])).shape
        torch.Size([2, 16])
    """

    __constants__ = [
        "num_embeddings", "embedding_dim", "operation", "mode", "compose", "max_norm",
        "norm_type", "scale_grad_by_freq", "sparse", "include_last_offset",
    ]
    num_collisions: Optional[int]

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        family: Optional[PartitionFamily] = None,
        operation: str = "mult",
        mode: str = "mean",
        compose: str = "before_pool",
        num_collisions: int = 4,
        concat_dims: Optional[Sequence[int]] = None,
        allow_collisions: bool = False,
        include_last_offset: bool = False,
        sparse: bool = False,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        backend: str = "torch",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        _weights: Optional[Sequence[torch.Tensor]] = None,
    ) -> None:
        super().__init__()
        name, num_embeddings, embedding_dim = self.init_bag(num_embeddings, embedding_dim, mode, include_last_offset)
        self.operation = check_operation(operation, name)
        self.compose = check_compose(compose, name)
        self.backend = check_backend(backend, name)
        if family is None:
            num_collisions = CF.check_int("num_collisions", num_collisions, 1, name)
            family = quotient_remainder(num_embeddings, num_collisions)
            self.num_collisions = num_collisions
        else:
            if not isinstance(family, PartitionFamily):
                raise TypeError(
                    f"CompositionalEmbeddingBag: family must be a PartitionFamily, got "
                    f"{type(family).__name__} {family!r}"
                )
            self.num_collisions = None
        if family.n != num_embeddings:
            raise ValueError(
                f"family covers n={family.n} categories but num_embeddings={num_embeddings}"
            )
        if not allow_collisions and not family.is_complementary():
            raise ValueError(
                f"family {family!r} is not complementary (some categories would share an embedding); "
                f"pass allow_collisions=True to accept that"
            )
        self.family = family
        self.allow_collisions = bool(allow_collisions)
        k = family.k
        if operation == "concat":
            if concat_dims is None:
                dims = tuple(split_dim(embedding_dim, k))
            else:
                dims = tuple(CF.check_int(f"concat_dims[{i}]", d, 1, name) for i, d in enumerate(concat_dims))
                if len(dims) != k or sum(dims) != embedding_dim:  # (check_int refused widths < 1)
                    raise ValueError(
                        f"concat_dims={list(concat_dims)} must be {k} positive widths adding up to "
                        f"embedding_dim={embedding_dim} (they add up to {sum(dims)})"
                    )
        else:
            if concat_dims is not None:
                raise ValueError(f"concat_dims={list(concat_dims)} is only for operation='concat', got {operation!r}")
            dims = (embedding_dim,) * k
        self.dims = dims
        self.init_row_options(max_norm, norm_type, scale_grad_by_freq, sparse, refuse_sparse_scaled=True)

        shapes = [(int(rows), d) for rows, d in zip(family.table_sizes, dims)]
        factory: Dict[str, Any] = {"device": device, "dtype": dtype}
        if _weights is None:
            for i, shape in enumerate(shapes):
                CF.check_table_size(name, f"weights[{i}]", shape, dtype)
            self.weights = nn.ParameterList(
                [nn.Parameter(torch.empty(shape, **factory)) for shape in shapes]
            )
            self.reset_parameters()
        else:
            if len(_weights) != k:
                raise ValueError(f"_weights has {len(_weights)} tables, the family needs k={k}")
            CF.check_float_tables(_weights, [f"_weights[{i}]" for i in range(k)], name)
            for i, (w, shape) in enumerate(zip(_weights, shapes)):
                if tuple(w.shape) != shape:
                    raise ValueError(f"_weights[{i}] has shape {tuple(w.shape)}, expected {shape}")
            self.weights = nn.ParameterList([nn.Parameter(w) for w in _weights])

    def mapping_state(self) -> Dict[str, Any]:
        """The family (every partition's kind and parameters) and the operation, for ``state_dict``."""
        return {"num_embeddings": self.num_embeddings, "family": self.family.spec(), "operation": self.operation}

    def reset_parameters(self) -> None:
        """Draw every table ``U(-a, a)`` with ``a = init_bound(n, k, operation)``."""
        bound = CF.init_bound(self.num_embeddings, len(self.weights), self.operation)
        with torch.no_grad():
            for w in self.weights:
                w.uniform_(-bound, bound)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Sequence[torch.Tensor],
        family: Optional[PartitionFamily] = None,
        num_embeddings: Optional[int] = None,
        freeze: bool = True,
        operation: str = "mult",
        **kwargs: Any,
    ) -> "CompositionalEmbeddingBag":
        """Build from given component tables.

        Args:
            embeddings: the k tables, ``embeddings[i]`` of shape ``(family.table_sizes[i], d_i)``.
            family: their partition family; when ``None``, ``num_embeddings`` must be given and
                the tables are read as the quotient–remainder family with
                ``num_collisions = embeddings[0].shape[0]``.
            num_embeddings: ``n`` (default ``family.n``).
            freeze: do not train the tables (``requires_grad=False``), as ``nn.EmbeddingBag``.
            operation: the operation; the width is ``d`` for add/mult and ``sum(d_i)`` for concat.
            **kwargs: the other constructor arguments.

        Example::

            >>> from compemb.partitions import quotient_remainder
            >>> fam = quotient_remainder(10, 4)
            >>> tables = [torch.randn(s, 8) for s in fam.table_sizes]
            >>> CompositionalEmbeddingBag.from_pretrained(tables, fam).embedding_dim
            8
        """
        where = f"{cls.__name__}.from_pretrained"
        embeddings = list(embeddings)
        if not embeddings:
            raise ValueError(f"{where}: embeddings is empty; give one 2-D table per partition")
        CF.check_float_tables(embeddings, [f"embeddings[{i}]" for i in range(len(embeddings))], where)
        for i, e in enumerate(embeddings):
            if e.dim() != 2:
                raise ValueError(f"{where}: embeddings[{i}] must be a 2-D table, got shape {tuple(e.shape)}")
        if family is None:
            if num_embeddings is None:
                raise ValueError(f"{where}: give a family or num_embeddings")
            kwargs["num_collisions"] = int(embeddings[0].shape[0])
            family = quotient_remainder(num_embeddings, kwargs["num_collisions"])
        n = family.n if num_embeddings is None else num_embeddings
        if operation == "concat":
            dim = sum(int(e.shape[1]) for e in embeddings)
            kwargs.setdefault("concat_dims", [int(e.shape[1]) for e in embeddings])
        else:
            dim = int(embeddings[0].shape[1])
        module = cls(n, dim, family=family, operation=operation, _weights=embeddings, **kwargs)
        for w in module.weights:
            w.requires_grad_(not freeze)
        return module

    def pooled(self, indices: torch.Tensor, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
               bag_len: Optional[int]) -> torch.Tensor:
        # the indices were just checked: encode without the family's own (second) range check
        codes = CF.encode_validated(self.family, indices)
        return self._run(codes, offsets, list(self.weights), per_sample_weights, bag_len)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, operation={self.operation}, mode={self.mode}"
        s += f", compose={self.compose}, table_sizes={tuple(int(w.shape[0]) for w in self.weights)}"
        if self.operation == "concat":
            s += f", dims={self.dims}"
        s += self.options_repr(
            "max_norm", "norm_type", "scale_grad_by_freq", "sparse", "include_last_offset", "allow_collisions"
        )
        return s + ", " + self._backend_repr()


class QREmbeddingBag(_BackendBag):
    r"""Quotient–remainder embedding bag, a drop-in for facebookresearch/dlrm's ``QREmbeddingBag``.

    Category ``x`` is embedded by combining row ``x // m`` of ``weight_q`` and row ``x % m`` of
    ``weight_r`` (``m = num_collisions``). Constructor, argument order, attributes
    (``num_categories``, ``num_collisions``, ``operation``, ``max_norm``, ``norm_type``,
    ``scale_grad_by_freq``, ``mode``, ``sparse``, ``embedding_dim`` as ``[d_q, d_r]``,
    ``num_embeddings`` as ``[ceil(n/m), m]``, ``weight_q``, ``weight_r``) and output widths
    (``d`` for add/mult, ``d_q + d_r`` for concat, quotient part first) are those of DLRM's
    module (``tricks/qr_embedding_bag.py``), so DLRM code runs unchanged. Differences, each a fix:

    * quotients are computed in integers (DLRM divides in floating point: wrong above 2^24);
    * ``compose="before_pool"`` (default) combines the two rows per index and then pools — the
      paper's composition; ``compose="after_pool"`` pools each table first and then combines,
      exactly DLRM's outputs for the same weights;
    * initialisation: DLRM draws both tables ``U(sqrt(1/n), 1)`` (all positive: ``add`` starts far
      from a full table's scale and blows up the loss). Here the tables are drawn ``U(-a, a)``
      so that the composed vectors have mean 0 and the variance of a full table drawn
      ``U(-sqrt(1/n), sqrt(1/n))``: ``concat``: ``a = sqrt(1/n)``; ``add``: ``a = sqrt(1/(2n))``;
      ``mult``: ``a = sqrt(3) (3n)^(-1/4)`` (see :func:`compemb.functional.init_bound`);
    * bad input raises ``ValueError``/``IndexError``/``TypeError`` instead of failing an assert.

    Args:
        num_categories: ``n``; indices must lie in ``[0, n)``.
        embedding_dim: an int (both tables that wide) or ``[d_q, d_r]`` (equal for add/mult).
        num_collisions: ``m``, the remainder table's rows.
        operation: ``"mult"`` (default), ``"add"`` or ``"concat"``.
        max_norm, norm_type, scale_grad_by_freq, mode, sparse, include_last_offset: as in
            :class:`torch.nn.EmbeddingBag` (``max_norm`` renormalises each table's rows).
        _weight: a ``(weight_q, weight_r)`` pair of shapes ``(ceil(n/m), d_q)`` and ``(m, d_r)``.
        compose: ``"before_pool"`` (default) or ``"after_pool"``.
        backend: ``"torch"``, ``"triton"``, ``"fbgemm"`` or ``"auto"``.
        device, dtype: of the tables.

    Shape:
        - input: ``(B, L)``, or ``(N,)`` with ``offsets`` ``(B,)`` (``(B + 1,)`` with
          ``include_last_offset``); per_sample_weights: the shape of input.
        - output: ``(B, d)`` for add/mult, ``(B, d_q + d_r)`` for concat.

    Example::

        >>> bag = QREmbeddingBag(1000, 16, num_collisions=4, mode="sum")
        >>> tuple(bag.weight_q.shape), tuple(bag.weight_r.shape)
        ((250, 16), (4, 16))
        >>> bag(torch.tensor([0, 999, 5]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    __constants__ = [
        "num_categories", "embedding_dim", "num_collisions", "operation", "max_norm",
        "norm_type", "scale_grad_by_freq", "mode", "sparse",
    ]

    def __init__(
        self,
        num_categories: int,
        embedding_dim: Union[int, Sequence[int]],
        num_collisions: int,
        operation: str = "mult",
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        include_last_offset: bool = False,
        compose: str = "before_pool",
        backend: str = "torch",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_categories = num_categories = CF.check_num_embeddings("num_categories", num_categories, name)
        if not isinstance(embedding_dim, (list, tuple, torch.Size)):
            width = CF.check_int("embedding_dim", embedding_dim, 1, name)
            dims = [width, width]
        else:
            dims = [CF.check_int(f"embedding_dim[{i}]", d, 1, name) for i, d in enumerate(embedding_dim)]
            if len(dims) == 1:
                dims = dims * 2
            if len(dims) != 2:
                raise ValueError(f"{name}: embedding_dim must be an int or [d_q, d_r], got {embedding_dim!r}")
        self.embedding_dim = dims
        self.num_collisions = num_collisions = CF.check_int("num_collisions", num_collisions, 1, name)
        self.operation = check_operation(operation, name)
        if operation in ("add", "mult") and dims[0] != dims[1]:
            raise ValueError(f"operation={operation!r} needs equal widths, got embedding_dim={dims}")
        self.init_row_options(max_norm, norm_type, scale_grad_by_freq, sparse, refuse_sparse_scaled=True)
        self.mode = check_mode(mode, name)
        self.include_last_offset = bool(include_last_offset)
        self.compose = check_compose(compose, name)
        self.backend = check_backend(backend, name)
        # integer ceil(n / m), exact for every size
        self.num_embeddings = [-(-num_categories // num_collisions), num_collisions]
        factory: Dict[str, Any] = {"device": device, "dtype": dtype}
        if _weight is None:
            CF.check_table_size(name, "weight_q", (self.num_embeddings[0], dims[0]), dtype)
            CF.check_table_size(name, "weight_r", (self.num_embeddings[1], dims[1]), dtype)
            self.weight_q = nn.Parameter(torch.empty(self.num_embeddings[0], dims[0], **factory))
            self.weight_r = nn.Parameter(torch.empty(self.num_embeddings[1], dims[1], **factory))
            self.reset_parameters()
        else:
            if len(_weight) != 2:
                raise ValueError(f"_weight must be a (weight_q, weight_r) pair, got {len(_weight)} tensors")
            CF.check_float_tables(_weight, ["_weight[0] (weight_q)", "_weight[1] (weight_r)"], name)
            for what, w, shape in (
                ("quotient", _weight[0], (self.num_embeddings[0], dims[0])),
                ("remainder", _weight[1], (self.num_embeddings[1], dims[1])),
            ):
                if tuple(w.shape) != shape:
                    raise ValueError(
                        f"_weight for the {what} table has shape {tuple(w.shape)}, expected {shape} "
                        f"(num_embeddings={self.num_embeddings}, embedding_dim={dims})"
                    )
            self.weight_q = nn.Parameter(_weight[0])
            self.weight_r = nn.Parameter(_weight[1])

    @property
    def output_dim(self) -> int:
        """The output width: ``d_q + d_r`` for concat, else ``d``."""
        return sum(self.embedding_dim) if self.operation == "concat" else self.embedding_dim[0]

    @functools.cached_property
    def family(self) -> PartitionFamily:
        """The partition family ``[x // m, x % m]`` (quotient first, the order of the tables).

        With ``num_collisions > num_categories`` (accepted, as DLRM does: the remainder table then
        has unused rows) the remainder is a :class:`~compemb.partitions.ResiduePartition`, whose
        ``num_classes`` is ``n``, fewer than ``weight_r``'s rows; the codes are the same.
        """
        n, m = self.num_categories, self.num_collisions
        remainder = RemainderPartition(n, m) if m <= n else ResiduePartition(n, m)
        return PartitionFamily([QuotientPartition(n, m), remainder])

    def mapping_state(self) -> Dict[str, Any]:
        """``n``, ``m`` and the operation (they define the mapping), for ``state_dict``."""
        return {"num_categories": self.num_categories, "num_collisions": self.num_collisions,
                "operation": self.operation}

    def reset_parameters(self) -> None:
        """Draw both tables ``U(-a, a)``, ``a = init_bound(n, 2, operation)`` (not DLRM's init)."""
        bound = CF.init_bound(self.num_categories, 2, self.operation)
        with torch.no_grad():
            self.weight_q.uniform_(-bound, bound)
            self.weight_r.uniform_(-bound, bound)

    def encode(self, flat: torch.Tensor) -> torch.Tensor:
        """Codes ``(2, N)``: quotients ``x // m`` and remainders ``x % m``, in int64 arithmetic.

        ``flat`` must hold validated indices in ``[0, num_categories)`` (e.g. from
        :func:`compemb.functional.normalize_bag_input`).
        """
        return torch.stack(self._encode_pair(flat))

    def _encode_pair(self, flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # x >= 0 (validated): truncating division is floor division, and cheaper; the remainder
        # is one multiply-subtract (x - m q) rather than a second division
        m = self.num_collisions
        if flat.device.type == "cpu" and not torch.compiler.is_compiling():
            # numpy divides int64 by a scalar faster than torch on CPU: it precomputes a
            # multiply-shift divisor
            q = torch.from_numpy(flat.numpy() // m)
        else:
            q = torch.div(flat, m, rounding_mode="trunc")
        return q, torch.sub(flat, q, alpha=m)

    def num_indices(self) -> int:
        """``num_categories``: every index must lie in ``[0, num_categories)``."""
        return self.num_categories

    def pooled(self, indices: torch.Tensor, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
               bag_len: Optional[int]) -> torch.Tensor:
        # (dict lookups: nn.Module.__getattr__ is slow on this hot path; nn.DataParallel replicas
        # hold the tables as plain attributes instead)
        params = self._parameters
        weight_q, weight_r = params.get("weight_q"), params.get("weight_r")
        if weight_q is None or weight_r is None:
            weight_q, weight_r = self.weight_q, self.weight_r
        return self._run(self._encode_pair(indices), offsets, (weight_q, weight_r), per_sample_weights, bag_len)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, num_collisions={self.num_collisions}"
        s += f", operation={self.operation}" + self.options_repr("max_norm", "norm_type", "scale_grad_by_freq")
        s += f", mode={self.mode}, compose={self.compose}" + self.options_repr("sparse", "include_last_offset")
        return s + ", " + self._backend_repr()
