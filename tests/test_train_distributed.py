"""``compemb train`` on 2 ranks (gloo): hybrid and data parallelism equal one process, independent
mode, kill-and-resume under torch's elastic launcher, 1-process loading of a 2-rank checkpoint,
and bad input refused before training.

The hybrid / data / independent runs share one 2-process job
(``tests/_train_distributed_cases.py``); the kill-and-resume test starts the real launcher
(``compemb train --nproc-per-node 2``) twice and kills rank 1 with SIGKILL in between.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlrm.local_ranks import RanksFailedError, free_port, run_local_ranks

pytest.importorskip("torchrec")

import _train_distributed_cases as cases  # noqa: E402

TIMEOUT_S = 300
#: N-vs-1 tolerances: float32 reduction order only (measured here: 1e-8 on the loss curve and the metrics)
CURVE_TOL = 1e-4
METRIC_TOL = 1e-4
METRICS = ("val_loss", "val_auc", "val_accuracy", "test_loss", "test_auc", "test_accuracy")


def _records(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _curve(path) -> list:
    return [(r["step"], r["train_loss"], r["val_loss"], r["val_auc"]) for r in _records(path) if r["event"] == "eval"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def one_process(work):
    """The reference: one process, the same flags, the global batch."""
    res = cases.run_case(cases.argv("--log-file", str(work / "one.jsonl")))
    assert res["code"] == 0, res["stderr"]
    return json.loads(res["stdout"].strip().splitlines()[-1])


@pytest.fixture(scope="module")
def job(work):
    """One 2-rank job (spawned ranks) running every case; ``{case: [rank 0's result, rank 1's]}``."""
    case_list = [
        ("hybrid", cases.argv("--parallel", "hybrid", "--replicate-rows", "100",
                              "--log-file", str(work / "hybrid.jsonl"))),
        ("data", cases.argv("--parallel", "data", "--log-file", str(work / "data.jsonl"),
                            "--checkpoint-dir", str(work / "data_ckpt"))),
        ("independent", cases.argv("--parallel", "independent", "--log-file", str(work / "independent.jsonl"),
                                   "--checkpoint-dir", str(work / "independent_ckpt"))),
        # stopped at step 8 (max_steps may change on resume), then carried on to the end
        ("data_part", cases.argv("--parallel", "data", "--checkpoint-dir", str(work / "data_resume"), "--max-steps", "8")),
        ("data_rest", cases.argv("--parallel", "data", "--checkpoint-dir", str(work / "data_resume"))),
        ("independent_part", cases.argv("--parallel", "independent", "--checkpoint-dir", str(work / "indep_resume"),
                                        "--max-steps", "8")),
        ("independent_rest", cases.argv("--parallel", "independent", "--checkpoint-dir", str(work / "indep_resume"))),
        ("budget", cases.argv("--parallel", "hybrid", "--memory-per-rank-gb", "0.00001")),
        ("unservable", ["--data-set", "movielens-100k", "--arch-sparse-feature-size", "8", "--arch-mlp-bot", "2-8",
                        "--embedding", "qr", "--optimizer", "sgd", "--replicate-rows", "0",
                        "--sharding-type", "data_parallel", "--no-progress"]),
    ]
    jobs = [(name, free_port(), args) for name, args in case_list]
    try:
        got = run_local_ranks(cases.worker, cases.WORLD, (jobs,), timeout=TIMEOUT_S)
    except RanksFailedError as exc:
        pytest.fail(str(exc))
    return {name: [got[r][name] for r in range(cases.WORLD)] for name, _, _ in jobs}


def _finished(job, name) -> dict:
    main, other = job[name]
    for rank, res in enumerate(job[name]):
        assert res["code"] == 0, f"rank {rank}, case {name}: {res['stderr']}"
        # the run took its process group down once, with no DDP module left to outlive it
        assert res["ddp_at_teardown"] == [0], (rank, name, res["ddp_at_teardown"])
    assert other["stdout"] == "", "only rank 0 prints"
    lines = main["stdout"].strip().splitlines()
    assert len(lines) == 1, main["stdout"]  # --json: one line, from rank 0
    return json.loads(lines[0])


@pytest.mark.parametrize("mode", ["hybrid", "data"])
def test_two_ranks_train_as_one_process_with_the_global_batch(job, one_process, work, mode):
    result = _finished(job, mode)
    assert result["parallel"] == mode and result["world_size"] == 2
    assert result["steps"] == one_process["steps"] == 17  # (an epoch of 17 global batches, the last of 95)
    for key in METRICS:
        assert abs(result[key] - one_process[key]) <= METRIC_TOL, (key, result[key], one_process[key])
    curve, ref = _curve(work / f"{mode}.jsonl"), _curve(work / "one.jsonl")
    assert [c[0] for c in curve] == [c[0] for c in ref] == [6, 12, 17]
    diff = max(abs(a - b) for c, r in zip(curve, ref) for a, b in zip(c[1:], r[1:]))
    assert diff <= CURVE_TOL, (curve, ref)
    if mode == "hybrid":  # the qr quotient tables sharded by TorchRec, the remainders replicated
        assert set(result["sharding"]) == {"C3__t1", "C4__t1", "C12__t1", "C16__t1", "C21__t1"}
        assert result["embedding_params"] == one_process["embedding_params"]


def test_independent_ranks_share_the_mlps_not_the_tables(job, work):
    import torch

    from dlrm.checkpoint import read_checkpoint
    from dlrm.distributed import LATEST, RANKS_DIR

    result = _finished(job, "independent")
    assert result["parallel"] == "independent"
    ranks = result["rank_metrics"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["test_auc"] == result["test_auc"]  # the headline is rank 0's model
    assert ranks[0]["test_auc"] != ranks[1]["test_auc"]  # each rank evaluates its own tables
    directory = work / "independent_ckpt" / RANKS_DIR
    step = (directory / LATEST).read_text().strip()
    a, b = (read_checkpoint(str(directory / step / f"rank{r}.pt"))["model"] for r in range(2))
    dense = [k for k in a if not k.startswith("embeddings.") and isinstance(a[k], torch.Tensor)]
    tables = [k for k in a if k.startswith("embeddings.") and isinstance(a[k], torch.Tensor)]
    assert dense and tables
    assert all(torch.equal(a[k], b[k]) for k in dense), "the MLPs are averaged: identical on every rank"
    moved = [k for k in tables if not torch.equal(a[k], b[k])]
    assert len(moved) >= len(tables) // 2, "each rank trains its own tables on its own data"


@pytest.mark.parametrize("mode", ["data", "independent"])
def test_a_stopped_two_rank_run_carries_on_exactly(job, mode):
    full, part, rest = (_finished(job, name) for name in (mode, f"{mode}_part", f"{mode}_rest"))
    assert part["steps"] == 8 and rest["steps"] == full["steps"] == 17
    assert "at step 8" in job[f"{mode}_rest"][0]["stderr"] and "resuming from" in job[f"{mode}_rest"][0]["stderr"]
    for key in METRICS:
        assert abs(rest[key] - full[key]) <= 1e-6, (key, rest[key], full[key])
    if mode == "independent":
        assert rest["rank_metrics"] == full["rank_metrics"]


def test_one_process_loads_the_checkpoints_of_two_ranks(job, work):
    from dlrm.data import load_dataset
    from dlrm.distributed import load_unsharded
    from dlrm.train import evaluate

    ds = load_dataset("synthetic", rows=2500, scale=3000.0, seed=0)
    data = _finished(job, "data")
    _, model = load_unsharded(str(work / "data_ckpt"), dataset=ds)
    got = evaluate(model, ds.split("test"), 512, prefix="test_")
    assert abs(got["test_auc"] - data["test_auc"]) <= 1e-6
    independent = _finished(job, "independent")
    for rank in (0, 1):
        _, model = load_unsharded(str(work / "independent_ckpt"), dataset=ds, rank=rank)
        got = evaluate(model, ds.split("test"), 512, prefix="test_")
        assert abs(got["test_auc"] - independent["rank_metrics"][rank]["test_auc"]) <= 1e-6


def test_tables_that_fit_no_rank_are_refused_before_training(job):
    for res in job["budget"]:
        assert res["code"] == 2
        line = res["stderr"].strip().splitlines()[-1]
        assert line.startswith("compemb train: error: table 'C3'") and "fits no rank's memory budget of 1e-05 GB" in line


def test_a_sharding_type_the_table_cannot_take_is_refused_before_training(job):
    for res in job["unservable"]:
        assert res["code"] == 2
        line = res["stderr"].strip().splitlines()[-1]
        assert "'genres__t0'" in line and "not 'data_parallel'" in line and line.startswith("compemb train: error:")


# -- kill and resume under the real launcher -------------------------------------------------------
def _children_by_rank(parent: int) -> dict:
    """``{RANK: pid}`` of the ranks the launcher ``parent`` started (read from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{entry}/environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(entry)
    return out


def _launch(args, **kwargs):
    launcher_env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in launcher_env}
    return subprocess.Popen([sys.executable, "-m", "compemb", "train", "--nproc-per-node", "2", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_a_killed_two_rank_run_resumes_exactly(job, work):
    from dlrm.data import load_dataset
    from dlrm.distributed import DCP_DIR, LATEST, load_unsharded
    from dlrm.train import evaluate

    uninterrupted = _finished(job, "hybrid")
    ckpt, log = work / "killed_ckpt", work / "killed.jsonl"
    args = cases.argv("--replicate-rows", "100", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2",
                      "--log-file", str(log))
    first = _launch(args)
    pointer = ckpt / DCP_DIR / LATEST
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and first.poll() is None:
        if pointer.exists() and int(pointer.read_text().strip().split("-")[1]) >= 4:
            break
        time.sleep(0.02)
    ranks = _children_by_rank(first.pid)
    assert first.poll() is None and set(ranks) == {0, 1}, "the run must still be going with both ranks"
    os.kill(ranks[1], signal.SIGKILL)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"compemb train: error: rank 1 (pid {ranks[1]}) was killed by signal SIGKILL")
    assert "the launcher stopped rank 0" in line and "stays loadable" in line
    killed_at = int(pointer.read_text().strip().split("-")[1])
    assert 4 <= killed_at < 17
    # the last checkpoint stays loadable, in one process too
    ds = load_dataset("synthetic", rows=2500, scale=3000.0, seed=0)
    config, partial = load_unsharded(str(ckpt), dataset=ds)
    assert config.batch_size == 128
    second = _launch(args)
    out, err = second.communicate(timeout=TIMEOUT_S)
    assert second.returncode == 0, err[-3000:]
    assert f"resuming from {ckpt / DCP_DIR} at step {killed_at}" in err + out
    resumed = json.loads(out.strip().splitlines()[-1])
    for key in METRICS:
        assert abs(resumed[key] - uninterrupted[key]) <= 1e-6, (key, resumed[key], uninterrupted[key])
    a, b = _curve(log), _curve(work / "hybrid.jsonl")
    assert [r[0] for r in a] == [r[0] for r in b]
    assert np.allclose(np.array(a), np.array(b), rtol=0, atol=1e-6), (a, b)
    # ... and the finished 2-rank checkpoint loads into one process with the final weights
    _, model = load_unsharded(str(ckpt), dataset=ds)
    got = evaluate(model, ds.split("test"), 512, prefix="test_")
    assert abs(got["test_auc"] - resumed["test_auc"]) <= 1e-6 and abs(got["test_loss"] - resumed["test_loss"]) <= 1e-6


# -- bad input, refused before any process starts ----------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    (["--nproc-per-node", "3"], "--mini-batch-size 128 (the global batch) is not divisible by the world size 3"),
    (["--nproc-per-node", "2", "--parallel", "data", "--sharding-type", "row_wise"],
     "--sharding-type row_wise cannot combine with --parallel data"),
    (["--nproc-per-node", "2", "--embedding-collection", "triton"],
     "--embedding-collection triton cannot combine with --parallel hybrid"),
    (["--nproc-per-node", "2", "--optimizer", "adam"], "--optimizer adam cannot train TorchRec-sharded tables on cpu"),
    (["--nproc-per-node", "2", "--optimizer", "amsgrad"], "--optimizer amsgrad cannot train TorchRec-sharded tables"),
    (["--nproc-per-node", "2", "--parallel", "data", "--optimizer", "sgd_triton_fused"],
     "--optimizer sgd_triton_fused cannot combine with --parallel data"),
    (["--parallel", "independent"], "--parallel: only for several processes"),
    (["--nproc-per-node", "2", "--parallel", "independent", "--replicate-rows", "10"],
     "--replicate-rows 10 cannot combine with --parallel independent"),
])
def test_bad_combinations_are_refused_before_any_rank_starts(capsys, extra, needle):
    from dlrm.cli import train_main

    args = [a for a in cases.argv() if a not in ("--json",)] + extra
    t0 = time.monotonic()
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compemb train: error: ") and needle in err[0], err
    assert time.monotonic() - t0 < 20  # (no rank was started)


