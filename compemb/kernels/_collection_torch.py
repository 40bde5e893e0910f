"""The reference collection backend: every feature by :func:`compemb.functional.embedding_bag_codes`.

The tables are ``nn.Parameter`` s in the collection's ``weights`` list (any ``torch.optim``
optimizer; ``sparse=True`` for sparse gradients).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union, cast

import torch
from torch import nn

from compemb.functional.reference import embedding_bag_codes
from compemb.kernels._base import CollectionBackend, EncodedBag, FeatureSpec, LookupInput

__all__ = ["TorchCollection"]


class TorchCollection(CollectionBackend):
    """Each feature computed by the torch reference; tables are ``nn.Parameter`` s."""

    name = "torch"
    sparse_gradients = True

    @classmethod
    def unsupported_reason(
        cls, specs: Sequence[FeatureSpec], optimizer: Optional[str], device: torch.device
    ) -> Optional[str]:
        if optimizer is not None:
            return (f"optimizer={optimizer!r} is fused into backward: it needs backend='fbgemm' (or "
                    f"'triton' for 'exact_sgd'), got backend='torch'")
        return None

    def build(self, module: nn.Module, tables: Sequence[torch.Tensor], device: torch.device) -> None:
        module.weights = nn.ParameterList([nn.Parameter(w.to(device)) for w in tables])

    def tables(self, module: nn.Module) -> List[torch.Tensor]:
        return list(cast(nn.ParameterList, module.get_submodule("weights")))

    def lookup(
        self, module: nn.Module, bags: LookupInput, concat: bool, validate: bool
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        encoded = cast(List[EncodedBag], bags)  # raw_input is False
        # the collection validated the input and the specs fix the tables: the trusted fast path
        outs = [
            embedding_bag_codes(bag.codes, bag.offsets, tables, spec.operation, spec.mode, spec.compose,
                                sparse=self.sparse, trusted=True, bag_len=bag.bag_len)
            for spec, tables, bag in zip(self.specs, self.per_feature(self.tables(module)), encoded)
        ]
        return torch.cat(outs, dim=1) if concat else outs
