"""What defines an embedding module's index-to-row mapping, kept in its ``state_dict`` and checked on load.

The tables alone do not define a compositional module: a quotient–remainder family and a
Chinese-remainder family can have tables of the same shapes, and a hash seed, an operation or an
activation has no shape at all. Loading a state saved for one mapping into a module of another
would match every key and silently change every output. :class:`MappingModule` stores the
mapping (plain values: str, int, list, dict, so ``torch.load(weights_only=True)`` reads it) under
the ``_extra_state`` key of the module's state, and refuses a state saved for another mapping,
naming the field and both values, before any table is overwritten.

A state without ``_extra_state`` (saved by an earlier compemb, or assembled by hand) cannot be checked:
``load_state_dict(state)`` refuses it as a missing key, ``load_state_dict(state, strict=False)``
loads it unchecked and reports ``_extra_state`` in ``missing_keys``.

Example::

    >>> from compemb import CompositionalEmbeddingBag
    >>> from compemb.partitions import chinese_remainder, quotient_remainder
    >>> qr = CompositionalEmbeddingBag(12, 4, family=quotient_remainder(12, 3))
    >>> crt = CompositionalEmbeddingBag(12, 4, family=chinese_remainder(12, moduli=(3, 4)))
    >>> try:
    ...     crt.load_state_dict(qr.state_dict())
    ... except RuntimeError as error:
    ...     print(str(error).splitlines()[1].strip()[:60])
    CompositionalEmbeddingBag: family differs between the saved
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

__all__ = ["MappingModule", "EXTRA_STATE_FORMAT"]

#: version of the ``_extra_state`` layout, stored with it
EXTRA_STATE_FORMAT = 1
_KEY = "_extra_state"  # torch's name for a module's extra state in its state_dict


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and mapping keys as strings, for comparison (other values as they are)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    """A readable rendering of a mapping field: partition specs as ``Kind(n=.., m=..)``."""
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict) and "kind" in value:
        rest = ", ".join(f"{k}={_show(v)}" for k, v in value.items() if k != "kind")
        return f"{value['kind']}({rest})"
    return repr(value)


class MappingModule(nn.Module):
    """An ``nn.Module`` whose ``state_dict`` carries what defines its mapping, checked on load.

    Subclasses implement :meth:`mapping_state`; everything else is inherited: ``state_dict()``
    holds ``{"format": 1, "mapping": mapping_state()}`` under ``_extra_state``, and
    ``load_state_dict`` refuses a state whose mapping differs (an error naming the module, the
    field and both values, raised as torch raises a shape mismatch: after all modules are visited,
    leaving the refused module's tables untouched).
    """

    def mapping_state(self) -> Dict[str, Any]:
        """What defines which row(s) each index reads and how they combine (plain values)."""
        raise NotImplementedError(f"{type(self).__name__} must implement mapping_state()")

    def get_extra_state(self) -> Dict[str, Any]:
        return {"format": EXTRA_STATE_FORMAT, "mapping": self.mapping_state()}

    def set_extra_state(self, state: Any) -> None:
        problem = self.mapping_mismatch(state)
        if problem is not None:
            raise ValueError(problem)

    def mapping_mismatch(self, state: Any, prefix: str = "") -> Optional[str]:
        """Why ``state`` (an ``_extra_state`` value) does not fit this module, or ``None`` when it does."""
        where = self._where(prefix)
        if not isinstance(state, Mapping) or not isinstance(state.get("mapping"), Mapping):
            return f"{where}: the state's {_KEY} is {state!r}, not a compemb mapping state"
        saved, mine = _plain(state["mapping"]), _plain(self.mapping_state())
        for field in list(mine) + [f for f in saved if f not in mine]:
            if saved.get(field) != mine.get(field):
                return (
                    f"{where}: {field} differs between the saved state ({_show(saved.get(field))}) and this "
                    f"module ({_show(mine.get(field))}); the same rows would embed other categories: build the "
                    f"module with the saved {field} to load this state"
                )
        return None

    def _where(self, prefix: str) -> str:
        """This module in a message: its class, and its place when it is a submodule."""
        return type(self).__name__ + (f" at {prefix[:-1]!r}" if prefix else "")

    def _refusal(self, state_dict: Mapping[str, Any], prefix: str) -> Optional[str]:
        """Why this module refuses its entries of ``state_dict``, or ``None``; asked before anything loads."""
        key = prefix + _KEY
        return self.mapping_mismatch(state_dict[key], prefix) if key in state_dict else None

    def _loaded(self) -> None:
        """Called once this module's entries of a state have loaded without an error."""

    def _load_from_state_dict(
        self,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        problem = self._refusal(state_dict, prefix)
        if problem is not None:
            error_msgs.append(problem)
            # checked first, and the refused tables are not overwritten: their entries, this
            # module's and its children's (a ParameterList's), become the current values
            for name, value in self.state_dict(prefix=prefix, keep_vars=True).items():
                if name in state_dict and isinstance(value, torch.Tensor):
                    state_dict[name] = value.detach()
            return
        before = len(error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if len(error_msgs) == before:
            self._loaded()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            if strict and _KEY not in state_dict:
                raise RuntimeError(
                    f"{error}\n\t{type(self).__name__}: the state holds no {_KEY!r} (saved by an earlier compemb, "
                    f"or assembled by hand), so the mapping it was saved for cannot be checked; "
                    f"pass strict=False to load it unchecked"
                ) from None
            raise
