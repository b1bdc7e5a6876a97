// How many OpenMP threads a kernel call uses: its device's share of the cores.
//
// XLA runs the programs of a process's devices at once, one thread each, and every kernel call opens an OpenMP team
// of its own. With several devices, teams of all the cores each would oversubscribe the machine (on 2 cores, 4
// devices' teams of 2 spin at their barriers while the others hold the cores), so each call takes the cores available
// to OpenMP (OMP_NUM_THREADS, or all) divided by the number of devices, and at least one.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace cnn_jax {

// The cores a kernel call of one of `devices` devices may use: those available to OpenMP divided among the devices.
inline int ShareOfCores(int64_t devices) {
  static const int available = omp_get_max_threads();  // Read once, before any call changes it.
  return static_cast<int>(std::max<int64_t>(1, available / std::max<int64_t>(1, devices)));
}

// Sets the calling thread's OpenMP team size (for this call's parallel regions and oneDNN's) to its device's share,
// or to one inside a parallel region: a call that is one element of a stack run side by side (stack.h), where
// oneDNN would run its primitive on one thread however many it was built for.
inline void UseShareOfCores(int64_t devices) { omp_set_num_threads(omp_in_parallel() ? 1 : ShareOfCores(devices)); }

}  // namespace cnn_jax
