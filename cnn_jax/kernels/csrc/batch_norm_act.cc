// Training-mode BatchNorm followed by ReLU (or by nothing), forward and backward, as XLA FFI handlers for the CPU:
// the BatchNorm of every ConvBN (ResNet, GoogLeNet) and of every ConvBlock without pooling.
//
// The forward pass is BatchNormMoments (batch_norm_relu_max_pool.cc) and Forward; the backward pass BackwardSums (the
// two gradient statistics) and Backward, so that a batch split over devices adds up its statistics between them (as
// for the pooled kernel, ffi.py). Nothing but x is kept for the backward pass: the ReLU's mask is recomputed from it.
// Each handler is one pass over its tensors on every core (OpenMP); XLA:CPU computes the same passes, but the
// reductions over rows with channels innermost mostly on one thread. Tensors are NHWC, float32 or bfloat16 (each handler
// is defined for both: D); the arithmetic and the statistics are float32.
#include "channels.h"
#include "stack.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using cnn_jax::ChannelSums;
using cnn_jax::ForChannels;
using cnn_jax::InverseStd;
using cnn_jax::Load;
using cnn_jax::Store;

template <ffi::DataType D>
using Tensor = ffi::Buffer<D, 4>;
using Vector = ffi::Buffer<ffi::F32, 1>;

template <ffi::DataType D>
int64_t Rows(const Tensor<D>& x) {
  const auto d = x.dimensions();
  return d[0] * d[1] * d[2];
}

// The normalisation as y = x·mul + add per channel: mul = scale/√(var + ε), add = bias − mean·mul.
struct Affine {
  std::vector<float> mul, add;
  Affine(Vector mean, Vector var, Vector scale, Vector bias, float epsilon)
      : mul(InverseStd(var, epsilon)), add(mul.size()) {
    for (size_t c = 0; c < mul.size(); ++c) {
      mul[c] *= scale.typed_data()[c];
      add[c] = bias.typed_data()[c] - mean.typed_data()[c] * mul[c];
    }
  }
};

// du: dy where the ReLU let the value x·mul + add through (all of dy without a ReLU).
template <typename F>
inline F Passed(F x, F mul, F add, F dy, bool relu) {
  if (!relu) return dy;
  return x * mul + add > F{} ? dy : F{};
}

// y = relu?(BatchNorm(x)) given the whole batch's mean and (biased) variance (BatchNormMoments).
template <ffi::DataType D>
ffi::Error Forward(Tensor<D> x, Vector mean, Vector var, Vector scale, Vector bias, ffi::Result<Tensor<D>> y,
                   float epsilon, bool relu, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const int64_t rows = Rows(x), C = x.dimensions()[3];
  const Affine affine(mean, var, scale, bias, epsilon);
  const auto* in = x.typed_data();
  const float *m = affine.mul.data(), *a = affine.add.data();
  auto* out = y->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const auto* xr = in + r * C;
    auto* yr = out + r * C;
    ForChannels(C, [&](auto lanes, int64_t c) {
      using F = decltype(lanes);
      const F v = Load<F>(xr + c) * Load<F>(m + c) + Load<F>(a + c);
      Store(yr + c, relu ? (v > F{} ? v : F{}) : v);
    });
  }
  return ffi::Error::Success();
}

// dbias = Σ du, dscale = Σ du·x̂ (x̂ = (x − mean)/√(var + ε)), and their means over the N·H·W values per channel.
template <ffi::DataType D>
ffi::Error BackwardSums(Tensor<D> x, Vector mean, Vector var, Vector scale, Vector bias, Tensor<D> dy,
                        ffi::Result<Vector> dscale, ffi::Result<Vector> dbias, ffi::Result<Vector> mean_du,
                        ffi::Result<Vector> mean_du_xhat, float epsilon, bool relu, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const int64_t rows = Rows(x), C = x.dimensions()[3];
  const Affine affine(mean, var, scale, bias, epsilon);
  const std::vector<float> inv_std = InverseStd(var, epsilon);
  const auto *in = x.typed_data(), *g = dy.typed_data();
  const float *mu = mean.typed_data(), *is = inv_std.data(), *m = affine.mul.data(), *a = affine.add.data();
  std::vector<double> sum_du, sum_du_xhat;
  ChannelSums(rows, C, sum_du, sum_du_xhat, [&](int64_t r, float* s1, float* s2) {
    const auto *xr = in + r * C, *gr = g + r * C;
    ForChannels(C, [&](auto lanes, int64_t c) {
      using F = decltype(lanes);
      const F xv = Load<F>(xr + c), du = Passed(xv, Load<F>(m + c), Load<F>(a + c), Load<F>(gr + c), relu);
      Store(s1 + c, Load<F>(s1 + c) + du);
      Store(s2 + c, Load<F>(s2 + c) + du * ((xv - Load<F>(mu + c)) * Load<F>(is + c)));
    });
  });
  for (int64_t c = 0; c < C; ++c) {
    dbias->typed_data()[c] = float(sum_du[c]);
    dscale->typed_data()[c] = float(sum_du_xhat[c]);
    mean_du->typed_data()[c] = float(sum_du[c] / rows);
    mean_du_xhat->typed_data()[c] = float(sum_du_xhat[c] / rows);
  }
  return ffi::Error::Success();
}

