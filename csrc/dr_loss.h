// The DR loss (Qian et al., CVPR 2020): per-element math shared by the CPU and CUDA kernels,
// the layout of the per-group statistics the forward saves for the backward, and the host-side
// declarations of the argument checks.
//
// Per group g (an image, or the whole batch) with p = sigmoid(logit):
//   P- = sum_j q_j p_j,  q = softmax(p / lambda-)  over the group's negative entries,
//   P+ = sum_j q_j p_j,  q = softmax(-p / lambda+) over its positive entries (1 if none),
//   loss_g = tau * l(P- - P+ + margin)          (pairing "dr"),
//   loss_g = tau * mean_j+ l(P- - p_j+ + margin) (pairing "negonly"),
// with l the smoothed hinge (logistic, quadratic or plain hinge). The loss is the mean of
// loss_g over the groups that hold at least one non-ignored row.
//
// Softmax statistics are kept as (max score, sum of weights, sum of weight * value) triples that
// merge like online softmax, so any partition of the rows gives the same result up to rounding.
#pragma once

#include <cmath>
#include <limits>

#include "macros.h"

namespace drdet {
namespace dr_loss {

enum class Smoothing : int { kLogistic = 0, kQuadratic = 1, kHinge = 2 };
enum class Pairing : int { kDR = 0, kNegOnly = 1 };

// Columns of the (num_groups, kNumStats) float64 statistics tensor of the forward.
enum Stat : int {
  kNegMax = 0,  // largest negative score p (shift of the negative softmax)
  kNegSumW,     // sum over negatives of exp((p - kNegMax) / lambda-)
  kNegMean,     // P-
  kPosMin,      // smallest positive score p (shift of the positive softmax)
  kPosSumW,     // sum over positives of exp((kPosMin - p) / lambda+)
  kPosMean,     // P+ (1 when the group has no positive)
  kNumPos,      // number of positive entries
  kNumValid,    // number of non-ignored rows
  kLoss,        // tau * loss_g (0 for a group that is not counted)
  kCoefNeg,     // d loss / d P- (already divided by the number of counted groups)
  kCoefPos,     // dr: d loss / d P+; negonly: tau / (n+ * counted groups)
  kNumStats
};

// Scalar parameters of the loss, passed by value to the kernels.
struct Params {
  double pos_lambda;
  double neg_lambda;
  double L;
  double margin;
  double tau;
  double rho;
  Smoothing smoothing;
  Pairing pairing;
};

DRDET_HOST_DEVICE float math_exp(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return std::exp(x);
#endif
}
DRDET_HOST_DEVICE double math_exp(double x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
DRDET_HOST_DEVICE float math_log1p(float x) {
#ifdef __CUDA_ARCH__
  return log1pf(x);
#else
  return std::log1p(x);
#endif
}
DRDET_HOST_DEVICE double math_log1p(double x) {
#ifdef __CUDA_ARCH__
  return ::log1p(x);
#else
  return std::log1p(x);
#endif
}

template <typename T>
DRDET_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + math_exp(-x));
}

// A softmax over scores s with weights exp((s - max) / lambda), carrying the weighted sum of
// a value v (v = p for both distributions; s = p for negatives and s = -p for positives).
template <typename T>
struct SoftmaxStat {
  T max;     // largest score seen (-inf when empty)
  T sum_w;   // sum of exp((s - max) / lambda)
  T sum_wv;  // sum of exp((s - max) / lambda) * v
};

template <typename T>
DRDET_HOST_DEVICE SoftmaxStat<T> empty_stat() {
  return {-std::numeric_limits<T>::infinity(), T(0), T(0)};
}

// Merges two partial statistics; the result is the statistic of the union of their entries.
template <typename T>
DRDET_HOST_DEVICE SoftmaxStat<T> merge(const SoftmaxStat<T>& a, const SoftmaxStat<T>& b,
                                       T inv_lambda) {
  if (b.sum_w == T(0)) return a;
  if (a.sum_w == T(0)) return b;
  const SoftmaxStat<T>& hi = a.max >= b.max ? a : b;
  const SoftmaxStat<T>& lo = a.max >= b.max ? b : a;
  const T scale = math_exp((lo.max - hi.max) * inv_lambda);
  return {hi.max, hi.sum_w + lo.sum_w * scale, hi.sum_wv + lo.sum_wv * scale};
}

template <typename T>
DRDET_HOST_DEVICE T weighted_mean(const SoftmaxStat<T>& s, T if_empty) {
  return s.sum_w > T(0) ? s.sum_wv / s.sum_w : if_empty;
}

// Everything the forward accumulates per group.
template <typename T>
struct GroupAccum {
  SoftmaxStat<T> neg;  // scores p, values p
  SoftmaxStat<T> pos;  // scores -p, values p
  T num_pos;
  T num_valid;
};

template <typename T>
DRDET_HOST_DEVICE GroupAccum<T> empty_accum() {
  return {empty_stat<T>(), empty_stat<T>(), T(0), T(0)};
}

template <typename T>
DRDET_HOST_DEVICE GroupAccum<T> merge(const GroupAccum<T>& a, const GroupAccum<T>& b,
                                      T inv_neg_lambda, T inv_pos_lambda) {
  return {merge(a.neg, b.neg, inv_neg_lambda), merge(a.pos, b.pos, inv_pos_lambda),
          a.num_pos + b.num_pos, a.num_valid + b.num_valid};
}

// The smoothed hinge l(z) and its derivative (Eq. 7 and 8; "hinge" is [z]+).
template <typename T>
DRDET_HOST_DEVICE T smooth_value(T z, const Params& prm) {
  switch (prm.smoothing) {
    case Smoothing::kLogistic: {
      const T lz = T(prm.L) * z;  // softplus(lz) / L without overflow
      const T abs_lz = lz < T(0) ? -lz : lz;
      return ((lz > T(0) ? lz : T(0)) + math_log1p(math_exp(-abs_lz))) / T(prm.L);
    }
    case Smoothing::kQuadratic: {
      const T rho = T(prm.rho);
      if (z >= rho) return z;
      if (z <= -rho) return T(0);
      return (z + rho) * (z + rho) / (T(4) * rho);
    }
    default:
      return z > T(0) ? z : T(0);
  }
}

template <typename T>
DRDET_HOST_DEVICE T smooth_grad(T z, const Params& prm) {
  switch (prm.smoothing) {
    case Smoothing::kLogistic: {
      const T lz = T(prm.L) * z;
      if (lz >= T(0)) return T(1) / (T(1) + math_exp(-lz));
      const T e = math_exp(lz);
      return e / (T(1) + e);
    }
    case Smoothing::kQuadratic: {
      const T rho = T(prm.rho);
      if (z >= rho) return T(1);
      if (z <= -rho) return T(0);
      return (z + rho) / (T(2) * rho);
    }
    default:
      return z > T(0) ? T(1) : T(0);
  }
}

// Fills one row of the statistics tensor from a group's accumulated softmax statistics.
// For pairing "negonly", sum_l and sum_dl are the sums over the group's positives of
// l(P- - p_j + margin) and l'(P- - p_j + margin) (ignored for "dr"). The coefficients are
// not yet divided by the number of counted groups: see finish_groups.
template <typename T>
DRDET_HOST_DEVICE void finalize_group(const GroupAccum<T>& acc, T sum_l, T sum_dl,
                                      const Params& prm, double* out) {
  const T neg_mean = weighted_mean(acc.neg, T(0));
  const T pos_mean = weighted_mean(acc.pos, T(1));
  T loss = T(0), coef_neg = T(0), coef_pos = T(0);
  const T tau = T(prm.tau);
  if (acc.num_valid > T(0)) {
    if (prm.pairing == Pairing::kDR) {
      const T z = neg_mean - pos_mean + T(prm.margin);
      const T dl = tau * smooth_grad(z, prm);
      loss = tau * smooth_value(z, prm);
      coef_neg = dl;
      coef_pos = acc.num_pos > T(0) ? -dl : T(0);
    } else if (acc.num_pos > T(0)) {
      loss = tau * sum_l / acc.num_pos;
      coef_neg = tau * sum_dl / acc.num_pos;
      coef_pos = tau / acc.num_pos;
    }
  }
  out[kNegMax] = acc.neg.max;
  out[kNegSumW] = acc.neg.sum_w;
  out[kNegMean] = neg_mean;
  out[kPosMin] = -acc.pos.max;
  out[kPosSumW] = acc.pos.sum_w;
  out[kPosMean] = pos_mean;
  out[kNumPos] = acc.num_pos;
  out[kNumValid] = acc.num_valid;
  out[kLoss] = loss;
  out[kCoefNeg] = coef_neg;
  out[kCoefPos] = coef_pos;
}

// Averages over the groups that hold a non-ignored row: returns the loss and divides every
// group's gradient coefficients by the number of such groups.
DRDET_HOST_DEVICE double finish_groups(double* stats, long long num_groups) {
  double total = 0.0;
  long long counted = 0;
  for (long long g = 0; g < num_groups; ++g) {
    if (stats[g * kNumStats + kNumValid] > 0.0) {
      total += stats[g * kNumStats + kLoss];
      ++counted;
    }
  }
  if (counted == 0) return 0.0;
  for (long long g = 0; g < num_groups; ++g) {
    stats[g * kNumStats + kCoefNeg] /= double(counted);
    stats[g * kNumStats + kCoefPos] /= double(counted);
  }
  return total / double(counted);
}

// The group's statistics in the accumulation type, as the backward reads them.
template <typename T>
struct GroupGrad {
  T neg_max, inv_neg_sum_w, neg_mean;
  T pos_min, inv_pos_sum_w, pos_mean;
  T coef_neg, coef_pos;
};

template <typename T>
DRDET_HOST_DEVICE GroupGrad<T> load_group_grad(const double* row, T grad_out) {
  GroupGrad<T> g;
  g.neg_max = T(row[kNegMax]);
  g.inv_neg_sum_w = row[kNegSumW] > 0.0 ? T(1.0 / row[kNegSumW]) : T(0);
  g.neg_mean = T(row[kNegMean]);
  g.pos_min = T(row[kPosMin]);
  g.inv_pos_sum_w = row[kPosSumW] > 0.0 ? T(1.0 / row[kPosSumW]) : T(0);
  g.pos_mean = T(row[kPosMean]);
  g.coef_neg = T(row[kCoefNeg]) * grad_out;
  g.coef_pos = T(row[kCoefPos]) * grad_out;
  return g;
}

// d loss / d logit of one entry of a non-ignored row (appendix A, times dp/dx = p (1 - p)).
//   negative: coef_neg * q_j * (1 + (p_j - P-) / lambda-)
//   positive (dr): coef_pos * q_j * (1 - (p_j - P+) / lambda+), coef_pos = d loss / d P+
//   positive (negonly): -coef_pos * l'(P- - p_j + margin)
// inv_neg = T(1 / lambda-) and inv_pos = T(1 / lambda+), hoisted out of the element loops.
template <typename T>
DRDET_HOST_DEVICE T grad_logit(T x, bool positive, const GroupGrad<T>& g, const Params& prm,
                               T inv_neg, T inv_pos) {
  const T p = sigmoid(x);
  T d;
  if (!positive) {
    const T q = math_exp((p - g.neg_max) * inv_neg) * g.inv_neg_sum_w;
    d = g.coef_neg * q * (T(1) + (p - g.neg_mean) * inv_neg);
  } else if (prm.pairing == Pairing::kDR) {
    const T q = math_exp((g.pos_min - p) * inv_pos) * g.inv_pos_sum_w;
    d = g.coef_pos * q * (T(1) - (p - g.pos_mean) * inv_pos);
  } else {
    d = -g.coef_pos * smooth_grad(g.neg_mean - p + T(prm.margin), prm);
  }
  return d * p * (T(1) - p);
}

template <typename T>
DRDET_HOST_DEVICE T grad_logit(T x, bool positive, const GroupGrad<T>& g, const Params& prm) {
  return grad_logit(x, positive, g, prm, T(1.0 / prm.neg_lambda), T(1.0 / prm.pos_lambda));
}

}  // namespace dr_loss
}  // namespace drdet

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <optional>

