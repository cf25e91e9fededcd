// Version 2 of the DR loss CUDA kernels (cuda/dr_loss_cuda_v2.cu; not yet run on a GPU), called
// by the registered CUDA ops of cuda/dr_loss_cuda.cu when DRDET_CUDA_KERNELS=v2.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace drdet {
namespace dr_loss {

std::tuple<at::Tensor, at::Tensor> dr_loss_forward_cuda_v2(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
    int64_t num_groups, double pos_lambda, double neg_lambda, double L, double margin, double tau,
    c10::string_view smoothing, double rho, c10::string_view pairing);

at::Tensor dr_loss_backward_cuda_v2(const at::Tensor& grad_loss, const at::Tensor& logits,
                                    const at::Tensor& labels,
                                    const std::optional<at::Tensor>& group_ids,
                                    const at::Tensor& stats, double pos_lambda,
                                    double neg_lambda, double L, double margin, double tau,
                                    c10::string_view smoothing, double rho,
                                    c10::string_view pairing);

}  // namespace dr_loss
}  // namespace drdet
