// Training-mode BatchNorm -> ReLU -> 2×2 max-pooling (stride 2), forward and backward, fused, as XLA FFI
// handlers for the CPU.
//
// Each direction is two handlers, so that a batch split over devices can add up BatchNorm's per-channel statistics
// between them (jax.shard_map in ffi.py): the forward pass's Moments (mean and variance) and Forward, the backward
// pass's BackwardSums (the gradient statistics) and Backward or BackwardToConvWeights. On one device nothing is
// added and the arithmetic is that of one fused pass.
//
// XLA:CPU runs these as half a dozen separate passes over the activations (statistics, normalisation, the
// pooling window's max, and in the backward pass the max's mask, its tie count, two reductions and the input
// gradient), mostly on one thread. Here the forward pass reads its input twice, on every core (OpenMP), and keeps
// for the backward pass, per pooled value, only which window position won (a byte) and that position's input. The
// backward pass then sums BatchNorm's two gradient statistics from those pooled tensors alone and reads the full-size
// input once, to write the input gradient. On the seed network's first layer that is 8 MB less memory traffic a step
// than keeping the output and reading the input twice (BENCHMARKS.md). Tensors are NHWC with even H and W, float32 or
// bfloat16 (each handler is defined for both: D; the arithmetic and the statistics are
// float32); C is innermost, so every loop over channels is contiguous.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "channels.h"
#include "few_channel_weight_gradient.h"
#include "stack.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using cnn_jax::ChannelSums;
using cnn_jax::f32x8;
using cnn_jax::ForChannels;
using cnn_jax::i32x8;
using cnn_jax::InverseStd;
using cnn_jax::Load;
using cnn_jax::One;
using cnn_jax::Store;
using cnn_jax::i8x8;

template <ffi::DataType D>
using Tensor = ffi::Buffer<D, 4>;
using Vector = ffi::Buffer<ffi::F32, 1>;
using Winner = ffi::Buffer<ffi::S8, 4>;

// A pooled value's winner code: 0-3, the window position (row-major) that held the max and so takes the gradient,
// or that plus kReluOff where the ReLU clipped the max to 0 and no position takes it.
constexpr int8_t kReluOff = 4;

// x's shape, and where the 2×2 windows of pooled pixel p = (n·H/2 + i)·W/2 + j lie in x.
struct Shape {
  int64_t n, h, w, c;
  int64_t count() const { return n * h * w; }  // Values per channel.
  int64_t pooled() const { return n * (h / 2) * (w / 2); }
  int64_t window_start(int64_t p) const { return ((p / (w / 2)) * 2 * w + (p % (w / 2)) * 2) * c; }
  int64_t window_offset(int k) const { return ((k / 2) * w + k % 2) * c; }  // k = 0..3, row-major.
};

Shape ShapeOf(ffi::Span<const int64_t> dims) { return Shape{dims[0], dims[1], dims[2], dims[3]}; }

template <typename F>
inline auto LoadCode(const int8_t* p) {
  if constexpr (sizeof(F) == sizeof(float)) {
    return int32_t(*p);
  } else {
    i8x8 narrow;
    std::memcpy(&narrow, p, sizeof narrow);
    return __builtin_convertvector(narrow, i32x8);
  }
}
inline void StoreCode(int8_t* p, int32_t code) { *p = int8_t(code); }
inline void StoreCode(int8_t* p, i32x8 code) {
  const i8x8 narrow = __builtin_convertvector(code, i8x8);
  std::memcpy(p, &narrow, sizeof narrow);
}

// Pools one 2×2 window (positions x0..x3, row-major) of one channel (F = float) or eight (F = f32x8) after
// normalising them (x·m + a): writes the ReLU'd max to *out, the winner's input to *kept and its code to *code. The
// first position holding the max wins, as the reshape-and-max pooling's tie rule would pick it.
template <typename F, typename T>
inline void PoolWindow(F x0, F x1, F x2, F x3, F m, F a, T* out, T* kept, int8_t* code) {
  const F v0 = x0 * m + a, v1 = x1 * m + a, v2 = x2 * m + a, v3 = x3 * m + a, zero{};
  const auto right_top = v1 > v0, right_bottom = v3 > v2;
  const F top = right_top ? v1 : v0, bottom = right_bottom ? v3 : v2;
  const auto use_bottom = bottom > top;
  const F best = use_bottom ? bottom : top;
  Store(kept, use_bottom ? (right_bottom ? x3 : x2) : (right_top ? x1 : x0));
  Store(out, best < zero ? zero : best);
  StoreCode(code, One(right_top) + One(use_bottom) * (2 + One(right_bottom) - One(right_top)) +
                      kReluOff * One(best <= zero));
}

