// CUDA kernels of the DR loss. Deterministic, no atomics:
//   1. row_stats: one warp per row writes the row's negative softmax statistic (max, sum w,
//      sum w p) and its positive score to a (N, 4) workspace;
//   2. group_reduce: one block per group merges the rows of its group (fixed thread order and
//      cub::BlockReduce) and, for "negonly", sums l and l' over its positives; without group
//      ids every row is in group 0;
//   3. finish: one thread averages over the counted groups;
//   backward: one element-wise pass given the per-group statistics.
// The per-element math is in dr_loss.h, shared with (and tested through) the CPU kernels.
// DRDET_CUDA_KERNELS=v2 routes both ops to version 2 (dr_loss_cuda_v2.cu, not yet run on a GPU).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include "cuda/dr_loss_cuda_v2.h"
#include "cuda/kernel_version.h"
#include "dr_loss.h"

namespace drdet {
namespace dr_loss {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block of row_stats
constexpr int kReduceThreads = 256;

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// ws[r] = (max negative p, sum w, sum w p, positive p) of row r; garbage for ignored rows.
template <typename scalar_t, typename acc_t>
__global__ void row_stats_kernel(const scalar_t* __restrict__ logits,
                                 const int64_t* __restrict__ labels, int64_t N, int64_t C,
                                 acc_t inv_neg, acc_t* __restrict__ ws) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (r >= N) return;  // whole warp leaves together
  const int64_t y = labels[r];
  if (y < 0) return;
  const scalar_t* x = logits + r * C;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t c = lane; c < C; c += kWarp) {
    if (c != y - 1) m = fmax(m, sigmoid(static_cast<acc_t>(x[c])));
  }
  m = warp_max(m);
  acc_t sum_w = 0, sum_wp = 0;
  for (int64_t c = lane; c < C; c += kWarp) {
    if (c == y - 1) continue;
    const acc_t p = sigmoid(static_cast<acc_t>(x[c]));
    const acc_t w = math_exp((p - m) * inv_neg);
    sum_w += w;
    sum_wp += w * p;
  }
  sum_w = warp_sum(sum_w);
  sum_wp = warp_sum(sum_wp);
  if (lane == 0) {
    acc_t* out = ws + r * 4;
    out[0] = m;
    out[1] = sum_w;
    out[2] = sum_wp;
    out[3] = y > 0 ? sigmoid(static_cast<acc_t>(x[y - 1])) : acc_t(0);
  }
}

// Whether row r belongs to group g. Without group ids every row is in group 0, as on the CPU
// (the other groups stay empty and are not counted).
__device__ __forceinline__ bool in_group(const int64_t* group_ids, int64_t r, int64_t g) {
  return group_ids != nullptr ? group_ids[r] == g : g == 0;
}

template <typename acc_t>
struct MergeAccum {
  acc_t inv_neg, inv_pos;
  __device__ GroupAccum<acc_t> operator()(const GroupAccum<acc_t>& a,
                                          const GroupAccum<acc_t>& b) const {
    return merge(a, b, inv_neg, inv_pos);
  }
};

template <typename acc_t>
struct PairSum {
  acc_t a, b;
};

template <typename acc_t>
struct AddPair {
  __device__ PairSum<acc_t> operator()(const PairSum<acc_t>& x, const PairSum<acc_t>& y) const {
    return {x.a + y.a, x.b + y.b};
  }
};

// One block per group: merges the row statistics of the group's rows into stats[g].
template <typename acc_t>
__global__ void group_reduce_kernel(const acc_t* __restrict__ ws,
                                    const int64_t* __restrict__ labels,
                                    const int64_t* __restrict__ group_ids, int64_t N,
                                    Params prm, double* __restrict__ stats) {
  using AccumReduce = cub::BlockReduce<GroupAccum<acc_t>, kReduceThreads>;
  using PairReduce = cub::BlockReduce<PairSum<acc_t>, kReduceThreads>;
  __shared__ union {
    typename AccumReduce::TempStorage accum;
    typename PairReduce::TempStorage pair;
  } temp;
  __shared__ acc_t neg_mean_shared;
  const int64_t g = blockIdx.x;
  const acc_t inv_neg = acc_t(1.0 / prm.neg_lambda), inv_pos = acc_t(1.0 / prm.pos_lambda);

  GroupAccum<acc_t> acc = empty_accum<acc_t>();
  for (int64_t r = threadIdx.x; r < N; r += kReduceThreads) {
    const int64_t y = labels[r];
    if (y < 0 || !in_group(group_ids, r, g)) continue;
    const acc_t* row = ws + r * 4;
    acc.num_valid += 1;
    acc.neg = merge(acc.neg, SoftmaxStat<acc_t>{row[0], row[1], row[2]}, inv_neg);
    if (y > 0) {
      acc.num_pos += 1;
      acc.pos = merge(acc.pos, SoftmaxStat<acc_t>{-row[3], acc_t(1), row[3]}, inv_pos);
    }
  }
  acc = AccumReduce(temp.accum).Reduce(acc, MergeAccum<acc_t>{inv_neg, inv_pos});
  if (threadIdx.x == 0) neg_mean_shared = weighted_mean(acc.neg, acc_t(0));
  __syncthreads();

  PairSum<acc_t> sums{acc_t(0), acc_t(0)};  // sum of l and l' over the positives (negonly)
  if (prm.pairing == Pairing::kNegOnly) {
    const acc_t neg_mean = neg_mean_shared;
    for (int64_t r = threadIdx.x; r < N; r += kReduceThreads) {
      if (labels[r] <= 0 || !in_group(group_ids, r, g)) continue;
      const acc_t z = neg_mean - ws[r * 4 + 3] + acc_t(prm.margin);
      sums.a += smooth_value(z, prm);
      sums.b += smooth_grad(z, prm);
    }
    sums = PairReduce(temp.pair).Reduce(sums, AddPair<acc_t>());
  }
  if (threadIdx.x == 0) finalize_group(acc, sums.a, sums.b, prm, stats + g * kNumStats);
}

