"""FBGEMM collection backend: every large component table in one FBGEMM TBE, small ones beside it.

The large component of every feature lives in one FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen``
(with a fused optimizer, ``"exact_sgd"`` or ``"exact_rowwise_adagrad"``: the update happens inside
backward and no gradient is materialised) or ``DenseTableBatchedEmbeddingBagsCodegen`` (dense
trainable weights). Small component tables (a quotient–remainder feature's ``m``-row remainder
table) are kept out of the TBE as one dense buffer and composed with the TBE's pooled output
(:mod:`compemb.kernels._small_tables`), with the same optimizer applied to them in the same
backward. ``mult`` with ``compose="before_pool"`` is exact for multi-hot bags through the
remainder-class split (``m`` pooled slots of the large table per bag). Features the split plan
does not cover (three or more tables, ``concat``, two large tables) keep every component in the
TBE, pooled per table (:func:`compemb.kernels.exactness_reason`).

On CPU with a fused optimizer the lookup calls FBGEMM's CPU forward and backward operators
directly inside one autograd node: the input is packed, checked and encoded in one pass, the
composition happens in place on the TBE's output and the TBE's gradient is written into a reused
buffer (fused C kernels, ``compemb.kernels._native``, when a C compiler is available; the same
computation in PyTorch otherwise). ``fbgemm_gpu`` is imported when the tables are built.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import nn

from compemb.kernels._base import (
    CollectionBackend,
    CollectionBags,
    FeatureSpec,
    JaggedBags,
    LookupInput,
)
from compemb.kernels._collection_input import (
    PackedBags,
    bag_lengths,
    offsets_flags,
    pack_deferred,
    raise_bad_offsets,
    raise_failed,
    raise_out_of_range,
)
from compemb.kernels._native import NativeKernels, native_kernels
from compemb.kernels._pooled import dense_tbe_lookup
from compemb.kernels._small_tables import (
    MAX_SPLIT_ROWS,
    MODE_PLAIN,
    EncodedBatch,
    SmallTablePlan,
    compose_backward,
    compose_forward,
    encode_batch,
)
from compemb.options import FUSED_OPTIMIZERS

__all__ = ["FbgemmCollection"]

_SUM = 0  # FBGEMM PoolingMode.SUM: every slot is summed; mean is applied in the composition


def _make_tbe(shapes: List[Tuple[int, int]], optimizer: Optional[str], learning_rate: float, eps: float,
              device: torch.device) -> nn.Module:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        DenseTableBatchedEmbeddingBagsCodegen,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    on_cpu = device.type == "cpu"
    if optimizer is None:
        return DenseTableBatchedEmbeddingBagsCodegen(shapes, pooling_mode=PoolingMode.SUM, use_cpu=on_cpu).to(device)
    location = EmbeddingLocation.HOST if on_cpu else EmbeddingLocation.DEVICE
    compute = ComputeDevice.CPU if on_cpu else ComputeDevice.CUDA
    opt = EmbOptimType[optimizer.upper()]  # (the values differ: 'exact_row_wise_adagrad')
    # the collection checks every index before the lookup: FBGEMM's own check would repeat it
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(r, d, location, compute) for r, d in shapes],
        optimizer=opt, learning_rate=learning_rate, eps=eps, pooling_mode=PoolingMode.SUM, device=device,
        bounds_check_mode=BoundsCheckMode.NONE,
    )


def _tbe(module: nn.Module) -> Any:
    """The collection's FBGEMM TBE module (its methods are FBGEMM's, untyped)."""
    return module.get_submodule("tbe")


@functools.lru_cache(maxsize=None)
def _cpu_ops_reason() -> Optional[str]:
    """``None`` when FBGEMM's CPU training operators can be called directly (asked once: the
    collection has imported ``fbgemm_gpu`` when it builds its tables, before any lookup)."""
    try:
        ops = torch.ops.fbgemm
        for name in ("split_embedding_codegen_forward_cpu", "split_embedding_backward_codegen_sgd_cpu",
                     "split_embedding_backward_codegen_rowwise_adagrad_cpu"):
            getattr(ops, name)
    except (AttributeError, RuntimeError) as exc:
        return f"FBGEMM CPU operators missing ({exc})"
    return None


class _Workspaces:
    """Reused ``float32`` buffers (the TBE's grad_output, the saved rows of in-place composition).

    Freshly allocated multi-megabyte buffers cost page faults on every step; these are taken and
    given back instead. A buffer saved for backward is given back when the autograd node that
    holds it is freed, so a second forward before the first backward gets its own buffer.
    """

    def __init__(self, keep: int = 2) -> None:
        self.free: Dict[Tuple[int, ...], List[torch.Tensor]] = {}
        self.keep = keep

    def take(self, shape: Tuple[int, ...]) -> torch.Tensor:
        pool = self.free.get(shape)
        return pool.pop() if pool else torch.empty(shape, dtype=torch.float32)

    def give(self, t: torch.Tensor) -> None:
        pool = self.free.setdefault(tuple(t.shape), [])
        if len(pool) < self.keep:
            pool.append(t)


class _Token:
    """Lives as long as the autograd node of one lookup (gives its saved buffer back when freed)."""


class _FusedCpuLookup(torch.autograd.Function):
    """One lookup on CPU with a fused optimizer: FBGEMM's forward, the composition, and in backward
    the composition's gradient, the small tables' update and FBGEMM's backward (which updates the
    large tables)."""

    @staticmethod
    def forward(ctx: Any, placeholder: torch.Tensor, step: "_Step") -> torch.Tensor:
        out = step.forward()
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[None, None]:
        ctx.step.backward(grad)
        return None, None


class _Step:
    """The state of one fused CPU lookup between its forward and backward."""

    def __init__(self, backend: "FbgemmCollection", module: nn.Module, enc: EncodedBatch,
                 native: Optional[NativeKernels], save: bool) -> None:
        self.backend, self.module, self.enc, self.native, self.save = backend, module, enc, native, save
        self.P: Optional[torch.Tensor] = None
        self.saved: Optional[torch.Tensor] = None
        self.token = _Token()

    def forward(self) -> torch.Tensor:
        backend, enc = self.backend, self.enc
        tbe = _tbe(self.module)
        meta = backend.slot_meta(tbe, enc.layout.slot_tables)
        P = torch.ops.fbgemm.split_embedding_codegen_forward_cpu(
            tbe.weights_host, meta["weights_offsets"], meta["D_offsets"], meta["total_D"], meta["hash_size_cumsum"],
            enc.tbe_indices, enc.tbe_offsets, _SUM, None, 0)
        if not backend.needs_compose(enc):
            return P
        small = backend.small_buffer(self.module)
        if self.native is not None:
            if self.native.inplace(backend.plan, enc):
                if self.save and enc.layout.ld_s:
                    ws = backend.workspaces
                    self.saved = ws.take((enc.batch, enc.layout.ld_s))
                    weakref.finalize(self.token, ws.give, self.saved)
                self.native.compose_forward(backend.plan, enc, P, P, small, self.saved)
                return P
            out = torch.empty((enc.batch, sum(backend.plan.dims)), dtype=torch.float32)
            self.native.compose_forward(backend.plan, enc, P, out, small, None)
            self.P = P
            return out
        self.P = P
        return compose_forward(backend.plan, enc, P, backend.plan.small_tables(small))

    def backward(self, grad: torch.Tensor) -> None:
        backend, enc = self.backend, self.enc
        grad = grad.contiguous()
        if grad.dtype != torch.float32:
            grad = grad.float()
        gP = grad
        ws = backend.workspaces
        taken = None
        if backend.needs_compose(enc):
            small = backend.small_buffer(self.module)
            g_small = torch.zeros_like(small)
            if self.native is not None:
                taken = gP = ws.take((enc.batch, enc.layout.p_width))
                P = self.P if self.P is not None else gP  # (read only for split features, which keep P)
                self.native.compose_backward(backend.plan, enc, grad, gP, P, small, g_small, self.saved)
            else:
                assert self.P is not None
                gP, g_small = compose_backward(backend.plan, enc, self.P, small, grad)
                gP = gP.contiguous()
            backend.apply_small(self.module, g_small)
        tbe = _tbe(self.module)
        meta = backend.slot_meta(tbe, enc.layout.slot_tables)
        common = (gP, tbe.weights_host, meta["weights_placements"], meta["weights_offsets"], meta["D_offsets"],
                  tbe.max_D, meta["hash_size_cumsum"], tbe.total_hash_size_bits, enc.tbe_indices, enc.tbe_offsets,
                  _SUM, None, False)
        with torch.no_grad():
            if backend.optimizer == "exact_sgd":
                torch.ops.fbgemm.split_embedding_backward_codegen_sgd_cpu(*common, tbe.learning_rate_tensor, 0)
            else:
                torch.ops.fbgemm.split_embedding_backward_codegen_rowwise_adagrad_cpu(
                    *common, tbe.momentum1_host, meta["momentum1_placements"], meta["momentum1_offsets"],
                    tbe.learning_rate_tensor, backend.eps, 0.0, 0, 0.0, 0)
        if taken is not None:
            ws.give(taken)


class FbgemmCollection(CollectionBackend):
    """Large component tables in one FBGEMM TBE (``tbe`` submodule), small ones in ``small_weight``."""

    name = "fbgemm"
    fused_optimizers = FUSED_OPTIMIZERS
    raw_input = True
    requires = "fbgemm_gpu.split_table_batched_embeddings_ops_training"

    def __init__(self, specs: Sequence[FeatureSpec], optimizer: Optional[str] = None, learning_rate: float = 0.01,
                 eps: float = 1e-8, sparse: bool = False) -> None:
        super().__init__(specs, optimizer, learning_rate, eps, sparse)
        self.plan = SmallTablePlan(self.specs)
        self.names = [s.name for s in self.specs]
        self.workspaces = _Workspaces()
        self._meta: Dict[Tuple[torch.device, Tuple[int, ...]], Dict[str, Any]] = {}
        self._placeholder = torch.zeros(0, requires_grad=True)
        self._nums: Dict[torch.device, torch.Tensor] = {}
        #: use the native kernels when they build (tests turn this off to check the torch path)
        self.use_native = True
        #: call FBGEMM's CPU operators directly with a fused optimizer (tests turn this off)
        self.use_cpu_ops = True

    @classmethod
    def unsupported_reason(
        cls, specs: Sequence[FeatureSpec], optimizer: Optional[str], device: torch.device
    ) -> Optional[str]:
        if optimizer is None:
            return None
        for spec in specs:
            if any(d % 4 for d in spec.widths):
                # padding would change row-wise Adagrad's mean over the row: refuse instead
                return (f"feature {spec.name!r}: optimizer={optimizer!r} needs component widths that are "
                        f"multiples of 4 (FBGEMM's row alignment), got widths {spec.widths}")
        return None

    # -- tables ---------------------------------------------------------------------------------
    def build(self, module: nn.Module, tables: Sequence[torch.Tensor], device: torch.device) -> None:
        plan = self.plan  # every feature has at least one table in the TBE
        module.tbe = _make_tbe(plan.tbe_shapes, self.optimizer, self.learning_rate, self.eps, device)
        small = torch.zeros(plan.small_numel, dtype=torch.float32, device=device)
        if self.optimizer is None:
            module.small_weight = nn.Parameter(small)
        else:
            module.register_buffer("small_weight", small)
        rows = sum(r for r, _ in plan.small_shapes)
        module.register_buffer("small_state", torch.zeros(rows if self.optimizer == "exact_rowwise_adagrad" else 0,
                                                          device=device))
        with torch.no_grad():
            for dst, src in zip(self.tables(module), tables):
                dst.copy_(src)

    def small_buffer(self, module: nn.Module) -> torch.Tensor:
        """The flat buffer of all small tables (a parameter without a fused optimizer)."""
        return cast(torch.Tensor, module.small_weight)

    def tables(self, module: nn.Module) -> List[torch.Tensor]:
        tbe_tables = list(_tbe(module).split_embedding_weights())
        small = self.plan.small_tables(self.small_buffer(module).detach())  # live views
        return [tbe_tables[i] if place == "tbe" else small[i] for place, i in self.plan.component_places()]

    def optimizer_states(self, module: nn.Module) -> List[torch.Tensor]:
        """Row-wise Adagrad's per-row sum of mean squared gradients, per component table."""
        if self.optimizer != "exact_rowwise_adagrad":
            return super().optimizer_states(module)
        tbe_states = [s[0] for s in _tbe(module).split_optimizer_states()]
        state = module.get_buffer("small_state")
        small: Dict[int, torch.Tensor] = {}
        row = 0
        j = 0
        for f, elem in enumerate(self.plan.small_elem):
            if elem >= 0:
                rows = self.plan.small_shapes[j][0]
                small[f] = state[row: row + rows]
                row += rows
                j += 1
        return [tbe_states[i] if place == "tbe" else small[i] for place, i in self.plan.component_places()]

    def apply_small(self, module: nn.Module, grad: torch.Tensor) -> None:
        """The fused optimizer's step on the small tables, from their gradient (flat layout)."""
        if grad.numel() == 0:
            return
        weight = self.small_buffer(module)
        with torch.no_grad():
            if self.optimizer == "exact_sgd":
                weight.sub_(grad, alpha=self.learning_rate)
                return
            state = module.get_buffer("small_state")
            row = 0
            for (rows, width), elem in zip(self.plan.small_shapes, (e for e in self.plan.small_elem if e >= 0)):
                g = grad[elem: elem + rows * width].view(rows, width)
                s = state[row: row + rows]
                s += g.pow(2).mean(1)
                weight[elem: elem + rows * width].view(rows, width).sub_(
                    g * (self.learning_rate / (s.sqrt() + self.eps)).unsqueeze(1))
                row += rows

    # -- lookup ---------------------------------------------------------------------------------
    def slot_meta(self, tbe: Any, slot_tables: Sequence[int]) -> Dict[str, Any]:
        """FBGEMM's per-feature arrays for a batch whose TBE features ("slots") map to these tables.

        On the TBE's device (cached per device: the module may move) and never inference tensors
        (the first lookup may run under ``torch.inference_mode()``, a later one under autograd).
        """
        hcum = tbe.hash_size_cumsum
        device = hcum.device
        key = (device, tuple(slot_tables))
        meta = self._meta.get(key)
        if meta is None:
            widths = [self.plan.tbe_shapes[t][1] for t in slot_tables]
            with torch.inference_mode(False):
                idx = torch.tensor(list(slot_tables), dtype=torch.long, device=device)
                D = torch.tensor([0] + widths, dtype=torch.int32, device=device).cumsum(0).to(torch.int32)
                meta = {
                    "weights_offsets": tbe.weights_offsets[idx].contiguous(),
                    "D_offsets": D,
                    "total_D": sum(widths),
                    "hash_size_cumsum": torch.cat([hcum[idx], hcum[-1:]]).contiguous(),
                }
                if hasattr(tbe, "weights_placements"):
                    meta["weights_placements"] = tbe.weights_placements[idx].contiguous()
                if self.optimizer == "exact_rowwise_adagrad":
                    meta["momentum1_offsets"] = tbe.momentum1_offsets[idx].contiguous()
                    meta["momentum1_placements"] = tbe.momentum1_placements[idx].contiguous()
            self._meta[key] = meta
        return meta

    def needs_compose(self, enc: EncodedBatch) -> bool:
        """Whether the TBE output is not already the collection output."""
        return (self.plan.general or any(m != MODE_PLAIN for m in enc.layout.modes)
                or any(s.mode == "mean" for s in self.specs))

    def _pack(self, bags: CollectionBags) -> PackedBags:
        """The input in the KeyedJaggedTensor layout (``owned``: a new tensor), its offset checks deferred."""
        if isinstance(bags, JaggedBags):
            values, offsets = bags.values, bags.offsets
            F = len(self.specs)
            if offsets.dim() != 1 or (offsets.numel() - 1) % F:
                raise ValueError(f"jagged offsets need {F} * B + 1 entries, got shape {tuple(offsets.shape)}")
            return PackedBags(values.reshape(-1).long(), offsets.long(), (offsets.numel() - 1) // F,
                              values.dtype != torch.long, [])
        return pack_deferred(self.names, bags)

    def _num_embeddings(self, device: torch.device) -> torch.Tensor:
        """Every feature's ``n`` on ``device`` (cached)."""
        n = self._nums.get(device)
        if n is None:
            with torch.inference_mode(False):
                n = self._nums[device] = torch.tensor([s.num_embeddings for s in self.specs], device=device)
        return n

    def _encode(self, packed: PackedBags, values: torch.Tensor, offsets: torch.Tensor,
                native: Optional[NativeKernels], owned: bool = False) -> EncodedBatch:
        """Check and encode ``values``/``offsets`` (``packed``'s, on the module's device)."""
        B = packed.batch
        N = values.numel()
        F = len(self.specs)
        nums = [s.num_embeddings for s in self.specs]
        if native is not None and values.device.type == "cpu":
            raise_failed(packed.checks)
            values, offsets = values.contiguous(), offsets.contiguous()
            bad, max_len = native.bag_lengths(offsets, F, B, N)
            if bad >= 0:
                bag_lengths(self.names, offsets, N, B)  # raises the error with its message
                raise ValueError(f"offsets are invalid at position {bad}")  # pragma: no cover
            self._refuse_general_multi_hot(max_len)
            bad, enc = native.encode(self.plan, values, offsets, B, max_len, in_place=owned)
            if bad >= 0:
                raise_out_of_range(self.names, nums, values, offsets, B, bad)
            return enc
        # one device read for every check, the longest bag of each feature and the features' bounds
        device = offsets.device
        flags = [flag.to(device) for flag, _ in packed.checks] + offsets_flags(offsets, N)
        out_of_range: Optional[torch.Tensor] = None
        if B and N:
            ends = offsets[B::B].contiguous()  # where every feature's indices end
            feat = torch.searchsorted(ends, torch.arange(N, device=device), right=True).clamp_(max=F - 1)
            out_of_range = (values < 0) | (values >= self._num_embeddings(device)[feat])
            flags.append(out_of_range.any())
        if B:
            longest = (offsets[1:] - offsets[:-1]).view(F, B).amax(1)
            bounds = offsets[::B]
        else:
            longest = bounds = torch.zeros(F + 1, dtype=torch.long, device=device)
            longest = longest[:F]
        read = torch.cat([torch.stack(flags).long(), longest, bounds]).tolist()
        nc, nf = len(packed.checks), len(flags)
        raise_failed(packed.checks, read[:nc])
        raise_bad_offsets(offsets, N, read[nc:nc + 3])
        max_len = read[nf:nf + F]
        self._refuse_general_multi_hot(max_len)
        if out_of_range is not None and read[nc + 3]:
            raise_out_of_range(self.names, nums, values, offsets, B, int(out_of_range.nonzero()[0, 0]))
        return encode_batch(self.plan, values, offsets, B, max_len, bounds=read[nf + F:])

    def _refuse_general_multi_hot(self, max_len: Sequence[int]) -> None:
        for spec, kind, L in zip(self.specs, self.plan.kinds, max_len):
            if kind == "general" and spec.operation == "mult" and spec.compose == "before_pool" and spec.k > 1 \
                    and L > 1:
                why = (f"the remainder-class split serves two tables, got k={spec.k}" if spec.k != 2 else
                       f"the remainder-class split serves a smaller table of at most {MAX_SPLIT_ROWS} rows, got "
                       f"{min(spec.family.table_sizes)}")
                raise ValueError(
                    f"feature {spec.name!r}: operation='mult' with compose='before_pool' is exact on FBGEMM for "
                    f"multi-hot bags only by the remainder-class split ({why}); got a bag of {L} indices "
                    "(use compose='after_pool' or backend='torch')")

    def lookup(
        self, module: nn.Module, bags: LookupInput, concat: bool, validate: bool
    ) -> Union[torch.Tensor, List[torch.Tensor]]:
        # every index is checked whatever `validate` says: the native kernels must not read out of bounds
        packed = self._pack(cast(CollectionBags, bags))
        device = self.small_buffer(module).device
        owned = packed.owned and packed.values.device == device
        values, offsets = packed.values.to(device), packed.offsets.to(device)
        on_cpu = device.type == "cpu"
        fused_cpu = on_cpu and self.optimizer is not None and self.use_cpu_ops and _cpu_ops_reason() is None
        native = native_kernels() if (self.use_native and on_cpu and NativeKernels.serves(self.plan)) else None
        enc = self._encode(packed, values, offsets, native, owned)
        if fused_cpu:
            save = torch.is_grad_enabled()
            out = _FusedCpuLookup.apply(self._placeholder, _Step(self, module, enc, native, save))
        else:
            out = self._module_lookup(module, enc)
        return out if concat else list(torch.split(out, self.plan.dims, dim=1))

    def _module_lookup(self, module: nn.Module, enc: EncodedBatch) -> torch.Tensor:
        """Any device, any optimizer: the TBE module (or its dense op) and the composition in torch."""
        small_param = self.small_buffer(module)
        tbe = _tbe(module)
        if self.optimizer is None:
            P = self._dense_lookup(tbe, enc)
        elif enc.layout.slot_tables == list(range(len(self.plan.tbe_shapes))):
            P = tbe(enc.tbe_indices, enc.tbe_offsets)
        else:
            raise ValueError("the remainder-class split (multi-hot bags of 'mult' composed before pooling) "
                             "with a fused optimizer needs FBGEMM's CPU operators: run the collection on CPU")
        if not self.needs_compose(enc):
            return P
        if self.optimizer is None:
            return compose_forward(self.plan, enc, P, self.plan.small_tables(small_param))
        leaf = small_param.detach().requires_grad_()

        def step(t: torch.Tensor) -> None:
            if t.grad is not None:
                self.apply_small(module, t.grad)
                t.grad = None

        leaf.register_post_accumulate_grad_hook(step)
        return compose_forward(self.plan, enc, P, self.plan.small_tables(leaf))

    def _dense_lookup(self, tbe: Any, enc: EncodedBatch) -> torch.Tensor:
        meta = self.slot_meta(tbe, enc.layout.slot_tables)
        return dense_tbe_lookup(tbe, tbe.weights, enc.tbe_indices, enc.tbe_offsets, _SUM, tables=meta)
