// CPU kernels of the Winograd F(4x4, 3x3) convolution (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", CVPR 2016), forward and backward: the four tile transforms,
// with batched matrix products (at::bmm) between them. drdet/layers/winograd.py computes the
// filter transform and wraps the ops in autograd.
//
// Layout: the maps are channels_last, i.e. (N, H, W, C) in memory, so every transform is a
// linear combination of contiguous channel vectors, which the compiler vectorises. Output tile
// (i, j) covers output rows 4i..4i+3 and columns 4j..4j+3; its input tile covers input rows
// 4i-1..4i+4 and columns 4j-1..4j+4 (padding 1: positions outside the image read as zero).
// Tiles of several maps (levels) are numbered level after level (Tiling below); a transformed
// tensor is (36, T, channels), entry (a * 6 + b, t, c) = element (a, b) of tile t's transform.
//
// Every transform has the form out[a][b] = sum_r sum_s L[a][r] * L[b][s] * in[r][s] with a
// constant matrix L (P x Q), computed as a pass over the tile's rows, then over its columns:
//   input transform            V  = B^T d B     L = B^T (6 x 6)
//   output transform           Y  = A^T M A     L = A^T (4 x 6)   (cropped to the image, + bias)
//   adjoint of the output one  dM = A dY A^T    L = A   (6 x 4)
//   adjoint of the input one   dd = B dV B^T    L = B   (6 x 6)   (tiles overlap: added up)
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "huge_pages.h"
#include "simd.h"

namespace drdet {
namespace {

// The tile transforms, compiled for three instruction sets; tile_kernels() picks one.
namespace isa_default {
#include "winograd_tile.h"
}  // namespace isa_default

#if DRDET_SIMD_X86
DRDET_PUSH_TARGET_AVX2
namespace isa_avx2 {
#include "winograd_tile.h"
}  // namespace isa_avx2
DRDET_POP_TARGET
DRDET_PUSH_TARGET_AVX512
namespace isa_avx512 {
#include "winograd_tile.h"
}  // namespace isa_avx512
DRDET_POP_TARGET
#endif

template <typename T>
struct TileKernels {
  using Fn = void (*)(const T* const*, T* const*, const T*, int64_t);
  Fn input, output, output_adjoint, input_adjoint;
};

#define DRDET_TILE_KERNELS(ns) \
  { ns::input_tile<T>, ns::output_tile<T>, ns::output_adjoint_tile<T>, ns::input_adjoint_tile<T> }

// The copy for the instruction set in use (simd::cpu_isa()).
template <typename T>
TileKernels<T> tile_kernels() {
#if DRDET_SIMD_X86
  switch (simd::cpu_isa()) {
    case simd::Isa::AVX512:
      return DRDET_TILE_KERNELS(isa_avx512);
    case simd::Isa::AVX2:
      return DRDET_TILE_KERNELS(isa_avx2);
    case simd::Isa::Baseline:
      break;
  }
#endif
  return DRDET_TILE_KERNELS(isa_default);
}

// The tiles of one or more feature maps (levels) with the same channels, numbered level after
// level: level l's tile (n, i, j) is t = first[l] + (n * tiles_h + i) * tiles_w + j.
struct Tiling {
  struct Level {
    int64_t batch, height, width, tiles_h, tiles_w, first;
  };
  std::vector<Level> levels;
  int64_t total = 0;

  void add(int64_t batch, int64_t height, int64_t width) {
    const int64_t th = (height + 3) / 4, tw = (width + 3) / 4;
    levels.push_back({batch, height, width, th, tw, total});
    total += batch * th * tw;
  }

  // The level, image and tile row / column of tile t.
  void locate(int64_t t, int64_t& level, int64_t& n, int64_t& i, int64_t& j) const {
    level = static_cast<int64_t>(levels.size()) - 1;
    while (levels[level].first > t) {
      --level;
    }
    const Level& g = levels[level];
    const int64_t local = t - g.first;
    j = local % g.tiles_w;
    i = (local / g.tiles_w) % g.tiles_h;
    n = local / (g.tiles_w * g.tiles_h);
  }
};

// Grain of the parallel loops over tiles: enough channel work per task.
int64_t tile_grain(int64_t channels) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, channels));
}

