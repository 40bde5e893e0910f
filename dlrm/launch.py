"""``compemb train`` on several processes: the flags, torch's elastic launcher, and each rank's set-up.

Two ways to start ``N`` ranks, with the same flags as a one-process run::

    torchrun --standalone --nproc-per-node 2 -m compemb train --data-set movielens-100k --json
    compemb train --nproc-per-node 2 --data-set movielens-100k --json

The second starts torch's own elastic launcher (``torch.distributed.run``, what ``torchrun`` is)
with ``--standalone`` for you after checking the flags once; use ``torchrun`` itself for several
machines (``--nnodes``, ``--rdzv-endpoint``). Inside each rank :func:`join` reads the rank and
world size torchrun set, checks the ``--parallel`` combination (:func:`dlrm.distributed_setup.check_parallel`),
initialises the process group (NCCL with ``--device cuda``, one GPU per local rank; gloo on CPU)
and returns the :class:`Job`. Rank 0 alone prints (the configuration, progress, the result; with
``--json`` the one JSON line); every rank prints its own errors.

A rank that dies (killed, out of memory, an error) ends the job: torch's launcher stops the other
ranks, and the shorthand says which rank died and how, in one line. Checkpoints are only complete
once every rank wrote its part, so the last complete one stays loadable: re-running the same
command resumes from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from dlrm.distributed import DistributedTraining
    from dlrm.train import TrainConfig

__all__ = ["add_distributed_arguments", "Job", "join", "launch", "strip_launcher_flags", "in_launched_worker",
           "in_elastic_worker", "exit_elastic_worker"]

#: the flags only a multi-process run takes (``--nproc-per-node`` is the launcher's)
_DISTRIBUTED_FLAGS = ("parallel", "sharding_type", "replicate_rows", "memory_per_rank_gb")


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``compemb train`` flags of a multi-process run."""
    from compemb.options import SHARDING_TYPES
    from dlrm.argtypes import int_at_least, number
    from dlrm.distributed_setup import PARALLEL_MODES

    g = parser.add_argument_group("several processes (torchrun; --mini-batch-size is the global batch)")
    g.add_argument("--nproc-per-node", type=int_at_least(1), default=None, metavar="N",
                   help="start N ranks on this machine with torch's elastic launcher (as torchrun --standalone "
                        "--nproc-per-node N -m compemb train ...)")
    g.add_argument("--parallel", choices=PARALLEL_MODES, default=None,
                   help="hybrid (default: TorchRec-sharded tables, DDP MLPs), data (everything replicated; wins "
                        "when the compressed tables fit every device) or independent (only the MLPs averaged, "
                        "each rank trains its own tables on its data; metrics of rank 0, every rank's in "
                        "rank_metrics)")
    g.add_argument("--sharding-type", choices=SHARDING_TYPES, default=None,
                   help="hybrid: pin every sharded table to this TorchRec sharding type (default: the planner "
                        "chooses per table)")
    g.add_argument("--replicate-rows", type=int_at_least(0), default=None, metavar="ROWS",
                   help="hybrid: replicate (not shard) component tables of at most ROWS rows (default 1024)")
    g.add_argument("--memory-per-rank-gb", type=number(0.0, inclusive=False, what="a number of GB"), default=None,
                   metavar="GB",
                   help="refuse tables (weights and optimizer state) that fit no rank in GB (default: the GPU's "
                        "memory with --device cuda, no limit on CPU)")


def in_launched_worker() -> bool:
    """Whether this process is a rank that torchrun (or the shorthand) started."""
    return in_elastic_worker() or ("WORLD_SIZE" in os.environ and "RANK" in os.environ)


