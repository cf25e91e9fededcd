// CPU kernels of the DR loss. The forward makes one pass over the logits: rows are split into
// fixed-size chunks (so the result does not depend on the number of threads), each chunk keeps
// per-group softmax statistics, and the chunks are merged in order. The backward is one
// element-wise pass given the per-group statistics saved by the forward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "dr_loss.h"
#include "huge_pages.h"
#include "simd.h"

namespace drdet {
namespace dr_loss {
namespace {

using at::vec::Vectorized;
using simd::Isa;

constexpr int64_t kMinChunkRows = 512;
constexpr int64_t kMaxPartials = int64_t(1) << 20;  // chunks x groups partial statistics
// Softmax shift. Scores lie in [0, 1] (p for negatives, -p in [-1, 0] for positives), so when
// 1 / lambda <= kMaxFixedShiftInv the fixed shift 1 (negatives) or 0 (positives) keeps every
// weight exp((s - shift) / lambda) in [exp(-64), 1]: no overflow, no underflow in float, and the
// statistics of all rows and chunks share one shift, so they add up without per-row maxima or
// rescaling exps. A smaller lambda takes the per-row maximum as the shift (online softmax).
constexpr double kMaxFixedShiftInv = 64.0;

// ---- AVX2 + FMA and AVX-512 paths for float, chosen at run time (cpu/simd.h) ----------------
// torch's extension build does not compile for AVX2, so at::vec::Vectorized<float> falls back to
// a scalar std::exp here. These loops are compiled for AVX2/FMA and AVX-512 with target
// attributes and used only where simd::cpu_isa() allows them; exp is simd.h's.
#if DRDET_SIMD_X86
#define DRDET_HAVE_AVX2_PATH 1
using simd::exp_avx2;
using simd::exp_avx512;

DRDET_TARGET_AVX2 inline __m256 sigmoid_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

DRDET_TARGET_AVX2 inline float hsum_avx2(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// p[c] = sigmoid(x[c]); x may alias p. Returns the number of columns done (a multiple of 8).
DRDET_TARGET_AVX2 int64_t sigmoid_row_avx2(const float* x, int64_t n, float* p) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(p + c, sigmoid_avx2(_mm256_loadu_ps(x + c)));
  return c;
}

DRDET_TARGET_AVX2 int64_t range_max_avx2(const float* p, int64_t n, float& m) {
  if (n < 8) return 0;
  __m256 vm = _mm256_loadu_ps(p);
  int64_t c = 8;
  for (; c + 8 <= n; c += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(p + c));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vm);
  for (float v : lanes) m = std::max(m, v);
  return c;
}

DRDET_TARGET_AVX2 int64_t range_sums_avx2(const float* p, int64_t n, float m, float inv,
                                          float& sum_w, float& sum_wp) {
  const __m256 vm = _mm256_set1_ps(m), vinv = _mm256_set1_ps(inv);
  __m256 vw = _mm256_setzero_ps(), vwp = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(p + c);
    const __m256 w = exp_avx2(_mm256_mul_ps(_mm256_sub_ps(v, vm), vinv));
    vw = _mm256_add_ps(vw, w);
    vwp = _mm256_fmadd_ps(w, v, vwp);
  }
  sum_w += hsum_avx2(vw);
  sum_wp += hsum_avx2(vwp);
  return c;
}

// Adds w = exp((p - 1) * inv) and w * p, p = sigmoid(x), of the lanes of keep (all lanes when
// kMasked is false) to the per-row vector sums.
template <bool kMasked>
DRDET_TARGET_AVX2 inline void negative_block_avx2(__m256 x, __m256 keep, __m256 vinv,
                                                  __m256& vw, __m256& vwp) {
  const __m256 p = sigmoid_avx2(x);
  __m256 w = exp_avx2(_mm256_mul_ps(_mm256_sub_ps(p, _mm256_set1_ps(1.0f)), vinv));
  if constexpr (kMasked) w = _mm256_and_ps(w, keep);
  vw = _mm256_add_ps(vw, w);
  vwp = _mm256_fmadd_ps(w, p, vwp);
}

// The fused forward of one row with the fixed softmax shift 1 (see kMaxFixedShiftInv): adds,
// over the columns c != skip (skip = -1: none), w = exp((p - 1) * inv) and w * p with
// p = sigmoid(x[c]) into sum_w and sum_wp. One pass over the row, the tail included (masked
// load); the sums are float vectors reduced once per row.
DRDET_TARGET_AVX2 void negative_row_sums_avx2(const float* x, int64_t n, int64_t skip,
                                              float inv, float& sum_w, float& sum_wp) {
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256 vw = _mm256_setzero_ps(), vwp = _mm256_setzero_ps();
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i vskip = _mm256_set1_epi32(int(skip));
  int64_t c = 0;
  if (skip < 0) {
    for (; c + 8 <= n; c += 8) {
      negative_block_avx2<false>(_mm256_loadu_ps(x + c), _mm256_setzero_ps(), vinv, vw, vwp);
    }
  } else {
    for (; c + 8 <= n; c += 8) {
      const __m256i idx = _mm256_add_epi32(lanes, _mm256_set1_epi32(int(c)));
      const __m256 keep = _mm256_castsi256_ps(
          _mm256_xor_si256(_mm256_cmpeq_epi32(idx, vskip), _mm256_set1_epi32(-1)));
      negative_block_avx2<true>(_mm256_loadu_ps(x + c), keep, vinv, vw, vwp);
    }
  }
  if (c < n) {
    const __m256i idx = _mm256_add_epi32(lanes, _mm256_set1_epi32(int(c)));
    const __m256i in_row = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
    const __m256 keep = _mm256_castsi256_ps(
        _mm256_andnot_si256(_mm256_cmpeq_epi32(idx, vskip), in_row));
    negative_block_avx2<true>(_mm256_maskload_ps(x + c, in_row), keep, vinv, vw, vwp);
  }
  sum_w = hsum_avx2(vw);
  sum_wp = hsum_avx2(vwp);
}

// out[c] = d loss / d x[c] treating every column as a negative; returns the columns done.
DRDET_TARGET_AVX2 int64_t negative_grad_row_avx2(const float* x, int64_t n, float neg_max,
                                                 float inv, float neg_mean, float scale,
                                                 float* out) {
  const __m256 one = _mm256_set1_ps(1.0f), vmax = _mm256_set1_ps(neg_max);
  const __m256 vinv = _mm256_set1_ps(inv), vmean = _mm256_set1_ps(neg_mean);
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 p = sigmoid_avx2(_mm256_loadu_ps(x + c));
    const __m256 q = exp_avx2(_mm256_mul_ps(_mm256_sub_ps(p, vmax), vinv));
    const __m256 lin = _mm256_fmadd_ps(_mm256_sub_ps(p, vmean), vinv, one);
    const __m256 dp = _mm256_mul_ps(_mm256_mul_ps(vscale, q), lin);
    _mm256_storeu_ps(out + c, _mm256_mul_ps(dp, _mm256_mul_ps(p, _mm256_sub_ps(one, p))));
  }
  return c;
}

