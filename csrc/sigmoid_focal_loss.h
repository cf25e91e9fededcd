// Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), the
// classification loss of the RetinaNet baseline.
//
// Label convention (shared with the DR loss): logits (N, C), labels (N,) int with
//   -1      ignored anchor: its row contributes nothing,
//    0      background: all C entries are negatives,
//   1..C    foreground of class k: entry k-1 is positive, the other C-1 are negatives.
//
// Per entry with logit x, a positive contributes alpha * (1-p)^gamma * -log(p) and a negative
// (1-alpha) * p^gamma * -log(1-p), with p = sigmoid(x). Writing z = -x for a positive and z = x
// for a negative, both read w * q^gamma * softplus(z) with q = sigmoid(z), the probability given
// to the wrong answer. The functions below are the per-entry math, shared by the CPU and CUDA
// kernels so that CI (no GPU) runs the same arithmetic the GPU does.
#pragma once

#include <cmath>

#include <ATen/ATen.h>

#include "macros.h"

namespace drdet {

namespace focal {

// Whether entry `cls` (0-based) of a row with label `label` (>= 0) is a positive.
DRDET_HOST_DEVICE bool is_positive(int64_t label, int64_t cls) {
  return label == cls + 1;
}

// The signed logit z (see the file comment) and the class weight w of one entry.
template <typename T>
DRDET_HOST_DEVICE T signed_logit(T x, bool positive) {
  return positive ? -x : x;
}

template <typename T>
DRDET_HOST_DEVICE T class_weight(bool positive, T alpha) {
  return positive ? alpha : T(1) - alpha;
}

// log(1 + e) for e in [0, 1] from one log: u = 1 + e rounds, but u - 1 is exact, and
// (e - (u - 1)) / u corrects the rounding to first order (accurate to about an ulp, and equal to
// e when e is below the precision of u). About twice as fast as glibc's log1pf.
template <typename T>
DRDET_HOST_DEVICE T log1p_unit(T e) {
  const T u = T(1) + e;
  return std::log(u) + (e - (u - T(1))) / u;
}

// What the loss and its gradient need of an entry with signed logit z, from one exp and one
// log of e = exp(-|z|), so nothing overflows for any |z|:
//   q = sigmoid(z) and 1 - q = sigmoid(-z),
//   softplus(z) = max(z, 0) + log1p(e) = -log(1 - q), the cross-entropy of the entry,
//   softplus(-z) = max(-z, 0) + log1p(e) = -log(q).
template <typename T>
struct EntryTerms {
  T q;
  T one_minus_q;
  T softplus_z;
  T softplus_neg_z;
};

template <typename T>
DRDET_HOST_DEVICE EntryTerms<T> entry_terms(T z) {
  const T e = std::exp(-std::fabs(z));
  const T log1p_e = log1p_unit(e);
  const T inv = T(1) / (T(1) + e);
  const bool nonneg = z >= T(0);
  EntryTerms<T> t;
  t.q = nonneg ? inv : e * inv;
  t.one_minus_q = nonneg ? e * inv : inv;
  t.softplus_z = (nonneg ? z : T(0)) + log1p_e;
  t.softplus_neg_z = (nonneg ? T(0) : -z) + log1p_e;
  return t;
}

// q^gamma as exp(-gamma * softplus(-z)) = exp(gamma * log q): finite for any z, 1 when gamma = 0.
// The default gamma = 2 takes q * q, as accurate and cheaper than the exp.
template <typename T>
DRDET_HOST_DEVICE T modulating_factor(const EntryTerms<T>& t, T gamma) {
  return gamma == T(2) ? t.q * t.q : std::exp(-gamma * t.softplus_neg_z);
}

// Loss of one entry: w * q^gamma * softplus(z).
template <typename T>
DRDET_HOST_DEVICE T entry_loss(T x, bool positive, T gamma, T alpha) {
  const EntryTerms<T> t = entry_terms(signed_logit(x, positive));
  return class_weight(positive, alpha) * modulating_factor(t, gamma) * t.softplus_z;
}

// d(entry loss)/dx. With q = sigmoid(z), d/dz [q^gamma softplus(z)] =
// q^gamma * (gamma * (1-q) * softplus(z) + q), written without q^(gamma-1) so that gamma < 1
// and q -> 0 stay finite; dz/dx = -1 for a positive, +1 for a negative.
template <typename T>
DRDET_HOST_DEVICE T entry_grad(T x, bool positive, T gamma, T alpha) {
  const EntryTerms<T> t = entry_terms(signed_logit(x, positive));
  const T dz = modulating_factor(t, gamma) * (gamma * t.one_minus_q * t.softplus_z + t.q);
  return class_weight(positive, alpha) * (positive ? -dz : dz);
}

}  // namespace focal

// Checks the arguments of both kernels (shapes, dtypes, devices, gamma, alpha, label range) and
// raises a c10::Error (RuntimeError in Python) naming the argument. Defined in
// sigmoid_focal_loss.cpp next to the schemas.
//   logits (N, C) float16/bfloat16/float32/float64, labels (N,) int32/int64 in [-1, C].
void check_sigmoid_focal_loss_args(const at::Tensor& logits, const at::Tensor& labels,
                                   double gamma, double alpha);

}  // namespace drdet
