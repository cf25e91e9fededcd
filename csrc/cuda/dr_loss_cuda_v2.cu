// CUDA kernels of the DR loss, version 2 (DRDET_CUDA_KERNELS=v2, see kernel_version.h). They
// compile in CI but have NOT YET RUN ON A GPU: version 1 (dr_loss_cuda.cu) stays the default
// until `make test-gpu` has passed with these.
//
// Forward: every step spreads over the whole GPU whatever the number of groups G, and the
// result is deterministic (a fixed partition of the rows, a fixed merge order, no atomics).
//   1. row_stats: `lanes` threads per row (a power of two chosen from C) with 16-byte loads
//      write each row's negative softmax statistic (shift, sum w, sum w p) and its positive
//      score p_y to an (N, 4) workspace in the accumulation type. With 1 / lambda- <= 64 the
//      shift is the fixed 1 (as on the CPU), so one pass over the row suffices.
//   2. chunk_reduce: the rows are cut into chunks whose size depends on N and G only; one block
//      per chunk merges the chunk's rows of each group id present in it into a per-(chunk,
//      group) partial in double (counts included: exact to 2^53 rows). Group ids may be
//      unsorted, int32 or int64.
//   3. merge_chunks: one block per group merges its partials in chunk order (cub::BlockReduce
//      with a fixed thread count). For pairing "negonly", steps 2-3 run again to sum l and l'
//      over the positives given the group's P-.
//   4. finalize (one thread per group) fills the statistics; finish (one thread) averages.
// Backward: a (G,) table of GroupGrad, then one element-wise pass with the row layout of 1.
// The per-element math is dr_loss.h's, shared with (and tested through) the CPU kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda/dr_loss_cuda_v2.h"
#include "dr_loss.h"

namespace drdet {
namespace dr_loss {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int64_t kMinChunkRows = 512;
// Upper bound of num_chunks x G partials (64 bytes each): the chunk size grows with G instead.
constexpr int64_t kMaxPartials = int64_t(1) << 16;
// Softmax shift: as on the CPU (cpu/dr_loss_cpu.cpp), scores p lie in [0, 1], so for
// 1 / lambda <= 64 the fixed shift 1 keeps every weight in [exp(-64), 1].
constexpr double kMaxFixedShiftInv = 64.0;
constexpr int64_t kNoGroup = std::numeric_limits<int64_t>::max();

// An (N,) int32 or int64 id tensor read as int64; data == nullptr reads 0 everywhere (no group
// ids: every row is in group 0).
struct IdView {
  const void* data;
  bool wide;
  __device__ __forceinline__ int64_t operator[](int64_t i) const {
    if (data == nullptr) return 0;
    return wide ? static_cast<const int64_t*>(data)[i]
                : static_cast<int64_t>(static_cast<const int32_t*>(data)[i]);
  }
};

IdView id_view(const at::Tensor& ids) {
  if (!ids.defined()) return {nullptr, true};
  return {ids.const_data_ptr(), ids.scalar_type() == at::kLong};
}

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Sum and max over the `lanes` consecutive threads of a row (lanes: a power of two <= 32).
// Every thread of the warp must call them.
template <typename T>
__device__ __forceinline__ T lanes_sum(T v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset, lanes);
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T lanes_max(T v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset, lanes);
    v = other > v ? other : v;
  }
  return v;
}

// Where a thread works: rows are taken `rows_per_warp` at a time by each warp, `lanes`
// threads per row; the loop over rows is warp-uniform (the shuffles need every lane).
struct RowLayout {
  int lanes;
  int sub;   // the thread's row within its warp's group of rows
  int lane;  // the thread's lane within its row
  int64_t first_row;
  int64_t row_step;

