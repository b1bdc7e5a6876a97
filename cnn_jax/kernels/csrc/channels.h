// What the BatchNorm kernels share: per-channel sums over the rows of an NHWC tensor (every value of one position,
// channels innermost), vector loops over channels (their loads and stores: lanes.h), and the inverse standard
// deviation.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lanes.h"
#include "few_channel_weight_gradient.h"  // SumInThreadOrder
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace cnn_jax {

// Per-channel sums Σ_r a(r, c) and Σ_r b(r, c) over `rows` rows, split over threads. term(r, a, b) adds row r's
// terms to the float vectors a and b; those are flushed into double every few rows, so the sums keep double's
// accuracy while the inner loops stay in (vectorised) float.
template <typename RowTerm>
inline void ChannelSums(int64_t rows, int64_t channels, std::vector<double>& sum_a, std::vector<double>& sum_b,
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
  sum_a.resize(channels);
  sum_b.resize(channels);
  cnn_jax::SumInThreadOrder(partial_a, sum_a.data(), channels);
  cnn_jax::SumInThreadOrder(partial_b, sum_b.data(), channels);
}

// Channels are processed eight at a time as GCC vector extensions (F = f32x8), the rest one by one (F = float):
// GCC's own vectoriser gives up on these loops (their selects, or int8 values next to float ones, or C = 16 below
// its vector length).
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int8_t i8x8 __attribute__((vector_size(8)));

// Calls body(F{}, c) for every channel c < C, with F = f32x8 for c, c + 1, ..., c + 7 while eight remain.
template <typename Body>
inline void ForChannels(int64_t C, Body body) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) body(f32x8{}, c);
  for (; c < C; ++c) body(float{}, c);
}

inline int32_t One(bool condition) { return condition; }
inline i32x8 One(i32x8 mask) { return -mask; }  // A vector comparison gives −1 where true.
// 1/√(var + ε) per channel.
inline std::vector<float> InverseStd(xla::ffi::Buffer<xla::ffi::F32, 1> var, float epsilon) {
  std::vector<float> inv_std(var.element_count());
  for (size_t c = 0; c < inv_std.size(); ++c) inv_std[c] = 1.0f / std::sqrt(var.typed_data()[c] + epsilon);
  return inv_std;
}

}  // namespace cnn_jax
