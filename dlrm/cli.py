"""``compemb train`` and ``compemb data``: the command line of the DLRM.

``compemb train`` takes the flags DLRM users know (``--arch-sparse-feature-size``,
``--arch-mlp-bot 13-512-256-64-16``, ``--arch-mlp-top 512-256-1``, ``--qr-flag`` ..., ``--md-flag``
..., ``--mini-batch-size``, ``--learning-rate``, ``--lr-num-warmup-steps``, ``--nepochs``,
``--data-set``, ``--raw-data-file``) plus the generic ``--embedding {full,hash,qr,gqr,crt,path,md}``
with its options, builds a :class:`dlrm.train.TrainConfig` and runs :func:`dlrm.train.train`. Where
it departs from DLRM's script (``--arch-mlp-bot`` checked against the data, ``d``-wide QR tables,
``--embedding-collection``) is described in ``docs/architecture.md``.

Every flag is checked before any work (numbers by their range, the device, the log file and the
checkpoint directory), then the run says what it does: the resolved configuration, skipped
malformed Criteo lines, the embedding size and compression, where the log and checkpoints go, a
resume. With ``--json`` stdout carries only the result's JSON line and the rest goes to stderr.
Exit status: 0 done; 2 a bad flag, input, checkpoint or output path (one ``compemb train: error:``
line); 1 a run that collapsed (:class:`dlrm.train.TrainingCollapsedError`); 130 interrupted.

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
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from dlrm.argtypes import int_at_least, integer, number

if TYPE_CHECKING:
    from dlrm.train import TrainConfig

__all__ = ["train_main", "data_main", "build_parser", "config_from_args", "describe_config", "malformed_report"]

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
    if not values:
        raise argparse.ArgumentTypeError(f"expected dash-separated integers like 13-512-256-64, got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text}")
    return values


def _top_mlp(text: str) -> Tuple[int, ...]:
    values = _dash_ints(text)
    if values[-1] != 1:
        raise argparse.ArgumentTypeError(f"the top MLP must end in 1 (the click logit), got {text}")
    return values


def _ind_range(text: str) -> int:
    """``--max-ind-range``: a positive int, or -1 (DLRM's "no reduction")."""
    value = integer(text)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int (or -1: no reduction), got {text}")
    return value


_COUNT = int_at_least(1)
_NON_NEGATIVE = int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The ``compemb train`` argument parser."""
    from compemb.options import BACKEND_NAMES, COMPOSES, METHODS, OPERATIONS
    from dlrm.model import INTERACTIONS
    from dlrm.models import FIRST_ORDER, MODELS
    from dlrm.train import DEFAULT_LEARNING_RATES, EMBEDDING_COLLECTIONS, OPTIMIZERS, TEST_WITH, TrainConfig

    p = argparse.ArgumentParser(
        prog="compemb train",
        description="Train a DLRM with compositional (or other compressed) embedding tables.",
    )
    a = p.add_argument_group("architecture (DLRM flags)")
    a.add_argument("--arch-sparse-feature-size", type=_COUNT, default=16, help="embedding width d")
    a.add_argument("--arch-mlp-bot", type=_dash_ints, default=None,
                   help="bottom MLP, first entry = number of dense features, last = d for the dot interaction "
                        "(default: num_dense-64-d; DLRM's Kaggle setting: 13-512-256-64-16)")
    a.add_argument("--arch-mlp-top", type=_top_mlp, default=(64, 1), help="top MLP, ending in 1")
    a.add_argument("--arch-interaction-op", choices=INTERACTIONS, default="dot")
    a.add_argument("--arch-interaction-itself", action="store_true")
    q = p.add_argument_group("QR and MD tricks (DLRM flags)")
    q.add_argument("--qr-flag", action="store_true", help="quotient-remainder tables")
    q.add_argument("--qr-threshold", type=_NON_NEGATIVE, default=200)
    q.add_argument("--qr-operation", choices=OPERATIONS, default="mult")
    q.add_argument("--qr-collisions", type=_COUNT, default=4)
    q.add_argument("--dlrm-compatible-qr", action="store_true",
                   help="use DLRM's QREmbeddingBag (concat = 2d wide, projected to d)")
    q.add_argument("--md-flag", action="store_true", help="mixed-dimension tables")
    q.add_argument("--md-threshold", type=_NON_NEGATIVE, default=200)
    q.add_argument("--md-temperature", type=number(0.0, inclusive=True), default=0.3, help="alpha of the power rule")
    e = p.add_argument_group("generic embedding method")
    e.add_argument("--embedding", choices=METHODS, default=None)
    e.add_argument("--threshold", type=_NON_NEGATIVE, default=None,
                   help="compress only tables with more rows than this (default 0)")
    e.add_argument("--num-collisions", type=_COUNT, default=None)
    e.add_argument("--k", type=_COUNT, default=None, help="partitions for gqr / crt")
    e.add_argument("--hidden-dims", type=_dash_ints, default=None, help="path: MLP hidden sizes, e.g. 16-16")
    e.add_argument("--operation", choices=OPERATIONS, default=None)
    e.add_argument("--compose", choices=COMPOSES, default=None)
    e.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    e.add_argument("--md-dim", type=_COUNT, default=None, help="md: one width for all compressed tables")
    e.add_argument("--tt-rank", type=_COUNT, default=None, help="tt: the inner tensor-train ranks")
    e.add_argument("--num-hot", type=_COUNT, default=None,
                   help="freq: rows of their own for this many most frequent categories of the training split")
    e.add_argument("--compression", type=number(1.0, inclusive=False), default=None, metavar="R",
                   help="every compressed table holds at most 1/R of its full parameters: the method's own size "
                        "(collisions, rank, buckets, hot rows, ...) is chosen for R; the achieved ratio is printed")
    e.add_argument("--recluster-every", type=_NON_NEGATIVE, default=None, metavar="N",
                   help="cluster: re-cluster the tables by their embeddings every N steps (CCE; 0: never)")
    m = p.add_argument_group("model family")
    m.add_argument("--model", choices=MODELS, default="dlrm",
                   help="dlrm (default), mf (matrix factorisation), fm (factorization machine) or ncf (NeuMF); "
                        "same data, loop and metrics, any table method")
    m.add_argument("--model-features", default=None, metavar="USER,ITEM",
                   help="mf, ncf: the two features of the (user, item) pair (default user_id,item_id)")
    m.add_argument("--first-order", choices=FIRST_ORDER, default=None,
                   help="mf, fm: first-order weights tied to the embeddings (default) or free n x 1 tables")
    d = p.add_argument_group("data")
    d.add_argument("--data-set", choices=sorted(_DATA_SETS), default="movielens-100k")
    d.add_argument("--raw-data-file", default=None, help="Criteo train.txt or day_ prefix")
    d.add_argument("--data-cache-dir", default=None)
    d.add_argument("--strict", action="store_true",
                   help="Criteo: refuse a file with malformed lines (default: skip them and report how many)")
    d.add_argument("--max-ind-range", type=_ind_range, default=None, help="Criteo: ids modulo this first (-1: none)")
    d.add_argument("--split-seed", type=_NON_NEGATIVE, default=None, help="MovieLens: seed of the 80/10/10 split")
    d.add_argument("--synthetic-rows", type=_COUNT, default=None)
    d.add_argument("--synthetic-scale", type=number(0.0, inclusive=False), default=None,
                   help="divide Kaggle cardinalities by this")
    t = p.add_argument_group("training")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adagrad")
    t.add_argument("--learning-rate", type=number(0.0, inclusive=False), default=None,
                   help=f"default {DEFAULT_LEARNING_RATES['adagrad']} for adagrad; per optimizer: {DEFAULT_LEARNING_RATES}")
    t.add_argument("--lr-num-warmup-steps", type=_NON_NEGATIVE, default=None,
                   help=f"linear learning-rate warm-up over this many steps (default {TrainConfig.warmup_steps})")
    t.add_argument("--mini-batch-size", type=_COUNT, default=128)
    t.add_argument("--nepochs", type=_COUNT, default=1)
    t.add_argument("--seed", type=_NON_NEGATIVE, default=0)
    t.add_argument("--eval-every", type=_NON_NEGATIVE, default=None, help="steps (default or 0: every epoch end)")
    t.add_argument("--early-stopping", type=_COUNT, default=None, metavar="PATIENCE",
                   help="evaluations without a better validation loss before stopping")
    t.add_argument("--max-steps", type=_COUNT, default=None)
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
    o.add_argument("--checkpoint-every", type=_COUNT, default=None)
    o.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    o.add_argument("--log-file", default=None, help="JSON-lines log")
    o.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    o.add_argument("--no-progress", action="store_true")
    from dlrm.launch import add_distributed_arguments

    add_distributed_arguments(p)  # --nproc-per-node, --parallel, ... (dlrm.launch)
    return p


def config_from_args(args: argparse.Namespace, num_dense: Optional[int] = None) -> TrainConfig:
    """The :class:`dlrm.train.TrainConfig` the parsed flags describe.

    ``num_dense`` (the data set's) is checked against ``--arch-mlp-bot``'s first entry.
    """
    from dlrm.config import table_option_fields
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
    for key in table_option_fields():  # a table option's flag is its name (--num-collisions, ...)
        value = getattr(args, key, None)
        if value is not None:
            options[key] = tuple(value) if key == "hidden_dims" else value
    if args.dlrm_compatible_qr and method != "qr":
        raise ValueError("--dlrm-compatible-qr needs --qr-flag or --embedding qr")
    if args.compression is not None and method == "full":
        raise ValueError(f"--compression {args.compression:g} needs a compressed method (--embedding METHOD, "
                         "--qr-flag or --md-flag)")
    if args.recluster_every and method != "cluster":
        raise ValueError(f"--recluster-every re-clusters 'cluster' tables; the method is {method!r} "
                         "(--embedding cluster)")
    model_options: Dict[str, Any] = {}
    if args.model_features is not None:
        model_options["features"] = [f.strip() for f in str(args.model_features).split(",")]
    if args.first_order is not None:
        model_options["first_order"] = args.first_order
    if args.model != "dlrm" and args.arch_mlp_bot is not None:
        raise ValueError(f"--arch-mlp-bot applies to --model dlrm; --model {args.model} has no bottom MLP")

    dataset = _DATA_SETS[args.data_set]
    ds_options = {}
    if dataset.startswith("criteo"):
        if args.raw_data_file is None:
            raise ValueError(f"--data-set {args.data_set} needs --raw-data-file")
        ds_options["raw_data_file"] = args.raw_data_file
        if args.max_ind_range is not None:
            ds_options["max_ind_range"] = args.max_ind_range
        ds_options["progress"] = not args.no_progress
        if args.strict:
            ds_options["strict"] = True
    elif args.strict:
        raise ValueError(f"--strict applies to Criteo files, not --data-set {args.data_set}")
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
        if args.arch_interaction_op == "dot" and bottom[-1] != d and num_dense != 0:
            raise ValueError(
                f"--arch-mlp-bot {'-'.join(map(str, bot))} ends in {bottom[-1]}, but the dot interaction needs the "
                f"bottom MLP to end in --arch-sparse-feature-size {d} (e.g. {'-'.join(map(str, bot))}-{d}; "
                f"DLRM's Kaggle setting is 13-512-256-64-16)")
    top = tuple(args.arch_mlp_top)
    sparse = _SPARSE[args.sparse]
    return TrainConfig(
        dataset=dataset, dataset_options=ds_options, seed=args.seed, embedding_dim=d,
        bottom_mlp=bottom, top_mlp=top, interaction=args.arch_interaction_op,
        interaction_itself=args.arch_interaction_itself, method=method, threshold=threshold,
        embedding_options=options, md_temperature=md_temperature,
        dlrm_compatible_qr=args.dlrm_compatible_qr, optimizer=args.optimizer,
        learning_rate=args.learning_rate, batch_size=args.mini_batch_size,
        **({} if args.lr_num_warmup_steps is None else {"warmup_steps": args.lr_num_warmup_steps}), epochs=args.nepochs,
        eval_every=args.eval_every, early_stopping_patience=args.early_stopping,
        max_steps=args.max_steps, sparse=sparse, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, resume=not args.no_resume, log_path=args.log_file,
        device=args.device, test_with=args.test_with,
        embedding_collection=None if args.embedding_collection == "none" else args.embedding_collection,
        model=args.model, model_options=model_options, recluster_every=args.recluster_every,
    )


def describe_config(config: TrainConfig) -> str:
    """The resolved configuration in one line of ``field=value`` (table and data options flattened,
    unset fields left out).

    Example::

        >>> from dlrm.train import TrainConfig
        >>> line = describe_config(TrainConfig(method="qr", embedding_options={"num_collisions": 4}))
        >>> line.split()[:4], "method=qr" in line, "num_collisions=4" in line
        (['dataset=movielens-100k', 'seed=0', 'embedding_dim=16', 'bottom_mlp=64-16'], True, True)
    """
    parts: List[str] = []
    for key, value in config.to_dict().items():
        if key in ("embedding_options", "dataset_options", "table_overrides"):
            parts += [f"{k}={_show(v)}" for k, v in sorted(value.items()) if k != "progress"]
        elif value is not None and value != {}:
            parts.append(f"{key}={_show(value)}")
    return " ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "-".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def malformed_report(dataset: Any, shown: int = 10) -> Optional[Dict[str, Any]]:
    """What the data layer skipped as malformed (a Criteo cache's report in ``dataset.info``):
    ``{"count", "lines", "by_reason": {reason: count}, "first": ["file:line", ...]}`` (the first
    ``shown`` in file order), or ``None`` when it skipped nothing or keeps no such report."""
    info = getattr(dataset, "info", None) or {}
    count = int(info.get("num_malformed") or 0)
    if count <= 0:
        return None
    reasons = info.get("malformed") or {}
    entries = sorted((int(e.get("file_index", 0)), int(e["line"]), str(e.get("file", "?")))
                     for rep in reasons.values() for e in rep.get("first", []))
    return {
        "count": count,
        "lines": int(info.get("num_lines") or 0),
        "by_reason": {str(r): int(rep.get("count", 0)) for r, rep in reasons.items()},
        "first": [f"{name}:{line}" for _, line, name in entries[:shown]],
    }


def _files_of(dataset: Any) -> str:
    sources = [os.path.basename(str(src.get("path", "?"))) for src in (getattr(dataset, "info", None) or {})
               .get("sources", []) if isinstance(src, dict)]
    return ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else "") if sources else "the data"


def _check_malformed(dataset: Any, say: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """Report skipped malformed lines (``say``); refuse a data set that kept no line at all."""
    report = malformed_report(dataset)
    info = getattr(dataset, "info", None) or {}
    files = _files_of(dataset)
    if report is None:
        if "num_lines" in info and int(info.get("num_lines") or 0) == 0:
            raise ValueError(f"{files} holds no lines: nothing to train on")
        return None
    reasons = ", ".join(f"{r}: {c}" for r, c in report["by_reason"].items())
    first = ", ".join(report["first"][:5])
    if report["count"] >= report["lines"]:
        hint = "a compressed file given as text? a wrong field separator or a trailing tab?"
        for src in info.get("sources", []):
            path = str(src.get("path", "")) if isinstance(src, dict) else ""
            try:
                with open(path, "rb") as fh:
                    magic = fh.read(4)
            except OSError:
                continue
            if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:4] == b"\x28\xb5\x2f\xfd":
                hint = f"{os.path.basename(path)} is compressed: decompress it first (e.g. gunzip)"
                break
        raise ValueError(f"all {report['lines']} lines of {files} are malformed ({reasons}; first at {first}): nothing "
                         f"to train on ({hint})")
    say(f"warning: skipped {report['count']} of {report['lines']} lines of {files} as malformed ({reasons}); "
        f"first at {first}; --strict refuses such a file")
    return report


_SHOWN = ("val_loss", "val_auc", "val_accuracy", "test_loss", "test_auc", "test_accuracy",
          "embedding_params", "mlp_params", "total_params", "steps", "samples_per_s",
          "wall_time_s", "stopped_early")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``compemb train``: parse DLRM-style flags, check them and the outputs, train, print the
    configuration, the model's size, where outputs go and the final metrics.

    Without ``--json`` everything goes to stdout; with it stdout carries only the one JSON line of
    the result and the rest goes to stderr. Exit status: 0 done, 2 a bad flag, input or output
    path (one ``compemb train: error: ...`` line), 1 a run that collapsed, 130 interrupted.

    In a rank torchrun started it does not return: the process leaves with that status once the
    result is printed (:func:`dlrm.launch.exit_elastic_worker`).
    """
    from dlrm.launch import exit_elastic_worker

    code = _train(argv)
    exit_elastic_worker(code)
    return code


def _train(argv: Optional[Sequence[str]]) -> int:
    from compemb.kernels import BackendUnavailableError
    from dlrm import train as train_module
    from dlrm.data import load_dataset

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.embedding_collection == "triton" or args.optimizer == "sgd_triton_fused") \
            and str(args.device).startswith("cpu"):
        # Triton decides at import whether kernels are interpreted: set it before anything imports
        # triton (if it already was, without it, building the model says so)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        if os.environ.get("RANK", "0") in ("", "0"):  # (of several ranks, rank 0 speaks)
            print(line, file=stream, flush=True)

    try:
        config = config_from_args(args)
        from dlrm.launch import join

        # several processes (dlrm.launch): launch them here (--nproc-per-node) or join their group
        job = join(args, config, list(sys.argv[1:] if argv is None else argv))
        if job.exit_code is not None:
            return job.exit_code
        config = job.configure(config)
        train_module.preflight(config)
        dataset = load_dataset(config.dataset, **config.dataset_options)
        malformed = _check_malformed(dataset, say)
        config = job.configure(config_from_args(args, num_dense=dataset.num_dense))
        say(f"config: {describe_config(config)}")
        result = job.finish(train_module.train(config, progress=not args.no_progress and job.is_main,
                                               dataset=dataset, say=say, parallel=job.parallel))
    except train_module.TrainingCollapsedError as exc:
        print(f"compemb train: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f"; re-run the same command to resume from {args.checkpoint_dir}" if args.checkpoint_dir else ""
        print(f"compemb train: interrupted{where}", file=sys.stderr)
        return 130
    except BackendUnavailableError as exc:
        hint = "" if args.backend in (None, "torch", "auto") else \
            f"; --backend torch (or auto) runs anywhere, --backend {args.backend} needs its package and device"
        print(f"compemb train: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        print(f"compemb train: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if not job.is_main:
        return 0
    if malformed is not None:
        result = {**result, "malformed_lines": malformed}
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
