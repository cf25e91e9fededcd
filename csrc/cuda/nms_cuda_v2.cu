// CUDA kernels of nms and batched_nms, version 2 (DRDET_CUDA_KERNELS=v2, see kernel_version.h).
// They compile in CI but have NOT YET RUN ON A GPU: version 1 (nms_cuda.cu) stays the default
// until `make test-gpu` has passed with these.
//
// After sort_boxes (nms.cpp) the boxes lie in visiting order, grouped by class for batched_nms:
// each class is one contiguous segment (plain nms: one segment). The suppression mask is made per
// segment, so its memory grows with the boxes of each class (sum over classes of n_c^2 / 8
// bytes), not with all boxes squared, and there is no limit on the number of boxes below what
// the GPU's memory allows.
// 1. The segments' bounds come to the host (one synchronisation), which lays out per segment its
//    mask (n_c rows x t_c = ceil(n_c / 64) words) and its range of mask blocks.
// 2. mask_kernel: one block per (segment, row tile, column tile >= row tile) of 64 x 64 boxes;
//    thread r sets bit k of word [i][col_tile] when box k of the column tile comes after box i
//    (row r) and has IoU > threshold with it (nms.h's iou_exceeds, shared with the CPU).
// 3. reduce_kernel: one block per segment walks its tiles in order. Per tile: the tile's
//    diagonal words go to shared memory and every thread derives the tile's kept boxes from
//    them (no global load on the sequential path); then each thread ORs the kept rows' words
//    into the words of the "removed" bitmask it owns (shared memory, or global scratch for a
//    segment above 385,024 boxes).
// 4. kept_indices (nms.cpp) turns the keep flags into original indices in score order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cuda/nms_cuda_v2.h"
#include "nms.h"