// ---- AVX-512 variants of the two fused loops (same math as above, 16 lanes, masked tails) ----
DRDET_TARGET_AVX512 inline __m512 sigmoid_avx512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one,
                       _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

DRDET_TARGET_AVX512 inline float hsum_avx512(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.f;
  for (int i = 0; i < 16; i += 4) s += (lanes[i] + lanes[i + 1]) + (lanes[i + 2] + lanes[i + 3]);
  return s;
}

inline __mmask16 block_mask16(int64_t c, int64_t n) {
  return n - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - c)) - 1u);
}

// negative_row_sums_avx2 with 16 lanes.
DRDET_TARGET_AVX512 void negative_row_sums_avx512(const float* x, int64_t n, int64_t skip,
                                                  float inv, float& sum_w, float& sum_wp) {
  const __m512 one = _mm512_set1_ps(1.0f), vinv = _mm512_set1_ps(inv);
  __m512 vw = _mm512_setzero_ps(), vwp = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 in_row = block_mask16(c, n);
    __mmask16 keep = in_row;
    if (skip >= c && skip < c + 16) keep &= __mmask16(~(1u << (skip - c)));
    const __m512 p = sigmoid_avx512(_mm512_maskz_loadu_ps(in_row, x + c));
    const __m512 w = exp_avx512(_mm512_mul_ps(_mm512_sub_ps(p, one), vinv));
    vw = _mm512_mask_add_ps(vw, keep, vw, w);
    vwp = _mm512_mask3_fmadd_ps(w, p, vwp, keep);
  }
  sum_w = hsum_avx512(vw);
  sum_wp = hsum_avx512(vwp);
}

