"""`compemb plan`: the printed numbers against sizes computed here from the definitions."""
import math
import re

import pytest

from compemb import cli, plan
from _reference import ceil_div, gqr_sizes, split_widths

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
          5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def run_plan(capsys, *args):
    assert plan.main(list(args)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    dashes = [i for i, line in enumerate(lines) if line.startswith("---")]
    assert len(dashes) == 2, out
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[dashes[0] + 1: dashes[1]]]
    total = re.split(r"\s{2,}", lines[dashes[1] + 1].strip())
    ratio = float(re.search(r"compression ratio: ([\d.]+)x", out).group(1))
    parsed = []
    for r in rows:
        name, rows_, method, classes, before, after = r
        parsed.append(dict(name=name, rows=_int(rows_), method=method,
                           classes=[_int(c) for c in classes.split(" x ")],
                           before=_int(before), after=_int(after)))
    return parsed, total, ratio, out


def _int(text):
    return int(text.replace(",", ""))


def test_criteo_preset_sums_to_the_design_numbers(capsys):
    assert list(plan.CRITEO_KAGGLE_CARDINALITIES) == CRITEO
    assert sum(CRITEO) == 33762577 and sum(CRITEO) * 16 == 540201232
    rows, total, ratio, _ = run_plan(capsys, "--criteo-kaggle", "--method", "full")
    assert [r["rows"] for r in rows] == CRITEO
    assert all(r["after"] == r["before"] == r["rows"] * 16 for r in rows)
    assert _int(total[1]) == 33762577 and _int(total[-2]) == _int(total[-1]) == 540201232
    assert ratio == 1.0


@pytest.mark.parametrize("collisions, threshold, dim, operation", [(4, 200, 16, "mult"), (60, 1, 16, "add"),
                                                                    (2, 20000, 32, "concat"), (7, 20, 7, "mult")])
def test_qr_plan_on_criteo(capsys, collisions, threshold, dim, operation):
    rows, total, ratio, _ = run_plan(capsys, "--criteo-kaggle", "--method", "qr", "--collisions", str(collisions),
                                     "--threshold", str(threshold), "--dim", str(dim), "--operation", operation)
    expected_after = 0
    for r, n in zip(rows, CRITEO):
        assert r["rows"] == n and r["before"] == n * dim
        if n > threshold and collisions < n:
            sizes = [collisions, ceil_div(n, collisions)]
            w = split_widths(dim, 2) if operation == "concat" else [dim, dim]
            after = sizes[0] * w[0] + sizes[1] * w[1]
            assert r["method"] == "qr"
        else:
            sizes, after = [n], n * dim
            assert r["method"].startswith("full")
        assert r["classes"] == sizes
        assert r["after"] == after
        expected_after += after
    assert _int(total[-1]) == expected_after
    assert _int(total[-2]) == sum(CRITEO) * dim
    assert ratio == pytest.approx(sum(CRITEO) * dim / expected_after, abs=0.005)


@pytest.mark.parametrize("sep", [",", "\n", ", "])
def test_cardinalities_file_gqr_and_crt(capsys, tmp_path, sep):
    cards = [5, 1000, 1001, 123457, 10131227, 99]
    path = tmp_path / "cards.txt"
    path.write_text("# sizes\n" + sep.join(str(c) for c in cards) + "\n")
    rows, total, ratio, _ = run_plan(capsys, "--cardinalities", str(path), "--method", "gqr", "--k", "3",
                                     "--threshold", "100", "--dim", "16", "--operation", "concat")
    assert [r["rows"] for r in rows] == cards
    for r, n in zip(rows, cards):
        sizes = gqr_sizes(n, 3) if n > 100 else [n]
        assert r["classes"] == sizes
        w = split_widths(16, 3) if n > 100 else [16]
        assert r["after"] == sum(s * x for s, x in zip(sizes, w))
    rows, _, _, _ = run_plan(capsys, "--cardinalities", str(path), "--method", "crt", "--k", "3",
                             "--threshold", "100", "--dim", "8")
    for r, n in zip(rows, cards):
        if n <= 100:
            assert r["classes"] == [n]
            continue
        moduli = r["classes"]
        assert len(moduli) == 3 and math.prod(moduli) >= n
        assert all(math.gcd(a, b) == 1 for i, a in enumerate(moduli) for b in moduli[i + 1:])
        assert max(moduli) <= round(n ** (1 / 3)) + 10  # near the cube root
        assert r["after"] == sum(moduli) * 8


