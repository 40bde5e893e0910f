"""Objectives for testing the sweep machinery without training (not part of the public API).

``synthetic_objective`` returns deterministic made-up metrics shaped like the real ones;
``blocking_objective`` is the same but first blocks while the file named by the environment
variable ``COMPEMB_TEST_BLOCK_FILE`` exists (writing ``<file>.started`` with its pid), so a test can
kill a worker in the middle of a trial.
"""
from __future__ import annotations

import math
import os
import random
import time
import zlib
from typing import Any, Dict

#: MovieLens-100k-like cardinalities used by the synthetic objective.
_CARDS = (944, 1683, 22, 3, 796)


def _rows(n: int, config: Dict[str, Any]) -> int:
    method = config.get("method", "full")
    if n <= int(config.get("threshold", 0)) or method == "full":
        return n
    if config.get("compression") is not None:  # a ratio asked for: about n / R rows' worth of parameters
        return max(1, math.ceil(n / float(config["compression"])))
    c = int(config.get("num_collisions", 4))
    if method == "hash":
        return -(-n // c)
    if method in ("qr", "path", "freq", "cluster"):
        return c + -(-n // c)
    if method == "robe":
        return -(-n // c)
    if method == "tt":
        return max(1, n // 8)
    if method in ("gqr", "crt"):
        k = int(config.get("k", 3))
        return k * math.ceil(n ** (1.0 / k))
    if method == "md":
        return n // 2
    raise ValueError(f"unknown method {method!r}")


def synthetic_objective(config: Dict[str, Any]) -> Dict[str, Any]:
    """Made-up but deterministic metrics: fewer parameters -> slightly higher loss, plus noise."""
    d = int(config.get("embedding_dim", 16))
    params = sum(_rows(n, config) for n in _CARDS) * d
    full = sum(_CARDS) * d
    op_penalty = {"mult": 1.0, "add": 1.3, "concat": 1.2}.get(config.get("operation", "mult"), 1.0)
    if config.get("method") == "hash":
        op_penalty = 2.0
    # crc32, not hash(): str hashes change per process, and workers are other processes
    rng = random.Random(zlib.crc32(str(sorted(config.items())).encode()) & 0xFFFF)
    loss = 0.55 + 0.02 * op_penalty * math.log(full / params) + rng.gauss(0, 0.002)
    return {
        "val_loss": loss,
        "val_auc": 0.8 - (loss - 0.55),
        "val_accuracy": 0.72 - (loss - 0.55) / 2,
        "test_loss": loss + 0.001,
        "test_auc": 0.8 - (loss - 0.55),
        "test_accuracy": 0.72 - (loss - 0.55) / 2,
        "embedding_params": params,
        "mlp_params": 1000,
        "total_params": params + 1000,
        "steps": 1,
        "samples_per_s": 1.0,
        "wall_time_s": 0.0,
    }


def blocking_objective(config: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`synthetic_objective`, after blocking while ``$COMPEMB_TEST_BLOCK_FILE`` exists."""
    block = os.environ.get("COMPEMB_TEST_BLOCK_FILE")
    if block and os.path.exists(block):
        with open(block + ".started", "w") as f:
            f.write(str(os.getpid()))
        while os.path.exists(block):
            time.sleep(0.05)
    return synthetic_objective(config)


def sleepy_objective(config: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`synthetic_objective` after sleeping ``$COMPEMB_TEST_SLEEP_S`` seconds (default 0.2)."""
    time.sleep(float(os.environ.get("COMPEMB_TEST_SLEEP_S", "0.2")))
    return synthetic_objective(config)


def populate_study(space, storage_url: str, study_name: str, objective=synthetic_objective, overrides=None):
    """Write one COMPLETE trial per grid key of ``space`` straight into storage, with the same
    parameters and user attributes a sweep records, without running the optimisation loop (fast
    fixtures for figure tests). Returns the study."""
    import optuna

    from sweeps.runner import create_study, end_attrs, make_storage, objective_values, start_attrs

    study = create_study(space, make_storage(storage_url, heartbeat_interval=None), study_name)
    dists: Dict[str, optuna.distributions.BaseDistribution] = {
             "point": optuna.distributions.CategoricalDistribution(space.labels()),
             "seed": optuna.distributions.CategoricalDistribution(list(space.seeds))}
    trials = []
    for label in space.labels():
        for seed in space.seeds:
            key, config = space.sample(optuna.trial.FixedTrial({"point": label, "seed": seed}), overrides)
            metrics = objective(dict(config))
            attrs = {"grid_key": key, **start_attrs(config), **end_attrs(metrics, 0.0)}
            trials.append(optuna.create_trial(params={"point": label, "seed": seed}, distributions=dists,
                                              values=list(objective_values(metrics)), user_attrs=attrs))
    study.add_trials(trials)
    return study


def failing_objective(config: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`synthetic_objective`, except that ``method="hash"`` trials (every trial when the
    config has ``fail_all=True``) raise ``RuntimeError``."""
    if config.get("method") == "hash" or config.get("fail_all"):
        raise RuntimeError(f"made-up failure for method {config.get('method')!r}")
    return synthetic_objective(config)


def collapsing_objective(config: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`synthetic_objective`, except that ``method="hash"`` trials collapse
    (:class:`dlrm.train.TrainingCollapsedError`), the same way every time: a deterministic
    failure, which retrying cannot help."""
    from dlrm.train import TrainingCollapsedError

    if config.get("method") == "hash":
        raise TrainingCollapsedError("constant predictions (test AUC 0.5)")
    return synthetic_objective(config)


def dying_objective(config: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`synthetic_objective`, except that the first trial of all processes (the one that
    creates ``$COMPEMB_TEST_DIE_FILE``) kills its own process with SIGKILL mid-trial."""
    import signal

    marker = os.environ.get("COMPEMB_TEST_DIE_FILE")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return synthetic_objective(config)
