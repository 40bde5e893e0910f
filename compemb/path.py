"""Path-based compositional embeddings (Shi et al., KDD 2020, section 3.3).

The first partition of a family indexes a *base table*; every later partition ``P_j`` selects,
per equivalence class ``c``, a function ``f_{j,c}`` (a linear map, or a small MLP) that is applied
to the vector in sequence::

    e(x) = f_{k-1, P_{k-1}(x)}( ... f_{1, P_1(x)}( W[P_0(x)] ) ... )

With the default family (quotient first, remainder second) the base table has ``ceil(n/m)`` rows
and the remainder picks one of ``m`` maps, as in the paper's path-based experiments.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compemb._bag_module import EmbeddingBagModule
from compemb.functional import check_int, check_per_sample_weights_dtype, check_table_size, encode_validated, pool_rows
from compemb.partitions import PartitionFamily, quotient_remainder

__all__ = ["PathEmbeddingBag", "compose_path", "path_family"]

# activation name -> (function, energy gain^2 of the activation on symmetric inputs of the size
# an embedding has, ~sqrt(1/n)). ReLU keeps half the energy of a symmetric input; tanh is linear
# near zero, so it keeps all of it.
_ACTIVATIONS: Dict[str, Tuple[Callable[[Tensor], Tensor], float]] = {
    "relu": (F.relu, 2.0),
    "leaky_relu": (F.leaky_relu, 2.0 / (1.0 + 0.01**2)),
    "tanh": (torch.tanh, 1.0),
    "identity": (lambda x: x, 1.0),
}


def path_family(num_embeddings: int, num_collisions: int) -> PartitionFamily:
    """The default family of :class:`PathEmbeddingBag`: ``[x // m, x % m]``, quotient first.

    The quotient (``ceil(n / m)`` classes) indexes the base table; the remainder picks one of
    ``m`` maps.

    Example::

        >>> path_family(10, 4).table_sizes
        (3, 4)
    """
    return PartitionFamily(reversed(list(quotient_remainder(num_embeddings, num_collisions))))


class _SparseRowGather(torch.autograd.Function):
    """``weight[idx]`` along dim 0 whose gradient is a (hybrid) sparse COO tensor.

    ``F.embedding(sparse=True)`` only serves 2-D tables; the per-class maps are 3-D.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.weight_shape = weight.shape
        return weight.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        sparse_grad = torch.sparse_coo_tensor(
            idx.unsqueeze(0), grad.contiguous(), ctx.weight_shape, check_invariants=False
        )
        return sparse_grad, None


def _gather_rows(weight: Tensor, idx: Tensor, sparse: bool) -> Tensor:
    if sparse and weight.requires_grad and torch.is_grad_enabled():
        return _SparseRowGather.apply(weight, idx)
    return weight.index_select(0, idx)


def _apply_class_maps(x: Tensor, weight: Tensor, classes: Tensor, sparse: bool) -> Tensor:
    """``y[i] = x[i] @ weight[classes[i]]`` for ``x`` (N, in), ``weight`` (C, in, out).

    With few classes (C <= in) one matmul against all C maps followed by a gather is cheaper
    than gathering N matrices; the gathered form is kept for sparse gradients (only the used
    classes' maps get a gradient row) and for many classes.
    """
    num_classes, fan_in, fan_out = weight.shape
    if num_classes <= fan_in and not (sparse and weight.requires_grad and torch.is_grad_enabled()):
        num = x.shape[0]
        every = (x @ weight.permute(1, 0, 2).reshape(fan_in, num_classes * fan_out)).view(num, num_classes, fan_out)
        return every.gather(1, classes.view(num, 1, 1).expand(num, 1, fan_out)).squeeze(1)
    return torch.bmm(x.unsqueeze(1), _gather_rows(weight, classes, sparse)).squeeze(1)


@torch.no_grad()
def _batched_orthogonal_(weight: Tensor, gain: float = 1.0) -> Tensor:
    """Fill ``weight`` (C, a, b) with C independent (semi-)orthogonal matrices times ``gain``.

    One batched QR; the sign fix makes the draw uniform (Haar) as in ``nn.init.orthogonal_``.
    """
    if weight.device.type == "meta" or weight.numel() == 0:
        return weight
    num, rows, cols = weight.shape
    tall = rows >= cols
    shape = (num, rows, cols) if tall else (num, cols, rows)
    gaussian = torch.randn(shape, dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if not tall:
        q = q.transpose(-2, -1)
    weight.copy_(q * gain)
    return weight


class _ClassMaps(nn.Module):
    """The per-class functions of one partition: ``num_classes`` MLPs stored as batched tensors.

    Layer ``l`` has ``weights[l]`` of shape ``(num_classes, in_l, out_l)`` (applied as
    ``x @ W[c]``) and, for an MLP, ``biases[l]`` of shape ``(num_classes, out_l)``.
    """

    biases: Optional[nn.ParameterList]

    def __init__(self, num_classes: int, dims: Sequence[int], bias: bool,
                 device: Optional[Union[str, torch.device]], dtype: Optional[torch.dtype]) -> None:
        super().__init__()
        factory: Dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.dims = tuple(dims)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_classes, fan_in, fan_out, **factory))
            for fan_in, fan_out in zip(self.dims[:-1], self.dims[1:])
        )
        if bias:
            self.biases = nn.ParameterList(
                nn.Parameter(torch.empty(num_classes, fan_out, **factory)) for fan_out in self.dims[1:]
            )
        else:
            self.biases = None

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dims={self.dims}, bias={self.biases is not None}"


