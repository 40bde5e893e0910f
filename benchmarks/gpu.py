"""GPU benchmark: fused Triton compositional embedding bags vs torch, at Criteo Kaggle scale.

Run on one CUDA GPU from the repository root (about 2 minutes, under 5 with table building;
``--full`` for the whole grid)::

    PYTHONPATH=. python3 benchmarks/gpu.py            # writes $OUT/gpu_bench.txt too, if $OUT is set
    PYTHONPATH=. python3 benchmarks/gpu.py --dry-run-cpu   # tiny sizes under TRITON_INTERPRET=1

Three steps: (1) correctness of the per-table and the table-batched Triton kernels against the
torch reference (forward, gradients, the fused exact-SGD step), the table-batched kernel's int64
index path (a feature of more than 2**31 categories) and, on CUDA, the collection's "one device
sync" claim (``validate=False`` runs under ``torch.cuda.set_sync_debug_mode("error")``,
``validate=True`` adds one sync); ``tests/test_gpu.py`` runs the same checks at small sizes;
(2) median times of forward and forward+backward over the 26 Criteo Kaggle tables: full tables,
the reference DLRM QR module, compemb QR on torch, per-table Triton, the table-batched Triton
kernel over the QR and over the full tables (dense gradients and fused SGD, each also without the
backward's pre-reduction of small tables: old against new in one run); (3) a report: ratios
against the full tables and the DLRM QR module, bandwidth against the copy bandwidth, the goals,
the pre-reduction A/B and the summary of QR against full tables per (d, hot). FBGEMM is left
out: its CUDA build cannot be installed on the GPU machine. Only public names of compemb are
used. ``docs/architecture.md`` lists every row; results go to ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

DRY = "--dry-run-cpu" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compemb import kernels  # noqa: E402
from _common import markdown_rule  # noqa: E402
from gpu_workloads import (  # noqa: E402
    BWD_TOL,
    CRITEO,
    FWD_TOL,
    NO_PRE_REDUCE,
    TBE,
    Workload,
    fwd_bwd,
    int64_index_check,
    make_full,
    make_qr,
    per_table_errors,
    qr_codes,
    rel_err,
    run_compemb_torch,
    run_compemb_triton,
    run_dlrm_qr,
    run_full,
    sgd_step_full,
    sync_check,
    tbe_errors,
)

TRITON_ERROR = kernels.get_collection_backend("triton").unavailable_reason()
LINES = []


def say(msg=""):
    print(msg, flush=True)
    LINES.append(msg)


#: why there are no FBGEMM rows
FBGEMM_OUT = "FBGEMM's CUDA build (fbgemm-gpu) cannot be installed on the GPU machine: its rows are left out"


# -- timing -------------------------------------------------------------------------------------
def bench_ms(fn, grads=None):
    """Median milliseconds of ``fn()``; CUDA: triton.testing.do_bench (CUDA events)."""
    if torch.cuda.is_available() and not DRY:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=60, grad_to_none=grads, return_mode="median")
    times = []
    for _ in range(3):
        if grads:
            for g in grads:
                g.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def copy_bandwidth_gbs(device):
    n = (1 << 28) if device.type == "cuda" else (1 << 20)  # 1 GiB of fp32 on the GPU
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * n * 4 / (ms * 1e-3) / 1e9  # read + write


# -- 1. correctness -----------------------------------------------------------------------------
def check_per_table(device, sizes, d, B, gen):
    say("## correctness: triton vs torch reference (fp32)")
    ok_all = True
    for L in (1, 20):
        w = Workload(sizes, d, B, L, device, gen)
        qr = make_qr(sizes, d, device)
        for compose in ("before_pool", "after_pool"):
            fwd_err, bwd_err = per_table_errors(w, qr, compose, gen)
            ok = fwd_err < FWD_TOL and bwd_err < BWD_TOL
            ok_all &= ok
            say(f"  {L:>2}-hot {compose:<11}: forward max rel err {fwd_err:.2e}, gradients {bwd_err:.2e}  "
                f"{'PASS' if ok else 'FAIL'}")
        del qr, w
    # deterministic backward equals the atomic one and repeats bit for bit
    w = Workload(sizes, d, B, 20, device, gen)
    qr = make_qr(sizes[:4], d, device)
    w.sizes, w.inputs = sizes[:4], w.inputs[:4]
    params = [p for pair in qr for p in pair]
    runs = []
    for det in (True, True, False):
        outs = [kernels.triton_embedding_bag(qr_codes(x, n), w.offsets, t, "mult", "sum", deterministic=det)
                for x, n, t in zip(w.inputs, w.sizes, qr)]
        runs.append(torch.autograd.grad(outs, params, [torch.ones_like(o) for o in outs]))
    same = all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    close = max(rel_err(a, b) for a, b in zip(runs[0], runs[2]))
    ok_all &= same and close < BWD_TOL
    say(f"  deterministic backward: bitwise repeatable {same}, vs atomics max rel err {close:.2e}")
    return ok_all


def check_tbe(device, sizes, d, B, gen):
    """The table-batched kernel (all features, one launch) against the per-feature reference."""
    say("## correctness: triton TBE (all features, one launch) vs torch reference (fp32)")
    ok_all = True
    lr = 0.1
    for L in (1, 20):
        w = Workload(sizes, d, B, L, device, gen)
        qr = make_qr(sizes, d, device)
        tbe = TBE(sizes, d, device, qr=qr, lr=lr)
        kjt = tbe.kjt(w)
        errs = tbe_errors(w, qr, tbe, gen)
        fwd_err = errs.pop("forward")
        bwd_err = max(e[0] for e in errs.values())
        sgd_err = max(e[1] for e in errs.values())
        scratch_zero = all(e[2] for e in errs.values())
        ok = fwd_err < FWD_TOL and bwd_err < BWD_TOL and sgd_err < BWD_TOL and scratch_zero
        raised = "n/a"
        if L == 1:  # an out-of-range index is reported with its feature, value and n
            f = max(range(len(sizes)), key=lambda i: sizes[i])
            bad = kjt[0].clone()
            bad[f * B * L] = sizes[f]
            try:
                tbe.forward((bad, kjt[1]), validate=True)
                raised = "NOT raised"
                ok = False
            except IndexError as exc:
                raised = "raised" if f"C{f}" in str(exc) and str(sizes[f]) in str(exc) else f"wrong message: {exc}"
                ok &= raised == "raised"
        ok_all &= ok
        say(f"  {L:>2}-hot, {len(sizes)} features: forward max rel err {fwd_err:.2e}, dense gradient {bwd_err:.2e}, "
            f"fused SGD step {sgd_err:.2e} (worst of pre-reduced and per-index-atomic backward), "
            f"scratch left zero {scratch_zero}, validation error {raised}  {'PASS' if ok else 'FAIL'}")
        del qr, w, tbe
    return ok_all


# -- 2. timings ---------------------------------------------------------------------------------
#: (label, component rows read per index), in the order of the table
METHODS = [
    ("full nn.EmbeddingBag", 1),
    ("full EmbeddingBag + SGD", 1),
    ("DLRM QR (2 pooled bags)", 2),
    ("compemb QR torch", 2),
    ("compemb QR triton", 2),
    ("compemb QR triton, no pre-reduce", 2),
    ("QR triton TBE", 2),
    ("QR triton TBE (no pre-reduce)", 2),
    ("QR triton TBE + SGD", 2),
    ("QR TBE + SGD (no pre-reduce)", 2),
    ("QR TBE validate=True", 2),
    ("full triton TBE", 1),
    ("full triton TBE + SGD", 1),
    ("full TBE + SGD (no pre-reduce)", 1),
]
#: the pre-reduction A/B: (pre-reduced label, per-index-atomics label)
AB_PAIRS = [("compemb QR triton", "compemb QR triton, no pre-reduce"),
            ("QR triton TBE", "QR triton TBE (no pre-reduce)"),
            ("QR triton TBE + SGD", "QR TBE + SGD (no pre-reduce)"),
            ("full triton TBE + SGD", "full TBE + SGD (no pre-reduce)")]


@dataclass
class Setup:
    """What one run measures: the device, the tables and the (d, batch, hot) grid."""

    device: torch.device
    sizes: List[int]
    configs: List[Tuple[int, int, int]]
    check: dict
    check_tbe: dict
    sweep: Tuple[int, int, int]
    budget_s: float
    t_start: float = field(default_factory=time.time)

    def over_budget(self) -> bool:
        return time.time() - self.t_start > self.budget_s


@dataclass
class Timings:
    """``results[(d, B, L, label)] = (fwd ms, fwd+bwd ms, fwd GB/s)``, and what was skipped."""

    results: Dict[Tuple[int, int, int, str], Tuple[float, float, float]] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run-cpu", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--full", action="store_true", help="the whole grid: batch 2048 too")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new configuration (nor the block sweep) after this many seconds "
                             "(default 150 on the GPU; none for --dry-run-cpu, which must run every row)")
    return parser.parse_args(argv)


def make_setup(args: argparse.Namespace) -> Optional[Setup]:
    """The grid for ``args``; ``None`` when a GPU run finds no CUDA device."""
    budget = args.budget_s if args.budget_s is not None else float("inf") if args.dry_run_cpu else 150.0
    if args.dry_run_cpu:
        sizes = [min(n, 500) for n in CRITEO[:6]]
        return Setup(torch.device("cpu"), sizes, [(4, 8, 1), (4, 8, 3), (8, 8, 3)],
                     check=dict(sizes=sizes[:3], d=4, B=8),
                     check_tbe=dict(sizes=[min(n, 500) for n in CRITEO], d=4, B=4), sweep=(8, 16, 3),
                     budget_s=budget)
    if not torch.cuda.is_available():
        return None
    batches = (2048, 16384) if args.full else (16384,)
    # the goals' configuration first, in case the time budget cuts the rest
    configs = [(d, B, L) for d in (64, 16) for B in batches for L in (20, 1)]
    big = sorted(CRITEO, reverse=True)[:4] + [3, 24]
    return Setup(torch.device("cuda"), CRITEO, configs, check=dict(sizes=big, d=16, B=2048),
                 check_tbe=dict(sizes=CRITEO, d=16, B=2048), sweep=(64, 16384, 20), budget_s=budget)


def check_int64_and_syncs(device, gen: torch.Generator) -> bool:
    """The int64 index path of the table-batched kernel, and (CUDA) the device syncs of a lookup."""
    say("## correctness: int64 index path, device syncs")
    fwd_err, bwd_err, idx32 = int64_index_check(device, gen=gen)
    ok = fwd_err < 1e-5 and bwd_err < 1e-4 and not idx32
    say(f"  n = 3,000,000,017 (indices above 2**31): layout.idx32={idx32}, forward max rel err {fwd_err:.2e}, "
        f"gradient {bwd_err:.2e}  {'PASS' if ok else 'FAIL'}")
    if device.type != "cuda":
        say("  device syncs: not checked on CPU")
        return ok
    try:
        with_check, without = sync_check(device, gen=gen)
        sync_ok = with_check == 1 and without == 0
        detail = f"validate=True: {with_check} sync(s), validate=False: {without} (and none under 'error' mode)"
    except RuntimeError as exc:  # set_sync_debug_mode("error") raised: validate=False synced
        sync_ok, detail = False, f"validate=False synchronised: {str(exc)[:120]}"
    say(f"  triton collection forward + fused-SGD backward: {detail}  {'PASS' if sync_ok else 'FAIL'}")
    return ok and sync_ok


def check_all(setup: Setup, gen: torch.Generator) -> bool:
    """Step 1: both Triton paths against the torch reference, the int64 path and the syncs."""
    ok = check_per_table(setup.device, gen=gen, **setup.check)
    ok &= check_tbe(setup.device, gen=gen, **setup.check_tbe)
    ok &= check_int64_and_syncs(setup.device, gen)
    say(f"correctness: {'PASS' if ok else 'FAIL'}  ({time.time() - setup.t_start:.0f} s)")
    return ok


def build_state(setup: Setup, d: int) -> dict:
    """Tables, optimizers and lookups of width ``d``, shared by every (batch, hot) at that width."""
    device, sizes = setup.device, setup.sizes
    if device.type == "cuda":
        torch.cuda.empty_cache()
    full = make_full(sizes, d, device)
    qr = make_qr(sizes, d, device)
    tbe_full = TBE(sizes, d, device, full=True)
    # the dense-gradient twin of the full-table TBE (its fused-SGD weight is trained in place)
    tbe_full_dense = TBE(sizes, d, device, full=True)
    tbe_full_dense.weight.requires_grad_(True)
    state = dict(d=d, full=full, qr=qr, qr_params=[p for pair in qr for p in pair],
                 opt=torch.optim.SGD(full, lr=1e-3), tbe=TBE(sizes, d, device, qr=qr),
                 tbe_full=tbe_full, tbe_full_dense=tbe_full_dense)
    return state


def runners(state: dict, w: Workload, kjt: tuple) -> dict:
    """label -> (forward, forward+backward or None (default) or "skip", tensors whose .grad to reset)."""
    full, qr, qr_params = state["full"], state["qr"], state["qr_params"]
    tbe, tbe_full, tbe_full_dense = state["tbe"], state["tbe_full"], state["tbe_full_dense"]
    out = {
        "full nn.EmbeddingBag": (lambda: run_full(w, full), None, full),
        "full EmbeddingBag + SGD": (lambda: run_full(w, full), lambda: sgd_step_full(w, full, state["opt"]), full),
        "DLRM QR (2 pooled bags)": (lambda: run_dlrm_qr(w, qr), None, qr_params),
        "compemb QR torch": (lambda: run_compemb_torch(w, qr), None, qr_params),
        "compemb QR triton": (lambda: run_compemb_triton(w, qr), None, qr_params),
        "compemb QR triton, no pre-reduce": (
            lambda: run_compemb_triton(w, qr),
            lambda: fwd_bwd(lambda: run_compemb_triton(w, qr, pre_reduce=False)), qr_params),
        "QR triton TBE": (lambda: tbe.forward(kjt), None, [tbe.weight]),
        "QR triton TBE (no pre-reduce)": (lambda: tbe.forward(kjt),
                                          lambda: fwd_bwd(lambda: tbe.forward(kjt, **NO_PRE_REDUCE)), [tbe.weight]),
        "QR triton TBE + SGD": (lambda: tbe.forward_sgd(kjt), None, None),
        "QR TBE + SGD (no pre-reduce)": (lambda: tbe.forward_sgd(kjt),
                                         lambda: fwd_bwd(lambda: tbe.forward_sgd(kjt, **NO_PRE_REDUCE)), None),
        "QR TBE validate=True": (lambda: tbe.forward(kjt, validate=True), "skip", None),
        "full triton TBE": (lambda: tbe_full_dense.forward(kjt), None, [tbe_full_dense.weight]),
        "full triton TBE + SGD": (lambda: tbe_full.forward_sgd(kjt), None, None),
        # the full tables of 3, 4, 10 and 15 rows are pre-reduced too (SMALL_ROWS = 16)
        "full TBE + SGD (no pre-reduce)": (lambda: tbe_full.forward_sgd(kjt),
                                           lambda: fwd_bwd(lambda: tbe_full.forward_sgd(kjt, **NO_PRE_REDUCE)), None),
    }
    return out


def time_config(state: dict, w: Workload, kjt: tuple) -> dict:
    """label -> (fwd ms, fwd+bwd ms, fwd GB/s), an error string, or None (not run)."""
    available = runners(state, w, kjt)
    rows = {}
    for label, rows_per_index in METHODS:
        if label not in available:
            rows[label] = None
            continue
        fn, fb_fn, params = available[label]
        try:
            with torch.no_grad():
                f_ms = bench_ms(fn)
            fb_ms = float("nan") if fb_fn == "skip" else bench_ms(fb_fn or (lambda: fwd_bwd(fn)), grads=params)
            rows[label] = (f_ms, fb_ms, w.useful_bytes(rows_per_index) / (f_ms * 1e-3) / 1e9)
        except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover
            rows[label] = f"out of memory: {str(exc)[:60]}"
            torch.cuda.empty_cache()
    return rows


def print_rows(d: int, B: int, L: int, rows: dict, bw: float) -> None:
    base_f, base_fb = rows["full nn.EmbeddingBag"][0], rows["full nn.EmbeddingBag"][1]
    dlrm_f = rows["DLRM QR (2 pooled bags)"][0]
    for label, _ in METHODS:
        r = rows[label]
        if r is None:
            say(f"| {d:>3} | {B:>6} | {L:>3} | {label:<32} | not run")
        elif isinstance(r, str):
            say(f"| {d:>3} | {B:>6} | {L:>3} | {label:<32} | {r}")
        else:
            f_ms, fb_ms, gbs = r
            say(f"| {d:>3} | {B:>6} | {L:>3} | {label:<32} | {f_ms:8.3f} | {fb_ms:10.3f} | "
                f"{base_f / f_ms:10.2f} | {dlrm_f / f_ms:13.2f} | {base_fb / fb_ms:10.2f} | "
                f"{gbs:8.0f} | {100 * gbs / bw:5.0f}% |")


def time_all(setup: Setup, gen: torch.Generator, bw: float, timings: Timings) -> None:
    """Step 2: every method at every (d, batch, hot) of the grid, within the time budget."""
    header = (f"| {'d':>3} | {'batch':>6} | {'hot':>3} | {'method':<32} | {'fwd ms':>8} | {'fwd+bwd ms':>10} | "
              f"{'fwd x full':>10} | {'fwd x DLRM-QR':>13} | {'f+b x full':>10} | {'fwd GB/s':>8} | {'% copy':>6} |")
    say(header)
    say(markdown_rule(header))
    state: dict = {}
    for d, B, L in setup.configs:
        if setup.over_budget():
            timings.skipped.append(f"d={d} B={B} {L}-hot (time budget)")
            continue
        if state.get("d") != d:
            state.clear()
            state = build_state(setup, d)
        w = Workload(setup.sizes, d, B, L, setup.device, gen)
        rows = time_config(state, w, state["tbe"].kjt(w))
        for label, r in rows.items():
            if isinstance(r, tuple):
                timings.results[(d, B, L, label)] = r
        print_rows(d, B, L, rows, bw)
        del w
    state.clear()
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()


def block_sweep(setup: Setup, gen: torch.Generator, timings: Timings) -> None:
    """Bags per program of the table-batched forward (the default is picked from d and k), and
    the default without the next-index prefetch."""
    if setup.over_budget():
        timings.skipped.append("block_b sweep (time budget)")
        return
    d, B, L = setup.sweep
    qr = make_qr(setup.sizes, d, setup.device)
    tbe = TBE(setup.sizes, d, setup.device, qr=qr)
    kjt = tbe.kjt(Workload(setup.sizes, d, B, L, setup.device, gen))
    parts = []
    for block_b in (8, 16, 32, 64):
        with torch.no_grad():
            ms = bench_ms(lambda: tbe.forward(kjt, block_b=block_b))
        parts.append(f"block_b={block_b}: {ms:.3f} ms")
    with torch.no_grad():
        ms = bench_ms(lambda: tbe.forward(kjt, prefetch_indices=False))
    parts.append(f"default block_b without index prefetch: {ms:.3f} ms")
    say(f"QR triton TBE forward, d={d} B={B} {L}-hot: " + ", ".join(parts))


# -- 3. report ----------------------------------------------------------------------------------
def report_goals(setup: Setup, timings: Timings, bw: float) -> None:
    say("## goals (issue 4)")
    results = timings.results
    for (d, B, L, label), (f_ms, fb_ms, gbs) in sorted(results.items()):
        if label not in ("compemb QR triton", "QR triton TBE"):
            continue
        dl = results.get((d, B, L, "DLRM QR (2 pooled bags)"))
        full_sgd = results.get((d, B, L, "full EmbeddingBag + SGD"))
        tri_full = results.get((d, B, L, "full triton TBE + SGD"))
        mine = results.get((d, B, L, "QR triton TBE + SGD")) if label == "QR triton TBE" else None
        step = mine[1] if mine else fb_ms
        parts = []
        if L > 1 and dl:
            x = dl[0] / f_ms
            parts.append(f"fwd {x:.2f}x the two-pooled-bags QR (goal >= 2): {'met' if x >= 2 else 'NOT met'}")
        if B == max(c[1] for c in setup.configs):
            parts.append(f"fwd at {100 * gbs / bw:.0f}% of copy bandwidth (goal >= 60%): "
                         f"{'met' if gbs >= 0.6 * bw else 'NOT met'}")
        if tri_full:
            parts.append(f"training step {tri_full[1] / step:.2f}x the triton TBE over full tables (fused SGD)")
        if full_sgd:
            parts.append(f"{full_sgd[1] / step:.2f}x full nn.EmbeddingBag + sparse SGD step")
        say(f"  {label}, d={d} B={B} {L}-hot: " + "; ".join(parts))


def report_pre_reduce_ab(setup: Setup, timings: Timings) -> None:
    say("## backward A/B: per-program pre-reduction of the small tables vs one atomic per index (fwd+bwd ms)")
    for d, B, L in setup.configs:
        parts = []
        for new_label, old_label in AB_PAIRS:
            a, b = timings.results.get((d, B, L, new_label)), timings.results.get((d, B, L, old_label))
            if a and b:
                parts.append(f"{new_label}: {b[1]:.3f} ms per-index atomics, {a[1]:.3f} ms pre-reduced "
                             f"(speed-up {b[1] / a[1]:.2f}x)")
        if parts:
            say(f"  d={d} B={B} {L}-hot: " + "; ".join(parts))


#: the summary of issue 12: (label, QR row, full-table row); fwd+bwd ms of each, ratio full / QR
QR_VS_FULL = [
    ("fwd+bwd, dense gradients", "QR triton TBE", "full triton TBE"),
    ("fwd+bwd, dense gradients, old backward", "QR triton TBE (no pre-reduce)", "full triton TBE"),
    ("fwd+bwd + fused exact SGD", "QR triton TBE + SGD", "full triton TBE + SGD"),
    ("fwd+bwd + fused exact SGD, old backward", "QR TBE + SGD (no pre-reduce)", "full TBE + SGD (no pre-reduce)"),
]


def report_qr_vs_full(setup: Setup, timings: Timings) -> None:
    """The table of issue 12: the QR training step against the full tables' (goal >= 1)."""
    say("## QR against full tables, table-batched Triton (full ms / QR ms; goal >= 1.00 at d = 16 and 64, "
        "one-hot and 20-hot, batch 16384)")
    say(f"| {'d':>3} | {'batch':>6} | {'hot':>3} | {'step':<40} | {'QR ms':>8} | {'full ms':>8} | {'ratio':>6} |")
    say(f"|-----|--------|-----|{'-' * 42}|----------|----------|--------|")
    for d, B, L in setup.configs:
        for label, qr_label, full_label in QR_VS_FULL:
            q, f = timings.results.get((d, B, L, qr_label)), timings.results.get((d, B, L, full_label))
            if q and f:
                say(f"| {d:>3} | {B:>6} | {L:>3} | {label:<40} | {q[1]:8.3f} | {f[1]:8.3f} | {f[1] / q[1]:6.2f} |")


