"""Optional fused C kernels for the FBGEMM collection's small tables (``_native.c``), with the torch fallback.

The kernels encode every feature's indices in one pass (checking them), and compose the TBE's
pooled output with the small tables (and back) in one pass each, instead of the handful of
PyTorch ops per pass and feature that :mod:`compemb.kernels._small_tables` uses. They are
compiled on first use with the system C compiler (``$CC`` or ``cc``, well under a second) into
``$COMPEMB_NATIVE_CACHE`` (default ``~/.cache/compemb/native``), keyed by the source, the compiler
and the CPU, and loaded with :mod:`ctypes`: there is nothing to build at install time. Without a
compiler, or with ``COMPEMB_NATIVE=0``, :func:`native_kernels` returns ``None`` and the collection
uses the PyTorch implementation (same results, slower); :func:`native_unavailable_reason` says why.

Example::

    >>> kernels = native_kernels()
    >>> kernels is None or callable(kernels.encode)
    True
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from compemb.kernels._small_tables import (
    MAX_INDEX,
    BatchLayout,
    EncodedBatch,
    SmallTablePlan,
)

__all__ = ["NativeKernels", "native_kernels", "native_unavailable_reason", "ENV_DISABLE", "ENV_CACHE"]

#: ``COMPEMB_NATIVE=0`` disables the native kernels (the PyTorch implementation is used)
ENV_DISABLE = "COMPEMB_NATIVE"
#: where compiled kernels are cached
ENV_CACHE = "COMPEMB_NATIVE_CACHE"

_SOURCE = Path(__file__).with_name("_native.c")
_LOCK = threading.Lock()
_STATE: Dict[str, object] = {}

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES = {
    "cemb_encode": ([_P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _P, _I, _P], _I),
    "cemb_split_layout": ([_P, _P, _P, _I, _I, _P, _P, _P, _P, _P], None),
    "cemb_compose_forward": ([_P, _I, _P, _I, _P, _P, _I, _P, _I, _P, _I, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P,
                              _P, _P, _P], None),
    "cemb_compose_backward": ([_P, _I, _P, _I, _P, _P, _P, _P, _I, _P, _I, _P, _I, _P, _I, _I, _P, _P, _P, _P, _P,
                               _P, _P, _P, _P, _P], None),
    "cemb_bag_lengths": ([_P, _I, _I, _I, _P], _I),
}


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compiler() -> Tuple[List[str], str]:
    cc = os.environ.get("CC", "cc").split()
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"no C compiler ({' '.join(cc)}: {exc})") from exc
    return cc, version.splitlines()[0] if version else ""


def _build() -> ctypes.CDLL:
    source = _SOURCE.read_bytes()
    cc, version = _compiler()
    key = hashlib.sha256(source + version.encode() + _cpu_signature().encode() + platform.machine().encode())
    cache = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "compemb" / "native")
    target = cache / f"compemb_native_{key.hexdigest()[:16]}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        errors = []
        for flags in (["-O3", "-march=native"], ["-O3"]):
            proc = subprocess.run(cc + flags + ["-shared", "-fPIC", "-o", tmp, str(_SOURCE)],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                break
            errors.append(proc.stderr.strip()[-300:])
        else:
            os.unlink(tmp)
            raise RuntimeError(f"{' '.join(cc)} failed: {errors[-1]}")
        os.replace(tmp, target)  # atomic: concurrent builders each install a complete file
    lib = ctypes.CDLL(str(target))
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    return lib


def native_kernels() -> Optional["NativeKernels"]:
    """The compiled kernels, building them on first use; ``None`` when unavailable (see the reason)."""
    if "kernels" in _STATE:
        return _STATE["kernels"]  # type: ignore[return-value]
    with _LOCK:
        if "kernels" not in _STATE:
            kernels: Optional[NativeKernels] = None
            if os.environ.get(ENV_DISABLE, "1") == "0":
                _STATE["reason"] = f"disabled by {ENV_DISABLE}=0"
            else:
                try:
                    kernels = NativeKernels(_build())
                except Exception as exc:  # no compiler, a failed build or load: use the torch path
                    _STATE["reason"] = f"{type(exc).__name__}: {exc}"
            _STATE["kernels"] = kernels
    return _STATE["kernels"]  # type: ignore[return-value]


def native_unavailable_reason() -> Optional[str]:
    """``None`` when :func:`native_kernels` serves, else why not."""
    native_kernels()
    return _STATE.get("reason")  # type: ignore[return-value]


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _i64(values: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


def _reciprocals(divisors: torch.Tensor) -> torch.Tensor:
    """``1 / d`` in double precision (0 where ``d`` is 0: no division), for the kernels' ``fdiv``."""
    return torch.tensor([1.0 / v if v > 0 else 0.0 for v in divisors.tolist()], dtype=torch.float64)


