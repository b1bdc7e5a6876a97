#!/usr/bin/env bash
# Sets up cnn_jax on a Debian/Ubuntu machine: the Fashion-MNIST package, a C++ compiler (for cnn_jax's
# compiled CPU kernels; on x86-64, pip installs the oneDNN they link, elsewhere Debian's libdnnl-dev), jemalloc,
# and a virtual environment in .venv with cnn_jax installed (editable).
#   bash setup.sh        # what the experiments and the notebook need
#   bash setup.sh test   # plus what the tests need (TensorFlow for tensorflow-datasets, pytest)
set -euo pipefail
cd "$(dirname "$0")"

extras="[notebook]"
if [ "${1:-}" = "test" ]; then extras="[test]"; fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
[ "$(uname -m)" = x86_64 ] || [ -f /usr/include/oneapi/dnnl/dnnl.hpp ] || need+=(libdnnl-dev)
command -v g++ >/dev/null || need+=(g++)
# The commands run under jemalloc, which keeps the memory XLA frees between steps (experiments/__init__.py).
/sbin/ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2' || need+=(libjemalloc2)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
  else
    echo "setup.sh: not a Debian system; install ${need[*]} yourself (or pass --data_dir to the experiments)" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
# Compile the CPU kernels now rather than on the first run (it warns, and cnn_jax
# falls back to XLA's operations, if it cannot).
.venv/bin/python -c "from cnn_jax.kernels import ffi; ffi.load()"
