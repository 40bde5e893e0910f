"""Run a function as ``N`` ranks on this machine and collect what each rank reports: for tests and benchmarks.

Every rank is a fresh ``spawn``-ed process (never the process-wide forkserver, whose server keeps
the preloads and environment of whoever started it first) and calls ``target(rank, world, *args,
queue)``; the target puts ``(rank, result)`` on the queue once. The ranks join a process group
themselves (e.g. gloo on ``127.0.0.1:free_port()``). Training jobs use :mod:`dlrm.launch` instead.

Example::

    >>> results = run_local_ranks(worker, 2, (free_port(),), timeout=240)  # doctest: +SKIP
    >>> results[0], results[1]                                           # doctest: +SKIP
"""
from __future__ import annotations

import queue
import socket
import time
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ["RanksFailedError", "free_port", "run_local_ranks"]


class RanksFailedError(RuntimeError):
    """A rank died, or not every rank reported within the time allowed (the message names them)."""


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` free at the moment of the call (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_local_ranks(target: Callable[..., None], world: int, args: Sequence[Any] = (), *,
                    timeout: Optional[float] = None, poll_s: float = 1.0) -> Dict[int, Any]:
    """``{rank: result}`` of ``target(rank, world, *args, queue)`` run in ``world`` spawned processes.

    ``target`` must be importable by name (a module-level function) and ``args`` picklable. The
    processes are joined (killed after 10 s) whatever happens.

    Raises:
        RanksFailedError: a rank exited with a non-zero code or without reporting, or ``timeout``
            seconds passed before every rank reported.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results_queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, world, *args, results_queue)) for rank in range(world)]
    for p in procs:
        p.start()
    got: Dict[int, Any] = {}
    start = time.monotonic()
    try:
        while len(got) < world:
            if timeout is not None and time.monotonic() - start >= timeout:
                missing = sorted(set(range(world)) - set(got))
                raise RanksFailedError(f"no results from ranks {missing} within {timeout:g} s")
            try:
                rank, result = results_queue.get(timeout=poll_s)
                got[rank] = result
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise RanksFailedError(f"rank(s) {dead} died (exit codes {[procs[r].exitcode for r in dead]})"
                                           ) from None
                if all(p.exitcode == 0 for p in procs) and results_queue.empty():
                    missing = sorted(set(range(world)) - set(got))
                    raise RanksFailedError(f"ranks {missing} exited without a result") from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return got
