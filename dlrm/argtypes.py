"""argparse types of the ``compemb train`` flags: integers and numbers checked by their range.

Each raises :class:`argparse.ArgumentTypeError` with a message naming the value (argparse adds the
flag), e.g. ``--nepochs: must be an int >= 1, got 0``.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["integer", "int_at_least", "number"]


def integer(text: str) -> int:
    """``int(text)``; a text that is no integer is refused by name."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum``."""
    def parse(text: str) -> int:
        value = integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


def number(minimum: float, inclusive: bool, what: str = "a number") -> Callable[[str], float]:
    """An argparse type: a finite float above (or at, ``inclusive``) ``minimum``; ``what`` names
    the expected value when the text is no number (e.g. ``"a number of GB"``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {minimum:g}, "
                                             f"got {text}")
        return value
    parse.__name__ = "number"
    return parse
