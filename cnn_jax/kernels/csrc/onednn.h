// What cnn_jax's oneDNN kernels share: the CPU engine, and the key a primitive is cached under.
#pragma once

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <initializer_list>
#include <string>

namespace cnn_jax {

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The cache key of a primitive of `kind` and `type` over `dims`, for the calling thread's team size: oneDNN
// partitions a primitive's work for the threads it was built for.
inline std::string PlanKey(int kind, dnnl::memory::data_type type,
                           std::initializer_list<const dnnl::memory::dims*> dims) {
  std::string key = std::to_string(kind) + "," + std::to_string(static_cast<int>(type));
  for (const auto* each : dims)
    for (auto d : *each) key += "," + std::to_string(d);
  return key + ";" + std::to_string(omp_get_max_threads());
}

}  // namespace cnn_jax
