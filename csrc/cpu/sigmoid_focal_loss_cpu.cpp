// CPU kernels of the sigmoid focal loss: forward (summed loss) and backward (d loss / d logits).
// Rows are split over threads with at::parallel_for / parallel_reduce. float32 (and float16 /
// bfloat16, converted to float a block of rows at a time) runs AVX-512 or AVX2+FMA loops chosen
// at run time (simd::cpu_isa(), cpu/simd.h); float64, and every type under Isa::Baseline, run
// the per-entry math of sigmoid_focal_loss.h (focal::entry_loss / focal::entry_grad) that the
// CUDA kernel runs too. The forward sums each row in float and the rows in double.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "huge_pages.h"
#include "sigmoid_focal_loss.h"
#include "simd.h"

namespace drdet {
namespace {

// Rows per task: enough entries that a task outweighs its scheduling cost.
int64_t row_grain(int64_t num_classes) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, num_classes));
}

// ---- scalar path: float64, and every type under Isa::Baseline ---------------------------------

template <typename scalar_t, typename label_t>
double forward_sum_scalar(const scalar_t* logits, const label_t* labels, int64_t num_rows,
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
void backward_fill_scalar(const scalar_t* logits, const label_t* labels, scalar_t* grad,
                          double scale, int64_t num_rows, int64_t num_classes, double gamma,
                          double alpha) {
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

// ---- vector path for float: AVX-512 or AVX2 + FMA, chosen at run time (cpu/simd.h) ----------
// The extension is built without -march, so at::vec::Vectorized<float> would be scalar code;
// these loops are compiled for AVX2/FMA and AVX-512 with target attributes and run only where
// simd::cpu_isa() allows them (as in dr_loss_cpu.cpp). Per entry the math is that of
// focal::entry_terms: with z the signed logit, e = exp(-|z|), log1p(e), 1 / (1 + e), then q,
// 1 - q, softplus(+-z) and q^gamma (q * q for gamma = 2, exp(-gamma * softplus(-z)) otherwise).
// The positive column of a row is one lane whose sign is flipped (z = -x) and whose weight is
// alpha; lanes past the end of a row are masked. exp is simd.h's; log1p is the polynomial
// below: checked on every float of its domain against libm in double, it is within 1.8 ulp, and
// the entries within a few ulp of float64 (tests/test_sigmoid_focal_loss.py bounds each entry
// on every instruction set). NaN logits give NaN.
#if DRDET_SIMD_X86
#define DRDET_FOCAL_VECTOR 1
using simd::Isa;

// log1p(e) for e in [0, 1] as e * P(2e - 1), P of degree 9 fitted for the least maximum
// relative error of log1p(e) / e on [0, 1] (4e-8 with the coefficients rounded to float). The
// variable t = 2e - 1 in [-1, 1] keeps the coefficients decreasing (log1p's singularity at
// e = -1 is t = -3), so Horner's rule adds no cancellation.
constexpr float kLogP[10] = {8.1093019e-01f,  -1.4426355e-01f, 3.3152252e-02f, -8.4609622e-03f,
                             2.2897171e-03f,  -6.4282172e-04f, 1.8087735e-04f, -5.2733682e-05f,
                             2.0520896e-05f,  -6.3359876e-06f};

// -- AVX2 + FMA, 8 lanes --

DRDET_TARGET_AVX2 inline __m256 log1p_unit_avx2(__m256 e) {
  const __m256 t = _mm256_fmadd_ps(e, _mm256_set1_ps(2.0f), _mm256_set1_ps(-1.0f));
  __m256 p = _mm256_set1_ps(kLogP[9]);
  for (int k = 8; k >= 0; --k) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(kLogP[k]));
  return _mm256_mul_ps(e, p);
}

// The per-entry quantities of 8 entries with logits x; flip has the sign bit set in the lane of
// the row's positive column (z = -x there).
struct TermsAvx2 {
  __m256 z, q, one_minus_q, softplus_z, modulating;
};

template <bool kGamma2>
DRDET_TARGET_AVX2 inline TermsAvx2 terms_avx2(__m256 x, __m256 flip, __m256 neg_gamma) {
  const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
  const __m256 one = _mm256_set1_ps(1.0f);
  TermsAvx2 t;
  t.z = _mm256_xor_ps(x, flip);
  const __m256 e = simd::exp_avx2(_mm256_or_ps(t.z, sign));  // exp(-|z|)
  const __m256 log1p_e = log1p_unit_avx2(e);
  const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
  const __m256 e_inv = _mm256_mul_ps(e, inv);
  const __m256 nonneg = _mm256_cmp_ps(t.z, zero, _CMP_GE_OQ);
  t.q = _mm256_blendv_ps(e_inv, inv, nonneg);
  t.one_minus_q = _mm256_blendv_ps(inv, e_inv, nonneg);
  t.softplus_z = _mm256_add_ps(_mm256_max_ps(t.z, zero), log1p_e);
  if constexpr (kGamma2) {
    t.modulating = _mm256_mul_ps(t.q, t.q);
  } else {
    const __m256 softplus_neg_z = _mm256_add_ps(_mm256_max_ps(_mm256_xor_ps(t.z, sign), zero),
                                                log1p_e);
    t.modulating = simd::exp_avx2(_mm256_mul_ps(neg_gamma, softplus_neg_z));
  }
  return t;
}

DRDET_TARGET_AVX2 inline __m256i lane_index_avx2(int64_t c) {
  return _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(c)));
}

