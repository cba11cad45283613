"""bertdeploy's exporter against Optimum's on the same fine-tuned checkpoints: graphs, logits, accuracy, size, speed.

Optimum's side runs in a venv of its own (made here, or reused: --optimum-venv) with transformers 4.57.6 and
optimum-onnx 0.1.0, the newest pair that installs together, and the same onnxruntime and onnx as ours:
`main_export(task="text-classification")`, `ORTOptimizer` at O2, and `ORTQuantizer` dynamic INT8 with the
`avx512_vnni` preset on the unfused export. Ours runs here: `onnxexport.export_onnx`, `optimize.optimize_graph`
at O2 and `quantize.quantize_dynamic_int8` (same preset; embedding tables per row, as export builds them). A third
side, `before`, is what bertdeploy shipped when it exported through Optimum: our INT8 of Optimum's fp32 graph.

Checkpoints, all fine-tuned here with `finetune` on the BBC news topics of benchmarks/static.py (5 classes,
1,500 articles, the rest held out, 128 tokens): the packaged MiniLM (BERT, 6 layers, hidden 384), and small
random-initialised models of the other architectures (2 layers, hidden 128, the MiniLM tokenizer) that learn the
topics from scratch: enough to compare two exports of one checkpoint, not to rank the architectures.

Per checkpoint and variant (fp32, O2, int8), both ways: node counts by op type, file size, max |logit - PyTorch|
and max |ours - Optimum's| on the held-out articles, accuracy on them, and p50 ms at 1 x 128 and 8 x 128 tokens of
real text, the six graphs taking turns (ONNX Runtime, 2 threads). Writes benchmarks/results/exporter_parity.json.

    python benchmarks/exporter_parity.py [--work runs/exporter-parity] [--only bert-minilm] [--rounds 30]
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.metadata
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from static import bbc_topics

from bertdeploy import FinetuneOptions, finetune
from bertdeploy.benchmark.cases import fixed_length_cases
from bertdeploy.builder import quantize
from bertdeploy.builder.onnxexport import export_onnx
from bertdeploy.builder.optimize import optimize_graph
from bertdeploy.builder.reference import pytorch_logits
from bertdeploy.demo.packaged import minilm_path
from bertdeploy.host import machine
from bertdeploy.runtime.backends import open_model
from bertdeploy.runtime.encoding import load_encoder, logits
from bertdeploy.runtime.sessions import create_session
from bertdeploy.timing import interleaved_latency

RESULTS = Path(__file__).parent / "results" / "exporter_parity.json"
THREADS = 2
MAX_LENGTH = 128
OPTIMUM = ["transformers==4.57.6", "optimum-onnx[onnxruntime]==0.1.0"]
VARIANTS = ("fp32", "O2", "int8")
SMALL = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
CHECKPOINTS = {  # name: (config class, sizes, epochs, learning rate); None: the packaged MiniLM
    "bert-minilm": (None, {}, 3, 5e-5),
    "roberta": ("RobertaConfig", {**SMALL, "type_vocab_size": 1}, 2, 1e-3),  # one token type, as published
    "xlm-roberta": ("XLMRobertaConfig", {**SMALL, "type_vocab_size": 1}, 2, 1e-3),
    "distilbert": ("DistilBertConfig", {"dim": 128, "n_layers": 2, "n_heads": 4, "hidden_dim": 256}, 2, 1e-3),
    "electra": ("ElectraConfig", {**SMALL, "embedding_size": 128}, 2, 1e-3),
    "albert": ("AlbertConfig", {**SMALL, "embedding_size": 64}, 2, 1e-3),
    "deberta-v2": ("DebertaV2Config", {**SMALL, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                       "position_buckets": 64, "type_vocab_size": 0, "position_biased_input": False},
                   2, 1e-3),
    "modernbert": ("ModernBertConfig", {**SMALL, "global_attn_every_n_layers": 2, "local_attention": 64}, 2, 1e-3),
}
OPTIMUM_SCRIPT = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from optimum.exporters.onnx import main_export
from optimum.onnxruntime import AutoOptimizationConfig, AutoQuantizationConfig, ORTOptimizer, ORTQuantizer
model, out = sys.argv[1], Path(sys.argv[2])
main_export(model, out / "export", task="text-classification", do_validation=False)
ORTOptimizer.from_pretrained(out / "export", file_names=["model.onnx"]).optimize(
    AutoOptimizationConfig.with_optimization_level("O2"), save_dir=out / "o2")
ORTQuantizer.from_pretrained(out / "export", file_name="model.onnx").quantize(
    AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True), save_dir=out / "int8")
"""


def optimum_python(venv: Path) -> Path:
    """The venv's python, made first where it is missing: torch 2.13.0 (CPU), Optimum's pair, our ORT and onnx."""
    python = venv / "bin" / "python"
    if not python.exists():
        logging.info("making %s with %s", venv, " ".join(OPTIMUM))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        same = [f"{name}=={importlib.metadata.version(name)}" for name in ("onnxruntime", "onnx")]
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, *OPTIMUM, *same], check=True)
    return python


def checkpoint(name: str, work: Path, train: Path, test: Path) -> tuple[Path, float]:
    """The fine-tuned model directory (reused when there) and its PyTorch accuracy on the held-out articles."""
    model = work / name / "model"
    if not (model / "manifest.json").is_file():
        config_class, sizes, epochs, rate = CHECKPOINTS[name]
        base = minilm_path() if config_class is None else _random_backbone(config_class, sizes, work / name / "init")
        finetune(FinetuneOptions(model=str(base), train_file=train, eval_file=test, output_dir=model, epochs=epochs,
                                 learning_rate=rate, max_length=MAX_LENGTH, overwrite=True))
    manifest = json.loads((model / "manifest.json").read_text())
    return model, manifest["metrics"]["accuracy"]


