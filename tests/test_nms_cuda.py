"""drdet.layers.nms / batched_nms on every backend: the CPU kernels and both versions of the CUDA
kernels (DRDET_CUDA_KERNELS=v1, the verified default, and v2, not yet run on a GPU), against
torchvision's CPU ops and drdet's CPU kernels, at 1k to 100k boxes and above v1's limit of
393,216 boxes. The CUDA cases skip where no GPU is visible; the CPU cases run everywhere.
Scores are tie-free, so the visiting order, and the result, are fully defined.
"""

import functools

import pytest
import torch
import torchvision
from helpers.devices import BACKENDS, use_backend
from helpers.nms import distinct_scores, random_boxes

from drdet.layers import batched_nms, nms

V1_LIMIT = 393_216  # 48 KiB of shared memory / 8 bytes per word x 64 boxes per word


@pytest.fixture(params=BACKENDS)
def device(request, monkeypatch):
    return use_backend(request.param, monkeypatch)


def per_class_nms(boxes, scores, class_ids, threshold):
    """Class-aware NMS as torchvision.ops.nms class by class (no coordinate offsets, whose
    rounding can flip an IoU at the threshold), merged in decreasing score order."""
    kept = []
    for c in class_ids.unique():
        idx = torch.nonzero(class_ids == c).flatten()
        kept.append(idx[torchvision.ops.nms(boxes[idx], scores[idx], threshold)])
    kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    return kept[scores[kept].argsort(descending=True, stable=True)]


def check_both_ops(device, boxes, scores, class_ids, threshold=0.5, expected=None):
    """nms and batched_nms on `device` equal torchvision's and drdet's on the CPU. expected:
    the two CPU results if already known."""
    if expected is None:
        expected = cpu_results(boxes, scores, class_ids, threshold)
    got = nms(boxes.to(device), scores.to(device), threshold)
    assert torch.equal(got.cpu(), expected[0])
    got = batched_nms(boxes.to(device), scores.to(device), class_ids.to(device), threshold)
    assert torch.equal(got.cpu(), expected[1])


def cpu_results(boxes, scores, class_ids, threshold):
    """(nms, batched_nms) by torchvision, checked equal to drdet's CPU kernels."""
    expected_nms = torchvision.ops.nms(boxes, scores, threshold)
    assert torch.equal(nms(boxes, scores, threshold), expected_nms)
    expected_batched = per_class_nms(boxes, scores, class_ids, threshold)
    assert torch.equal(batched_nms(boxes, scores, class_ids, threshold), expected_batched)
    return expected_nms, expected_batched


@functools.cache
def issue_case(n):
    """Boxes, scores, 80 class ids and the CPU results for n boxes, made once per n (the CPU
    references of 100k boxes take most of a minute) and the same whatever the test order."""
    with torch.random.fork_rng():
        torch.manual_seed(n)
        boxes, scores = random_boxes(n), distinct_scores(n)
        class_ids = torch.randint(0, 80, (n,))
    return boxes, scores, class_ids, cpu_results(boxes, scores, class_ids, 0.5)


@pytest.mark.parametrize("n", [1000, 5000, 20000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_sizes_of_the_issue(device, n):
    boxes, scores, class_ids, expected = issue_case(n)
    check_both_ops(device, boxes, scores, class_ids, expected=expected)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 129])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_tile_edges_and_thresholds(device, n, threshold):
    boxes, scores = random_boxes(n, image_size=100.0), distinct_scores(n)
    check_both_ops(device, boxes, scores, torch.randint(0, 3, (n,)), threshold)


def test_class_layouts(device):
    """Many classes of one or two boxes, one class with most boxes, int32 and negative ids."""
    n = 6000
    boxes, scores = random_boxes(n, image_size=300.0), distinct_scores(n)
    for class_ids in (
        torch.arange(n) // 2,  # 3000 classes
        torch.where(torch.rand(n) < 0.9, 7, torch.randint(0, 50, (n,))),
        torch.randint(-5, 5, (n,), dtype=torch.int32),
    ):
        expected = per_class_nms(boxes, scores, class_ids, 0.5)
        got = batched_nms(boxes.to(device), scores.to(device), class_ids.to(device), 0.5)
        assert torch.equal(got.cpu(), expected)


def test_empty_input(device):
    boxes = torch.zeros(0, 4, device=device)
    scores = torch.zeros(0, device=device)
    assert nms(boxes, scores, 0.5).numel() == 0
    classes = torch.zeros(0, dtype=torch.long, device=device)
    assert batched_nms(boxes, scores, classes, 0.5).numel() == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda-v2", marks=pytest.mark.cuda)])
def test_above_the_v1_limit(backend, monkeypatch):
    """400,000 boxes: 80 classes against torchvision class by class (about 30 s on one CPU
    core), and on CUDA one class against drdet's CPU nms (about 40 s; torchvision's CPU nms
    takes minutes at this size; the two agree at the smaller sizes above). v2's reduction keeps
    the bitmask of that class in global memory (above 385,024 boxes); its mask takes 20 GB."""
    device = use_backend(backend, monkeypatch)
    n = 400_000
    assert n > V1_LIMIT
    boxes, scores = random_boxes(n), distinct_scores(n)
    class_ids = torch.randint(0, 80, (n,))
    expected = per_class_nms(boxes, scores, class_ids, 0.5)
    got = batched_nms(boxes.to(device), scores.to(device), class_ids.to(device), 0.5)
    assert torch.equal(got.cpu(), expected)
    if device == "cuda":
        expected = nms(boxes, scores, 0.5)
        assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), expected)


@pytest.mark.cuda
def test_v1_reports_its_limit(monkeypatch):
    use_backend("cuda-v1", monkeypatch)
    n = V1_LIMIT + 1
    boxes, scores = random_boxes(n, device="cuda"), distinct_scores(n, "cuda")
    with pytest.raises(RuntimeError, match="supports at most 393216 boxes"):
        nms(boxes, scores, 0.5)


@pytest.mark.cuda
def test_cuda_kernel_switch_is_checked(monkeypatch):
    monkeypatch.setenv("DRDET_CUDA_KERNELS", "v3")
    boxes, scores = random_boxes(10, device="cuda"), distinct_scores(10, "cuda")
    with pytest.raises(RuntimeError, match="DRDET_CUDA_KERNELS must be 'v1'"):
        nms(boxes, scores, 0.5)