// Sum of the loss over rows [0, num_rows) of x (num_rows x n floats), ignored rows skipped; each
// row is summed in float lanes and added to double lanes.
template <bool kGamma2, typename label_t>
DRDET_TARGET_AVX2 double forward_rows_avx2(const float* x, const label_t* labels,
                                           int64_t num_rows, int64_t n, float gamma,
                                           float alpha) {
  const __m256 neg_gamma = _mm256_set1_ps(-gamma);
  const __m256 w_pos = _mm256_set1_ps(alpha), w_neg = _mm256_set1_ps(1.0f - alpha);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256d total = _mm256_setzero_pd();
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t label = static_cast<int64_t>(labels[r]);
    if (label < 0) continue;
    const float* row = x + r * n;
    const __m256i pos = _mm256_set1_epi32(int(label - 1));  // -1: no positive column
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < n; c += 8) {
      const __m256i idx = lane_index_avx2(c);
      const __m256 is_pos = _mm256_castsi256_ps(_mm256_cmpeq_epi32(idx, pos));
      const __m256i in_row = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
      const __m256 xv =
          c + 8 <= n ? _mm256_loadu_ps(row + c) : _mm256_maskload_ps(row + c, in_row);
      const TermsAvx2 t = terms_avx2<kGamma2>(xv, _mm256_and_ps(is_pos, sign), neg_gamma);
      const __m256 w = _mm256_blendv_ps(w_neg, w_pos, is_pos);
      const __m256 loss = _mm256_mul_ps(_mm256_mul_ps(w, t.modulating), t.softplus_z);
      acc = _mm256_add_ps(acc, _mm256_and_ps(loss, _mm256_castsi256_ps(in_row)));
    }
    total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_castps256_ps128(acc)));
    total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, total);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

// grad = scale * d loss / d x for rows [0, num_rows); ignored rows get 0.
template <bool kGamma2, typename label_t>
DRDET_TARGET_AVX2 void backward_rows_avx2(const float* x, const label_t* labels,
                                          int64_t num_rows, int64_t n, float gamma, float alpha,
                                          float scale, float* grad) {
  const __m256 neg_gamma = _mm256_set1_ps(-gamma), vgamma = _mm256_set1_ps(gamma);
  // d loss / dx = w dz/dx d/dz: -alpha for the positive (dz/dx = -1), 1 - alpha for negatives
  const __m256 w_pos = _mm256_set1_ps(-alpha * scale);
  const __m256 w_neg = _mm256_set1_ps((1.0f - alpha) * scale);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t label = static_cast<int64_t>(labels[r]);
    float* out = grad + r * n;
    if (label < 0) {
      std::memset(out, 0, sizeof(float) * n);
      continue;
    }
    const float* row = x + r * n;
    const __m256i pos = _mm256_set1_epi32(int(label - 1));
    for (int64_t c = 0; c < n; c += 8) {
      const __m256i idx = lane_index_avx2(c);
      const __m256 is_pos = _mm256_castsi256_ps(_mm256_cmpeq_epi32(idx, pos));
      const __m256i in_row = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
      const bool full = c + 8 <= n;
      const __m256 xv = full ? _mm256_loadu_ps(row + c) : _mm256_maskload_ps(row + c, in_row);
      const TermsAvx2 t = terms_avx2<kGamma2>(xv, _mm256_and_ps(is_pos, sign), neg_gamma);
      // d/dz = q^gamma (gamma (1 - q) softplus(z) + q)
      const __m256 dz = _mm256_mul_ps(
          t.modulating,
          _mm256_fmadd_ps(_mm256_mul_ps(vgamma, t.one_minus_q), t.softplus_z, t.q));
      const __m256 d = _mm256_mul_ps(_mm256_blendv_ps(w_neg, w_pos, is_pos), dz);
      if (full) {
        _mm256_storeu_ps(out + c, d);
      } else {
        _mm256_maskstore_ps(out + c, in_row, d);
      }
    }
  }
}

