// The weight gradient of a convolution with few input channels (a network's first layer), as an XLA FFI handler
// for the CPU.
//
//   dw[i, j, c, o] = Σ_{n, p, q} x[n, p·sh + i − pad_top, q·sw + j − pad_left, c] · dy[n, p, q, o]
//
// With one input channel this is a thin matrix product (K×K rows of length N·P·Q times Cout columns) that
// general-purpose convolution code runs far below the machine's rate: XLA transposes both operands first, and
// oneDNN's kernels expect many input channels. Here each thread takes whole images; for one image it holds a
// zero-padded copy of each input channel, and for each block of up to five kernel columns × 8 or 16 output
// channels it keeps the block's accumulators in vector registers while it streams the image's output gradient
// (which stays in cache): per output pixel, one or two vector loads of dy and a broadcast FMA per column.
// x: [N, H, W, C] and dy: [N, P, Q, Cout] float32, Cout a multiple of 8; dw: [KH, KW, C, Cout].
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v8 __attribute__((vector_size(32)));
using Tensor = ffi::Buffer<ffi::F32, 4>;

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

ffi::Error WeightGradient(Tensor x, Tensor dy, ffi::Result<Tensor> dw, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                          int64_t pad_left) {
  const auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  const Geometry g{xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], stride_h, stride_w, pad_top, pad_left};
  if (g.out % 8 != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 8");
  const int64_t images = xd[0], size = g.kh * g.kw * g.c * g.out;
  const float* in = x.typed_data();
  const float* grad = dy.typed_data();
  std::vector<std::vector<float>> partial(omp_get_max_threads());
#pragma omp parallel
  {
    std::vector<float>& acc = partial[omp_get_thread_num()];
    acc.assign(size, 0.0f);
    std::vector<float> planes(g.c * g.h * g.padded_w());
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      std::fill(planes.begin(), planes.end(), 0.0f);
      const float* image = in + n * g.h * g.w * g.c;
      for (int64_t c = 0; c < g.c; ++c)
        for (int64_t r = 0; r < g.h; ++r)
          for (int64_t col = 0; col < g.w && g.left + col < g.padded_w(); ++col)
            planes[(c * g.h + r) * g.padded_w() + g.left + col] = image[(r * g.w + col) * g.c + c];
      const float* image_dy = grad + n * g.p * g.q * g.out;
      for (int64_t c = 0; c < g.c; ++c) {
        const float* plane = planes.data() + c * g.h * g.padded_w();
        for (int64_t i = 0; i < g.kh; ++i) {
          if (g.out % 16 == 0) Blocks<2>(g, plane, image_dy, i, c, acc.data());
          else Blocks<1>(g, plane, image_dy, i, c, acc.data());
        }
      }
    }
  }
  // Summed in thread order, so the result does not depend on which thread finished first.
  float* out = dw->typed_data();
  std::fill(out, out + size, 0.0f);
  for (const auto& acc : partial)
    if (!acc.empty())
      for (int64_t k = 0; k < size; ++k) out[k] += acc[k];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FewChannelConvWeightGradient, WeightGradient,
                              ffi::Ffi::Bind()
                                  .Arg<Tensor>()
                                  .Arg<Tensor>()
                                  .Ret<Tensor>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
