"""One JSON of what a run of `scripts/demo.sh` printed: the figures the README's quick start shows.

Reads the demo's folder after the run (runs/demo by default): the fine-tuning history (model/metrics.json), every
variant's figures as export judged them (onnx/manifest.json), `bench`'s figures with the machine (bench.json) and
the accuracy of `predict` on the test file (test_predictions.csv); with --seconds, how long the whole script took.
Writes benchmarks/results/demo_e5_<name>.json.

    python benchmarks/demo_record.py NAME [--demo runs/demo] [--seconds 630]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def record(demo: Path, seconds: float | None) -> dict:
    metrics = json.loads((demo / "model" / "metrics.json").read_text())
    manifest = json.loads((demo / "onnx" / "manifest.json").read_text())
    bench = json.loads((demo / "bench.json").read_text())
    with (demo / "test_predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {
        "machine": bench["machine"],
        "demo_seconds": seconds,
        "finetune": {"epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
                     "train_samples_per_second": metrics["train_samples_per_second"]},
        "export": {"default_variant": manifest["default_variant"], "exporter": manifest["exporter"],
                   "pytorch": manifest["evaluation"]["pytorch"], "vocabulary": manifest.get("vocabulary"),
                   "variants": {name: {"eval": v["eval"], "size_bytes": v["size_bytes"], "latency_ms": v["latency_ms"]}
                                for name, v in manifest["variants"].items()},
                   "auto": manifest.get("auto")},
        "bench": bench,
        "predict_accuracy": sum(r["label"] == r["predicted_label"] for r in rows) / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="names the result file: demo_e5_<name>.json")
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seconds", type=float, help="the whole demo's wall time")
    args = parser.parse_args()
    out = RESULTS / f"demo_e5_{args.name}.json"
    out.write_text(json.dumps(record(args.demo, args.seconds), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