namespace drdet {
namespace dr_loss {

// The dtype of the loss the forward returns: float64 for float64 logits, float32 otherwise
// (float16 and bfloat16 logits get an unrounded float32 loss, as the focal loss does).
at::ScalarType loss_dtype(const at::Tensor& logits);

// Checks shapes, dtypes and parameters (no data access) and returns the parsed parameters.
Params check_inputs(const at::Tensor& logits, const at::Tensor& labels,
                    const std::optional<at::Tensor>& group_ids, int64_t num_groups,
                    double pos_lambda, double neg_lambda, double L, double margin, double tau,
                    c10::string_view smoothing, double rho, c10::string_view pairing);

// Checks that labels lie in [-1, C] and group ids in [0, num_groups) (reads the data; on CUDA
// this synchronises once: one device-to-host copy of the four extremes).
void check_values(const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
                  int64_t num_classes, int64_t num_groups);

// Checks the arguments of the backward (shapes, dtypes and devices of grad_loss, a one-value
// tensor, and of the forward's (G, kNumStats) float64 statistics included; no data access) and
// returns the parsed parameters.
Params check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& logits,
                             const at::Tensor& labels,
                             const std::optional<at::Tensor>& group_ids, const at::Tensor& stats,
                             double pos_lambda, double neg_lambda, double L, double margin,
                             double tau, c10::string_view smoothing, double rho,
                             c10::string_view pairing);

}  // namespace dr_loss
}  // namespace drdet