// negative_grad_row_avx2 with 16 lanes; does every column (returns n).
DRDET_TARGET_AVX512 int64_t negative_grad_row_avx512(const float* x, int64_t n,
                                                     float neg_max, float inv, float neg_mean,
                                                     float scale, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f), vmax = _mm512_set1_ps(neg_max);
  const __m512 vinv = _mm512_set1_ps(inv), vmean = _mm512_set1_ps(neg_mean);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 in_row = block_mask16(c, n);
    const __m512 p = sigmoid_avx512(_mm512_maskz_loadu_ps(in_row, x + c));
    const __m512 q = exp_avx512(_mm512_mul_ps(_mm512_sub_ps(p, vmax), vinv));
    const __m512 lin = _mm512_fmadd_ps(_mm512_sub_ps(p, vmean), vinv, one);
    const __m512 dp = _mm512_mul_ps(_mm512_mul_ps(vscale, q), lin);
    _mm512_mask_storeu_ps(out + c, in_row,
                          _mm512_mul_ps(dp, _mm512_mul_ps(p, _mm512_sub_ps(one, p))));
  }
  return n;
}
#else
#define DRDET_HAVE_AVX2_PATH 0
#endif

// Computes p = sigmoid(x) for one row of n logits into p (accumulation type).
template <typename scalar_t, typename acc_t>
void sigmoid_row(Isa isa, const scalar_t* x, int64_t n, acc_t* p) {
  using Vec = Vectorized<acc_t>;
  const acc_t* src = p;
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    src = x;
  } else {
    for (int64_t c = 0; c < n; ++c) p[c] = static_cast<acc_t>(x[c]);
  }
  int64_t c = 0;
#if DRDET_HAVE_AVX2_PATH
  if constexpr (std::is_same<acc_t, float>::value) {
    if (isa >= Isa::AVX2) c = sigmoid_row_avx2(src, n, p);
  }
#endif
  const Vec one(acc_t(1));
  for (; c + Vec::size() <= n; c += Vec::size()) {
    (one / (one + Vec::loadu(src + c).neg().exp())).store(p + c);
  }
  for (; c < n; ++c) p[c] = sigmoid(src[c]);
}

template <typename acc_t>
acc_t range_max(Isa isa, const acc_t* p, int64_t n, acc_t m) {
  using Vec = Vectorized<acc_t>;
  int64_t c = 0;
#if DRDET_HAVE_AVX2_PATH
  if constexpr (std::is_same<acc_t, float>::value) {
    if (isa >= Isa::AVX2) {
      for (c = range_max_avx2(p, n, m); c < n; ++c) m = std::max(m, p[c]);
      return m;
    }
  }
#endif
  if (n >= Vec::size()) {
    Vec vm = Vec::loadu(p);
    for (c = Vec::size(); c + Vec::size() <= n; c += Vec::size()) {
      vm = at::vec::maximum(vm, Vec::loadu(p + c));
    }
    acc_t lanes[Vec::size()];
    vm.store(lanes);
    for (int64_t i = 0; i < Vec::size(); ++i) m = std::max(m, lanes[i]);
  }
  for (; c < n; ++c) m = std::max(m, p[c]);
  return m;
}

