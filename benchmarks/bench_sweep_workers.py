"""Throughput of a PostgreSQL-backed sweep with 2 local workers against 1 (trials per minute).

Needs a server: ``source .ci/postgres.sh`` (or set COMPEMB_TEST_POSTGRES_URL). Each trial trains a
small DLRM on MovieLens-100k for ``--steps`` steps; both runs use the same grid on fresh studies, in
this one process, so the ratio is what matters (the machine is shared: absolute numbers are noisy).

    python benchmarks/bench_sweep_workers.py [--seeds 4] [--steps 100]
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--storage", default=os.environ.get("COMPEMB_TEST_POSTGRES_URL"))
    p.add_argument("--objective", default="sweeps.objective:train_objective",
                   help="e.g. sweeps._testing:sleepy_objective (with COMPEMB_TEST_SLEEP_S) to time the "
                        "coordination alone, as if each worker had its own machine")
    args = p.parse_args()
    if not args.storage:
        print("no PostgreSQL URL: source .ci/postgres.sh first (or pass --storage)", file=sys.stderr)
        return 2
    import optuna

    import subprocess
    import time

    from sweeps.runner import create_study, grid_status, load_study, make_storage, worker_argv
    from sweeps.space import get_space

    overrides = {"dataset": "movielens-100k", "embedding_dim": 8, "bottom_mlp": [32, 8], "top_mlp": [32, 1],
                 "batch_size": 256, "max_steps": args.steps}
    seeds = tuple(range(args.seeds))
    rows = []
    for workers in (1, 2):
        name = f"bench-{workers}w-{uuid.uuid4().hex[:8]}"
        space = get_space("tiny", seeds=seeds)
        create_study(space, make_storage(args.storage, heartbeat_interval=None), name)
        argv = worker_argv("tiny", args.storage, name, args.objective, overrides, seeds, None,
                           10, None, 3)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        start = time.perf_counter()  # both cases start worker processes, so both pay the same start-up
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(workers)]
        assert all(pr.wait() == 0 for pr in procs)
        wall = time.perf_counter() - start
        st = grid_status(load_study(args.storage, name), space)
        assert len(st.done) == space.size and not st.duplicates
        rows.append((workers, space.size, wall, 60.0 * space.size / wall))
        if not os.environ.get("BENCH_KEEP"):
            optuna.delete_study(study_name=name, storage=make_storage(args.storage, heartbeat_interval=None))
        else:
            print(name)
    print(f"{'workers':>7} {'trials':>6} {'wall s':>8} {'trials/min':>10}")
    for w, n, wall, tpm in rows:
        print(f"{w:>7} {n:>6} {wall:>8.1f} {tpm:>10.1f}")
    print(f"ratio 2 workers / 1 worker: {rows[1][3] / rows[0][3]:.2f}x  (cores: {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
