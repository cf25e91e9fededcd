"""drdet.layers.nms / batched_nms against torchvision.ops.nms / batched_nms and hand-made cases.

Scores are made tie-free (a random permutation of distinct values): with ties, the visiting order
of equal scores, and so the result, is implementation-defined. The tests that take ``op_form`` run
twice: with the extension and with the pure form (drdet/layers/pure_ops.py, which calls
torchvision's NMS per class: against torchvision they check its wrapping; the hand-made cases
check both forms independently).
"""

import pytest
import torch
import torchvision
from helpers.devices import DEVICES
from helpers.nms import distinct_scores, random_boxes

from drdet.layers import batched_nms, nms


def _skip_large_for_pure(n, op_form):
    """The pure form calls torchvision's NMS itself: above 5000 boxes it only adds time (~1 s
    per case on the 2-core VM); the kernels are checked at every size."""
    if op_form == "pure" and n > 5000:
        pytest.skip("the pure form is torchvision.ops.nms; 5000 boxes cover its wrapping")


@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000, 5000, 20000])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(n, threshold, op_form):
    _skip_large_for_pure(n, op_form)
    boxes, scores = random_boxes(n), distinct_scores(n)
    expected = torchvision.ops.nms(boxes, scores, threshold)
    kept = nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64
    assert torch.equal(kept, expected)


@pytest.mark.parametrize("n", [1, 10, 1000, 5000, 20000])
@pytest.mark.parametrize("num_classes", [1, 3, 80])
def test_batched_nms_matches_torchvision(n, num_classes, op_form):
    _skip_large_for_pure(n, op_form)
    boxes, scores = random_boxes(n), distinct_scores(n)
    class_ids = torch.randint(0, num_classes, (n,))
    expected = torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5)
    kept = batched_nms(boxes, scores, class_ids, 0.5)
    assert torch.equal(kept, expected)
    # Kept indices come in decreasing score order.
    assert torch.all(scores[kept][1:] < scores[kept][:-1])


def test_dense_clusters_match_torchvision(op_form):
    # Many heavily overlapping boxes: most are suppressed, chains of suppression matter.
    n = 3000
    centers = torch.rand(20, 2) * 500
    xy = centers[torch.randint(0, 20, (n,))] + torch.randn(n, 2) * 5
    wh = 50 + torch.rand(n, 2) * 20
    boxes, scores = torch.cat([xy, xy + wh], 1), distinct_scores(n)
    class_ids = torch.randint(0, 4, (n,))
    for threshold in (0.3, 0.5, 0.8):
        assert torch.equal(
            nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
        )
        assert torch.equal(
            batched_nms(boxes, scores, class_ids, threshold),
            torchvision.ops.batched_nms(boxes, scores, class_ids, threshold),
        )


def test_float64_matches_torchvision(op_form):
    boxes, scores = random_boxes(2000, dtype=torch.float64), distinct_scores(2000).double()
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_boxes_are_computed_in_float32(dtype, op_form):
    boxes, scores = random_boxes(3000, dtype=dtype), distinct_scores(3000)
    class_ids = torch.randint(0, 10, (3000,))
    # Same rounded coordinates, IoU in float32.
    expected = torchvision.ops.nms(boxes.float(), scores, 0.5)
    assert torch.equal(nms(boxes, scores, 0.5), expected)
    assert torch.equal(
        batched_nms(boxes, scores, class_ids, 0.5),
        torchvision.ops.batched_nms(boxes.float(), scores, class_ids, 0.5),
    )


