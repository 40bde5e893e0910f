"""Properties of the partition algebra (compemb.partitions), checked against plain-Python references."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from sympy.ntheory.modular import solve_congruence

from compemb import partitions as P
from compemb.partitions import (
    DigitPartition,
    HashPartition,
    IdentityPartition,
    MeetPartition,
    PartitionFamily,
    QuotientPartition,
    RemainderPartition,
    ResiduePartition,
    UndecidableError,
    chinese_remainder,
    generalized_qr,
    naive,
    quotient_remainder,
)
from _doctests import run_doctests

SMALL_N = st.integers(1, 600)
LARGE_N = st.integers(1, 2**62)


# --------------------------------------------------------------------------------------------
# plain-Python references (independent of the implementation)
# --------------------------------------------------------------------------------------------
def ref_blocks(labels):
    """Canonical first-occurrence relabelling: equal tuples <=> equal set partitions."""
    first = {}
    return tuple(first.setdefault(v, len(first)) for v in labels)


def ref_labels(p):
    return [int(v) for v in p(torch.arange(p.n))]


def ref_refines(la, lb):
    seen = {}
    return all(seen.setdefault(a, b) == b for a, b in zip(la, lb))


def ref_digit(x, radices, j):
    return (x // math.prod(radices[:j])) % radices[j]


def sample_indices(n, data, size=64):
    xs = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=size))
    return xs + [0, n - 1]


@st.composite
def partitions(draw, n):
    kind = draw(st.sampled_from(["identity", "remainder", "quotient", "digit", "residue", "hash"]))
    if kind == "identity":
        return IdentityPartition(n)
    if kind == "remainder":
        return RemainderPartition(n, draw(st.integers(1, n)))
    if kind == "quotient":
        return QuotientPartition(n, draw(st.integers(1, n + 3)))
    if kind == "digit":
        radices = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
        return DigitPartition(n, radices, draw(st.integers(0, len(radices) - 1)))
    if kind == "residue":
        return ResiduePartition(n, draw(st.integers(1, 2 * n + 2)))
    return HashPartition(n, draw(st.integers(1, n + 2)), seed=draw(st.integers(0, 3)))


@st.composite
def complementary_families(draw, n_strategy=SMALL_N):
    n = draw(n_strategy)
    kind = draw(st.sampled_from(["naive", "qr", "gqr_k", "gqr_radices", "crt_k", "crt_moduli"]))
    if kind == "naive":
        return naive(n)
    if kind == "qr":
        return quotient_remainder(n, draw(st.integers(1, min(n, 2**40))))
    if kind == "gqr_k":
        return generalized_qr(n, k=draw(st.integers(1, 5)))
    if kind == "crt_k":
        return chinese_remainder(n, k=draw(st.integers(1, 4)))
    if kind == "gqr_radices":
        k = draw(st.integers(1, 4))
        root = math.isqrt(n) if k == 2 else round(n ** (1 / k))
        radices = draw(st.lists(st.integers(max(1, root - 3), root + 40), min_size=k, max_size=k))
        assume(math.prod(radices) >= n)
        return generalized_qr(n, radices=radices)
    k = draw(st.integers(1, 4))
    root = round(n ** (1 / k))
    moduli = draw(st.lists(st.integers(max(1, root - 3), root + 40), min_size=k, max_size=k))
    assume(math.lcm(*moduli) >= n)
    return chinese_remainder(n, moduli=moduli)


def reference_codes(family, xs):
    """Row i of the codes by Python-int arithmetic from each partition's definition."""
    rows = []
    for p in family:
        if isinstance(p, IdentityPartition):
            rows.append(list(xs))
        elif isinstance(p, (RemainderPartition, ResiduePartition)):
            rows.append([x % p.m for x in xs])
        elif isinstance(p, QuotientPartition):
            rows.append([x // p.m for x in xs])
        elif isinstance(p, DigitPartition):
            rows.append([ref_digit(x, p.radices, p.j) for x in xs])
        else:
            raise AssertionError(p)
    return rows


def reference_table_sizes(family):
    sizes = []
    n = family.n
    for p in family:
        if isinstance(p, IdentityPartition):
            sizes.append(n)
        elif isinstance(p, RemainderPartition):
            sizes.append(p.m)
        elif isinstance(p, ResiduePartition):
            sizes.append(min(p.m, n))
        elif isinstance(p, QuotientPartition):
            sizes.append(-(-n // p.m))
        else:  # digit j of a mixed-radix expansion: the values (x // P_j) % m_j for x < n
            place = math.prod(p.radices[: p.j])
            sizes.append(min(p.radices[p.j], (n - 1) // place + 1))
    return tuple(sizes)


# --------------------------------------------------------------------------------------------
# constructors: complementary, exact sizes, round trip
# --------------------------------------------------------------------------------------------
@given(complementary_families())
def test_constructors_small_n_exhaustive(family):
    n = family.n
    xs = list(range(n))
    codes = family.encode(torch.arange(n))
    assert codes.shape == (family.k, n) and codes.dtype == torch.int64
    assert codes.tolist() == reference_codes(family, xs)
    # table sizes are exact: every row uses exactly ids 0 .. size-1
    assert family.table_sizes == reference_table_sizes(family)
    for row, size in zip(codes.tolist(), family.table_sizes):
        assert set(row) == set(range(size))
    # complementary, and the brute-force injectivity check agrees
    assert family.is_complementary()
    assert len(set(zip(*codes.tolist()))) == n
    assert family.decode(codes).tolist() == xs
    assert family.meet() == IdentityPartition(n)


@given(complementary_families(LARGE_N), st.data())
def test_constructors_large_n_sampled(family, data):
    n = family.n
    xs = sample_indices(n, data)
    x = torch.tensor(xs, dtype=torch.int64)
    codes = family.encode(x)
    assert codes.tolist() == reference_codes(family, xs)
    assert family.table_sizes == reference_table_sizes(family)
    for row, size in zip(codes.tolist(), family.table_sizes):
        assert all(0 <= v < size for v in row)
    assert family.is_complementary()
    assert family.decode(codes).tolist() == xs
    # numpy gives the same as torch
    np_codes = family.encode(np.array(xs, dtype=np.int64))
    assert np_codes.tolist() == codes.tolist()
    assert family.decode(np_codes).tolist() == xs


@given(st.integers(2**62, 2**63), st.integers(1, 4), st.data())
def test_crt_and_gqr_near_int64_limit(n, k, data):
    xs = sample_indices(n, data, size=16)
    x = torch.tensor(xs, dtype=torch.int64)
    for family in (chinese_remainder(n, k=k), generalized_qr(n, k=k)):
        assert family.is_complementary()
        assert family.decode(family.encode(x)).tolist() == xs


@given(st.lists(st.integers(2, 10**6), min_size=1, max_size=4), st.data())
def test_crt_decode_matches_sympy(moduli, data):
    lcm = math.lcm(*moduli)
    n = data.draw(st.integers(1, lcm))
    family = chinese_remainder(n, moduli=moduli)
    xs = sample_indices(n, data, size=16)
    codes = family.encode(torch.tensor(xs))
    for j, x in enumerate(xs):
        # the unique solution modulo lcm(moduli) >= n is the index itself
        solution = solve_congruence(*[(int(codes[i, j]), m) for i, m in enumerate(moduli)])
        assert solution is not None and int(solution[0]) == x
    assert family.decode(codes).tolist() == xs


def test_choose_radices_and_moduli_are_minimal_and_coprime():
    for n in [1, 2, 7, 1000, 1001, 10131227, 2**62 + 1]:
        for k in range(1, 5):
            radices = P.choose_radices(n, k)
            assert math.prod(radices) >= n and len(radices) == k
            assert max(radices) - min(radices) <= 1
            assert math.prod(sorted(radices)[1:]) * (min(radices) - 1) < n or min(radices) == 1
            moduli = P.choose_moduli(n, k)
            assert math.prod(moduli) >= n and len(moduli) == k
            assert all(math.gcd(a, b) == 1 for i, a in enumerate(moduli) for b in moduli[i + 1:])


def test_quotient_remainder_sizes_are_dlrms():
    family = quotient_remainder(10131227, 4)
    assert family.table_sizes == (4, 2532807)
    assert isinstance(family[0], RemainderPartition) and isinstance(family[1], QuotientPartition)
    assert family.num_parameters(16) == (4 + 2532807) * 16


@given(st.integers(1, 10**7), st.integers(1, 10**8), st.integers(1, 4))
def test_family_for_method_is_the_explicit_constructor(n, num_collisions, k):
    def build(method):
        return P.family_for_method(method, n, num_collisions=num_collisions, k=k)

    assert build("full") == naive(n)
    if num_collisions >= n:  # one quotient class: the full table instead
        assert build("qr") == naive(n) and build("qr").table_sizes == (n,)
    else:
        assert build("qr") == quotient_remainder(n, num_collisions)
        assert build("qr").table_sizes == (num_collisions, -(-n // num_collisions))
    assert build("gqr") == generalized_qr(n, k=k)
    assert build("crt") == chinese_remainder(n, k=k)
    assert build("gqr").k == build("crt").k == k


@pytest.mark.parametrize("method", ["hash", "path", "md", "QR", ""])
def test_family_for_method_refuses_methods_without_a_family(method):
    with pytest.raises(ValueError, match=rf"method '{method}'.*\('full', 'qr', 'gqr', 'crt'\)"):
        P.family_for_method(method, 100)


def test_encode_shapes_kinds_and_scalars():
    family = generalized_qr(1000, k=3)
    x = torch.tensor([[1, 999], [10, 0]], dtype=torch.int32)
    codes = family.encode(x)
    assert codes.shape == (3, 2, 2) and codes.dtype == torch.int64
    assert family.decode(codes).tolist() == x.tolist()
    assert family.encode(123) == (3, 2, 1)
    assert family.decode([3, 2, 1]) == 123
    assert family[0](np.array([5, 17], dtype=np.uint8)).tolist() == [5, 7]
    assert family[1](17) == 1
    empty = family.encode(torch.empty(0, dtype=torch.int64))
    assert empty.shape == (3, 0)


# --------------------------------------------------------------------------------------------
# complementarity: agreement with brute force, and detection of non-complementary families
# --------------------------------------------------------------------------------------------
@given(st.integers(1, 300).flatmap(lambda n: st.lists(partitions(n), min_size=1, max_size=3)))
def test_is_complementary_agrees_with_brute_force(parts):
    family = PartitionFamily(parts)
    n = family.n
    codes = family.encode(torch.arange(n)).tolist()
    injective = len(set(zip(*codes))) == n
    assert family.is_complementary() == injective
    assert (family.meet() == IdentityPartition(n)) == injective
    if injective:
        assert family.decode(family.encode(torch.arange(n))).tolist() == list(range(n))
    else:
        with pytest.raises(ValueError, match="not complementary"):
            family.decode(torch.zeros(family.k, 1, dtype=torch.int64))


@pytest.mark.parametrize("n", [100, 10**6, 2**40, 2**62 + 7])
def test_non_complementary_detected(n):
    # residues whose lcm (36) is below n
    assert not chinese_remainder(n, moduli=[4, 6, 9], check=False).is_complementary()
    root = math.isqrt(n)
    assert not PartitionFamily([ResiduePartition(n, root - 1), ResiduePartition(n, root)]).is_complementary()
    # a quotient alone
    assert not PartitionFamily([QuotientPartition(n, 2)]).is_complementary()
    # radices whose product is below n
    assert not generalized_qr(n, radices=[root - 1, root], check=False).is_complementary()
    # a remainder alone, and a hash with fewer buckets than n
    assert not PartitionFamily([RemainderPartition(n, 3)]).is_complementary()
    assert not PartitionFamily([HashPartition(n, n - 1, seed=1)]).is_complementary()
    # QR with the wrong quotient (it should be m, here 2m): x and x + m collide
    m = 8
    assert not PartitionFamily([RemainderPartition(n, m), QuotientPartition(n, 2 * m)]).is_complementary()


def test_hash_partition_complementary_only_when_verified():
    assert not PartitionFamily([HashPartition(50, 49)]).is_complementary()
    # 2**40 buckets over 1000 indices: almost surely injective; verified exhaustively
    family = PartitionFamily([HashPartition(1000, 2**40, seed=5)])
    codes = family.encode(torch.arange(1000))
    assert family.is_complementary() == (len(set(codes[0].tolist())) == 1000)
    # beyond the exhaustive limit there is no proof
    with pytest.raises(UndecidableError, match="EXHAUSTIVE_LIMIT"):
        PartitionFamily([HashPartition(2**40, 2**41, seed=5)]).is_complementary()


def test_constructors_refuse_non_complementary_input():
    with pytest.raises(ValueError, match=r"product 12 < n = 13"):
        generalized_qr(13, radices=[3, 4])
    with pytest.raises(ValueError, match=r"lcm 12 < n = 13"):
        chinese_remainder(13, moduli=[4, 6])


# --------------------------------------------------------------------------------------------
# the algebra: meet, refinement, equality as set partitions
# --------------------------------------------------------------------------------------------
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(partitions(n), partitions(n), partitions(n))))
def test_meet_and_refinement_laws(triple):
    p, q, r = triple
    lp, lq, lr = ref_labels(p), ref_labels(q), ref_labels(r)
    pq = p & q
    # the meet is the pair labelling, relabelled; ids lie in range
    lpq = ref_labels(pq)
    assert ref_blocks(lpq) == ref_blocks(list(zip(lp, lq)))
    assert all(0 <= v < pq.num_classes for v in lpq)
    # commutative, associative, idempotent
    assert pq == q & p
    assert (p & q) & r == p & (q & r)
    assert p & p == p
    # P & Q refines both; refinement is a partial order
    assert pq.refines(p) and pq.refines(q)
    assert p.refines(p)
    assert p.refines(q) == ref_refines(lp, lq)
    if p.refines(q) and q.refines(p):
        assert p == q
    if p.refines(q) and q.refines(r):
        assert p.refines(r)
    # equality is equality of set partitions
    assert (p == q) == (ref_blocks(lp) == ref_blocks(lq))
    assert p.refines(q) == (p & q == p)
    # the meet of three is the triple labelling
    assert ref_blocks(ref_labels(pq & r)) == ref_blocks(list(zip(lp, lq, lr)))


def test_equal_set_partitions_from_different_formulas():
    n = 60
    assert RemainderPartition(n, 6) == ResiduePartition(n, 6) == DigitPartition(n, (6, 10), 0)
    assert QuotientPartition(n, 6) == DigitPartition(n, (6, 10), 1) == DigitPartition(n, (6, 99), 1)
    assert ResiduePartition(n, 61) == IdentityPartition(n) == QuotientPartition(n, 1)
    assert QuotientPartition(n, 60) == ResiduePartition(n, 1)
    assert RemainderPartition(n, 4) & RemainderPartition(n, 6) == ResiduePartition(n, 12)
    assert RemainderPartition(n, 4) != RemainderPartition(n, 6)
    assert (QuotientPartition(n, 2) & ResiduePartition(n, 2)) == IdentityPartition(n)


@pytest.mark.parametrize("n", [2**40, 2**62 + 3])
def test_structural_algebra_for_large_n(n):
    r4, r6, r10 = (ResiduePartition(n, m) for m in (4, 6, 10))
    assert (r4 & r6) & r10 == r4 & (r6 & r10) == ResiduePartition(n, 60)
    assert RemainderPartition(n, 5) == ResiduePartition(n, 5)
    assert QuotientPartition(n, 7) == DigitPartition(n, (7, n), 1)
    assert RemainderPartition(n, 5) != ResiduePartition(n, 10)
    assert ResiduePartition(n, 60).refines(r4) and not r4.refines(ResiduePartition(n, 60))
    assert QuotientPartition(n, 4).refines(QuotientPartition(n, 8))
    assert not QuotientPartition(n, 8).refines(QuotientPartition(n, 4))
    assert (RemainderPartition(n, 9) & QuotientPartition(n, 9)) == IdentityPartition(n)
    assert generalized_qr(n, k=3).meet() == IdentityPartition(n)
    assert chinese_remainder(n, k=3).meet() == IdentityPartition(n)
    # adjacent digits merge: digit 0 & digit 1 of (3, 5, ...) is x mod 15
    assert DigitPartition(n, (3, 5, n), 0) & DigitPartition(n, (3, 5, n), 1) == ResiduePartition(n, 15)
    # a lazy meet is evaluated as the mixed-radix combination of its parts
    lazy = HashPartition(n, 1000, seed=1) & QuotientPartition(n, 2**30)
    assert isinstance(lazy, MeetPartition)
    x = torch.tensor([0, 5, n - 1, 2**35])
    expected = HashPartition(n, 1000, seed=1)(x) * QuotientPartition(n, 2**30).num_classes + QuotientPartition(n, 2**30)(x)
    assert torch.equal(lazy(x), expected)
    assert lazy.refines(QuotientPartition(n, 2**30))
    # a witness on a sample disproves equality; with no witness and no proof it is undecidable
    assert HashPartition(n, 1000, seed=1) != HashPartition(n, 1000, seed=2)
    with pytest.raises(UndecidableError):
        bool(HashPartition(n, 2**50, seed=1) == HashPartition(n, 2**50, seed=2))


# --------------------------------------------------------------------------------------------
# num_parameters
# --------------------------------------------------------------------------------------------
@given(complementary_families(), st.integers(1, 64))
def test_num_parameters(family, dim):
    sizes = family.table_sizes
    assert family.num_parameters(dim, "mult") == family.num_parameters(dim, "add") == sum(sizes) * dim
    if dim >= family.k:
        widths = P.split_dim(dim, family.k)
        assert sum(widths) == dim and max(widths) - min(widths) <= 1
        assert family.num_parameters(dim, "concat") == sum(s * w for s, w in zip(sizes, widths))
    else:
        with pytest.raises(ValueError, match=f"dim = {dim}"):
            family.num_parameters(dim, "concat")


# --------------------------------------------------------------------------------------------
# bad input: each fails early with the offending value in the message
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, text",
    [
        (lambda: IdentityPartition(0), ValueError, "n = 0"),
        (lambda: naive(-3), ValueError, "n = -3"),
        (lambda: naive(2**63 + 1), ValueError, str(2**63 + 1)),
        (lambda: naive(10.0), TypeError, "10.0"),
        (lambda: quotient_remainder(10, 0), ValueError, "num_collisions = 0"),
        (lambda: quotient_remainder(10, -2), ValueError, "num_collisions = -2"),
        (lambda: quotient_remainder(10, 11), ValueError, "num_collisions = 11 exceeds n = 10"),
        (lambda: RemainderPartition(10, 12), ValueError, "m = 12 exceeds n = 10"),
        (lambda: QuotientPartition(10, 0), ValueError, "m = 0"),
        (lambda: ResiduePartition(10, -1), ValueError, "m = -1"),
        (lambda: quotient_remainder(10, 2.5), TypeError, "2.5"),
        (lambda: generalized_qr(100, radices=[10, 0, 5]), ValueError, r"radices\[1\] = 0"),
        (lambda: generalized_qr(100, radices=[10, 2.0]), TypeError, "2.0"),
        (lambda: generalized_qr(100, radices=[10, True]), TypeError, "True"),
        (lambda: generalized_qr(100, radices=[]), ValueError, r"\[\]"),
        (lambda: generalized_qr(100, k=0), ValueError, "k = 0"),
        (lambda: generalized_qr(100), ValueError, "exactly one"),
        (lambda: chinese_remainder(100, moduli=[7, -11]), ValueError, r"moduli\[1\] = -11"),
        (lambda: chinese_remainder(100, moduli=[7, "11"]), TypeError, "'11'"),
        (lambda: chinese_remainder(100, k=-1), ValueError, "k = -1"),
        (lambda: HashPartition(10, 0), ValueError, "num_buckets = 0"),
        (lambda: DigitPartition(10, (2, 5), 2), IndexError, "j = 2"),
        (lambda: PartitionFamily([]), ValueError, "at least one"),
        (lambda: PartitionFamily([IdentityPartition(4), IdentityPartition(5)]), ValueError, "n = 5"),
        (lambda: IdentityPartition(4) & IdentityPartition(5), ValueError, "n = 5"),
        (lambda: naive(10).num_parameters(0), ValueError, "dim = 0"),
        (lambda: naive(10).num_parameters(4, "max"), ValueError, "'max'"),
    ],
)
def test_bad_arguments(make, error, text):
    with pytest.raises(error, match=text):
        make()


@pytest.mark.parametrize("family", [quotient_remainder(100, 7), generalized_qr(2**62, k=3), chinese_remainder(1000, k=2)])
def test_bad_indices(family):
    n = family.n
    with pytest.raises(IndexError, match=f"index {n} is out of range for n = {n}"):
        family.encode(torch.tensor([0, n]))
    with pytest.raises(IndexError, match="index -1 is negative"):
        family.encode(torch.tensor([3, -1]))
    with pytest.raises(IndexError, match="index -5 is negative"):
        family[0](np.array([-5, 2]))
    with pytest.raises(IndexError, match=f"index {n + 3}"):
        family[1](n + 3)
    with pytest.raises(TypeError, match="float32"):
        family.encode(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="float64"):
        family[0](np.array([1.0]))
    with pytest.raises(TypeError, match="torch.bool"):
        family.encode(torch.tensor([True]))
    with pytest.raises(TypeError, match="list"):
        family.encode([1, 2])


def test_bad_codes():
    family = quotient_remainder(10, 4)  # sizes (4, 3); 3 + 4 * 2 = 11 is not below 10
    with pytest.raises(ValueError, match=r"codes \(3, 2\) \(position 1\) are not the image"):
        family.decode(torch.tensor([[0, 3], [0, 2]]))
    with pytest.raises(IndexError, match=r"code 4 in row 0 is out of range \[0, 4\)"):
        family.decode(torch.tensor([[4], [0]]))
    with pytest.raises(IndexError, match="code -1 in row 1 is negative"):
        family.decode(np.array([[0], [-1]]))
    with pytest.raises(ValueError, match="leading dimension k = 2"):
        family.decode(torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32"):
        family.decode(torch.zeros(2, 1))
    crt_family = chinese_remainder(100, moduli=[4, 6, 25])  # not coprime: 4 and 6 must agree mod 2
    with pytest.raises(ValueError, match=r"codes \(1, 0, 0\)"):
        crt_family.decode(torch.tensor([[1], [0], [0]]))
    big = chinese_remainder(2**62, k=2)  # lcm > n: some residue pairs decode to x >= n
    m0, m1 = big.table_sizes
    with pytest.raises(ValueError, match="not the image"):
        big.decode(torch.tensor([[m0 - 1], [m1 - 1]]))


def ref_hash(x, buckets, seed):
    """splitmix64 finaliser on Python ints modulo 2**64 (the documented HashPartition mix)."""
    mask = 2**64 - 1
    golden = 0x9E3779B97F4A7C15
    z = (x + seed * golden + golden) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z & (2**63 - 1)) % buckets


@given(st.integers(1, 2**63), st.integers(1, 2**62), st.integers(-5, 2**40), st.data())
def test_hash_partition_matches_reference(n, buckets, seed, data):
    h = HashPartition(n, buckets, seed)
    xs = sample_indices(n, data, size=16)
    expected = [ref_hash(x, buckets, seed) for x in xs]
    assert h(torch.tensor(xs)).tolist() == expected
    assert h(np.array(xs, dtype=np.int64)).tolist() == expected


def test_zero_dim_round_trip():
    family = chinese_remainder(10**9, k=3)
    codes = family.encode(torch.tensor(123456789))
    assert codes.shape == (3,)
    decoded = family.decode(codes)
    assert decoded.shape == () and int(decoded) == 123456789


def test_generalized_qr_with_radix_products_beyond_int64():
    n = 2**62
    x = torch.tensor([0, 1, 2**40 - 1, 2**40, 2**61 + 12345, n - 1])
    for radices, sizes in [([2**40] * 3, (2**40, 2**22, 1)), ([3, 2**70], (3, -(-n // 3))),
                           ([2**70, 5], (n, 1)), ([7, 11, 2**64], (7, 11, -(-n // 77)))]:
        family = generalized_qr(n, radices=radices)
        assert family.table_sizes == sizes
        codes = family.encode(x)
        assert codes.tolist() == reference_codes(family, x.tolist())
        assert family.decode(codes).tolist() == x.tolist()


def test_docstring_examples():
    from compemb.partitions import algebra, constructors, family, kinds

    assert run_doctests(P, algebra, constructors, family, kinds) > 10


def test_remainder_with_modulus_at_the_int64_limit():
    # m = n = 2**63 does not fit an int64 scalar: x mod m is x itself, never a wrapped value
    n = 2**63
    x = [0, 5, 2**62, n - 1]
    part = RemainderPartition(n, n)
    assert part(torch.tensor(x)).tolist() == x
    assert part(np.array(x, dtype=np.int64)).tolist() == x
    assert part(n - 1) == n - 1
    family = quotient_remainder(n, n)
    codes = family.encode(torch.tensor(x))
    assert codes.tolist() == [x, [0] * len(x)]
    assert family.decode(codes).tolist() == x


def test_decode_names_unsigned_codes_beyond_int64_unwrapped():
    family = naive(10)
    with pytest.raises(IndexError, match=str(2**64 - 1)):
        family.decode(np.array([[2**64 - 1]], dtype=np.uint64))