// x: [N, H, W, C]. Writes the batch's mean and (biased) variance per channel, from sums kept in double.
template <ffi::DataType D>
ffi::Error Moments(Tensor<D> x, ffi::Result<Vector> mean_out, ffi::Result<Vector> var_out, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const Shape s = ShapeOf(x.dimensions());
  const auto* in = x.typed_data();
  const int64_t C = s.c;
  std::vector<double> sum, sum_sq;
  ChannelSums(s.count(), C, sum, sum_sq, [&](int64_t r, float* __restrict a, float* __restrict b) {
    const auto* __restrict row = in + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v = Load<float>(row + c);
      a[c] += v, b[c] += v * v;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    const double mean = sum[c] / s.count(), var = std::max(0.0, sum_sq[c] / s.count() - mean * mean);
    mean_out->typed_data()[c] = float(mean);
    var_out->typed_data()[c] = float(var);
  }
  return ffi::Error::Success();
}

// x: [N, H, W, C]; mean, var (the whole batch's, from Moments), scale, bias: [C]. Writes y: [N, H/2, W/2, C] =
// maxpool(relu(batchnorm(x))), each pooled value's winner code and the input x at the winning position.
template <ffi::DataType D>
ffi::Error Forward(Tensor<D> x, Vector mean, Vector var, Vector scale, Vector bias, ffi::Result<Tensor<D>> y,
                   ffi::Result<Winner> winner, ffi::Result<Tensor<D>> at_winner, float epsilon, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const Shape s = ShapeOf(x.dimensions());
  const auto* in = x.typed_data();
  const int64_t C = s.c;
  std::vector<float> mul(C), add(C);
  for (int64_t c = 0; c < C; ++c) {
    mul[c] = scale.typed_data()[c] / std::sqrt(var.typed_data()[c] + epsilon);
    add[c] = bias.typed_data()[c] - mean.typed_data()[c] * mul[c];
  }
  auto* out = y->typed_data();
  auto* kept = at_winner->typed_data();
  int8_t* code = winner->typed_data();
  const float *m = mul.data(), *a = add.data();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < s.pooled(); ++p) {
    const auto* w0 = in + s.window_start(p);
    const auto *w1 = w0 + s.window_offset(1), *w2 = w0 + s.window_offset(2), *w3 = w0 + s.window_offset(3);
    auto *o = out + p * C, *xk = kept + p * C;
    int8_t* k = code + p * C;
    ForChannels(C, [&](auto lanes, int64_t c) {
      using F = decltype(lanes);
      PoolWindow(Load<F>(w0 + c), Load<F>(w1 + c), Load<F>(w2 + c), Load<F>(w3 + c), Load<F>(m + c), Load<F>(a + c),
                 o + c, xk + c, k + c);
    });
  }
  return ffi::Error::Success();
}

// BatchNorm's gradient statistics through ReLU and the pooling, given dy and what Forward kept: dbias = Σ du and
// dscale = Σ du·x̂, summed over the winners alone, where du, the pre-pooling gradient, is dy at each window's winner
// where the ReLU let it through and 0 elsewhere, and x̂ = (x − mean)/√(var + ε); and their means over the values
// per channel (N·H·W), which the input gradient needs.
template <ffi::DataType D>
ffi::Error BackwardSums(Vector mean, Vector var, Winner winner, Tensor<D> at_winner, Tensor<D> dy,
                        ffi::Result<Vector> dscale, ffi::Result<Vector> dbias, ffi::Result<Vector> mean_du,
                        ffi::Result<Vector> mean_du_xhat, float epsilon, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const auto d = winner.dimensions();
  const int64_t pooled = d[0] * d[1] * d[2], C = d[3], count = 4 * pooled;
  const std::vector<float> inv_std = InverseStd(var, epsilon);
  const auto *kept = at_winner.typed_data(), *g = dy.typed_data();
  const float *mu = mean.typed_data(), *is = inv_std.data();
  const int8_t* code = winner.typed_data();
  std::vector<double> sum_du, sum_du_xhat;
  ChannelSums(pooled, C, sum_du, sum_du_xhat, [&](int64_t p, float* a, float* b) {
    const auto *xk = kept + p * C, *gp = g + p * C;
    const int8_t* k = code + p * C;
    ForChannels(C, [&](auto lanes, int64_t c) {
      using F = decltype(lanes);
      const F du = LoadCode<F>(k + c) < kReluOff ? Load<F>(gp + c) : F{};
      Store(a + c, Load<F>(a + c) + du);
      Store(b + c, Load<F>(b + c) + du * ((Load<F>(xk + c) - Load<F>(mu + c)) * Load<F>(is + c)));
    });
  });
  for (int64_t c = 0; c < C; ++c) {
    dbias->typed_data()[c] = float(sum_du[c]);
    dscale->typed_data()[c] = float(sum_du_xhat[c]);
    mean_du->typed_data()[c] = float(sum_du[c] / count);
    mean_du_xhat->typed_data()[c] = float(sum_du_xhat[c] / count);
  }
  return ffi::Error::Success();
}

