"""``compemb train`` and ``compemb data``: the command line of the DLRM.

``compemb train`` takes the flags DLRM users know (``--arch-sparse-feature-size``,
``--arch-mlp-bot 13-512-256-64``, ``--arch-mlp-top 512-256-1``, ``--qr-flag`` ..., ``--md-flag``
..., ``--mini-batch-size``, ``--learning-rate``, ``--nepochs``, ``--data-set``,
``--raw-data-file``) plus the generic ``--embedding {full,hash,qr,gqr,crt,path,md}`` with its
options, builds a :class:`dlrm.train.TrainConfig` and runs :func:`dlrm.train.train`. Where it
departs from DLRM's script (``--arch-mlp-bot`` checked against the data, ``d``-wide QR tables,
``--embedding-collection``) is described in ``docs/architecture.md``.

Example::

    compemb train --data-set movielens-100k --arch-sparse-feature-size 16 \\
        --arch-mlp-bot 2-32-16 --arch-mlp-top 64-32-1 --qr-flag --qr-collisions 4 \\
        --qr-threshold 200 --nepochs 3 --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from dlrm.train import TrainConfig

__all__ = ["train_main", "data_main", "build_parser", "config_from_args"]

_DATA_SETS = {
    "movielens-100k": "movielens-100k",
    "synthetic": "synthetic",
    "kaggle": "criteo-kaggle",
    "terabyte": "criteo-terabyte",
    "criteo-kaggle": "criteo-kaggle",
    "criteo-terabyte": "criteo-terabyte",
}
#: ``--sparse`` -> ``TrainConfig.sparse``
_SPARSE = {"auto": None, "on": True, "off": False}


def _dash_ints(text: str) -> Tuple[int, ...]:
    try:
        values = tuple(int(x) for x in str(text).replace(",", "-").split("-") if x != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dash-separated integers like 13-512-256-64, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"layer widths must be non-negative, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The ``compemb train`` argument parser."""
    from compemb.options import BACKEND_NAMES, COMPOSES, METHODS, OPERATIONS
    from dlrm.model import INTERACTIONS
    from dlrm.train import EMBEDDING_COLLECTIONS, OPTIMIZERS, TEST_WITH

    p = argparse.ArgumentParser(
        prog="compemb train",
        description="Train a DLRM with compositional (or other compressed) embedding tables.",
    )
    a = p.add_argument_group("architecture (DLRM flags)")
    a.add_argument("--arch-sparse-feature-size", type=int, default=16, help="embedding width d")
    a.add_argument("--arch-mlp-bot", type=_dash_ints, default=None,
                   help="bottom MLP, first entry = number of dense features (default: num_dense-64-d)")
    a.add_argument("--arch-mlp-top", type=_dash_ints, default=(64, 1), help="top MLP, ending in 1")
    a.add_argument("--arch-interaction-op", choices=INTERACTIONS, default="dot")
    a.add_argument("--arch-interaction-itself", action="store_true")
    q = p.add_argument_group("QR and MD tricks (DLRM flags)")
    q.add_argument("--qr-flag", action="store_true", help="quotient-remainder tables")
    q.add_argument("--qr-threshold", type=int, default=200)
    q.add_argument("--qr-operation", choices=OPERATIONS, default="mult")
    q.add_argument("--qr-collisions", type=int, default=4)
    q.add_argument("--dlrm-compatible-qr", action="store_true",
                   help="use DLRM's QREmbeddingBag (concat = 2d wide, projected to d)")
    q.add_argument("--md-flag", action="store_true", help="mixed-dimension tables")
    q.add_argument("--md-threshold", type=int, default=200)
    q.add_argument("--md-temperature", type=float, default=0.3, help="alpha of the power rule")
    e = p.add_argument_group("generic embedding method")
    e.add_argument("--embedding", choices=METHODS, default=None)
    e.add_argument("--threshold", type=int, default=None,
                   help="compress only tables with more rows than this (default 0)")
    e.add_argument("--num-collisions", type=int, default=None)
    e.add_argument("--k", type=int, default=None, help="partitions for gqr / crt")
    e.add_argument("--hidden-dims", type=_dash_ints, default=None, help="path: MLP hidden sizes, e.g. 16-16")
    e.add_argument("--operation", choices=OPERATIONS, default=None)
    e.add_argument("--compose", choices=COMPOSES, default=None)
    e.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    e.add_argument("--md-dim", type=int, default=None, help="md: one width for all compressed tables")
    d = p.add_argument_group("data")
    d.add_argument("--data-set", choices=sorted(_DATA_SETS), default="movielens-100k")
    d.add_argument("--raw-data-file", default=None, help="Criteo train.txt or day_ prefix")
    d.add_argument("--data-cache-dir", default=None)
    d.add_argument("--max-ind-range", type=int, default=None, help="Criteo: ids modulo this first")
    d.add_argument("--split-seed", type=int, default=None, help="MovieLens: seed of the 80/10/10 split")
    d.add_argument("--synthetic-rows", type=int, default=None)
    d.add_argument("--synthetic-scale", type=float, default=None, help="divide Kaggle cardinalities by this")
    t = p.add_argument_group("training")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adagrad")
    t.add_argument("--learning-rate", type=float, default=0.05)
    t.add_argument("--mini-batch-size", type=int, default=128)
    t.add_argument("--nepochs", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=int, default=None, help="steps (default: every epoch end)")
    t.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="evaluations without a better validation loss before stopping")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--sparse", choices=tuple(_SPARSE), default="auto", help="sparse embedding gradients")
    t.add_argument("--embedding-collection", choices=tuple(c or "none" for c in EMBEDDING_COLLECTIONS), default="none",
                   help="serve all tables from one table-batched collection: fbgemm (TBE) or triton (one fused "
                        "kernel launch; on CPU it runs in Triton's interpreter, TRITON_INTERPRET=1, slow); dense "
                        "table gradients for any optimizer, or fused exact SGD with --optimizer sgd_triton_fused "
                        "(default none: one module per table)")
    t.add_argument("--test-with", choices=TEST_WITH, default="best")
    t.add_argument("--device", default="cpu")
    o = p.add_argument_group("output")
    o.add_argument("--checkpoint-dir", default=None)
    o.add_argument("--checkpoint-every", type=int, default=None)
    o.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    o.add_argument("--log-file", default=None, help="JSON-lines log")
    o.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    o.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace, num_dense: Optional[int] = None) -> TrainConfig:
    """The :class:`dlrm.train.TrainConfig` the parsed flags describe.

    ``num_dense`` (the data set's) is checked against ``--arch-mlp-bot``'s first entry.
    """
    from dlrm.train import TrainConfig

    d = args.arch_sparse_feature_size
    if args.qr_flag and args.md_flag:
        raise ValueError("--qr-flag and --md-flag exclude each other")
    if (args.qr_flag or args.md_flag) and args.embedding not in (None, "full"):
        raise ValueError(f"--embedding {args.embedding} conflicts with --{'qr' if args.qr_flag else 'md'}-flag")
    options: Dict[str, Any] = {}
    md_temperature = None
    if args.qr_flag:
        method, threshold = "qr", args.qr_threshold
        options.update(operation=args.qr_operation, num_collisions=args.qr_collisions)
    elif args.md_flag:
        method, threshold = "md", args.md_threshold
        md_temperature = args.md_temperature
    else:
        method = args.embedding or "full"
        threshold = 0
        md_temperature = args.md_temperature if method == "md" else None
    if args.threshold is not None:
        threshold = args.threshold
    for flag, key in (("num_collisions", "num_collisions"), ("k", "k"), ("operation", "operation"),
                      ("compose", "compose"), ("backend", "backend"), ("md_dim", "md_dim")):
        value = getattr(args, flag)
        if value is not None:
            options[key] = value
    if args.hidden_dims is not None:
        options["hidden_dims"] = tuple(args.hidden_dims)
    if args.dlrm_compatible_qr and method != "qr":
        raise ValueError("--dlrm-compatible-qr needs --qr-flag or --embedding qr")

    dataset = _DATA_SETS[args.data_set]
    ds_options = {}
    if dataset.startswith("criteo"):
        if args.raw_data_file is None:
            raise ValueError(f"--data-set {args.data_set} needs --raw-data-file")
        ds_options["raw_data_file"] = args.raw_data_file
        if args.max_ind_range is not None:
            ds_options["max_ind_range"] = args.max_ind_range
        ds_options["progress"] = not args.no_progress
    if args.data_cache_dir is not None:
        ds_options["cache_dir"] = args.data_cache_dir
    if args.split_seed is not None:
        ds_options["split_seed"] = args.split_seed
    if dataset == "synthetic":
        if args.synthetic_rows is not None:
            ds_options["rows"] = args.synthetic_rows
        if args.synthetic_scale is not None:
            ds_options["scale"] = args.synthetic_scale
        ds_options.setdefault("seed", args.seed)

    bot = args.arch_mlp_bot
    if bot is None:
        bottom = (64, d)
    else:
        if len(bot) < 2:
            raise ValueError(f"--arch-mlp-bot needs the input width and at least one layer, got {'-'.join(map(str, bot))}")
        if num_dense is not None and bot[0] != num_dense:
            raise ValueError(
                f"--arch-mlp-bot starts with {bot[0]} but data set {args.data_set!r} has {num_dense} dense features"
            )
        bottom = tuple(bot[1:])
    top = tuple(args.arch_mlp_top)
    sparse = _SPARSE[args.sparse]
    return TrainConfig(
        dataset=dataset, dataset_options=ds_options, seed=args.seed, embedding_dim=d,
        bottom_mlp=bottom, top_mlp=top, interaction=args.arch_interaction_op,
        interaction_itself=args.arch_interaction_itself, method=method, threshold=threshold,
        embedding_options=options, md_temperature=md_temperature,
        dlrm_compatible_qr=args.dlrm_compatible_qr, optimizer=args.optimizer,
        learning_rate=args.learning_rate, batch_size=args.mini_batch_size, epochs=args.nepochs,
        eval_every=args.eval_every, early_stopping_patience=args.early_stopping,
        max_steps=args.max_steps, sparse=sparse, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, resume=not args.no_resume, log_path=args.log_file,
        device=args.device, test_with=args.test_with,
        embedding_collection=None if args.embedding_collection == "none" else args.embedding_collection,
    )


