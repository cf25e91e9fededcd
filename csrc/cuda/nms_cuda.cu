// CUDA kernels of nms and batched_nms: the bitmask scheme.
//
// After sort_boxes (nms.cpp) the boxes lie in visiting order, grouped by class for batched_nms.
// 1. mask_kernel: one CUDA block per (row tile, column tile) of 64 x 64 sorted positions, column
//    tile >= row tile; thread r of the block sets bit k of mask[i][col_tile] when box j (column k)
//    comes after box i (row r), is of the same class, and has IoU > threshold with it. For
//    batched_nms, tiles whose class ranges do not overlap are all zero and skip the IoU work.
// 2. reduce_kernel: one block walks the positions in order, keeping a "removed" bitmask in
//    shared memory; each kept position ORs its mask row into it. The block syncs once per tile of
//    64 positions: within a tile, each thread owns the same words of the bitmask throughout.
// 3. kept_indices (nms.cpp) turns the keep flags into original indices in score order.
// The mask spans all boxes and the reduction's bitmask lives in shared memory: at most 393,216
// boxes. DRDET_CUDA_KERNELS=v2 routes both ops to version 2 (nms_cuda_v2.cu: per-class masks,
// no such limit; not yet run on a GPU).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/kernel_version.h"
#include "cuda/nms_cuda_v2.h"
#include "nms.h"

namespace drdet {
namespace {

constexpr int kTile = 64;  // positions per tile = bits per mask word
constexpr int kReduceThreads = 256;
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // the default dynamic shared memory limit

using MaskWord = unsigned long long;

// coords: (4, n) rows x1, y1, x2, y2; area: (n,); classes: (n,) sorted, or nullptr for plain nms.
// mask: (n, num_tiles); only words with column tile >= row tile are written (and read).
template <typename T>
__global__ void mask_kernel(int64_t n, const T* __restrict__ coords, const T* __restrict__ area,
                            const int64_t* __restrict__ classes, T threshold,
                            MaskWord* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y;
  const int64_t col_tile = blockIdx.x;
  if (col_tile < row_tile) {
    return;
  }
  const int64_t num_tiles = gridDim.x;
  const int64_t row_start = row_tile * kTile;
  const int64_t col_start = col_tile * kTile;
  const int row_size = static_cast<int>(nms_math::min<int64_t>(kTile, n - row_start));
  const int col_size = static_cast<int>(nms_math::min<int64_t>(kTile, n - col_start));
  const int r = threadIdx.x;

  // Classes are sorted: if the row tile's last class precedes the column tile's first, no pair
  // of the two tiles shares a class.
  const bool disjoint_classes =
      classes != nullptr && classes[row_start + row_size - 1] < classes[col_start];

  __shared__ T col_box[5][kTile];
  __shared__ int64_t col_class[kTile];
  if (!disjoint_classes && r < col_size) {
    const int64_t j = col_start + r;
    col_box[0][r] = coords[j];
    col_box[1][r] = coords[n + j];
    col_box[2][r] = coords[2 * n + j];
    col_box[3][r] = coords[3 * n + j];
    col_box[4][r] = area[j];
    col_class[r] = classes != nullptr ? classes[j] : 0;
  }
  __syncthreads();
  if (r >= row_size) {
    return;
  }
  const int64_t i = row_start + r;
  MaskWord bits = 0;
  if (!disjoint_classes) {
    const T ax1 = coords[i], ay1 = coords[n + i], ax2 = coords[2 * n + i],
            ay2 = coords[3 * n + i], a_area = area[i];
    const int64_t a_class = classes != nullptr ? classes[i] : 0;
    const int first = row_tile == col_tile ? r + 1 : 0;
    for (int k = first; k < col_size; ++k) {
      const bool hit =
          col_class[k] == a_class &&
          nms_math::iou_exceeds(ax1, ay1, ax2, ay2, a_area, col_box[0][k], col_box[1][k],
                                col_box[2][k], col_box[3][k], col_box[4][k], threshold);
      bits |= static_cast<MaskWord>(hit) << k;
    }
  }
  mask[i * num_tiles + col_tile] = bits;
}

template <typename T>
__global__ void area_kernel(int64_t n, const T* __restrict__ coords, T* __restrict__ area) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    area[i] = nms_math::area(coords[i], coords[n + i], coords[2 * n + i], coords[3 * n + i]);
  }
}

