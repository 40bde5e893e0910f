"""Layout and launch plan of the table-batched Triton lookup; needs no Triton import.

:func:`tbe_layout` places every component table of every feature in one flat 1-D buffer and
records each partition's digit form ``(x // P) % m`` (the kernels encode raw indices in
registers). :func:`launch_plan` fixes, for one batch size, the grid, the tile sizes and how the
backward treats small components (:class:`LaunchPlan`). :func:`validate_tbe_input` checks the
indices and offsets of all features with one device-to-host copy.

Example::

    >>> from compemb.partitions import quotient_remainder
    >>> lay = tbe_layout(["a", "b"], [quotient_remainder(10, 4)] * 2, 8, "mult", ["sum", "mean"])
    >>> lay.table_shapes, lay.numel
    ([[(4, 8), (3, 8)], [(4, 8), (3, 8)]], 112)
    >>> launch_plan(lay, batch=32).block_b
    32
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from compemb.kernels._collection_input import offsets_flags, out_of_range_error, raise_bad_offsets
from compemb.options import COMPOSES, OPERATIONS, check_compose, check_operation

__all__ = [
    "TBELayout",
    "tbe_layout",
    "LaunchPlan",
    "launch_plan",
    "validate_tbe_input",
    "next_pow2",
    "MAX_K",
    "SMALL_ROWS",
    "KERNEL_OPS",
    "KERNEL_DTYPES",
]

#: the most component tables per feature the kernels serve
MAX_K = 4
#: backward: components with at most this many rows (the remainder table of QR has
#: ``num_collisions`` rows) are summed per program in registers (see :class:`LaunchPlan`)
SMALL_ROWS = 16
#: the kernels' ``OP`` constant for each operation
KERNEL_OPS: Dict[str, int] = {"add": 0, "mult": 1, "concat": 2}
#: the table dtypes the Triton kernels serve (fp32 accumulation)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1


def next_pow2(x: int) -> int:
    """The smallest power of two ``>= x`` (1 for ``x <= 1``)."""
    return 1 << max(0, int(x) - 1).bit_length()


@dataclass
class TBELayout:
    """Where every component table of every feature lives in the flat buffer, and how to encode.

    Build with :func:`tbe_layout`. ``table_shapes[f][t]`` is the ``(rows, width)`` of feature
    ``f``'s component ``t``; ``table_bases[f][t]`` its first element in the flat buffer;
    ``digit_forms[f][t]`` its ``(P, m)``.
    """

    names: List[str]
    num_embeddings: List[int]
    dim: int
    operation: str
    compose: str
    modes: List[str]
    table_shapes: List[List[Tuple[int, int]]]
    table_bases: List[List[int]]
    digit_forms: List[List[Tuple[int, int]]]
    numel: int
    k_max: int
    idx32: bool
    _device_tensors: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def num_features(self) -> int:
        return len(self.names)

    def tables(self, weight: torch.Tensor) -> List[torch.Tensor]:
        """Every component table as a ``(rows, width)`` view of the flat ``weight`` (feature-major)."""
        return [weight[b: b + r * w].view(r, w)
                for bases, shapes in zip(self.table_bases, self.table_shapes)
                for b, (r, w) in zip(bases, shapes)]

    def tensors(self, device: torch.device) -> Dict[str, torch.Tensor]:
        """The per-(feature, table) kernel parameters as device tensors (cached per device)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._device_tensors:
            K = next_pow2(self.k_max)
            F = self.num_features
            place = torch.ones(F, K, dtype=torch.long)
            modulus = torch.ones(F, K, dtype=torch.long)
            base = torch.zeros(F, K, dtype=torch.long)
            width = torch.zeros(F, K, dtype=torch.long)
            col = torch.zeros(F, K, dtype=torch.long)
            for f in range(F):
                c = 0
                for t, ((P, m), (_, w), b) in enumerate(zip(self.digit_forms[f], self.table_shapes[f],
                                                              self.table_bases[f])):
                    place[f, t], modulus[f, t], base[f, t], width[f, t] = P, m, b, w
                    col[f, t] = c if self.operation == "concat" else 0
                    c += w
            kf = torch.tensor([len(s) for s in self.table_shapes], dtype=torch.int32)
            mean = torch.tensor([1 if m == "mean" else 0 for m in self.modes], dtype=torch.int32)
            n = torch.tensor(self.num_embeddings, dtype=torch.long)
            # mult/add: every table is (rows, d), so bases are also kept in rows (see LaunchPlan.uniform)
            base_rows = base // self.dim
            self._device_tensors[key] = {
                name: t.to(device) for name, t in dict(place=place, modulus=modulus, base=base, width=width,
                                                       col=col, kf=kf, mean=mean, n=n,
                                                       base_rows=base_rows).items()}
        return self._device_tensors[key]


