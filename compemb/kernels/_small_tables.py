"""Small component tables outside the table-batched lookup: the plan, the encoding and the composition.

A quotient–remainder feature has one large table (``n / m`` rows) and one tiny one (``m``
rows). Looking the tiny table up through FBGEMM's TBE costs as much per index as the large one
(a sort and a scatter in backward, for rows that stay in L1), so the FBGEMM collection keeps the
*large* component of every feature in the TBE and the *small* one (at most :data:`DENSE_SMALL_ROWS`
rows) here, as a dense ``(m, d)`` block composed with the TBE's pooled output:

- one-hot bags: the small row of each bag (``cls``);
- multi-hot bags, ``add`` or ``mult`` after pooling: how many indices of each bag fall in each
  small row (``cnt``, so the pooled small rows are ``cnt @ R``);
- multi-hot ``mult`` composed *before* pooling: the remainder-class split,
  ``sum_i q[a_i] * r[b_i] = sum_j r[j] * sum_{i: b_i = j} q[a_i]``: the large table is looked up
  in ``m`` pooled slots per bag (one per class ``j``) and combined with ``r`` afterwards. This is
  exact whatever the size of the split table, so every ``mult``/``before_pool`` feature of two
  tables keeps its smaller table here.

:class:`SmallTablePlan` fixes where every table lives; :func:`encode_batch` turns one batch of raw
indices into the TBE input and the small-table data; :func:`compose_forward` and
:func:`compose_backward` are the composition and its gradient in plain PyTorch (the reference;
``compemb.kernels._native`` computes the same in one fused C loop). Nothing here imports
``fbgemm_gpu``.

Example::

    >>> from compemb.kernels._base import FeatureSpec
    >>> from compemb.partitions import quotient_remainder, naive
    >>> specs = [FeatureSpec("a", 100, 4, quotient_remainder(100, 4), "mult", "sum", "after_pool", (4, 4)),
    ...          FeatureSpec("b", 7, 4, naive(7), "add", "sum", "before_pool", (4,))]
    >>> plan = SmallTablePlan(specs)
    >>> plan.kinds, plan.tbe_shapes, plan.small_shapes
    (['small', 'plain'], [(25, 4), (7, 4)], [(4, 4)])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, cast

import torch

from compemb.kernels._base import FeatureSpec
from compemb.kernels._pooled import combine_pooled

__all__ = [
    "DENSE_SMALL_ROWS",
    "MAX_SPLIT_ROWS",
    "MODE_PLAIN",
    "MODE_ONE_HOT",
    "MODE_COUNTS",
    "MODE_SPLIT",
    "SmallTablePlan",
    "BatchLayout",
    "EncodedBatch",
    "encode_batch",
    "compose_forward",
    "compose_backward",
    "digit_form",
]

#: a component table of at most this many rows is kept out of the TBE (dense, beside it)
DENSE_SMALL_ROWS = 64
#: the remainder-class split looks the large table up in this many slots per bag at most
MAX_SPLIT_ROWS = 1024
#: the largest index the encoding serves (the native kernel divides in double precision)
MAX_INDEX = 2**52

#: per-batch feature modes (the native kernel's ``mode``)
MODE_PLAIN = 0
MODE_ONE_HOT = 1
MODE_COUNTS = 2
MODE_SPLIT = 3


def digit_form(partition: object) -> Optional[Tuple[int, int, int]]:
    """``(P, m, mod)`` when class ids are ``(x // P) % m`` (``mod`` is 0 when ``x // P < m`` always)."""
    form_fn = getattr(partition, "digit_form", None)
    if form_fn is None or not getattr(partition, "ids_follow_form", False):
        return None
    form = form_fn()
    if form is None:
        return None
    P, m = int(form[0]), int(form[1])
    n = int(partition.n)  # type: ignore[attr-defined]
    return P, m, (0 if P * m >= n else m)


@dataclass(frozen=True)
class _Feature:
    kind: str  # "plain" (one TBE table), "small" (one TBE table + one dense small table), "general"
    tbe_components: Tuple[int, ...]  # component indices in the TBE, in slot order
    small: int  # the dense component (-1: none)
    large_form: Tuple[int, int, int]
    small_form: Tuple[int, int, int]
    splittable: bool  # mult before_pool: multi-hot batches use the remainder-class split


class SmallTablePlan:
    """Where every component table of a collection lives: in the TBE or as a dense small table.

    A feature is ``"plain"`` (one table: one TBE table), ``"small"`` (two tables of digit form,
    ``add`` or ``mult``, the smaller one of at most :data:`DENSE_SMALL_ROWS` rows, or any ``mult``
    with ``compose="before_pool"``: the larger table in the TBE, the smaller dense) or
    ``"general"`` (every component in the TBE, pooled per table and combined afterwards, which
    is exact for ``add``, ``concat`` and ``mult`` after pooling).

    Attributes:
        kinds: per feature.
        tbe_shapes: ``(rows, width)`` of every TBE table, in slot order.
        tbe_tables: per feature, its TBE table ids.
        small_shapes: ``(rows, width)`` of every dense small table (feature order).
        small_elem: per feature, the first element of its small table in the flat small buffer
            (``-1``: none).
        dims: per feature, the output width; ``out_cols``: its first output column.
    """

    def __init__(self, specs: Sequence[FeatureSpec], small_rows: int = DENSE_SMALL_ROWS) -> None:
        self.specs = list(specs)
        self.features: List[_Feature] = []
        self.tbe_shapes: List[Tuple[int, int]] = []
        self.tbe_tables: List[List[int]] = []
        self.small_shapes: List[Tuple[int, int]] = []
        self.small_elem: List[int] = []
        self.dims = [s.embedding_dim for s in self.specs]
        self.out_cols = [sum(self.dims[:f]) for f in range(len(self.specs))]
        elem = 0
        for spec in self.specs:
            feat = self._classify(spec, small_rows)
            self.features.append(feat)
            ids = []
            for t in feat.tbe_components:
                ids.append(len(self.tbe_shapes))
                self.tbe_shapes.append((int(spec.family.table_sizes[t]), int(spec.widths[t])))
            self.tbe_tables.append(ids)
            if feat.small >= 0:
                rows, width = int(spec.family.table_sizes[feat.small]), int(spec.widths[feat.small])
                self.small_shapes.append((rows, width))
                self.small_elem.append(elem)
                elem += rows * width
            else:
                self.small_elem.append(-1)
        self.small_numel = elem
        self.kinds = [f.kind for f in self.features]
        self.general = any(k == "general" for k in self.kinds)
        self.max_index = max(s.num_embeddings for s in self.specs)
        self._layouts: Dict[Tuple[int, ...], BatchLayout] = {}
        #: per-layout data of an accelerator (the native kernels' argument arrays)
        self.cache: Dict[object, object] = {}

    @staticmethod
    def _classify(spec: FeatureSpec, small_rows: int) -> _Feature:
        k = spec.k
        forms = [digit_form(p) for p in spec.family]
        none3 = (1, 0, 0)
        if k == 1 and forms[0] is not None:
            return _Feature("plain", (0,), -1, forms[0], none3, False)
        sizes = list(spec.family.table_sizes)
        large = max(range(k), key=lambda t: (sizes[t], -t))
        if k == 2 and spec.operation in ("mult", "add") and None not in forms:
            small = 1 - large
            if spec.operation == "mult" and spec.compose == "before_pool":
                # exact for multi-hot bags only by the split, which needs the table dense
                if sizes[small] <= MAX_SPLIT_ROWS:
                    return _Feature("small", (large,), small, forms[large] or none3, forms[small] or none3, True)
            elif sizes[small] <= small_rows:
                return _Feature("small", (large,), small, forms[large] or none3, forms[small] or none3, False)
        return _Feature("general", tuple(range(k)), -1, none3, none3, False)

    # -- tables -------------------------------------------------------------------------------
    def component_places(self) -> List[Tuple[str, int]]:
        """For every component table (feature-major): ``("tbe", table id)`` or ``("small", feature)``."""
        out: List[Tuple[str, int]] = []
        for f, (spec, feat) in enumerate(zip(self.specs, self.features)):
            for t in range(spec.k):
                if t == feat.small:
                    out.append(("small", f))
                else:
                    out.append(("tbe", self.tbe_tables[f][feat.tbe_components.index(t)]))
        return out

    def small_tables(self, flat: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Feature -> its small table as a ``(rows, width)`` view of the flat small buffer."""
        out = {}
        j = 0
        for f, elem in enumerate(self.small_elem):
            if elem >= 0:
                rows, width = self.small_shapes[j]
                out[f] = flat[elem: elem + rows * width].view(rows, width)
                j += 1
        return out

    # -- one batch ----------------------------------------------------------------------------
    def batch_modes(self, max_len: Sequence[int]) -> Tuple[int, ...]:
        """The mode of every feature for a batch whose largest bags are ``max_len``."""
        modes = []
        for feat, L in zip(self.features, max_len):
            if feat.kind != "small":
                modes.append(MODE_PLAIN)
            elif L <= 1:
                modes.append(MODE_ONE_HOT)
            elif feat.splittable:
                modes.append(MODE_SPLIT)
            else:
                modes.append(MODE_COUNTS)
        return tuple(modes)

    def layout(self, modes: Tuple[int, ...]) -> BatchLayout:
        """The TBE slots and the column maps of a batch with these feature modes (cached)."""
        lay = self._layouts.get(modes)
        if lay is None:
            lay = self._layouts[modes] = self._make_layout(modes)
        return lay

    def _make_layout(self, modes: Tuple[int, ...]) -> BatchLayout:
        slot_tables: List[int] = []
        slot_base, p_cols, cls_cols, cnt_cols, s_cols = [], [], [], [], []
        ld_cls = ld_cnt = ld_s = 0
        pcol = 0
        for f, (feat, md) in enumerate(zip(self.features, modes)):
            slot_base.append(len(slot_tables))
            p_cols.append(pcol)
            d = self.dims[f]
            if md == MODE_SPLIT:
                rows = self.specs[f].family.table_sizes[feat.small]
                slot_tables.extend([self.tbe_tables[f][0]] * rows)
                pcol += rows * d
            else:
                slot_tables.extend(self.tbe_tables[f])
                pcol += sum(self.tbe_shapes[t][1] for t in self.tbe_tables[f])
            cls_cols.append(ld_cls if md == MODE_ONE_HOT else -1)
            ld_cls += 1 if md == MODE_ONE_HOT else 0
            rows = self.specs[f].family.table_sizes[feat.small] if feat.small >= 0 else 0
            cnt_cols.append(ld_cnt if md == MODE_COUNTS else -1)
            ld_cnt += rows if md == MODE_COUNTS else 0
            mult_small = md in (MODE_ONE_HOT, MODE_COUNTS) and self.specs[f].operation == "mult"
            s_cols.append(ld_s if mult_small else -1)
            ld_s += d if mult_small else 0
        slot_base.append(len(slot_tables))
        return BatchLayout(modes, slot_tables, slot_base, p_cols, pcol, cls_cols, ld_cls, cnt_cols, ld_cnt,
                           s_cols, ld_s, any(m == MODE_SPLIT for m in modes))


class BatchLayout(NamedTuple):
    """The TBE slots and column maps of one batch (see :meth:`SmallTablePlan.layout`)."""

    modes: Tuple[int, ...]
    slot_tables: List[int]  # TBE table of every slot
    slot_base: List[int]  # first slot of every feature (+ the total)
    p_cols: List[int]  # first column of every feature in the TBE output
    p_width: int  # the TBE output's width
    cls_cols: List[int]
    ld_cls: int
    cnt_cols: List[int]
    ld_cnt: int
    s_cols: List[int]
    ld_s: int
    split: bool


class EncodedBatch(NamedTuple):
    """One batch encoded: the TBE input and what the composition needs."""

    layout: BatchLayout
    batch: int
    tbe_indices: torch.Tensor
    tbe_offsets: torch.Tensor
    offsets: torch.Tensor  # the input offsets (bag lengths, for mean)
    cls: torch.Tensor  # (B, ld_cls) int32
    cnt: torch.Tensor  # (B, ld_cnt) float32


# -- the torch implementation (the reference of the native kernels) -----------------------------
def _digit(x: torch.Tensor, form: Tuple[int, int, int]) -> torch.Tensor:
    P, _, mod = form
    t = x if P == 1 else torch.div(x, P, rounding_mode="floor")
    return t.remainder(mod) if mod > 0 else t


def _bag_ids(offsets: torch.Tensor, count: int) -> torch.Tensor:
    """The bag of every index, from ``offsets`` (``len(offsets) - 1`` bags, ``count`` indices)."""
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths,
                                   output_size=count)


def encode_batch(plan: SmallTablePlan, values: torch.Tensor, offsets: torch.Tensor, batch: int,
                 max_len: Sequence[int], bounds: Optional[Sequence[int]] = None) -> EncodedBatch:
    """Encode checked indices (``values`` feature-major, ``offsets`` with ``F * B + 1`` entries).

    General features are laid out one slot per component, as :func:`compemb.kernels.tbe_inputs`.
    ``bounds``: ``offsets[::B]`` already read (``None``: read here).
    """
    B = batch
    lay = plan.layout(plan.batch_modes(max_len))
    device = values.device
    cls = torch.full((B, lay.ld_cls), -1, dtype=torch.int32, device=device)
    cnt = torch.zeros((B, lay.ld_cnt), dtype=torch.float32, device=device)
    idx_parts: List[torch.Tensor] = []
    off_parts: List[torch.Tensor] = []
    base = 0
    if bounds is None:
        bounds = offsets[::B].tolist()
    for f, (spec, feat, md) in enumerate(zip(plan.specs, plan.features, lay.modes)):
        s, e = bounds[f], bounds[f + 1]
        x = values[s:e]
        off = offsets[f * B: (f + 1) * B + 1] - s
        if feat.kind == "general":
            codes = cast(torch.Tensor, spec.family.encode(x))
            for t in range(spec.k):
                idx_parts.append(codes[t])
                off_parts.append(off[:-1] + base)
                base += x.numel()
            continue
        lP, _, lmod = feat.large_form
        sP, _, smod = feat.small_form
        if feat.kind == "small" and sP == 1 and smod == lP and lmod == 0:  # quotient-remainder: one division
            large = torch.div(x, lP, rounding_mode="floor")
            small_qr: Optional[torch.Tensor] = x - large * lP
        else:
            large, small_qr = _digit(x, feat.large_form), None
        if md in (MODE_PLAIN, MODE_ONE_HOT, MODE_COUNTS):
            idx_parts.append(large)
            off_parts.append(off[:-1] + base)
            base += x.numel()
        if md == MODE_PLAIN:
            continue
        small = small_qr if small_qr is not None else _digit(x, feat.small_form)
        bag = _bag_ids(off, x.numel())
        if md == MODE_ONE_HOT:
            cls[bag, lay.cls_cols[f]] = small.to(torch.int32)
        elif md == MODE_COUNTS:
            rows = spec.family.table_sizes[feat.small]
            counts = torch.bincount(bag * rows + small, minlength=B * rows).view(B, rows)
            cnt[:, lay.cnt_cols[f]: lay.cnt_cols[f] + rows] = counts.to(torch.float32)
        else:  # split: bags of slot j hold the indices of class j, in their order
            rows = spec.family.table_sizes[feat.small]
            key = small * B + bag
            order = torch.sort(key, stable=True).indices
            idx_parts.append(large[order])
            counts = torch.bincount(key, minlength=rows * B)
            starts = torch.cumsum(counts, 0) - counts
            off_parts.append(starts + base)
            base += x.numel()
    off_parts.append(torch.tensor([base], dtype=offsets.dtype, device=device))
    return EncodedBatch(lay, B, torch.cat(idx_parts) if idx_parts else values[:0], torch.cat(off_parts),
                        offsets, cls, cnt)


def _scales(offsets: torch.Tensor, f: int, B: int, mean: bool, dtype: torch.dtype) -> Optional[torch.Tensor]:
    if not mean:
        return None
    off = offsets[f * B: (f + 1) * B + 1]
    return (off[1:] - off[:-1]).clamp(min=1).to(dtype).reciprocal().unsqueeze(1)


def _pooled_small(enc: EncodedBatch, f: int, R: torch.Tensor) -> torch.Tensor:
    """``(B, d)``: the pooled (unscaled) small rows of every bag of feature ``f``."""
    lay = enc.layout
    if lay.modes[f] == MODE_ONE_HOT:
        c = enc.cls[:, lay.cls_cols[f]].long()
        return R[c.clamp(min=0)] * (c >= 0).to(R.dtype).unsqueeze(1)
    rows = R.shape[0]
    return enc.cnt[:, lay.cnt_cols[f]: lay.cnt_cols[f] + rows] @ R


def compose_forward(plan: SmallTablePlan, enc: EncodedBatch, P: torch.Tensor,
                    small: Dict[int, torch.Tensor]) -> torch.Tensor:
    """The collection output ``(B, sum d)`` from the TBE output ``P`` and the small tables.

    Plain torch and differentiable (autograd gives the gradients of ``P`` and the small
    tables); ``small`` maps a feature to its ``(rows, d)`` table.
    """
    lay, B = enc.layout, enc.batch
    outs = []
    for f, (spec, feat, md) in enumerate(zip(plan.specs, plan.features, lay.modes)):
        d = plan.dims[f]
        s = _scales(enc.offsets, f, B, spec.mode == "mean", P.dtype)
        if feat.kind == "general":
            width = sum(spec.widths)
            block = P[:, lay.p_cols[f]: lay.p_cols[f] + width]
            outs.append(combine_pooled(block if s is None else block * s, spec.widths, spec.operation))
            continue
        if md == MODE_SPLIT:
            R = small[f]
            rows = R.shape[0]
            block = P[:, lay.p_cols[f]: lay.p_cols[f] + rows * d].reshape(B, rows, d)
            out = (block * R).sum(1)
            outs.append(out if s is None else out * s)
            continue
        p = P[:, lay.p_cols[f]: lay.p_cols[f] + d]
        if s is not None:
            p = p * s
        if md == MODE_PLAIN:
            outs.append(p)
            continue
        rp = _pooled_small(enc, f, small[f])
        if s is not None:
            rp = rp * s
        outs.append(p * rp if spec.operation == "mult" else p + rp)
    return torch.cat(outs, dim=1)


def compose_backward(plan: SmallTablePlan, enc: EncodedBatch, P: torch.Tensor, small_flat: torch.Tensor,
                     grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grad of P, grad of the flat small buffer)`` for the output gradient ``grad``.

    The gradient of :func:`compose_forward`, written out (general features by autograd).
    """
    lay, B = enc.layout, enc.batch
    gP = torch.empty_like(P)
    g_small = torch.zeros_like(small_flat)
    small = plan.small_tables(small_flat.detach())
    g_tables = plan.small_tables(g_small)
    for f, (spec, feat, md) in enumerate(zip(plan.specs, plan.features, lay.modes)):
        d, pc, oc = plan.dims[f], lay.p_cols[f], plan.out_cols[f]
        s = _scales(enc.offsets, f, B, spec.mode == "mean", P.dtype)
        g = grad[:, oc: oc + d]
        if feat.kind == "general":
            width = sum(spec.widths)
            block = P[:, pc: pc + width].detach().requires_grad_()
            with torch.enable_grad():
                out = combine_pooled(block if s is None else block * s, spec.widths, spec.operation)
                (gb,) = torch.autograd.grad(out, block, g)
            gP[:, pc: pc + width] = gb
            continue
        gs = g if s is None else g * s
        if md == MODE_PLAIN:
            gP[:, pc: pc + d] = gs
            continue
        R = small[f]
        if md == MODE_SPLIT:
            rows = R.shape[0]
            block = P[:, pc: pc + rows * d].reshape(B, rows, d)
            gP[:, pc: pc + rows * d] = (gs.unsqueeze(1) * R).reshape(B, rows * d)
            g_tables[f] += torch.einsum("bjd,bd->jd", block, gs)
            continue
        if md == MODE_ONE_HOT:
            c = enc.cls[:, lay.cls_cols[f]].long()
            X = torch.zeros(B, R.shape[0], dtype=P.dtype, device=P.device)
            X[torch.arange(B, device=P.device)[c >= 0], c[c >= 0]] = 1
        else:
            X = enc.cnt[:, lay.cnt_cols[f]: lay.cnt_cols[f] + R.shape[0]]
        if s is not None:
            X = X * s
        if spec.operation == "mult":
            p = P[:, pc: pc + d] if s is None else P[:, pc: pc + d] * s
            gP[:, pc: pc + d] = gs * (X @ R)
            g_tables[f] += X.t() @ (g * p)
        else:
            gP[:, pc: pc + d] = gs
            g_tables[f] += X.t() @ g
    return gP, g_small
