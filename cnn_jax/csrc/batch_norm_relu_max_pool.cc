// Training-mode BatchNorm -> ReLU -> 2×2 max-pooling (stride 2), forward and backward, fused, as XLA FFI
// handlers for the CPU.
//
// XLA:CPU runs these as half a dozen separate passes over the activations (statistics, normalisation, the
// pooling window's max, and in the backward pass the max's mask, its tie count, two reductions and the input
// gradient), mostly on one thread. Here the forward pass reads its input twice and the backward pass reads it
// twice, on every core (OpenMP). Tensors are NHWC float32 with even H and W; C is innermost, so every loop over
// channels is contiguous.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Tensor = ffi::Buffer<ffi::F32, 4>;
using Vector = ffi::Buffer<ffi::F32, 1>;
using Argmax = ffi::Buffer<ffi::S32, 4>;

// Per-channel sums Σ_r a(r, c) and Σ_r b(r, c) over `rows` rows, split over threads. term(r, a, b) adds row r's
// terms to the float vectors a and b; those are flushed into double every few rows, so the sums keep double's
// accuracy while the inner loops stay in (vectorised) float.
template <typename RowTerm>
void ChannelSums(int64_t rows, int64_t channels, std::vector<double>& sum_a, std::vector<double>& sum_b,
                 RowTerm term) {
  constexpr int64_t kBlock = 64;
  std::vector<std::vector<double>> partial_a(omp_get_max_threads()), partial_b(omp_get_max_threads());
#pragma omp parallel
  {
    std::vector<double>& local_a = partial_a[omp_get_thread_num()];
    std::vector<double>& local_b = partial_b[omp_get_thread_num()];
    local_a.assign(channels, 0.0);
    local_b.assign(channels, 0.0);
    std::vector<float> block_a(channels), block_b(channels);
#pragma omp for schedule(static)
    for (int64_t start = 0; start < rows; start += kBlock) {
      std::fill(block_a.begin(), block_a.end(), 0.0f);
      std::fill(block_b.begin(), block_b.end(), 0.0f);
      for (int64_t r = start; r < std::min(rows, start + kBlock); ++r) term(r, block_a.data(), block_b.data());
      for (int64_t c = 0; c < channels; ++c) local_a[c] += block_a[c], local_b[c] += block_b[c];
    }
  }
  // Summed in thread order, so the result does not depend on which thread finished first.
  sum_a.assign(channels, 0.0);
  sum_b.assign(channels, 0.0);
  for (size_t t = 0; t < partial_a.size(); ++t)
    for (int64_t c = 0; c < static_cast<int64_t>(partial_a[t].size()); ++c)
      sum_a[c] += partial_a[t][c], sum_b[c] += partial_b[t][c];
}

// x's shape, and where the 2×2 windows of pooled pixel p = (n·H/2 + i)·W/2 + j lie in x.
struct Shape {
  int64_t n, h, w, c;
  int64_t count() const { return n * h * w; }  // Values per channel.
  int64_t pooled() const { return n * (h / 2) * (w / 2); }
  int64_t window_start(int64_t p) const { return ((p / (w / 2)) * 2 * w + (p % (w / 2)) * 2) * c; }
  int64_t window_offset(int k) const { return ((k / 2) * w + k % 2) * c; }  // k = 0..3, row-major.
};

Shape ShapeOf(ffi::Span<const int64_t> dims) { return Shape{dims[0], dims[1], dims[2], dims[3]}; }

// x: [N, H, W, C]; scale, bias: [C]. Writes y: [N, H/2, W/2, C] = maxpool(relu(batchnorm(x))), the batch's mean
// and (biased) variance per channel, and which of each window's four positions held the max (0-3, row-major).
ffi::Error Forward(Tensor x, Vector scale, Vector bias,
                   ffi::Result<Tensor> y, ffi::Result<Vector> mean_out,
                   ffi::Result<Vector> var_out, ffi::Result<Argmax> argmax, float epsilon) {
  const Shape s = ShapeOf(x.dimensions());
  const float* in = x.typed_data();
  const int64_t C = s.c;
  std::vector<double> sum, sum_sq;
  ChannelSums(s.count(), C, sum, sum_sq, [&](int64_t r, float* __restrict a, float* __restrict b) {
    const float* __restrict row = in + r * C;
    for (int64_t c = 0; c < C; ++c) a[c] += row[c], b[c] += row[c] * row[c];
  });
  std::vector<float> mul(C), add(C);
  for (int64_t c = 0; c < C; ++c) {
    const double mean = sum[c] / s.count(), var = std::max(0.0, sum_sq[c] / s.count() - mean * mean);
    mean_out->typed_data()[c] = float(mean);
    var_out->typed_data()[c] = float(var);
    mul[c] = scale.typed_data()[c] / std::sqrt(float(var) + epsilon);
    add[c] = bias.typed_data()[c] - float(mean) * mul[c];
  }
  float* out = y->typed_data();
  int32_t* arg = argmax->typed_data();
  const float *__restrict m = mul.data(), *__restrict a = add.data();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < s.pooled(); ++p) {
    const float* __restrict w0 = in + s.window_start(p);
    const float *__restrict w1 = w0 + s.window_offset(1), *__restrict w2 = w0 + s.window_offset(2),
                *__restrict w3 = w0 + s.window_offset(3);
    float* __restrict o = out + p * C;
    int32_t* __restrict k = arg + p * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v0 = w0[c] * m[c] + a[c], v1 = w1[c] * m[c] + a[c], v2 = w2[c] * m[c] + a[c],
                  v3 = w3[c] * m[c] + a[c];
      const float top = std::max(v0, v1), bottom = std::max(v2, v3);
      // The first position holding the window's max, as the reshape-and-max pooling's tie rule would pick it.
      const int32_t first_top = v1 > v0, first_bottom = 2 + (v3 > v2), use_bottom = bottom > top;
      k[c] = first_top + use_bottom * (first_bottom - first_top);  // Branch-free, so the loop vectorises.
      o[c] = std::max(std::max(top, bottom), 0.0f);
    }
  }
  return ffi::Error::Success();
}