// -- AVX-512F, 16 lanes: the same math with mask registers --
// (GCC 12's headers pass an "undefined" vector to the masked builtins behind the unmasked
// intrinsics, which -W(maybe-)uninitialized reports once per inlined use: silenced here.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

DRDET_TARGET_AVX512 inline __m512 log1p_unit_avx512(__m512 e) {
  const __m512 t = _mm512_fmadd_ps(e, _mm512_set1_ps(2.0f), _mm512_set1_ps(-1.0f));
  __m512 p = _mm512_set1_ps(kLogP[9]);
  for (int k = 8; k >= 0; --k) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(kLogP[k]));
  return _mm512_mul_ps(e, p);
}

struct TermsAvx512 {
  __m512 q, one_minus_q, softplus_z, modulating;
};

// As terms_avx2; is_pos: the lane of the row's positive column.
template <bool kGamma2>
DRDET_TARGET_AVX512 inline TermsAvx512 terms_avx512(__m512 x, __mmask16 is_pos,
                                                    __m512 neg_gamma) {
  const __m512i sign = _mm512_set1_epi32(int(0x80000000u));
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  const __m512i xi = _mm512_castps_si512(x);
  const __m512 z = _mm512_castsi512_ps(_mm512_mask_xor_epi32(xi, is_pos, xi, sign));
  const __m512 e = simd::exp_avx512(
      _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(z), sign)));  // exp(-|z|)
  const __m512 log1p_e = log1p_unit_avx512(e);
  const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
  const __m512 e_inv = _mm512_mul_ps(e, inv);
  const __mmask16 nonneg = _mm512_cmp_ps_mask(z, zero, _CMP_GE_OQ);
  TermsAvx512 t;
  t.q = _mm512_mask_blend_ps(nonneg, e_inv, inv);
  t.one_minus_q = _mm512_mask_blend_ps(nonneg, inv, e_inv);
  t.softplus_z = _mm512_add_ps(_mm512_max_ps(z, zero), log1p_e);
  if constexpr (kGamma2) {
    t.modulating = _mm512_mul_ps(t.q, t.q);
  } else {
    const __m512 neg_z = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(z), sign));
    const __m512 softplus_neg_z = _mm512_add_ps(_mm512_max_ps(neg_z, zero), log1p_e);
    t.modulating = simd::exp_avx512(_mm512_mul_ps(neg_gamma, softplus_neg_z));
  }
  return t;
}

inline __mmask16 row_mask16(int64_t c, int64_t n) {
  return n - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - c)) - 1u);
}

// The lane of column pos (-1: none) in the block of columns [c, c + 16).
inline __mmask16 lane_mask16(int64_t pos, int64_t c) {
  const uint64_t lane = static_cast<uint64_t>(pos - c);
  return lane < 16 ? __mmask16(1u << lane) : __mmask16(0);
}

