// CPU kernels of nms and batched_nms.
//
// After sort_boxes (nms.cpp) the boxes lie in visiting order as a structure of arrays
// (x1[], y1[], x2[], y2[]); areas are computed once. Greedy NMS then walks each segment (the whole
// input for nms, one class for batched_nms): a kept box marks every later box of its segment whose
// IoU exceeds the threshold, in a branch-free loop over contiguous arrays that the compiler
// vectorises. Segments are independent and run in parallel (at::parallel_for).
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "nms.h"

namespace drdet {
namespace {

// Below this many box pairs (summed over the segments) the greedy passes take about a
// millisecond, less than waking the worker threads costs: run them on the calling thread.
constexpr int64_t kMinPairsForThreads = int64_t{1} << 20;

template <typename T>
struct BoxArrays {
  const T* x1;
  const T* y1;
  const T* x2;
  const T* y2;
  const T* area;
};

// Greedy NMS over sorted positions [begin, end): sets keep[i] for the kept ones. `removed` is
// scratch of the same positions, zero on entry.
template <typename T>
void greedy_nms(const BoxArrays<T>& b, int64_t begin, int64_t end, T threshold,
                int32_t* __restrict__ removed, bool* __restrict__ keep) {
  const T* __restrict__ x1 = b.x1;
  const T* __restrict__ y1 = b.y1;
  const T* __restrict__ x2 = b.x2;
  const T* __restrict__ y2 = b.y2;
  const T* __restrict__ area = b.area;
  for (int64_t i = begin; i < end; ++i) {
    if (removed[i]) {
      continue;
    }
    keep[i] = true;
    const T ax1 = x1[i], ay1 = y1[i], ax2 = x2[i], ay2 = y2[i], a_area = area[i];
    for (int64_t j = i + 1; j < end; ++j) {
      removed[j] |= static_cast<int32_t>(nms_math::iou_exceeds(
          ax1, ay1, ax2, ay2, a_area, x1[j], y1[j], x2[j], y2[j], area[j], threshold));
    }
  }
}

// Start positions of the segments, plus `num_boxes` at the end: one segment for plain nms, one
// per class (runs of equal sorted class ids) for batched_nms.
std::vector<int64_t> segment_bounds(const SortedBoxes& sorted, int64_t num_boxes) {
  std::vector<int64_t> bounds{0};
  if (sorted.classes.defined()) {
    const int64_t* cls = sorted.classes.const_data_ptr<int64_t>();
    for (int64_t i = 1; i < num_boxes; ++i) {
      if (cls[i] != cls[i - 1]) {
        bounds.push_back(i);
      }
    }
  }
  bounds.push_back(num_boxes);
  return bounds;
}

at::Tensor nms_cpu_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                        const at::Tensor& class_ids, double iou_threshold) {
  check_nms_args(op, boxes, scores, class_ids, iou_threshold);
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const SortedBoxes sorted = sort_boxes(boxes, scores, class_ids);
  const std::vector<int64_t> bounds = segment_bounds(sorted, n);
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  std::vector<int32_t> removed(n, 0);
  AT_DISPATCH_FLOATING_TYPES(sorted.coords.scalar_type(), "nms_cpu", [&] {
    const scalar_t* c = sorted.coords.const_data_ptr<scalar_t>();
    std::vector<scalar_t> area(n);
    for (int64_t i = 0; i < n; ++i) {
      area[i] = nms_math::area(c[i], c[n + i], c[2 * n + i], c[3 * n + i]);
    }
    const BoxArrays<scalar_t> arrays{c, c + n, c + 2 * n, c + 3 * n, area.data()};
    const auto threshold = static_cast<scalar_t>(iou_threshold);
    bool* keep_ptr = keep.mutable_data_ptr<bool>();
    const auto num_segments = static_cast<int64_t>(bounds.size()) - 1;
    int64_t pairs = 0;
    for (int64_t s = 0; s < num_segments; ++s) {
      const int64_t size = bounds[s + 1] - bounds[s];
      pairs += size * (size - 1) / 2;
    }
    const int64_t grain = pairs < kMinPairsForThreads ? num_segments : 1;
    at::parallel_for(0, num_segments, grain, [&](int64_t first, int64_t last) {
      for (int64_t s = first; s < last; ++s) {
        greedy_nms(arrays, bounds[s], bounds[s + 1], threshold, removed.data(), keep_ptr);
      }
    });
  });
  return kept_indices(sorted, keep, scores);
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cpu_impl("nms", boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& class_ids, double iou_threshold) {
  return nms_cpu_impl("batched_nms", boxes, scores, class_ids, iou_threshold);
}

}  // namespace
}  // namespace drdet

TORCH_LIBRARY_IMPL(drdet, CPU, m) {
  m.impl("nms", &drdet::nms_cpu);
  m.impl("batched_nms", &drdet::batched_nms_cpu);
}
