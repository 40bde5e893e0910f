"""Methods at equal memory: each compressed method's own size parameter for a compression ratio ``R``.

A fair comparison of embedding compression methods holds memory fixed. :func:`size_for_ratio`
picks, for one table of ``n`` categories and width ``D``, the value of the method's own size
knob for which its tables hold **at most** ``n D / R`` parameters and as many as the method
allows below that bound: the next size up (one collision fewer, one rank more, one hot row
more ...) would exceed it. It reports the achieved ratio; where the method cannot go as low as
``n D / R`` at all (QR on a 300-row table at ``R = 64``), it says so
(:class:`CompressionUnreachableError`) or, with ``strict=False``, returns its most compressed
size with ``reached=False``.

==========  ==============================  ===========================================================
method      size parameter                  parameters (``A = D`` for add/mult; concat splits ``D``)
==========  ==============================  ===========================================================
hash        ``num_buckets`` b               ``b D``
qr          ``num_collisions`` m            ``m D + ceil(n/m) D``
gqr         radices ``(r_1 .. r_{k-1}, ceil(n/P))``     ``sum_j classes_j D``
crt         moduli ``(m_1 .. m_{k-1}, L)``, coprime   ``sum_j min(m_j, n) D``
path        ``num_collisions`` m            ``ceil(n/m) D + m (one map per class)``
md          ``md_dim`` w                    ``n w + D w``
tt          ``tt_rank`` R                   ``sum_k p_k R_k q_k R_{k+1}``
robe        ``size`` M                      ``M``
freq        ``num_hot`` h (and the base's m)  ``(h + 1) D + (m + 1) D + (ceil(n/m) + 1) D``
cluster     ``num_collisions`` m (capacity) ``ceil(n/m) D + m D``
==========  ==============================  ===========================================================

gqr and crt: the ``k - 1`` small radices (moduli) have product ``P`` (``r_i >= 2``, pairwise coprime
for crt), the last is ``ceil(n / P)`` (the smallest modulus from there coprime to the others);
the size is ``P``, the smallest that fits (any factorisation), its cheapest factorisation.
``freq`` has two knobs: the base quotient–remainder family takes ``1 - hot_share`` of the
budget (its smallest size if that is too little), then the hot rows fill what is left.

Example::

    >>> choice = size_for_ratio("qr", 100_000, 16, 16)
    >>> choice.options, choice.num_parameters, round(choice.ratio, 3)
    ({'num_collisions': 17}, 94400, 16.949)
    >>> size_for_ratio("robe", 1000, 16, 64).options
    {'size': 250}
    >>> print(size_for_ratio("tt", 100_000, 16, 64).describe())
    tt: tt_rank=14 -> 22,344 parameters, 71.6x fewer than the full 1,600,000 (target 64x)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from compemb.functional import check_int, check_num_embeddings
from compemb.options import COMPRESSED_METHODS, check_choice, check_concat_width, check_operation
from compemb.partitions import chinese_remainder, generalized_qr, split_dim

if TYPE_CHECKING:
    from compemb.config import EmbeddingBagConfig

__all__ = [
    "COMPRESSED_METHODS",
    "CompressionUnreachableError",
    "SizeChoice",
    "size_for_ratio",
    "size_for_config",
    "check_ratio",
    "path_params_per_class",
]


class CompressionUnreachableError(ValueError):
    """A method's most compressed tables still hold more than ``n D / R`` parameters."""