def _digit_form(name: str, p: Any) -> Tuple[int, int]:
    form = p.digit_form() if getattr(p, "ids_follow_form", False) else None
    if form is None:
        raise ValueError(
            f"feature {name!r}: partition {p!r} has no digit form (x // P) % m, so the triton TBE "
            "kernel cannot encode it in-kernel (it serves quotient/remainder, mixed-radix digit, "
            "residue and identity partitions; use backend='torch')")
    return int(form[0]), int(form[1])


def tbe_layout(
    names: Sequence[str],
    families: Sequence[Any],
    dim: int,
    operation: str,
    modes: Sequence[str],
    compose: str = "before_pool",
    widths: Optional[Sequence[Sequence[int]]] = None,
) -> TBELayout:
    """Plan the flat buffer and the in-kernel encoding for one table-batched launch.

    Args:
        names: one name per feature (used in error messages).
        families: one :class:`~compemb.partitions.PartitionFamily` per feature (k = 1..4), made of
            partitions of digit form ``(x // P) % m`` (quotient, remainder, digit, residue,
            identity); hash partitions and meets are refused by name.
        dim: every feature's output width ``d`` (one ``d`` for the whole launch, ``d <= 1024``).
        operation: ``"mult"``, ``"add"`` or ``"concat"``, one for all features.
        modes: ``"sum"`` or ``"mean"`` per feature (``"max"`` is refused by name).
        compose: ``"before_pool"`` or ``"after_pool"`` (only changes ``mult``).
        widths: per feature the component widths (default ``d`` each; ``concat`` needs widths
            that sum to ``d``).

    Example::

        >>> from compemb.partitions import naive
        >>> tbe_layout(["a"], [naive(5)], 4, "add", ["sum"]).table_bases
        [[0]]
    """
    if operation not in OPERATIONS:
        check_operation(operation)
    if compose not in COMPOSES:
        check_compose(compose)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 1024:
        raise ValueError(f"dim must be an int in [1, 1024], got {dim!r}")
    names, families, modes = list(names), list(families), list(modes)
    if not (len(names) == len(families) == len(modes)) or not names:
        raise ValueError(f"need one family and mode per feature, got {len(names)} names, {len(families)} "
                         f"families and {len(modes)} modes")
    shapes: List[List[Tuple[int, int]]] = []
    bases: List[List[int]] = []
    forms: List[List[Tuple[int, int]]] = []
    ns: List[int] = []
    offset = 0
    for f, (name, fam, mode) in enumerate(zip(names, families, modes)):
        if mode == "max":
            raise ValueError(f"feature {name!r}: mode='max' is not served by the triton TBE kernel "
                             "(sum and mean only; use backend='torch')")
        if mode not in ("sum", "mean"):
            raise ValueError(f"feature {name!r}: mode must be 'sum' or 'mean', got {mode!r}")
        k = len(fam)
        if not 1 <= k <= MAX_K:
            raise ValueError(f"feature {name!r}: k={k} partitions (the triton TBE kernel serves 1..{MAX_K})")
        w = tuple(widths[f]) if widths is not None else (dim,) * k
        if len(w) != k:
            raise ValueError(f"feature {name!r}: {len(w)} widths for k={k} tables")
        if operation == "concat" and sum(w) != dim:
            raise ValueError(f"feature {name!r}: concat widths {w} must sum to dim={dim}")
        if operation != "concat" and any(x != dim for x in w):
            raise ValueError(f"feature {name!r}: {operation!r} needs widths equal to dim={dim}, got {w}")
        forms.append([_digit_form(name, p) for p in fam])
        shapes.append([(int(r), int(x)) for r, x in zip(fam.table_sizes, w)])
        bases.append([])
        for r, x in shapes[-1]:
            bases[-1].append(offset)
            offset += r * x
        ns.append(int(fam.n))
    idx32 = max(ns) <= _INT32_MAX
    return TBELayout(names, ns, dim, operation, compose, modes, shapes, bases, forms, offset,
                     max(len(s) for s in shapes), idx32)