def _random_backbone(config_class: str, sizes: dict, folder: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), max_position_embeddings=512,
                                                 pad_token_id=tokenizer.pad_token_id, **sizes)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ours(model: Path, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.onnx"
    export_onnx(model, fp32)
    return {"fp32": fp32, "O2": optimize_graph(fp32, "O2", "cpu", out / "model_O2.onnx", model),
            "int8": quantize.quantize_dynamic_int8(fp32, out / "model_int8.onnx", "avx512_vnni")}


def optimum(python: Path, model: Path, out: Path) -> dict[str, Path]:
    subprocess.run([str(python), "-c", OPTIMUM_SCRIPT, str(model), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"fp32": out / "export" / "model.onnx", "O2": out / "o2" / "model_optimized.onnx",
            "int8": out / "int8" / "model_quantized.onnx"}


def compare(name: str, model: Path, graphs: dict[str, dict[str, Path]], test: Path, rounds: int) -> dict:
    import onnx
    from transformers import AutoTokenizer

    from bertdeploy.builder.pretrained import load_classifier

    rows = list(csv.DictReader(test.open(encoding="utf-8")))
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    classifier = load_classifier(model).eval()
    label_of = classifier.config.id2label
    reference = pytorch_logits(classifier, AutoTokenizer.from_pretrained(model), texts, None, MAX_LENGTH, device="cpu",
                               batch_size=32)
    encoder = load_encoder(_tokenizer_json(model), MAX_LENGTH)
    figures, runs, feeds, scores = {}, {}, {}, {}
    for side, files in graphs.items():
        for variant, file in files.items():
            key = f"{side} {variant}"
            session = open_model(file, "onnxruntime", "cpu", threads=THREADS)
            scores[key] = logits(create_session(file, "cpu"), encoder, texts)
            right = [label_of[int(i)] == label for i, label in zip(scores[key].argmax(axis=1), labels, strict=True)]
            ops = collections.Counter(n.op_type for n in onnx.load(str(file), load_external_data=False).graph.node)
            figures[key] = {
                "inputs": session.input_names, "nodes": sum(ops.values()), "ops": dict(sorted(ops.items())),
                "size_mb": file.stat().st_size / 1e6, "accuracy": float(np.mean(right)),
                "max_dlogit_vs_pytorch": float(np.abs(scores[key] - reference).max()),
            }
            runs[key] = session.run
            feeds[key] = {f"{c.batch_size}x{MAX_LENGTH}": c.feeds for c in
                          fixed_length_cases(encoder, texts[:200], [1, 8], [MAX_LENGTH], session.input_names)}
    for variant in VARIANTS:
        figures[f"ours {variant}"]["max_dlogit_vs_optimum"] = float(
            np.abs(scores[f"ours {variant}"] - scores[f"optimum {variant}"]).max())
    latency = interleaved_latency(runs, next(iter(feeds.values())), rounds, own_feeds=feeds)
    for key, cells in latency.items():
        figures[key]["p50_ms"] = cells
    logging.info("%s: %s", name, {k: v["p50_ms"] for k, v in figures.items()})
    return figures


def _tokenizer_json(model: Path) -> Path:
    """tokenizer.json as export writes it: truncating at MAX_LENGTH and padding right."""
    from bertdeploy.builder.export import write_tokenizer
    from bertdeploy.builder.source import read_model_dir

    destination = model.parent / "tokenizer.json"
    write_tokenizer(read_model_dir(model), destination)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/exporter-parity"))
    parser.add_argument("--optimum-venv", type=Path, help="default: WORK/optimum-venv, made where missing")
    parser.add_argument("--only", action="append", choices=list(CHECKPOINTS))
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    work = args.work.absolute()
    python = optimum_python((args.optimum_venv or work / "optimum-venv").absolute())
    train, test = bbc_topics(work / "data")
    results = json.loads(RESULTS.read_text()) if args.only and RESULTS.is_file() else {}
    results["machine"] = machine(threads=THREADS)
    results["versions"] = {"optimum": subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(*(m.version(p) for p in "
         "('transformers', 'optimum', 'optimum-onnx', 'onnxruntime', 'onnx', 'torch')))"],
        check=True, capture_output=True, text=True).stdout.split()}
    results["rounds"] = args.rounds
    for name in args.only or CHECKPOINTS:
        model, accuracy = checkpoint(name, work, train, test)
        graphs = {"ours": ours(model, work / name / "ours"), "optimum": optimum(python, model, work / name / "optimum")}
        before = quantize.quantize_dynamic_int8(graphs["optimum"]["fp32"], work / name / "before.onnx", "avx512_vnni")
        graphs["before"] = {"int8": before}
        results.setdefault("checkpoints", {})[name] = {"pytorch_accuracy": accuracy,
                                                       **compare(name, model, graphs, test, args.rounds)}
        RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    _print(results)


def _print(results: dict) -> None:
    print(f"{'checkpoint':<12} {'graph':<13} {'nodes':>5} {'MB':>6} {'acc':>6} {'|d| pt':>8} {'|d| opt':>8} "
          f"{'1x128':>7} {'8x128':>7}")
    for name, figures in results["checkpoints"].items():
        for key, f in figures.items():
            if isinstance(f, dict):
                print(f"{name:<12} {key:<13} {f['nodes']:>5} {f['size_mb']:>6.1f} {f['accuracy']:>6.3f} "
                      f"{f['max_dlogit_vs_pytorch']:>8.1e} {f.get('max_dlogit_vs_optimum', float('nan')):>8.1e} "
                      f"{f['p50_ms']['1x128']:>7.2f} {f['p50_ms']['8x128']:>7.2f}")


if __name__ == "__main__":
    main()