template <typename scalar_t>
__global__ void finish_kernel(double* stats, int64_t num_groups, scalar_t* loss) {
  *loss = static_cast<scalar_t>(finish_groups(stats, num_groups));
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_loss,
                                const scalar_t* __restrict__ logits,
                                const int64_t* __restrict__ labels,
                                const int64_t* __restrict__ group_ids,
                                const double* __restrict__ stats, int64_t N, int64_t C,
                                Params prm, scalar_t* __restrict__ grad) {
  const acc_t grad_out = static_cast<acc_t>(*grad_loss);
  const int64_t total = N * C;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t r = i / C, c = i - r * C;
    const int64_t y = labels[r];
    acc_t d = 0;
    if (y >= 0) {
      const int64_t g = group_ids != nullptr ? group_ids[r] : 0;
      const GroupGrad<acc_t> gg = load_group_grad(stats + g * kNumStats, grad_out);
      d = grad_logit(static_cast<acc_t>(logits[i]), c == y - 1, gg, prm);
    }
    grad[i] = static_cast<scalar_t>(d);
  }
}

std::tuple<at::Tensor, at::Tensor> dr_loss_forward_cuda(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
    int64_t num_groups, double pos_lambda, double neg_lambda, double L, double margin, double tau,
    c10::string_view smoothing, double rho, c10::string_view pairing) {
  if (cuda_kernel_version() == 2) {
    return dr_loss_forward_cuda_v2(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda,
                                   L, margin, tau, smoothing, rho, pairing);
  }
  const Params prm = check_inputs(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda,
                                  L, margin, tau, smoothing, rho, pairing);
  const int64_t N = logits.size(0), C = logits.size(1);
  check_values(labels, group_ids, C, num_groups);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor lab = labels.to(at::kLong).contiguous();
  const at::Tensor gid =
      group_ids.has_value() ? group_ids->to(at::kLong).contiguous() : at::Tensor();
  const int64_t* gid_p = gid.defined() ? gid.data_ptr<int64_t>() : nullptr;
  at::Tensor stats = at::empty({num_groups, kNumStats}, logits.options().dtype(at::kDouble));
  at::Tensor loss = at::empty({}, logits.options().dtype(loss_dtype(logits)));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dr_loss_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor ws = at::empty({std::max<int64_t>(N, 1), 4},
                              logits.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (N > 0) {
      const int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
      row_stats_kernel<scalar_t, acc_t><<<blocks, kRowsPerBlock * kWarp, 0, stream>>>(
          x.data_ptr<scalar_t>(), lab.data_ptr<int64_t>(), N, C, acc_t(1.0 / prm.neg_lambda),
          ws.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    group_reduce_kernel<acc_t><<<num_groups, kReduceThreads, 0, stream>>>(
        ws.data_ptr<acc_t>(), lab.data_ptr<int64_t>(), gid_p, N, prm, stats.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // the loss in acc_t: float32 (float64 for float64 logits), as loss_dtype allocated it
    finish_kernel<acc_t><<<1, 1, 0, stream>>>(stats.data_ptr<double>(), num_groups,
                                              loss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, stats};
}

at::Tensor dr_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                 const at::Tensor& labels,
                                 const std::optional<at::Tensor>& group_ids,
                                 const at::Tensor& stats, double pos_lambda, double neg_lambda,
                                 double L, double margin, double tau, c10::string_view smoothing,
                                 double rho, c10::string_view pairing) {
  if (cuda_kernel_version() == 2) {
    return dr_loss_backward_cuda_v2(grad_loss, logits, labels, group_ids, stats, pos_lambda,
                                    neg_lambda, L, margin, tau, smoothing, rho, pairing);
  }
  const Params prm = check_backward_inputs(grad_loss, logits, labels, group_ids, stats,
                                           pos_lambda, neg_lambda, L, margin, tau, smoothing,
                                           rho, pairing);
  const int64_t N = logits.size(0), C = logits.size(1);
  // The kernel indexes stats with the group ids: one cheap check (one synchronisation).
  check_values(labels, group_ids, C, stats.size(0));
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor lab = labels.to(at::kLong).contiguous();
  const at::Tensor gid =
      group_ids.has_value() ? group_ids->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor st = stats.contiguous();
  const at::Tensor go = grad_loss.to(x.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(x);
  if (grad.numel() == 0) return grad;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dr_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((grad.numel() + threads - 1) / threads, 65536);
    backward_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), lab.data_ptr<int64_t>(),
        gid.defined() ? gid.data_ptr<int64_t>() : nullptr, st.data_ptr<double>(), N, C, prm,
        grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(drdet, CUDA, m) {
  m.impl("dr_loss_forward", &dr_loss_forward_cuda);
  m.impl("dr_loss_backward", &dr_loss_backward_cuda);
}

}  // namespace dr_loss
}  // namespace drdet