// BatchNorm's input gradient through ReLU and the pooling, window by window: dx = scale/√(var + ε) · (du − mean(du)
// − x̂ · mean(du·x̂)), given the whole batch's means of du and du·x̂ (from BackwardSums).
template <ffi::DataType D>
class InputGradient {
 public:
  using T = ffi::NativeType<D>;

  InputGradient(Tensor<D> x, Vector scale, Vector mean, Vector var, Winner winner, Tensor<D> dy, Vector mean_du,
                Vector mean_du_xhat, float epsilon)
      : s_(ShapeOf(x.dimensions())), in_(x.typed_data()), g_(dy.typed_data()), code_(winner.typed_data()),
        mean_(mean.typed_data()), mean_du_(mean_du.typed_data()), mean_du_xhat_(mean_du_xhat.typed_data()),
        inv_std_(InverseStd(var, epsilon)), mul_(s_.c) {
    for (int64_t c = 0; c < s_.c; ++c) mul_[c] = scale.typed_data()[c] * inv_std_[c];
  }

  const Shape& shape() const { return s_; }

  // Writes dx for the window of pooled pixel p, whose top-left value is at `window` in an NHWC tensor of x's width
  // (of x's type, or float32), and adds it to the per-channel sums `sum`.
  template <typename Out>
  void Window(int64_t p, Out* window, float* sum) const {
    const int64_t C = s_.c;
    const T* gp = g_ + p * C;
    const float *mu = mean_, *is = inv_std_.data(), *ml = mul_.data(), *md = mean_du_,
                *mdx = mean_du_xhat_;
    const int8_t* k = code_ + p * C;
    for (int q = 0; q < 4; ++q) {
      const T* xs = in_ + s_.window_start(p) + s_.window_offset(q);
      Out* gs = window + s_.window_offset(q);
      ForChannels(C, [&](auto lanes, int64_t c) {
        using F = decltype(lanes);
        const F du = LoadCode<F>(k + c) == q ? Load<F>(gp + c) : F{};  // Never where the ReLU clipped (k ≥ 4).
        const F grad_x = Load<F>(ml + c) * (du - Load<F>(md + c) - (Load<F>(xs + c) - Load<F>(mu + c)) *
                                                                      Load<F>(is + c) * Load<F>(mdx + c));
        Store(gs + c, grad_x);
        Store(sum + c, Load<F>(sum + c) + grad_x);
      });
    }
  }

 private:
  Shape s_;
  const T *in_, *g_;
  const int8_t* code_;
  const float *mean_, *mean_du_, *mean_du_xhat_;
  std::vector<float> inv_std_, mul_;
};

// The gradient of Forward's y with respect to x, and to an offset added to x (Σ dx: the gradient of a convolution's
// bias, summed while dx is written).
template <ffi::DataType D>
ffi::Error Backward(Tensor<D> x, Vector scale, Vector mean, Vector var, Winner winner, Tensor<D> dy, Vector mean_du,
                    Vector mean_du_xhat, ffi::Result<Tensor<D>> dx, ffi::Result<Vector> doffset, float epsilon,
                    int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const InputGradient<D> pass(x, scale, mean, var, winner, dy, mean_du, mean_du_xhat, epsilon);
  const Shape& s = pass.shape();
  auto* grad = dx->typed_data();
  std::vector<double> sum_dx, unused;  // ChannelSums keeps two sums; this pass needs one.
  ChannelSums(s.pooled(), s.c, sum_dx, unused,
              [&](int64_t p, float* a, float*) { pass.Window(p, grad + s.window_start(p), a); });
  for (int64_t c = 0; c < s.c; ++c) doffset->typed_data()[c] = float(sum_dx[c]);
  return ffi::Error::Success();
}