// Adds sum_c exp((p_c - m) * inv) and sum_c exp((p_c - m) * inv) * p_c over p[0:n).
template <typename acc_t>
void range_sums(Isa isa, const acc_t* p, int64_t n, acc_t m, acc_t inv, acc_t& sum_w,
                acc_t& sum_wp) {
  using Vec = Vectorized<acc_t>;
  const Vec vm(m), vinv(inv);
  Vec vw(acc_t(0)), vwp(acc_t(0));
  int64_t c = 0;
#if DRDET_HAVE_AVX2_PATH
  if constexpr (std::is_same<acc_t, float>::value) {
    if (isa >= Isa::AVX2) c = range_sums_avx2(p, n, m, inv, sum_w, sum_wp);
  }
#endif
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec v = Vec::loadu(p + c);
    const Vec w = ((v - vm) * vinv).exp();
    vw = vw + w;
    vwp = vwp + w * v;
  }
  acc_t lw[Vec::size()], lwp[Vec::size()];
  vw.store(lw);
  vwp.store(lwp);
  for (int64_t i = 0; i < Vec::size(); ++i) {
    sum_w += lw[i];
    sum_wp += lwp[i];
  }
  for (; c < n; ++c) {
    const acc_t w = math_exp((p[c] - m) * inv);
    sum_w += w;
    sum_wp += w * p[c];
  }
}

// Softmax statistic of the negative scores of one row: every column but pos_col (-1: none).
template <typename acc_t>
SoftmaxStat<acc_t> row_negative_stat(Isa isa, const acc_t* p, int64_t n, int64_t pos_col,
                                     acc_t inv) {
  const int64_t n_left = pos_col < 0 ? n : pos_col;
  const int64_t right = pos_col < 0 ? n : pos_col + 1;
  if (n_left + (n - right) == 0) return empty_stat<acc_t>();
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  m = range_max(isa, p, n_left, m);
  m = range_max(isa, p + right, n - right, m);
  acc_t sum_w = 0, sum_wp = 0;
  range_sums(isa, p, n_left, m, inv, sum_w, sum_wp);
  range_sums(isa, p + right, n - right, m, inv, sum_w, sum_wp);
  return {m, sum_w, sum_wp};
}

// The row as float: x itself for float input, else converted into buf.
inline const float* float_row(const float* x, int64_t, float*) { return x; }
template <typename scalar_t>
const float* float_row(const scalar_t* x, int64_t n, float* buf) {
  for (int64_t c = 0; c < n; ++c) buf[c] = static_cast<float>(x[c]);
  return buf;
}

template <typename T>
SoftmaxStat<double> to_double(const SoftmaxStat<T>& s) {
  return {double(s.max), double(s.sum_w), double(s.sum_wv)};
}

// Reduces rows into one Accum per group: row_fn(row, accum_of_its_group, scratch) for every
// row, chunk by chunk in parallel, then merge(a, b) over the chunks in order. A row whose
// group id is outside [0, num_groups) is skipped and sets bad_group.
template <typename Accum, typename RowFn, typename MergeFn>
std::vector<Accum> reduce_rows_by_group(int64_t num_rows, int64_t num_groups,
                                        const int64_t* group_ids, int64_t scratch_size,
                                        const Accum& init, const RowFn& row_fn,
                                        const MergeFn& merge_fn, std::atomic<bool>& bad_group) {
  const int64_t max_chunks = std::max<int64_t>(1, kMaxPartials / num_groups);
  const int64_t chunk_rows =
      std::max(kMinChunkRows, (num_rows + max_chunks - 1) / max_chunks);
  const int64_t num_chunks = (num_rows + chunk_rows - 1) / chunk_rows;
  std::vector<Accum> partial(num_chunks * num_groups, init);
  at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> scratch(scratch_size);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Accum* acc = partial.data() + chunk * num_groups;
      const int64_t row_end = std::min(num_rows, (chunk + 1) * chunk_rows);
      for (int64_t r = chunk * chunk_rows; r < row_end; ++r) {
        const int64_t g = group_ids ? group_ids[r] : 0;
        if (g < 0 || g >= num_groups) {
          bad_group.store(true, std::memory_order_relaxed);
          continue;
        }
        row_fn(r, acc[g], scratch.data());
      }
    }
  });
  std::vector<Accum> result(num_groups, init);
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    for (int64_t g = 0; g < num_groups; ++g) {
      result[g] = merge_fn(result[g], partial[chunk * num_groups + g]);
    }
  }
  return result;
}

