"""Data-aware partitions (frequency-aware, clustered) and their modules, against plain-Python references."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compemb.config import EmbeddingBagConfig, build_embedding_bag, num_parameters
from compemb.data_aware import DataAwareEmbeddingBag, balanced_kmeans
from compemb.partitions import (
    ClusteredFamily,
    FrequencyAwareFamily,
    RelabelledFamily,
    chinese_remainder,
    clustered,
    count_indices,
    frequency_aware,
    generalized_qr,
    most_frequent,
    quotient_remainder,
)
from _bags import bag_inputs, combine_ref, naive_pool, round_trip

FAST = settings(max_examples=25, deadline=None)


def injective(family) -> bool:
    """Brute force: distinct code tuples for all of S."""
    codes = family.encode(np.arange(family.n))
    return len({tuple(c) for c in codes.T.tolist()}) == family.n


def base_family(kind: str, n: int, m: int):
    if kind == "qr":
        return quotient_remainder(n, min(m, n))
    if kind == "gqr":
        return generalized_qr(n, k=3)
    if kind == "crt":
        return chinese_remainder(n, k=2)
    return chinese_remainder(n, moduli=(m,), check=False)  # not complementary unless m >= n


@st.composite
def frequency_problems(draw):
    n = draw(st.integers(1, 150))
    h = draw(st.integers(1, n))
    kind = draw(st.sampled_from(["qr", "gqr", "crt", "bad"]))
    m = draw(st.integers(1, max(1, n)))
    counts = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    return n, h, base_family(kind, n, m), counts


# ------------------------------------------------------------------------------------ frequency-aware
@FAST
@given(frequency_problems())
def test_frequency_aware_codes_proof_and_round_trip(problem):
    n, h, base, counts = problem
    hot = sorted(sorted(range(n), key=lambda x: (-counts[x], x))[:h])  # the definition of "most frequent"
    fam = FrequencyAwareFamily(most_frequent(counts, h), base)
    assert fam.hot_ids.tolist() == hot
    assert fam.table_sizes == ((h + 1 if h < n else n),) + tuple(s + 1 for s in base.table_sizes)
    # class ids from the definition: rank among the hot ids, else h; base class, or |P_i| when hot
    codes = fam.encode(torch.arange(n))
    base_codes = base.encode(torch.arange(n))
    for x in range(n):
        expected = [hot.index(x) if x in hot else h]
        expected += [size if x in hot else int(base_codes[i, x]) for i, size in enumerate(base.table_sizes)]
        assert codes[:, x].tolist() == expected
    assert np.array_equal(fam.encode(np.arange(n)), codes.numpy())
    # the proof: complementary when the base is; the check agrees with brute force either way
    assert fam.is_complementary() == injective(fam)
    if base.is_complementary():
        assert fam.is_complementary()
    if fam.is_complementary():
        assert fam.decode(codes).tolist() == list(range(n))
        assert fam.decode(codes.numpy()).tolist() == list(range(n))
        assert fam.decode(codes[:, -1].tolist()) == n - 1
    for p in fam:
        assert p.digit_form() is None


def test_frequency_aware_decode_refuses_codes_that_are_no_image():
    fam = frequency_aware(12, 2, hot_ids=[3, 7], base=quotient_remainder(12, 4))
    with pytest.raises(ValueError, match="not the image"):
        fam.decode([0, 0, 0])  # a hot code must come with the extra rows
    with pytest.raises(ValueError, match="not the image"):
        fam.decode([2, 4, 3])  # a cold code pointing at the hot ids' extra rows
    with pytest.raises(IndexError, match="out of range"):
        fam.decode([3, 0, 0])


def test_frequency_aware_constructor_checks():
    with pytest.raises(ValueError, match="exactly one of"):
        frequency_aware(10, 2)
    with pytest.raises(ValueError, match="exactly one of"):
        frequency_aware(10, 2, counts=[1] * 10, hot_ids=[1, 2])
    with pytest.raises(ValueError, match="counts has 9 entries"):
        frequency_aware(10, 2, counts=[1] * 9)
    with pytest.raises(ValueError, match="num_hot = 11 exceeds"):
        frequency_aware(10, 11, counts=[1] * 10)
    with pytest.raises(ValueError, match="hot id 4 is repeated"):
        FrequencyAwareFamily([4, 4], quotient_remainder(10, 2))
    with pytest.raises(ValueError, match="out of range"):
        FrequencyAwareFamily([10], quotient_remainder(10, 2))
    with pytest.raises(ValueError, match="not complementary"):
        frequency_aware(10, 1, hot_ids=[0], base=chinese_remainder(10, moduli=(2,), check=False))
    with pytest.raises(IndexError, match="index 5 is out of range"):
        count_indices(torch.tensor([0, 5]), 5)
    with pytest.raises(ValueError, match="non-negative"):
        most_frequent([1.0, -1.0], 1)
    assert frequency_aware(6, 2, indices=np.array([5, 5, 2, 2, 2, 0])).hot_ids.tolist() == [2, 5]


# ----------------------------------------------------------------------------------------- clustered
@st.composite
def cluster_problems(draw):
    n = draw(st.integers(1, 120))
    m = draw(st.integers(1, n))
    k = draw(st.integers(-(-n // m), -(-n // m) + 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    slots = rng.permutation(np.repeat(np.arange(k), m))[:n]  # at most m ids per cluster
    order = rng.integers(0, 4, size=n).astype(float)
    return n, m, k, slots, order


@FAST
@given(cluster_problems())
def test_clustered_codes_are_cluster_and_rank(problem):
    n, m, k, slots, order = problem
    fam = clustered(n, m, clusters=slots, num_clusters=k, order=order)
    assert isinstance(fam, ClusteredFamily) and fam.table_sizes == (k, m)
    codes = fam.encode(torch.arange(n))
    assert codes[0].tolist() == slots.tolist() and fam.clusters.tolist() == slots.tolist()
    for c in range(k):  # ranks: 0, 1, ... by (order, id) inside each cluster
        members = sorted((order[x], x) for x in range(n) if slots[x] == c)
        assert [int(codes[1, x]) for _, x in members] == list(range(len(members)))
    assert fam.is_complementary() and injective(fam)
    assert fam.decode(codes).tolist() == list(range(n))
    again = fam.with_arrays(fam.arrays())
    assert again.spec() == fam.spec() and again.structure() == fam.structure()


def test_clustered_identity_is_qr_and_errors():
    fam = ClusteredFamily(10, 4)
    qr = quotient_remainder(10, 4)
    assert fam.encode(torch.arange(10)).tolist() == qr.encode(torch.arange(10)).flip(0).tolist()
    with pytest.raises(ValueError, match="cluster 1 has 3 members, more than capacity = 2"):
        clustered(4, 2, clusters=[1, 1, 1, 0])
    with pytest.raises(ValueError, match="not injective: ids 0 and 2 both map to 5"):
        RelabelledFamily([5, 1, 5], quotient_remainder(6, 2))
    with pytest.raises(ValueError, match="outside"):
        RelabelledFamily([6, 1], quotient_remainder(6, 2))
    with pytest.raises(ValueError, match="cannot hold"):
        ClusteredFamily(10, 2, num_clusters=4)
    with pytest.raises(ValueError, match="relabel has 3 entries"):
        fam.with_arrays({"relabel": torch.arange(3)})


def test_spec_carries_a_digest_and_structure_does_not():
    a = frequency_aware(20, 3, hot_ids=[1, 2, 3])
    b = frequency_aware(20, 3, hot_ids=[1, 2, 4])
    assert a.spec() != b.spec() and a.structure() == b.structure()


# -------------------------------------------------------------------------------------------- modules
def _reference_bag(bag, x, offsets, include_last, bags, psw, mode):
    tables = [w.detach().double() for w in bag.weights]
    codes = bag.family.encode(torch.arange(bag.num_embeddings))
    out = []
    flat_w = psw.tolist() if psw is not None else None
    pos = 0
    for b in bags:
        vectors = []
        for i in b:
            rows = [t[codes[j, i]] for j, t in enumerate(tables)]
            vectors.append(combine_ref(rows, bag.operation))
        weights = flat_w[pos:pos + len(b)] if flat_w is not None else None
        pos += len(b)
        out.append(naive_pool(vectors, weights, mode, bag.embedding_dim))
    return torch.stack(out)


@FAST
@given(st.data())
def test_module_forward_equals_the_definition(data):
    n = data.draw(st.integers(2, 60))
    kind = data.draw(st.sampled_from(["freq", "cluster"]))
    operation = data.draw(st.sampled_from(["mult", "add", "concat"]))
    mode = data.draw(st.sampled_from(["sum", "mean", "max"]))
    x, offsets, include_last, bags = data.draw(bag_inputs(n))
    if kind == "freq":
        counts = data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
        bag = DataAwareEmbeddingBag.frequency_aware(n, 6, data.draw(st.integers(1, n)), counts=counts,
                                                    num_collisions=data.draw(st.integers(1, n)), operation=operation,
                                                    mode=mode, include_last_offset=include_last, dtype=torch.float64)
    else:
        bag = DataAwareEmbeddingBag.clustered(n, 6, data.draw(st.integers(1, n)), operation=operation, mode=mode,
                                              include_last_offset=include_last, dtype=torch.float64)
        bag.recluster(seed=data.draw(st.integers(0, 5)), num_iters=3)
    psw = torch.rand(x.shape, dtype=torch.float64) if mode == "sum" else None
    got = bag(x, offsets, psw)
    torch.testing.assert_close(got, _reference_bag(bag, x, offsets, include_last, bags, psw.reshape(-1) if psw is not None
                                                   else None, mode))


def test_frequency_aware_state_round_trip_and_refusals():
    torch.manual_seed(0)
    counts = torch.randint(0, 100, (50,))
    trained = DataAwareEmbeddingBag.frequency_aware(50, 4, 6, counts=counts, num_collisions=5, mode="sum")
    fresh = DataAwareEmbeddingBag.frequency_aware(50, 4, 6, num_collisions=5, mode="sum")  # placeholder hot ids
    x = torch.randint(0, 50, (7, 3))
    assert not torch.equal(fresh.family.hot_ids, trained.family.hot_ids)
    fresh.load_state_dict(round_trip(trained.state_dict()))
    assert torch.equal(fresh.family.hot_ids, most_frequent(counts, 6))
    torch.testing.assert_close(fresh(x), trained(x))
    # another structure (num_hot) is refused, naming the field; the tables stay
    other = DataAwareEmbeddingBag.frequency_aware(50, 4, 5, num_collisions=5)
    before = [w.detach().clone() for w in other.weights]
    with pytest.raises(RuntimeError, match="family differs"):
        other.load_state_dict(trained.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(before, other.weights))
    # arrays that define no family are refused before anything is overwritten
    state = trained.state_dict()
    state["partition_hot_ids"] = torch.tensor([1, 1, 2, 3, 4, 5])
    fresh2 = DataAwareEmbeddingBag.frequency_aware(50, 4, 6, num_collisions=5, mode="sum")
    before = [w.detach().clone() for w in fresh2.weights]
    hot = fresh2.family.hot_ids.clone()
    with pytest.raises(RuntimeError, match="hot id 1 is repeated"):
        fresh2.load_state_dict(state)
    assert torch.equal(fresh2.family.hot_ids, hot) and all(torch.equal(a, b) for a, b in zip(before, fresh2.weights))


def test_clustered_state_round_trip_after_recluster_and_dtype_move():
    torch.manual_seed(1)
    trained = DataAwareEmbeddingBag.clustered(80, 6, 8, operation="add", mode="mean")
    trained.recluster(seed=4)
    fresh = DataAwareEmbeddingBag.clustered(80, 6, 8, operation="add", mode="mean")
    x = torch.randint(0, 80, (5, 4))
    fresh.load_state_dict(round_trip(trained.state_dict()))
    assert torch.equal(fresh.family.relabel, trained.family.relabel)
    torch.testing.assert_close(fresh(x), trained(x))
    state = trained.state_dict()
    state["partition_relabel"] = torch.zeros(80, dtype=torch.long)
    with pytest.raises(RuntimeError, match="not injective"):
        DataAwareEmbeddingBag.clustered(80, 6, 8, operation="add").load_state_dict(state)
    doubled = fresh.double()
    assert doubled.family.relabel is doubled.partition_relabel  # the family reads the (moved) buffer
    torch.testing.assert_close(doubled(x), trained(x).double())


def test_recluster_is_reproducible_by_seed():
    def run(seed):
        torch.manual_seed(3)
        bag = DataAwareEmbeddingBag.clustered(150, 4, 10, operation="mult")
        bag.recluster(seed=seed, num_iters=5)
        return bag.family.relabel.clone(), [w.detach().clone() for w in bag.weights]

    (r1, w1), (r2, w2), (r3, _) = run(7), run(7), run(8)
    assert torch.equal(r1, r2) and all(torch.equal(a, b) for a, b in zip(w1, w2))
    assert not torch.equal(r1, r3)


@pytest.mark.parametrize("operation", ["add", "mult", "concat"])
def test_recluster_recovers_planted_clusters(operation):
    gen = torch.Generator().manual_seed(0)
    k, m, d = 6, 5, 4
    centers = torch.randn(k, d, generator=gen) * 10
    truth = torch.arange(k).repeat_interleave(m)[torch.randperm(k * m, generator=gen)]
    table = centers[truth] + 0.05 * torch.randn(k * m, d, generator=gen)
    bag = DataAwareEmbeddingBag.from_table(table, m, operation=operation)
    found = bag.family.clusters
    for c in range(k):
        assert len(set(truth[found == c].tolist())) == 1  # each cluster is one planted blob
    if operation != "concat":  # concat's rank half cannot tell the blobs apart
        assert float(((bag.embeddings() - table) ** 2).mean()) < 0.05**2 * 2


@FAST
@given(st.integers(4, 40), st.integers(1, 5), st.integers(0, 99), st.sampled_from(["add", "mult", "concat"]))
def test_recluster_warm_start_is_at_least_as_good_as_the_centroids(n, d, seed, operation):
    d = max(d, 2)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(n, d, generator=gen, dtype=torch.float64)
    m = max(2, n // 4)
    bag = DataAwareEmbeddingBag.clustered(n, d, m, operation=operation, dtype=torch.float64)
    result = bag.recluster(seed, embeddings=table, num_iters=5)
    clusters, ranks = bag.family.encode(torch.arange(n))
    cents = bag.weights[0].detach()
    if operation == "concat":  # the best rank rows vs none: centroid slice, zeros elsewhere
        d0 = bag.dims[0]
        baseline = ((table[:, :d0] - cents[clusters]) ** 2).sum() + (table[:, d0:] ** 2).sum()
    else:
        baseline = ((table - cents[clusters]) ** 2).sum()
    assert result.reconstruction_error <= float(baseline) + 1e-9
    assert result.reconstruction_error == pytest.approx(float(((bag.embeddings() - table) ** 2).sum()))
    assert torch.bincount(clusters).max() <= m


def test_recluster_needs_a_clustered_family_and_good_embeddings():
    bag = DataAwareEmbeddingBag.frequency_aware(20, 4, 3, counts=torch.arange(20))
    with pytest.raises(TypeError, match="only a ClusteredFamily"):
        bag.recluster()
    cl = DataAwareEmbeddingBag.clustered(20, 4, 5)
    with pytest.raises(ValueError, match=r"\(20, 4\) tensor"):
        cl.recluster(embeddings=torch.zeros(20, 3))
    with pytest.raises(TypeError, match="DataAwareFamily"):
        DataAwareEmbeddingBag(12, 4, quotient_remainder(12, 3))


# -------------------------------------------------------------------------------------------- k-means
@FAST
@given(st.integers(1, 60), st.integers(1, 8), st.integers(0, 2**20), st.integers(1, 3))
def test_balanced_kmeans_respects_capacity_and_is_reproducible(n, k, seed, d):
    m = -(-n // k)
    pts = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    a = balanced_kmeans(pts, k, m, seed=seed, num_iters=4)
    b = balanced_kmeans(pts, k, m, seed=seed, num_iters=4)
    assert torch.equal(a.assignment, b.assignment) and torch.equal(a.centroids, b.centroids)
    assert a.assignment.min() >= 0 and torch.bincount(a.assignment, minlength=k).max() <= m
    assert a.inertia == pytest.approx(float(((pts - a.centroids[a.assignment]) ** 2).sum()), rel=1e-5, abs=1e-6)


def test_balanced_kmeans_agrees_with_sklearn_on_separated_blobs():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    gen = torch.Generator().manual_seed(5)
    centers = torch.randn(4, 3, generator=gen) * 20
    pts = (centers.repeat_interleave(25, 0) + torch.randn(100, 3, generator=gen))
    ours = balanced_kmeans(pts, 4, 25, seed=0).assignment.numpy()
    theirs = KMeans(4, n_init=4, random_state=0).fit_predict(pts.numpy())
    assert adjusted_rand_score(theirs, ours) == 1.0


def test_balanced_kmeans_errors():
    with pytest.raises(ValueError, match="cannot hold"):
        balanced_kmeans(torch.zeros(10, 2), 2, 4)
    with pytest.raises(ValueError, match="NaN"):
        balanced_kmeans(torch.tensor([[float("nan")]]), 1, 1)


# ------------------------------------------------------------------------------------------- building
def test_build_freq_and_cluster_from_config():
    counts = torch.zeros(500, dtype=torch.long)
    counts[[7, 99, 300]] = torch.tensor([5, 50, 9])
    config = EmbeddingBagConfig("C1", 500, 8, method="freq", num_hot=3, num_collisions=10)
    with pytest.raises(ValueError, match="needs the training split's counts"):
        build_embedding_bag(config)
    bag = build_embedding_bag(config, counts=counts)
    assert bag.family.hot_ids.tolist() == [7, 99, 300]
    assert num_parameters(bag) == (4 + 11 + 51) * 8
    with pytest.raises(ValueError, match="needs num_hot"):
        EmbeddingBagConfig("C1", 500, 8, method="freq")
    cl = build_embedding_bag(EmbeddingBagConfig("C2", 500, 8, method="cluster", num_collisions=10))
    assert [tuple(w.shape) for w in cl.weights] == [(50, 8), (10, 8)]
    assert cl(torch.tensor([[0, 499]])).shape == (1, 8)
