"""Triton collection backend: one flat buffer of all component tables, one fused launch.

Every component table lives in the collection's flat ``weight`` (a parameter, or with
``optimizer="exact_sgd"`` a buffer updated inside backward), laid out by
:func:`compemb.kernels.tbe_layout`; :func:`compemb.kernels.tbe_embedding_bags` encodes the raw
indices in the kernel, gathers, combines and pools all features. It serves ``sum``/``mean``
with one ``embedding_dim``, one operation among the features with ``k > 1`` (one ``compose``
among the ``mult`` ones) and digit-form partitions (``full``, ``qr``, ``gqr``, ``crt``). The
input is packed without device syncs and checked for all features at once (one sync;
``validate=False`` skips it). ``triton`` is imported when the backend is first asked about a
configuration, not with this module.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import nn

from compemb.kernels._base import (
    CollectionBackend,
    CollectionBags,
    FeatureSpec,
    JaggedBags,
    LookupInput,
)
from compemb.kernels._collection_input import Check, pack_deferred
from compemb.kernels._tbe_layout import TBELayout, tbe_layout, validate_tbe_input

__all__ = ["TritonCollection", "pack_bags"]


def _launch_choice(specs: Sequence[FeatureSpec]) -> Tuple[List[str], List[str]]:
    """The operations among the features with ``k > 1`` and the composes among their ``mult`` ones."""
    multi = [s for s in specs if s.k > 1]
    ops = sorted({s.operation for s in multi})
    composes = sorted({s.compose for s in multi if s.operation == "mult"})
    return ops, composes


def pack_bags(specs: Sequence[FeatureSpec], bags: CollectionBags) -> Tuple[torch.Tensor, torch.Tensor, List[Check]]:
    """Concatenate the features feature-major without device syncs: ``(values, offsets, checks)``.

    ``offsets`` has ``F * B + 1`` entries (the KeyedJaggedTensor layout). ``checks`` are
    ``(flag, raise_fn)`` pairs for :func:`compemb.kernels.validate_tbe_input`: every feature's own
    offsets start at 0 and end at its number of indices (:func:`pack_deferred`).

    Raises:
        TypeError, ValueError: an input form ``nn.EmbeddingBag`` refuses, naming the feature;
            features of different batch sizes.
    """
    if isinstance(bags, JaggedBags):
        return bags.values, bags.offsets, []
    packed = pack_deferred([s.name for s in specs], bags, every_index="backend='triton' needs every index in a bag")
    return packed.values, packed.offsets, packed.checks


class TritonCollection(CollectionBackend):
    """All component tables in the collection's flat ``weight``, looked up in one Triton launch."""

    name = "triton"
    fused_optimizers = ("exact_sgd",)
    raw_input = True
    requires = "triton"

    def __init__(self, specs: Sequence[FeatureSpec], optimizer: Optional[str] = None, learning_rate: float = 0.01,
                 eps: float = 1e-8, sparse: bool = False) -> None:
        super().__init__(specs, optimizer, learning_rate, eps, sparse)
        ops, composes = _launch_choice(self.specs)
        self.layout: TBELayout = tbe_layout(
            [s.name for s in self.specs], [s.family for s in self.specs], self.specs[0].embedding_dim,
            ops[0] if ops else "add", [s.mode for s in self.specs], composes[0] if composes else "before_pool",
            [s.widths for s in self.specs])

    @classmethod
    def unsupported_reason(
        cls, specs: Sequence[FeatureSpec], optimizer: Optional[str], device: torch.device
    ) -> Optional[str]:
        if optimizer is not None and optimizer not in cls.fused_optimizers:
            return (f"optimizer={optimizer!r} is not fused by backend='triton' (it fuses 'exact_sgd' only); "
                    "use backend='fbgemm'")
        from compemb.kernels._triton_tbe import INTERPRETED  # imports triton

        if device.type == "cpu" and not INTERPRETED:
            return ("backend='triton' on CPU needs TRITON_INTERPRET=1 set before triton is imported "
                    "(the compiled kernels run on CUDA)")
        dims = {s.embedding_dim for s in specs}
        if len(dims) != 1:
            return (f"backend='triton' needs one embedding_dim for all features, got "
                    f"{ {s.name: s.embedding_dim for s in specs} }")
        ops, composes = _launch_choice(specs)
        if len(ops) > 1:
            return (f"backend='triton' serves one operation per collection, got {ops} "
                    f"({ {s.name: s.operation for s in specs if s.k > 1} })")
        if len(composes) > 1:
            return f"backend='triton' serves one compose for the 'mult' features, got {composes}"
        return None

    def build(self, module: nn.Module, tables: Sequence[torch.Tensor], device: torch.device) -> None:
        flat = torch.cat([w.reshape(-1) for w in tables]).to(device)
        if self.optimizer is None:
            module.weight = nn.Parameter(flat)
            return
        module.register_buffer("weight", flat)
        # exact SGD for mult accumulates into a scratch that every step leaves all-zero
        scratch = torch.zeros(flat.numel() if self.layout.operation == "mult" else 0, device=device)
        module.register_buffer("sgd_scratch", scratch, persistent=False)
        # autograd runs backward only through a tensor that requires grad (FBGEMM does the same)
        module.register_buffer("sgd_placeholder", torch.zeros(0, device=device, requires_grad=True),
                               persistent=False)

    def _weight(self, module: nn.Module) -> torch.Tensor:
        return module.get_parameter("weight") if self.optimizer is None else module.get_buffer("weight")

    def tables(self, module: nn.Module) -> List[torch.Tensor]:
        return self.layout.tables(self._weight(module).detach())

    def lookup(
        self, module: nn.Module, bags: LookupInput, concat: bool, validate: bool
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        from compemb.kernels._triton_tbe import tbe_embedding_bags

        values, offsets, checks = pack_bags(self.specs, cast(CollectionBags, bags))  # raw_input is True
        if validate:
            validate_tbe_input(values, offsets, self.layout, checks)
        weight = self._weight(module)
        if self.optimizer is None:
            out = tbe_embedding_bags(values, offsets, weight, self.layout, validate=False)
        else:
            scratch = module.get_buffer("sgd_scratch")
            out = tbe_embedding_bags(values, offsets, weight, self.layout, validate=False, optimizer=self.optimizer,
                                     learning_rate=self.learning_rate, scratch=scratch if scratch.numel() else None,
                                     placeholder=module.get_buffer("sgd_placeholder"))
        return out if concat else list(torch.split(out, self.layout.dim, dim=1))