// Pixel (n, y, x) of an (N, H, W, C) map, or null outside it.
template <typename T>
T* pixel(T* base, const Tiling::Level& g, int64_t n, int64_t y, int64_t x, int64_t channels) {
  if (y < 0 || y >= g.height || x < 0 || x >= g.width) {
    return nullptr;
  }
  return base + ((n * g.height + y) * g.width + x) * channels;
}

// For every tile, in parallel: fn(window, entries) with the pointers to the channel vectors of
// its W x W window of the maps (from row 4i + offset, column 4j + offset; `outside` where the
// window leaves the map) and to its 36 entries in the transformed tensor (36, T, C).
template <int W, typename MapPtr, typename EntryPtr, typename F>
void for_each_tile(const Tiling& tiles, const std::vector<MapPtr>& maps, int offset,
                   MapPtr outside, EntryPtr transformed, int64_t channels, const F& fn) {
  const int64_t T = tiles.total;
  at::parallel_for(0, T, tile_grain(channels), [&](int64_t begin, int64_t end) {
    MapPtr window[W * W];
    EntryPtr entries[36];
    for (int64_t t = begin; t < end; ++t) {
      int64_t level, n, i, j;
      tiles.locate(t, level, n, i, j);
      const auto& g = tiles.levels[level];
      for (int r = 0; r < W; ++r) {
        for (int s = 0; s < W; ++s) {
          MapPtr p = pixel(maps[level], g, n, 4 * i + offset + r, 4 * j + offset + s, channels);
          window[r * W + s] = p != nullptr ? p : outside;
        }
      }
      for (int k = 0; k < 36; ++k) {
        entries[k] = transformed + (k * T + t) * channels;
      }
      fn(window, entries);
    }
  });
}

// xs[l] (N, H, W, C) -> V (36, T, C).
template <typename scalar_t>
void input_transform(const std::vector<const scalar_t*>& xs, scalar_t* v, const Tiling& tiles,
                     int64_t channels) {
  const auto kernel = tile_kernels<scalar_t>().input;
  const std::vector<scalar_t> zeros(channels, scalar_t(0));
  for_each_tile<6>(tiles, xs, -1, zeros.data(), v, channels,
                   [&](const scalar_t* const* window, scalar_t* const* entries) {
                     kernel(window, entries, nullptr, channels);
                   });
}

// M (36, T, K) -> ys[l] (N, H, W, K), plus bias (K) when given; outputs outside the maps (the
// last row / column of tiles) are not stored.
template <typename scalar_t>
void output_transform(const scalar_t* m, const scalar_t* bias,
                      const std::vector<scalar_t*>& ys, const Tiling& tiles, int64_t channels) {
  const auto kernel = tile_kernels<scalar_t>().output;
  for_each_tile<4>(tiles, ys, 0, static_cast<scalar_t*>(nullptr), m, channels,
                   [&](scalar_t* const* window, const scalar_t* const* entries) {
                     kernel(entries, window, bias, channels);
                   });
}

// dys[l] (N, H, W, K) -> dM (36, T, K): the adjoint of output_transform (without the bias).
template <typename scalar_t>
void output_transform_adjoint(const std::vector<const scalar_t*>& dys, scalar_t* dm,
                              const Tiling& tiles, int64_t channels) {
  const auto kernel = tile_kernels<scalar_t>().output_adjoint;
  const std::vector<scalar_t> zeros(channels, scalar_t(0));
  for_each_tile<4>(tiles, dys, 0, zeros.data(), dm, channels,
                   [&](const scalar_t* const* window, scalar_t* const* entries) {
                     kernel(window, entries, nullptr, channels);
                   });
}