def test_rank_split_reads_each_ranks_slice_of_every_global_batch():
    from dlrm.data import load_dataset
    from dlrm.distributed import RankSplit

    ds = load_dataset("synthetic", rows=2500, scale=3000.0, seed=0)
    split = ds.split("test")  # 179 rows: batches of 64, 64, 51
    for shuffle in (False, True):
        whole = list(split.batches(64, shuffle=shuffle, seed=7))
        parts = [list(RankSplit(split, r, 3).batches(64, shuffle=shuffle, seed=7)) for r in range(3)]
        assert [len(p) for p in parts] == [3, 3, 3]
        for b, batch in enumerate(whole):
            sizes = {len(p[b]) for p in parts}
            assert sizes == {-(-len(batch) // 3)}  # every rank holds as many samples
            labels = np.concatenate([p[b].labels.numpy() for p in parts])
            dense = np.concatenate([p[b].dense.numpy() for p in parts])
            keep = ~np.isnan(labels)
            assert keep.sum() == len(batch)  # the padding is masked by NaN labels
            assert np.array_equal(labels[keep], batch.labels.numpy())
            assert np.array_equal(dense[keep], batch.dense.numpy())
            for f in range(len(batch.indices)):
                got = np.concatenate([p[b].indices[f].numpy()[:int(keep[i * len(p[b]):(i + 1) * len(p[b])].sum())]
                                      for i, p in enumerate(parts)])
                assert np.array_equal(got, batch.indices[f].numpy())
    resumed = list(RankSplit(split, 1, 3).batches(64, shuffle=True, seed=7, start_batch=2))
    assert len(resumed) == 1 and np.array_equal(resumed[0].dense.numpy(), parts[1][2].dense.numpy())
