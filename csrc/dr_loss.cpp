// The DR loss op: schema of drdet::dr_loss_forward / dr_loss_backward and the argument checks
// shared by the CPU and CUDA kernels. Autograd and the fake (meta) kernels are registered in
// drdet/layers/dr_loss.py.
#include "dr_loss.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

namespace drdet {
namespace dr_loss {

at::ScalarType loss_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Params check_inputs(const at::Tensor& logits, const at::Tensor& labels,
                    const std::optional<at::Tensor>& group_ids, int64_t num_groups,
                    double pos_lambda, double neg_lambda, double L, double margin, double tau,
                    c10::string_view smoothing, double rho, c10::string_view pairing) {
  TORCH_CHECK(logits.dim() == 2, "dr_loss: logits must be (N, C), got shape ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "dr_loss: logits must be floating point, got ", logits.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0),
              "dr_loss: labels must be (N,) with N = ", logits.size(0), ", got shape ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
              "dr_loss: labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device(), "dr_loss: labels are on ", labels.device(),
              " but logits on ", logits.device());
  if (group_ids.has_value()) {
    const at::Tensor& gid = *group_ids;
    TORCH_CHECK(gid.dim() == 1 && gid.size(0) == logits.size(0),
                "dr_loss: group_ids must be (N,) with N = ", logits.size(0), ", got shape ",
                gid.sizes());
    TORCH_CHECK(gid.scalar_type() == at::kLong || gid.scalar_type() == at::kInt,
                "dr_loss: group_ids must be int64 or int32, got ", gid.scalar_type());
    TORCH_CHECK(gid.device() == logits.device(), "dr_loss: group_ids are on ", gid.device(),
                " but logits on ", logits.device());
  }
  TORCH_CHECK(num_groups >= 1, "dr_loss: num_groups must be >= 1, got ", num_groups);
  TORCH_CHECK(pos_lambda > 0, "dr_loss: pos_lambda must be > 0, got ", pos_lambda);
  TORCH_CHECK(neg_lambda > 0, "dr_loss: neg_lambda must be > 0, got ", neg_lambda);
  TORCH_CHECK(L > 0, "dr_loss: L must be > 0, got ", L);
  TORCH_CHECK(std::isfinite(margin) && std::isfinite(tau),
              "dr_loss: margin and tau must be finite, got ", margin, " and ", tau);
  Params prm{pos_lambda, neg_lambda, L, margin, tau, rho, Smoothing::kLogistic, Pairing::kDR};
  if (smoothing == "logistic") {
    prm.smoothing = Smoothing::kLogistic;
  } else if (smoothing == "quadratic") {
    TORCH_CHECK(rho > 0, "dr_loss: rho must be > 0 for quadratic smoothing, got ", rho);
    prm.smoothing = Smoothing::kQuadratic;
  } else if (smoothing == "hinge") {
    prm.smoothing = Smoothing::kHinge;
  } else {
    TORCH_CHECK(false, "dr_loss: smoothing must be 'logistic', 'quadratic' or 'hinge', got '",
                std::string(smoothing), "'");
  }
  if (pairing == "dr") {
    prm.pairing = Pairing::kDR;
  } else if (pairing == "negonly") {
    prm.pairing = Pairing::kNegOnly;
  } else {
    TORCH_CHECK(false, "dr_loss: pairing must be 'dr' or 'negonly', got '", std::string(pairing),
                "'");
  }
  return prm;
}

void check_values(const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
                  int64_t num_classes, int64_t num_groups) {
  if (labels.numel() == 0) return;
  // The extremes of labels (and group ids) come to the host in one copy: one synchronisation.
  const auto [lo, hi] = at::aminmax(labels);
  std::vector<at::Tensor> extremes{lo.to(at::kLong), hi.to(at::kLong)};
  if (group_ids.has_value()) {
    const auto [glo, ghi] = at::aminmax(*group_ids);
    extremes.push_back(glo.to(at::kLong));
    extremes.push_back(ghi.to(at::kLong));
  }
  const at::Tensor host = at::stack(extremes).cpu();
  const int64_t* v = host.data_ptr<int64_t>();
  TORCH_CHECK(v[0] >= -1 && v[1] <= num_classes, "dr_loss: labels must lie in [-1, ",
              num_classes, "] (-1 ignored, 0 background, 1..C classes), got values in [", v[0],
              ", ", v[1], "]");
  if (group_ids.has_value()) {
    TORCH_CHECK(v[2] >= 0 && v[3] < num_groups, "dr_loss: group_ids must lie in [0, ",
                num_groups, ") (num_groups = ", num_groups, "), got values in [", v[2], ", ",
                v[3], "]");
  }
}

Params check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& logits,
                             const at::Tensor& labels,
                             const std::optional<at::Tensor>& group_ids, const at::Tensor& stats,
                             double pos_lambda, double neg_lambda, double L, double margin,
                             double tau, c10::string_view smoothing, double rho,
                             c10::string_view pairing) {
  TORCH_CHECK(grad_loss.numel() == 1 && at::isFloatingType(grad_loss.scalar_type()),
              "dr_loss_backward: grad_loss must be one floating-point value (the gradient of "
              "the scalar loss), got shape ", grad_loss.sizes(), " ", grad_loss.scalar_type());
  TORCH_CHECK(grad_loss.device() == logits.device(), "dr_loss_backward: grad_loss is on ",
              grad_loss.device(), " but logits on ", logits.device());
  TORCH_CHECK(stats.dim() == 2 && stats.size(1) == kNumStats &&
                  stats.scalar_type() == at::kDouble,
              "dr_loss_backward: stats must be the (G, ", int(kNumStats),
              ") float64 tensor of the forward, got ", stats.sizes(), " ", stats.scalar_type());
  TORCH_CHECK(stats.device() == logits.device(), "dr_loss_backward: stats are on ",
              stats.device(), " but logits on ", logits.device());
  return check_inputs(logits, labels, group_ids, stats.size(0), pos_lambda, neg_lambda, L,
                      margin, tau, smoothing, rho, pairing);
}

}  // namespace dr_loss
}  // namespace drdet

TORCH_LIBRARY_FRAGMENT(drdet, m) {
  m.def(
      "dr_loss_forward(Tensor logits, Tensor labels, Tensor? group_ids, int num_groups, "
      "float pos_lambda, float neg_lambda, float L, float margin, float tau, str smoothing, "
      "float rho, str pairing) -> (Tensor, Tensor)");
  m.def(
      "dr_loss_backward(Tensor grad_loss, Tensor logits, Tensor labels, Tensor? group_ids, "
      "Tensor stats, float pos_lambda, float neg_lambda, float L, float margin, float tau, "
      "str smoothing, float rho, str pairing) -> Tensor");
}
