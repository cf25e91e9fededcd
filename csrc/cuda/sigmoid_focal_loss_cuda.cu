// CUDA kernels of the sigmoid focal loss. Forward: a grid-stride loop over the N x C entries,
// a CUB block reduction, one partial sum per block, then at::sum over the partials (a fixed grid,
// so the result is deterministic). Backward: one element-wise pass. The per-entry math is
// focal::entry_loss / focal::entry_grad in sigmoid_focal_loss.h, which the CPU kernel runs too.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "sigmoid_focal_loss.h"

namespace drdet {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1024;

int64_t num_blocks(int64_t numel) {
  return std::min(kMaxBlocks, std::max<int64_t>(1, (numel + kThreads - 1) / kThreads));
}

template <typename scalar_t, typename label_t, typename opmath_t>
__global__ void forward_kernel(const scalar_t* __restrict__ logits,
                               const label_t* __restrict__ labels, int64_t numel,
                               int64_t num_classes, opmath_t gamma, opmath_t alpha,
                               opmath_t* __restrict__ partials) {
  opmath_t sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    const int64_t label = static_cast<int64_t>(labels[i / num_classes]);
    if (label >= 0) {
      sum += focal::entry_loss(static_cast<opmath_t>(logits[i]),
                               focal::is_positive(label, i % num_classes), gamma, alpha);
    }
  }
  using BlockReduce = cub::BlockReduce<opmath_t, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const opmath_t block_sum = BlockReduce(temp).Sum(sum);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_sum;
  }
}

template <typename scalar_t, typename label_t, typename opmath_t>
__global__ void backward_kernel(const opmath_t* __restrict__ grad_loss,
                                const scalar_t* __restrict__ logits,
                                const label_t* __restrict__ labels, int64_t numel,
                                int64_t num_classes, opmath_t gamma, opmath_t alpha,
                                scalar_t* __restrict__ grad) {
  const opmath_t scale = *grad_loss;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    const int64_t label = static_cast<int64_t>(labels[i / num_classes]);
    const opmath_t d = label < 0 ? opmath_t(0)
                                 : focal::entry_grad(static_cast<opmath_t>(logits[i]),
                                                     focal::is_positive(label, i % num_classes),
                                                     gamma, alpha);
    grad[i] = static_cast<scalar_t>(scale * d);
  }
}

at::Tensor forward_cuda(const at::Tensor& logits_in, const at::Tensor& labels_in, double gamma,
                        double alpha) {
  check_sigmoid_focal_loss_args(logits_in, labels_in, gamma, alpha);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const auto out_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t numel = logits.numel();
  if (numel == 0) {
    return at::zeros({}, logits.options().dtype(out_dtype));
  }
  const int64_t blocks = num_blocks(numel);
  at::Tensor partials = at::empty({blocks}, logits.options().dtype(out_dtype));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "sigmoid_focal_loss_cuda_labels", [&] {
          forward_kernel<scalar_t, index_t, opmath_t><<<blocks, kThreads, 0, stream>>>(
              logits.const_data_ptr<scalar_t>(), labels.const_data_ptr<index_t>(), numel,
              logits.size(1), static_cast<opmath_t>(gamma), static_cast<opmath_t>(alpha),
              partials.mutable_data_ptr<opmath_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return partials.sum();
}

at::Tensor backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                         const at::Tensor& labels_in, double gamma, double alpha) {
  check_sigmoid_focal_loss_args(logits_in, labels_in, gamma, alpha);
  TORCH_CHECK(grad_loss.numel() == 1, "sigmoid_focal_loss_backward: grad_loss must hold one "
              "value (the loss is a scalar), got shape ", grad_loss.sizes());
  TORCH_CHECK(grad_loss.device() == logits_in.device(), "sigmoid_focal_loss_backward: "
              "grad_loss must be on the device of logits (", logits_in.device(), "), got ",
              grad_loss.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  at::Tensor grad = at::empty_like(logits);
  const int64_t numel = logits.numel();
  if (numel == 0) {
    return grad;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_focal_loss_backward_cuda", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const at::Tensor scale =
            grad_loss.reshape({}).to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
        AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "sigmoid_focal_loss_backward_labels", [&] {
          backward_kernel<scalar_t, index_t, opmath_t><<<num_blocks(numel) * 4, kThreads, 0,
                                                         stream>>>(
              scale.const_data_ptr<opmath_t>(), logits.const_data_ptr<scalar_t>(),
              labels.const_data_ptr<index_t>(), numel, logits.size(1),
              static_cast<opmath_t>(gamma), static_cast<opmath_t>(alpha),
              grad.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return grad;
}

}  // namespace
}  // namespace drdet

TORCH_LIBRARY_IMPL(drdet, CUDA, m) {
  m.impl("sigmoid_focal_loss", &drdet::forward_cuda);
  m.impl("sigmoid_focal_loss_backward", &drdet::backward_cuda);
}
