"""How many dimensions a static student's token vectors need: `distill --static --static-dims N` for several N.

On the two sets of `benchmarks/static.py` (run that first: it builds the topic teacher and data in
runs/static-topics), whose reviews' teacher is the demo's model, runs/demo/model after `bash scripts/demo.sh`
(multilingual-e5-small): one static student per dimension count with distill's other defaults, no accuracy bound (to
record what each does). Per student: accuracy and agreement with the teacher on the held-out texts (as distill
scores them), the best epoch, the accuracy after each epoch, the table's size in fp32 and the whole `distill` time.
Accuracy only: nothing here is timed against anything else, and a static model's speed hardly depends on its width
at these sizes (benchmarks/static.py times the default).

Writes benchmarks/results/static_dims.json.

    python benchmarks/static_dims.py [--dims 64,128,256,384] [--work runs/static-dims]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bertdeploy import DistillOptions, distill
from bertdeploy.host import machine
from bertdeploy.timing import stopwatch

RESULTS = Path(__file__).parent / "results" / "static_dims.json"
TEACHERS = {"topics": Path("runs/static-topics/teacher"), "reviews": Path("runs/demo/model")}
MAKES = {"topics": "`python benchmarks/static.py topics`", "reviews": "`bash scripts/demo.sh` (multilingual-e5-small)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="64,128,256,384")
    parser.add_argument("--work", type=Path, default=Path("runs/static-dims"))
    parser.add_argument("--sets", default="topics,reviews")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in args.sets.split(","):
        if not (TEACHERS[name] / "manifest.json").is_file():
            raise SystemExit(f"{TEACHERS[name]}: no fine-tuned teacher; run {MAKES[name]} first")
    figures: dict = {"machine": machine(), "sets": {}}
    for name in args.sets.split(","):
        teacher = TEACHERS[name].absolute()
        figures["sets"][name] = {"teacher": str(teacher), "students": {}}
        for dims in map(int, args.dims.split(",")):
            out = args.work.absolute() / f"{name}-{dims}"
            result, seconds = stopwatch(distill, DistillOptions(teacher, out, static=True, static_dims=dims,
                                                                max_accuracy_drop=100.0,
                                                                training={"overwrite": True}))
            metrics = json.loads((out / "metrics.json").read_text())
            student, vocabulary = result.figures["student"], result.static["tokens"]
            entry = {"accuracy": student["accuracy"], "drop": student["accuracy_drop"],
                     "agreement": student["agreement"], "teacher": result.figures["teacher"]["accuracy"],
                     "best_epoch": metrics["best_epoch"], "table_mb": result.static["vocabulary"] * dims * 4 / 1e6,
                     "tokens": vocabulary, "seconds": seconds,
                     "per_epoch": [round(e["accuracy"], 4) for e in metrics["epochs"] if "accuracy" in e]}
            figures["sets"][name]["students"][str(dims)] = entry
            print(f"{name} {dims:>4} dims: accuracy {entry['accuracy']:.4f} ({-entry['drop']:+.2f} points), agreement "
                  f"{entry['agreement']:.3f}, best epoch {entry['best_epoch']:.0f}, table {entry['table_mb']:.1f} MB, "
                  f"{seconds:.0f} s; per epoch {entry['per_epoch']}", flush=True)
            RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
