"""The small abstract classes every kernel backend implements.

:class:`Backend` computes one compositional embedding bag from partition codes (the kernel
contract of ``docs/architecture.md``). :class:`CollectionBackend` is the table-batched strategy
behind :class:`compemb.collection.CompositionalEmbeddingBagCollection`: it says what it serves,
registers the tables of many features on the collection module and looks them all up at once.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import nn

from compemb.options import BagOptions

if TYPE_CHECKING:
    from compemb.partitions import PartitionFamily

_T = TypeVar("_T")

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "CollectionBackend",
    "FeatureSpec",
    "FeatureBags",
    "JaggedBags",
    "CollectionBags",
    "EncodedBag",
    "LookupInput",
    "import_reason",
]


class BackendUnavailableError(RuntimeError):
    """Raised when a backend asked for by name cannot serve a configuration."""


def import_reason(module: str) -> Optional[str]:
    """``None`` when ``module`` imports here, else why not (for :meth:`CollectionBackend.unavailable_reason`)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a library failing to load
        return f"{module.split('.')[0]} does not import here ({type(exc).__name__}: {exc})"
    return None


class Backend(abc.ABC):
    """A way to compute compositional embedding bags from codes.

    Subclasses set ``name``, ``priority`` (higher is preferred by ``"auto"``) and ``extras`` (the
    keyword arguments beyond the contract they take) and implement :meth:`unsupported_reason`
    and :meth:`kernel`.

    One rule holds for every backend without being written in each: options outside ``extras``
    (``sparse=True``, a ``max_norm``, ``scale_grad_by_freq=True``) are refused by
    :meth:`extras_reason`; :meth:`refusal` asks both.
    """

    name: ClassVar[str] = "abstract"
    priority: ClassVar[int] = 0
    #: the keyword arguments of :func:`compemb.functional.kernel_extras` this backend takes
    extras: ClassVar[FrozenSet[str]] = frozenset()

    def refusal(self, options: BagOptions) -> Optional[str]:
        """Why this backend cannot compute ``options`` exactly (its own :meth:`unsupported_reason`,
        then any option outside :attr:`extras`), or ``None``: what the registry asks."""
        return self.unsupported_reason(options) or self.extras_reason(options)

    def extras_reason(self, options: BagOptions) -> Optional[str]:
        """Why ``options`` ask for a keyword argument outside :attr:`extras`, or ``None``."""
        asked = {
            "sparse": "sparse=True gradients" if options.sparse else None,
            "max_norm": f"max_norm={options.max_norm}" if options.max_norm is not None else None,
            "scale_grad_by_freq": "scale_grad_by_freq=True" if options.scale_grad_by_freq else None,
        }
        for extra, what in asked.items():
            if what is not None and extra not in self.extras:
                return f"{what} (the {self.name} backend does not take {extra})"
        return None

    @abc.abstractmethod
    def unsupported_reason(self, options: BagOptions) -> Optional[str]:
        """``None`` when this backend computes ``options`` exactly, else why not (options outside
        :attr:`extras` need no check here: :meth:`refusal` adds :meth:`extras_reason`)."""

    @abc.abstractmethod
    def kernel(self) -> Callable[..., torch.Tensor]:
        """The function that computes :meth:`embedding_bag` (the same arguments)."""

    def embedding_bag(self, codes: torch.Tensor, offsets: torch.Tensor, weights: Sequence[torch.Tensor],
                      operation: str, mode: str, compose: str, per_sample_weights: Optional[torch.Tensor] = None,
                      **extras: Any) -> torch.Tensor:
        """The kernel contract: ``(k, N)`` codes, ``(B + 1,)`` offsets, ``k`` tables -> ``(B, d)``.

        The keyword arguments (:func:`compemb.functional.kernel_extras`: ``sparse``,
        ``max_norm``, ``norm_type``, ``scale_grad_by_freq``) are passed, with values other than
        their defaults, only to a backend whose :meth:`unsupported_reason` accepted them.

        Raises:
            ValueError: a keyword argument this backend does not take (see ``extras``).
        """
        unknown = sorted(set(extras) - self.extras)
        if unknown:
            raise ValueError(f"{self.name} backend does not take {unknown}")
        return self.kernel()(codes, offsets, weights, operation, mode, compose, per_sample_weights, **extras)

    def __repr__(self) -> str:
        return f"<compemb backend {self.name!r}>"


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of a collection, resolved: its family and the component table widths."""

    name: str
    num_embeddings: int
    embedding_dim: int
    family: PartitionFamily
    operation: str
    mode: str
    compose: str
    widths: Tuple[int, ...]

    @property
    def k(self) -> int:
        """The number of component tables."""
        return self.family.k


class FeatureBags(NamedTuple):
    """One feature's bags as the caller gave them (the ``nn.EmbeddingBag`` input forms)."""

    indices: torch.Tensor
    offsets: Optional[torch.Tensor]
    include_last_offset: bool


