// Schemas of the sigmoid focal loss ops and the argument checks their kernels share.
// Kernels: cpu/sigmoid_focal_loss_cpu.cpp, cuda/sigmoid_focal_loss_cuda.cu. Autograd and fake
// (meta) kernels: drdet/layers/sigmoid_focal_loss.py.
#include "sigmoid_focal_loss.h"

#include <cmath>

#include <torch/library.h>

namespace drdet {

void check_sigmoid_focal_loss_args(const at::Tensor& logits, const at::Tensor& labels,
                                   double gamma, double alpha) {
  TORCH_CHECK(logits.dim() == 2, "sigmoid_focal_loss: logits must be (N, C), got shape ",
              logits.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0),
              "sigmoid_focal_loss: labels must be (N,) with N = logits.size(0) = ",
              logits.size(0), ", got shape ", labels.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kDouble,
              "sigmoid_focal_loss: logits must be float16, bfloat16, float32 or float64, got ",
              dtype);
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
              "sigmoid_focal_loss: labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device(),
              "sigmoid_focal_loss: labels must be on the device of logits (", logits.device(),
              "), got ", labels.device());
  TORCH_CHECK(std::isfinite(gamma) && gamma >= 0.0,
              "sigmoid_focal_loss: gamma must be finite and >= 0, got ", gamma);
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "sigmoid_focal_loss: alpha must be in [0, 1], got ",
              alpha);
  if (labels.numel() > 0) {
    // One small reduction (and, on CUDA, one sync): a label out of range would otherwise be
    // silently read as "all negatives".
    const auto [lo, hi] = at::aminmax(labels);
    const int64_t min_label = lo.item<int64_t>();
    const int64_t max_label = hi.item<int64_t>();
    TORCH_CHECK(min_label >= -1 && max_label <= logits.size(1),
                "sigmoid_focal_loss: labels must be in [-1, C] with C = ", logits.size(1),
                " (-1 ignored, 0 background, k class k), got values in [", min_label, ", ",
                max_label, "]");
  }
}

}  // namespace drdet

TORCH_LIBRARY_FRAGMENT(drdet, m) {
  m.def("sigmoid_focal_loss(Tensor logits, Tensor labels, float gamma, float alpha) -> Tensor");
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad_loss, Tensor logits, Tensor labels, float gamma, "
      "float alpha) -> Tensor");
}