  __device__ static RowLayout make(int lanes) {
    RowLayout l;
    l.lanes = lanes;
    const int rows_per_warp = kWarp / lanes;
    const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
    const int64_t num_warps = int64_t(gridDim.x) * blockDim.x / kWarp;
    l.sub = (threadIdx.x % kWarp) / lanes;
    l.lane = threadIdx.x % lanes;
    l.first_row = warp * rows_per_warp;
    l.row_step = num_warps * rows_per_warp;
    return l;
  }
};

// Step 1. ws[r] = (shift, sum w, sum w p, p_y) of row r over its negative columns, with
// w = exp((p - shift) * inv_neg); (-inf, 0, 0, .) for a row without negative column. Ignored
// rows are not written.
template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    row_stats_kernel(const scalar_t* __restrict__ logits, IdView labels, int64_t N, int64_t C,
                     int lanes, acc_t inv_neg, bool fixed_shift, acc_t* __restrict__ ws) {
  const RowLayout lay = RowLayout::make(lanes);
  const int64_t num_vecs = C / kVec;
  for (int64_t base = lay.first_row; base < N; base += lay.row_step) {
    const int64_t r = base + lay.sub;
    const int64_t y = r < N ? labels[r] : -1;
    const int64_t skip = y - 1;  // the positive column (-1: none)
    const auto* row = reinterpret_cast<const Pack<scalar_t, kVec>*>(logits + (y >= 0 ? r : 0) * C);
    acc_t shift = acc_t(1);
    if (!fixed_shift) {
      shift = -std::numeric_limits<acc_t>::infinity();
      for (int64_t v = lay.lane; y >= 0 && v < num_vecs; v += lanes) {
        const Pack<scalar_t, kVec> pack = row[v];
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const acc_t p = sigmoid(static_cast<acc_t>(pack.v[k]));
          if (v * kVec + k != skip && p > shift) shift = p;
        }
      }
      shift = lanes_max(shift, lanes);
    }
    acc_t sum_w = 0, sum_wp = 0;
#pragma unroll 4
    for (int64_t v = lay.lane; y >= 0 && v < num_vecs; v += lanes) {
      const Pack<scalar_t, kVec> pack = row[v];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (v * kVec + k == skip) continue;
        const acc_t p = sigmoid(static_cast<acc_t>(pack.v[k]));
        const acc_t w = math_exp((p - shift) * inv_neg);
        sum_w += w;
        sum_wp += w * p;
      }
    }
    sum_w = lanes_sum(sum_w, lanes);
    sum_wp = lanes_sum(sum_wp, lanes);
    if (lay.lane == 0 && y >= 0) {
      acc_t* out = ws + r * 4;
      const scalar_t* x = logits + r * C;
      out[0] = sum_w != acc_t(0) ? shift : -std::numeric_limits<acc_t>::infinity();
      out[1] = sum_w;
      out[2] = sum_wp;
      out[3] = y > 0 ? sigmoid(static_cast<acc_t>(x[skip])) : acc_t(0);
    }
  }
}

// What steps 2-3 reduce for the softmax statistics: every non-ignored row's workspace entry.
template <typename acc_t>
struct AccumOp {
  using Accum = GroupAccum<double>;
  const acc_t* ws;
  IdView labels;
  double inv_neg, inv_pos;

  __device__ Accum empty() const { return empty_accum<double>(); }
  __device__ void add(Accum& acc, int64_t r) const {
    const int64_t y = labels[r];
    if (y < 0) return;
    const acc_t* row = ws + r * 4;
    acc.num_valid += 1.0;
    acc.neg = merge(acc.neg, SoftmaxStat<double>{double(row[0]), double(row[1]), double(row[2])},
                    inv_neg);
    if (y > 0) {
      const double p = double(row[3]);
      acc.num_pos += 1.0;
      acc.pos = merge(acc.pos, SoftmaxStat<double>{-p, 1.0, p}, inv_pos);
    }
  }
  __device__ Accum operator()(const Accum& a, const Accum& b) const {
    return merge(a, b, inv_neg, inv_pos);
  }
};