// dV (36, T, C) -> dxs[l] (N, H, W, C) (zero-initialised by the caller): the adjoint of
// input_transform. Input tiles overlap by two rows and two columns: the tiles of one row of
// tiles are added by one task, in order, and even and odd rows of tiles in two parallel phases.
template <typename scalar_t>
void input_transform_adjoint(const scalar_t* dv, const std::vector<scalar_t*>& dxs,
                             const Tiling& tiles, int64_t channels) {
  const auto kernel = tile_kernels<scalar_t>().input_adjoint;
  const int64_t T = tiles.total;
  for (int64_t phase = 0; phase < 2; ++phase) {
    struct Row {
      int64_t level, n, i;
    };
    std::vector<Row> rows;
    for (int64_t l = 0; l < static_cast<int64_t>(tiles.levels.size()); ++l) {
      const auto& g = tiles.levels[l];
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t i = phase; i < g.tiles_h; i += 2) {
          rows.push_back({l, n, i});
        }
      }
    }
    at::parallel_for(0, static_cast<int64_t>(rows.size()), 1, [&](int64_t begin, int64_t end) {
      const scalar_t* in[36];
      scalar_t* out[36];
      for (int64_t task = begin; task < end; ++task) {
        const Row& row = rows[task];
        const auto& g = tiles.levels[row.level];
        for (int64_t j = 0; j < g.tiles_w; ++j) {
          const int64_t t = g.first + (row.n * g.tiles_h + row.i) * g.tiles_w + j;
          for (int k = 0; k < 36; ++k) {
            in[k] = dv + (k * T + t) * channels;
          }
          for (int r = 0; r < 6; ++r) {
            for (int s = 0; s < 6; ++s) {
              out[r * 6 + s] =
                  pixel(dxs[row.level], g, row.n, 4 * row.i - 1 + r, 4 * j - 1 + s, channels);
            }
          }
          kernel(in, out, nullptr, channels);
        }
      }
    });
  }
}

// ---- ops ---------------------------------------------------------------------------------------

// Checks (N, C, H, W) maps of one dtype and C; returns them channels_last (memory in the
// (N, H, W, C) order the transforms read) and their tiling.
std::vector<at::Tensor> checked_maps(const char* op, const char* name, const at::TensorList& maps,
                                     Tiling& tiles) {
  TORCH_CHECK(!maps.empty(), op, ": ", name, " is empty");
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < maps.size(); ++l) {
    const auto& x = maps[l];
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", name,
                "[", l, "] must be float32 or float64, got ", x.scalar_type());
    TORCH_CHECK(x.device().is_cpu(), op, ": ", name, "[", l, "] must be a CPU tensor, got ",
                x.device());
    TORCH_CHECK(x.dim() == 4, op, ": ", name, "[", l, "] must be (N, C, H, W), got shape ",
                x.sizes());
    TORCH_CHECK(x.scalar_type() == maps[0].scalar_type() && x.size(1) == maps[0].size(1), op,
                ": ", name, "[", l, "] has dtype ", x.scalar_type(), " and ", x.size(1),
                " channels, ", name, "[0] ", maps[0].scalar_type(), " and ", maps[0].size(1));
    tiles.add(x.size(0), x.size(2), x.size(3));
    out.push_back(x.contiguous(at::MemoryFormat::ChannelsLast));
  }
  return out;
}

// Checks the filter transform U (36, C, K) against the maps' dtype and channels.
void check_filter(const char* op, const at::Tensor& u, const at::Tensor& x0) {
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 36 && u.size(1) == x0.size(1), op,
              ": the filter transform must be (36, C, K) with C = ", x0.size(1), ", got shape ",
              u.sizes());
  TORCH_CHECK(u.scalar_type() == x0.scalar_type() && u.device().is_cpu(), op,
              ": the filter transform must be a ", x0.scalar_type(), " CPU tensor, got ",
              u.scalar_type(), " on ", u.device());
}

template <typename scalar_t, typename T>
std::vector<T*> pointers(const std::vector<at::Tensor>& maps) {
  std::vector<T*> p;
  for (const auto& m : maps) {
    p.push_back(m.data_ptr<scalar_t>());
  }
  return p;
}

std::vector<at::Tensor> new_maps(const Tiling& tiles, int64_t channels,
                                 const at::TensorOptions& options, bool zero) {
  std::vector<at::Tensor> maps;
  for (const auto& g : tiles.levels) {
    auto m = empty_huge_pages({g.batch, channels, g.height, g.width},
                              options.memory_format(at::MemoryFormat::ChannelsLast));
    maps.push_back(zero ? m.zero_() : m);
  }
  return maps;
}