template <bool kGamma2, typename label_t>
DRDET_TARGET_AVX512 double forward_rows_avx512(const float* x, const label_t* labels,
                                               int64_t num_rows, int64_t n, float gamma,
                                               float alpha) {
  const __m512 neg_gamma = _mm512_set1_ps(-gamma);
  const __m512 w_pos = _mm512_set1_ps(alpha), w_neg = _mm512_set1_ps(1.0f - alpha);
  __m512d total = _mm512_setzero_pd();
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t label = static_cast<int64_t>(labels[r]);
    if (label < 0) continue;
    const float* row = x + r * n;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 in_row = row_mask16(c, n), is_pos = lane_mask16(label - 1, c);
      const TermsAvx512 t =
          terms_avx512<kGamma2>(_mm512_maskz_loadu_ps(in_row, row + c), is_pos, neg_gamma);
      const __m512 w = _mm512_mask_blend_ps(is_pos, w_neg, w_pos);
      acc = _mm512_mask3_fmadd_ps(_mm512_mul_ps(w, t.modulating), t.softplus_z, acc, in_row);
    }
    total = _mm512_add_pd(total, _mm512_cvtps_pd(_mm512_castps512_ps256(acc)));
    total = _mm512_add_pd(total, _mm512_cvtps_pd(_mm256_castpd_ps(
                                     _mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1))));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, total);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

template <bool kGamma2, typename label_t>
DRDET_TARGET_AVX512 void backward_rows_avx512(const float* x, const label_t* labels,
                                              int64_t num_rows, int64_t n, float gamma,
                                              float alpha, float scale, float* grad) {
  const __m512 neg_gamma = _mm512_set1_ps(-gamma), vgamma = _mm512_set1_ps(gamma);
  const __m512 w_pos = _mm512_set1_ps(-alpha * scale);
  const __m512 w_neg = _mm512_set1_ps((1.0f - alpha) * scale);
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t label = static_cast<int64_t>(labels[r]);
    float* out = grad + r * n;
    if (label < 0) {
      std::memset(out, 0, sizeof(float) * n);
      continue;
    }
    const float* row = x + r * n;
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 in_row = row_mask16(c, n), is_pos = lane_mask16(label - 1, c);
      const TermsAvx512 t =
          terms_avx512<kGamma2>(_mm512_maskz_loadu_ps(in_row, row + c), is_pos, neg_gamma);
      const __m512 dz = _mm512_mul_ps(
          t.modulating,
          _mm512_fmadd_ps(_mm512_mul_ps(vgamma, t.one_minus_q), t.softplus_z, t.q));
      _mm512_mask_storeu_ps(out + c, in_row,
                            _mm512_mul_ps(_mm512_mask_blend_ps(is_pos, w_neg, w_pos), dz));
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Picks the loop for the ISA and gamma (2: q * q, else the exp).
template <typename label_t>
double forward_rows(Isa isa, const float* x, const label_t* labels, int64_t num_rows, int64_t n,
                    float gamma, float alpha) {
  const bool gamma2 = gamma == 2.0f;
  if (isa == Isa::AVX512) {
    return gamma2 ? forward_rows_avx512<true>(x, labels, num_rows, n, gamma, alpha)
                  : forward_rows_avx512<false>(x, labels, num_rows, n, gamma, alpha);
  }
  return gamma2 ? forward_rows_avx2<true>(x, labels, num_rows, n, gamma, alpha)
                : forward_rows_avx2<false>(x, labels, num_rows, n, gamma, alpha);
}

template <typename label_t>
void backward_rows(Isa isa, const float* x, const label_t* labels, int64_t num_rows, int64_t n,
                   float gamma, float alpha, float scale, float* grad) {
  const bool gamma2 = gamma == 2.0f;
  if (isa == Isa::AVX512) {
    if (gamma2) {
      backward_rows_avx512<true>(x, labels, num_rows, n, gamma, alpha, scale, grad);
    } else {
      backward_rows_avx512<false>(x, labels, num_rows, n, gamma, alpha, scale, grad);
    }
  } else if (gamma2) {
    backward_rows_avx2<true>(x, labels, num_rows, n, gamma, alpha, scale, grad);
  } else {
    backward_rows_avx2<false>(x, labels, num_rows, n, gamma, alpha, scale, grad);
  }
}

// Rows per block when float16 / bfloat16 rows are converted to float (at least one row).
int64_t convert_block_rows(int64_t num_classes) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, num_classes));
}

// float16 <-> float conversions by F16C, which Isa::AVX2 includes (c10::Half's are scalar bit
// manipulations here; both round to nearest even).
DRDET_TARGET_AVX2 int64_t half_to_float_f16c(const c10::Half* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  return i;
}

DRDET_TARGET_AVX2 int64_t float_to_half_f16c(const float* src, int64_t n, c10::Half* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  return i;
}