def test_hand_made_cases(op_form):
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: score 0.9, kept
            [1.0, 1.0, 11.0, 11.0],  # 1: IoU with 0 = 81 / 119 = 0.68 -> suppressed at 0.5
            [0.0, 0.0, 10.0, 5.0],  # 2: IoU with 0 = 50 / 100 = 0.5, not > 0.5 -> kept
            [20.0, 20.0, 30.0, 30.0],  # 3: disjoint -> kept
            [10.0, 0.0, 20.0, 10.0],  # 4: touches 0 along an edge, IoU 0 -> kept even at 0
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [4, 0, 2, 3]
    # 0.5 < IoU(0, 1) = 0.68: suppressed at 0.6 but not at 0.7.
    assert nms(boxes, scores, 0.6).tolist() == [4, 0, 2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [4, 0, 1, 2, 3]
    # Threshold 0: any positive overlap suppresses; edge contact does not.
    assert nms(boxes, scores, 0.0).tolist() == [4, 0, 3]
    # Threshold 1: IoU never exceeds 1, so every box is kept, in decreasing score order.
    assert nms(boxes, scores, 1.0).tolist() == [4, 0, 1, 2, 3]
    # Classes: 1 survives when 0 is in another class; IoU(1, 2) = 36 / 114 = 0.32.
    class_ids = torch.tensor([0, 1, 1, 0, 0])
    assert batched_nms(boxes, scores, class_ids, 0.5).tolist() == [4, 0, 1, 2, 3]
    assert batched_nms(boxes, scores, class_ids, 0.3).tolist() == [4, 0, 1, 3]


def test_identical_boxes_keep_only_the_best(op_form):
    boxes = torch.tensor([[5.0, 5.0, 15.0, 25.0]]).repeat(6, 1)
    scores = torch.tensor([0.1, 0.6, 0.3, 0.9, 0.2, 0.5])
    assert nms(boxes, scores, 0.99).tolist() == [3]
    assert nms(boxes, scores, 1.0).tolist() == [3, 1, 5, 2, 4, 0]
    class_ids = torch.tensor([0, 1, 0, 1, 2, 2])
    assert batched_nms(boxes, scores, class_ids, 0.5).tolist() == [3, 5, 2]


def test_zero_area_boxes_match_torchvision(op_form):
    boxes = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],  # a point
            [5.0, 5.0, 5.0, 5.0],  # the same point: 0 / 0, never suppresses (torchvision)
            [0.0, 0.0, 10.0, 10.0],  # contains the point: IoU 0
            [2.0, 3.0, 8.0, 3.0],  # a horizontal segment
            [2.0, 3.0, 8.0, 3.0],
            [9.0, 9.0, 4.0, 4.0],  # inverted corners (negative width and height)
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    for threshold in (0.0, 0.5, 1.0):
        expected = torchvision.ops.nms(boxes, scores, threshold)
        assert torch.equal(nms(boxes, scores, threshold), expected)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3, 4, 5]
    # Random boxes with many degenerate ones mixed in.
    random = random_boxes(2000)
    random[::3, 2] = random[::3, 0]
    random[1::5, 3] = random[1::5, 1]
    scores = distinct_scores(2000)
    assert torch.equal(nms(random, scores, 0.5), torchvision.ops.nms(random, scores, 0.5))


def test_class_ids_of_any_integer_dtype_and_value(op_form):
    boxes, scores = random_boxes(500, max_size=400), distinct_scores(500)
    class_ids = torch.randint(0, 5, (500,))
    expected = torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5)
    for ids in (class_ids.int(), class_ids.to(torch.uint8), class_ids * 1000 - 2000):
        assert torch.equal(batched_nms(boxes, scores, ids, 0.5), expected)


