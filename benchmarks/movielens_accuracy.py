"""Accuracy of QR embeddings against the full model and the hashing trick on MovieLens-100k.

For each seed: the full DLRM; QR with ``mult``, ``add`` and ``concat`` at 2, 4 and 8 collisions;
and the hashing trick with exactly as many embedding parameters as each QR model (per compressed
table: ``buckets = QR table parameters / d``, so mult and add share one hashing run per collision
count, and concat — whose generic module splits ``d`` across its two tables — gets its own).
Only tables with more than ``--threshold`` rows are compressed (user, item and zip code at the
default 100). Every run uses the same hyperparameters.

Prints mean ± std over seeds of the test AUC and log loss, the AUC ratio against the full model,
and writes every run to ``results/movielens_accuracy.csv`` (plus the summary beside it).

    python benchmarks/movielens_accuracy.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from compemb.baselines import HashEmbeddingBag  # noqa: E402
from dlrm.data import load_dataset  # noqa: E402
from dlrm.train import TrainConfig, train  # noqa: E402
from _common import print_table_header, write_csv  # noqa: E402


def base_config(args, seed: int, **kw) -> TrainConfig:
    return TrainConfig(
        dataset="movielens-100k", seed=seed, embedding_dim=args.dim,
        bottom_mlp=(32, args.dim), top_mlp=(64, 32, 1), optimizer=args.optimizer,
        learning_rate=args.lr, batch_size=args.batch_size, epochs=args.epochs,
        eval_every=args.eval_every, early_stopping_patience=args.patience, max_steps=args.max_steps,
        device=args.device, **kw,
    )


class HashedLike:
    """A ``customize_model`` that replaces every compressed table by a hashed one of
    ``floor(QR table parameters / dim)`` buckets (a class, so worker processes can pickle it)."""

    def __init__(self, qr_tables: dict, dim: int):
        self.qr_tables, self.dim = dict(qr_tables), dim

    def __call__(self, model):
        for i, spec in enumerate(model.config.tables):
            if spec.method == "full":
                continue
            buckets = max(1, self.qr_tables[spec.name] // self.dim)
            model.replace_table(i, HashEmbeddingBag(spec.num_embeddings, self.dim, num_buckets=buckets,
                                                    mode=spec.mode, sparse=model.config.sparse))


_DATASET = None


def _init_worker(threads: int) -> None:
    global _DATASET
    torch.set_num_threads(threads)
    _DATASET = load_dataset("movielens-100k")


def _run_job(job):
    label, method, op, c, seed, config, customize = job
    t = time.perf_counter()
    r = train(config, dataset=_DATASET, customize_model=customize)
    row = {"model": label, "method": method, "operation": op, "collisions": c, "seed": seed,
           "test_auc": r["test_auc"], "test_loss": r["test_loss"], "val_auc": r["val_auc"],
           "val_loss": r["val_loss"], "embedding_params": r["embedding_params"],
           "mlp_params": r["mlp_params"], "steps": r["steps"], "wall_time_s": time.perf_counter() - t}
    return row


def _qr_tables(config, dataset):
    from dlrm.train import build_model

    return build_model(config, dataset).table_parameters()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--collisions", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--operations", nargs="+", default=["mult", "add", "concat"])
    p.add_argument("--threshold", type=int, default=100)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--optimizer", default="adagrad")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap per run (smoke tests)")
    p.add_argument("--workers", type=int, default=1, help="parallel runs (1 torch thread each)")
    p.add_argument("--device", default="cpu", help="torch device of every run (cpu, cuda)")
    p.add_argument("--out", default=os.path.join("results", "movielens_accuracy.csv"))
    args = p.parse_args(argv)

    ds = load_dataset("movielens-100k")
    jobs = []
    for seed in args.seeds:
        jobs.append(("full", "full", "", 0, seed, base_config(args, seed), None))
        for c in args.collisions:
            hashed_for = {}
            for op in args.operations:
                cfg = base_config(args, seed, method="qr", threshold=args.threshold,
                                  embedding_options={"operation": op, "num_collisions": c})
                jobs.append((f"qr-{op}-{c}", "qr", op, c, seed, cfg, None))
                tables = _qr_tables(cfg, ds)
                hashed_for.setdefault(sum(tables.values()), (op, tables))
            for op, tables in hashed_for.values():
                label = f"hash~qr-{'mult/add' if op in ('mult', 'add') else op}-{c}"
                cfg = base_config(args, seed, method="hash", threshold=args.threshold,
                                  embedding_options={"num_collisions": c})
                jobs.append((label, "hash", op, c, seed, cfg, HashedLike(tables, args.dim)))
    print(f"{len(jobs)} runs on {args.workers} worker(s)", flush=True)
    rows = []
    if args.workers <= 1:
        _init_worker(torch.get_num_threads())
        results = map(_run_job, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.workers, initializer=_init_worker, initargs=(1,))
        results = pool.imap_unordered(_run_job, jobs)
    for row in results:
        rows.append(row)
        print(f"  {row['model']:<20} seed {row['seed']}: test AUC {row['test_auc']:.4f}  "
              f"loss {row['test_loss']:.4f}  emb params {row['embedding_params']}  "
              f"({row['wall_time_s']:.0f} s)", flush=True)
    order = {j[0]: i for i, j in reversed(list(enumerate(jobs)))}
    rows.sort(key=lambda r: (order[r["model"]], r["seed"]))

    write_csv(args.out, rows)

    def stats(values):
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return mean, std

    labels = list(dict.fromkeys(r["model"] for r in rows))
    full_auc, _ = stats([r["test_auc"] for r in rows if r["model"] == "full"])
    summary = []
    print()
    print_table_header(f"MovieLens-100k, d={args.dim}, {args.optimizer} lr={args.lr}, batch {args.batch_size}, "
                       f"{args.epochs} epochs, threshold {args.threshold}, seeds {args.seeds}",
                       f"{'model':<20} {'emb params':>10} {'test AUC':>17} {'test log loss':>17} {'AUC/full':>9}")
    for label in labels:
        sel = [r for r in rows if r["model"] == label]
        auc_m, auc_s = stats([r["test_auc"] for r in sel])
        loss_m, loss_s = stats([r["test_loss"] for r in sel])
        params = sel[0]["embedding_params"]
        summary.append({"model": label, "embedding_params": params, "auc_mean": auc_m, "auc_std": auc_s,
                        "loss_mean": loss_m, "loss_std": loss_s, "auc_ratio_vs_full": auc_m / full_auc})
        print(f"{label:<20} {params:>10} {auc_m:>9.4f} ± {auc_s:.4f} {loss_m:>9.4f} ± {loss_s:.4f} "
              f"{auc_m / full_auc:>9.4f}")
    summary_path = os.path.splitext(args.out)[0] + "_summary.csv"
    write_csv(summary_path, summary)
    print(f"\nruns: {args.out}\nsummary: {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
