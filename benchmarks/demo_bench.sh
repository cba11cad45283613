#!/usr/bin/env bash
# The bench step of scripts/demo.sh on the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the
# demo's reviews; made on first use, about 10 minutes on 2 cores), writing into benchmarks/results/: PyTorch and
# every exported variant, 1 and 8 x 128 tokens and the 1,000 held-out reviews at their natural lengths, 30 timed
# calls after 5 warm-up, 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import sys; sys.path.insert(0, 'benchmarks'); import minilm_demo; minilm_demo.ensure()"
bertdeploy bench runs/minilm-demo/onnx --eval-file runs/minilm-demo/data/test.csv --batch-sizes 1,8 \
  --seq-lengths 128 --runs 30 --warmup 5 --json benchmarks/results/demo_bench.json \
  --plot benchmarks/results/demo_bench.png