class _PlanArrays:
    """The per-feature argument arrays of one plan and batch layout (built once, cached on the plan)."""

    def __init__(self, plan: SmallTablePlan, lay: BatchLayout) -> None:
        feats, specs = plan.features, plan.specs
        self.mode = _i64(lay.modes)
        self.n = _i64([s.num_embeddings for s in specs])
        self.lp = _i64([f.large_form[0] for f in feats])
        self.lm = _i64([f.large_form[2] for f in feats])
        self.sp = _i64([f.small_form[0] for f in feats])
        self.sm = _i64([f.small_form[2] for f in feats])
        self.lpinv, self.lminv, self.spinv, self.sminv = (_reciprocals(t) for t in (self.lp, self.lm, self.sp, self.sm))
        self.ccol = _i64([c if c >= 0 else n for c, n in zip(lay.cls_cols, lay.cnt_cols)])
        self.op = _i64([1 if s.operation == "mult" else 0 for s in specs])
        self.mean = _i64([1 if s.mode == "mean" else 0 for s in specs])
        self.d = _i64(plan.dims)
        self.m = _i64([s.family.table_sizes[f.small] if f.small >= 0 else 0 for s, f in zip(specs, feats)])
        self.pcol = _i64(lay.p_cols)
        self.ocol = _i64(plan.out_cols)
        self.relem = _i64([max(e, 0) for e in plan.small_elem])
        self.scol = _i64(lay.s_cols)
        self.slot_base = _i64(lay.slot_base)
        self.inplace = not lay.split and lay.p_cols == plan.out_cols