// One block. keep: (n,) bool, written for every position.
__global__ void reduce_kernel(int64_t n, int64_t num_tiles, const MaskWord* __restrict__ mask,
                              bool* __restrict__ keep) {
  extern __shared__ MaskWord removed[];
  for (int64_t w = threadIdx.x; w < num_tiles; w += blockDim.x) {
    removed[w] = 0;
  }
  __syncthreads();
  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    // Every thread tracks the current tile's word in a register; the later words are shared,
    // each written by the same thread (w = tile + 1 + threadIdx.x + m * blockDim.x) all tile long.
    MaskWord current = removed[tile];
    const int size = static_cast<int>(nms_math::min<int64_t>(kTile, n - tile * kTile));
    for (int k = 0; k < size; ++k) {
      const int64_t i = tile * kTile + k;
      const bool kept = !((current >> k) & 1ULL);
      if (threadIdx.x == 0) {
        keep[i] = kept;
      }
      if (kept) {
        const MaskWord* row = mask + i * num_tiles;
        current |= row[tile];
        for (int64_t w = tile + 1 + threadIdx.x; w < num_tiles; w += blockDim.x) {
          removed[w] |= row[w];
        }
      }
    }
    __syncthreads();
  }
}

at::Tensor nms_cuda_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                         const at::Tensor& class_ids, double iou_threshold) {
  if (cuda_kernel_version() == 2) {
    return nms_cuda_v2(op, boxes, scores, class_ids, iou_threshold);
  }
  check_nms_args(op, boxes, scores, class_ids, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const int64_t num_tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK(num_tiles * static_cast<int64_t>(sizeof(MaskWord)) <= kMaxSharedBytes, op,
              " on CUDA supports at most ", kMaxSharedBytes / sizeof(MaskWord) * kTile,
              " boxes, got ", n, "; filter the boxes (e.g. by a score threshold) first");
  TORCH_CHECK(num_tiles <= 65535, op, ": too many boxes for the CUDA grid: ", n);

  const SortedBoxes sorted = sort_boxes(boxes, scores, class_ids);
  at::Tensor mask = at::empty({n * num_tiles}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kBool));
  const int64_t* classes =
      sorted.classes.defined() ? sorted.classes.const_data_ptr<int64_t>() : nullptr;
  auto* mask_ptr = reinterpret_cast<MaskWord*>(mask.mutable_data_ptr<int64_t>());
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(sorted.coords.scalar_type(), "nms_cuda", [&] {
    at::Tensor area = at::empty({n}, sorted.coords.options());
    const scalar_t* coords = sorted.coords.const_data_ptr<scalar_t>();
    area_kernel<scalar_t><<<(n + 255) / 256, 256, 0, stream>>>(
        n, coords, area.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(num_tiles, num_tiles);
    mask_kernel<scalar_t><<<grid, kTile, 0, stream>>>(
        n, coords, area.const_data_ptr<scalar_t>(), classes,
        static_cast<scalar_t>(iou_threshold), mask_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  reduce_kernel<<<1, kReduceThreads, num_tiles * sizeof(MaskWord), stream>>>(
      n, num_tiles, mask_ptr, keep.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return kept_indices(sorted, keep, scores);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_impl("nms", boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& class_ids, double iou_threshold) {
  return nms_cuda_impl("batched_nms", boxes, scores, class_ids, iou_threshold);
}

}  // namespace
}  // namespace drdet

TORCH_LIBRARY_IMPL(drdet, CUDA, m) {
  m.impl("nms", &drdet::nms_cuda);
  m.impl("batched_nms", &drdet::batched_nms_cuda);
}