// dx = scale/√(var + ε) · (du − mean(du) − x̂ · mean(du·x̂)), given the whole batch's means (BackwardSums), and Σ dx
// per channel: the gradient of an offset added to x (a convolution's bias).
template <ffi::DataType D>
ffi::Error Backward(Tensor<D> x, Vector mean, Vector var, Vector scale, Vector bias, Tensor<D> dy, Vector mean_du,
                    Vector mean_du_xhat, ffi::Result<Tensor<D>> dx, ffi::Result<Vector> doffset, float epsilon,
                    bool relu, int64_t devices) {
  cnn_jax::UseShareOfCores(devices);
  const int64_t rows = Rows(x), C = x.dimensions()[3];
  const Affine affine(mean, var, scale, bias, epsilon);
  const std::vector<float> inv_std = InverseStd(var, epsilon);
  const auto *in = x.typed_data(), *g = dy.typed_data();
  const float *mu = mean.typed_data(), *is = inv_std.data(), *m = affine.mul.data(), *a = affine.add.data(),
              *md = mean_du.typed_data(), *mdx = mean_du_xhat.typed_data();
  auto* grad = dx->typed_data();
  std::vector<double> sum_dx, unused;  // ChannelSums keeps two sums; this pass needs one.
  ChannelSums(rows, C, sum_dx, unused, [&](int64_t r, float* s1, float*) {
    const auto *xr = in + r * C, *gr = g + r * C;
    auto* dr = grad + r * C;
    ForChannels(C, [&](auto lanes, int64_t c) {
      using F = decltype(lanes);
      const F xv = Load<F>(xr + c), du = Passed(xv, Load<F>(m + c), Load<F>(a + c), Load<F>(gr + c), relu);
      const F grad_x = Load<F>(m + c) * (du - Load<F>(md + c) -
                                         (xv - Load<F>(mu + c)) * Load<F>(is + c) * Load<F>(mdx + c));
      Store(dr + c, grad_x);
      Store(s1 + c, Load<F>(s1 + c) + grad_x);
    });
  });
  for (int64_t c = 0; c < C; ++c) doffset->typed_data()[c] = float(sum_dx[c]);
  return ffi::Error::Success();
}

// x, mean, var, scale, bias: the arguments every handler here reads first.
template <ffi::DataType D>
auto BindNormalisation() {
  return ffi::Ffi::Bind().template Arg<cnn_jax::Any<Tensor<D>>>().template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Vector>>().template Arg<cnn_jax::Any<Vector>>();
}

template <ffi::DataType D>
auto BindForward() {
  return BindNormalisation<D>().template Ret<cnn_jax::Any<Tensor<D>>>().template Attr<float>("epsilon").template Attr<bool>("relu")
      .template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindBackwardSums() {
  return BindNormalisation<D>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Attr<float>("epsilon")
      .template Attr<bool>("relu")
      .template Attr<int64_t>("devices");
}

template <ffi::DataType D>
auto BindBackward() {
  return BindNormalisation<D>()
      .template Arg<cnn_jax::Any<Tensor<D>>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Arg<cnn_jax::Any<Vector>>()
      .template Ret<cnn_jax::Any<Tensor<D>>>()
      .template Ret<cnn_jax::Any<Vector>>()
      .template Attr<float>("epsilon")
      .template Attr<bool>("relu")
      .template Attr<int64_t>("devices");
}

}  // namespace

CNN_JAX_STACKED_HANDLERS(BatchNormActForward, Forward, BindForward);
CNN_JAX_STACKED_HANDLERS(BatchNormActBackwardSums, BackwardSums, BindBackwardSums);
CNN_JAX_STACKED_HANDLERS(BatchNormActBackward, Backward, BindBackward);
