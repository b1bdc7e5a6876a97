#!/usr/bin/env bash
# The zoo benchmark with cnn_jax's kernels built on each oneDNN: the system's (Debian's 2.6.3) and PyPI's CPU build
# (onednn-cpu-gomp, 3.2, which pyproject.toml installs), the two taking turns process by process, ROUNDS times
# (BENCHMARKS.md, "oneDNN"). Arguments go to `experiments.benchmark --what=zoo`.
#   bash experiments/onednn_versions/zoo.sh --batch_size=128 --repeats=3 --repeat_seconds=3 --models=resnet18
set -euo pipefail
cd "$(dirname "$0")/../.."
for round in $(seq "${ROUNDS:-2}"); do
  for onednn in system auto; do
    CNN_JAX_ONEDNN=$onednn .venv/bin/python -m experiments.benchmark --what=zoo "$@" | sed "s/^/[round $round] /"
  done
done
