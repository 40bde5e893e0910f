"""Regression tests of review findings in dlrm, sweeps and paper_figures."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("argv, flag", [
    (["prepare", "criteo", "--raw-data-file", "x", "--piece-mb", "0"], "--piece-mb"),
    (["prepare", "criteo", "--raw-data-file", "x", "--piece-mb", "-1"], "--piece-mb"),
    (["prepare", "criteo", "--raw-data-file", "x", "--estimate-only", "--workers", "0"], "--workers"),
    (["prepare", "criteo", "--raw-data-file", "x", "--merge-workers", "0"], "--merge-workers"),
])
def test_data_prepare_refuses_out_of_range_flags(argv, flag, capsys):
    from dlrm.data.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and argv[-1] in err


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--heartbeat", "0"), ("--grace", "-5"),
                                         ("--workers", "-1")])
def test_sweep_run_refuses_out_of_range_flags(flag, value, capsys):
    from sweeps.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--space", "paper-collisions", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and f"got {value}" in err


def test_sweep_objective_table_fields_are_the_configs_and_import_no_torch():
    import subprocess
    import sys

    code = "import sys, sweeps.objective; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    import sweeps.objective as objective
    from dlrm.config import table_option_fields

    assert set(objective.EMBEDDING_FIELDS) == set(table_option_fields())
    assert {"tt_rank", "num_hot", "compression", "mode"} <= set(table_option_fields())
    assert not {"name", "num_embeddings", "embedding_dim", "method"} & set(table_option_fields())


@pytest.mark.parametrize("shuffle", [False, True])
def test_rank_split_rows_are_the_splits_batch_rows(shuffle):
    import numpy as np

    from dlrm.data import load_dataset
    from dlrm.distributed import RankSplit

    split = load_dataset("synthetic", rows=500, scale=1e6).split("train")
    batches = list(split.batches(64, shuffle=shuffle, seed=3, start_batch=1))
    rows = list(RankSplit(split, 0, 2).global_rows(64, shuffle=shuffle, seed=3, start_batch=1))
    alone = list(RankSplit(split, 0, 1).batches(64, shuffle=shuffle, seed=3, start_batch=1))
    assert len(rows) == len(batches) == len(alone) == split.num_batches(64) - 1
    for r, b, a in zip(rows, batches, alone):
        assert len(r) == len(b.labels) and r.dtype == np.int64
        assert np.array_equal(a.labels.numpy(), b.labels.numpy()) and np.array_equal(a.dense.numpy(), b.dense.numpy())
