"""Kernel backends, picked by name: per-module :class:`Backend` s and table-batched :class:`CollectionBackend` s.

Every :class:`Backend` computes the kernel contract of ``docs/architecture.md``,
``embedding_bag(codes, offsets, weights, operation, mode, compose, per_sample_weights)``: ``torch``
is the reference, ``triton`` and ``fbgemm`` are tested against it. A :class:`CollectionBackend`
serves every feature of a :class:`compemb.collection.CompositionalEmbeddingBagCollection`.
Importing this package imports neither triton nor fbgemm_gpu: a backend's package is imported
when the backend is first used (:func:`triton_embedding_bag`, :func:`tbe_embedding_bags` and
:func:`fbgemm_embedding_bag` too), and one that does not import disables only that backend.

Example::

    >>> from compemb.options import BagOptions
    >>> resolve_backend("torch", BagOptions(operation="add")).name
    'torch'
    >>> get_collection_backend("triton").fused_optimizers
    ('exact_sgd',)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Type

from compemb._lazy import load_export
from compemb.kernels._base import (
    Backend,
    BackendUnavailableError,
    CollectionBackend,
    CollectionBags,
    EncodedBag,
    FeatureBags,
    FeatureSpec,
    JaggedBags,
    LookupInput,
)
from compemb.kernels._pooled import combine_pooled, exactness_reason, tbe_inputs
from compemb.kernels._tbe_layout import LaunchPlan, TBELayout, launch_plan, tbe_layout, validate_tbe_input
from compemb.options import BACKEND_NAMES, BACKENDS, BagOptions

if TYPE_CHECKING:
    from compemb.kernels._fbgemm import fbgemm_embedding_bag
    from compemb.kernels._triton import triton_embedding_bag
    from compemb.kernels._triton_tbe import tbe_embedding_bags

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "CollectionBackend",
    "CollectionBags",
    "EncodedBag",
    "FeatureBags",
    "FeatureSpec",
    "JaggedBags",
    "LookupInput",
    "available_backends",
    "get_backend",
    "resolve_backend",
    "get_collection_backend",
    "BACKEND_NAMES",
    "exactness_reason",
    "tbe_inputs",
    "combine_pooled",
    "TBELayout",
    "tbe_layout",
    "LaunchPlan",
    "launch_plan",
    "validate_tbe_input",
    "triton_embedding_bag",
    "tbe_embedding_bags",
    "fbgemm_embedding_bag",
    "triton_interpreted",
]

# name -> module holding ``BACKEND``
_REGISTRY: Dict[str, str] = {
    "torch": "compemb.kernels._torch",
    "triton": "compemb.kernels._triton",
    "fbgemm": "compemb.kernels._fbgemm",
}
# name -> (module, class); these modules import neither triton nor fbgemm_gpu
_COLLECTIONS: Dict[str, Tuple[str, str]] = {
    "torch": ("compemb.kernels._collection_torch", "TorchCollection"),
    "fbgemm": ("compemb.kernels._collection_fbgemm", "FbgemmCollection"),
    "triton": ("compemb.kernels._collection_triton", "TritonCollection"),
}
# public functions of the optional backends, imported on first access
_LAZY: Dict[str, str] = {
    "triton_embedding_bag": "compemb.kernels._triton",
    "tbe_embedding_bags": "compemb.kernels._triton_tbe",
    "fbgemm_embedding_bag": "compemb.kernels._fbgemm",
}
_LOADED: Dict[str, Optional[Backend]] = {}
_IMPORT_ERRORS: Dict[str, str] = {}


def __getattr__(name: str) -> Any:
    return load_export(globals(), _LAZY, name)


def _load(name: str) -> Optional[Backend]:
    if name in _LOADED:
        return _LOADED[name]
    try:
        backend = importlib.import_module(_REGISTRY[name]).BACKEND
    except Exception as exc:  # an optional dependency is missing or broken
        _IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        backend = None
    _LOADED[name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one of ``torch``, ``triton``, ``fbgemm``).

    Raises:
        ValueError: an unknown name.
        BackendUnavailableError: the backend's package does not import here (with the reason).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES}")
    backend = _load(name)
    if backend is None:
        raise BackendUnavailableError(
            f"backend {name!r} is not available here: {_IMPORT_ERRORS.get(name, 'import failed')}"
        )
    return backend


def available_backends() -> List[str]:
    """Names of the backends whose packages import on this machine."""
    return [name for name in _REGISTRY if _load(name) is not None]


def resolve_backend(name: str, options: BagOptions) -> Backend:
    """Pick the backend for a configuration.

    ``name="auto"`` returns the available backend of highest priority that is exact for
    ``options``; the torch reference always qualifies. A backend asked for by name that cannot
    serve ``options`` raises :class:`BackendUnavailableError` naming the reason, never a silent
    fallback.

    Raises:
        TypeError: ``options`` is not a :class:`~compemb.options.BagOptions`.
    """
    if not isinstance(options, BagOptions):
        raise TypeError(f"options must be a compemb.options.BagOptions, got {type(options).__name__}")
    if name == "auto":
        candidates = [b for b in (_load(n) for n in _REGISTRY) if b is not None]
        candidates.sort(key=lambda b: -b.priority)
        for backend in candidates:
            if backend.refusal(options) is None:
                return backend
        raise BackendUnavailableError(f"no backend serves {options}")  # pragma: no cover
    backend = get_backend(name)
    reason = backend.refusal(options)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot serve this configuration: {reason}")
    return backend


def get_collection_backend(name: str) -> Type[CollectionBackend]:
    """The :class:`CollectionBackend` class called ``name`` (``torch``, ``fbgemm`` or ``triton``).

    Imports neither fbgemm_gpu nor triton: ask the class ``fused_optimizers`` and
    ``unavailable_reason()`` freely.

    Raises:
        ValueError: an unknown name.
    """
    if name not in _COLLECTIONS:
        raise ValueError(f"unknown collection backend {name!r}; expected one of {BACKENDS}")
    module, cls = _COLLECTIONS[name]
    return getattr(importlib.import_module(module), cls)


def triton_interpreted() -> bool:
    """Whether the Triton kernels run under Triton's interpreter (CPU tensors).

    True when ``TRITON_INTERPRET=1`` was set when compemb first imported its kernels (this call
    imports them, and triton, if that has not happened yet).
    """
    from compemb.kernels._triton import INTERPRETED

    return INTERPRETED
