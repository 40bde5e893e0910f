"""Expected values written from the definitions, independent of the code under test.

Table sizes of the partition constructors, concat widths and a first SparseAdam step: tests take
their expected numbers from here, never from ``compemb`` itself.
"""
import itertools
import math
from typing import List, Sequence

import torch


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def split_widths(dim: int, k: int) -> List[int]:
    """Widths of ``k`` concatenated tables summing to ``dim``, the wider ones first."""
    return [dim // k + (1 if i < dim % k else 0) for i in range(k)]


def gqr_radices(n: int, k: int) -> List[int]:
    """The ``k`` radices generalized QR chooses for ``n`` rows.

    Each is ``lo = floor(n ** (1/k))`` or ``lo + 1``, with as few ``lo + 1`` (placed first) as make
    their product reach ``n``.
    """
    lo = 1
    while (lo + 1) ** k <= n:
        lo += 1
    j = 0
    while lo ** (k - j) * (lo + 1) ** j < n:
        j += 1
    return [lo + 1] * j + [lo] * (k - j)


def gqr_sizes(n: int, k: int) -> List[int]:
    """Table sizes of generalized QR with ``k`` chosen radices (:func:`gqr_radices`).

    Digit ``j`` takes at most ``ceil(n / place_j)`` values.
    """
    sizes, place = [], 1
    for r in gqr_radices(n, k):
        sizes.append(min(r, ceil_div(n, place)))
        place *= r
    return sizes


def crt_sizes(n: int, k: int) -> List[int]:
    """Table sizes of the Chinese-remainder family with ``k`` chosen moduli.

    The first ``k - 1`` moduli are the smallest pairwise-coprime integers from ``ceil(n ** (1/k))``
    up; the last is the smallest one coprime to them that brings the product to ``n``. Residues
    mod ``m`` of ``0..n-1`` take ``min(m, n)`` values.
    """
    def coprime_to(m: int, others: Sequence[int]) -> bool:
        return all(math.gcd(m, o) == 1 for o in others)

    root = next(r for r in itertools.count(1) if r ** k >= n)
    chosen: List[int] = []
    for candidate in itertools.count(max(root, 2) if n > 1 else 1):
        if len(chosen) == k - 1:
            break
        if coprime_to(candidate, chosen):
            chosen.append(candidate)
    last = next(m for m in itertools.count(max(ceil_div(n, math.prod(chosen)), 1)) if coprime_to(m, chosen))
    return [min(m, n) for m in chosen + [last]]


def sparse_adam_first_step(before: torch.Tensor, grad: torch.Tensor, lr: float, betas=(0.9, 0.999),
                           eps: float = 1e-8) -> torch.Tensor:
    """``before`` after one ``torch.optim.SparseAdam`` step on the dense gradient ``grad``.

    After one step the moments are ``(1 - b1) g`` and ``(1 - b2) g^2``; with the bias corrections
    the update is ``lr * g / (|g| + eps / sqrt(1 - b2))``: zero where ``g`` is zero.
    """
    return before - lr * grad / (grad.abs() + eps / math.sqrt(1 - betas[1]))
