// The instruction-set selector of simd.h: one process-wide choice, started from the CPU and
// the environment, changed by set_cpu_isa.
#include "simd.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace drdet {
namespace simd {
namespace {

constexpr const char* kIsaNames[kNumIsas] = {"baseline", "avx2", "avx512"};

// Whether environment variable `name` is set to something other than "" or "0".
bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

Isa isa_from_environment() {
  Isa isa = best_cpu_isa();
  if (env_flag("DRDET_NO_AVX512") && isa > Isa::AVX2) isa = Isa::AVX2;
  if (env_flag("DRDET_NO_AVX2")) isa = Isa::Baseline;
  return isa;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(isa_from_environment())};
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) { return kIsaNames[static_cast<int>(isa)]; }

bool parse_isa(const char* name, Isa& isa) {
  for (int i = 0; i < kNumIsas; ++i) {
    if (std::strcmp(name, kIsaNames[i]) == 0) {
      isa = static_cast<Isa>(i);
      return true;
    }
  }
  return false;
}

Isa best_cpu_isa() {
#if DRDET_SIMD_X86
  static const Isa best = [] {
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    if (!avx2) return Isa::Baseline;
    const bool avx512 = __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    return avx512 ? Isa::AVX512 : Isa::AVX2;
  }();
  return best;
#else
  return Isa::Baseline;
#endif
}

Isa cpu_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

bool set_cpu_isa(Isa isa) {
  if (isa > best_cpu_isa()) return false;
  current().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

namespace {
#if DRDET_SIMD_X86
DRDET_TARGET_AVX2 void exp_floats_avx2(const float* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp_avx2(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float buf[8] = {0.f};
    std::memcpy(buf, x + i, sizeof(float) * (n - i));
    _mm256_storeu_ps(buf, exp_avx2(_mm256_loadu_ps(buf)));
    std::memcpy(out + i, buf, sizeof(float) * (n - i));
  }
}

DRDET_TARGET_AVX512 void exp_floats_avx512(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(out + i, m, exp_avx512(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
#endif
}  // namespace

void exp_floats(Isa isa, const float* x, int64_t n, float* out) {
#if DRDET_SIMD_X86
  if (isa == Isa::AVX512) return exp_floats_avx512(x, n, out);
  if (isa == Isa::AVX2) return exp_floats_avx2(x, n, out);
#endif
  (void)isa;
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i]);
}

}  // namespace simd
}  // namespace drdet