namespace drdet {
namespace {

constexpr int kTile = 64;  // boxes per tile = bits per mask word
constexpr int kReduceThreads = 128;
// "removed" words kept in shared memory (with `diagonal`, within the default 48 KiB): segments
// of up to 6016 * 64 = 385,024 boxes; larger ones use global scratch.
constexpr int64_t kMaxSharedWords = 47 * 1024 / 8;

using MaskWord = unsigned long long;

// The segments' layout (device arrays of num_segments entries; block_begin has one more).
struct Segments {
  const int64_t* start;        // first sorted position
  const int64_t* size;         // number of boxes n_c
  const int64_t* mask_begin;   // first mask word; the mask is n_c x tiles(n_c) words
  const int64_t* block_begin;  // first mask block; a segment has tiles(n_c)^2 blocks
  const int64_t* scratch_begin;  // first word of its global "removed" scratch
  int64_t count;
};

__device__ __forceinline__ int64_t num_tiles(int64_t size) { return (size + kTile - 1) / kTile; }

// The segment whose blocks contain block b: the last s with block_begin[s] <= b.
__device__ __forceinline__ int64_t find_segment(const Segments& seg, int64_t b) {
  int64_t lo = 0, hi = seg.count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (seg.block_begin[mid] <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename T>
__global__ void area_kernel(int64_t n, const T* __restrict__ coords, T* __restrict__ area) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    area[i] = nms_math::area(coords[i], coords[n + i], coords[2 * n + i], coords[3 * n + i]);
  }
}

// coords: (4, n) rows x1, y1, x2, y2 of all sorted boxes; area: (n,).
template <typename T>
__global__ void mask_kernel(Segments seg, int64_t n, const T* __restrict__ coords,
                            const T* __restrict__ area, T threshold,
                            MaskWord* __restrict__ mask) {
  const int64_t b = blockIdx.x;
  const int64_t s = find_segment(seg, b);
  const int64_t size = seg.size[s];
  const int64_t tiles = num_tiles(size);
  const int64_t k_block = b - seg.block_begin[s];
  const int64_t row_tile = k_block / tiles, col_tile = k_block % tiles;
  if (col_tile < row_tile) return;  // the whole block leaves together
  const int64_t first = seg.start[s];
  const int64_t row_start = row_tile * kTile, col_start = col_tile * kTile;
  const int row_size = static_cast<int>(nms_math::min<int64_t>(kTile, size - row_start));
  const int col_size = static_cast<int>(nms_math::min<int64_t>(kTile, size - col_start));
  const int r = threadIdx.x;

  __shared__ T col_box[5][kTile];
  if (r < col_size) {
    const int64_t j = first + col_start + r;
    col_box[0][r] = coords[j];
    col_box[1][r] = coords[n + j];
    col_box[2][r] = coords[2 * n + j];
    col_box[3][r] = coords[3 * n + j];
    col_box[4][r] = area[j];
  }
  __syncthreads();
  if (r >= row_size) return;
  const int64_t i = first + row_start + r;
  const T ax1 = coords[i], ay1 = coords[n + i], ax2 = coords[2 * n + i], ay2 = coords[3 * n + i];
  const T a_area = area[i];
  MaskWord bits = 0;
  for (int k = row_tile == col_tile ? r + 1 : 0; k < col_size; ++k) {
    const bool hit = nms_math::iou_exceeds(ax1, ay1, ax2, ay2, a_area, col_box[0][k],
                                           col_box[1][k], col_box[2][k], col_box[3][k],
                                           col_box[4][k], threshold);
    bits |= static_cast<MaskWord>(hit) << k;
  }
  mask[seg.mask_begin[s] + (row_start + r) * tiles + col_tile] = bits;
}

// One block per segment. keep: (n,) bool, written for every position of the segment.
__global__ void __launch_bounds__(kReduceThreads)
    reduce_kernel(Segments seg, const MaskWord* __restrict__ all_masks,
                  MaskWord* __restrict__ scratch, bool* __restrict__ keep) {
  extern __shared__ MaskWord shared_removed[];
  __shared__ MaskWord diagonal[kTile];
  const int64_t s = blockIdx.x;
  const int64_t size = seg.size[s], tiles = num_tiles(size), first = seg.start[s];
  const MaskWord* mask = all_masks + seg.mask_begin[s];
  MaskWord* removed =
      tiles <= kMaxSharedWords ? shared_removed : scratch + seg.scratch_begin[s];
  for (int64_t w = threadIdx.x; w < tiles; w += kReduceThreads) removed[w] = 0;
  __syncthreads();
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int tile_size = static_cast<int>(nms_math::min<int64_t>(kTile, size - tile * kTile));
    if (threadIdx.x < tile_size) {
      diagonal[threadIdx.x] = mask[(tile * kTile + threadIdx.x) * tiles + tile];
    }
    __syncthreads();
    // Every thread walks the tile (shared-memory reads only) and gets the same kept bits.
    MaskWord current = removed[tile], kept = 0;
    for (int k = 0; k < tile_size; ++k) {
      if (!((current >> k) & 1ULL)) {
        kept |= 1ULL << k;
        current |= diagonal[k];
      }
    }
    if (threadIdx.x < tile_size) {
      keep[first + tile * kTile + threadIdx.x] = (kept >> threadIdx.x) & 1ULL;
    }
    // The later words: thread t owns w = tile + 1 + t + m * kReduceThreads for this tile.
    for (int64_t w = tile + 1 + threadIdx.x; w < tiles; w += kReduceThreads) {
      const MaskWord* column = mask + tile * kTile * tiles + w;
      MaskWord bits = 0;
#pragma unroll 8
      for (int k = 0; k < kTile; ++k) {
        if ((kept >> k) & 1ULL) bits |= column[k * tiles];
      }
      removed[w] |= bits;
    }
    __syncthreads();  // removed[tile + 1] is complete; diagonal may be overwritten
  }
}

// The segments of `sorted` on the host: for batched_nms the runs of equal class ids (one
// synchronisation), else one run of all n boxes.
std::vector<int64_t> segment_sizes(const SortedBoxes& sorted, int64_t n) {
  if (!sorted.classes.defined()) return {n};
  const at::Tensor counts = std::get<2>(at::unique_consecutive(
      sorted.classes, /*return_inverse=*/false, /*return_counts=*/true)).to(at::kCPU, at::kLong);
  const int64_t* c = counts.const_data_ptr<int64_t>();
  return std::vector<int64_t>(c, c + counts.numel());
}

}  // namespace

