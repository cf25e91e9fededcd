// The per-tile arithmetic of the Winograd F(4x4, 3x3) transforms (see winograd_cpu.cpp).
// No include guard on purpose: winograd_cpu.cpp includes this file once per instruction set,
// each time inside its own namespace and `#pragma GCC target` region, and picks one of the
// copies at run time. Each 2D transform is a 1D transform of the tile's rows into a local
// buffer, then of that buffer's columns; every loop runs over a block of contiguous channels.
//
// F(4x4, 3x3) with the interpolation points 0, 1, -1, 2, -2 and infinity (G, the filter
// transform, is in drdet/layers/winograd.py):
//         | 4  0 -5  0  1  0 |              | 1  1  1  1  1  0 |
//         | 0 -4 -4  1  1  0 |       A^T =  | 0  1 -1  2 -2  0 |
//   B^T = | 0  4 -4 -1  1  0 |              | 0  1  1  4  4  0 |
//         | 0 -2 -1  2  1  0 |              | 0  1 -1  8 -8  1 |
//         | 0  2 -1 -2  1  0 |
//         | 0  4  0 -5  0  1 |
// The 1D functions below apply B^T, B, A^T and A with the zero terms left out.

constexpr int64_t kBlock = 64;  // channels per block: a tile's intermediate rows stay in L1

// 1D transforms of six or four channel vectors: in[k][c] -> out[k][c], c < n. `out` is a
// local buffer, so the compiler knows it does not alias `in`.
template <typename T>
inline __attribute__((always_inline)) void bt_1d(const T* const* in, T (*out)[kBlock],
                                                 int64_t n) {  // B^T: 6 -> 6
  for (int64_t c = 0; c < n; ++c) {
    const T d0 = in[0][c], d1 = in[1][c], d2 = in[2][c], d3 = in[3][c], d4 = in[4][c],
            d5 = in[5][c];
    out[0][c] = T(4) * d0 - T(5) * d2 + d4;
    out[1][c] = T(-4) * (d1 + d2) + (d3 + d4);
    out[2][c] = T(4) * (d1 - d2) + (d4 - d3);
    out[3][c] = T(2) * (d3 - d1) + (d4 - d2);
    out[4][c] = T(2) * (d1 - d3) + (d4 - d2);
    out[5][c] = T(4) * d1 - T(5) * d3 + d5;
  }
}

template <typename T>
inline __attribute__((always_inline)) void b_1d(const T* const* in, T (*out)[kBlock],
                                                int64_t n) {  // B = (B^T)^T: 6 -> 6
  for (int64_t c = 0; c < n; ++c) {
    const T v0 = in[0][c], v1 = in[1][c], v2 = in[2][c], v3 = in[3][c], v4 = in[4][c],
            v5 = in[5][c];
    out[0][c] = T(4) * v0;
    out[1][c] = T(4) * (v2 - v1 + v5) + T(2) * (v4 - v3);
    out[2][c] = T(-5) * v0 - T(4) * (v1 + v2) - (v3 + v4);
    out[3][c] = (v1 - v2) + T(2) * (v3 - v4) - T(5) * v5;
    out[4][c] = v0 + v1 + v2 + v3 + v4;
    out[5][c] = v5;
  }
}

template <typename T>
inline __attribute__((always_inline)) void at_1d(const T* const* in, T (*out)[kBlock],
                                                 int64_t n) {  // A^T: 6 -> 4
  for (int64_t c = 0; c < n; ++c) {
    const T m0 = in[0][c], m1 = in[1][c], m2 = in[2][c], m3 = in[3][c], m4 = in[4][c],
            m5 = in[5][c];
    const T s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    out[0][c] = m0 + s12 + s34;
    out[1][c] = d12 + T(2) * d34;
    out[2][c] = s12 + T(4) * s34;
    out[3][c] = d12 + T(8) * d34 + m5;
  }
}

template <typename T>
inline __attribute__((always_inline)) void a_1d(const T* const* in, T (*out)[kBlock],
                                                int64_t n) {  // A = (A^T)^T: 4 -> 6
  for (int64_t c = 0; c < n; ++c) {
    const T y0 = in[0][c], y1 = in[1][c], y2 = in[2][c], y3 = in[3][c];
    const T s02 = y0 + y2, s13 = y1 + y3, q02 = y0 + T(4) * y2, q13 = T(2) * y1 + T(8) * y3;
    out[0][c] = y0;
    out[1][c] = s02 + s13;
    out[2][c] = s02 - s13;
    out[3][c] = q02 + q13;
    out[4][c] = q02 - q13;
    out[5][c] = y3;
  }
}

// out[a * P + b] (+)= (L in L^T)[a][b] (+ bias) for a Q x Q tile `in` and the 1D transform
// L: Q -> P given as `transform`. A null out[k] is not stored.
template <typename T, int Q, int P, bool ACCUMULATE,
          void (*transform)(const T* const*, T (*)[kBlock], int64_t)>
inline __attribute__((always_inline)) void transform_2d(const T* const* in, T* const* out,
                                                        const T* bias, int64_t channels) {
  T rows[Q][P][kBlock];  // rows[r][b]: row r of the tile after the 1D transform
  T cols[P][kBlock];
  for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
    const int64_t n = channels - c0 < kBlock ? channels - c0 : kBlock;
    const T* src[Q];
    for (int r = 0; r < Q; ++r) {
      for (int s = 0; s < Q; ++s) {
        src[s] = in[r * Q + s] + c0;
      }
      transform(src, rows[r], n);
    }
    for (int b = 0; b < P; ++b) {
      const T* col[Q];
      for (int r = 0; r < Q; ++r) {
        col[r] = rows[r][b];
      }
      transform(col, cols, n);
      for (int a = 0; a < P; ++a) {
        T* dst = out[a * P + b];
        if (dst == nullptr) {
          continue;
        }
        dst += c0;
        const T* val = cols[a];
        if (ACCUMULATE) {
          for (int64_t c = 0; c < n; ++c) dst[c] += val[c];
        } else if (bias != nullptr) {
          for (int64_t c = 0; c < n; ++c) dst[c] = val[c] + bias[c0 + c];
        } else {
          for (int64_t c = 0; c < n; ++c) dst[c] = val[c];
        }
      }
    }
  }
}

// V = B^T d B: 36 input vectors (6 x 6) -> 36.
template <typename T>
void input_tile(const T* const* in, T* const* out, const T* /*bias*/, int64_t channels) {
  transform_2d<T, 6, 6, false, bt_1d<T>>(in, out, nullptr, channels);
}

// Y = A^T M A (+ bias): 36 -> 16.
template <typename T>
void output_tile(const T* const* in, T* const* out, const T* bias, int64_t channels) {
  transform_2d<T, 6, 4, false, at_1d<T>>(in, out, bias, channels);
}

// dM = A dY A^T: 16 -> 36.
template <typename T>
void output_adjoint_tile(const T* const* in, T* const* out, const T* /*bias*/, int64_t channels) {
  transform_2d<T, 4, 6, false, a_1d<T>>(in, out, nullptr, channels);
}

// dd += B dV B^T: 36 -> 36, added to the destinations.
template <typename T>
void input_adjoint_tile(const T* const* in, T* const* out, const T* /*bias*/, int64_t channels) {
  transform_2d<T, 6, 6, true, b_1d<T>>(in, out, nullptr, channels);
}
