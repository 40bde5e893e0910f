"""A training run that collapsed: constant or non-finite predictions, non-finite weights.

Such a run is not a result: :func:`dlrm.train.train` raises :class:`TrainingCollapsedError` (and a
sweep marks the trial failed with its reason).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch

from dlrm.models import RecModel


__all__ = ["TrainingCollapsedError", "CONSTANT_SPREAD", "check_predictions", "check_weights"]

#: predictions spread less than this over a whole split count as constant (below float32's
#: resolution of probabilities near 0.5: the model's output no longer depends on its input)
CONSTANT_SPREAD = 1e-7



class TrainingCollapsedError(RuntimeError):
    """A training run whose model died: a non-finite loss or weight, or the same prediction for
    every sample of the validation or test split. Its metrics would be no result.

    Attributes:
        reason: what was found, where and at which step.

    Example::

        >>> err = TrainingCollapsedError("training loss is nan at step 3")
        >>> str(err), err.reason
        ('training collapsed: training loss is nan at step 3', 'training loss is nan at step 3')
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"training collapsed: {reason}")
        self.reason = str(reason)

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:  # pickles (to sweep workers) with its reason intact
        return type(self), (self.reason,)


def check_predictions(probs: np.ndarray, split: str, step: int) -> None:
    """Raise :class:`TrainingCollapsedError` when the predictions on a split are non-finite or constant."""
    bad = ~np.isfinite(probs)
    if bad.any():
        raise TrainingCollapsedError(f"the model predicts {probs[bad][0]} for {int(bad.sum())} of {probs.size} "
                                     f"{split} samples at step {step} (non-finite output)")
    spread = float(probs.max() - probs.min())
    if spread < CONSTANT_SPREAD:
        raise TrainingCollapsedError(
            f"the model predicts the same probability {float(probs[0]):.6g} for all {probs.size} {split} samples "
            f"at step {step} (spread {spread:.1g} < {CONSTANT_SPREAD:g}): its output no longer depends on its "
            "input (dead ReLUs or vanished embeddings); try a smaller learning rate or another seed")


def check_weights(model: RecModel, step: int) -> None:
    """Raise :class:`TrainingCollapsedError` naming the first parameter with a non-finite entry."""
    for name, p in model.named_parameters():
        finite = torch.isfinite(p.detach())
        if not bool(finite.all()):
            raise TrainingCollapsedError(f"{int((~finite).sum())} non-finite weight(s) in {name} at step {step}")
