"""Two worker processes share one study on a real PostgreSQL server; every grid point completes once.

The server comes from ``$COMPEMB_TEST_POSTGRES_URL`` (``.ci/run`` sources ``.ci/postgres.sh``,
which installs PostgreSQL from Debian packages and starts it on loopback with a throwaway data
directory). Without that variable there is no server to test against and the test says so.
"""
from __future__ import annotations

import os
import uuid

import pytest

from sweeps import space as sp
from sweeps.results import trials_frame
from sweeps.runner import grid_status, load_study, make_storage, redact_url, run_sweep

URL = os.environ.get("COMPEMB_TEST_POSTGRES_URL")

pytestmark = pytest.mark.skipif(
    not URL,
    reason="COMPEMB_TEST_POSTGRES_URL is not set, so there is no PostgreSQL server to test against; "
           "`.ci/run` starts one (or run `source .ci/postgres.sh` first: it installs postgresql from Debian "
           "packages and starts it on 127.0.0.1 with a throwaway data directory)",
)


@pytest.fixture
def study_name():
    import optuna

    name = f"pgtest-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=make_storage(URL, heartbeat_interval=None))
    except KeyError:
        pass


def test_server_is_reachable():
    import psycopg2

    conn = psycopg2.connect(URL)  # a set URL that does not connect is a failure, not a skip
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_two_workers_complete_every_grid_point_exactly_once(study_name, capsys):
    seeds = (0, 1, 2, 3)
    rep = run_sweep("tiny", storage=URL, study_name=study_name, seeds=seeds,
                    objective="sweeps._testing:sleepy_objective", workers=2, heartbeat_interval=2,
                    show_progress=True)
    out = capsys.readouterr().out
    # progress read from the server: one line per finished trial, the URL without its password
    assert redact_url(URL) in out.splitlines()[0]
    assert [l.split("]")[0] for l in out.splitlines() if l.startswith("[")] == [f"[{i}/12" for i in range(1, 13)]
    space = sp.get_space("tiny", seeds=seeds)
    assert rep.complete == rep.expected == space.size == 12
    study = load_study(URL, study_name)
    st = grid_status(study, space)
    assert sorted(st.done) == sorted(space.grid_keys())
    assert all(len(numbers) == 1 for numbers in st.complete.values()), st.complete
    df = trials_frame(study, complete_only=True)
    assert len(df) == 12 and df["grid_key"].is_unique
    assert df["pid"].nunique() == 2  # both worker processes took trials
    # resuming against the server trains nothing new
    again = run_sweep("tiny", storage=URL, study_name=study_name, seeds=seeds,
                      objective="sweeps._testing:sleepy_objective", workers=2, heartbeat_interval=2)
    assert again.trials_run == 0 and len(load_study(URL, study_name).get_trials()) == len(study.get_trials())