class NativeKernels:
    """ctypes bindings of ``_native.c``; the arguments mirror :mod:`compemb.kernels._small_tables`."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    @staticmethod
    def serves(plan: SmallTablePlan) -> bool:
        """Whether the kernels serve ``plan`` (no general features, indices below 2**52, d <= 1024)."""
        return not plan.general and plan.max_index <= MAX_INDEX and max(plan.dims) <= 1024

    def arrays(self, plan: SmallTablePlan, lay: BatchLayout) -> _PlanArrays:
        key = ("native", lay.modes)
        arr = plan.cache.get(key)
        if arr is None:
            arr = plan.cache[key] = _PlanArrays(plan, lay)
        return arr  # type: ignore[return-value]

    def bag_lengths(self, offsets: torch.Tensor, num_features: int, batch: int, count: int) -> Tuple[int, List[int]]:
        """``(-1 or the first offset at fault, the largest bag of every feature)``."""
        out = torch.zeros(num_features, dtype=torch.int64)
        bad = self.lib.cemb_bag_lengths(offsets.data_ptr(), num_features, batch, count, out.data_ptr())
        return int(bad), out.tolist()

    def encode(self, plan: SmallTablePlan, values: torch.Tensor, offsets: torch.Tensor, batch: int,
               max_len: Sequence[int], in_place: bool = False) -> Tuple[int, EncodedBatch]:
        """``(-1 or the position of the first index out of range, the encoded batch)``.

        ``in_place``: ``values`` belongs to the caller alone and may be overwritten by the codes
        (an index out of range keeps its value, for the error message).
        """
        lay = plan.layout(plan.batch_modes(max_len))
        a = self.arrays(plan, lay)
        B, F = batch, len(plan.specs)
        N = values.numel()
        code = values if in_place else torch.empty(N, dtype=torch.int64)
        cls = torch.empty((B, lay.ld_cls), dtype=torch.int32)
        cnt = torch.zeros((B, lay.ld_cnt), dtype=torch.float32)
        vcls = torch.empty(N if any(lay.modes) else 0, dtype=torch.int32)
        bad = self.lib.cemb_encode(
            values.data_ptr(), offsets.data_ptr(), F, B, a.mode.data_ptr(), a.n.data_ptr(),
            a.lp.data_ptr(), a.lpinv.data_ptr(), a.lm.data_ptr(), a.lminv.data_ptr(),
            a.sp.data_ptr(), a.spinv.data_ptr(), a.sm.data_ptr(), a.sminv.data_ptr(),
            a.ccol.data_ptr(), code.data_ptr(), cls.data_ptr(), max(lay.ld_cls, 1), cnt.data_ptr(), max(lay.ld_cnt, 1),
            vcls.data_ptr())
        if not lay.split:
            return int(bad), EncodedBatch(lay, B, code, offsets, offsets, cls, cnt)
        if bad >= 0:
            return int(bad), EncodedBatch(lay, B, code, offsets, offsets, cls, cnt)
        tbe_idx = torch.empty(N, dtype=torch.int64)
        tbe_off = torch.empty(lay.slot_base[-1] * B + 1, dtype=torch.int64)
        self.lib.cemb_split_layout(code.data_ptr(), vcls.data_ptr(), offsets.data_ptr(), F, B, a.mode.data_ptr(),
                                   a.m.data_ptr(), a.slot_base.data_ptr(), tbe_idx.data_ptr(), tbe_off.data_ptr())
        return -1, EncodedBatch(lay, B, tbe_idx, tbe_off, offsets, cls, cnt)

    def inplace(self, plan: SmallTablePlan, enc: EncodedBatch) -> bool:
        """Whether the composition can overwrite the TBE output (no split feature)."""
        return self.arrays(plan, enc.layout).inplace

    def compose_forward(self, plan: SmallTablePlan, enc: EncodedBatch, P: torch.Tensor, out: torch.Tensor,
                        small: torch.Tensor, saved: Optional[torch.Tensor]) -> None:
        """``out`` (may be ``P``) from ``P`` and the flat small buffer; ``saved``: see ``_native.c``."""
        lay = enc.layout
        a = self.arrays(plan, lay)
        self.lib.cemb_compose_forward(
            P.data_ptr(), P.shape[1], out.data_ptr(), out.shape[1], _ptr(small) if small.numel() else None,
            enc.cls.data_ptr(), max(lay.ld_cls, 1), enc.cnt.data_ptr(), max(lay.ld_cnt, 1),
            _ptr(saved), max(lay.ld_s, 1), enc.offsets.data_ptr(), len(plan.specs), enc.batch,
            a.mode.data_ptr(), a.op.data_ptr(), a.mean.data_ptr(), a.d.data_ptr(), a.m.data_ptr(),
            a.pcol.data_ptr(), a.ocol.data_ptr(), a.relem.data_ptr(), a.ccol.data_ptr(), a.scol.data_ptr())

    def compose_backward(self, plan: SmallTablePlan, enc: EncodedBatch, grad: torch.Tensor, gP: torch.Tensor,
                         P: torch.Tensor, small: torch.Tensor, g_small: torch.Tensor,
                         saved: Optional[torch.Tensor]) -> None:
        """``gP`` (overwritten) and ``g_small`` (accumulated) from the output gradient ``grad``."""
        lay = enc.layout
        a = self.arrays(plan, lay)
        self.lib.cemb_compose_backward(
            grad.data_ptr(), grad.shape[1], gP.data_ptr(), gP.shape[1], P.data_ptr(),
            _ptr(small) if small.numel() else None, _ptr(g_small) if g_small.numel() else None,
            enc.cls.data_ptr(), max(lay.ld_cls, 1), enc.cnt.data_ptr(), max(lay.ld_cnt, 1),
            _ptr(saved), max(lay.ld_s, 1), enc.offsets.data_ptr(), len(plan.specs), enc.batch,
            a.mode.data_ptr(), a.op.data_ptr(), a.mean.data_ptr(), a.d.data_ptr(), a.m.data_ptr(),
            a.pcol.data_ptr(), a.ocol.data_ptr(), a.relem.data_ptr(), a.ccol.data_ptr(), a.scol.data_ptr())