template <typename scalar_t>
void to_float(const scalar_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  if constexpr (std::is_same<scalar_t, c10::Half>::value) i = half_to_float_f16c(src, n, dst);
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
void from_float(const float* src, int64_t n, scalar_t* dst) {
  int64_t i = 0;
  if constexpr (std::is_same<scalar_t, c10::Half>::value) i = float_to_half_f16c(src, n, dst);
  for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// The vector forward for float and, through a float copy of a block of rows, float16/bfloat16.
template <typename scalar_t, typename label_t>
double forward_sum_vector(Isa isa, const scalar_t* logits, const label_t* labels,
                          int64_t num_rows, int64_t num_classes, float gamma, float alpha) {
  return at::parallel_reduce(
      0, num_rows, row_grain(num_classes), 0.0,
      [&](int64_t begin, int64_t end, double partial) {
        if constexpr (std::is_same<scalar_t, float>::value) {
          return partial + forward_rows(isa, logits + begin * num_classes, labels + begin,
                                        end - begin, num_classes, gamma, alpha);
        } else {
          const int64_t block = convert_block_rows(num_classes);
          std::vector<float> buf(std::min(block, end - begin) * num_classes);
          for (int64_t r0 = begin; r0 < end; r0 += block) {
            const int64_t rows = std::min(block, end - r0);
            to_float(logits + r0 * num_classes, rows * num_classes, buf.data());
            partial += forward_rows(isa, buf.data(), labels + r0, rows, num_classes, gamma, alpha);
          }
          return partial;
        }
      },
      std::plus<double>());
}

template <typename scalar_t, typename label_t>
void backward_fill_vector(Isa isa, const scalar_t* logits, const label_t* labels,
                          scalar_t* grad, float scale, int64_t num_rows, int64_t num_classes,
                          float gamma, float alpha) {
  at::parallel_for(0, num_rows, row_grain(num_classes), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same<scalar_t, float>::value) {
      backward_rows(isa, logits + begin * num_classes, labels + begin, end - begin, num_classes,
                    gamma, alpha, scale, grad + begin * num_classes);
    } else {
      const int64_t block = convert_block_rows(num_classes);
      std::vector<float> buf(std::min(block, end - begin) * num_classes);
      for (int64_t r0 = begin; r0 < end; r0 += block) {
        const int64_t rows = std::min(block, end - r0);
        to_float(logits + r0 * num_classes, rows * num_classes, buf.data());
        backward_rows(isa, buf.data(), labels + r0, rows, num_classes, gamma, alpha, scale,
                      buf.data());  // in place: each block is read before it is written
        from_float(buf.data(), rows * num_classes, grad + r0 * num_classes);
      }
    }
  });
}
#else
#define DRDET_FOCAL_VECTOR 0
#endif

// float32/float16/bfloat16 take the vector loops where the CPU has them; float64 (and the rest)
// the scalar per-entry math.
template <typename scalar_t, typename label_t>
double forward_sum(const scalar_t* logits, const label_t* labels, int64_t num_rows,
                   int64_t num_classes, double gamma, double alpha) {
#if DRDET_FOCAL_VECTOR
  if constexpr (std::is_same<at::opmath_type<scalar_t>, float>::value) {
    const Isa isa = simd::cpu_isa();
    if (isa != Isa::Baseline) {
      return forward_sum_vector(isa, logits, labels, num_rows, num_classes, float(gamma),
                                float(alpha));
    }
  }
#endif
  return forward_sum_scalar(logits, labels, num_rows, num_classes, gamma, alpha);
}

template <typename scalar_t, typename label_t>
void backward_fill(const scalar_t* logits, const label_t* labels, scalar_t* grad, double scale,
                   int64_t num_rows, int64_t num_classes, double gamma, double alpha) {
#if DRDET_FOCAL_VECTOR
  if constexpr (std::is_same<at::opmath_type<scalar_t>, float>::value) {
    const Isa isa = simd::cpu_isa();
    if (isa != Isa::Baseline) {
      backward_fill_vector(isa, logits, labels, grad, float(scale), num_rows, num_classes,
                           float(gamma), float(alpha));
      return;
    }
  }
#endif
  backward_fill_scalar(logits, labels, grad, scale, num_rows, num_classes, gamma, alpha);
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
  // A fresh N x C buffer on every call: huge pages where it is large (cpu/huge_pages.h).
  at::Tensor grad = empty_huge_pages(logits.sizes(), logits.options());
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
