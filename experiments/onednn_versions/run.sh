#!/usr/bin/env bash
# oneDNN: Debian's 2.6.3 (what cnn_jax's kernels link) against PyPI's current release (onednn 2026.1.0 = oneDNN 3.13),
# each convolution direction of six layers timed alone by conv_bench.cc built against each, the two builds taking
# turns geometry by geometry (BENCHMARKS.md, "oneDNN"). Needs Debian's libdnnl-dev and g++, and ~2 GB in WORK for
# the PyPI wheels (a SYCL build: it loads Intel's SYCL and OpenCL CPU runtimes).
#   bash experiments/onednn_versions/run.sh [WORK]      # WORK default /tmp/onednn_versions; ROUNDS=2
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-/tmp/onednn_versions}
pip=${PIP:-$here/../../.venv/bin/pip}
mkdir -p "$work/wheels" "$work/x"
"$pip" download -q --no-deps -d "$work/wheels" onednn==2026.1.0 onednn-devel==2026.1.0 tbb==2023.2.0 \
  intel-cmplr-lib-rt==2026.2.0 intel-sycl-rt==2026.2.0 intel-opencl-rt==2026.2.0
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel" -d "$work/x"; done
lib() { echo "$work/x/$1.data/data/lib"; }
libs="$(lib onednn-2026.1.0):$(lib tbb-2023.2.0):$(lib intel_cmplr_lib_rt-2026.2.0):$(lib intel_sycl_rt-2026.2.0)"
g++ -O2 -std=c++17 "$here/conv_bench.cc" -o "$work/bench26" -ldnnl
g++ -O2 -std=c++17 -I"$work/x/onednn_devel-2026.1.0.data/data/include" "$here/conv_bench.cc" -o "$work/bench313" \
  -L"$(lib onednn-2026.1.0)" -l:libdnnl.so.3 -Wl,--disable-new-dtags,-rpath,"$libs" -Wl,-rpath-link,"$libs"
# The wheel's etc/OpenCL/vendors/intel-cpu.icd names a path of its build machine: point OpenCL at the library itself.
export OCL_ICD_FILENAMES="$(lib intel_opencl_rt-2026.2.0)/libintelocl.so"
export LD_LIBRARY_PATH="$(lib intel_opencl_rt-2026.2.0):$libs"
for geometry in 0 1 2 3 4 5; do
  for round in $(seq "${ROUNDS:-2}"); do
    OMP_NUM_THREADS=2 "$work/bench26" "$geometry" | grep -v '^#' | sed "s/^/2.6.3\t/"
    "$work/bench313" "$geometry" 2>/dev/null | grep -v '^#' | sed "s/^/3.13\t/"
  done
done | tee "$work/raw.tsv"
# Median per cell: version, geometry, variant, direction, ms, implementation.
python3 - "$work/raw.tsv" <<'PY'
import collections, statistics, sys
cells = collections.defaultdict(list)
for line in open(sys.argv[1]):
    version, geometry, variant, direction, ms, _ = line.rstrip("\n").split("\t")
    cells[(geometry, variant, direction)].append((version, float(ms)))
print("N,C_in,C_out,H,k  variant  direction  2.6.3 ms  3.13 ms  ratio")
for (geometry, variant, direction), times in cells.items():
    old, new = (statistics.median(ms for v, ms in times if v == version) for version in ("2.6.3", "3.13"))
    print(f"{geometry:18s} {variant:10s} {direction:6s} {old:9.3f} {new:8.3f} {new / old:6.2f}")
PY
