"""Shared pytest configuration.

Hypothesis runs under the "ci" profile by default: no per-example deadline (the machines are
shared and timings are noisy) and a modest number of examples so the whole suite stays fast.
Select another profile with ``HYPOTHESIS_PROFILE=dev`` (new random examples every run; 300 where a
test sets no count of its own) or register your own.

Every random draw replays: each test starts with the global torch, numpy and ``random`` generators
seeded, and Hypothesis reseeds torch's global generator for every example as it does ``random``
and numpy's. Tests that want draws of their own seed a ``torch.Generator`` (fixed or drawn).

Triton decides when it is imported whether kernels are compiled or interpreted, so
``TRITON_INTERPRET=1`` is set here, before any test module imports it: only on a machine without
CUDA (a GPU machine runs compiled Triton) and only when the user has not set it. Under the
interpreter the triton backend has the lowest priority, so "auto" keeps the torch reference.
Tests marked ``triton_cpu`` run the kernels on CPU tensors; on a CUDA machine without the
interpreter they are skipped with that reason (``TRITON_INTERPRET=1 make test`` runs them there).
"""
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, register_random, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# "ci" (the default, what `make test` runs): the same examples every run (derandomize), so a clean
# clone tests exactly what passed here; "dev" (HYPOTHESIS_PROFILE=dev) draws new random examples each run,
# 300 for a property whose test sets no max_examples of its own (most set their own count).
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class _TorchGlobalRandom:
    """torch's global CPU generator with the seed / getstate / setstate Hypothesis manages."""

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def getstate(self) -> torch.Tensor:
        return torch.get_rng_state()

    def setstate(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)


# a module global: Hypothesis keeps only a weak reference
_TORCH_RANDOM = _TorchGlobalRandom()
register_random(_TORCH_RANDOM)


@pytest.fixture(autouse=True)
def _seeded_global_rngs() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton_cpu: runs Triton kernels on CPU tensors (needs TRITON_INTERPRET=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    # without CUDA these tests run, and fail if the interpreter was turned off
    if not torch.cuda.is_available():
        return
    from compemb.kernels import triton_interpreted  # imports triton (with TRITON_INTERPRET settled above)

    if triton_interpreted():
        return
    skip = pytest.mark.skip(reason="Triton on CPU tensors needs TRITON_INTERPRET=1; CUDA is available, so "
                                   "Triton is compiled here (run with TRITON_INTERPRET=1 to include these)")
    for item in items:
        if "triton_cpu" in item.keywords:
            item.add_marker(skip)
