"""Our predictor against the transformers pipeline (PyTorch fp32) and Optimum's ORT pipeline, on real reviews.

The MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's Chinese reviews; made on first
use, about 10 minutes on 2 cores) and its export:
  1. single-text latency, text in -> label out, tokenization included: our Predictor as loaded by
     default (`--backend auto`: the variants bench recorded fastest per batch size in padded tokens),
     our Predictor on ONNX Runtime's default variant (INT8), the same with ONNX Runtime's
     spinning off (the predictor's default is on, as Optimum's), the transformers
     `pipeline("text-classification")` in PyTorch fp32 and, on CPUs that compute bf16, the same under
     bf16 autocast, and Optimum's `ORTModelForSequenceClassification` in the same pipeline on that same
     ONNX Runtime INT8 file. 600 reviews; they take turns in blocks of 25 texts, so drift hits all
     alike (and one's spinning threads only touch the first call of the next block); 20 warm-up
     calls each.
  2. bulk, 10,000 reviews: `bertdeploy predict` (default backend) as a whole process (start-up,
     reading and writing the CSV included) against both pipelines with batch_size=32 in this
     process (model already loaded), and our Predictor in this process.
  3. cold start, process start to the first label printed, and the process's peak RSS: five
     alternating runs of each, medians; ours loads as by default, and with backend="onnxruntime".
  4. the default Predictor's texts/s on 2,000 reviews for token budgets per batch from 1,024 to
     16,384, interleaved, three rounds (for the default of --max-batch-tokens).
Every run uses 2 threads (this machine's CPUs), truncation at the model's 128 tokens.
Writes benchmarks/results/predictor_speed.json. Optimum's pipeline needs optimum-onnx, which holds transformers below
4.58 and so does not install beside bertdeploy's build stack (transformers 5.3 or newer): run this script in a venv
with bertdeploy's runtime, transformers 4.57.6 and optimum-onnx 0.1.0, after making the MiniLM in bertdeploy's own
venv (`python benchmarks/minilm_demo.py`: that venv fine-tunes, this one cannot).

    python benchmarks/predictor_speed.py [--model runs/minilm-demo/model] [--artifacts runs/minilm-demo/onnx]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import Predictor
from bertdeploy.builder.reference import computes_bf16
from bertdeploy.demo.packaged import review_texts
from bertdeploy.host import machine
from bertdeploy.timing import interleave, stopwatch

RESULTS = Path(__file__).parent / "results" / "predictor_speed.json"
BIN = Path(sys.executable).parent
MAX_LENGTH = 128
BLOCK = 25
MINILM = minilm_demo.DEFAULT


def reviews(n: int, seed: int = 0) -> list[str]:
    texts = [t for group in review_texts().values() for t in group]
    return [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:n]]


def optimum_dir(model: Path, artifacts: Path, variant_file: str, work: Path) -> Path:
    """Optimum wants config.json and the tokenizer beside the ONNX file: the same INT8 file, copied."""
    folder = work / "optimum"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "checkpoint-*"))
    shutil.copy(artifacts / variant_file, folder / variant_file)
    return folder


def pipelines(model: Path, optimum_model: Path, variant_file: str) -> dict:
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model)
    ort_model = ORTModelForSequenceClassification.from_pretrained(optimum_model, file_name=variant_file)
    fp32 = pipeline("text-classification", model=str(model), device=-1)
    return {
        "transformers pipeline, PyTorch fp32": fp32,
        **({"transformers pipeline, PyTorch bf16 autocast": Autocast(fp32)} if computes_bf16() else {}),
        "Optimum ORT pipeline, same INT8 file": pipeline("text-classification", model=ort_model, tokenizer=tokenizer),
    }


class Autocast:
    """A pipeline called under torch.autocast(bfloat16): the one line that speeds PyTorch up on bf16 CPUs."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def __call__(self, *args, **kwargs):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.pipe(*args, **kwargs)


def single_latency(candidates: dict, texts: list[str]) -> dict:
    """ms from text to label, one text per call; the candidates take turns in blocks of BLOCK consecutive texts
    (timing.interleave), a stream of requests as a service sees them."""
    for label_of in candidates.values():
        for text in texts[:20]:
            label_of(text)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    interleave({name: functools.partial(stream_block, label_of, texts, times[name])
                for name, label_of in candidates.items()}, len(texts) // BLOCK)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
                   "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(np.mean(t)), "calls": len(t)}
            for name, t in times.items()}


def stream_block(label_of, texts: list[str], ms: list[float], step: int) -> None:
    """Block `step` of the texts, one call each, each call's ms appended to `ms`."""
    for text in texts[step * BLOCK:(step + 1) * BLOCK]:
        ms.append(stopwatch(label_of, text)[1] * 1000)