@dataclass(frozen=True)
class SizeChoice:
    """The size :func:`size_for_ratio` picked for one table.

    Attributes:
        method, num_embeddings, embedding_dim: the table.
        target: ``R``, the ratio asked for.
        size_name, size: the method's size parameter and its value (gqr and crt: the product of
            the small radices or moduli).
        num_parameters: the parameters of the compressed tables at that size.
        options: the keywords that build the method at that size (e.g. ``{"num_collisions": 17}``;
            ``{"radices": (...)}`` for gqr, ``{"moduli": (...)}`` for crt).
        reached: whether ``num_parameters <= n D / R``.
    """

    method: str
    num_embeddings: int
    embedding_dim: int
    target: float
    size_name: str
    size: int
    num_parameters: int
    options: Dict[str, Any] = field(default_factory=dict)
    reached: bool = True

    @property
    def full_parameters(self) -> int:
        """``n D``: the full table's parameters."""
        return self.num_embeddings * self.embedding_dim

    @property
    def ratio(self) -> float:
        """The achieved compression ratio ``n D / num_parameters``."""
        return self.full_parameters / self.num_parameters

    def describe(self) -> str:
        """One line: the size, the parameters and the achieved against the asked ratio."""
        sizes = ", ".join(f"{key}={value}" for key, value in self.options.items())
        text = (f"{self.method}: {sizes} -> {self.num_parameters:,} parameters, "
                f"{self.ratio:.3g}x fewer than the full {self.full_parameters:,} (target {self.target:g}x)")
        return text if self.reached else text + "; the target is out of this method's reach"


class _Sizer(NamedTuple):
    """One integer size knob: its domain, direction and parameter count."""

    name: str
    lo: int
    hi: int
    grows: bool  # parameters non-decreasing in the size (else non-increasing)
    params: Callable[[int], int]
    options: Callable[[int], Dict[str, Any]]


def check_ratio(ratio: Any, owner: str = "") -> float:
    """``ratio`` as a float, finite and ``> 1`` (a compression ratio), else ``ValueError`` naming it."""
    prefix = f"{owner}: " if owner else ""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{prefix}compression ratio must be a number > 1, got {ratio!r} ({type(ratio).__name__})")
    value = float(ratio)
    if not math.isfinite(value) or value <= 1:
        raise ValueError(f"{prefix}compression ratio must be a finite number > 1, got {ratio!r}")
    return value


