"""Regression tests for review findings in the kernels and collections."""
import contextlib

import pytest
import torch

from compemb.collection import CompositionalEmbeddingBagCollection

pytestmark = pytest.mark.filterwarnings("ignore")

SPECS = [
    ("qr_mult", 100, 8, 10, "mult", "sum", "after_pool"),
    ("full", 50, 4, None, "add", "mean"),
]


@pytest.mark.parametrize("native", [True, False])
def test_fbgemm_eval_under_inference_mode_then_training_step(native):
    """Offsets of 2-D inputs first built under ``torch.inference_mode()`` must not break a later
    backward (the dense TBE saves them for backward)."""
    pytest.importorskip("fbgemm_gpu")
    # a batch shape no other test uses, so the offsets are first built under inference_mode
    B, L = 13, 3 + int(native)
    coll = CompositionalEmbeddingBagCollection(SPECS, backend="fbgemm", seed=0)
    coll._backend.use_native = native
    feats = [torch.randint(0, 50, (B, L)), torch.randint(0, 50, (B, L))]
    with torch.inference_mode():
        coll(feats, concat=True)
    out = coll(feats, concat=True)
    out.sum().backward()
    assert all(p.grad is not None for p in coll.parameters())


def test_packed_offsets_of_2d_inputs_are_never_inference_tensors():
    from compemb.kernels._collection_input import pack_features

    bags = [(torch.zeros(11, 2, dtype=torch.long), None, False), (torch.zeros(11, 5, dtype=torch.long), None, False)]
    with torch.inference_mode():
        _, offsets, _, _ = pack_features(["a", "b"], bags)
    assert not offsets.is_inference()
    _, again, _, _ = pack_features(["a", "b"], bags)
    assert not again.is_inference()
    assert again.tolist() == [2 * i for i in range(12)] + [22 + 5 * i for i in range(1, 12)]


# -- the FBGEMM collection's input checks: one device read per forward on the PyTorch path -------

CHECK_SPECS = [("qr_mult", 100, 8, 10, "mult", "sum", "after_pool"), ("full", 50, 4, None, "add", "mean"),
               ("qr_bp", 120, 8, 7, "mult", "mean", "before_pool")]


@contextlib.contextmanager
def _count_host_reads():
    """Counts tensor-to-Python reads (``tolist``, ``item``, ``bool``, ``int``): device syncs on CUDA."""
    n = [0]
    saved = {k: getattr(torch.Tensor, k) for k in ("tolist", "item", "__bool__", "__int__")}

    def counting(f):
        def read(self, *args, **kwargs):
            n[0] += 1
            return f(self, *args, **kwargs)
        return read

    for k, f in saved.items():
        setattr(torch.Tensor, k, counting(f))
    try:
        yield n
    finally:
        for k, f in saved.items():
            setattr(torch.Tensor, k, f)


@pytest.mark.parametrize("optimizer", [None, "exact_sgd"])
@pytest.mark.parametrize("two_d", [False, True])
def test_fbgemm_torch_path_reads_the_device_once_per_forward(optimizer, two_d):
    pytest.importorskip("fbgemm_gpu")
    coll = CompositionalEmbeddingBagCollection(CHECK_SPECS, backend="fbgemm", optimizer=optimizer, seed=0)
    coll._backend.use_native = False
    if two_d:
        feats = [torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), torch.tensor([[3, 5]])]
    else:
        feats = [(torch.tensor([1, 2, 3]), torch.tensor([0, 2])), (torch.tensor([1, 2]), torch.tensor([0, 1])),
                 (torch.tensor([5, 6, 7]), torch.tensor([0, 1]))]
    coll(feats)  # the first call builds cached metadata
    with _count_host_reads() as reads:
        coll(feats)
    assert reads[0] == 1


E = torch.tensor([], dtype=torch.long)
BAD_INPUTS = {
    "last": ([(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 5]), True), (torch.tensor([1, 2]), torch.tensor([0, 1])),
              (torch.tensor([1, 2]), torch.tensor([0, 1]))],
             ValueError, r"^feature 'qr_mult': the last offset is 5 but the feature has 3 indices \(every index must"),
    "first": ([(torch.tensor([1, 2]), torch.tensor([0, 1])), (torch.tensor([1, 2, 3]), torch.tensor([1, 2])),
               (torch.tensor([1, 2]), torch.tensor([0, 1]))],
              ValueError, r"^feature 'full': offsets\[0\] must be 0, got 1"),
    "range_after_empty": ([(E, torch.tensor([0, 0])), (torch.tensor([1, 50]), torch.tensor([0, 1])),
                           (torch.tensor([1, 2]), torch.tensor([0, 1]))],
                          IndexError, r"^feature 'full': index 50 is out of range for num_embeddings=50"),
    "negative": ([(torch.tensor([1, 2]), torch.tensor([0, 1])), (torch.tensor([1, 2]), torch.tensor([0, 1])),
                  (torch.tensor([1, -2]), torch.tensor([0, 1]))],
                 IndexError, r"^feature 'qr_bp': index -2 is out of range for num_embeddings=120"),
    "batch": ([(torch.tensor([1, 2]), torch.tensor([0, 1])), (torch.tensor([1]), torch.tensor([0])),
               (torch.tensor([1, 2]), torch.tensor([0, 1]))],
              ValueError, r"all features need one batch size, got \[2, 1, 2\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("native", [True, False])
def test_fbgemm_refuses_bad_input_alike_on_both_paths(case, native):
    pytest.importorskip("fbgemm_gpu")
    feats, err, match = BAD_INPUTS[case]
    coll = CompositionalEmbeddingBagCollection(CHECK_SPECS, backend="fbgemm", seed=0)
    coll._backend.use_native = native
    with pytest.raises(err, match=match):
        coll(feats)


@pytest.mark.parametrize("native", [True, False])
def test_fbgemm_empty_batch(native):
    pytest.importorskip("fbgemm_gpu")
    coll = CompositionalEmbeddingBagCollection(CHECK_SPECS, backend="fbgemm", seed=0)
    coll._backend.use_native = native
    assert coll([(E, E)] * 3, concat=True).shape == (0, 20)