// Writes d loss / d x of one non-ignored row (positive column pos_col, -1 if none): every
// column as a negative (vectorised), then the positive column. buf: n scratch values.
template <typename scalar_t, typename acc_t>
void backward_row(Isa isa, const scalar_t* x, int64_t n, int64_t pos_col,
                  const GroupGrad<acc_t>& gg, const Params& prm, acc_t* buf, scalar_t* out) {
  using Vec = Vectorized<acc_t>;
  constexpr bool kSameType = std::is_same<scalar_t, acc_t>::value;
  const acc_t* src = buf;
  acc_t* dst = buf;
  if constexpr (kSameType) {
    src = x;
    dst = out;
  } else {
    for (int64_t c = 0; c < n; ++c) buf[c] = static_cast<acc_t>(x[c]);
  }
  const acc_t inv = acc_t(1.0 / prm.neg_lambda);
  int64_t c = 0;
#if DRDET_HAVE_AVX2_PATH
  if constexpr (std::is_same<acc_t, float>::value) {
    if (isa == Isa::AVX512) {
      c = negative_grad_row_avx512(src, n, gg.neg_max, inv, gg.neg_mean,
                                   gg.coef_neg * gg.inv_neg_sum_w, dst);
    } else if (isa == Isa::AVX2) {
      c = negative_grad_row_avx2(src, n, gg.neg_max, inv, gg.neg_mean,
                                 gg.coef_neg * gg.inv_neg_sum_w, dst);
    }
  }
#endif
  const Vec one(acc_t(1)), vmax(gg.neg_max), vinv(inv), vmean(gg.neg_mean);
  const Vec vscale(gg.coef_neg * gg.inv_neg_sum_w);
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec p = one / (one + Vec::loadu(src + c).neg().exp());
    const Vec q = ((p - vmax) * vinv).exp();
    (vscale * q * (one + (p - vmean) * vinv) * p * (one - p)).store(dst + c);
  }
  for (; c < n; ++c) dst[c] = grad_logit(src[c], false, gg, prm);
  if (pos_col >= 0) dst[pos_col] = grad_logit(static_cast<acc_t>(x[pos_col]), true, gg, prm);
  if constexpr (!kSameType) {
    for (c = 0; c < n; ++c) out[c] = static_cast<scalar_t>(buf[c]);
  }
}

// The gradient is a fresh N x C buffer on every call: empty_huge_pages (cpu/huge_pages.h).

struct PosSums {
  double sum_l;   // sum over positives of l(P- - p_j + margin)
  double sum_dl;  // sum over positives of l'(P- - p_j + margin)
};

// What the forward's row functions read: the logits (N, C), labels, group ids (nullptr: one
// group), the loss's settings, and the path chosen for this dtype and machine.
template <typename scalar_t>
struct ForwardRows {
  const scalar_t* x;
  const int64_t* labels;
  const int64_t* group_ids;
  int64_t num_rows;
  int64_t num_classes;
  int64_t num_groups;
  Params prm;
  double inv_neg;
  double inv_pos;
  Isa isa;
  // The fused float path: one vectorised pass per row with the fixed shift (the negatives'
  // statistic has max = 1 for every row, so rows add up); otherwise the scores of a row go to
  // scratch and are reduced with the row's maximum as shift, then merged.
  bool fused;
  bool fixed_pos;  // the positives' weights with the fixed shift 0
};