// The gradients of Forward's y with respect to x, an offset added to x (Σ dx), scale and bias, given dy and what
// Forward computed.
ffi::Error Backward(Tensor x, Vector scale, Vector mean_in,
                    Vector var_in, Argmax argmax, Tensor y,
                    Tensor dy, ffi::Result<Tensor> dx, ffi::Result<Vector> doffset,
                    ffi::Result<Vector> dscale, ffi::Result<Vector> dbias, float epsilon) {
  const Shape s = ShapeOf(x.dimensions());
  const int64_t C = s.c;
  const float *in = x.typed_data(), *out = y.typed_data(), *g = dy.typed_data(), *mean = mean_in.typed_data();
  const int32_t* arg = argmax.typed_data();
  std::vector<float> inv_std(C);
  for (int64_t c = 0; c < C; ++c) inv_std[c] = 1.0f / std::sqrt(var_in.typed_data()[c] + epsilon);
  // The pre-pooling gradient du is dy at each window's max where the ReLU let it through, 0 elsewhere:
  // dbias = Σ du, dscale = Σ du·x̂ with x̂ = (x − mean)/√(var + ε).
  std::vector<double> sum_du, sum_du_xhat;
  const float *__restrict mu = mean, *__restrict is = inv_std.data();
  ChannelSums(s.pooled(), C, sum_du, sum_du_xhat, [&](int64_t p, float* __restrict a, float* __restrict b) {
    const float *__restrict o = out + p * C, *__restrict gp = g + p * C;
    const int32_t* __restrict k = arg + p * C;
    for (int q = 0; q < 4; ++q) {
      const float* __restrict xs = in + s.window_start(p) + s.window_offset(q);
      for (int64_t c = 0; c < C; ++c) {  // Branch-free, so the loop vectorises.
        const float du = gp[c] * float((k[c] == q) & (o[c] > 0.0f));
        a[c] += du;
        b[c] += du * ((xs[c] - mu[c]) * is[c]);
      }
    }
  });
  // dx = scale/√(var + ε) · (du − mean(du) − x̂ · mean(du·x̂)).
  std::vector<float> mul(C), mean_du(C), mean_du_xhat(C);
  for (int64_t c = 0; c < C; ++c) {
    dbias->typed_data()[c] = float(sum_du[c]);
    dscale->typed_data()[c] = float(sum_du_xhat[c]);
    mul[c] = scale.typed_data()[c] * inv_std[c];
    mean_du[c] = float(sum_du[c] / s.count());
    mean_du_xhat[c] = float(sum_du_xhat[c] / s.count());
  }
  // Writes dx and sums it per channel: that sum is the gradient of an offset added to x before BatchNorm (a
  // convolution's bias), so its gradient needs no second pass over dx.
  float* grad = dx->typed_data();
  const float *__restrict ml = mul.data(), *__restrict md = mean_du.data(), *__restrict mdx = mean_du_xhat.data();
  std::vector<double> sum_dx, unused;  // ChannelSums keeps two sums; this pass needs one.
  ChannelSums(s.pooled(), C, sum_dx, unused, [&](int64_t p, float* __restrict a, float*) {
    const float *__restrict o = out + p * C, *__restrict gp = g + p * C;
    const int32_t* __restrict k = arg + p * C;
    for (int q = 0; q < 4; ++q) {
      const float* __restrict xs = in + s.window_start(p) + s.window_offset(q);
      float* __restrict gs = grad + s.window_start(p) + s.window_offset(q);
      for (int64_t c = 0; c < C; ++c) {
        const float du = gp[c] * float((k[c] == q) & (o[c] > 0.0f));
        gs[c] = ml[c] * (du - md[c] - (xs[c] - mu[c]) * is[c] * mdx[c]);
        a[c] += gs[c];
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) doffset->typed_data()[c] = float(sum_dx[c]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormReluMaxPoolForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<Tensor>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Ret<Tensor>()
                                  .Ret<Vector>()
                                  .Ret<Vector>()
                                  .Ret<Argmax>()
                                  .Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormReluMaxPoolBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<Tensor>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Arg<Argmax>()
                                  .Arg<Tensor>()
                                  .Arg<Tensor>()
                                  .Ret<Tensor>()
                                  .Ret<Vector>()
                                  .Ret<Vector>()
                                  .Ret<Vector>()
                                  .Attr<float>("epsilon"));
