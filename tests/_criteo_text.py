"""Criteo lines for the tests: a straightforward per-line reference parser, random lines (good and
malformed), a hand-written file, and the check of a cache against the reference."""
from __future__ import annotations

import math
import re

import numpy as np

from dlrm.data import criteo as criteo_mod
from dlrm.data.batching import CachedDataset

REASONS = criteo_mod.REASONS
_INT = re.compile(r"-?[0-9]{1,18}")  # documented: at most 18 digits (fits int64)
_HEXRE = re.compile(r"[0-9a-fA-F]{1,8}")


def reference(lines, days=7, max_ind_range=None, day_lines=None):
    """Parse Criteo lines one by one, the obvious way."""
    rows, bad = [], {r: [] for r in REASONS}
    for no, line in enumerate(lines, 1):
        f = line.split("\t")
        if len(f) != 40:
            bad["wrong field count"].append(no)
        elif f[0] not in ("0", "1"):
            bad["bad label"].append(no)
        elif any(x != "" and not _INT.fullmatch(x) for x in f[1:14]):
            bad["non-integer dense"].append(no)
        elif any(x != "" and not _HEXRE.fullmatch(x) for x in f[14:]):
            bad["non-hex categorical"].append(no)
        else:
            dense = [math.log(1 + max(int(x), 0)) if x else 0.0 for x in f[1:14]]
            cats = [int(x, 16) if x else 0 for x in f[14:]]
            if max_ind_range:
                cats = [c % max_ind_range for c in cats]
            rows.append((no - 1, float(f[0]), dense, cats))
    dicts = [dict() for _ in range(26)]
    ids = []
    for _, _, _, cats in rows:
        ids.append([dicts[j].setdefault(c, len(dicts[j])) for j, c in enumerate(cats)])
    if day_lines is None:
        base, extra = divmod(len(lines), days)
        day_lines = [base + (d < extra) for d in range(days)]
    ends = np.cumsum(day_lines)
    day_of = [int(np.searchsorted(ends, r[0], side="right")) for r in rows]
    last = [i for i, d in enumerate(day_of) if d == len(day_lines) - 1]
    n_train = sum(1 for d in day_of if d < len(day_lines) - 1)
    n_test = (len(last) + 1) // 2
    return {
        "labels": np.array([r[1] for r in rows], dtype=np.float32),
        "dense": np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 13),
        "sparse": np.array(ids, dtype=np.int64).reshape(-1, 26),
        "cards": [max(len(d), 1) for d in dicts],
        "bad": {k: v for k, v in bad.items() if v},
        "splits": {"train": (0, n_train), "test": (n_train, n_train + n_test), "val": (n_train + n_test, len(rows))},
    }


def check_against_reference(ds: CachedDataset, ref) -> None:
    n = len(ref["labels"])
    assert ds.info["num_rows"] == n
    np.testing.assert_array_equal(np.asarray(ds._labels), ref["labels"])
    np.testing.assert_allclose(np.asarray(ds._dense, dtype=np.float64), ref["dense"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(ds._sparse, dtype=np.int64), ref["sparse"])
    assert ds.cardinalities == ref["cards"]
    report = ds.info["malformed"]
    assert set(report) == set(ref["bad"])
    for reason, lines in ref["bad"].items():
        assert report[reason]["count"] == len(lines)
        assert [e["line"] for e in report[reason]["first"]] == lines[:100]
    for name, (a, b) in ref["splits"].items():
        r = ds.split(name).rows
        assert (r.start, r.stop) == (a, b), name


def random_line(rng: np.random.Generator, malformed_rate: float = 0.1, vocab: int = 50) -> str:
    label = str(rng.integers(0, 2))
    dense = []
    for _ in range(13):
        u = rng.random()
        if u < 0.2:
            dense.append("")
        elif u < 0.3:
            dense.append(str(int(rng.integers(-3, 0))) if u < 0.29 else str(-int(rng.integers(0, 10 ** 18))))
        elif u < 0.32:
            dense.append(str(int(rng.integers(10 ** 16, 10 ** 18))))  # up to 18 digits: still an int64
        else:
            dense.append(str(int(rng.integers(0, 10 ** rng.integers(1, 9)))))
    cats = []
    for _ in range(26):
        u = rng.random()
        if u < 0.15:
            cats.append("")
        else:
            v = int(rng.integers(0, vocab)) * 2654435761 % (1 << 32)
            s = format(v, "08x")
            cats.append(s.upper() if rng.random() < 0.05 else s)
    fields = [label] + dense + cats
    if rng.random() < malformed_rate:
        kind = int(rng.integers(0, 8))
        if kind == 0:
            fields = fields[:-1]
        elif kind == 1:
            fields = fields + ["00ff00ff"]
        elif kind == 2:
            fields[0] = rng.choice(["2", "", "x", "-1", "01"])
        elif kind == 3:
            fields[int(rng.integers(1, 14))] = rng.choice(["1.5", "abc", "-", "1e3", " 4", "+3"])
        elif kind == 4:
            fields[int(rng.integers(14, 40))] = rng.choice(["zz", "123456789", "g0", "-1f", "0x1f", " ab"])
        elif kind == 5:
            return ""
        elif kind == 6:
            fields[int(rng.integers(1, 14))] = "9" * 25
        else:
            return "\t".join(fields).replace("\t", " ", 1)
    return "\t".join(fields)


def write_lines(path, lines, final_newline=True) -> None:
    with open(path, "w", newline="") as f:
        f.write("\n".join(lines) + ("\n" if final_newline else ""))


HAND = [
    "\t".join(["1"] + ["1", "", "-5", "0", "10"] + [""] * 8 + ["0000abcd", "", "ffffffff"] + ["deadbeef"] * 23),
    "\t".join(["0"] + ["3"] * 13 + ["0000ABCD", "0", "12"] + ["deadbeef"] * 23),
    "\t".join(["2"] + ["3"] * 13 + ["00000001"] * 26),  # bad label
    "\t".join(["0"] + ["3.5"] + ["3"] * 12 + ["00000001"] * 26),  # non-integer dense
    "\t".join(["0"] + ["3"] * 13 + ["0000000g"] + ["00000001"] * 25),  # non-hex categorical
    "\t".join(["0"] + ["3"] * 13 + ["00000001"] * 25),  # 39 fields
    "",  # blank line
    "\t".join(["1"] + ["-1"] * 13 + ["1"] * 26),
    "\t".join(["0"] + [str(2 ** 40)] + ["0"] * 12 + ["7fffffff"] * 26),
]
