"""dlrm.metrics against scikit-learn on freshly drawn random scores (with ties)."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import accuracy_score
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from dlrm.metrics import JsonLinesWriter, accuracy, binary_metrics, log_loss, roc_auc


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 400), levels=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
def test_roc_auc_matches_sklearn_with_ties(n, levels, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes present
    scores = rng.integers(0, levels, n) / levels  # few levels: many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_large_continuous():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20000)
    s = rng.normal(size=20000) + 0.5 * y
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_single_class_is_nan():
    assert math.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_log_loss_and_accuracy_match_sklearn(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = rng.uniform(0.001, 0.999, n)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-10)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, (p >= 0.5).astype(int)))


def test_log_loss_clips_confident_mistakes():
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))


@pytest.mark.parametrize(
    "labels, scores, exc",
    [([0, 2], [0.1, 0.2], "labels must be 0 or 1"), ([0, 1], [0.1], "differ in length"),
     ([], [], "empty"), ([0, 1], [0.1, float("nan")], "NaN")],
)
def test_bad_input_raises(labels, scores, exc):
    with pytest.raises(ValueError, match=exc):
        roc_auc(labels, scores)


def test_log_loss_rejects_out_of_range_probability():
    with pytest.raises(ValueError, match="1.5"):
        log_loss([0, 1], [0.2, 1.5])


def test_jsonl_writer(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "log.jsonl"
    writer = JsonLinesWriter(str(path))
    m = binary_metrics([0, 1, 1], [0.2, 0.7, 0.4], prefix="val_")
    writer.write({"step": 1, **m})
    writer.write({"step": 2, "val_auc": float("nan")})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["step"] == 1 and lines[0]["val_auc"] == pytest.approx(1.0)
    assert lines[1]["val_auc"] is None
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    JsonLinesWriter(None).write({"x": 1})  # a no-op: no file appears
    assert sorted(tmp_path.rglob("*")) == before
