"""Sweeps: search spaces, a tiny real sweep on MovieLens-100k, resume, duplicates, a killed worker."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compemb
from sweeps import space as sp
from sweeps.cli import main as sweep_main, parse_set
from sweeps.results import export_study, trials_frame
from sweeps.runner import (create_study, default_storage_url, grid_status, load_study, make_storage, run_sweep,
                           run_worker, worker_argv)

ROOT = Path(__file__).resolve().parent.parent
SYNTH = "sweeps._testing:synthetic_objective"
# a tiny DLRM, a few dozen steps of real MovieLens-100k ratings per trial
TINY = {"dataset": "movielens-100k", "embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [8, 1],
        "batch_size": 512, "max_steps": 10, "eval_batch_size": 10000}


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ------------------------------------------------------------------------------------ spaces


def test_paper_grids_are_the_papers():
    coll = sp.get_space("paper-collisions")
    pts = dict(coll.points)
    assert {p["num_collisions"] for l, p in pts.items() if p["method"] == "hash"} == {2, 3, 4, 5, 6, 7, 60}
    for op in ("concat", "add", "mult"):
        assert {p["num_collisions"] for p in pts.values() if p.get("operation") == op} == {2, 3, 4, 5, 6, 7, 60}
    assert coll.size == (1 + 7 + 21) * 3
    thr = dict(sp.get_space("paper-thresholds").points)
    assert {p["threshold"] for p in thr.values()} == {1, 20, 200, 2000, 20000}
    assert {p["num_collisions"] for p in thr.values()} == {4}
    path = dict(sp.get_space("paper-path").points)
    assert sorted(p["hidden_dims"][0] for p in path.values() if p["method"] == "path") == [16, 32, 64, 128]
    extras = dict(sp.get_space("extras").points)
    assert {(p["method"], p.get("k")) for p in extras.values()} >= {("gqr", 3), ("crt", 3)}
    assert any(p["method"] == "md" for p in extras.values())
    assert not sp.get_space("open").is_grid and sp.get_space("open", n_trials=7).size == 7


@settings(max_examples=25, deadline=None)
@given(seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=5, unique=True),
       name=st.sampled_from(["paper-collisions", "paper-thresholds", "paper-path", "extras", "demo", "tiny"]))
def test_grid_keys_are_unique_and_cover_point_times_seed(seeds, name):
    s = sp.get_space(name, seeds=seeds)
    keys = s.grid_keys()
    assert len(keys) == len(set(keys)) == s.size == len(s.points) * len(seeds)
    grid = s.grid_search_space()
    assert grid["seed"] == list(seeds) and grid["point"] == s.labels()


def test_space_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="duplicate point labels"):
        sp.SearchSpace("x", "", points=(("a", {}), ("a", {})))
    with pytest.raises(TypeError, match="True"):
        sp.SearchSpace("x", "", points=(("a", {}),), seeds=(True,))
    with pytest.raises(KeyError, match="nope"):
        sp.get_space("nope")
    with pytest.raises(ValueError, match="n_trials"):
        sp.get_space("tiny", n_trials=3)
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["max_steps"])
    assert parse_set(["max_steps=3", "bottom_mlp=[8, 4]", "optimizer=adam"]) == {
        "max_steps": 3, "bottom_mlp": [8, 4], "optimizer": "adam"}


# ------------------------------------------------------------------------------------ real sweep


def test_tiny_real_sweep_records_everything_resumes_and_exports(tmp_path):
    rep = run_sweep("tiny", study_name="real", seeds=(0,), overrides=TINY, results_dir=tmp_path,
                    heartbeat_interval=5)
    assert (rep.complete, rep.expected, rep.failed, rep.duplicates) == (3, 3, 0, {})
    url = default_storage_url("real", tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'real.db'}" and url.startswith("sqlite:////")
    study = load_study(url, "real")
    trials = study.get_trials()
    assert len(trials) == 3
    for t in trials:
        a = t.user_attrs
        cfg, metrics, run = a["config"], a["metrics"], a["run"]
        for k, v in TINY.items():
            assert cfg[k] == v
        assert cfg["seed"] == 0 and cfg["method"] in ("full", "hash", "qr")
        for m in ("val_loss", "val_auc", "val_accuracy", "test_loss", "test_auc", "test_accuracy",
                  "embedding_params", "mlp_params", "total_params", "steps", "wall_time_s", "trial_wall_time_s"):
            assert m in metrics, m
        assert metrics["steps"] == TINY["max_steps"]
        assert 0.0 < metrics["test_loss"] < 5.0 and 0.0 <= metrics["test_auc"] <= 1.0
        assert a["test_loss"] == metrics["test_loss"] and a["test_auc"] == metrics["test_auc"]
        assert run == {"seed": 0, "version": compemb.__version__, "hostname": socket.gethostname(), "pid": os.getpid()}
        assert t.values == [metrics["embedding_params"], metrics["val_loss"]]
        assert a["grid_key"] == f"{t.params['point']}/s0"
    params = {t.params["point"]: t.user_attrs["metrics"]["embedding_params"] for t in trials}
    assert params["full"] > params["qr-mult-c4"] and params["full"] > params["hash-c4"]

    # re-running the same sweep resumes: nothing new is trained
    again = run_sweep("tiny", study_name="real", seeds=(0,), overrides=TINY, results_dir=tmp_path)
    assert again.trials_run == 0 and again.complete == 3
    assert len(load_study(url, "real").get_trials()) == 3

    paths = export_study(url, "real", tmp_path / "out")
    csv = pd.read_csv(paths["csv"])
    pq = pd.read_parquet(paths["parquet"])
    assert len(csv) == len(pq) == 3
    for col in ("number", "state", "point", "seed", "method", "test_loss", "test_auc", "test_accuracy",
                "val_loss", "embedding_params", "version", "hostname", "wall_time_s", "grid_key"):
        assert col in csv.columns and col in pq.columns, col
    assert sorted(csv["grid_key"]) == sorted(sp.get_space("tiny", seeds=(0,)).grid_keys())


# ------------------------------------------------------------------------------------ exactly once


def test_duplicate_grid_trial_is_pruned_not_completed(tmp_path):
    space = sp.get_space("tiny", seeds=(0,))
    url = default_storage_url("dup", tmp_path)
    study = create_study(space, make_storage(url, heartbeat_interval=None), "dup")
    study.enqueue_trial({"point": "full", "seed": 0})
    study.enqueue_trial({"point": "full", "seed": 0})
    rep = run_worker(space, url, "dup", SYNTH, heartbeat_interval=2)
    assert rep.complete == 3 and rep.duplicates == {}
    df = trials_frame(load_study(url, "dup"))
    full = df[df["grid_key"] == "full/s0"]
    # the second enqueued copy (and any GridSampler pick of the same point) ends PRUNED
    assert (full["state"] == "COMPLETE").sum() == 1 and (full["state"] == "PRUNED").sum() >= 1
    first = full[full["state"] == "COMPLETE"]["number"].iloc[0]
    assert (full[full["state"] == "PRUNED"]["duplicate_of"] == first).all()
    assert (df[df["state"] == "COMPLETE"]["grid_key"].value_counts() == 1).all()


def test_export_dedupe_keeps_first_complete(tmp_path):
    import optuna

    space = sp.get_space("tiny", seeds=(0,))
    url = default_storage_url("dd", tmp_path)
    study = create_study(space, make_storage(url, heartbeat_interval=None), "dd")
    dist = {"point": optuna.distributions.CategoricalDistribution(space.labels()),
            "seed": optuna.distributions.CategoricalDistribution([0])}
    for loss in (0.5, 0.4):  # written by another tool: two COMPLETE trials of one grid point
        study.add_trial(optuna.create_trial(params={"point": "full", "seed": 0}, distributions=dist,
                                            values=[10.0, loss], user_attrs={"grid_key": "full/s0"}))
    df = trials_frame(study, complete_only=True, dedupe=True)
    assert len(df) == 1 and df.attrs["duplicates_dropped"] == 1 and df["objective_val_loss"].iloc[0] == 0.5
    assert grid_status(study, space).duplicates == {"full/s0": [0, 1]}


def test_two_worker_processes_on_sqlite_complete_each_point_once(tmp_path, capsys):
    rep = run_sweep("tiny", study_name="two", seeds=(0, 1, 2), objective="sweeps._testing:sleepy_objective",
                    workers=2, results_dir=tmp_path, heartbeat_interval=2, show_progress=True)
    assert rep.complete == rep.expected == 9 and rep.duplicates == {}
    # the parent polls the storage: one line per trial the worker processes finished, then the table
    lines = capsys.readouterr().out.splitlines()
    assert "2 workers" in lines[0] and str(tmp_path.resolve() / "two.db") in lines[0]
    assert [l.split("]")[0] for l in lines if l.startswith("[")] == [f"[{i}/9" for i in range(1, 10)]
    assert lines[-4].split()[:2] == ["series", "seeds"] and {l.split()[0] for l in lines[-3:]} == {
        "full", "hash-c4", "qr-mult-c4"}
    study = load_study(default_storage_url("two", tmp_path), "two")
    df = trials_frame(study, complete_only=True)
    assert sorted(df["grid_key"]) == sorted(sp.get_space("tiny", seeds=(0, 1, 2)).grid_keys())
    assert df["pid"].nunique() == 2  # both workers did trials


def test_killed_worker_leaves_trial_failed_and_study_usable(tmp_path):
    from optuna.trial import TrialState

    url = default_storage_url("kill", tmp_path)
    block = tmp_path / "block"
    block.write_text("hold")
    argv = worker_argv("tiny", url, "kill", "sweeps._testing:blocking_objective", {}, seeds=(0,), n_trials=None,
                       heartbeat_interval=1, grace_period=2, max_retry=2)
    proc = subprocess.Popen(argv, env=_env(COMPEMB_TEST_BLOCK_FILE=block), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    started = Path(str(block) + ".started")
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the worker never started its trial"
        time.sleep(0.05)
    assert int(started.read_text()) == proc.pid
    os.kill(proc.pid, signal.SIGKILL)  # a real signal to a real process, mid-trial
    assert proc.wait(timeout=30) == -signal.SIGKILL
    block.unlink()

    study = load_study(url, "kill")
    (victim,) = study.get_trials(states=(TrialState.RUNNING,))
    time.sleep(3.0)  # > grace period: its heartbeat is stale now
    rep = run_worker(sp.get_space("tiny", seeds=(0,)), url, "kill", SYNTH, heartbeat_interval=1, grace_period=2,
                     max_retry=2)
    assert rep.complete == rep.expected == 3 and rep.duplicates == {}
    study = load_study(url, "kill")
    assert study.trials[victim.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params
    st_ = grid_status(study, sp.get_space("tiny", seeds=(0,)))
    assert all(len(v) == 1 for v in st_.complete.values()) and len(st_.done) == 3


# ------------------------------------------------------------------------------------ CLI, demo


def test_cli_run_list_export(tmp_path, capsys):
    assert sweep_main(["list"]) == 0
    assert "paper-collisions" in capsys.readouterr().out
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0", "--results-dir", str(tmp_path), "--objective", SYNTH,
                     "--set", "embedding_dim=8"])
    assert rc == 0
    url = default_storage_url("tiny", tmp_path)
    assert sweep_main(["list", "--storage", url]) == 0
    assert "tiny" in capsys.readouterr().out
    assert sweep_main(["export", "--study", "tiny", "--storage", url, "--out", str(tmp_path / "x")]) == 0
    df = pd.read_csv(tmp_path / "x" / "tiny.csv")
    assert len(df) == 3 and (df["embedding_dim"] == 8).all()
    assert sweep_main(["run", "--space", "nope", "--results-dir", str(tmp_path)]) == 2


def test_demo_main_job_with_stand_in_objective(tmp_path, capsys):
    from paper_figures.demo import main as demo_main

    rc = demo_main(["--results-dir", str(tmp_path), "--workers", "1", "--seeds", "0",
                    "--objective", SYNTH])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "demo wall time" in out and str((tmp_path / "figures" / "demo").resolve()) in out
    for stem in ("fig1_collisions", "fig2_threshold", "fig3_path_table", "fig4_pareto"):
        assert (tmp_path / "figures" / "demo" / f"{stem}.png").stat().st_size > 0
    assert "18 trials trained now, 18/18 complete" in out
    # resuming the demo with other training settings is refused, in one line, not a traceback
    assert demo_main(["--results-dir", str(tmp_path), "--workers", "1", "--seeds", "0", "--objective", SYNTH,
                      "--set", "epochs=2"]) == 2
    assert "epochs: 1 -> 2" in capsys.readouterr().err


def test_open_search_runs_nsga2_to_its_trial_budget(tmp_path):
    import optuna

    rep = run_sweep("open", study_name="open", n_trials=5, objective=SYNTH, results_dir=tmp_path)
    assert rep.complete == rep.expected == 5
    study = load_study(default_storage_url("open", tmp_path), "open", sp.get_space("open", n_trials=5))
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    for t in study.trials:
        cfg = t.user_attrs["config"]
        assert cfg["method"] == t.params["method"] and cfg["learning_rate"] == t.params["learning_rate"]
        assert cfg["embedding_dim"] in (4, 8, 16, 32) and cfg["threshold"] in sp.PAPER_THRESHOLDS


# ------------------------------------------------------------------------------------ review: resume safety


def test_resume_with_a_changed_definition_is_refused_and_writes_nothing(tmp_path):
    # A study remembers what it ran: resuming it with other overrides, other seeds or a redefined
    # grid point would mix two experiments in one study (or, for new seeds, make Optuna fail every
    # trial forever), so the runner refuses with a message naming the difference.
    url = default_storage_url("chg", tmp_path)
    rep = run_sweep("tiny", study_name="chg", seeds=(0,), objective=SYNTH, results_dir=tmp_path,
                    overrides={"max_steps": 10})
    assert rep.complete == 3
    again = run_sweep("tiny", study_name="chg", seeds=(0,), objective=SYNTH, results_dir=tmp_path,
                      overrides={"max_steps": 10})
    assert again.trials_run == 0
    with pytest.raises(ValueError, match=r"max_steps.*10.*20|overrides"):
        run_sweep("tiny", study_name="chg", seeds=(0,), objective=SYNTH, results_dir=tmp_path,
                  overrides={"max_steps": 20})
    with pytest.raises(ValueError, match="seed"):
        run_sweep("tiny", study_name="chg", seeds=(0, 1), objective=SYNTH, results_dir=tmp_path,
                  overrides={"max_steps": 10})
    changed = sp.SearchSpace("tiny", "tiny, hash-c4 redefined",
                             (("full", {"method": "full"}),
                              ("hash-c4", {"method": "hash", "num_collisions": 8, "threshold": 200}),
                              ("qr-mult-c4", dict(sp.get_space("tiny").point("qr-mult-c4")))),
                             (0,), dict(sp.PAPER_BASE))
    with pytest.raises(ValueError, match="hash-c4"):
        run_worker(changed, url, "chg", SYNTH, overrides={"max_steps": 10})
    assert len(load_study(url, "chg").get_trials()) == 3  # nothing was written by the refused runs
    assert sweep_main(["run", "--space", "tiny", "--study", "chg", "--seeds", "0", "--results-dir", str(tmp_path),
                       "--objective", SYNTH, "--set", "max_steps=20"]) == 2


def test_failing_trial_records_its_error_and_the_sweep_goes_on(tmp_path):
    rep = run_sweep("tiny", study_name="err", seeds=(0,), objective="sweeps._testing:failing_objective",
                    results_dir=tmp_path, max_retry=1)
    assert rep.complete == 2 and rep.given_up == ["hash-c4/s0"]
    df = trials_frame(load_study(default_storage_url("err", tmp_path), "err"))
    failed = df[df["state"] == "FAIL"]
    assert len(failed) == 2 and (failed["grid_key"] == "hash-c4/s0").all()
    assert failed["error"].str.contains("RuntimeError: made-up failure for method 'hash'").all()


def test_export_of_a_study_without_trials_writes_readable_empty_tables(tmp_path):
    url = default_storage_url("none", tmp_path)
    create_study(sp.get_space("tiny", seeds=(0,)), make_storage(url, heartbeat_interval=None), "none")
    paths = export_study(url, "none", tmp_path / "out")
    csv, pq = pd.read_csv(paths["csv"]), pd.read_parquet(paths["parquet"])
    assert len(csv) == len(pq) == 0
    assert {"number", "state", "grid_key"} <= set(csv.columns) and {"number", "state"} <= set(pq.columns)


def test_synthetic_objective_is_the_same_in_every_process():
    # workers are other processes: the made-up noise must not come from hash() (salted per process)
    import sys

    from sweeps._testing import synthetic_objective

    config = {"method": "qr", "num_collisions": 4, "operation": "add", "seed": 3}
    code = f"from sweeps._testing import synthetic_objective as f; print(repr(f({config!r})['val_loss']))"
    for salt in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env=_env(PYTHONHASHSEED=salt), capture_output=True,
                             text=True, check=True).stdout
        assert float(out) == synthetic_objective(config)["val_loss"]


# ------------------------------------------------------------------------------------ issue 11: clear errors


def _one_line_error(err: str, *needles: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("url, shown, hidden", [
    ("bogus://x", "bogus://x", None),
    ("postgresql://alice:s3cret@127.0.0.1:1/none", "postgresql://alice:***@127.0.0.1:1/none", "s3cret"),
    ("sqlite:////nonexistent-compemb-dir/sub/x.db", "sqlite:////nonexistent-compemb-dir/sub/x.db", None),
])
def test_unusable_storage_url_is_a_one_line_error_naming_it(tmp_path, capsys, url, shown, hidden):
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0", "--storage", url, "--objective", SYNTH,
                     "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    line = _one_line_error(err, "compemb sweep: error:", shown)
    assert hidden is None or hidden not in line


def test_export_or_list_of_a_missing_study_leaves_no_database_behind(tmp_path, capsys):
    results = tmp_path / "results"
    assert sweep_main(["export", "--study", "nonexistent", "--results-dir", str(results),
                       "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys.readouterr().err, "compemb sweep: error:", "nonexistent")
    assert not results.exists() and not (tmp_path / "out").exists()
    db = tmp_path / "other.db"
    assert sweep_main(["list", "--storage", f"sqlite:///{db}"]) == 2
    _one_line_error(capsys.readouterr().err, str(db))
    assert not db.exists()
    with pytest.raises(KeyError, match="nonexistent"):
        load_study(f"sqlite:///{db}", "nonexistent")
    assert not db.exists()


def test_set_typo_fails_before_any_trial_naming_the_key_and_close_matches(tmp_path, capsys):
    # the real objective: its config check runs before any study is created or trial trained
    results = tmp_path / "r"
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0", "--results-dir", str(results),
                     "--set", "nonsense_field=3"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "compemb sweep: error:", "'nonsense_field'")
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0", "--results-dir", str(results),
                     "--set", "max_step=3"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "'max_step'", "'max_steps'")
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0", "--results-dir", str(results),
                     "--set", "optimizer=adamm"])
    assert rc == 2
    _one_line_error(capsys.readouterr().err, "adamm")
    assert not list(results.glob("*.db"))  # no study: the corrected command starts afresh
    with pytest.raises(ValueError, match="max_step"):
        run_sweep("tiny", study_name="t", seeds=(0,), overrides={"max_step": 3}, results_dir=results, workers=2)
    assert not list(results.glob("*.db"))


def test_killed_worker_whose_trials_were_all_retried_exits_zero_with_a_note(tmp_path, capsys, monkeypatch):
    # two real worker processes; the first trial anywhere SIGKILLs its own worker mid-trial, the other
    # worker retries it after the grace period; the sweep is complete, so it succeeds, with one note
    die = tmp_path / "die"
    monkeypatch.setenv("COMPEMB_TEST_DIE_FILE", str(die))
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0", "--results-dir", str(tmp_path), "--workers", "2",
                     "--objective", "sweeps._testing:dying_objective", "--heartbeat", "1", "--grace", "2"])
    out, err = capsys.readouterr()
    assert die.exists()
    assert rc == 0, out + err
    assert "Traceback" not in out + err
    notes = [l for l in (out + err).splitlines() if l.startswith("note:")]
    assert len(notes) == 1 and "1 of 2 workers" in notes[0] and "signal 9" in notes[0] and "3/3" in notes[0], notes
    study = load_study(default_storage_url("tiny", tmp_path), "tiny")
    assert len(grid_status(study, sp.get_space("tiny", seeds=(0,))).done) == 3


# ------------------------------------------------------------------------------------ issue 11: what a sweep shows


def test_progress_lines_and_summary_table_in_one_process(tmp_path, capsys):
    rc = sweep_main(["run", "--space", "tiny", "--seeds", "0,1", "--results-dir", str(tmp_path), "--objective", SYNTH])
    out = capsys.readouterr().out
    assert rc == 0
    url = default_storage_url("tiny", tmp_path)
    lines = out.splitlines()
    assert url in lines[0]
    trial_lines = [l for l in lines if l.lstrip().startswith("[")]
    assert [l.split("]")[0].strip("[ ") for l in trial_lines] == [f"{i}/6" for i in range(1, 7)]
    study = load_study(url, "tiny")
    for line in trial_lines:
        assert "ETA" in line and "val loss" in line and "AUC" in line and "params" in line
    # every trial's key and val loss appear in its line
    for t in study.trials:
        m = t.user_attrs["metrics"]
        assert any(t.user_attrs["grid_key"] in l and f"{m['val_loss']:.4f}" in l for l in trial_lines)
    # the summary: one row per series, mean ± std over the two seeds, compression against full
    table = out[out.index("series"):]
    df = trials_frame(study, complete_only=True)
    qr = df[df["point"] == "qr-mult-c4"]
    row = next(l for l in table.splitlines() if l.startswith("qr-mult-c4"))
    assert f"{qr['val_loss'].mean():.4f} ± {qr['val_loss'].std():.4f}" in row
    assert f"{qr['test_auc'].mean():.4f} ± {qr['test_auc'].std():.4f}" in row
    full = df[df["point"] == "full"]["embedding_params"].mean()
    assert f"{full / qr['embedding_params'].mean():.1f}x" in row
    assert sum(1 for l in table.splitlines() if l.split() and l.split()[0] in sp.get_space("tiny").labels()) == 3


def test_progress_header_redacts_the_password():
    from sweeps.progress import start_line

    line = start_line("tiny", "tiny", 6, 0, 2, "postgresql://bob:hunter2@db.example:5432/sweeps")
    assert "hunter2" not in line and "postgresql://bob:***@db.example:5432/sweeps" in line


def _wait_for(path: Path, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_in_one_line_and_the_rerun_resumes_without_counting_it(tmp_path, workers):
    # a real SIGINT to the sweep's process group (what Ctrl-C in a terminal sends) while a worker is
    # inside a trial; --max-retry 0: an interrupted trial counted as a failure would be given up on rerun
    import sys

    block = tmp_path / "block"
    block.write_text("hold")
    args = ["run", "--space", "tiny", "--seeds", "0", "--results-dir", str(tmp_path),
            "--objective", "sweeps._testing:blocking_objective", "--max-retry", "0", "--heartbeat", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args, "--workers", str(workers)],
                            env=_env(COMPEMB_TEST_BLOCK_FILE=block), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)
    _wait_for(Path(str(block) + ".started"), proc)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert [l for l in err.splitlines() if l.strip()] == [
        "interrupted: 0 of 3 done; re-run the same command to resume"], err
    block.unlink()
    assert sweep_main([*args, "--no-progress"]) == 0  # the rerun (here in-process) resumes
    study = load_study(default_storage_url("tiny", tmp_path), "tiny")
    assert len(grid_status(study, sp.get_space("tiny", seeds=(0,))).done) == 3
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert 1 <= len(interrupted) <= workers and all(t.state.name == "FAIL" for t in interrupted)


# ------------------------------------------------------------------------------------ issue 11: slicing, collapse


def test_trials_record_method_collisions_operation_threshold_seed_for_dashboards(tmp_path):
    import optuna

    run_sweep("tiny", study_name="attrs", seeds=(0, 1), objective=SYNTH, results_dir=tmp_path)
    study = optuna.load_study(study_name="attrs", storage=default_storage_url("attrs", tmp_path))
    seen = set()
    for t in study.trials:
        a, cfg = t.user_attrs, t.user_attrs["config"]
        assert a["seed"] == t.params["seed"] == cfg["seed"]
        assert a["method"] == cfg["method"] and a["operation"] == cfg.get("operation")
        # what the trial trained with: the full table has 1 collision, an unset threshold is the default 0
        assert a["num_collisions"] == cfg.get("num_collisions", 1 if cfg["method"] == "full" else None)
        assert a["threshold"] == cfg.get("threshold", 0)
        seen.add((a["method"], a["operation"], a["num_collisions"], a["threshold"]))
    assert seen == {("full", None, 1, 0), ("hash", None, 4, 200), ("qr", "mult", 4, 200)}
    frame = study.trials_dataframe()
    assert {"user_attrs_method", "user_attrs_num_collisions", "user_attrs_operation", "user_attrs_threshold",
            "user_attrs_seed"} <= set(frame.columns)


def test_collapsed_training_fails_its_trial_with_the_reason_and_is_not_retried(tmp_path, capsys):
    rep = run_sweep("tiny", study_name="col", seeds=(0,), objective="sweeps._testing:collapsing_objective",
                    results_dir=tmp_path, max_retry=3, show_progress=True)
    out = capsys.readouterr().out
    assert rep.complete == 2 and rep.given_up == ["hash-c4/s0"]
    study = load_study(default_storage_url("col", tmp_path), "col")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1  # deterministic: not retried
    assert failed[0].user_attrs["failure_reason"] == "constant predictions (test AUC 0.5)"
    assert failed[0].user_attrs["collapsed"] is True
    line = next(l for l in out.splitlines() if "hash-c4/s0" in l and l.lstrip().startswith("["))
    assert "FAILED" in line and "constant predictions (test AUC 0.5)" in line and "not retried" in line
    # a rerun does not retry it either
    again = run_sweep("tiny", study_name="col", seeds=(0,), objective="sweeps._testing:collapsing_objective",
                      results_dir=tmp_path, max_retry=3)
    assert again.trials_run == 0 and again.given_up == ["hash-c4/s0"]


def test_real_training_that_collapses_fails_its_trial_once_with_the_reason(tmp_path):
    # dlrm.train detects the dead network (a non-finite loss at this learning rate) and raises
    # TrainingCollapsedError: each trial ends FAIL with that reason, and none is retried
    overrides = {**TINY, "optimizer": "sgd", "learning_rate": 1e12, "max_steps": 4}
    rep = run_sweep("tiny", study_name="dead", seeds=(0,), overrides=overrides, results_dir=tmp_path, max_retry=2)
    assert rep.complete == 0 and sorted(rep.given_up) == sorted(sp.get_space("tiny", seeds=(0,)).grid_keys())
    study = load_study(default_storage_url("dead", tmp_path), "dead")
    assert len(study.trials) == 3 and all(t.state.name == "FAIL" for t in study.trials)
    for t in study.trials:
        assert t.user_attrs["collapsed"] is True and "non-finite" in t.user_attrs["failure_reason"]
        assert t.user_attrs["error"].startswith("TrainingCollapsedError: training collapsed: ")
    assert "training collapsed (not retried)" in rep.summary()
