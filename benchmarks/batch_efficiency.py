"""How much batching can add on this CPU, and what the padding cap is worth.

The MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use,
about 10 minutes on 2 cores), real reviews from its test file, predictor code as shipped: texts one by one, and
groups of 8, 32 and 64 consecutive reviews (what the server's batcher gathers), each group sorted by length and cut
into batches under the 1,024-token budget, with and without the cap on padding (a batch never padded more than 25%
over its texts' own lengths). Three rounds of 256 reviews, the configurations interleaved in each; medians of texts/s.
Writes benchmarks/results/batch_efficiency.json.

    python benchmarks/batch_efficiency.py [--artifacts runs/minilm-demo/onnx] [--texts runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import Predictor
from bertdeploy.data import load_texts
from bertdeploy.host import machine
from bertdeploy.runtime.encoding import MAX_PADDING, run_batches
from bertdeploy.timing import interleave

RESULTS = Path(__file__).parent / "results" / "batch_efficiency.json"
ROUNDS, PER_ROUND = 3, 256
MINILM = minilm_demo.DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--texts", type=Path, default=MINILM / "data" / "test.csv")
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.texts == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    texts, _ = load_texts(args.texts)
    p = Predictor.load(args.artifacts)

    def scores(group: list[str], cap: float | None) -> np.ndarray:
        encodings = p.encoder.tokenize(group)
        return run_batches(p.run_batch, p.encoder, encodings, p.input_names, len(p.labels), p.max_batch_tokens,
                           p.max_batch_size, cap)

    def one_round(group: int, cap: float | None, step: int) -> None:
        chunk = texts[step * PER_ROUND:(step + 1) * PER_ROUND]
        for i in range(0, len(chunk), group):
            scores(chunk[i:i + group], cap)

    configs = {"one by one": (1, None)}
    for group in (8, 32, 64):
        configs[f"groups of {group}, no padding cap"] = (group, None)
        configs[f"groups of {group}, padding cap {MAX_PADDING}"] = (group, MAX_PADDING)
    scores(texts[:64], None)  # warm-up
    samples = interleave({name: functools.partial(one_round, *config) for name, config in configs.items()}, ROUNDS)
    rates = {name: [PER_ROUND / (ms / 1000) for ms in values] for name, values in samples.items()}
    results = {"variant": p.variant, "max_batch_tokens": p.max_batch_tokens, "machine": machine(),
               "texts_per_s": {name: float(np.median(v)) for name, v in rates.items()}, "rounds": rates}
    for name, rate in results["texts_per_s"].items():
        print(f"{name:<36} {rate:6.0f} texts/s")
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