struct PairSums {
  double l, dl;  // sums over the positives of l(P- - p_j + margin) and l'(...)
};

// What steps 2-3 reduce for pairing "negonly", given the merged statistics of step 3.
template <typename acc_t>
struct PositiveOp {
  using Accum = PairSums;
  const acc_t* ws;
  IdView labels, group_ids;
  const GroupAccum<double>* groups;
  Params prm;

  __device__ Accum empty() const { return {0.0, 0.0}; }
  __device__ void add(Accum& acc, int64_t r) const {
    if (labels[r] <= 0) return;
    const double neg_mean = weighted_mean(groups[group_ids[r]].neg, 0.0);
    const double z = neg_mean - double(ws[r * 4 + 3]) + prm.margin;
    acc.l += smooth_value(z, prm);
    acc.dl += smooth_grad(z, prm);
  }
  __device__ Accum operator()(const Accum& a, const Accum& b) const {
    return {a.l + b.l, a.dl + b.dl};
  }
};

struct MinId {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return b < a ? b : a; }
};

// Step 2: one block per chunk of rows [chunk * chunk_rows, ...). partial[chunk * G + g] is the
// merge of the chunk's rows of group g (empty when it has none), in a fixed order.
template <typename Op>
__global__ void __launch_bounds__(kThreads)
    chunk_reduce_kernel(Op op, IdView group_ids, int64_t N, int64_t chunk_rows, int64_t G,
                        typename Op::Accum* __restrict__ partial) {
  using Accum = typename Op::Accum;
  using AccumReduce = cub::BlockReduce<Accum, kThreads>;
  using IdReduce = cub::BlockReduce<int64_t, kThreads>;
  __shared__ typename AccumReduce::TempStorage accum_temp;
  __shared__ typename IdReduce::TempStorage id_temp;
  __shared__ int64_t next_group;
  const int64_t chunk = blockIdx.x;
  const int64_t begin = chunk * chunk_rows;
  const int64_t end = begin + chunk_rows < N ? begin + chunk_rows : N;
  Accum* out = partial + chunk * G;
  for (int64_t g = threadIdx.x; g < G; g += kThreads) out[g] = op.empty();

  // The groups present in the chunk, in increasing order: each round merges group g's rows and
  // finds the next larger id present.
  int64_t first = kNoGroup;
  for (int64_t r = begin + threadIdx.x; r < end; r += kThreads) {
    const int64_t id = group_ids[r];
    first = id < first ? id : first;
  }
  first = IdReduce(id_temp).Reduce(first, MinId());
  if (threadIdx.x == 0) next_group = first;
  __syncthreads();  // also orders the empty writes above before thread 0's writes below
  int64_t g = next_group;
  while (g != kNoGroup) {
    Accum acc = op.empty();
    int64_t next = kNoGroup;
    for (int64_t r = begin + threadIdx.x; r < end; r += kThreads) {
      const int64_t id = group_ids[r];
      if (id == g) {
        op.add(acc, r);
      } else if (id > g && id < next) {
        next = id;
      }
    }
    acc = AccumReduce(accum_temp).Reduce(acc, op);
    next = IdReduce(id_temp).Reduce(next, MinId());
    if (threadIdx.x == 0) {
      out[g] = acc;
      next_group = next;
    }
    __syncthreads();
    g = next_group;
    __syncthreads();  // every thread has read next_group before thread 0 writes it again
  }
}

// Step 3: one block per group merges partial[c * G + g] over the chunks c, in a fixed order.
template <typename Op>
__global__ void __launch_bounds__(kThreads)
    merge_chunks_kernel(Op op, const typename Op::Accum* __restrict__ partial,
                        int64_t num_chunks, int64_t G, typename Op::Accum* __restrict__ out) {
  using Accum = typename Op::Accum;
  using AccumReduce = cub::BlockReduce<Accum, kThreads>;
  __shared__ typename AccumReduce::TempStorage temp;
  const int64_t g = blockIdx.x;
  Accum acc = op.empty();
  for (int64_t c = threadIdx.x; c < num_chunks; c += kThreads) acc = op(acc, partial[c * G + g]);
  acc = AccumReduce(temp).Reduce(acc, op);
  if (threadIdx.x == 0) out[g] = acc;
}

