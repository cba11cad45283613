"""How much a text's score depends on the texts batched with it, per variant.

Dynamic INT8 computes each activation's quantization range over the whole batch, so a text's
score moves a little with its batch-mates; fp32 should not move beyond rounding. On the MiniLM of
benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about 10 minutes
on 2 cores) and its 1,000 held-out reviews, each variant predicts every text alone and then all of them in the
predictor's length-grouped batches (default token budget); we record the largest score difference, the labels
that flip and the accuracy both ways.
Writes benchmarks/results/batch_invariance.json.

    python benchmarks/batch_invariance.py [--artifacts runs/minilm-demo/onnx]
                                          [--eval-file runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import Predictor
from bertdeploy.builder.examples import load_examples
from bertdeploy.host import machine

RESULTS = Path(__file__).parent / "results" / "batch_invariance.json"
MINILM = minilm_demo.DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--eval-file", type=Path, default=MINILM / "data" / "test.csv")
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.eval_file == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    examples = load_examples(args.eval_file)
    results = {}
    for variant in json.loads((args.artifacts / "manifest.json").read_text())["variants"]:
        p = Predictor.load(args.artifacts, variant=variant)
        alone = np.concatenate([p.predict_proba([t]) for t in examples.texts])
        batched = p.predict_proba(examples.texts)
        truth = np.array([p.labels.index(y) for y in examples.labels])
        results[variant] = {
            "max_abs_score_diff": float(np.abs(alone - batched).max()),
            "mean_abs_score_diff": float(np.abs(alone - batched).mean()),
            "labels_flipped": int((alone.argmax(-1) != batched.argmax(-1)).sum()),
            "accuracy_alone": float((alone.argmax(-1) == truth).mean()),
            "accuracy_batched": float((batched.argmax(-1) == truth).mean()),
        }
        print(variant, results[variant])
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"texts": len(examples), "machine": machine(), "variants": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
