"""Quantizing to the accuracy bound, on a model where plain INT8 misses it.

The MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about
10 minutes on 2 cores) given an outlier feature with the tests' `add_outlier_feature` (tests/helpers.py): in every
layer one attention value feature is scaled up 10,000x and the output projection's weights for it scaled down as
much, so PyTorch's logits are unchanged but one 8-bit scale per tensor rounds every other feature of that
projection's input to zero. Exported twice, each with int8 and int8-ov: with the default bound (1 point; the export
keeps the most sensitive nodes in float until the bound holds) and with a bound no variant can miss (the plain
builds). Records, per variant, the attempts, the nodes left in float and the accuracy; then times fp32 and the plain
and searched builds on ONNX Runtime / OpenVINO at batch 1 and 8 of real reviews, interleaved
(timing.interleaved_latency, 2 threads). Writes benchmarks/results/quantize_to_bound.json.

    python benchmarks/quantize_to_bound.py [--model runs/minilm-demo/model]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import minilm_demo

from bertdeploy import ExportOptions, export
from bertdeploy.host import machine
from bertdeploy.runtime.backends import open_model
from bertdeploy.runtime.encoding import encode, load_encoder
from bertdeploy.timing import interleaved_latency

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from helpers import add_outlier_feature  # noqa: E402 - the tests' model, so both measure the same thing

RESULTS = Path(__file__).parent / "results" / "quantize_to_bound.json"
THREADS = 2
MINILM = minilm_demo.DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MINILM / "model")
    args = parser.parse_args()
    if args.model == MINILM / "model":
        minilm_demo.ensure()  # the default model, made on first use
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = add_outlier_feature(args.model, work / "outlier")
        runs = {}
        for label, bound in (("searched", 1.0), ("plain", 100.0)):
            result = export(ExportOptions(model, work / label, quantize=["int8", "int8-ov"], openvino=False,
                                          max_accuracy_drop=bound))
            runs[label] = result
        searched = runs["searched"]
        figures = {"reference_accuracy": searched.reference["accuracy"], "texts": searched.texts, "variants": {}}
        for label, result in runs.items():
            for v in result.variants:
                figures["variants"][f"{v.name} ({label})"] = {
                    "shipped": v.shipped, "reason": v.reason, "eval": v.eval, "agreement": v.parity["label_agreement"],
                    "size_mb": v.size_bytes / 1e6, "float_nodes": (v.quantization or {}).get("float_nodes"),
                    "float_candidates": (v.quantization or {}).get("float_candidates"),
                    "attempts": [(a["nodes_kept_float"], a["passed"], a["eval"] and a["eval"]["accuracy_drop"])
                                 for a in v.attempts],
                }
        models = {f"{v.name} ({label})": open_model(result.output_dir / v.file, v.backend, "cpu", threads=THREADS,
                                                            precision=v.precision)
                  for label, result in runs.items() for v in result.variants
                  if v.shipped and (label == "searched" or v.name != "fp32")}
        manifest = json.loads((searched.output_dir / "manifest.json").read_text())
        encoder = load_encoder(searched.output_dir / "tokenizer.json", manifest["max_length"])
        names = next(iter(models.values())).input_names
        texts = _texts(manifest)
        feeds = {"batch_1": [encode(encoder, [t], None, names) for t in texts[:8]],
                 "batch_8": [encode(encoder, texts[i:i + 8], None, names) for i in range(8, 40, 8)]}
        latency = interleaved_latency({name: m.run for name, m in models.items()}, feeds, rounds=15)
        for name, ms in latency.items():
            figures["variants"][name]["latency_ms"] = ms
    RESULTS.write_text(json.dumps({"machine": machine(threads=THREADS), "model": str(args.model), **figures},
                                  indent=1) + "\n")
    for name, f in figures["variants"].items():
        drop = f["eval"] and f["eval"]["accuracy_drop"]
        print(f"{name:<22} shipped {f['shipped']!s:<5} drop {drop if drop is None else round(drop, 2)!s:>6} "
              f"float {len(f['float_nodes'] or [])}/{f['float_candidates']} attempts {f['attempts']} "
              f"{f.get('latency_ms')}")


def _texts(manifest: dict) -> list[str]:
    from bertdeploy.data import load_texts

    path = manifest["evaluation"]["source"].split(" (")[0]
    return load_texts(path, manifest["text_column"], None)[0][:40]


if __name__ == "__main__":
    main()