def test_hash_plan(capsys):
    rows, total, ratio, _ = run_plan(capsys, "--criteo-kaggle", "--method", "hash", "--collisions", "4",
                                     "--threshold", "200")
    expected = sum((ceil_div(n, 4) if n > 200 else n) * 16 for n in CRITEO)
    for r, n in zip(rows, CRITEO):
        assert r["classes"] == [ceil_div(n, 4) if n > 200 else n]
    assert _int(total[-1]) == expected
    rows, _, _, _ = run_plan(capsys, "--criteo-kaggle", "--method", "hash", "--collisions", "24", "--threshold", "1")
    small = [r for r in rows if r["rows"] <= 24]
    assert small and all(r["classes"] == [r["rows"]] and r["method"].startswith("full") for r in small)


def test_through_the_console_entry_point(capsys):
    assert cli.main(["plan", "--criteo-kaggle", "--method", "qr", "--collisions", "4"]) == 0
    out = capsys.readouterr().out
    assert "compression ratio" in out and "C26" in out


@pytest.mark.parametrize(
    "args, text",
    [
        ([], "one of the arguments --criteo-kaggle --criteo-terabyte --cardinalities is required"),
        (["--criteo-kaggle", "--dim", "0"], "--dim must be a positive integer, got 0"),
        (["--criteo-kaggle", "--collisions", "-3"], "--collisions must be a positive integer, got -3"),
        (["--criteo-kaggle", "--k", "0"], "--k must be a positive integer, got 0"),
        (["--criteo-kaggle", "--threshold", "-1"], "--threshold must be non-negative, got -1"),
        (["--criteo-kaggle", "--method", "nope"], "invalid choice: 'nope'"),
        (["--criteo-kaggle", "--method", "crt", "--k", "3", "--operation", "concat", "--dim", "2"], "need dim >= 3"),
        (["--cardinalities", "/nonexistent/cards.txt"], "cannot read cardinalities file '/nonexistent/cards.txt'"),
    ],
)
def test_bad_arguments(capsys, args, text):
    with pytest.raises(SystemExit) as exc:
        plan.main(args)
    assert exc.value.code == 2
    assert text in capsys.readouterr().err


@pytest.mark.parametrize("content, text", [("10\n2.5\n", "cardinality '2.5' is not an integer"),
                                           ("10, 0\n", "cardinality 0 must be positive"),
                                           ("# nothing\n", "holds no cardinalities")])
def test_bad_cardinalities_file(capsys, tmp_path, content, text):
    path = tmp_path / "cards.txt"
    path.write_text(content)
    with pytest.raises(SystemExit):
        plan.main(["--cardinalities", str(path)])
    assert text in capsys.readouterr().err


def test_docstring_examples():
    import doctest

    result = doctest.testmod(plan)
    assert result.attempted >= 1 and result.failed == 0


def test_path_and_md_plans_match_the_modules_config_builds(capsys, tmp_path):
    # config.METHODS has path and md; the plan used to refuse them
    from compemb.baselines import MixedDimEmbeddingBag, md_dims
    from compemb.config import num_parameters
    from compemb.path import PathEmbeddingBag

    cards = [50, 1000, 123457]
    path = tmp_path / "cards.txt"
    path.write_text("\n".join(map(str, cards)))
    rows, total, _, _ = run_plan(capsys, "--cardinalities", str(path), "--method", "path", "--collisions", "8",
                                 "--hidden-dims", "4,3", "--threshold", "100", "--dim", "8")
    assert rows[0]["after"] == 50 * 8 and rows[0]["method"] == "full"
    for r, n in zip(rows[1:], cards[1:]):
        built = PathEmbeddingBag(n, 8, num_collisions=8, hidden_dims=(4, 3))
        assert r["classes"] == list(built.family.table_sizes) == [ceil_div(n, 8), 8]
        assert r["after"] == num_parameters(built) and r["method"] == "path"
    rows, total, _, _ = run_plan(capsys, "--cardinalities", str(path), "--method", "md", "--alpha", "0.5",
                                 "--threshold", "100", "--dim", "16")
    dims = md_dims(cards, 0.5, 16)
    assert rows[0]["after"] == 50 * 16
    for r, n, d in zip(rows[1:], cards[1:], dims[1:]):
        assert r["after"] == num_parameters(MixedDimEmbeddingBag(n, 16, md_dim=d)) and f"dim {d}" in r["method"]
    assert _int(total[-1]) == sum(r["after"] for r in rows)
    with pytest.raises(SystemExit):
        plan.main(["--criteo-kaggle", "--method", "md", "--alpha", "-1"])
    assert "--alpha" in capsys.readouterr().err