def _two_table_limit(n: int, per_row_m: int, per_row_q: int) -> int:
    """Largest ``m`` up to which ``A m + B ceil(n/m)`` is non-increasing (``A, B`` the per-row costs).

    ``f(m) - f(m-1) = A - B (ceil(n/(m-1)) - ceil(n/m)) <= A - B floor(n / (m (m-1)))``, which is
    ``<= 0`` whenever ``m (m-1) ceil(A/B) <= n``.
    """
    c = -(-per_row_m // per_row_q)
    t = n // c
    m = (1 + math.isqrt(1 + 4 * t)) // 2
    while m * (m - 1) > t:
        m -= 1
    while (m + 1) * m <= t:
        m += 1
    return max(m, 1)


def _two_table(name: str, n: int, per_row_m: int, per_row_q: int, key: str) -> _Sizer:
    """QR-shaped: a table of ``m`` rows and one of ``ceil(n/m)`` rows."""
    hi = min(_two_table_limit(n, per_row_m, per_row_q), n - 1)
    return _Sizer(name, 1, hi, False, lambda m: m * per_row_m + -(-n // m) * per_row_q, lambda m: {key: m})


def _factorisations(product: int, slots: int, coprime: bool) -> List[Tuple[int, ...]]:
    """Every way to write ``product`` as ``slots`` factors ``>= 2`` (descending; pairwise coprime if asked)."""
    from sympy import divisors

    out: List[Tuple[int, ...]] = []

    def search(rest: int, left: int, cap: int, chosen: Tuple[int, ...]) -> None:
        if left == 1:
            if 2 <= rest <= cap and (not coprime or all(math.gcd(rest, c) == 1 for c in chosen)):
                out.append(chosen + (rest,))
            return
        for f in divisors(rest):
            if f < 2 or f > cap or rest // f < 2 ** (left - 1) or f ** left < rest:
                continue  # (descending: f is the largest of the remaining factors)
            if not coprime or all(math.gcd(f, c) == 1 for c in chosen):
                search(rest // f, left - 1, f, chosen + (f,))

    search(product, slots, product, ())
    return out


def _last_factor(n: int, small: Tuple[int, ...], coprime: bool) -> int:
    """The last radix ``ceil(n / P)`` (gqr) or the smallest modulus from there coprime to ``small`` (crt)."""
    last = max(-(-n // math.prod(small)), 1)
    while coprime and not all(math.gcd(last, c) == 1 for c in small):
        last += 1
    return last


#: most products of small radices / moduli :func:`_product_search` tries before it gives up
_PRODUCT_SCAN_LIMIT = 200_000


def _product_search(method: str, n: int, d: int, k: int, operation: str,
                    bound: Fraction) -> Tuple[Tuple[int, ...], int, bool]:
    """gqr/crt: ``k - 1`` small radices (moduli) of product ``P`` and a last one ``~ n / P``.

    The smallest ``P`` (fewest collisions) for which some factorisation into ``k - 1`` factors
    ``>= 2`` (pairwise coprime for crt) fits, with its factorisation of fewest parameters; every
    smaller ``P`` holds more parameters than fit. Returns ``(factors, parameters, reached)``;
    unreached: the balanced family of :func:`~compemb.partitions.choose_radices` /
    :func:`~compemb.partitions.choose_moduli` (the method's most compressed).
    """
    from compemb.partitions import choose_moduli, choose_radices

    coprime = method == "crt"
    widths = split_dim(d, k) if operation == "concat" else [d] * k

    def params(factors: Tuple[int, ...]) -> int:
        if coprime:
            return chinese_remainder(n, moduli=factors).num_parameters(d, operation)
        return generalized_qr(n, radices=factors).num_parameters(d, operation)

    def fits(count: int) -> bool:
        return count <= bound

    # the last table alone must fit: ceil(n / P) rows of width w_last within the bound
    most_rows = math.floor(bound / widths[-1])
    product = max(2 ** (k - 1), -(-n // most_rows) if most_rows >= 1 else n + 1)
    for _ in range(_PRODUCT_SCAN_LIMIT):
        # past the balance point the small tables alone outgrow the bound: stop
        if not fits(math.ceil((k - 1) * product ** (1.0 / (k - 1))) * min(widths[:-1])) or product > n:
            break
        best: Optional[Tuple[Tuple[int, ...], int]] = None
        for small in _factorisations(product, k - 1, coprime):
            factors = small + (_last_factor(n, small, coprime),)
            count = params(factors)
            if fits(count) and (best is None or count < best[1]):
                best = (factors, count)
        if best is not None:
            return best[0], best[1], True
        product += 1
    factors = choose_moduli(n, k) if coprime else choose_radices(n, k)
    return tuple(factors), params(tuple(factors)), False


def path_params_per_class(dim: int, hidden_dims: Sequence[int]) -> int:
    """The parameters of one per-class map of ``path`` (a ``dim -> dim`` linear map, or an MLP with
    ``hidden_dims`` and biases), as :class:`compemb.path.PathEmbeddingBag` holds them."""
    dims = (dim,) + tuple(hidden_dims) + (dim,)
    return sum(a * b for a, b in zip(dims[:-1], dims[1:])) + (sum(dims[1:]) if hidden_dims else 0)


def _search(sizer: _Sizer, fits: Callable[[int], bool]) -> Tuple[int, bool]:
    """The size with the most parameters that fit (the next size up does not), and whether any fits.

    Binary search on the predicate ``fits(params(size))``: it ends at a size that fits next to one
    that does not (or at the end of the domain) even where ``params`` is not monotone.
    """
    lo, hi = sizer.lo, sizer.hi
    if lo > hi:
        return lo, False
    ok, bad = (lo, hi + 1) if sizer.grows else (hi, lo - 1)  # from the smallest params towards the largest
    if not fits(sizer.params(ok)):
        return ok, False
    while abs(bad - ok) > 1:
        mid = (ok + bad) // 2
        if fits(sizer.params(mid)):
            ok = mid
        else:
            bad = mid
    return ok, True


def _sizer(method: str, n: int, d: int, operation: str, k: int, hidden_dims: Sequence[int],
           num_cores: int) -> _Sizer:
    """The size knob of ``method`` for an ``n x d`` table (every method but ``freq``)."""
    concat = operation == "concat"
    if method == "hash":
        return _Sizer("num_buckets", 1, n - 1, True, lambda b: b * d, lambda b: {"num_buckets": b})
    if method == "qr":  # tables [remainder (m rows), quotient]
        w = split_dim(d, 2) if concat else [d, d]
        return _two_table("num_collisions", n, w[0], w[1], "num_collisions")
    if method == "cluster":  # tables [cluster (ceil(n/m) rows), rank (m rows)]
        w = split_dim(d, 2) if concat else [d, d]
        return _two_table("num_collisions", n, w[1], w[0], "num_collisions")
    if method == "path":
        return _two_table("num_collisions", n, path_params_per_class(d, hidden_dims), d, "num_collisions")
    if method == "md":
        return _Sizer("md_dim", 1, d - 1, True, lambda w: n * w + d * w, lambda w: {"md_dim": w})
    if method == "tt":
        from compemb.tt import tt_num_parameters, tt_ranks, tt_shapes

        p, q = tt_shapes(n, d, num_cores)

        def tt_params(r: int) -> int:
            return tt_num_parameters(p, q, tt_ranks(r, num_cores))

        hi = 1
        while tt_params(hi) < n * d and hi < 2**20:
            hi *= 2
        return _Sizer("tt_rank", 1, hi, True, tt_params, lambda r: {"tt_rank": r})
    if method == "robe":
        return _Sizer("size", 1, n * d - 1, True, lambda s: s, lambda s: {"size": s})
    raise ValueError(f"method {method!r} has no size parameter; the compressed methods are {COMPRESSED_METHODS}")


def size_for_ratio(
    method: str,
    num_embeddings: int,
    embedding_dim: int,
    ratio: float,
    *,
    operation: str = "mult",
    k: int = 2,
    hidden_dims: Sequence[int] = (),
    num_cores: int = 3,
    hot_share: float = 0.5,
    strict: bool = True,
) -> SizeChoice:
    """The size of ``method`` whose tables hold at most ``n D / ratio`` parameters, as many as it allows.

    Args:
        method: one of :data:`COMPRESSED_METHODS`.
        num_embeddings, embedding_dim: ``n`` and ``D`` of the full table.
        ratio: ``R > 1``.
        operation: for the compositional methods (qr, gqr, crt, freq, cluster): ``concat`` splits
            ``D`` across the tables, which changes their parameter counts.
        k: number of partitions of gqr and crt (``>= 2``).
        hidden_dims: path's per-class MLP hidden sizes.
        num_cores: tt's number of cores.
        hot_share: freq's share of the budget for the hot rows, in ``(0, 1)``.
        strict: raise :class:`CompressionUnreachableError` when the method cannot reach ``R``
            (else return its most compressed size with ``reached=False``).

    Returns:
        a :class:`SizeChoice`; its ``options`` are the build keywords for the chosen size.

    Raises:
        ValueError: an unknown or uncompressed method, a bad ratio or size, ``k < 2`` for
            gqr/crt, ``concat`` wider tables than ``D``. CompressionUnreachableError: see ``strict``.

    Example::

        >>> size_for_ratio("hash", 1000, 16, 16).options  # 63 buckets would be 1008 > 1000 parameters
        {'num_buckets': 62}
        >>> size_for_ratio("gqr", 10**6, 16, 16, k=3).options  # (2, 2) and prime 5 would not do
        {'radices': (6, 3, 55556)}
        >>> size_for_ratio("qr", 300, 16, 64, strict=False).reached
        False
    """
    where = "size_for_ratio"
    check_choice("method", method, COMPRESSED_METHODS, where)
    n = check_num_embeddings("num_embeddings", num_embeddings, where)
    d = check_int("embedding_dim", embedding_dim, 1, where)
    target = check_ratio(ratio, where)
    operation = check_operation(operation, where)
    k = check_int("k", k, 1, where)
    num_cores = check_int("num_cores", num_cores, 1, where)
    hidden = tuple(check_int(f"hidden_dims[{i}]", h, 1, where) for i, h in enumerate(hidden_dims))
    if method in ("gqr", "crt") and k < 2:
        raise ValueError(f"{where}: {method} needs k >= 2 partitions to compress, got k={k}")
    check_concat_width(method, operation, d, k, where)
    bound = Fraction(n * d) / Fraction(target)

    def fits(params: int) -> bool:
        return params <= bound

    if method in ("gqr", "crt"):
        factors, params, reached = _product_search(method, n, d, k, operation, bound)
        key = "radices" if method == "gqr" else "moduli"
        choice = SizeChoice(method, n, d, target, f"{key}_product", math.prod(factors[:-1]), params, {key: factors},
                            reached)
        if not reached and strict:
            raise CompressionUnreachableError(
                f"{where}: {method} cannot compress num_embeddings={n}, embedding_dim={d} by {target:g}x: its most "
                f"compressed {key} {factors} hold {params:,} parameters ({choice.ratio:.3g}x, more than "
                f"n*D/R = {float(bound):,.1f}); pass strict=False for that size"
            )
        return choice
    if method == "freq":
        share = float(hot_share)
        if not 0 < share < 1:
            raise ValueError(f"{where}: hot_share must lie in (0, 1), got {hot_share!r}")
        w = split_dim(d, 3) if operation == "concat" else [d, d, d]
        base = _two_table("num_collisions", n, w[1], w[2], "num_collisions")
        base_params = _Sizer(base.name, base.lo, base.hi, False,
                             lambda m: (m + 1) * w[1] + (-(-n // m) + 1) * w[2], base.options)
        m, _ = _search(base_params, lambda p: p <= bound * Fraction(1 - share))
        rest = base_params.params(m)
        sizer = _Sizer("num_hot", 1, n - 1, True, lambda h: (h + 1) * w[0] + rest,
                       lambda h: {"num_hot": h, "num_collisions": m})
    else:
        sizer = _sizer(method, n, d, operation, k, hidden, num_cores)
    size, reached = _search(sizer, fits)
    if sizer.lo > sizer.hi:
        raise CompressionUnreachableError(
            f"{where}: {method} has no compressed size for num_embeddings={n}, embedding_dim={d}"
        )
    params = sizer.params(size)
    choice = SizeChoice(method, n, d, target, sizer.name, size, params, sizer.options(size), reached)
    if not reached and strict:
        raise CompressionUnreachableError(
            f"{where}: {method} cannot compress num_embeddings={n}, embedding_dim={d} by {target:g}x: its most "
            f"compressed size ({sizer.name}={size}) holds {params:,} parameters ({choice.ratio:.3g}x, more than "
            f"n*D/R = {float(bound):,.1f}); pass strict=False for that size"
        )
    return choice


def size_for_config(config: "EmbeddingBagConfig", *, strict: bool = True) -> SizeChoice:
    """:func:`size_for_ratio` for a table spec whose ``compression`` is set.

    Example::

        >>> from compemb.config import EmbeddingBagConfig
        >>> size_for_config(EmbeddingBagConfig("C1", 10_000, 16, method="hash", compression=8)).options
        {'num_buckets': 1250}
    """
    ratio: Optional[float] = getattr(config, "compression", None)
    if ratio is None:
        raise ValueError(f"size_for_config: table {config.name!r} has no compression ratio (compression=None)")
    return size_for_ratio(config.method, config.num_embeddings, config.embedding_dim, ratio,
                          operation=config.operation, k=config.k, hidden_dims=config.hidden_dims, strict=strict)
