"""Checks made before a training run loads any data: outputs writable, device and backend usable."""
from __future__ import annotations

import os
import tempfile
from typing import Set, Tuple

import torch

from dlrm.checkpoint import CHECKPOINT_NAME
from dlrm.config import TrainConfig, check_device


__all__ = ["preflight"]


def _check_directory(what: str, directory: str) -> None:
    """Create ``directory`` if needed and check that files can be written in it."""
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{what} {directory} is not a directory (a file of that name is in the way)") from None
    except NotADirectoryError:
        raise ValueError(f"{what} {directory} cannot be created: a file is in the way on its path "
                         "(part of it is not a directory)") from None
    except OSError as exc:
        raise ValueError(f"{what} {directory} cannot be created ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"{what} {directory} is not writable ({exc.strerror or exc})") from None


#: the backend probes that passed in this process: (method, table options, width, device); the
#: CLI, the launcher and :func:`dlrm.train.train` each call :func:`preflight`, one probe serves them
_PROBED: Set[Tuple[str, str, int, str]] = set()


def _check_backend(config: TrainConfig) -> None:
    """A kernel backend asked for by name must serve the compressed tables on ``config.device``:
    build one small such table there and run it once (what building the model would do; once per
    process and configuration)."""
    backend = config.embedding_options.get("backend")
    if backend in (None, "torch", "auto") or config.method in ("full", "hash", "md", "path"):
        return
    key = (config.method, repr(sorted(config.embedding_options.items())), int(config.embedding_dim),
           str(torch.device(config.device)))
    if key in _PROBED:
        return
    from compemb.config import EmbeddingBagConfig, build_embedding_bag

    spec = EmbeddingBagConfig(name="backend probe", num_embeddings=4096, embedding_dim=config.embedding_dim,
                              method=config.method, **config.embedding_options)
    bag = build_embedding_bag(spec, device=config.device)
    with torch.no_grad():
        bag(torch.zeros(1, dtype=torch.long, device=config.device),
            torch.zeros(1, dtype=torch.long, device=config.device))
    _PROBED.add(key)


def preflight(config: TrainConfig) -> None:
    """Refuse now, before data is loaded or a step is trained, what would fail later: a device
    this machine lacks, a log file that cannot be written (a directory, a read-only place), a
    checkpoint directory that cannot be (a file, read-only). Creates the checkpoint directory and
    the log file's directory.

    Raises:
        ValueError: naming the device or path and the reason.
        compemb.kernels.BackendUnavailableError: the kernel backend named in the table options
            cannot serve the tables on this device (with the reason).
    """
    check_device(config.device)
    _check_backend(config)
    if config.checkpoint_dir is not None:
        _check_directory("checkpoint directory", config.checkpoint_dir)
        ckpt = os.path.join(config.checkpoint_dir, CHECKPOINT_NAME)
        if os.path.isdir(ckpt):
            raise ValueError(f"checkpoint {ckpt} is a directory; remove it or use another --checkpoint-dir")
    if config.log_path is not None:
        log = config.log_path
        if os.path.isdir(log):
            raise ValueError(f"log file {log} is a directory; give a file path (e.g. {os.path.join(log, 'log.jsonl')})")
        _check_directory("log file directory", os.path.dirname(os.path.abspath(log)))
        try:
            with open(log, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ValueError(f"log file {log} cannot be written ({exc.strerror or exc})") from None