class JaggedBags(NamedTuple):
    """All features' bags in the KeyedJaggedTensor layout, features in the collection's order.

    ``values`` holds the indices of all features concatenated feature-major; bag ``b`` of feature
    ``f`` is ``values[offsets[f*B + b] : offsets[f*B + b + 1]]`` (``F * B + 1`` offsets).
    """

    values: torch.Tensor
    offsets: torch.Tensor

    def split(self, num_features: int) -> List[FeatureBags]:
        """One :class:`FeatureBags` per feature, each with its own ``B + 1`` offsets from 0."""
        B = (self.offsets.numel() - 1) // max(num_features, 1)
        out = []
        for f in range(num_features):
            off = self.offsets[f * B: (f + 1) * B + 1]
            out.append(FeatureBags(self.values[off[0]: off[-1]], off - off[0], True))
        return out


#: the raw input of a collection backend: per-feature bags, or all features already jagged
CollectionBags = Union[JaggedBags, List[FeatureBags]]


class EncodedBag(NamedTuple):
    """One feature's bags validated and encoded by the collection (as the modules do).

    ``codes`` is ``(k, N)``, ``offsets`` ``(B + 1,)``; ``bag_len`` as
    :attr:`compemb.functional.BagInput.bag_len`.
    """

    codes: torch.Tensor
    offsets: torch.Tensor
    bag_len: Optional[int]


#: what :meth:`CollectionBackend.lookup` gets (see :attr:`CollectionBackend.raw_input`)
LookupInput = Union[List[EncodedBag], CollectionBags]


class CollectionBackend(abc.ABC):
    """A table-batched way to serve every feature of a collection.

    The collection validates its arguments and the feature specs, then asks the class
    (:meth:`unavailable_reason`, :meth:`unsupported_reason`) and builds one instance. The
    instance registers the tables on the collection module (:meth:`build`, so that the module's
    ``state_dict`` and ``.to()`` see them) and serves lookups from there (:meth:`lookup`).

    Class attributes:
        name: the ``backend=`` string.
        fused_optimizers: the optimizers applied inside the backward pass.
        sparse_gradients: whether ``sparse=True`` (sparse table gradients) is served.
        raw_input: ``False``: :meth:`lookup` gets every feature validated and encoded by the
            collection (a list of :class:`EncodedBag`). ``True``: it gets the bags as given
            (:data:`CollectionBags`), checks them itself when ``validate`` is true and trusts
            them otherwise.
        requires: the module this backend imports to work (``None``: torch alone), checked by
            :meth:`unavailable_reason`.
    """

    name: ClassVar[str] = "abstract"
    fused_optimizers: ClassVar[Tuple[str, ...]] = ()
    sparse_gradients: ClassVar[bool] = False
    raw_input: ClassVar[bool] = False
    requires: ClassVar[Optional[str]] = None

    def __init__(
        self,
        specs: Sequence[FeatureSpec],
        optimizer: Optional[str] = None,
        learning_rate: float = 0.01,
        eps: float = 1e-8,
        sparse: bool = False,
    ) -> None:
        self.specs = list(specs)
        self.optimizer = optimizer
        self.learning_rate = float(learning_rate)
        self.eps = float(eps)
        self.sparse = bool(sparse)

    @classmethod
    def unavailable_reason(cls) -> Optional[str]:
        """``None`` when the packages this backend needs import here, else why not."""
        return None if cls.requires is None else import_reason(cls.requires)

    @classmethod
    @abc.abstractmethod
    def unsupported_reason(
        cls, specs: Sequence[FeatureSpec], optimizer: Optional[str], device: torch.device
    ) -> Optional[str]:
        """``None`` when this backend serves ``specs`` with ``optimizer`` on ``device``, else the
        error message (naming the feature where one is at fault)."""

    @abc.abstractmethod
    def build(self, module: nn.Module, tables: Sequence[torch.Tensor], device: torch.device) -> None:
        """Register the tables on ``module``, initialised from ``tables`` (feature-major order)."""

    @abc.abstractmethod
    def tables(self, module: nn.Module) -> List[torch.Tensor]:
        """Every component table of ``module`` (feature-major order), as live ``(rows, width)`` views."""

    def per_feature(self, items: Sequence[_T]) -> List[List[_T]]:
        """Split a feature-major list with one item per component table into one list per feature."""
        out: List[List[_T]] = []
        start = 0
        for spec in self.specs:
            out.append(list(items[start: start + spec.k]))
            start += spec.k
        return out

    def optimizer_states(self, module: nn.Module) -> List[torch.Tensor]:
        """The fused optimizer's per-row state, one tensor per component table."""
        raise ValueError(f"optimizer={self.optimizer!r} keeps no row-wise state")

    @abc.abstractmethod
    def lookup(
        self, module: nn.Module, bags: LookupInput, concat: bool, validate: bool
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Every feature's pooled ``(B, embedding_dim)`` output, as a list in feature order or,
        with ``concat``, as one ``(B, sum embedding_dim)`` tensor (``bags``: see ``raw_input``)."""
