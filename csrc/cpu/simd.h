// One choice of CPU instruction set for every CPU kernel, and the vectorised exp of each set.
//
// The extension is compiled without -march (it must load on any x86-64 CPU), so the vector
// loops of the kernels are compiled for newer instruction sets with target attributes
// (DRDET_TARGET_AVX2 / DRDET_TARGET_AVX512, or the DRDET_PUSH_TARGET_* pragmas around code
// included once per set) and run only where cpu_isa() allows them:
//   Isa::Baseline  the portable code (at::vec with the build's flags, std::exp)
//   Isa::AVX2      AVX2 + FMA + F16C
//   Isa::AVX512    AVX-512 F, VL and DQ, with AVX2 + FMA + F16C
// cpu_isa() starts as the best set the CPU has (best_cpu_isa()), lowered by the environment
// variables DRDET_NO_AVX512 (at most AVX2) and DRDET_NO_AVX2 (Baseline), which are read once,
// at the first call; a variable counts when it is set to anything but "" or "0". set_cpu_isa()
// changes the choice at run time (Python: torch.ops.drdet.set_cpu_isa, drdet.layers.cpu_isa).
// Each op reads cpu_isa() once per call and passes it down.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DRDET_SIMD_X86 1
#include <immintrin.h>
#else
#define DRDET_SIMD_X86 0
#endif

namespace drdet {
namespace simd {

enum class Isa : int { Baseline = 0, AVX2 = 1, AVX512 = 2 };
constexpr int kNumIsas = 3;

// "baseline", "avx2" or "avx512".
const char* isa_name(Isa isa);
// The Isa called `name` (as isa_name spells it); false when there is none.
bool parse_isa(const char* name, Isa& isa);
// The best set this CPU supports (every set up to it is supported too).
Isa best_cpu_isa();
// The set the kernels use now.
Isa cpu_isa();
// Makes the kernels use `isa`; false (and no change) when the CPU lacks it.
bool set_cpu_isa(Isa isa);

// out[i] = exp(x[i]), i < n, with the exp of `isa` (std::exp for Baseline): for tests.
void exp_floats(Isa isa, const float* x, int64_t n, float* out);

#if DRDET_SIMD_X86
#define DRDET_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DRDET_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma,f16c")))
// The same sets for a region of code (e.g. a header included inside a namespace per set).
#define DRDET_PUSH_TARGET_AVX2 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define DRDET_PUSH_TARGET_AVX512 \
  _Pragma("GCC push_options")    \
      _Pragma("GCC target(\"avx512f,avx512vl,avx512dq,avx2,fma,f16c\")")
#define DRDET_POP_TARGET _Pragma("GCC pop_options")

// exp(x), 8 or 16 floats at a time: x = n ln2 + r with n = round(x log2(e)) and |r| <= ln2 / 2
// (ln 2 split into two floats, n ln 2 taken off by FMAs), exp(r) = 1 + r (1 + r Q(r)) with Q of
// degree 4 fitted for the least maximum relative error on [-ln2/2, ln2/2] (4e-9 before
// rounding), times 2^n built in exponent bits as 2^(n/2) 2^(n - n/2), so that n = 128 next to
// the overflow threshold scales right. Below kExpLow (ln FLT_MIN = -87.34) the result is
// flushed to 0, as with flush-to-zero arithmetic (it moves no float sum by more than 1.2e-38);
// from ln FLT_MAX = 88.72 on it is +inf; NaN stays NaN.
// Accuracy, measured on every float x whose exp lies in [FLT_MIN, FLT_MAX] against std::exp in
// double (a one-off program looping over all bit patterns from -88 to 89; 2-core AMD EPYC VM,
// 7 min): maximum relative error 7.7e-8 (0.91 ulp) for exp_avx2 and exp_avx512, which agree
// bit for bit. Of the two polynomials the kernels had, this one (the focal loss's) is the more
// accurate: the DR loss's Cephes coefficients, with ln 2 split as 0.693359375, measured 1.19e-7
// (1.26 ulp) on their domain [-87, 88.38]. tests/test_cpu_isa.py checks a dense sample.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693147182464599609375f;  // float(ln 2)
constexpr float kLn2Lo = -1.9046542999577e-09f;     // ln 2 - kLn2Hi
constexpr float kExpLow = -87.3365478515625f;       // the float just below ln(FLT_MIN)
constexpr float kExpHigh = 88.75f;                  // > ln(FLT_MAX): n = 128, result inf
constexpr float kExpQ0 = 0.49999994f, kExpQ1 = 0.16666521f, kExpQ2 = 0.04166839f,
                kExpQ3 = 0.00836871f, kExpQ4 = 0.00138146f;

DRDET_TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(kExpLow);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  // NaN stays: max and min return their second operand when one is NaN
  x = _mm256_min_ps(_mm256_set1_ps(kExpHigh), _mm256_max_ps(lo, x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 y = _mm256_set1_ps(kExpQ4);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExpQ3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExpQ2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExpQ1));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExpQ0));
  const __m256 one = _mm256_set1_ps(1.0f);
  y = _mm256_fmadd_ps(_mm256_fmadd_ps(y, r, one), r, one);
  const __m256i ni = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(_mm256_mul_ps(y, s1), s2));
}

// (GCC 12's headers pass an "undefined" vector to the masked builtins behind the unmasked
// AVX-512 intrinsics, which -W(maybe-)uninitialized reports once per inlined use: silenced.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

DRDET_TARGET_AVX512 inline __m512 exp_avx512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(kExpLow);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);  // x >= lo or NaN
  x = _mm512_min_ps(_mm512_set1_ps(kExpHigh), _mm512_max_ps(lo, x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 y = _mm512_set1_ps(kExpQ4);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpQ3));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpQ2));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpQ1));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpQ0));
  const __m512 one = _mm512_set1_ps(1.0f);
  y = _mm512_fmadd_ps(_mm512_fmadd_ps(y, r, one), r, one);
  const __m512i ni = _mm512_cvtps_epi32(n), half = _mm512_srai_epi32(ni, 1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(half, bias), 23));
  const __m512 s2 = _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(ni, half), bias), 23));
  return _mm512_maskz_mul_ps(keep, _mm512_mul_ps(y, s1), s2);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // DRDET_SIMD_X86

}  // namespace simd
}  // namespace drdet
