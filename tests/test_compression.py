"""size_for_ratio: at most n D / R parameters, and the next size up would exceed it (every method)."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.compression import (
    COMPRESSED_METHODS,
    CompressionUnreachableError,
    size_for_config,
    size_for_ratio,
)
from compemb.config import EmbeddingBagConfig, build_embedding_bag, compression_ratio, num_parameters
from _doctests import run_doctests
from _reference import ceil_div, gqr_radices, split_widths

FAST = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# parameter counts written from each method's definition (independent of compemb.compression)
# --------------------------------------------------------------------------------------------
def _widths(d, k, operation):
    return split_widths(d, k) if operation == "concat" else [d] * k


def small_factorisations(product, slots, coprime):
    """All multisets of ``slots`` factors >= 2 with the given product (pairwise coprime if asked)."""
    divisors = [f for f in range(2, product + 1) if product % f == 0]
    found = set()
    for combo in itertools.combinations_with_replacement(divisors, slots):
        if math.prod(combo) == product and (not coprime or all(math.gcd(a, b) == 1
                                                               for a, b in itertools.combinations(combo, 2))):
            found.add(combo)
    return found


def with_last(n, small, coprime):
    last = max(ceil_div(n, math.prod(small)), 1)
    while coprime and not all(math.gcd(last, c) == 1 for c in small):
        last += 1
    return tuple(small) + (last,)


def _tt_shapes(n, d, c=3):
    p = gqr_radices(n, c)
    divisors = [f for f in range(1, d + 1) if d % f == 0]
    # descending factors of product d, the largest as small as possible (then the smallest tuple)
    q = min({tuple(sorted(f, reverse=True)) for f in itertools.product(divisors, repeat=c) if math.prod(f) == d},
            key=lambda t: (max(t), t))
    return p, q


def reference_params(method, n, d, operation, k, hidden, size):
    """Parameters of ``method`` at the value ``size`` of its size knob (freq: (num_hot, m))."""
    if method == "hash":
        return size * d
    if method == "qr":
        w = _widths(d, 2, operation)
        return size * w[0] + ceil_div(n, size) * w[1]
    if method == "cluster":
        w = _widths(d, 2, operation)
        return ceil_div(n, size) * w[0] + size * w[1]
    if method == "path":
        dims = (d,) + tuple(hidden) + (d,)
        per_class = sum(a * b for a, b in zip(dims, dims[1:])) + (sum(dims[1:]) if hidden else 0)
        return ceil_div(n, size) * d + size * per_class
    if method == "gqr":  # size: the radices
        classes, place = [], 1
        for r in size:
            classes.append(min(r, ceil_div(n, place)))
            place *= r
        return sum(c * w for c, w in zip(classes, _widths(d, len(size), operation)))
    if method == "crt":  # size: the moduli
        return sum(min(m, n) * w for m, w in zip(size, _widths(d, len(size), operation)))
    if method == "md":
        return n * size + d * size
    if method == "tt":
        p, q = _tt_shapes(n, d)
        ranks = [1, size, size, 1]
        return sum(p[i] * ranks[i] * q[i] * ranks[i + 1] for i in range(3))
    if method == "robe":
        return size
    if method == "freq":
        h, m = size
        w = _widths(d, 3, operation)
        return (h + 1) * w[0] + (m + 1) * w[1] + (ceil_div(n, m) + 1) * w[2]
    raise AssertionError(method)


def next_size_up(method, choice, n, d):
    """The neighbouring size with more parameters, or None at the end of the method's range."""
    if method == "freq":
        h, m = choice.options["num_hot"], choice.options["num_collisions"]
        return (h + 1, m) if h + 1 <= n - 1 else None
    s = choice.size
    if method in ("qr", "cluster", "path"):
        return s - 1 if s - 1 >= 1 else None
    if method == "md":
        return s + 1 if s + 1 <= d - 1 else None
    if method == "hash":
        return s + 1 if s + 1 <= n - 1 else None
    return s + 1  # tt, robe


def knob(method, choice):
    if method == "freq":
        return choice.options["num_hot"], choice.options["num_collisions"]
    if method in ("gqr", "crt"):
        return choice.options["radices" if method == "gqr" else "moduli"]
    return choice.size


@st.composite
def problems(draw):
    method = draw(st.sampled_from(COMPRESSED_METHODS))
    n = draw(st.one_of(st.integers(2, 3000), st.integers(3000, 10**9)))
    if method in ("gqr", "crt", "tt"):
        n = min(n, 10**6)
    d = draw(st.integers(1, 64))
    operation = draw(st.sampled_from(["mult", "add", "concat"]))
    k = draw(st.integers(2, 4))
    if operation == "concat":
        d = max(d, 4)
    ratio = draw(st.one_of(st.integers(2, 128), st.floats(1.01, 500, allow_nan=False)))
    hidden = draw(st.sampled_from([(), (4,)]))
    return method, n, d, operation, k, ratio, hidden


