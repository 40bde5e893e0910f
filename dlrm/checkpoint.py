"""Checkpoints of a training run: atomic writes, RNG states, and the check that a resume is the same run.

A checkpoint is one file, ``checkpoint.pt``, holding the run's config, model, optimizer state,
training state and RNG states. It is written to a temporary file and moved into place with
:func:`os.replace`, so a kill never leaves half a file.

Example::

    >>> save_checkpoint(path, config.to_dict(), model, optimizer, state.to_dict())   # doctest: +SKIP
    >>> ckpt = load_checkpoint(path, config.to_dict(), device="cpu")                 # doctest: +SKIP
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "RESUMABLE_DIFFERENCES",
    "atomic_save",
    "rng_state",
    "set_rng_state",
    "check_resumable",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"

#: config fields that may differ between a run and the run it resumes (they do not change what the
#: finished steps computed)
RESUMABLE_DIFFERENCES = frozenset(
    {"epochs", "max_steps", "log_path", "checkpoint_dir", "checkpoint_every", "resume", "device",
     "eval_batch_size"}
)
# data-set options that do not change the data (only how loading looks)
_RESUMABLE_DATASET_OPTIONS = frozenset({"progress"})


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and :func:`os.replace`."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    """The states of torch's, numpy's and Python's global random generators."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], path: str) -> None:
    """Raise ``ValueError`` naming every field (outside :data:`RESUMABLE_DIFFERENCES`) in which the
    config ``current`` differs from the config ``saved`` in the checkpoint at ``path``."""
    saved, current = dict(saved), dict(current)
    for cfg in (saved, current):
        cfg["dataset_options"] = {k: v for k, v in (cfg.get("dataset_options") or {}).items()
                                  if k not in _RESUMABLE_DATASET_OPTIONS}
    diffs = sorted(
        k for k in set(saved) | set(current)
        if k not in RESUMABLE_DIFFERENCES and saved.get(k) != current.get(k)
    )
    if diffs:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diffs)
        raise ValueError(f"checkpoint {path} belongs to a different run ({detail}); "
                         "use another checkpoint_dir or resume=False")


def save_checkpoint(path: str, config: Mapping[str, Any], model: torch.nn.Module, optimizer: Any,
                    state: Mapping[str, Any]) -> None:
    """Write the run (config dict, model, optimizer, training state, RNG states) to ``path`` atomically."""
    atomic_save({"config": dict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "state": dict(state), "rng": rng_state()}, path)


def load_checkpoint(path: str, config: Mapping[str, Any], device: torch.device | str) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path`` (``None`` when there is none), checked to belong to the run
    ``config`` (:func:`check_resumable`); tensors mapped to ``device``."""
    if not os.path.exists(path):
        return None
    ckpt = torch.load(path, map_location=device, weights_only=False)
    check_resumable(ckpt["config"], config, path)
    return ckpt
