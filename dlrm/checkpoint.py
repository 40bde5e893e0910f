"""Checkpoints of a training run: atomic writes, RNG states, and the check that a resume is the same run.

A checkpoint is one file, ``checkpoint.pt``, holding the run's config, model, optimizer state,
training state and RNG states. It is written to a temporary file and moved into place with
:func:`os.replace`, so a kill never leaves half a file.

It holds tensors and plain data only (the RNG states too: numpy's as a tensor, Python's as
tuples of ints), and it is read back with ``torch.load(..., weights_only=True)``: a crafted file
that would build other objects (and so run code) is refused, as is an empty, truncated or corrupt
one, by :class:`CheckpointError` naming the file and the way out (``--no-resume``).

Example::

    >>> save_checkpoint(path, config.to_dict(), model, optimizer, state.to_dict())   # doctest: +SKIP
    >>> ckpt = load_checkpoint(path, config.to_dict(), device="cpu")                 # doctest: +SKIP
"""
from __future__ import annotations

import os
import pickle
import random
import re
import warnings
import zipfile
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_KEYS",
    "RESUMABLE_DIFFERENCES",
    "CheckpointError",
    "atomic_save",
    "rng_state",
    "set_rng_state",
    "check_resumable",
    "save_checkpoint",
    "read_checkpoint",
    "safe_load",
    "load_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: what a checkpoint holds
CHECKPOINT_KEYS = ("config", "model", "optimizer", "state", "rng")
_WAY_OUT = "delete it or pass --no-resume (resume=False) to start the run afresh"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: empty, truncated, corrupt, not a compemb checkpoint,
    or holding objects the safe loader refuses (it was not loaded, nothing in it ran)."""

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
    """The states of torch's, numpy's and Python's global random generators, as tensors and plain
    data (what ``torch.load(..., weights_only=True)`` reads back)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].cpu().numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


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


def safe_load(path: str, device: torch.device | str = "cpu", way_out: str = _WAY_OUT) -> Any:
    """What the file at ``path`` holds, read with ``torch.load(..., weights_only=True)`` (tensors and
    plain data only; tensors mapped to ``device``).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is a directory, empty, truncated or corrupt, or holds
            objects the safe loader refuses (the message names the first such object); nothing in
            the file ran. Each message names ``path`` and ends in ``way_out``.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file; {way_out}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {way_out}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the pickle protocol of a foreign file
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\n|$)", text)
            detail = found.group(1).strip() if found and found.group(1).strip() else "a non-tensor object"
            raise CheckpointError(
                f"checkpoint {path} was refused and not loaded: it holds more than tensors and plain data "
                f"({detail}), which loading would run as code; if you did not write it, remove it, else "
                f"{way_out}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({text.splitlines()[0] if text else type(exc).__name__}); "
                              f"{way_out}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError,
            AttributeError, IndexError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason[:200]}); {way_out}") from None


def read_checkpoint(path: str, device: torch.device | str = "cpu") -> Dict[str, Any]:
    """The checkpoint at ``path``, read with the safe loader (:func:`safe_load`: tensors and plain
    data only; tensors mapped to ``device``).

    Raises:
        CheckpointError: the file is empty, truncated or corrupt, not a compemb checkpoint, or holds
            objects the safe loader refuses (the message names the first such object); nothing
            in the file ran.
    """
    ckpt = safe_load(path, device)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        what = (f"keys {sorted(map(str, ckpt))}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise CheckpointError(f"checkpoint {path} is not a compemb training checkpoint (it holds {what}, expected "
                              f"keys {list(CHECKPOINT_KEYS)}); {_WAY_OUT}")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["state"], dict):
        raise CheckpointError(f"checkpoint {path} is not a compemb training checkpoint (config or state is not "
                              f"a dict); {_WAY_OUT}")
    return ckpt


def load_checkpoint(path: str, config: Mapping[str, Any], device: torch.device | str) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path`` (``None`` when there is none), read safely
    (:func:`read_checkpoint`) and checked to belong to the run ``config``
    (:func:`check_resumable`); tensors mapped to ``device``."""
    if not os.path.lexists(path):
        return None
    ckpt = read_checkpoint(path, device)
    check_resumable(ckpt["config"], config, path)
    return ckpt