// Step 4. sums: the "negonly" sums per group, or nullptr.
__global__ void finalize_kernel(const GroupAccum<double>* __restrict__ groups,
                                const PairSums* __restrict__ sums, int64_t G, Params prm,
                                double* __restrict__ stats) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= G) return;
  const PairSums s = sums != nullptr ? sums[g] : PairSums{0.0, 0.0};
  finalize_group(groups[g], s.l, s.dl, prm, stats + g * kNumStats);
}

template <typename scalar_t>
__global__ void finish_kernel(double* stats, int64_t G, scalar_t* loss) {
  *loss = static_cast<scalar_t>(finish_groups(stats, G));
}

// Backward, first step: the per-group factors in the accumulation type; grad_out is the
// incoming gradient as float64 (the CPU converts it the same way).
template <typename acc_t>
__global__ void grad_table_kernel(const double* __restrict__ stats,
                                  const double* __restrict__ grad_out, int64_t G,
                                  GroupGrad<acc_t>* __restrict__ table) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g < G) table[g] = load_group_grad(stats + g * kNumStats, acc_t(*grad_out));
}

template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ logits, IdView labels, IdView group_ids,
                    const GroupGrad<acc_t>* __restrict__ table, int64_t N, int64_t C, int lanes,
                    Params prm, scalar_t* __restrict__ grad) {
  const RowLayout lay = RowLayout::make(lanes);
  const int64_t num_vecs = C / kVec;
  const acc_t inv_neg = acc_t(1.0 / prm.neg_lambda), inv_pos = acc_t(1.0 / prm.pos_lambda);
  for (int64_t base = lay.first_row; base < N; base += lay.row_step) {
    const int64_t r = base + lay.sub;
    if (r >= N) continue;
    const int64_t y = labels[r];
    const auto* row = reinterpret_cast<const Pack<scalar_t, kVec>*>(logits + r * C);
    auto* out = reinterpret_cast<Pack<scalar_t, kVec>*>(grad + r * C);
    if (y < 0) {
      Pack<scalar_t, kVec> zeros;
#pragma unroll
      for (int k = 0; k < kVec; ++k) zeros.v[k] = static_cast<scalar_t>(0.0f);
      for (int64_t v = lay.lane; v < num_vecs; v += lanes) out[v] = zeros;
      continue;
    }
    const GroupGrad<acc_t> gg = table[group_ids[r]];
#pragma unroll 4
    for (int64_t v = lay.lane; v < num_vecs; v += lanes) {
      const Pack<scalar_t, kVec> pack = row[v];
      Pack<scalar_t, kVec> d;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const bool positive = v * kVec + k == y - 1;
        d.v[k] = static_cast<scalar_t>(
            grad_logit(static_cast<acc_t>(pack.v[k]), positive, gg, prm, inv_neg, inv_pos));
      }
      out[v] = d;
    }
  }
}

// Threads per row: the largest power of two <= 32 that leaves each at least 4 loads.
int lanes_per_row(int64_t num_vecs) {
  int lanes = 1;
  while (lanes < kWarp && num_vecs / (2 * lanes) >= 4) lanes *= 2;
  return lanes;
}

// 16 bytes per load when rows are 16-byte aligned, else one element.
template <typename scalar_t>
bool use_packs(const at::Tensor& x) {
  constexpr int64_t kVec = 16 / sizeof(scalar_t);
  return x.size(1) % kVec == 0 &&
         reinterpret_cast<std::uintptr_t>(x.const_data_ptr()) % 16 == 0;
}