// The input transform of all tiles of `maps`: V (36, T, C).
at::Tensor transformed_input(const std::vector<at::Tensor>& maps, const Tiling& tiles) {
  const int64_t channels = maps[0].size(1);
  auto v = empty_huge_pages({36, tiles.total, channels},
                            maps[0].options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(maps[0].scalar_type(), "winograd_input_transform", [&] {
    input_transform(pointers<scalar_t, const scalar_t>(maps), v.data_ptr<scalar_t>(), tiles,
                    channels);
  });
  return v;
}

// ys[l] = conv2d(xs[l], weight, bias, padding=1) with xs[l] (N, C, H, W) and U (36, C, K) the
// filter transform of `weight`: -> ys[l] (N, K, H, W), channels_last.
std::vector<at::Tensor> forward_cpu(at::TensorList xs, const at::Tensor& u,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "winograd_conv3x3";
  Tiling tiles;
  const auto maps = checked_maps(op, "xs", xs, tiles);
  check_filter(op, u, maps[0]);
  const int64_t out_channels = u.size(2);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels &&
                    bias->scalar_type() == u.scalar_type() && bias->device().is_cpu(),
                op, ": bias must be a (", out_channels, ",) CPU tensor of dtype ", u.scalar_type(),
                ", got shape ", bias->sizes(), ", ", bias->scalar_type(), ", ", bias->device());
    b = bias->contiguous();
  }
  at::Tensor m = empty_huge_pages({36, tiles.total, out_channels}, u.options());
  at::bmm_out(m, transformed_input(maps, tiles), u);
  auto ys = new_maps(tiles, out_channels, u.options(), /*zero=*/false);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "winograd_output_transform", [&] {
    output_transform(m.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                     pointers<scalar_t, scalar_t>(ys), tiles, out_channels);
  });
  return ys;
}

// Gradients of forward_cpu for the output gradients grads[l] (N, K, H, W): the input gradients
// (N, C, H, W, channels_last) when input_grad, and the gradient of U (36, C, K) when weight_grad (else an
// empty list / an empty tensor).
std::tuple<std::vector<at::Tensor>, at::Tensor> backward_cpu(at::TensorList grads,
                                                             at::TensorList xs,
                                                             const at::Tensor& u,
                                                             bool input_grad, bool weight_grad) {
  constexpr const char* op = "winograd_conv3x3_backward";
  Tiling tiles, grad_tiles;
  const auto maps = checked_maps(op, "xs", xs, tiles);
  const auto grad_maps = checked_maps(op, "grads", grads, grad_tiles);
  check_filter(op, u, maps[0]);
  const int64_t channels = u.size(1), out_channels = u.size(2);
  TORCH_CHECK(grad_maps.size() == maps.size(), op, ": ", grads.size(), " grads for ", xs.size(),
              " maps");
  for (size_t l = 0; l < maps.size(); ++l) {
    TORCH_CHECK(grad_maps[l].size(0) == maps[l].size(0) && grad_maps[l].size(1) == out_channels &&
                    grad_maps[l].size(2) == maps[l].size(2) &&
                    grad_maps[l].size(3) == maps[l].size(3) &&
                    grad_maps[l].scalar_type() == maps[l].scalar_type(),
                op, ": grads[", l, "] must be (N, K, H, W) = (", maps[l].size(0), ", ",
                out_channels, ", ", maps[l].size(2), ", ", maps[l].size(3), ") of dtype ",
                maps[l].scalar_type(), ", got ", grad_maps[l].sizes(), " ",
                grad_maps[l].scalar_type());
  }
  at::Tensor dm = empty_huge_pages({36, tiles.total, out_channels}, u.options());
  AT_DISPATCH_FLOATING_TYPES(dm.scalar_type(), "winograd_output_transform_adjoint", [&] {
    output_transform_adjoint(pointers<scalar_t, const scalar_t>(grad_maps),
                             dm.data_ptr<scalar_t>(), tiles, out_channels);
  });
  at::Tensor du = at::empty({0}, u.options());
  if (weight_grad) {
    du = at::empty({36, channels, out_channels}, u.options());
    at::bmm_out(du, transformed_input(maps, tiles).transpose(1, 2), dm);
  }
  std::vector<at::Tensor> dxs;
  if (input_grad) {
    at::Tensor dv = empty_huge_pages({36, tiles.total, channels}, u.options());
    at::bmm_out(dv, dm, u.transpose(1, 2));
    dm.reset();
    dxs = new_maps(tiles, channels, u.options(), /*zero=*/true);
    AT_DISPATCH_FLOATING_TYPES(dv.scalar_type(), "winograd_input_transform_adjoint", [&] {
      input_transform_adjoint(dv.data_ptr<scalar_t>(), pointers<scalar_t, scalar_t>(dxs), tiles,
                              channels);
    });
  }
  return {dxs, du};
}

}  // namespace
}  // namespace drdet

TORCH_LIBRARY_IMPL(drdet, CPU, m) {
  m.impl("winograd_conv3x3", &drdet::forward_cpu);
  m.impl("winograd_conv3x3_backward", &drdet::backward_cpu);
}