@FAST
@given(problems())
def test_at_most_one_rth_and_the_next_size_up_exceeds(problem):
    method, n, d, operation, k, ratio, hidden = problem
    if method == "md" and d == 1:  # no width between 1 and D - 1: nothing to choose
        with pytest.raises(CompressionUnreachableError, match="md has no compressed size"):
            size_for_ratio(method, n, d, ratio, strict=False)
        return
    choice = size_for_ratio(method, n, d, ratio, operation=operation, k=k, hidden_dims=hidden, strict=False)
    bound = Fraction(n * d) / Fraction(ratio)
    size = knob(method, choice)
    assert choice.num_parameters == reference_params(method, n, d, operation, k, hidden, size)
    assert choice.ratio == pytest.approx(n * d / choice.num_parameters)
    if choice.reached:
        assert choice.num_parameters <= bound
        if method in ("gqr", "crt"):  # no smaller product of small radices (moduli) fits, however factored
            coprime = method == "crt"
            assert len(size) == k and math.prod(size[:-1]) == choice.size and min(size[:-1]) >= 2
            assert size == with_last(n, size[:-1], coprime)
            for product in range(2 ** (k - 1), choice.size):
                for small in small_factorisations(product, k - 1, coprime):
                    assert reference_params(method, n, d, operation, k, hidden, with_last(n, small, coprime)) > bound
        else:
            up = next_size_up(method, choice, n, d)
            if up is not None:
                assert reference_params(method, n, d, operation, k, hidden, up) > bound
    else:
        assert choice.num_parameters > bound
        with pytest.raises(CompressionUnreachableError, match=f"{method} cannot compress"):
            size_for_ratio(method, n, d, ratio, operation=operation, k=k, hidden_dims=hidden)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(COMPRESSED_METHODS), st.integers(50, 3000), st.sampled_from([4, 8, 16]),
       st.sampled_from([2, 4, 16, 64]), st.sampled_from(["mult", "add", "concat"]))
def test_built_modules_hold_the_chosen_parameters(method, n, d, ratio, operation):
    config = EmbeddingBagConfig("t", n, d, method=method, operation=operation, compression=ratio, k=3)
    counts = torch.arange(n) if method == "freq" else None
    bag = build_embedding_bag(config, counts=counts)
    choice = bag.size_choice
    assert choice is not None and choice == size_for_config(config, strict=False)
    if bag.built_method == "full":  # the most compressed size is no smaller than the full table
        assert not choice.reached and choice.num_parameters >= n * d
        return
    assert num_parameters(bag) == choice.num_parameters
    assert compression_ratio(bag) == pytest.approx(choice.ratio)
    assert bag(torch.tensor([[0, n - 1]])).shape == (1, d)


def test_unreachable_ratio_strict_and_not():
    # QR over 300 rows holds at least 35 rows (m = 17): 64x would allow 75 parameters at D = 16
    with pytest.raises(CompressionUnreachableError, match=r"qr cannot compress num_embeddings=300, embedding_dim=16 by 64x"):
        size_for_ratio("qr", 300, 16, 64)
    loose = size_for_ratio("qr", 300, 16, 64, strict=False)
    assert not loose.reached and loose.options == {"num_collisions": 17}
    assert loose.num_parameters == min((m + ceil_div(300, m)) * 16 for m in range(1, 300))
    assert "out of this method's reach" in loose.describe()
    config = EmbeddingBagConfig("C", 300, 16, method="qr", compression=64)
    with pytest.raises(CompressionUnreachableError):
        build_embedding_bag(config, fallback=False)
    bag = build_embedding_bag(config)
    assert bag.built_method == "qr" and not bag.size_choice.reached and num_parameters(bag) == 35 * 16


def test_ratio_and_method_validation():
    for bad in (1, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="compression ratio must be a finite number > 1"):
            EmbeddingBagConfig("C", 100, 4, method="qr", compression=bad)
    with pytest.raises(TypeError, match="compression ratio"):
        EmbeddingBagConfig("C", 100, 4, method="qr", compression=True)
    with pytest.raises(ValueError, match="method must be one of"):
        size_for_ratio("full", 100, 4, 4)
    with pytest.raises(ValueError, match="needs k >= 2"):
        size_for_ratio("gqr", 100, 4, 4, k=1)
    with pytest.raises(ValueError, match="needs embedding_dim >= 3"):
        size_for_ratio("freq", 100, 2, 4, operation="concat")
    full = build_embedding_bag(EmbeddingBagConfig("C", 100, 4, compression=8))  # ignored by full
    assert full.built_method == "full" and full.size_choice is None


def test_examples_at_criteo_scale():
    n, d = 10_131_227, 16
    for method in COMPRESSED_METHODS:
        for ratio in (4, 16, 64):
            choice = size_for_ratio(method, n, d, ratio, k=3, strict=False)
            # md keeps a width >= 1 and its projection: it cannot reach R >= D
            assert choice.reached == (method != "md" or ratio < d)
            if choice.reached:
                assert choice.ratio >= ratio
            if method in ("hash", "robe", "freq"):  # fine-grained knobs land within 0.1% of R
                assert choice.ratio < ratio * 1.001, choice.describe()
    assert size_for_ratio("robe", n, d, 16).options == {"size": n * d // 16}


def test_docstring_examples_of_the_new_modules():
    from compemb import compression, data_aware, robe, tt
    from compemb.partitions import data_aware as partitions_data_aware

    assert run_doctests(compression, data_aware, robe, tt, partitions_data_aware) >= 40