// Blocks for a row kernel: enough for every row, at most 16 per SM (the loops stride).
int64_t row_blocks(int64_t N, int lanes) {
  const int64_t rows_per_block = int64_t(kThreads / kWarp) * (kWarp / lanes);
  const int64_t needed = (N + rows_per_block - 1) / rows_per_block;
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return std::max<int64_t>(1, std::min(needed, cap));
}

// Steps 2 and 3 for one Op: groups[g] = the merge of every row of group g.
template <typename Op>
void reduce_by_group(const Op& op, IdView group_ids, int64_t N, int64_t G,
                     const at::TensorOptions& byte_options, typename Op::Accum* groups,
                     cudaStream_t stream) {
  using Accum = typename Op::Accum;
  const int64_t max_chunks = std::max<int64_t>(1, kMaxPartials / G);
  const int64_t chunk_rows = std::max(kMinChunkRows, (N + max_chunks - 1) / max_chunks);
  const int64_t num_chunks = (N + chunk_rows - 1) / chunk_rows;
  at::Tensor partial = at::empty({std::max<int64_t>(num_chunks, 1) * G *
                                  int64_t(sizeof(Accum))}, byte_options);
  auto* partial_p = reinterpret_cast<Accum*>(partial.mutable_data_ptr());
  if (num_chunks > 0) {
    chunk_reduce_kernel<Op><<<num_chunks, kThreads, 0, stream>>>(op, group_ids, N, chunk_rows, G,
                                                                 partial_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  merge_chunks_kernel<Op><<<G, kThreads, 0, stream>>>(op, partial_p, num_chunks, G, groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, int kVec>
void launch_row_stats(const at::Tensor& x, IdView labels, const Params& prm, acc_t* ws,
                      cudaStream_t stream) {
  const int64_t N = x.size(0), C = x.size(1);
  const int lanes = lanes_per_row(C / kVec);
  const double inv_neg = 1.0 / prm.neg_lambda;
  row_stats_kernel<scalar_t, acc_t, kVec><<<row_blocks(N, lanes), kThreads, 0, stream>>>(
      x.const_data_ptr<scalar_t>(), labels, N, C, lanes, acc_t(inv_neg),
      inv_neg <= kMaxFixedShiftInv, ws);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, int kVec>
void launch_backward(const at::Tensor& x, IdView labels, IdView group_ids,
                     const GroupGrad<acc_t>* table, const Params& prm, at::Tensor& grad,
                     cudaStream_t stream) {
  const int64_t N = x.size(0), C = x.size(1);
  const int lanes = lanes_per_row(C / kVec);
  backward_kernel<scalar_t, acc_t, kVec><<<row_blocks(N, lanes), kThreads, 0, stream>>>(
      x.const_data_ptr<scalar_t>(), labels, group_ids, table, N, C, lanes, prm,
      grad.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dr_loss_forward_cuda_v2(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
    int64_t num_groups, double pos_lambda, double neg_lambda, double L, double margin, double tau,
    c10::string_view smoothing, double rho, c10::string_view pairing) {
  const Params prm = check_inputs(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda,
                                  L, margin, tau, smoothing, rho, pairing);
  const int64_t N = logits.size(0), C = logits.size(1), G = num_groups;
  check_values(labels, group_ids, C, G);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor lab = labels.contiguous();
  const at::Tensor gid = group_ids.has_value() ? group_ids->contiguous() : at::Tensor();
  const IdView lab_v = id_view(lab), gid_v = id_view(gid);
  const at::TensorOptions bytes = logits.options().dtype(at::kByte);
  at::Tensor stats = at::empty({G, kNumStats}, logits.options().dtype(at::kDouble));
  at::Tensor loss = at::empty({}, logits.options().dtype(loss_dtype(logits)));
  at::Tensor groups = at::empty({G * int64_t(sizeof(GroupAccum<double>))}, bytes);
  auto* groups_p = reinterpret_cast<GroupAccum<double>*>(groups.mutable_data_ptr());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dr_loss_forward_cuda_v2", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor ws = at::empty({std::max<int64_t>(N, 1), 4},
                              logits.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* ws_p = ws.mutable_data_ptr<acc_t>();
    if (N > 0) {
      if (use_packs<scalar_t>(x)) {
        launch_row_stats<scalar_t, acc_t, 16 / sizeof(scalar_t)>(x, lab_v, prm, ws_p, stream);
      } else {
        launch_row_stats<scalar_t, acc_t, 1>(x, lab_v, prm, ws_p, stream);
      }
    }
    const AccumOp<acc_t> accum_op{ws_p, lab_v, 1.0 / prm.neg_lambda, 1.0 / prm.pos_lambda};
    reduce_by_group(accum_op, gid_v, N, G, bytes, groups_p, stream);
    const PairSums* sums_p = nullptr;
    at::Tensor sums;
    if (prm.pairing == Pairing::kNegOnly) {
      sums = at::empty({G * int64_t(sizeof(PairSums))}, bytes);
      auto* p = reinterpret_cast<PairSums*>(sums.mutable_data_ptr());
      const PositiveOp<acc_t> pos_op{ws_p, lab_v, gid_v, groups_p, prm};
      reduce_by_group(pos_op, gid_v, N, G, bytes, p, stream);
      sums_p = p;
    }
    finalize_kernel<<<(G + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        groups_p, sums_p, G, prm, stats.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // the loss in acc_t: float32 (float64 for float64 logits), as loss_dtype allocated it
    finish_kernel<acc_t><<<1, 1, 0, stream>>>(stats.mutable_data_ptr<double>(), G,
                                              loss.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, stats};
}

at::Tensor dr_loss_backward_cuda_v2(const at::Tensor& grad_loss, const at::Tensor& logits,
                                    const at::Tensor& labels,
                                    const std::optional<at::Tensor>& group_ids,
                                    const at::Tensor& stats, double pos_lambda,
                                    double neg_lambda, double L, double margin, double tau,
                                    c10::string_view smoothing, double rho,
                                    c10::string_view pairing) {
  const Params prm = check_backward_inputs(grad_loss, logits, labels, group_ids, stats,
                                           pos_lambda, neg_lambda, L, margin, tau, smoothing,
                                           rho, pairing);
  const int64_t N = logits.size(0), C = logits.size(1), G = stats.size(0);
  check_values(labels, group_ids, C, G);  // the kernel indexes stats with the group ids
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor lab = labels.contiguous();
  const at::Tensor gid = group_ids.has_value() ? group_ids->contiguous() : at::Tensor();
  const at::Tensor st = stats.contiguous();
  const at::Tensor grad_out = grad_loss.reshape({1}).to(at::kDouble);
  at::Tensor grad = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (grad.numel() == 0) return grad;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dr_loss_backward_cuda_v2", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor table = at::empty({G * int64_t(sizeof(GroupGrad<acc_t>))},
                                 logits.options().dtype(at::kByte));
    auto* table_p = reinterpret_cast<GroupGrad<acc_t>*>(table.mutable_data_ptr());
    grad_table_kernel<acc_t><<<(G + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        st.const_data_ptr<double>(), grad_out.const_data_ptr<double>(), G, table_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (use_packs<scalar_t>(x) && use_packs<scalar_t>(grad)) {
      launch_backward<scalar_t, acc_t, 16 / sizeof(scalar_t)>(x, id_view(lab), id_view(gid),
                                                               table_p, prm, grad, stream);
    } else {
      launch_backward<scalar_t, acc_t, 1>(x, id_view(lab), id_view(gid), table_p, prm, grad,
                                          stream);
    }
  });
  return grad;
}

}  // namespace dr_loss
}  // namespace drdet