def test_non_contiguous_inputs(op_form):
    boxes, scores = random_boxes(800), distinct_scores(1600)
    wide = boxes.repeat_interleave(2, dim=1)[:, ::2]  # the same boxes, column stride 2
    strided_scores = scores[::2]
    assert not wide.is_contiguous() and not strided_scores.is_contiguous()
    assert torch.equal(
        nms(wide, strided_scores, 0.5),
        torchvision.ops.nms(wide.contiguous(), strided_scores.contiguous(), 0.5),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_empty_input(device, op_form):
    boxes = torch.zeros(0, 4, device=device)
    scores = torch.zeros(0, device=device)
    for kept in (
        nms(boxes, scores, 0.5),
        batched_nms(boxes, scores, torch.zeros(0, dtype=torch.long, device=device), 0.5),
    ):
        assert kept.shape == (0,) and kept.dtype == torch.int64 and kept.device.type == device


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda b, s, c: nms(b[:, :3], s, 0.5), r"boxes must be \(N, 4\)"),
        (lambda b, s, c: nms(b, s[:-1], 0.5), r"scores must be \(N,\)"),
        (lambda b, s, c: nms(b.long(), s, 0.5), "boxes must be a floating-point"),
        (lambda b, s, c: nms(b, s.long(), 0.5), "scores must be a floating-point"),
        (lambda b, s, c: nms(b, s, float("nan")), "iou_threshold must be finite"),
        (lambda b, s, c: batched_nms(b, s, c[:-1], 0.5), r"class_ids must be \(N,\)"),
        (lambda b, s, c: batched_nms(b, s, c.float(), 0.5), "class_ids must be an integer"),
    ],
)
def test_bad_inputs_raise(call, message, op_form):
    boxes, scores = random_boxes(10), distinct_scores(10)
    class_ids = torch.zeros(10, dtype=torch.long)
    with pytest.raises(RuntimeError, match=message):
        call(boxes, scores, class_ids)


@pytest.mark.extension
def test_opcheck():
    boxes, scores = random_boxes(300), distinct_scores(300)
    class_ids = torch.randint(0, 3, (300,))
    torch.library.opcheck(torch.ops.drdet.nms, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.drdet.batched_nms, (boxes, scores, class_ids, 0.5))


@pytest.mark.extension
def test_torch_compile_traces_the_ops():
    boxes, scores = random_boxes(400, max_size=300), distinct_scores(400)
    class_ids = torch.randint(0, 3, (400,))

    def f(b, s, c):
        return nms(b * 2.0, s, 0.5), batched_nms(b * 2.0, s, c, 0.5)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    for got, expected in zip(compiled(boxes, scores, class_ids), f(boxes, scores, class_ids)):
        assert torch.equal(got, expected)


# --- CUDA kernels against the CPU kernels ------------------------------------------------------


@pytest.mark.extension
@pytest.mark.cuda
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 20000])
@pytest.mark.parametrize("num_classes", [1, 80])
def test_cuda_matches_cpu(n, num_classes):
    boxes, scores = random_boxes(n), distinct_scores(n)
    class_ids = torch.randint(0, num_classes, (n,))
    for threshold in (0.0, 0.5, 1.0):
        expected = nms(boxes, scores, threshold)
        assert torch.equal(nms(boxes.cuda(), scores.cuda(), threshold).cpu(), expected)
        expected = batched_nms(boxes, scores, class_ids, threshold)
        got = batched_nms(boxes.cuda(), scores.cuda(), class_ids.cuda(), threshold)
        assert torch.equal(got.cpu(), expected)


@pytest.mark.extension
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_cuda_matches_cpu_other_dtypes(dtype):
    boxes, scores = random_boxes(3000, dtype=dtype), distinct_scores(3000)
    class_ids = torch.randint(0, 7, (3000,))
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), nms(boxes, scores, 0.5))
    assert torch.equal(
        batched_nms(boxes.cuda(), scores.cuda(), class_ids.cuda(), 0.5).cpu(),
        batched_nms(boxes, scores, class_ids, 0.5),
    )


@pytest.mark.extension
@pytest.mark.cuda
def test_cuda_matches_torchvision_and_checks_devices():
    boxes, scores = random_boxes(5000, device="cuda"), distinct_scores(5000, "cuda")
    class_ids = torch.randint(0, 80, (5000,), device="cuda")
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(
        batched_nms(boxes, scores, class_ids, 0.5),
        torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5),
    )
    with pytest.raises(RuntimeError, match="scores must be on the device of boxes"):
        nms(boxes, scores.cpu(), 0.5)
    torch.library.opcheck(torch.ops.drdet.batched_nms, (boxes, scores, class_ids, 0.5))