template <typename scalar_t>
ForwardRows<scalar_t> forward_rows(const at::Tensor& x, const int64_t* labels,
                                   const int64_t* group_ids, int64_t num_groups,
                                   const Params& prm) {
  using acc_t = at::opmath_type<scalar_t>;
  ForwardRows<scalar_t> rows;
  rows.x = x.data_ptr<scalar_t>();
  rows.labels = labels;
  rows.group_ids = group_ids;
  rows.num_rows = x.size(0);
  rows.num_classes = x.size(1);
  rows.num_groups = num_groups;
  rows.prm = prm;
  rows.inv_neg = 1.0 / prm.neg_lambda;
  rows.inv_pos = 1.0 / prm.pos_lambda;
  rows.isa = simd::cpu_isa();
  rows.fused = DRDET_HAVE_AVX2_PATH && std::is_same<acc_t, float>::value &&
               rows.isa >= Isa::AVX2 && rows.inv_neg <= kMaxFixedShiftInv;
  rows.fixed_pos = rows.inv_pos <= kMaxFixedShiftInv;
  return rows;
}

// Adds the negative scores of row xr (positive column y - 1; y = 0: none) to acc.neg and
// returns the row's positive score (0 when y = 0). scratch holds one row of scores in acc_t
// (sized in doubles, which are at least as wide).
template <typename scalar_t>
double add_row_negatives(const ForwardRows<scalar_t>& rows, const scalar_t* xr, int64_t y,
                         GroupAccum<double>& acc, double* scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = rows.num_classes;
#if DRDET_HAVE_AVX2_PATH
  if (rows.fused) {
    const float* xf = float_row(xr, C, reinterpret_cast<float*>(scratch));
    float sum_w = 0.f, sum_wp = 0.f;
    if (rows.isa == Isa::AVX512) {
      negative_row_sums_avx512(xf, C, y - 1, float(rows.inv_neg), sum_w, sum_wp);
    } else {
      negative_row_sums_avx2(xf, C, y - 1, float(rows.inv_neg), sum_w, sum_wp);
    }
    if (sum_w != 0.f) {  // 0: no negative column (NaN propagates)
      acc.neg.max = 1.0;
      acc.neg.sum_w += sum_w;
      acc.neg.sum_wv += sum_wp;
    }
    return y > 0 ? double(sigmoid(xf[y - 1])) : 0.0;
  }
#endif
  acc_t* p = reinterpret_cast<acc_t*>(scratch);
  sigmoid_row(rows.isa, xr, C, p);
  const acc_t inv_neg = acc_t(rows.inv_neg);
  acc.neg = merge(acc.neg, to_double(row_negative_stat(rows.isa, p, C, y - 1, inv_neg)),
                  rows.inv_neg);
  return y > 0 ? double(p[y - 1]) : 0.0;
}

// Adds one positive score py to acc.pos: with the fixed shift 0 (weight exp(-p / lambda+)) or
// as an online-softmax merge.
inline void add_positive(GroupAccum<double>& acc, double py, double inv_pos, bool fixed_pos) {
  acc.num_pos += 1;
  if (fixed_pos) {
    const double w = math_exp(-py * inv_pos);
    acc.pos.max = 0.0;
    acc.pos.sum_w += w;
    acc.pos.sum_wv += w * py;
  } else {
    acc.pos = merge(acc.pos, SoftmaxStat<double>{-py, 1.0, py}, inv_pos);
  }
}