// Backward's gradient of the offset, and instead of dx, the gradient of the weights of the convolution with few input
// channels that computed x from `conv_input` (few_channel_weight_gradient.h): each image's dx is written to a buffer
// that stays in cache (as float32) and consumed there, never stored whole.
template <ffi::DataType D>
ffi::Error BackwardToConvWeights(Tensor<D> x, Vector scale, Vector mean, Vector var, Winner winner, Tensor<D> dy,
                                 Vector mean_du, Vector mean_du_xhat, Tensor<D> conv_input,
                                 ffi::Result<Tensor<D>> dkernel,
                                 ffi::Result<Vector> doffset, float epsilon, int64_t stride_h, int64_t stride_w,
                                 int64_t pad_top, int64_t pad_left, int64_t devices) {
  const auto cd = conv_input.dimensions(), kd = dkernel->dimensions();
  if (kd[3] % 8 != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 8");
  cnn_jax::UseShareOfCores(devices);
  const InputGradient<D> pass(x, scale, mean, var, winner, dy, mean_du, mean_du_xhat, epsilon);
  const Shape& s = pass.shape();
  const cnn_jax::Geometry g{cd[1], cd[2], cd[3], s.h, s.w, s.c, kd[0], kd[1], stride_h, stride_w, pad_top, pad_left};
  const int64_t image_size = s.h * s.w * s.c, pooled_per_image = s.pooled() / s.n, size = g.kh * g.kw * g.c * g.out;
  const auto* input = conv_input.typed_data();
  std::vector<std::vector<float>> partial_dk(omp_get_max_threads());
  std::vector<std::vector<double>> partial_dx(omp_get_max_threads());
#pragma omp parallel
  {
    std::vector<float>& acc = partial_dk[omp_get_thread_num()];
    std::vector<double>& sum_dx = partial_dx[omp_get_thread_num()];
    acc.assign(size, 0.0f);
    sum_dx.assign(s.c, 0.0);
    std::vector<float> image_dx(image_size), image_sum(s.c), planes(cnn_jax::PlaneSize(g));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.n; ++n) {
      std::fill(image_sum.begin(), image_sum.end(), 0.0f);
      for (int64_t p = n * pooled_per_image; p < (n + 1) * pooled_per_image; ++p)
        pass.Window(p, image_dx.data() + s.window_start(p) - n * image_size, image_sum.data());
      for (int64_t c = 0; c < s.c; ++c) sum_dx[c] += image_sum[c];
      cnn_jax::AddImage(g, input + n * g.h * g.w * g.c, image_dx.data(), planes.data(), acc.data());
    }
  }
  std::vector<float> dk(size);
  cnn_jax::SumInThreadOrder(partial_dk, dk.data(), size);
  for (int64_t k = 0; k < size; ++k) Store(dkernel->typed_data() + k, dk[k]);
  std::vector<double> sum_dx(s.c);
  cnn_jax::SumInThreadOrder(partial_dx, sum_dx.data(), s.c);
  for (int64_t c = 0; c < s.c; ++c) doffset->typed_data()[c] = float(sum_dx[c]);
  return ffi::Error::Success();
}

// The arguments InputGradient reads, first in both input-gradient handlers: x, scale, mean, var, winner, dy, mean_du,
// mean_du_xhat.
template <ffi::DataType D>
auto BindInputGradient() {
  return ffi::Ffi::Bind().template Arg<cnn_jax::Any<Tensor<D>>>().template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Winner>>().template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Vector>>();
}

template <ffi::DataType D>
auto BindMoments() {
  return ffi::Ffi::Bind().template Arg<cnn_jax::Any<Tensor<D>>>().template Ret<cnn_jax::Any<Vector>>().template Ret<cnn_jax::Any<Vector>>().template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindForward() {
  return ffi::Ffi::Bind()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Winner>>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Attr<float>("epsilon")
      .template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindBackwardSums() {
  return ffi::Ffi::Bind()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Arg<cnn_jax::Any<Winner>>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Attr<float>("epsilon")
      .template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindBackward() {
  return BindInputGradient<D>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Attr<float>("epsilon")
      .template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindBackwardToConvWeights() {
  return BindInputGradient<D>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Attr<float>("epsilon")
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("devices");
}

}  // namespace

CNN_JAX_STACKED_HANDLERS(BatchNormMoments, Moments, BindMoments);
CNN_JAX_STACKED_HANDLERS(BatchNormReluMaxPoolForward, Forward, BindForward);
CNN_JAX_STACKED_HANDLERS(BatchNormReluMaxPoolBackwardSums, BackwardSums, BindBackwardSums);
CNN_JAX_STACKED_HANDLERS(BatchNormReluMaxPoolBackward, Backward, BindBackward);
CNN_JAX_STACKED_HANDLERS(BatchNormReluMaxPoolBackwardToConvWeights, BackwardToConvWeights, BindBackwardToConvWeights);
