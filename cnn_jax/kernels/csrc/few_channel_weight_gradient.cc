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

#include "few_channel_weight_gradient.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Tensor = ffi::Buffer<ffi::F32, 4>;
using cnn_jax::Geometry;

ffi::Error WeightGradient(Tensor x, Tensor dy, ffi::Result<Tensor> dw, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                          int64_t pad_left, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
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
    std::vector<float> planes(cnn_jax::PlaneSize(g));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n)
      cnn_jax::AddImage(g, in + n * g.h * g.w * g.c, grad + n * g.p * g.q * g.out, planes.data(), acc.data());
  }
  cnn_jax::SumInThreadOrder(partial, dw->typed_data(), size);
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
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("devices"));