DEFAULT = "bertdeploy Predictor as loaded by default (--backend auto)"


def budget_sweep(artifacts: Path, texts: list[str], rounds: int = 3) -> dict:
    """Texts per second of Predictor.predict for several token budgets per batch, interleaved."""
    budgets = (1024, 2048, 4096, 8192, 16384)
    predictors = {b: Predictor.load(artifacts, max_batch_tokens=b) for b in budgets}
    predictors[budgets[0]].predict(texts[:64])
    ms = interleave({b: lambda step, p=p: p.predict_proba(texts) for b, p in predictors.items()}, rounds)
    return {str(b): {"texts_per_second": len(texts) / (float(np.median(m)) / 1000), "rounds": rounds}
            for b, m in ms.items()}


def run_cli(artifacts: Path, source: Path, output: Path) -> float:
    return stopwatch(subprocess.run, [str(BIN / "bertdeploy"), "-q", "predict", str(artifacts), str(source), "-o",
                                      str(output)], check=True)[1]


def bulk(artifacts: Path, hf: dict, texts: list[str], work: Path) -> dict:
    source = work / "reviews.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    results, labels = {}, {}
    seconds = run_cli(artifacts, source, work / "out.csv")
    with (work / "out.csv").open(encoding="utf-8") as f:
        labels["bertdeploy predict (whole process)"] = [r["label"] for r in csv.DictReader(f)]
    results["bertdeploy predict (whole process)"] = seconds
    for name, pipe in hf.items():
        out, results[f"{name}, batch_size=32"] = stopwatch(pipe, texts, batch_size=32, truncation=True,
                                                            max_length=MAX_LENGTH)
        labels[f"{name}, batch_size=32"] = [o["label"] for o in out]
    predictor = Predictor.load(artifacts)
    predicted, results["Predictor.predict (in process)"] = stopwatch(predictor.predict, texts)
    labels["Predictor.predict (in process)"] = [p.label for p in predicted]
    results["bertdeploy predict (whole process), again"] = run_cli(artifacts, source, work / "out2.csv")
    reference = labels["transformers pipeline, PyTorch fp32, batch_size=32"]
    return {name: {"seconds": s, "texts_per_second": len(texts) / s,
                   "label_agreement_with_pytorch": (float(np.mean([a == b for a, b in zip(labels[name], reference,
                                                                                          strict=True)]))
                                                    if name in labels else None)}
            for name, s in results.items()}


# Each child prints the first label, then its own peak RSS (VmHWM, which starts afresh at exec; the
# rusage figure would carry the forking parent's size).
PEAK = "\nprint([x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1], flush=True)"
COLD = {
    "bertdeploy Predictor": "from bertdeploy.predictor import Predictor\n"
                            "p = Predictor.load({artifacts!r})\nprint(p.predict([{text!r}])[0].label, flush=True)"
                            + PEAK,
    "bertdeploy Predictor, backend onnxruntime": "from bertdeploy.predictor import Predictor\n"
                                                 "p = Predictor.load({artifacts!r}, backend='onnxruntime')\n"
                                                 "print(p.predict([{text!r}])[0].label, flush=True)" + PEAK,
    "transformers pipeline": "from transformers import pipeline\n"
                             "p = pipeline('text-classification', model={model!r}, device=-1)\n"
                             "print(p({text!r})[0]['label'], flush=True)" + PEAK,
    "Optimum ORT pipeline": "from optimum.onnxruntime import ORTModelForSequenceClassification\n"
                            "from transformers import AutoTokenizer, pipeline\n"
                            "m = ORTModelForSequenceClassification.from_pretrained({optimum!r}, file_name={file!r})\n"
                            "p = pipeline('text-classification', model=m, tokenizer=AutoTokenizer.from_pretrained("
                            "{model!r}))\nprint(p({text!r})[0]['label'], flush=True)" + PEAK,
}


def cold_start(values: dict, repeats: int = 5) -> dict:
    """Spawn to the first label on stdout, and the child's peak RSS up to then, medians over runs; the
    candidates take turns in a shuffled order (timing.interleave), each figure from spawn to that label."""
    figures = {name: {"seconds": [], "peak_rss_mb": []} for name in COLD}

    def start(name: str, step: int) -> None:
        with tempfile.TemporaryFile("w+") as errors:
            (child, label), seconds = stopwatch(_first_line, COLD[name].format(**values), errors)
            peak_kb = child.stdout.read()
            if child.wait() != 0 or not label:
                errors.seek(0)
                raise SystemExit(f"{name} failed: {errors.read()}")
        figures[name]["seconds"].append(seconds)
        figures[name]["peak_rss_mb"].append(int(peak_kb) / 1024)

    interleave({name: functools.partial(start, name) for name in COLD}, repeats)
    return {name: {"median_seconds": float(np.median(f["seconds"])),
                   "median_peak_rss_mb": float(np.median(f["peak_rss_mb"])), **f} for name, f in figures.items()}


