"""Running the docstring examples of library modules."""
from __future__ import annotations

import doctest

import torch


def run_doctests(*modules) -> int:
    """Run the docstring examples of ``modules`` (``torch`` in scope, whitespace normalised).

    Asserts that none fails, naming the module; returns how many examples ran.
    """
    attempted = 0
    for module in modules:
        result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    return attempted
