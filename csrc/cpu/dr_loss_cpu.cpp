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
#include <vector>

#include "dr_loss.h"

namespace drdet {
namespace dr_loss {
namespace {

using at::vec::Vectorized;

constexpr int64_t kMinChunkRows = 512;
constexpr int64_t kMaxPartials = int64_t(1) << 20;  // chunks x groups partial statistics

// Computes p = sigmoid(x) for one row of n logits into p (accumulation type).
template <typename scalar_t, typename acc_t>
void sigmoid_row(const scalar_t* x, int64_t n, acc_t* p) {
  using Vec = Vectorized<acc_t>;
  for (int64_t c = 0; c < n; ++c) p[c] = static_cast<acc_t>(x[c]);
  const Vec one(acc_t(1));
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec v = Vec::loadu(p + c);
    (one / (one + v.neg().exp())).store(p + c);
  }
  for (; c < n; ++c) p[c] = sigmoid(p[c]);
}

template <typename acc_t>
acc_t range_max(const acc_t* p, int64_t n, acc_t m) {
  using Vec = Vectorized<acc_t>;
  int64_t c = 0;
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
void range_sums(const acc_t* p, int64_t n, acc_t m, acc_t inv, acc_t& sum_w, acc_t& sum_wp) {
  using Vec = Vectorized<acc_t>;
  const Vec vm(m), vinv(inv);
  Vec vw(acc_t(0)), vwp(acc_t(0));
  int64_t c = 0;
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
SoftmaxStat<acc_t> row_negative_stat(const acc_t* p, int64_t n, int64_t pos_col, acc_t inv) {
  const int64_t n_left = pos_col < 0 ? n : pos_col;
  const int64_t right = pos_col < 0 ? n : pos_col + 1;
  if (n_left + (n - right) == 0) return empty_stat<acc_t>();
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  m = range_max(p, n_left, m);
  m = range_max(p + right, n - right, m);
  acc_t sum_w = 0, sum_wp = 0;
  range_sums(p, n_left, m, inv, sum_w, sum_wp);
  range_sums(p + right, n - right, m, inv, sum_w, sum_wp);
  return {m, sum_w, sum_wp};
}

template <typename T>
SoftmaxStat<double> to_double(const SoftmaxStat<T>& s) {
  return {double(s.max), double(s.sum_w), double(s.sum_wv)};
}

// Reduces rows into one Accum per group: row_fn(row, accum_of_its_group, scratch) for every
// row, chunk by chunk in parallel, then merge(a, b) over the chunks in order.
template <typename Accum, typename RowFn, typename MergeFn>
std::vector<Accum> reduce_rows_by_group(int64_t num_rows, int64_t num_groups,
                                        const int64_t* group_ids, int64_t scratch_size,
                                        const Accum& init, const RowFn& row_fn,
                                        const MergeFn& merge_fn) {
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
        row_fn(r, acc[group_ids ? group_ids[r] : 0], scratch.data());
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

struct PosSums {
  double sum_l;   // sum over positives of l(P- - p_j + margin)
  double sum_dl;  // sum over positives of l'(P- - p_j + margin)
};

std::tuple<at::Tensor, at::Tensor> dr_loss_forward_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& group_ids,
    int64_t num_groups, double pos_lambda, double neg_lambda, double L, double margin, double tau,
    c10::string_view smoothing, double rho, c10::string_view pairing) {
  const Params prm = check_inputs(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda,
                                  L, margin, tau, smoothing, rho, pairing);
  const int64_t N = logits.size(0), C = logits.size(1);
  check_values(labels, group_ids, C, num_groups);
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
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    const double inv_neg = 1.0 / prm.neg_lambda, inv_pos = 1.0 / prm.pos_lambda;
    // scratch holds one row of scores in acc_t (sized in doubles, which are at least as wide)
    const auto accum_row = [&](int64_t r, GroupAccum<double>& acc, double* scratch) {
      const int64_t y = lab_p[r];
      if (y < 0) return;
      acc_t* p = reinterpret_cast<acc_t*>(scratch);
      sigmoid_row(x_p + r * C, C, p);
      acc.num_valid += 1;
      acc.neg = merge(acc.neg, to_double(row_negative_stat(p, C, y - 1, acc_t(inv_neg))), inv_neg);
      if (y > 0) {
        const double py = p[y - 1];
        acc.num_pos += 1;
        acc.pos = merge(acc.pos, SoftmaxStat<double>{-py, 1.0, py}, inv_pos);
      }
    };
    const auto merge_accum = [&](const GroupAccum<double>& a, const GroupAccum<double>& b) {
      return merge(a, b, inv_neg, inv_pos);
    };
    const std::vector<GroupAccum<double>> accums = reduce_rows_by_group(
        N, num_groups, gid_p, C, empty_accum<double>(), accum_row, merge_accum);

    std::vector<PosSums> pos_sums(num_groups, PosSums{0.0, 0.0});
    if (prm.pairing == Pairing::kNegOnly) {
      std::vector<double> neg_mean(num_groups);
      for (int64_t g = 0; g < num_groups; ++g) neg_mean[g] = weighted_mean(accums[g].neg, 0.0);
      const auto positive_row = [&](int64_t r, PosSums& acc, double*) {
        const int64_t y = lab_p[r];
        if (y <= 0) return;
        const double p = sigmoid(static_cast<acc_t>(x_p[r * C + y - 1]));
        const double z = neg_mean[gid_p ? gid_p[r] : 0] - p + prm.margin;
        acc.sum_l += smooth_value(z, prm);
        acc.sum_dl += smooth_grad(z, prm);
      };
      const auto add = [](const PosSums& a, const PosSums& b) {
        return PosSums{a.sum_l + b.sum_l, a.sum_dl + b.sum_dl};
      };
      pos_sums = reduce_rows_by_group(N, num_groups, gid_p, 0, PosSums{0.0, 0.0}, positive_row,
                                      add);
    }
    for (int64_t g = 0; g < num_groups; ++g) {
      finalize_group(accums[g], pos_sums[g].sum_l, pos_sums[g].sum_dl, prm,
                     stats_p + g * kNumStats);
    }
    loss = finish_groups(stats_p, num_groups);
  });
  return {at::scalar_tensor(loss, logits.options()), stats};
}

at::Tensor dr_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                const at::Tensor& labels,
                                const std::optional<at::Tensor>& group_ids,
                                const at::Tensor& stats, double pos_lambda, double neg_lambda,
                                double L, double margin, double tau, c10::string_view smoothing,
                                double rho, c10::string_view pairing) {
  const int64_t num_groups = stats.size(0);
  const Params prm = check_inputs(logits, labels, group_ids, num_groups, pos_lambda, neg_lambda,
                                  L, margin, tau, smoothing, rho, pairing);
  TORCH_CHECK(stats.dim() == 2 && stats.size(1) == kNumStats &&
                  stats.scalar_type() == at::kDouble,
              "dr_loss_backward: stats must be the (G, ", int(kNumStats),
              ") float64 tensor of the forward, got ", stats.sizes(), " ", stats.scalar_type());
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
  at::Tensor grad = at::empty_like(x);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dr_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<acc_t>;
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* g_p = grad.data_ptr<scalar_t>();
    const acc_t inv_neg = acc_t(1.0 / prm.neg_lambda);
    at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(C);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t y = lab_p[r];
        scalar_t* out = g_p + r * C;
        if (y < 0) {
          std::fill(out, out + C, scalar_t(0));
          continue;
        }
        const GroupGrad<acc_t> gg =
            load_group_grad(st_p + (gid_p ? gid_p[r] : 0) * kNumStats, acc_t(grad_out));
        const scalar_t* xr = x_p + r * C;
        for (int64_t c = 0; c < C; ++c) buf[c] = static_cast<acc_t>(xr[c]);
        // every column as a negative (vectorised), then the positive column fixed up
        const Vec one(acc_t(1)), vmax(gg.neg_max), vinv(inv_neg), vmean(gg.neg_mean);
        const Vec vscale(gg.coef_neg * gg.inv_neg_sum_w);
        int64_t c = 0;
        for (; c + Vec::size() <= C; c += Vec::size()) {
          const Vec p = one / (one + Vec::loadu(buf.data() + c).neg().exp());
          const Vec q = ((p - vmax) * vinv).exp();
          (vscale * q * (one + (p - vmean) * vinv) * p * (one - p)).store(buf.data() + c);
        }
        for (; c < C; ++c) buf[c] = grad_logit(buf[c], false, gg, prm);
        if (y > 0) buf[y - 1] = grad_logit(static_cast<acc_t>(xr[y - 1]), true, gg, prm);
        for (c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(buf[c]);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(drdet, CPU, m) {
  m.impl("dr_loss_forward", &dr_loss_forward_cpu);
  m.impl("dr_loss_backward", &dr_loss_backward_cpu);
}

}  // namespace dr_loss
}  // namespace drdet
