"""What alternating between ONNX Runtime and OpenVINO costs a stream of single texts, on a fine-tuned MiniLM.

On the export of the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on
first use, about 10 minutes on 2 cores): one review per call, text in -> label out, 600 reviews, 2 threads, the
candidates taking turns in blocks of 25 (a stream of requests), 20 warm-up calls each: `Predictor.load(dir)` as
loaded by default; export's ONNX Runtime default variant alone (spinning on, the default); `int8-ov` alone; and both
runtimes alternating by length, as routes by padded tokens without `backends.SWITCH_MARGIN` gave (reviews over 81
padded tokens on `int8-ov`, the rest on ONNX Runtime's variant). Medians over all reviews, over the short and the
long ones, and over the short ones that came right after a long one. Writes benchmarks/results/runtime_switch.json.

    python benchmarks/runtime_switch.py [--artifacts runs/minilm-demo/onnx]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import Predictor
from bertdeploy.demo.packaged import review_texts
from bertdeploy.host import machine
from bertdeploy.runtime.encoding import padded_length
from bertdeploy.timing import interleave

RESULTS = Path(__file__).parent / "results" / "runtime_switch.json"
THREADS, BLOCK, TEXTS, BOUNDARY = 2, 25, 600, 81
MINILM = minilm_demo.DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    pool = [t for group in review_texts().values() for t in group]
    texts = [pool[i] for i in np.random.default_rng(1).permutation(len(pool))[:TEXTS]]
    ort = Predictor.load(args.artifacts, backend="onnxruntime", threads=THREADS)
    ov = Predictor.load(args.artifacts, variant="int8-ov", threads=THREADS)
    alternating = (Predictor.load(args.artifacts, backend="onnxruntime", threads=THREADS),
                   Predictor.load(args.artifacts, variant="int8-ov", threads=THREADS))
    default = Predictor.load(args.artifacts, threads=THREADS)
    lengths = np.array([padded_length(len(e.ids)) for e in ort.encoder.tokenize(texts)])
    long = lengths > BOUNDARY

    def both(i: int) -> object:
        return alternating[int(long[i])].predict([texts[i]])

    candidates = {f"as loaded by default ({default.describe()})": lambda i: default.predict([texts[i]]),
                  f"{ort.variant} alone (ONNX Runtime)": lambda i: ort.predict([texts[i]]),
                  "int8-ov alone (OpenVINO)": lambda i: ov.predict([texts[i]]),
                  f"alternating: over {BOUNDARY} tokens int8-ov, the rest {ort.variant}": both}
    ms = {name: np.zeros(len(texts)) for name in candidates}
    for call in candidates.values():
        for i in range(20):
            call(i)
    interleave({name: functools.partial(_block, call, ms[name]) for name, call in candidates.items()},
               len(texts) // BLOCK)
    after_long = np.r_[False, long[:-1]] & ~long
    figures = {"machine": machine(threads=THREADS), "artifacts": str(args.artifacts), "texts": len(texts),
               "long_share": float(long.mean()), "boundary_tokens": BOUNDARY, "candidates": {
                   name: {"median_ms": float(np.median(t)), "mean_ms": float(t.mean()),
                          "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
                          "short_median_ms": float(np.median(t[~long])), "long_median_ms": float(np.median(t[long])),
                          "short_after_long_median_ms": float(np.median(t[after_long]))}
                   for name, t in ms.items()}}
    RESULTS.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{long.mean():.0%} of the reviews over {BOUNDARY} padded tokens")
    for name, f in figures["candidates"].items():
        print(f"{name:<90} " + " ".join(f"{k[:-3]} {v:.2f}" for k, v in f.items()))


def _block(call, ms: np.ndarray, step: int) -> None:
    for i in range(step * BLOCK, min((step + 1) * BLOCK, len(ms))):
        started = time.perf_counter()
        call(i)
        ms[i] = (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