def in_elastic_worker() -> bool:
    """Whether torch's elastic launcher (torchrun, or the ``--nproc-per-node`` shorthand) started
    this process: the process is the rank, not a host that runs ranks in-process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_elastic_worker(code: int) -> None:
    """In a rank the elastic launcher started (:func:`in_elastic_worker`): leave the process now
    with exit status ``code``, without the interpreter's teardown, where C++ destructors race with
    gloo's threads ("terminate called without an active exception", an intermittent SIGABRT after
    a finished run). Output is flushed first; call it after the process group is taken down
    (:meth:`Job.finish`) and the result printed. Elsewhere it returns."""
    if not in_elastic_worker():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def strip_launcher_flags(argv: Sequence[str]) -> List[str]:
    """``argv`` without ``--nproc-per-node N`` (both spellings): what every rank is given."""
    out: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        out.append(arg)
    return out


@dataclass
class Job:
    """This process's part in a run: ``parallel`` is ``None`` for one process; ``exit_code`` is
    set when this process launched the ranks (the shorthand) and the job is over."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: Optional[DistributedTraining] = None
    exit_code: Optional[int] = None
    device: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def configure(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this rank's device (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
        if self.device is None or config.device == self.device:
            return config
        return dataclasses.replace(config, device=self.device)

    def finish(self, result: Dict[str, Any]) -> Dict[str, Any]:
        """The result with the run's distribution (:meth:`DistributedTraining.finish`); the
        process group is taken down."""
        if self.parallel is None:
            return result
        from dlrm.distributed_setup import close_process_group

        out = self.parallel.finish(result)
        self.parallel.release()
        close_process_group()
        return out


def _quiet_libraries() -> None:
    """Keep TorchRec's and torch.distributed's deprecation notices out of a rank's output (they are
    about the libraries' own APIs, not the run)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _distributed_flags(args: argparse.Namespace) -> Dict[str, Any]:
    return {name: getattr(args, name, None) for name in _DISTRIBUTED_FLAGS if getattr(args, name, None) is not None}


def join(args: argparse.Namespace, config: TrainConfig, argv: Sequence[str]) -> Job:
    """This process's :class:`Job`: launch the ranks (``--nproc-per-node N > 1`` outside a
    launcher), join the process group (inside one), or run alone.

    Raises:
        ValueError: bad ``--parallel`` combinations, a world size that does not divide the
            global batch, distributed flags without several processes, naming the value
            (before anything starts).
    """
    from dlrm.distributed_setup import check_parallel, world_from_env

    mode = args.parallel or "hybrid"
    flags = _distributed_flags(args)
    nproc = args.nproc_per_node
    if not in_launched_worker():
        if nproc is not None and nproc > 1:
            check_parallel(config, mode, nproc, sharding_type=args.sharding_type, replicate_rows=args.replicate_rows,
                           memory_per_rank_gb=args.memory_per_rank_gb)
            from dlrm.train import preflight

            preflight(config)
            return Job(exit_code=launch(nproc, strip_launcher_flags(argv), checkpoint_dir=config.checkpoint_dir))
        if flags:
            names = ", ".join("--" + k.replace("_", "-") for k in flags)
            raise ValueError(f"{names}: only for several processes; add --nproc-per-node N (N > 1) or start "
                             "compemb train under torchrun")
        return Job()
    rank, world, local = world_from_env()
    _quiet_libraries()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    if nproc is not None and nproc != local_world:
        raise ValueError(f"--nproc-per-node {nproc} inside a launched job of {local_world} processes per node: "
                         "give the process count to torchrun only")
    if world == 1:
        if flags:
            names = ", ".join("--" + k.replace("_", "-") for k in flags)
            raise ValueError(f"{names}: only for several processes; this job has one")
        return Job()
    check_parallel(config, mode, world, sharding_type=args.sharding_type, replicate_rows=args.replicate_rows,
                   memory_per_rank_gb=args.memory_per_rank_gb)
    import torch
    import torch.distributed as dist

    from dlrm.distributed import DistributedTraining

    device = torch.device(config.device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local >= count:
            raise ValueError(f"rank {rank} needs GPU {local} (LOCAL_RANK), but {count} CUDA device(s) are visible: "
                             "start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    parallel = DistributedTraining(mode, device=device, sharding_type=args.sharding_type,
                                   replicate_rows=args.replicate_rows, memory_per_rank_gb=args.memory_per_rank_gb)
    return Job(rank=rank, world_size=world, local_rank=local, parallel=parallel, device=str(device))


def signal_name(sig: Any) -> str:
    """``SIGINT`` for 2 (or a ``signal.Signals``), ``signal N`` for an unknown number."""
    import signal

    try:
        return signal.Signals(int(sig)).name
    except (ValueError, TypeError):
        return f"signal {sig}"


def _blame(exitcode: int) -> int:
    """Which failure caused the others: a signal from outside (SIGKILL, SIGSEGV, ...) before an
    error exit, before SIGTERM (what the launcher sends the ranks it stops)."""
    import signal

    if exitcode < 0 and exitcode != -signal.SIGTERM:
        return 0
    return 1 if exitcode > 0 else 2


def _how(failure: Any) -> str:
    if failure.exitcode < 0:
        return f"was killed by signal {failure.signal_name()}"
    return f"exited with code {failure.exitcode}"


def launch(nproc: int, argv: Sequence[str], checkpoint_dir: Optional[str] = None) -> int:
    """Run ``compemb train <argv>`` on ``nproc`` local ranks with torch's elastic launcher.

    Returns the exit status: 0 when every rank finished; 2 when the ranks refused their input
    (each said why); otherwise 1, after one line naming the rank that died and how (a signal, an
    exit code), which checkpoint stays loadable.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # (its notices would bury the one line below)
    launcher_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.1", "--module", "compemb", "train",
         *argv])
    try:
        run(launcher_args)
    except SignalException as exc:  # (Ctrl-C or a kill of the launcher: it stopped the ranks)
        where = f"; re-run the same command to resume from {checkpoint_dir}" if checkpoint_dir else ""
        print(f"compemb train: interrupted ({signal_name(exc.sigval)}){where}", file=sys.stderr, flush=True)
        return 130
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items(), key=lambda kv: (_blame(kv[1].exitcode), kv[1].timestamp, kv[0]))
        if all(f.exitcode == 2 for _, f in failures):
            return 2  # (each rank printed its error)
        (rank, first), others = failures[0], failures[1:]
        line = f"compemb train: error: rank {rank} (pid {first.pid}) {_how(first)}"
        failed = [f"rank {r} {_how(f)}" for r, f in others if _blame(f.exitcode) < 2]
        if failed:
            line += "; then " + ", ".join(failed)
        stopped = sorted(set(range(nproc)) - {rank} - {r for r, f in others if _blame(f.exitcode) < 2})
        if stopped:
            line += f"; the launcher stopped rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))}"
        if checkpoint_dir:
            line += (f"; the last complete checkpoint in {checkpoint_dir} stays loadable: re-run the same command "
                     "to resume from it")
        print(line, file=sys.stderr, flush=True)
        return 1
    return 0