@dataclass(frozen=True)
class LaunchPlan:
    """How one table-batched launch runs: the grid, the tiles and the backward's strategy.

    Built by :func:`launch_plan`; the kernels take its fields as arguments, so a launch reads no
    module state.

    Attributes:
        num_features, batch, dim: ``F``, ``B`` and ``d`` (the grid is ``(ceil(B / block_b), F)``).
        k: the largest ``k`` of the layout, rounded up to a power of two (the kernels' ``K``).
        block_b, block_d, num_warps: bags per program, columns per program (``>= d``), warps.
        op: the kernels' operation code (:data:`KERNEL_OPS`); after_pool: ``compose``.
        idx32: every index fits int32 (cheaper division).
        uniform: every table is ``(rows, d)`` (``mult``/``add``): row-based addresses.
        prefetch: load the next index of every bag while the current rows are in flight.
        pre_reduce: the backward sums the gradients of *small* components (at most
            ``small_bound`` rows) per program in registers and writes one atomic per (row,
            column) per program, instead of one atomic per index on a handful of addresses.
        small_bound: ``R``, the power of two at or above the largest small modulus (1 if none).
        has_large: some component is not small.
        one_large: no feature has two large components (fused SGD for ``mult`` then needs no
            accumulate-then-apply pass).
    """

    num_features: int
    batch: int
    dim: int
    k: int
    block_b: int
    block_d: int
    num_warps: int
    op: int
    after_pool: bool
    idx32: bool
    uniform: bool
    prefetch: bool
    pre_reduce: bool
    small_bound: int
    has_large: bool
    one_large: bool

    @property
    def grid(self) -> Tuple[int, int]:
        return (-(-self.batch // self.block_b), self.num_features)

    def constexprs(self) -> Dict[str, Any]:
        """The compile-time arguments every kernel of the launch shares."""
        return dict(K=self.k, IDX32=self.idx32, UNIFORM=self.uniform, EVEN_D=self.block_d == self.dim,
                    PREFETCH=self.prefetch, BLOCK_B=self.block_b, BLOCK_D=self.block_d,
                    num_warps=self.num_warps)


def _num_warps(tile: int) -> int:
    return 1 if tile <= 512 else 2 if tile <= 1024 else 4 if tile <= 4096 else 8


def launch_plan(
    layout: TBELayout,
    batch: int,
    block_b: Optional[int] = None,
    *,
    pre_reduce_small: bool = True,
    small_rows: int = SMALL_ROWS,
    prefetch_indices: bool = True,
) -> LaunchPlan:
    """The :class:`LaunchPlan` of one lookup of ``batch`` bags per feature.

    Args:
        layout: from :func:`tbe_layout`.
        batch: ``B``, bags per feature.
        block_b: bags per program (a power of two); default: about 2048 fp32 values per
            ``(K, block_b, block_d)`` tile.
        pre_reduce_small: pre-reduce the gradients of components of at most ``small_rows`` rows
            (``False``: one atomic per index everywhere, for A/B benchmarks).
        small_rows: the row count up to which a component is small.
        prefetch_indices: load the next index while the current rows are in flight.

    Raises:
        ValueError: ``block_b`` is not a power of two ``>= 1``.
    """
    K = next_pow2(layout.k_max)
    block_d = max(next_pow2(layout.dim), 16)
    if block_b is None:
        block_b = max(1, min(64, 2048 // (K * block_d)))
        block_b = min(block_b, max(1, next_pow2(batch)))
    elif block_b < 1 or block_b & (block_b - 1):
        raise ValueError(f"block_b must be a power of two >= 1, got {block_b}")
    mods = [[m for _, m in forms] for forms in layout.digit_forms]
    small = [m for ms in mods for m in ms if m <= small_rows]
    pre = bool(pre_reduce_small and small)
    bound = next_pow2(max(small)) if pre else 1
    limit = bound if pre else 0
    return LaunchPlan(
        num_features=layout.num_features, batch=int(batch), dim=layout.dim, k=K, block_b=block_b,
        block_d=block_d, num_warps=_num_warps(K * block_b * block_d), op=KERNEL_OPS[layout.operation],
        after_pool=layout.compose == "after_pool", idx32=layout.idx32, uniform=layout.operation != "concat",
        prefetch=bool(prefetch_indices), pre_reduce=pre, small_bound=bound,
        has_large=any(m > limit for ms in mods for m in ms),
        one_large=all(sum(m > limit for m in ms) <= 1 for ms in mods),
    )


def validate_tbe_input(
    indices: torch.Tensor,
    offsets: torch.Tensor,
    layout: TBELayout,
    extra_checks: Sequence[Tuple[torch.Tensor, Callable[[], None]]] = (),
) -> None:
    """Check all features' indices and the offsets at once (a single device-to-host copy).

    Raises ``IndexError`` naming the feature, the value and ``n`` for an index outside
    ``[0, n)``, and ``ValueError`` for offsets that do not start at 0, decrease or do not end at
    ``len(indices)``. ``extra_checks`` are ``(flag, raise_fn)`` pairs: a 0-d bool tensor that is
    true on an error, fetched in the same copy, and a function that raises the error.
    """
    F = layout.num_features
    N = indices.numel()
    B = (offsets.numel() - 1) // F
    tens = layout.tensors(indices.device)
    checks = offsets_flags(offsets, N)
    if N:
        bounds = offsets[B::B].contiguous()  # end of every feature's indices
        pos = torch.arange(N, device=indices.device)
        feat = torch.searchsorted(bounds, pos, right=True).clamp_(max=F - 1)
        bad = (indices < 0) | (indices >= tens["n"][feat])
        checks.append(bad.any())
    extra_checks = list(extra_checks)
    flags = torch.stack([c.to(torch.bool) for c in checks] + [f.to(torch.bool) for f, _ in extra_checks]).tolist()
    for flag, (_, raise_fn) in zip(flags[len(checks):], extra_checks):
        if flag:
            raise_fn()
    raise_bad_offsets(offsets, N, flags)
    if N and flags[3]:
        p = int(bad.nonzero()[0, 0])
        f = int(feat[p])
        raise out_of_range_error(layout.names[f], int(indices[p]), layout.num_embeddings[f])
