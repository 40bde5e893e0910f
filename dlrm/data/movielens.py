"""MovieLens-100k (GroupLens) as a click-through-style data set, fetched at run time.

GroupLens' terms forbid redistribution, so the data is never committed: :func:`fetch_movielens_100k`
downloads the ``recbole==1.2.1`` wheel from PyPI with ``python -m pip download --no-deps`` and
extracts ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`` (TSV files whose header
cells are ``name:type``) into ``cache_root()/movielens-100k`` (``$COMPEMB_CACHE`` or
``~/.cache/compemb``).

One sample per rating (100,000). Label: rating >= 4. Categorical features (ids assigned in sorted
order of the raw values):

====================  ==========================================================  ===========
feature               value                                                       cardinality
====================  ==========================================================  ===========
``user_id``           the user                                                    943
``item_id``           the movie                                                   1,682
``age``               age bucket: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+      7
``gender``            M / F                                                       2
``occupation``        one of 21                                                   21
``zip_code``          the full zip code (as a category)                           795
``zip_prefix``        its first character (US region; a letter for Canada)        <= 36
``release_year``      the release year; a missing one ("unkonwn") has id 0        <= 74
``genres``            a bag of the movie's genres (multi-hot; 19 genres)          19
====================  ==========================================================  ===========

Dense features (2): the user's age standardised over the users table and the release year
standardised over the items table (a missing year -> 0, the mean). DLRM needs at least one
dense feature for its bottom MLP.

Split: a fixed random permutation of the ratings drawn from ``split_seed`` (default 0):
80% train, 10% validation, 10% test (80,000 / 10,000 / 10,000).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .batching import Bag, RecDataset, cache_root

__all__ = ["fetch_movielens_100k", "load_movielens_100k", "movielens_cache_dir", "FEATURES", "DENSE_FEATURES"]

RECBOLE_VERSION = "1.2.1"
_WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
FEATURES = ("user_id", "item_id", "age", "gender", "occupation", "zip_code", "zip_prefix", "release_year", "genres")
DENSE_FEATURES = ("age_std", "release_year_std")
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # lower bounds of buckets 1..6 (MovieLens-1M's age groups)


def movielens_cache_dir(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """``cache_dir`` or ``cache_root()/movielens-100k``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "movielens-100k"


def _files_present(directory: Path) -> bool:
    return all((directory / f).is_file() for f in FILES) and (directory / "source.json").is_file()


def fetch_movielens_100k(cache_dir: Optional[Union[str, Path]] = None, force: bool = False, quiet: bool = True) -> Path:
    """Download MovieLens-100k (from the recbole 1.2.1 wheel) into the cache, once.

    Returns:
        The directory holding ``ml-100k.inter``, ``ml-100k.user`` and ``ml-100k.item``.

    Raises:
        RuntimeError: pip failed (no network?) — the message has its command and output, the
        cache directory and how to put the files there by hand.
    """
    directory = movielens_cache_dir(cache_dir)
    if _files_present(directory) and not force:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compemb-recbole-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"recbole=={RECBOLE_VERSION}", "-d", tmp]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download recbole=={RECBOLE_VERSION} (needed for MovieLens-100k) into {directory}: "
                f"`{' '.join(cmd)}` exited {proc.returncode} (no network or no pip?)\n{proc.stdout}\n{proc.stderr}\n"
                f"Alternatively run `pip download --no-deps recbole=={RECBOLE_VERSION}` where a package index is "
                f"reachable and put {', '.join(FILES)} (from {_WHEEL_PREFIX} in the wheel) into {directory}.")
        with zipfile.ZipFile(wheels[0]) as z:
            for name in FILES:
                _write_atomic(directory / name, z.read(_WHEEL_PREFIX + name))
        source = {"package": f"recbole=={RECBOLE_VERSION}", "wheel": wheels[0].name,
                  "members": [_WHEEL_PREFIX + f for f in FILES], "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomic(directory / "source.json", json.dumps(source, indent=1).encode())
    return directory


def _write_atomic(path: Path, data: bytes) -> None:
    # a temporary name of our own: two processes fetching at once never rename each other's
    # half-written file into place
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_tsv(path: Path) -> Tuple[List[str], List[List[str]]]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    rows = [ln.split("\t") for ln in lines[1:] if ln]
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"{path}:{i + 2}: {len(r)} fields, expected {len(header)} ({header})")
    return header, rows


def _codes(values: List[str]) -> Tuple[np.ndarray, List[str]]:
    """ids in sorted order of the distinct values."""
    vocab = sorted(set(values))
    index = {v: i for i, v in enumerate(vocab)}
    return np.array([index[v] for v in values], dtype=np.int64), vocab


def _age_bucket(age: int) -> int:
    return int(np.searchsorted(AGE_BUCKETS, age, side="right"))