// Adds row r to its group's accumulator; an ignored row (label -1) adds nothing, a label
// outside [-1, C] sets bad_value.
template <typename scalar_t>
void accumulate_row(const ForwardRows<scalar_t>& rows, int64_t r, GroupAccum<double>& acc,
                    double* scratch, std::atomic<bool>& bad_value) {
  const int64_t y = rows.labels[r];
  if (y < 0 || y > rows.num_classes) {
    if (y != -1) bad_value.store(true, std::memory_order_relaxed);
    return;
  }
  acc.num_valid += 1;
  const double py = add_row_negatives(rows, rows.x + r * rows.num_classes, y, acc, scratch);
  if (y > 0) add_positive(acc, py, rows.inv_pos, rows.fixed_pos);
}

// NegOnly pairing: per group, the sums over its positives of l(P- - p_j + margin) and of l'.
template <typename scalar_t>
std::vector<PosSums> negonly_sums(const ForwardRows<scalar_t>& rows,
                                  const std::vector<GroupAccum<double>>& accums,
                                  std::atomic<bool>& bad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<double> neg_mean(rows.num_groups);
  for (int64_t g = 0; g < rows.num_groups; ++g) neg_mean[g] = weighted_mean(accums[g].neg, 0.0);
  const auto positive_row = [&](int64_t r, PosSums& acc, double*) {
    const int64_t y = rows.labels[r];
    if (y <= 0) return;
    const double p = sigmoid(static_cast<acc_t>(rows.x[r * rows.num_classes + y - 1]));
    const double z = neg_mean[rows.group_ids ? rows.group_ids[r] : 0] - p + rows.prm.margin;
    acc.sum_l += smooth_value(z, rows.prm);
    acc.sum_dl += smooth_grad(z, rows.prm);
  };
  const auto add = [](const PosSums& a, const PosSums& b) {
    return PosSums{a.sum_l + b.sum_l, a.sum_dl + b.sum_dl};
  };
  return reduce_rows_by_group(rows.num_rows, rows.num_groups, rows.group_ids, 0,
                              PosSums{0.0, 0.0}, positive_row, add, bad_value);
}

// The forward for one dtype: the per-group statistics into stats_p (num_groups x kNumStats);
// returns the loss. labels and group_ids (the tensors as given) name a bad value in the error.
template <typename scalar_t>
double forward_groups(const ForwardRows<scalar_t>& rows, const at::Tensor& labels,
                      const std::optional<at::Tensor>& group_ids, double* stats_p) {
  // The value checks (labels in [-1, C], group ids in [0, num_groups)) are made in the row loop
  // rather than by extra passes over the (N,) tensors; check_values reports a failure.
  std::atomic<bool> bad_value{false};
  const auto accum_row = [&](int64_t r, GroupAccum<double>& acc, double* scratch) {
    accumulate_row(rows, r, acc, scratch, bad_value);
  };
  const auto merge_accum = [&](const GroupAccum<double>& a, const GroupAccum<double>& b) {
    return merge(a, b, rows.inv_neg, rows.inv_pos);
  };
  const std::vector<GroupAccum<double>> accums =
      reduce_rows_by_group(rows.num_rows, rows.num_groups, rows.group_ids, rows.num_classes,
                           empty_accum<double>(), accum_row, merge_accum, bad_value);
  if (bad_value.load()) {
    check_values(labels, group_ids, rows.num_classes, rows.num_groups);  // throws
    TORCH_CHECK(false, "dr_loss: labels or group_ids out of range");
  }
  std::vector<PosSums> pos_sums(rows.num_groups, PosSums{0.0, 0.0});
  if (rows.prm.pairing == Pairing::kNegOnly) pos_sums = negonly_sums(rows, accums, bad_value);
  for (int64_t g = 0; g < rows.num_groups; ++g) {
    finalize_group(accums[g], pos_sums[g].sum_l, pos_sums[g].sum_dl, rows.prm,
                   stats_p + g * kNumStats);
  }
  return finish_groups(stats_p, rows.num_groups);
}

