// The weight gradient of a convolution with few input channels, one image at a time: see
// few_channel_weight_gradient.cc, which computes it for a batch, and batch_norm_relu_max_pool.cc, which computes it
// image by image from the output gradient it has just written.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lanes.h"

namespace cnn_jax {

typedef float v8 __attribute__((vector_size(32)));

// The convolution: input H×W×C, output P×Q×Cout (`out`), kernel KH×KW, strides, and the zeros padded before the
// first row (`top`) and column (`left`).
struct Geometry {
  int64_t h, w, c, p, q, out, kh, kw, sh, sw, top, left;
  int64_t padded_w() const { return (q - 1) * sw + kw; }  // Padded input columns the kernel reaches.
};

// Adds one image's contribution to the accumulators acc[i][j][c][o] for kernel columns j0 .. j0 + JB − 1 and
// output channels o0 .. o0 + 8·NV − 1. `plane` is input channel c, zero-padded to rows of g.padded_w() values.
template <int JB, int NV>
void Block(const Geometry& g, const float* __restrict plane, const float* __restrict dy, int64_t i, int64_t j0,
           int64_t o0, float* __restrict acc_row) {
  v8 acc[JB][NV];
  for (int jj = 0; jj < JB; ++jj)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[jj][v], acc_row + (j0 + jj) * g.c * g.out + o0 + 8 * v, 32);
  for (int64_t p = 0; p < g.p; ++p) {
    const int64_t row = p * g.sh + i - g.top;
    if (row < 0 || row >= g.h) continue;  // A row of padding: it adds nothing.
    const float* __restrict in = plane + row * g.padded_w() + j0;
    const float* __restrict d = dy + p * g.q * g.out + o0;
    for (int64_t q = 0; q < g.q; ++q, in += g.sw, d += g.out) {
      v8 grad[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&grad[v], d + 8 * v, 32);
      for (int jj = 0; jj < JB; ++jj)
        for (int v = 0; v < NV; ++v) acc[jj][v] += in[jj] * grad[v];
    }
  }
  for (int jj = 0; jj < JB; ++jj)
    for (int v = 0; v < NV; ++v) std::memcpy(acc_row + (j0 + jj) * g.c * g.out + o0 + 8 * v, &acc[jj][v], 32);
}

template <int NV>
void Blocks(const Geometry& g, const float* plane, const float* dy, int64_t i, int64_t c, float* acc) {
  float* acc_row = acc + i * g.kw * g.c * g.out + c * g.out;
  for (int64_t o0 = 0; o0 < g.out; o0 += 8 * NV) {
    for (int64_t j0 = 0; j0 < g.kw; j0 += 5) {
      switch (std::min<int64_t>(5, g.kw - j0)) {
        case 1: Block<1, NV>(g, plane, dy, i, j0, o0, acc_row); break;
        case 2: Block<2, NV>(g, plane, dy, i, j0, o0, acc_row); break;
        case 3: Block<3, NV>(g, plane, dy, i, j0, o0, acc_row); break;
        case 4: Block<4, NV>(g, plane, dy, i, j0, o0, acc_row); break;
        default: Block<5, NV>(g, plane, dy, i, j0, o0, acc_row); break;
      }
    }
  }
}

// Floats of scratch space AddImage needs: the image's input channels, zero-padded.
inline int64_t PlaneSize(const Geometry& g) { return g.c * g.h * g.padded_w(); }

// Adds one image's contribution to the accumulators acc [KH, KW, C, Cout]: `image` is its input [H, W, C] (float32
// or bfloat16) and `image_dy` its output gradient [P, Q, Cout], Cout a multiple of 8.
template <typename T>
void AddImage(const Geometry& g, const T* image, const float* image_dy, float* planes, float* acc) {
  std::fill(planes, planes + PlaneSize(g), 0.0f);
  for (int64_t c = 0; c < g.c; ++c)
    for (int64_t r = 0; r < g.h; ++r)
      for (int64_t col = 0; col < g.w && g.left + col < g.padded_w(); ++col)
        planes[(c * g.h + r) * g.padded_w() + g.left + col] = Widen(image[(r * g.w + col) * g.c + c]);
  for (int64_t c = 0; c < g.c; ++c) {
    const float* plane = planes + c * g.h * g.padded_w();
    for (int64_t i = 0; i < g.kh; ++i) {
      if (g.out % 16 == 0) Blocks<2>(g, plane, image_dy, i, c, acc);
      else Blocks<1>(g, plane, image_dy, i, c, acc);
    }
  }
}

// Sums per-thread accumulators (those a thread filled; the rest are empty) into out[0 .. size), in thread order, so
// the result does not depend on which thread finished first.
template <typename T>
inline void SumInThreadOrder(const std::vector<std::vector<T>>& partial, T* out, int64_t size) {
  std::fill(out, out + size, T(0));
  for (const auto& acc : partial)
    if (!acc.empty())
      for (int64_t k = 0; k < size; ++k) out[k] += acc[k];
}

}  // namespace cnn_jax
