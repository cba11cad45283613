#!/usr/bin/env bash
# The bench step of scripts/demo.sh, writing into benchmarks/results/ (run the demo first):
# PyTorch and every exported variant of the demo model, 1 and 8 x 128 tokens and the 1,000
# held-out reviews at their natural lengths, 30 timed calls after 5 warm-up, 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
bertdeploy bench runs/demo/onnx --eval-file runs/demo/data/test.csv --batch-sizes 1,8 --seq-lengths 128 \
  --runs 30 --warmup 5 --json benchmarks/results/demo_bench.json --plot benchmarks/results/demo_bench.png