at::Tensor nms_cuda_v2(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                       const at::Tensor& class_ids, double iou_threshold) {
  check_nms_args(op, boxes, scores, class_ids, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const SortedBoxes sorted = sort_boxes(boxes, scores, class_ids);
  const std::vector<int64_t> sizes = segment_sizes(sorted, n);
  const auto num_segments = static_cast<int64_t>(sizes.size());

  // Host layout: rows start, size, mask_begin, block_begin (num_segments + 1), scratch_begin.
  std::vector<int64_t> layout(5 * num_segments + 1);
  int64_t* start = layout.data();
  int64_t* size = start + num_segments;
  int64_t* mask_begin = size + num_segments;
  int64_t* block_begin = mask_begin + num_segments;  // num_segments + 1 entries
  int64_t* scratch_begin = block_begin + num_segments + 1;
  int64_t position = 0, words = 0, blocks = 0, scratch_words = 0, max_tiles = 0;
  for (int64_t s = 0; s < num_segments; ++s) {
    const int64_t tiles = (sizes[s] + kTile - 1) / kTile;
    start[s] = position;
    size[s] = sizes[s];
    mask_begin[s] = words;
    block_begin[s] = blocks;
    scratch_begin[s] = scratch_words;
    position += sizes[s];
    words += sizes[s] * tiles;
    blocks += tiles * tiles;
    scratch_words += tiles > kMaxSharedWords ? tiles : 0;
    max_tiles = std::max(max_tiles, tiles);
  }
  block_begin[num_segments] = blocks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": ", n,
              " boxes need more mask blocks than a CUDA grid holds (", blocks,
              "); the largest class has ", max_tiles * kTile, " boxes at most");
  const at::Tensor layout_dev =
      at::from_blob(layout.data(), {int64_t(layout.size())}, at::kLong).to(boxes.device());
  const int64_t* dev = layout_dev.const_data_ptr<int64_t>();
  const Segments seg{dev, dev + num_segments, dev + 2 * num_segments, dev + 3 * num_segments,
                     dev + 4 * num_segments + 1, num_segments};

  at::Tensor mask = at::empty({words}, boxes.options().dtype(at::kLong));
  at::Tensor scratch = at::empty({std::max<int64_t>(scratch_words, 1)},
                                 boxes.options().dtype(at::kLong));
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kBool));
  auto* mask_p = reinterpret_cast<MaskWord*>(mask.mutable_data_ptr<int64_t>());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sorted.coords.scalar_type(), "nms_cuda_v2", [&] {
    at::Tensor area = at::empty({n}, sorted.coords.options());
    const scalar_t* coords = sorted.coords.const_data_ptr<scalar_t>();
    area_kernel<scalar_t><<<(n + 255) / 256, 256, 0, stream>>>(
        n, coords, area.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    mask_kernel<scalar_t><<<static_cast<unsigned>(blocks), kTile, 0, stream>>>(
        seg, n, coords, area.const_data_ptr<scalar_t>(), static_cast<scalar_t>(iou_threshold),
        mask_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t shared_words = std::min(max_tiles, kMaxSharedWords);
  reduce_kernel<<<static_cast<unsigned>(num_segments), kReduceThreads,
                  shared_words * sizeof(MaskWord), stream>>>(
      seg, mask_p, reinterpret_cast<MaskWord*>(scratch.mutable_data_ptr<int64_t>()),
      keep.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return kept_indices(sorted, keep, scores);
}

}  // namespace drdet
