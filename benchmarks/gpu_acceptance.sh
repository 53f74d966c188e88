#!/usr/bin/env bash
# GPU acceptance run (~8 min on one GPU): report in ${1:-benchmarks/results/gpu}; see docs/benchmarks.md "Running on a GPU".
cd "$(dirname "$0")/.." && exec python benchmarks/gpu_acceptance.py --output "${1:-benchmarks/results/gpu}" "${@:2}"
