// Non-maximum suppression: nms (class-agnostic) and batched_nms (class-aware).
//
// Boxes are continuous (x1, y1, x2, y2), area = (x2 - x1) * (y2 - y1), no "+1". Greedy rule, as in
// torchvision: visit boxes in decreasing score; a box is kept unless a kept higher-scoring box
// (of the same class, for batched_nms) has IoU > iou_threshold with it. IoU is
// inter / (area_a + area_b - inter) in floating point, so two zero-area boxes give 0 / 0 = NaN,
// which is not > threshold: they do not suppress each other (torchvision does the same).
//
// Both backends share the preparation in nms.cpp: sort by score (stable, descending), and for
// batched_nms group the boxes by class keeping the score order inside each class; greedy NMS then
// runs on each class's contiguous segment independently. The IoU test below is the arithmetic
// of both the CPU and the CUDA kernel.
#pragma once

#include <ATen/ATen.h>

#include "macros.h"

namespace drdet {

namespace nms_math {

// a * b rounded once: never fused by nvcc into an FMA with a following add, so that the CUDA
// kernel rounds exactly as the CPU kernel (and torchvision's CPU kernel) do.
DRDET_HOST_DEVICE float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

DRDET_HOST_DEVICE double mul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
DRDET_HOST_DEVICE T max(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
DRDET_HOST_DEVICE T min(T a, T b) {
  return a < b ? a : b;
}

template <typename T>
DRDET_HOST_DEVICE T area(T x1, T y1, T x2, T y2) {
  return mul(x2 - x1, y2 - y1);
}

// Whether box b is suppressed by box a: IoU(a, b) > threshold. Branch-free (selects only) so the
// CPU compiler vectorises a loop over b.
template <typename T>
DRDET_HOST_DEVICE bool iou_exceeds(T ax1, T ay1, T ax2, T ay2, T a_area, T bx1, T by1, T bx2,
                                   T by2, T b_area, T threshold) {
  const T w = max(min(ax2, bx2) - max(ax1, bx1), T(0));
  const T h = max(min(ay2, by2) - max(ay1, by1), T(0));
  const T inter = mul(w, h);
  return inter / (a_area + b_area - inter) > threshold;
}

}  // namespace nms_math

// Boxes in the order in which greedy NMS visits them (see the file comment).
struct SortedBoxes {
  at::Tensor order;    // (N,) int64: original index of the box at each sorted position
  at::Tensor coords;   // (4, N) float32 (float64 for float64 boxes): rows x1, y1, x2, y2
  at::Tensor classes;  // (N,) int64 class id per sorted position; undefined for plain nms
};

// Checks the arguments (shapes, dtypes, devices, threshold) and raises a c10::Error naming the
// argument. class_ids is undefined for plain nms. `op` names the op in messages.
void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                    const at::Tensor& class_ids, double iou_threshold);

// Sorts (and, with class_ids, groups by class) on the device of the inputs.
SortedBoxes sort_boxes(const at::Tensor& boxes, const at::Tensor& scores,
                       const at::Tensor& class_ids);

// Original indices of the kept boxes in decreasing score order, from the per-position keep
// flags (N,) bool that a kernel computed on `sorted`.
at::Tensor kept_indices(const SortedBoxes& sorted, const at::Tensor& keep,
                        const at::Tensor& scores);

}  // namespace drdet
