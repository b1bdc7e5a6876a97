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
// x: [N, H, W, C] and dy: [N, P, Q, Cout], Cout a multiple of 8; dw: [KH, KW, C, Cout]; all float32 or all
// bfloat16 (D), whose dy is widened image by image and whose sums are float32 too.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "few_channel_weight_gradient.h"
#include "lanes.h"
#include "stack.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <ffi::DataType D>
using Tensor = ffi::Buffer<D, 4>;
using cnn_jax::Geometry;

template <ffi::DataType D>
ffi::Error WeightGradient(Tensor<D> x, Tensor<D> dy, ffi::Result<Tensor<D>> dw, int64_t stride_h, int64_t stride_w,
                          int64_t pad_top, int64_t pad_left, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  const Geometry g{xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1], stride_h, stride_w, pad_top, pad_left};
  if (g.out % 8 != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 8");
  const int64_t images = xd[0], size = g.kh * g.kw * g.c * g.out;
  const auto* in = x.typed_data();
  const auto* grad = dy.typed_data();
  const int64_t image_dy_size = g.p * g.q * g.out;
  std::vector<std::vector<float>> partial(omp_get_max_threads());
#pragma omp parallel
  {
    std::vector<float>& acc = partial[omp_get_thread_num()];
    acc.assign(size, 0.0f);
    std::vector<float> planes(cnn_jax::PlaneSize(g)), widened(D == ffi::F32 ? 0 : image_dy_size);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const auto* image_dy = grad + n * image_dy_size;
      if constexpr (D == ffi::F32) {
        cnn_jax::AddImage(g, in + n * g.h * g.w * g.c, image_dy, planes.data(), acc.data());
      } else {
        for (int64_t k = 0; k < image_dy_size; ++k) widened[k] = cnn_jax::Widen(image_dy[k]);
        cnn_jax::AddImage(g, in + n * g.h * g.w * g.c, widened.data(), planes.data(), acc.data());
      }
    }
  }
  std::vector<float> sum(size);
  cnn_jax::SumInThreadOrder(partial, sum.data(), size);
  for (int64_t k = 0; k < size; ++k) cnn_jax::Store(dw->typed_data() + k, sum[k]);
  return ffi::Error::Success();
}

template <ffi::DataType D>
auto Bind() {
  return ffi::Ffi::Bind()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("devices");
}

}  // namespace

CNN_JAX_STACKED_HANDLERS(FewChannelConvWeightGradient, WeightGradient, Bind);
