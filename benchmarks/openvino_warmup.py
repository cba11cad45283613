"""What OpenVINO's first call per input shape costs, and how much the previous call's engine matters.

On the `int8-ov` of the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made
on first use, about 10 minutes on 2 cores), 2 threads: (1) every shape the predictor can produce at the default
1,024-token budget (rows x padded length), run twice in a fresh model: the first pass pays the per-shape
compilation, the second does not; (2) the median of 60 calls at 1 x 128 made right after a call on an ONNX Runtime
model, on another OpenVINO model, or on the same model (what the bench's shuffled turns average over). Writes
benchmarks/results/openvino_warmup.json.

    python benchmarks/openvino_warmup.py [--artifacts runs/minilm-demo/onnx]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy.host import machine
from bertdeploy.runtime.backends import OpenVinoModel, OrtModel
from bertdeploy.runtime.encoding import CPU_BATCH_TOKENS, MAX_BATCH_SIZE, PAD_MULTIPLE
from bertdeploy.timing import stopwatch

RESULTS = Path(__file__).parent / "results" / "openvino_warmup.json"
THREADS = 2
MINILM = minilm_demo.DEFAULT


def feed(rows: int, length: int) -> dict:
    ids = np.full((rows, length), 1000, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def timed(model, inputs: dict) -> float:
    """ms of one call: a first call per shape is what this measures, so no interleaving here."""
    return stopwatch(model.run, model.prepare(inputs))[1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    path = args.artifacts / manifest["variants"]["int8-ov"]["file"]
    max_length = manifest["max_length"]

    model = OpenVinoModel(path, THREADS)
    shapes = [(rows, length) for length in range(PAD_MULTIPLE, max_length + 1, PAD_MULTIPLE)
              for rows in range(1, min(MAX_BATCH_SIZE, CPU_BATCH_TOKENS // length) + 1)]
    passes = [[timed(model, feed(*shape)) for shape in shapes] for _ in range(2)]
    extra = np.array(passes[0]) - np.array(passes[1])
    singles = [shapes.index((1, n)) for n in range(PAD_MULTIPLE, max_length + 1, PAD_MULTIPLE)]
    per_shape = {"shapes": len(shapes), "first_pass_s": sum(passes[0]) / 1000,
                 "second_pass_s": sum(passes[1]) / 1000, "first_call_extra_ms_median": float(np.median(extra)),
                 "batch_1_first_ms": [round(passes[0][i], 3) for i in singles],
                 "batch_1_second_ms": [round(passes[1][i], 3) for i in singles]}
    print(f"{len(shapes)} shapes: first pass {per_shape['first_pass_s']:.2f} s, "
          f"second {per_shape['second_pass_s']:.2f} s; a first call costs "
          f"{per_shape['first_call_extra_ms_median']:.1f} ms more (median)")

    other = OpenVinoModel(path, THREADS)
    ort = OrtModel(args.artifacts / manifest["variants"]["O2-int8"]["file"], threads=THREADS)
    inputs = feed(1, max_length)
    for m in (model, other, ort):
        timed(m, inputs)
    after = {}
    for label, before in (("onnxruntime", ort), ("another openvino model", other), ("the same model", model)):
        samples = []
        for _ in range(60):
            timed(before, inputs)
            samples.append(timed(model, inputs))
        after[label] = float(np.median(samples))
        print(f"1 x {max_length} on int8-ov right after a call on {label}: {after[label]:.2f} ms (median of 60)")

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": THREADS, "machine": machine(threads=THREADS), "per_shape": per_shape,
                                   "after_ms": after}, indent=1) + "\n")


if __name__ == "__main__":
    main()