def load_movielens_100k(cache_dir: Optional[Union[str, Path]] = None, split_seed: int = 0,
                        download: bool = True) -> RecDataset:
    """MovieLens-100k as a :class:`~dlrm.data.batching.RecDataset` (see the module docstring).

    Args:
        cache_dir: where the files are (or go); default ``cache_root()/movielens-100k``.
        split_seed: seed of the 80/10/10 random split.
        download: fetch the files if they are not in the cache.

    Example:
        >>> ds = load_movielens_100k()  # doctest: +SKIP
        >>> len(ds.split("train")), ds.cardinalities[:2]  # doctest: +SKIP
        (80000, [943, 1682])
    """
    directory = movielens_cache_dir(cache_dir)
    if not _files_present(directory):
        if not download:
            raise FileNotFoundError(f"MovieLens-100k not in {directory}; run `compemb data fetch movielens-100k`")
        fetch_movielens_100k(directory)
    uh, urows = _read_tsv(directory / "ml-100k.user")
    ih, irows = _read_tsv(directory / "ml-100k.item")
    rh, rrows = _read_tsv(directory / "ml-100k.inter")
    ucol = {h: [r[i] for r in urows] for i, h in enumerate(uh)}
    icol = {h: [r[i] for r in irows] for i, h in enumerate(ih)}
    rcol = {h: [r[i] for r in rrows] for i, h in enumerate(rh)}

    # users: one row per user, ids in sorted order of the raw (numeric) user id
    user_raw = [int(x) for x in ucol["user_id"]]
    if len(set(user_raw)) != len(user_raw):
        raise ValueError("duplicate user ids in ml-100k.user")
    user_order = np.argsort(user_raw)
    user_index = {user_raw[j]: k for k, j in enumerate(user_order.tolist())}
    ages = np.array([int(x) for x in ucol["age"]], dtype=np.int64)[user_order]
    age_bucket = np.array([_age_bucket(a) for a in ages.tolist()], dtype=np.int64)
    gender, gender_vocab = _codes([ucol["gender"][j] for j in user_order])
    occupation, occ_vocab = _codes([ucol["occupation"][j] for j in user_order])
    zips = [ucol["zip_code"][j] for j in user_order]
    zip_code, zip_vocab = _codes(zips)
    zip_prefix, zip_prefix_vocab = _codes([z[:1] for z in zips])
    age_std = ((ages - ages.mean()) / ages.std()).astype(np.float32)

    item_raw = [int(x) for x in icol["item_id"]]
    if len(set(item_raw)) != len(item_raw):
        raise ValueError("duplicate item ids in ml-100k.item")
    item_order = np.argsort(item_raw)
    item_index = {item_raw[j]: k for k, j in enumerate(item_order.tolist())}
    # a year that is not a number (empty, or "unkonwn" in this file) is missing: its own id, 0
    years_txt = [y if y.isdigit() else "" for y in (icol["release_year"][j].strip() for j in item_order)]
    year_codes, year_vocab = _codes(years_txt)  # "" (missing) sorts first
    years = np.array([float(y) if y else np.nan for y in years_txt])
    known = ~np.isnan(years)
    year_std = np.zeros(len(years), dtype=np.float32)
    year_std[known] = (years[known] - years[known].mean()) / years[known].std()
    genre_lists = [icol["class"][j].split() for j in item_order]
    genre_vocab = sorted({g for gl in genre_lists for g in gl})
    genre_index = {g: i for i, g in enumerate(genre_vocab)}
    item_genre_ptr = np.zeros(len(genre_lists) + 1, dtype=np.int64)
    item_genre_ptr[1:] = np.cumsum([len(gl) for gl in genre_lists])
    item_genre_vals = np.array([genre_index[g] for gl in genre_lists for g in gl], dtype=np.int64)

    try:
        r_user = np.array([user_index[int(x)] for x in rcol["user_id"]], dtype=np.int64)
        r_item = np.array([item_index[int(x)] for x in rcol["item_id"]], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"a rating refers to an unknown user or item id {e.args[0]}") from None
    rating = np.array([float(x) for x in rcol["rating"]], dtype=np.float64)
    labels = (rating >= 4).astype(np.float32)

    sparse = np.stack([
        r_user, r_item, age_bucket[r_user], gender[r_user], occupation[r_user], zip_code[r_user],
        zip_prefix[r_user], year_codes[r_item],
    ], axis=1)
    dense = np.stack([age_std[r_user], year_std[r_item]], axis=1).astype(np.float32)
    # genres: a bag per rating = the item's genres
    lengths = np.diff(item_genre_ptr)[r_item]
    row_ptr = np.zeros(len(r_item) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_ptr[1:])
    gather = np.repeat(item_genre_ptr[r_item] - row_ptr[:-1], lengths) + np.arange(row_ptr[-1], dtype=np.int64)
    genres = Bag(values=item_genre_vals[gather], row_ptr=row_ptr)

    n = len(labels)
    perm = np.random.default_rng(split_seed).permutation(n)
    n_train, n_val = (8 * n) // 10, n // 10
    splits = {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
              "test": np.sort(perm[n_train + n_val:])}
    cards = [len(user_raw), len(item_raw), len(AGE_BUCKETS) + 1, len(gender_vocab), len(occ_vocab),
             len(zip_vocab), len(zip_prefix_vocab), len(year_vocab), len(genre_vocab)]
    layout = [("onehot", j) for j in range(8)] + [("bag", "genres")]
    info = {"source": str(directory), "split_seed": split_seed, "num_ratings": n,
            "label_rate": float(labels.mean(dtype=np.float64)),
            "vocab": {"gender": gender_vocab, "occupation": occ_vocab, "genres": genre_vocab,
                      "release_year": year_vocab, "zip_prefix": zip_prefix_vocab}}
    return RecDataset("movielens-100k", dense, labels, sparse, list(FEATURES), cards, splits, layout=layout,
                      bags={"genres": genres}, dense_names=list(DENSE_FEATURES), info=info)
