"""The model families of the seed, over compemb's tables: MF, FM, NCF beside the DLRM.

The seed presents DLRM as built from embeddings, matrix factorisation, factorisation machines and
MLPs, and names NCF. Each family here takes the same batches, trains in the same loop
(:func:`dlrm.train.train` with ``TrainConfig(model=...)``, ``compemb train --model ...``) and
reports the same metrics; each builds its tables with :func:`compemb.config.build_embedding_bag`,
so any method and ``compression=R`` apply.

=========  ================================================  ===========================================
``model``  what                                              options (``TrainConfig.model_options``)
=========  ================================================  ===========================================
``dlrm``   :class:`dlrm.model.DLRM` (Naumov et al. 2019)     none (its architecture has its own fields)
``mf``     :class:`~dlrm.models.mf.MatrixFactorization`      ``features`` (user, item), ``first_order``
``fm``     :class:`~dlrm.models.fm.FactorizationMachine`     ``first_order``
``ncf``    :class:`~dlrm.models.ncf.NeuMF` (He et al. 2017)  ``features``, ``mlp`` (default: the top
                                                             MLP's widths without its final 1)
=========  ================================================  ===========================================

``features`` defaults to ``("user_id", "item_id")`` (MovieLens-100k); on data without that pair,
MF and NCF are refused with the data set's feature names unless two are designated.
``first_order`` is ``"tied"`` (default) or ``"free"`` (:data:`~dlrm.models.base.FIRST_ORDER`).

Example::

    >>> from compemb.config import EmbeddingBagConfig
    >>> specs = [EmbeddingBagConfig("user_id", 5, 4), EmbeddingBagConfig("item_id", 7, 4)]
    >>> type(build_table_model("fm", specs, ["user_id", "item_id"], num_dense=2)).__name__
    'FactorizationMachine'
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from dlrm.models.base import FIRST_ORDER, TableModel, TableModelConfig
from dlrm.models.fm import FactorizationMachine
from dlrm.models.mf import DEFAULT_PAIR, MatrixFactorization
from dlrm.models.ncf import NeuMF

if TYPE_CHECKING:
    from dlrm.model import DLRM

__all__ = [
    "MODELS",
    "MODEL_OPTIONS",
    "RecModel",
    "TableModel",
    "TableModelConfig",
    "MatrixFactorization",
    "FactorizationMachine",
    "NeuMF",
    "FIRST_ORDER",
    "DEFAULT_PAIR",
    "check_model_options",
    "check_model_config",
    "build_table_model",
]

#: the model families ``TrainConfig.model`` / ``compemb train --model`` choose from
MODELS: Tuple[str, ...] = ("mf", "fm", "ncf", "dlrm")
#: the options each family takes (``TrainConfig.model_options``)
MODEL_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "mf": ("features", "first_order"),
    "fm": ("first_order",),
    "ncf": ("features", "mlp"),
    "dlrm": (),
}
#: a model the training loop trains: a DLRM or one of the families here
RecModel = Union["DLRM", TableModel]


def check_model_options(model: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """``options`` checked for family ``model`` (a copy, lists for sequences).

    Raises:
        ValueError: an unknown model, an option the family does not take, or a bad value, naming it.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    known = MODEL_OPTIONS[model]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"model {model!r} takes no option(s) {unknown}; its options are {list(known) or 'none'}")
    out = dict(options)
    if "features" in out:
        feats = out["features"]
        if isinstance(feats, str) or not isinstance(feats, (list, tuple)) or len(feats) != 2 \
                or not all(isinstance(f, str) and f for f in feats) or feats[0] == feats[1]:
            raise ValueError(f"model {model!r}: features must be two distinct feature names (user, item), got {feats!r}")
        out["features"] = list(feats)
    if "first_order" in out and out["first_order"] not in FIRST_ORDER:
        raise ValueError(f"model {model!r}: first_order must be one of {FIRST_ORDER}, got {out['first_order']!r}")
    if "mlp" in out:
        mlp = out["mlp"]
        if isinstance(mlp, (str, bytes)) or not isinstance(mlp, (list, tuple)) or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in mlp):
            raise ValueError(f"model {model!r}: mlp must be a list of layer widths >= 1, got {mlp!r}")
        out["mlp"] = list(mlp)
    return out


def check_model_config(config: Any) -> Dict[str, Any]:
    """The family fields of a :class:`dlrm.train.TrainConfig` checked together; returns the checked
    ``model_options``.

    ``model`` and ``model_options`` (:func:`check_model_options`); the families other than ``dlrm``
    build one module per table, so they refuse a table-batched collection, a fused optimizer and
    ``dlrm_compatible_qr``, as that QR module ignores ``compression``.

    Raises:
        ValueError: naming the field and the value.
    """
    model = config.model
    options = check_model_options(model, config.model_options)
    if model != "dlrm":
        if config.collection_backend is not None:
            raise ValueError(f"model {model!r} builds one module per table: embedding_collection="
                             f"{config.collection_backend!r} (or optimizer {config.optimizer!r}) serves a DLRM only")
        if config.dlrm_compatible_qr:
            raise ValueError(f"dlrm_compatible_qr builds DLRM's own QR tables; model {model!r} takes compemb's")
    if config.dlrm_compatible_qr and config.embedding_options.get("compression") is not None:
        raise ValueError("dlrm_compatible_qr takes num_collisions as given; it cannot choose a size for compression="
                         f"{config.embedding_options['compression']!r} (drop one of them)")
    return options


def build_table_model(
    model: str,
    specs: Sequence[Any],
    feature_names: Sequence[str],
    num_dense: int,
    *,
    options: Optional[Mapping[str, Any]] = None,
    default_mlp: Sequence[int] = (64, 32, 16),
    sparse: bool = False,
    counts: Optional[Mapping[str, torch.Tensor]] = None,
) -> TableModel:
    """Family ``model`` (``mf``, ``fm`` or ``ncf``) over the data set's table ``specs`` (one per feature).

    Args:
        default_mlp: NCF's MLP widths when ``options`` has no ``mlp``.
        sparse: sparse table gradients where the tables support them.
        counts: the training split's counts per feature, for ``freq`` tables.
    """
    opts = check_model_options(model, options or {})
    if model == "dlrm":
        raise ValueError("build_table_model builds mf, fm and ncf; a DLRM is dlrm.model.DLRM")
    common: Dict[str, Any] = {"sparse": sparse, "counts": counts}
    if model == "mf":
        return MatrixFactorization.build(specs, feature_names, num_dense, features=opts.get("features"),
                                         first_order=opts.get("first_order", "tied"), **common)
    if model == "fm":
        return FactorizationMachine.build(specs, feature_names, num_dense, first_order=opts.get("first_order", "tied"),
                                          **common)
    return NeuMF.build(specs, feature_names, num_dense, features=opts.get("features"),
                       mlp=opts.get("mlp", tuple(default_mlp)), **common)
