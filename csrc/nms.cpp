// Schemas of nms and batched_nms, their argument checks, and the device-generic steps both
// backends share (sorting before the greedy pass, gathering the kept indices after it).
// Kernels: cpu/nms_cpu.cpp, cuda/nms_cuda.cu. Fake (meta) kernels: drdet/layers/nms.py.
#include "nms.h"

#include <cmath>

#include <torch/library.h>

namespace drdet {

void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                    const at::Tensor& class_ids, double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": boxes must be (N, 4) as (x1, y1, x2, y2), got shape ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
              ": scores must be (N,) with N = boxes.size(0) = ", boxes.size(0), ", got shape ",
              scores.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op,
              ": boxes must be a floating-point tensor, got ", boxes.scalar_type());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), op,
              ": scores must be a floating-point tensor, got ", scores.scalar_type());
  TORCH_CHECK(scores.device() == boxes.device(), op, ": scores must be on the device of boxes (",
              boxes.device(), "), got ", scores.device());
  if (class_ids.defined()) {
    TORCH_CHECK(class_ids.dim() == 1 && class_ids.size(0) == boxes.size(0), op,
                ": class_ids must be (N,) with N = boxes.size(0) = ", boxes.size(0),
                ", got shape ", class_ids.sizes());
    TORCH_CHECK(at::isIntegralType(class_ids.scalar_type(), /*includeBool=*/false), op,
                ": class_ids must be an integer tensor, got ", class_ids.scalar_type());
    TORCH_CHECK(class_ids.device() == boxes.device(), op,
                ": class_ids must be on the device of boxes (", boxes.device(), "), got ",
                class_ids.device());
  }
  TORCH_CHECK(std::isfinite(iou_threshold), op, ": iou_threshold must be finite, got ",
              iou_threshold);
}

SortedBoxes sort_boxes(const at::Tensor& boxes, const at::Tensor& scores,
                       const at::Tensor& class_ids) {
  SortedBoxes sorted;
  sorted.order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  if (class_ids.defined()) {
    // A stable sort by class keeps the score order inside each class: every class becomes one
    // contiguous segment that greedy NMS can process on its own.
    auto [classes, by_class] =
        class_ids.index_select(0, sorted.order).to(at::kLong).sort(/*stable=*/true, 0, false);
    sorted.order = sorted.order.index_select(0, by_class);
    sorted.classes = classes;
  }
  const auto compute_dtype = boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  sorted.coords = boxes.index_select(0, sorted.order).to(compute_dtype).t().contiguous();
  return sorted;
}

at::Tensor kept_indices(const SortedBoxes& sorted, const at::Tensor& keep,
                        const at::Tensor& scores) {
  at::Tensor kept = sorted.order.masked_select(keep);
  if (sorted.classes.defined()) {
    // Back from class-grouped to global decreasing score order.
    const at::Tensor by_score =
        std::get<1>(scores.index_select(0, kept).sort(/*stable=*/true, 0, /*descending=*/true));
    kept = kept.index_select(0, by_score);
  }
  return kept;
}

}  // namespace drdet

TORCH_LIBRARY_FRAGMENT(drdet, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def(
      "batched_nms(Tensor boxes, Tensor scores, Tensor class_ids, float iou_threshold) -> Tensor");
}