def compose_path(rows: Tensor, classes: Union[Tensor, Sequence[Tensor]], maps: Iterable[nn.Module],
                 activation: str = "relu", sparse: bool = False) -> Tensor:
    """Apply the per-class functions of a path embedding to base-table rows.

    ``rows`` (N, D) are the base table's rows of N indices; ``maps`` are the later partitions'
    per-class functions in order (``PathEmbeddingBag.maps``, or copies of them) and
    ``classes[j]`` (N,) the class of each index in partition ``j + 1``. Each layer of partition
    ``j``'s function is applied as ``x @ W[c]`` (+ bias), with ``activation`` between layers.
    ``sparse``: the maps' gradients are sparse tensors.
    """
    act = _ACTIVATIONS[activation][0]
    x = rows
    for j, module in enumerate(maps):  # loop over partitions and layers, never classes
        class_maps = cast(_ClassMaps, module)
        cls = classes[j]
        last = len(class_maps.weights) - 1
        for layer, weight in enumerate(class_maps.weights):
            x = _apply_class_maps(x, weight, cls, sparse)
            if class_maps.biases is not None:
                x = x + _gather_rows(class_maps.biases[layer], cls, sparse)
            if layer < last:
                x = act(x)
    return x


class PathEmbeddingBag(EmbeddingBagModule):
    r"""Path-based compositional embedding bag (Shi et al., KDD 2020, section 3.3).

    The first partition of ``family`` indexes a base table ``weight`` of shape
    ``(family.table_sizes[0], embedding_dim)``. Each later partition ``j`` holds one function per
    equivalence class — a linear map ``D -> D`` when ``hidden_dims`` is empty, else an MLP
    ``D -> h_1 -> ... -> D`` with ``activation`` between layers — and the function of the index's
    class is applied in sequence. The composed vector of each index is then pooled over its bag
    exactly like :class:`torch.nn.EmbeddingBag`.

    The per-class functions are stored as batched tensors and applied per layer either as one
    gather of the index's matrices and a ``torch.bmm``, or (few classes) one matmul against all
    classes' maps and a gather: there is no Python loop over indices or classes in ``forward``.

    **Initialisation.** The base table is drawn from U(-sqrt(1/n), sqrt(1/n)), like a full table of
    the same ``n``. Each per-class weight is a random (semi-)orthogonal matrix and biases start at
    zero: a square orthogonal map preserves the norm exactly, so with linear maps the composed
    vectors have exactly the distribution scale of the full table (variance 1/(3n) per coordinate).
    For MLPs each layer's gain is ``sqrt(in / min(in, out))`` (a random projection to fewer
    dimensions keeps that fraction of the energy on average) times the activation's gain
    (``sqrt(2)`` after ReLU, 1 after tanh, which is linear at this scale), so the expected energy
    of the output equals the input's. The maps also start *distinct* per class, so the n composed
    vectors are distinct from the first step (an identity start would collide them).

    Args:
        num_embeddings (int): n, the number of categories; indices must lie in ``[0, n)``.
        embedding_dim (int): D, the width of the base table and of the output.
        family (PartitionFamily, optional): the partitions; the first indexes the base table.
            Default: ``[quotient, remainder]`` of ``quotient_remainder(n, num_collisions)``.
        num_collisions (int): m of the default family (ignored when ``family`` is given).
        hidden_dims (sequence of int): hidden sizes of each per-class MLP; ``()`` = linear maps.
        activation (str): ``"relu"`` | ``"leaky_relu"`` | ``"tanh"`` | ``"identity"``, between layers.
        mode (str): ``"sum"`` | ``"mean"`` | ``"max"``, how a bag is pooled. Default ``"mean"``.
        sparse (bool): gradients of the base table and of the per-class maps are sparse tensors
            (usable with ``torch.optim.SGD`` and ``torch.optim.SparseAdam``).
        include_last_offset (bool): as in :class:`torch.nn.EmbeddingBag`.
        allow_collisions (bool): accept a family that is not complementary.
        device, dtype: factory arguments for the parameters.

    Shape:
        - ``input``: ``(B, L)`` int64 without ``offsets``, or ``(N,)`` with ``offsets`` ``(B,)``
          (``(B + 1,)`` with ``include_last_offset=True``).
        - ``per_sample_weights``: same shape as ``input``, ``mode="sum"`` only.
        - output: ``(B, embedding_dim)``.

    Example::

        >>> bag = PathEmbeddingBag(1000, 16, num_collisions=4, hidden_dims=(32,), mode="sum")
        >>> bag(torch.tensor([[1, 2], [999, 0]])).shape
        torch.Size([2, 16])
    """

    num_collisions: Optional[int]

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        family: Optional[PartitionFamily] = None,
        num_collisions: int = 4,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        allow_collisions: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name, num_embeddings, embedding_dim = self.init_bag(num_embeddings, embedding_dim, mode, include_last_offset)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        hidden_dims = tuple(check_int(f"hidden_dims[{i}]", h, 1, name) for i, h in enumerate(hidden_dims))
        self.hidden_dims = hidden_dims
        self.sparse = bool(sparse)
        if family is None:
            num_collisions = check_int("num_collisions", num_collisions, 1, name)
            family = path_family(num_embeddings, num_collisions)
            self.num_collisions = num_collisions
        else:
            if not isinstance(family, PartitionFamily):
                raise TypeError(f"{name}: family must be a PartitionFamily, got {type(family).__name__}")
            if family.n != num_embeddings:
                raise ValueError(
                    f"{name}: family covers n={family.n} categories but num_embeddings={num_embeddings}"
                )
            self.num_collisions = None
        if not allow_collisions and not family.is_complementary():
            raise ValueError(
                f"{name}: the partition family {family!r} is not complementary for n={num_embeddings} "
                "(two categories would share an embedding); pass allow_collisions=True to accept it"
            )
        self.family = family
        sizes = tuple(int(s) for s in family.table_sizes)
        factory: Dict[str, Any] = {"device": device, "dtype": dtype}
        dims = (embedding_dim,) + hidden_dims + (embedding_dim,)
        check_table_size(name, "weight", (sizes[0], embedding_dim), dtype)
        for j, size in enumerate(sizes[1:]):
            for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
                check_table_size(name, f"maps[{j}].weights[{layer}]", (size, fan_in, fan_out), dtype)
        self.weight = nn.Parameter(torch.empty(sizes[0], embedding_dim, **factory))
        self.maps = nn.ModuleList(
            _ClassMaps(size, dims, bias=bool(hidden_dims), **factory) for size in sizes[1:]
        )
        self.reset_parameters()

    def _class_maps(self) -> List[_ClassMaps]:
        return [cast(_ClassMaps, maps) for maps in self.maps]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Base table U(±sqrt(1/n)); per-class maps (semi-)orthogonal with energy-keeping gains."""
        bound = math.sqrt(1.0 / self.num_embeddings)
        nn.init.uniform_(self.weight, -bound, bound)
        activation_gain2 = _ACTIVATIONS[self.activation][1]
        for maps in self._class_maps():
            for layer, weight in enumerate(maps.weights):
                _, fan_in, fan_out = weight.shape
                gain2 = fan_in / min(fan_in, fan_out)
                if layer > 0:
                    gain2 *= activation_gain2
                _batched_orthogonal_(weight, math.sqrt(gain2))
            if maps.biases is not None:
                for bias in maps.biases:
                    bias.zero_()

    def mapping_state(self) -> Dict[str, Any]:
        """The family, the per-class MLP's hidden sizes and (with hidden layers) its activation."""
        return {"num_embeddings": self.num_embeddings, "family": self.family.spec(),
                "hidden_dims": list(self.hidden_dims), "activation": self.activation if self.hidden_dims else None}

    def compose(self, indices: Tensor) -> Tensor:
        """The composed embedding ``(N, D)`` of each index in a 1-D int64 tensor (validated)."""
        return self._compose_codes(cast(Tensor, self.family.encode(indices)))

    def _compose_codes(self, codes: Tensor) -> Tensor:
        x = F.embedding(codes[0], self.weight, sparse=self.sparse)
        return compose_path(x, codes[1:], self.maps, self.activation, self.sparse)

    def pooled(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor],
               bag_len: Optional[int]) -> Tensor:
        check_per_sample_weights_dtype(per_sample_weights, self.weight.dtype, type(self).__name__)
        # the indices were just checked: encode without a second range check (and sync)
        return pool_rows(self._compose_codes(encode_validated(self.family, indices)), offsets, self.mode,
                         per_sample_weights)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, table_sizes={tuple(self.family.table_sizes)}"
        s += f", hidden_dims={self.hidden_dims}"
        if self.hidden_dims:
            s += f", activation={self.activation!r}"
        return s + f", mode={self.mode!r}" + self.options_repr("sparse", "include_last_offset")
