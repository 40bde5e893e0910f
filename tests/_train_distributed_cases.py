"""The 2-rank ``compemb train`` runs of ``tests/test_train_distributed.py`` (run in every rank).

One job (2 spawned processes, gloo; ``RANK``/``WORLD_SIZE`` set as torchrun sets them) runs
:func:`dlrm.cli.train_main` once per case and sends each rank's exit code, output and errors back
through a queue: process start-up and ``import torchrec`` are paid once.
"""
from __future__ import annotations

import io
import os
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from typing import Any, Dict, List, Sequence, Tuple

WORLD = 2

#: tiny Criteo-shaped data: 2500 rows (train 2143, val 178, test 179), 26 tables of 2 to 3378 rows;
#: with --mini-batch-size 128 the last training batch (95) and the test split (179) split unevenly
DATA = ["--data-set", "synthetic", "--synthetic-rows", "2500", "--synthetic-scale", "3000"]
#: qr tables above 500 rows (their quotient tables sharded, the 4-row remainders replicated), full
#: tables above 100 rows sharded, the rest replicated; adagrad with the default warm-up
MODEL = ["--arch-sparse-feature-size", "8", "--arch-mlp-bot", "13-8", "--arch-mlp-top", "16-1",
         "--embedding", "qr", "--threshold", "500", "--num-collisions", "4", "--optimizer", "adagrad",
         "--learning-rate", "0.1"]
LOOP = ["--mini-batch-size", "128", "--nepochs", "1", "--eval-every", "6", "--test-with", "final",
        "--no-progress", "--json"]


def argv(*extra: str) -> List[str]:
    return [*DATA, *MODEL, *LOOP, *extra]


def run_case(args: Sequence[str]) -> Dict[str, Any]:
    from dlrm.cli import train_main

    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = train_main(list(args))
    except BaseException:  # reported by the test that reads this case
        return {"code": "exception", "stdout": out.getvalue(), "stderr": traceback.format_exc()[-4000:]}
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-4000:]}


def watch_teardown() -> List[int]:
    """Make ``torch.distributed.destroy_process_group`` note how many ``DistributedDataParallel``
    modules are alive when it is called; the returned list fills with one count a call.

    Each such module holds the group through its reducer; one freed after the group is gone
    destroys it holding the GIL, which can hang gloo's teardown (see ``close_process_group``).
    """
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    counts: List[int] = []
    real = dist.destroy_process_group

    def destroy(*args: Any, **kwargs: Any) -> None:
        counts.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        real(*args, **kwargs)

    dist.destroy_process_group = destroy
    return counts


def worker(rank: int, world: int, cases: List[Tuple[str, int, List[str]]], queue: Any) -> None:
    """Run every ``(name, port, argv)`` case as rank ``rank`` and put ``(rank, {name: result})`` on ``queue``."""
    import torch

    from dlrm.distributed_setup import close_process_group

    torch.set_num_threads(1)  # (as torchrun's OMP_NUM_THREADS=1: two ranks on two cores)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world))
    results: Dict[str, Any] = {}
    teardowns = watch_teardown()
    for name, port, args in cases:
        os.environ["MASTER_PORT"] = str(port)
        t0 = time.perf_counter()
        results[name] = run_case(args)
        results[name]["seconds"] = time.perf_counter() - t0
        results[name]["ddp_at_teardown"], teardowns[:] = list(teardowns), []
        close_process_group()  # (a case that failed before finishing leaves its group up)
    queue.put((rank, results))