_SHOWN = ("val_loss", "val_auc", "val_accuracy", "test_loss", "test_auc", "test_accuracy",
          "embedding_params", "mlp_params", "total_params", "steps", "samples_per_s",
          "wall_time_s", "stopped_early")


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``compemb train``: parse DLRM-style flags, train, print the final metrics."""
    from dlrm.data import load_dataset
    from dlrm.train import train

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.embedding_collection == "triton" or args.optimizer == "sgd_triton_fused") \
            and str(args.device).startswith("cpu"):
        # Triton decides at import whether kernels are interpreted: set it before anything imports
        # triton (if it already was, without it, building the model says so)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        config = config_from_args(args)
        dataset = load_dataset(config.dataset, **config.dataset_options)
        config = config_from_args(args, num_dense=dataset.num_dense)
        result = train(config, progress=not args.no_progress, dataset=dataset)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"compemb train: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from dlrm.metrics import jsonable

        print(json.dumps(jsonable(result), sort_keys=True))
    else:
        width = max(len(k) for k in _SHOWN)
        for key in _SHOWN:
            value = result[key]
            text = f"{value:.6f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {text}")
    return 0


def data_main(argv: Optional[Sequence[str]] = None) -> int:
    """``compemb data``: fetch or prepare data sets (see :func:`dlrm.data.cli.main`)."""
    from dlrm.data.cli import main

    return int(main(list(sys.argv[1:] if argv is None else argv)) or 0)
