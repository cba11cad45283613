"""What `export --trim-vocabulary` saves on a multilingual model: size, load time, peak memory, accuracy.

Two exports of one fine-tuned classifier, made by the caller: `--full` without trimming and `--trimmed`
with `--trim-vocabulary`. For each, the files' sizes (from the manifest) and, per variant in both:
a fresh Python process that loads `Predictor` and labels one review, timed from start to exit
with its peak RSS (`ru_maxrss`), the two exports taking turns (timing.py's harness; one warm-up
round, page cache warm); then the accuracy of each variant on the labelled file, and how often
the two agree. Writes benchmarks/results/trim_vocabulary.json.

    python benchmarks/trim_vocabulary.py --full runs/e5/full --trimmed runs/e5/trim --texts test.csv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bertdeploy import Predictor
from bertdeploy.builder.examples import load_examples
from bertdeploy.host import machine
from bertdeploy.manifest import ExportManifest
from bertdeploy.timing import interleave

RESULTS = Path(__file__).parent / "results" / "trim_vocabulary.json"
LOAD = """
import resource, sys
from bertdeploy import Predictor
Predictor.load(sys.argv[1], variant=sys.argv[2]).predict(["这个手机真的很好用！"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=Path, required=True)
    parser.add_argument("--trimmed", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="labelled texts (text,label)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exports = {"full": args.full, "trimmed": args.trimmed}
    manifests = {name: ExportManifest.read(path) for name, path in exports.items()}
    variants = [v for v in manifests["full"].variants if v in manifests["trimmed"].variants]
    rss: dict[tuple[str, str], list[int]] = {(n, v): [] for n in exports for v in variants}

    def load(name: str, variant: str):
        def run(step: int) -> None:
            out = subprocess.run([sys.executable, "-c", LOAD, str(exports[name]), variant], capture_output=True,
                                 text=True, check=True)
            rss[(name, variant)].append(int(out.stdout.split()[-1]) // 1024)
        return run

    ms = interleave({(n, v): load(n, v) for n in exports for v in variants}, args.rounds, warmup=1)
    examples = load_examples(args.texts)
    results = {"machine": machine(), "texts": str(args.texts), "rounds": args.rounds,
               "vocabulary": manifests["trimmed"].vocabulary, "exports": {}}
    labels = {}
    for name, path in exports.items():
        manifest = manifests[name]
        entry = {"tokenizer_bytes": (path / manifest.tokenizer).stat().st_size, "variants": {}}
        for variant in variants:
            predicted = [p.label for p in Predictor.load(path, variant=variant).predict(examples.texts)]
            labels[(name, variant)] = predicted
            entry["variants"][variant] = {
                "bytes": manifest.variants[variant].size_bytes,
                "process_load_and_one_text_ms": float(np.median(ms[(name, variant)])),
                "peak_rss_mb": int(np.median(rss[(name, variant)])),
                "accuracy": float(np.mean([p == y for p, y in zip(predicted, examples.labels, strict=True)]))}
        results["exports"][name] = entry
    results["agreement"] = {v: float(np.mean([a == b for a, b in zip(labels[("full", v)], labels[("trimmed", v)],
                                                                       strict=True)])) for v in variants}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for variant in variants:
        full, trimmed = (results["exports"][n]["variants"][variant] for n in exports)
        print(f"{variant:<8} size {full['bytes'] / 1e6:6.1f} -> {trimmed['bytes'] / 1e6:6.1f} MB, load "
              f"{full['process_load_and_one_text_ms']:6.0f} -> {trimmed['process_load_and_one_text_ms']:6.0f} ms, "
              f"RSS {full['peak_rss_mb']} -> {trimmed['peak_rss_mb']} MB, accuracy {full['accuracy']:.4f} -> "
              f"{trimmed['accuracy']:.4f}, agreement {results['agreement'][variant]:.2%}")


if __name__ == "__main__":
    main()
