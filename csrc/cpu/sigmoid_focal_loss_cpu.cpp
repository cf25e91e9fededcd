// CPU kernels of the sigmoid focal loss: forward (summed loss) and backward (d loss / d logits).
// Rows are split over threads with at::parallel_for / parallel_reduce; the per-entry math is
// focal::entry_loss / focal::entry_grad in sigmoid_focal_loss.h, in fp32 (fp64 for fp64 input).
#include <algorithm>
#include <functional>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sigmoid_focal_loss.h"

namespace drdet {
namespace {

// Rows per task: enough entries that a task outweighs its scheduling cost.
int64_t row_grain(int64_t num_classes) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, num_classes));
}

template <typename scalar_t, typename label_t>
double forward_sum(const scalar_t* logits, const label_t* labels, int64_t num_rows,
                   int64_t num_classes, double gamma, double alpha) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto g = static_cast<opmath_t>(gamma);
  const auto a = static_cast<opmath_t>(alpha);
  return at::parallel_reduce(
      0, num_rows, row_grain(num_classes), 0.0,
      [&](int64_t begin, int64_t end, double partial) {
        for (int64_t n = begin; n < end; ++n) {
          const int64_t label = static_cast<int64_t>(labels[n]);
          if (label < 0) {
            continue;  // ignored anchor
          }
          const scalar_t* row = logits + n * num_classes;
          opmath_t row_sum = 0;
          for (int64_t c = 0; c < num_classes; ++c) {
            row_sum += focal::entry_loss(static_cast<opmath_t>(row[c]),
                                         focal::is_positive(label, c), g, a);
          }
          partial += static_cast<double>(row_sum);
        }
        return partial;
      },
      std::plus<double>());
}

template <typename scalar_t, typename label_t>
void backward_fill(const scalar_t* logits, const label_t* labels, scalar_t* grad, double scale,
                   int64_t num_rows, int64_t num_classes, double gamma, double alpha) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto g = static_cast<opmath_t>(gamma);
  const auto a = static_cast<opmath_t>(alpha);
  const auto s = static_cast<opmath_t>(scale);
  at::parallel_for(0, num_rows, row_grain(num_classes), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t label = static_cast<int64_t>(labels[n]);
      const scalar_t* row = logits + n * num_classes;
      scalar_t* grad_row = grad + n * num_classes;
      for (int64_t c = 0; c < num_classes; ++c) {
        const opmath_t d = label < 0 ? opmath_t(0)
                                     : focal::entry_grad(static_cast<opmath_t>(row[c]),
                                                         focal::is_positive(label, c), g, a);
        grad_row[c] = static_cast<scalar_t>(s * d);
      }
    }
  });
}

at::Tensor forward_cpu(const at::Tensor& logits_in, const at::Tensor& labels_in, double gamma,
                       double alpha) {
  check_sigmoid_focal_loss_args(logits_in, labels_in, gamma, alpha);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const auto out_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_focal_loss_cpu", [&] {
        AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "sigmoid_focal_loss_cpu_labels", [&] {
          total = forward_sum(logits.const_data_ptr<scalar_t>(),
                              labels.const_data_ptr<index_t>(), logits.size(0), logits.size(1),
                              gamma, alpha);
        });
      });
  return at::scalar_tensor(total, logits.options().dtype(out_dtype));
}

at::Tensor backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                        const at::Tensor& labels_in, double gamma, double alpha) {
  check_sigmoid_focal_loss_args(logits_in, labels_in, gamma, alpha);
  TORCH_CHECK(grad_loss.numel() == 1, "sigmoid_focal_loss_backward: grad_loss must hold one "
              "value (the loss is a scalar), got shape ", grad_loss.sizes());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  at::Tensor grad = at::empty_like(logits);
  const double scale = grad_loss.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_focal_loss_backward_cpu", [&] {
        AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "sigmoid_focal_loss_backward_cpu_labels",
                                [&] {
                                  backward_fill(logits.const_data_ptr<scalar_t>(),
                                                labels.const_data_ptr<index_t>(),
                                                grad.mutable_data_ptr<scalar_t>(), scale,
                                                logits.size(0), logits.size(1), gamma, alpha);
                                });
      });
  return grad;
}

}  // namespace
}  // namespace drdet

TORCH_LIBRARY_IMPL(drdet, CPU, m) {
  m.impl("sigmoid_focal_loss", &drdet::forward_cpu);
  m.impl("sigmoid_focal_loss_backward", &drdet::backward_cpu);
}