def report(setup: Setup, timings: Timings, bw: float) -> None:
    """Step 3: the goals, the pre-reduction A/B, QR against full, how to read the table; writes ``$OUT``."""
    say("")
    report_goals(setup, timings, bw)
    say("")
    report_pre_reduce_ab(setup, timings)
    say("")
    report_qr_vs_full(setup, timings)
    say("")
    say("ratios are speed-ups (baseline ms / method ms): > 1 means faster than the baseline.")
    say("useful traffic = rows read (k rows per index) + output written; full tables: 1 row per index.")
    say("full nn.EmbeddingBag trains with sparse gradients (+ SGD: and the torch.optim.SGD step); compemb QR "
        "torch/triton write dense gradients of the (4x smaller) component tables. TBE = one launch for all 26 "
        "features (validate=False unless said); '+ SGD': the exact SGD update fused into backward; "
        "'validate=True': the forward with the batched input check (one device sync).")
    if timings.skipped:
        say("skipped: " + "; ".join(timings.skipped))
    say(f"total wall time {time.time() - setup.t_start:.0f} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "gpu_bench.txt"), "w") as fh:
            fh.write("\n".join(LINES) + "\n")


def main(argv=None) -> int:
    setup = make_setup(parse_args(argv))
    if setup is None:
        print("no CUDA device: run with --dry-run-cpu to check the script on CPU", file=sys.stderr)
        return 2
    gen = torch.Generator(device=setup.device).manual_seed(0)
    name = torch.cuda.get_device_name(0) if setup.device.type == "cuda" else "CPU (dry run, interpreter)"
    say(f"# compemb GPU benchmark on {name}")
    say(f"torch {torch.__version__}, triton {getattr(sys.modules.get('triton'), '__version__', 'missing')}, "
        f"numpy {np.__version__}")
    if TRITON_ERROR:
        say(f"triton backend unavailable: {TRITON_ERROR}")
        return 1
    say(FBGEMM_OUT)
    timings = Timings()
    ok = check_all(setup, gen)
    bw = copy_bandwidth_gbs(setup.device)
    say(f"device-to-device copy bandwidth: {bw:.0f} GB/s (read + write)")
    say("")
    time_all(setup, gen, bw, timings)
    block_sweep(setup, gen, timings)
    report(setup, timings, bw)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
