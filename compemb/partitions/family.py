"""Families of partitions: one embedding table per partition; encode indices to codes and back."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from compemb.options import check_operation
from compemb.partitions._numeric import (
    EXHAUSTIVE_LIMIT,
    INT64_MAX,
    AnyIntArray,
    Indices,
    IntArray,
    as_int,
    bounded_horner,
    check_positive,
    copy_into,
    div_into,
    empty,
    like,
    mulmod,
    ones_bool,
    prepare_indices,
    sub_mul_into,
    to_numpy,
    undecidable,
    where,
    zeros_like,
)
from compemb.partitions.algebra import Proof, decide_complementary, structural_proof
from compemb.partitions.kinds import Partition, meet


class PartitionFamily(Sequence):
    """A sequence of partitions over one ``n``; one embedding table per partition.

    Args:
        partitions: one or more :class:`Partition` objects with the same ``n``.

    Attributes:
        n: number of categories.
        k: number of partitions.
        table_sizes: ``num_classes`` of each partition (the table row counts).

    Shape:
        - ``encode``: indices ``(*)`` -> codes ``(k, *)`` (a 1-D input of N indices gives
          ``(k, N)``); row ``i`` is ``family[i](idx)``.
        - ``decode``: codes ``(k, *)`` -> indices ``(*)``.

    Example::

        >>> from compemb.partitions import QuotientPartition, RemainderPartition
        >>> family = PartitionFamily([RemainderPartition(12, 4), QuotientPartition(12, 4)])
        >>> family.is_complementary()
        True
        >>> family.num_parameters(16, "mult")
        112
    """

    def __init__(self, partitions: Iterable[Partition]):
        parts = tuple(partitions)
        if not parts:
            raise ValueError("a PartitionFamily needs at least one partition")
        for i, p in enumerate(parts):
            if not isinstance(p, Partition):
                raise TypeError(f"partitions[{i}] is not a Partition: {p!r}")
        n = parts[0].n
        for i, p in enumerate(parts):
            if p.n != n:
                raise ValueError(f"partitions[{i}] is over n = {p.n}, partitions[0] over n = {n}")
        self._parts = parts
        self.n = n
        self.k = len(parts)
        self.table_sizes: Tuple[int, ...] = tuple(p.num_classes for p in parts)
        self._proof = structural_proof(n, parts)
        self._complementary: Optional[bool] = None
        self._table_decoder: Optional[Tuple[List[Tuple[np.ndarray, np.ndarray]], np.ndarray]] = None
        # Radices of a complete mixed-radix chain in row order: encoded by repeated division.
        self._radices: Optional[List[int]] = None
        proof = self._proof
        if proof is not None and proof.kind == "chain" and [r for r, _ in proof.rows] == list(range(self.k)):
            self._radices = [m for _, m in proof.rows]

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, i: Union[int, slice]) -> Union[Partition, PartitionFamily]:  # type: ignore[override]
        if isinstance(i, slice):
            return PartitionFamily(self._parts[i])
        return self._parts[i]

    def __iter__(self) -> Iterator[Partition]:
        return iter(self._parts)

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self._parts)
        return f"PartitionFamily([{inner}])"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionFamily):
            return NotImplemented
        return self.k == other.k and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def spec(self) -> List[Dict[str, Any]]:
        """The :meth:`Partition.spec` of every partition, in table order (plain values).

        Equal specs mean equal codes for every index, table by table.

        Example::

            >>> from compemb.partitions import quotient_remainder
            >>> quotient_remainder(10, 4).spec()
            [{'kind': 'RemainderPartition', 'n': 10, 'm': 4}, {'kind': 'QuotientPartition', 'n': 10, 'm': 4}]
        """
        return [p.spec() for p in self._parts]

    def is_complementary(self) -> bool:
        """True when ``x -> (P1(x), ..., Pk(x))`` is injective on ``S`` (exact).

        Decided from structure where possible (see :mod:`compemb.partitions.algebra`),
        exhaustively for ``n <= EXHAUSTIVE_LIMIT``, and otherwise raises
        :class:`UndecidableError` unless a sample of indices contains a collision (which
        disproves it).
        """
        if self._complementary is None:
            self._complementary = self._proof is not None or decide_complementary(self._parts)
        return self._complementary

    def meet(self) -> Partition:
        """The meet of the family; it is the identity exactly when the family is complementary."""
        return meet(*self._parts)

    def encode(self, idx: Indices) -> Union[AnyIntArray, Tuple[int, ...]]:
        """Class ids of every partition: ``(k, *idx.shape)`` int64 (a tuple for an ``int``).

        Args:
            idx: int64 torch tensor or numpy integer array with values in ``[0, n)``.

        Raises:
            TypeError: float/bool tensors. IndexError: an index outside ``[0, n)``.
        """
        x, scalar = prepare_indices(idx, self.n)
        out = empty((self.k,) + tuple(x.shape), like=x)
        self.encode_into(x, out)
        if scalar:
            return tuple(int(v) for v in out[:, 0])
        return out

    def encode_into(self, idx: IntArray, out: IntArray) -> None:
        """Write the codes of int64 indices ``idx`` into ``out`` of shape ``(k, *idx.shape)``.

        No validation: ``idx`` must already lie in ``[0, n)`` and ``out`` be int64 of the same
        kind and device (the fast path behind :meth:`encode`).

        Example::

            >>> from compemb.partitions import quotient_remainder
            >>> out = torch.empty((2, 3), dtype=torch.int64)
            >>> quotient_remainder(10, 4).encode_into(torch.tensor([0, 5, 9]), out)
            >>> out
            tensor([[0, 1, 1],
                    [0, 1, 2]])
        """
        radices = self._radices
        if radices is None:
            for i, p in enumerate(self._parts):
                p.encode_into(idx, out[i])
        elif self.k == 1:
            copy_into(idx, out[0])
        else:  # repeated division, remainder by subtraction
            cur = idx
            for i in range(self.k - 1):
                div_into(cur, radices[i], out[i + 1])
                sub_mul_into(cur, out[i + 1], radices[i], out[i])
                cur = out[i + 1]

    def decode(self, codes: Union[AnyIntArray, Sequence[int]]) -> Union[AnyIntArray, int]:
        """The index with the given codes (the inverse of ``encode`` on its image).

        Args:
            codes: int64 ``(k, *)`` torch tensor or numpy array, or a sequence of ``k`` ints.

        Raises:
            TypeError: non-integer codes. ValueError: wrong leading dimension, a
            non-complementary family, or codes that are not the image of any index.
            IndexError: a code outside ``[0, table_sizes[i])``.
        """
        c, scalar = self._prepare_codes(codes)
        if not self.is_complementary():
            raise ValueError(f"decode needs a complementary family; {self!r} is not complementary")
        proof = self._proof
        exact = False
        ok: Any = None
        if proof is None:
            x, ok = self._decode_table(c)
        elif proof.kind == "single":
            x = zeros_like(c[0])
        elif proof.kind == "identity":
            row = c[proof.rows[0][0]]
            x = row.clone() if isinstance(row, torch.Tensor) else row.copy()
        elif proof.kind == "chain":
            x, ok = bounded_horner([c[r] for r, _ in proof.rows], [m for _, m in proof.rows], self.n)
            exact = len(proof.rows) == self.k
        else:
            x, ok = self._decode_crt(c, proof)
        return self._checked_decode(c, scalar, x, ok, exact)

    def _checked_decode(self, c: Any, scalar: bool, x: Any, ok: Any = None, exact: bool = False) -> Union[AnyIntArray, int]:
        """``x``, the indices decoded from codes ``c`` (an int for one code tuple), once each is their preimage.

        ``ok`` marks the columns the decoder found valid (default all); unless ``exact``, ``x`` is
        encoded again and must give ``c``. Raises ``ValueError`` naming the first code of no index.
        """
        if ok is None:
            ok = ones_bool(x)
        if not exact:
            check = empty(tuple(c.shape), like=c)
            self.encode_into(where(ok, x, zeros_like(x)), check)
            ok = ok & (check == c).all(0)
        bad = ~ok
        if bool(bad.any()):
            pos = int(to_numpy(bad).reshape(-1).argmax())
            flat = to_numpy(c).reshape(self.k, -1)[:, pos]
            raise ValueError(
                f"codes {tuple(int(v) for v in flat)} (position {pos}) are not the image of any "
                f"index in [0, {self.n}) under {self!r}"
            )
        return int(x[0]) if scalar else x

    def _prepare_codes(self, codes: Union[AnyIntArray, Sequence[int]]) -> Tuple[Any, bool]:
        """``codes`` as an int64 ``(k, *)`` array, every row in its table's range; and whether it was one tuple."""
        scalar = False
        c: Any
        if isinstance(codes, torch.Tensor):
            if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
                raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
            c = codes.to(torch.int64)
        elif isinstance(codes, np.ndarray):
            if codes.dtype.kind not in "iu":
                raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
            if codes.dtype.kind == "u" and codes.size and int(codes.max()) > INT64_MAX:
                raise IndexError(f"code {int(codes.max())} is beyond the int64 range of every table size")
            c = codes.astype(np.int64)
        elif isinstance(codes, (list, tuple)):
            values = [as_int(v, f"codes[{i}]") for i, v in enumerate(codes)]
            c = np.array(values, dtype=np.int64).reshape(len(values), 1)
            scalar = True
        else:
            raise TypeError(f"codes must be a tensor, array or sequence of ints, got {type(codes).__name__}")
        if c.ndim == 0 or c.shape[0] != self.k:
            raise ValueError(f"codes must have leading dimension k = {self.k}, got shape {tuple(c.shape)}")
        if c.shape[1:].numel() if isinstance(c, torch.Tensor) else c[0].size:
            for i, size in enumerate(self.table_sizes):
                lo, hi = int(c[i].min()), int(c[i].max())
                if lo < 0:
                    raise IndexError(f"code {lo} in row {i} is negative; row {i} codes lie in [0, {size})")
                if hi >= size:
                    raise IndexError(f"code {hi} in row {i} is out of range [0, {size}) (table size {size})")
        return c, scalar

    def _decode_crt(self, c: IntArray, proof: Proof) -> Tuple[IntArray, IntArray]:
        from sympy import factorint

        moduli = [m for _, m in proof.rows]
        if all(math.gcd(a, b) == 1 for i, a in enumerate(moduli) for b in moduli[i + 1:]):
            system = [(c[row], m) for row, m in proof.rows]
        else:
            # reduce to prime powers: x mod p^e, from a modulus holding the largest power of p
            best: Dict[int, Tuple[int, int]] = {}
            for row, m in proof.rows:
                for p, e in factorint(m).items():
                    if p not in best or e > best[p][1]:
                        best[p] = (row, e)
            system = [(c[row] % (p**e), p**e) for p, (row, e) in sorted(best.items())]
        if len(system) == 1:
            r, m = system[0]
            return r, r <= self.n - 1
        digits: List[IntArray] = []
        mods = [m for _, m in system]
        for i, (r, m) in enumerate(system):
            t = r % m
            for j in range(i):
                t = (t - digits[j] % m) % m
                t = mulmod(t, pow(mods[j] % m, -1, m), m)
            digits.append(t)
        return bounded_horner(digits, mods, self.n)

    def _decode_table(self, c: IntArray) -> Tuple[IntArray, IntArray]:
        if self.n > EXHAUSTIVE_LIMIT:
            raise undecidable("a decoder for this family", self.n)
        if self._table_decoder is None:
            every = np.arange(self.n, dtype=np.int64)
            all_codes = np.empty((self.k, self.n), dtype=np.int64)
            self.encode_into(every, all_codes)
            steps = []
            label = None
            for i in range(self.k):
                uniq = np.unique(all_codes[i])
                d = np.searchsorted(uniq, all_codes[i])
                key = d if label is None else label * len(uniq) + d
                ukeys, label = np.unique(key, return_inverse=True)
                label = label.reshape(-1)
                steps.append((uniq, ukeys))
            inverse = np.empty(self.n, dtype=np.int64)
            inverse[label] = every
            self._table_decoder = (steps, inverse)
        steps, inverse = self._table_decoder
        cn = to_numpy(c).reshape(self.k, -1)
        ok = np.ones(cn.shape[1], dtype=bool)
        label = None
        for i, (uniq, ukeys) in enumerate(steps):
            pos = np.minimum(np.searchsorted(uniq, cn[i]), len(uniq) - 1)
            ok &= uniq[pos] == cn[i]
            key = pos if label is None else label * len(uniq) + pos
            kpos = np.minimum(np.searchsorted(ukeys, key), len(ukeys) - 1)
            ok &= ukeys[kpos] == key
            label = kpos
        x = np.where(ok, inverse[label], 0).reshape(c.shape[1:])
        return like(x, c), like(ok.reshape(c.shape[1:]), c)

    def num_parameters(self, dim: int, operation: str = "mult") -> int:
        """Embedding parameters of one table per partition.

        ``mult`` / ``add``: every table is ``dim`` wide, so ``sum(table_sizes) * dim``.
        ``concat``: the output width stays ``dim``; table ``i`` is ``split_dim(dim, k)[i]`` wide.

        Example::

            >>> from compemb.partitions import quotient_remainder
            >>> quotient_remainder(100, 4).num_parameters(16, "concat")
            232
        """
        dim = check_positive(dim, "dim")
        if check_operation(operation) == "concat":
            return sum(s * w for s, w in zip(self.table_sizes, split_dim(dim, self.k)))
        return sum(self.table_sizes) * dim


def split_dim(dim: int, k: int) -> List[int]:
    """Widths of ``k`` concatenated tables whose total is ``dim`` (the wider ones first).

    Example::

        >>> split_dim(16, 3)
        [6, 5, 5]
    """
    dim = check_positive(dim, "dim")
    k = check_positive(k, "k")
    if dim < k:
        raise ValueError(f"cannot split dim = {dim} among k = {k} concatenated tables (need dim >= k)")
    return [dim // k + (1 if i < dim % k else 0) for i in range(k)]
