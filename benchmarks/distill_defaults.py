"""Which layers, learning rate and epochs `distill --layers 3` should use by default: measured on the demo's reviews.

The teacher is the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2, 6 layers, fine-tuned on 4,000 of the
demo's reviews; made on first use, about 10 minutes on 2 cores). Three-layer students, T 2 and alpha 0.5, on the
teacher's training file, each scored on the 1,000 held-out reviews (accuracy, macro-F1, agreement with the teacher):
layers 0,2,5 (evenly spaced, first and last kept: the default) against 1,3,5 (every other layer, the last kept),
each at lr 1e-4 for 5 epochs (the default) and at 5e-5 for 3; 0,2,5 also at 1e-4 for 3 epochs (the learning rate
apart from the epochs), and the default once more with another seed (how far a seed moves the figures). One run,
machine recorded; writes benchmarks/results/distill_defaults.json.

    python benchmarks/distill_defaults.py [--teacher runs/minilm-demo/model] [--work runs/distill-defaults]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import minilm_demo

from bertdeploy import DistillOptions, distill
from bertdeploy.host import machine
from bertdeploy.timing import stopwatch

RESULTS = Path(__file__).parent / "results" / "distill_defaults.json"
MINILM = minilm_demo.DEFAULT
RUNS = [  # (name, layers, learning rate, epochs, seed)
    ("0,2,5 lr 1e-4 5 epochs (default)", [0, 2, 5], 1e-4, 5.0, 42),
    ("1,3,5 lr 1e-4 5 epochs", [1, 3, 5], 1e-4, 5.0, 42),
    ("0,2,5 lr 5e-5 3 epochs", [0, 2, 5], 5e-5, 3.0, 42),
    ("1,3,5 lr 5e-5 3 epochs", [1, 3, 5], 5e-5, 3.0, 42),
    ("0,2,5 lr 1e-4 3 epochs", [0, 2, 5], 1e-4, 3.0, 42),
    ("0,2,5 lr 1e-4 5 epochs, seed 43", [0, 2, 5], 1e-4, 5.0, 43),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=MINILM / "model")
    parser.add_argument("--work", type=Path, default=Path("runs/distill-defaults"))
    args = parser.parse_args()
    if args.teacher == MINILM / "model":
        minilm_demo.ensure()  # the default teacher, made on first use
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    figures: dict = {"machine": machine(threads=2), "teacher": str(args.teacher), "students": {}}
    for i, (name, layers, learning_rate, epochs, seed) in enumerate(RUNS):
        result, seconds = stopwatch(distill, DistillOptions(
            args.teacher, args.work / f"student-{i}", layers=layers, max_accuracy_drop=100.0,
            training={"learning_rate": learning_rate, "epochs": epochs, "seed": seed, "overwrite": True}))
        student = result.figures["student"]
        figures["students"][name] = {"accuracy": student["accuracy"], "macro_f1": student["macro_f1"],
                                     "agreement": student["agreement"], "accuracy_drop": student["accuracy_drop"],
                                     "teacher_accuracy": result.figures["teacher"]["accuracy"],
                                     "layers_kept": result.layers, "best_epoch": result.student.best_epoch,
                                     "train_seconds": seconds}
        print(f"{name:<34} accuracy {student['accuracy']:.4f} ({-student['accuracy_drop']:+.2f}) macro-F1 "
              f"{student['macro_f1']:.4f} agreement {student['agreement']:.4f} best epoch "
              f"{result.student.best_epoch:g}", flush=True)
        RESULTS.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