def _first_line(script: str, errors) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=errors, text=True)
    return child, child.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=MINILM / "model")
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--bulk-texts", type=int, default=10_000)
    parser.add_argument("--single-texts", type=int, default=600)
    args = parser.parse_args()
    if args.model == MINILM / "model" or args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    variant = manifest["default_variant"]
    variant_file = manifest["variants"][variant]["file"]
    texts = reviews(args.bulk_texts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        optimum_model = optimum_dir(args.model, args.artifacts, variant_file, work)
        hf = pipelines(args.model, optimum_model, variant_file)
        default = Predictor.load(args.artifacts)
        ours = Predictor.load(args.artifacts, backend="onnxruntime")
        quiet = Predictor.load(args.artifacts, backend="onnxruntime", spinning=False)
        candidates = {
            DEFAULT: lambda t: default.predict([t])[0].label,
            f"bertdeploy Predictor ({variant})": lambda t: ours.predict([t])[0].label,
            f"bertdeploy Predictor ({variant}), spinning off": lambda t: quiet.predict([t])[0].label,
            **{name: (lambda t, p=pipe: p(t, truncation=True, max_length=MAX_LENGTH)[0]["label"])
               for name, pipe in hf.items()},
        }
        print("single-text latency ...", file=sys.stderr)
        single = single_latency(candidates, reviews(args.single_texts, seed=1))
        print("bulk ...", file=sys.stderr)
        bulk_figures = bulk(args.artifacts, hf, texts, work)
        print("batch budgets ...", file=sys.stderr)
        sweep = budget_sweep(args.artifacts, reviews(2000, seed=2))
        print("cold start ...", file=sys.stderr)
        cold = cold_start({"artifacts": str(args.artifacts), "model": str(args.model), "optimum": str(optimum_model),
                           "file": variant_file, "text": "这个手机真的很好用！"})
    ours_name = f"bertdeploy Predictor ({variant})"
    pipe_single = single["transformers pipeline, PyTorch fp32"]["median_ms"]
    opt_single = single["Optimum ORT pipeline, same INT8 file"]["median_ms"]
    cli_bulk = bulk_figures["bertdeploy predict (whole process)"]["seconds"]
    ratios = {
        "single: pipeline / ours as loaded by default": pipe_single / single[DEFAULT]["median_ms"],
        "single: optimum / ours as loaded by default": opt_single / single[DEFAULT]["median_ms"],
        "single: pipeline / ours": pipe_single / single[ours_name]["median_ms"],
        "single: optimum / ours": opt_single / single[ours_name]["median_ms"],
        "single: optimum / ours with spinning off":
            opt_single / single[f"{ours_name}, spinning off"]["median_ms"],
        "bulk: pipeline / bertdeploy predict":
            bulk_figures["transformers pipeline, PyTorch fp32, batch_size=32"]["seconds"] / cli_bulk,
        "bulk: optimum / bertdeploy predict":
            bulk_figures["Optimum ORT pipeline, same INT8 file, batch_size=32"]["seconds"] / cli_bulk,
        "cold start: pipeline / ours":
            cold["transformers pipeline"]["median_seconds"] / cold["bertdeploy Predictor"]["median_seconds"],
        "peak RSS: ours / pipeline":
            cold["bertdeploy Predictor"]["median_peak_rss_mb"] / cold["transformers pipeline"]["median_peak_rss_mb"],
        "cold start: pipeline / ours on onnxruntime":
            cold["transformers pipeline"]["median_seconds"]
            / cold["bertdeploy Predictor, backend onnxruntime"]["median_seconds"],
        "peak RSS: ours on onnxruntime / pipeline":
            cold["bertdeploy Predictor, backend onnxruntime"]["median_peak_rss_mb"]
            / cold["transformers pipeline"]["median_peak_rss_mb"],
    }
    bf16 = "transformers pipeline, PyTorch bf16 autocast"
    if bf16 in single:
        ratios["single: pipeline bf16 / ours as loaded by default"] = \
            single[bf16]["median_ms"] / single[DEFAULT]["median_ms"]
        ratios["bulk: pipeline bf16 / bertdeploy predict"] = \
            bulk_figures[f"{bf16}, batch_size=32"]["seconds"] / cli_bulk
    result = {"machine": machine(threads=2), "model": str(args.model), "artifacts": str(args.artifacts),
              "variant": variant,
              "default_load": default.describe(),
              "threads": 2, "single_text": single, "bulk": {"texts": len(texts), **bulk_figures},
              "cold_start": cold, "max_batch_tokens_sweep": sweep, "ratios": ratios}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
