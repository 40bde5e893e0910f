"""Backends that compute a compositional embedding bag from partition codes.

Every backend computes the same function (see ``docs/architecture.md``, "The kernel contract"):
``embedding_bag(codes, offsets, weights, operation, mode, compose, per_sample_weights)``.
The ``torch`` backend is the reference (:mod:`compemb.functional`); the others are tested against it.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

import torch

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "resolve_backend",
    "BACKEND_NAMES",
]


class BackendUnavailableError(RuntimeError):
    """Raised when a backend asked for by name cannot serve a configuration."""


class Backend:
    """A way to compute compositional embedding bags.

    Subclasses set ``name`` and ``priority`` (higher is preferred by ``"auto"``) and implement
    :meth:`unsupported_reason` and :meth:`embedding_bag`.
    """

    name: str = "abstract"
    priority: int = 0

    def unsupported_reason(
        self,
        *,
        operation: str,
        mode: str,
        compose: str,
        k: int,
        dtype: torch.dtype,
        device: torch.device,
        per_sample_weights: bool = False,
        sparse: bool = False,
        max_norm: Optional[float] = None,
        requires_grad: bool = True,
    ) -> Optional[str]:
        """``None`` when this backend computes the configuration exactly, else why not."""
        raise NotImplementedError

    def embedding_bag(
        self,
        codes: torch.Tensor,
        offsets: torch.Tensor,
        weights: Sequence[torch.Tensor],
        operation: str,
        mode: str,
        compose: str,
        per_sample_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<compemb backend {self.name!r}>"


# name -> module holding ``BACKEND``; imported lazily so a missing optional package only
# disables its own backend.
_REGISTRY = {
    "torch": "compemb.kernels._torch",
    "triton": "compemb.kernels._triton",
    "fbgemm": "compemb.kernels._fbgemm",
}
BACKEND_NAMES = tuple(_REGISTRY) + ("auto",)
_LOADED: dict = {}
_IMPORT_ERRORS: dict = {}


def _load(name: str) -> Optional[Backend]:
    if name in _LOADED:
        return _LOADED[name]
    try:
        module = importlib.import_module(_REGISTRY[name])
        backend = module.BACKEND
    except Exception as exc:  # an optional dependency is missing or broken
        _IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        backend = None
    _LOADED[name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one of ``torch``, ``triton``, ``fbgemm``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES}")
    backend = _load(name)
    if backend is None:
        raise BackendUnavailableError(
            f"backend {name!r} is not available here: {_IMPORT_ERRORS.get(name, 'import failed')}"
        )
    return backend


def available_backends() -> list:
    """Names of the backends whose packages import on this machine."""
    return [name for name in _REGISTRY if _load(name) is not None]


def resolve_backend(name: str, **config) -> Backend:
    """Pick the backend for a configuration.

    ``name="auto"`` returns the available backend of highest priority that is exact for
    ``config`` (the keyword arguments of :meth:`Backend.unsupported_reason`); the torch reference
    always qualifies. A backend asked for by name that cannot serve ``config`` raises
    :class:`BackendUnavailableError` naming the reason — never a silent fallback.
    """
    if name == "auto":
        candidates = [b for b in (_load(n) for n in _REGISTRY) if b is not None]
        candidates.sort(key=lambda b: -b.priority)
        for backend in candidates:
            if backend.unsupported_reason(**config) is None:
                return backend
        raise BackendUnavailableError(f"no backend serves {config}")  # pragma: no cover
    backend = get_backend(name)
    reason = backend.unsupported_reason(**config)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot serve this configuration: {reason}")
    return backend