std::tuple<at::Tensor, at::Tensor> dr_loss_forward_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
    int64_t num_groups, double pos_lambda, double neg_lambda, double L, double margin, double tau,
    c10::string_view smoothing, double rho, c10::string_view pairing) {
  const Params prm = check_inputs(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda,
                                  L, margin, tau, smoothing, rho, pairing);
  const at::Tensor x = logits.contiguous();
  const at::Tensor lab = labels.to(at::kLong).contiguous();
  const at::Tensor gid =
      group_ids.has_value() ? group_ids->to(at::kLong).contiguous() : at::Tensor();
  const int64_t* lab_p = lab.data_ptr<int64_t>();
  const int64_t* gid_p = gid.defined() ? gid.data_ptr<int64_t>() : nullptr;
  at::Tensor stats = at::zeros({num_groups, kNumStats}, logits.options().dtype(at::kDouble));
  double* stats_p = stats.data_ptr<double>();
  double loss = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dr_loss_forward_cpu",
                                  [&] {
    const auto rows = forward_rows<scalar_t>(x, lab_p, gid_p, num_groups, prm);
    loss = forward_groups(rows, labels, group_ids, stats_p);
  });
  return {at::scalar_tensor(loss, logits.options().dtype(loss_dtype(logits))), stats};
}

at::Tensor dr_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                const at::Tensor& labels,
                                const std::optional<at::Tensor>& group_ids,
                                const at::Tensor& stats, double pos_lambda, double neg_lambda,
                                double L, double margin, double tau, c10::string_view smoothing,
                                double rho, c10::string_view pairing) {
  const Params prm = check_backward_inputs(grad_loss, logits, labels, group_ids, stats,
                                           pos_lambda, neg_lambda, L, margin, tau, smoothing,
                                           rho, pairing);
  const int64_t num_groups = stats.size(0);
  // Labels outside [-1, C] and group ids outside [0, G) are caught in the row loop (such a row
  // is written as zeros, never indexed with) and reported by check_values after it.
  std::atomic<bool> bad_value{false};
  const int64_t N = logits.size(0), C = logits.size(1);
  const at::Tensor x = logits.contiguous();
  const at::Tensor lab = labels.to(at::kLong).contiguous();
  const at::Tensor gid =
      group_ids.has_value() ? group_ids->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor st = stats.contiguous();
  const int64_t* lab_p = lab.data_ptr<int64_t>();
  const int64_t* gid_p = gid.defined() ? gid.data_ptr<int64_t>() : nullptr;
  const double* st_p = st.data_ptr<double>();
  const double grad_out = grad_loss.item<double>();
  at::Tensor grad = empty_huge_pages(x.sizes(), x.options());
  const Isa isa = simd::cpu_isa();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dr_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* g_p = grad.data_ptr<scalar_t>();
    std::vector<GroupGrad<acc_t>> group_grad(num_groups);
    for (int64_t g = 0; g < num_groups; ++g) {
      group_grad[g] = load_group_grad(st_p + g * kNumStats, acc_t(grad_out));
    }
    at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(C);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t y = lab_p[r];
        const int64_t g = gid_p ? gid_p[r] : 0;
        scalar_t* out = g_p + r * C;
        if (y < 0 || y > C || g < 0 || g >= num_groups) {
          std::fill(out, out + C, scalar_t(0));
          if (y != -1) bad_value.store(true, std::memory_order_relaxed);
          continue;
        }
        backward_row(isa, x_p + r * C, C, y - 1, group_grad[g], prm, buf.data(), out);
      }
    });
  });
  if (bad_value.load()) {
    check_values(labels, group_ids, C, num_groups);  // throws with the offending range
    TORCH_CHECK(false, "dr_loss_backward: labels or group_ids out of range");
  }
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(drdet, CPU, m) {
  m.impl("dr_loss_forward", &dr_loss_forward_cpu);
  m.impl("dr_loss_backward", &dr_loss_backward_cpu);
}

}  // namespace dr_loss
}  // namespace drdet
