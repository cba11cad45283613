"""ONNX Runtime against OpenVINO on backbones of realistic size: BERT-base, DeBERTa-v3-base, ModernBERT-base.

DeBERTa-v3-base is the DeBERTa-v2 architecture. ONNX Runtime's transformer optimizer fuses BERT's
attention but has none for DeBERTa-v2's disentangled attention or ModernBERT's (export says so);
OpenVINO does its own graph transformations. This measures what that costs. Each backbone is built
with random weights at its published base size (speed does not depend on the weights) as a 2-class
classifier with the packaged MiniLM's tokenizer (30,522 tokens: the vocabulary changes the embedding
table, not the time per token), exported by `bertdeploy export --quantize int8 --quantize int8-ov
--openvino`, calibrated on the demo reviews, with a bound no variant can miss (random weights have
no accuracy to keep); a variant OpenVINO cannot compile is refused and recorded. No --optimize: on
DeBERTa-v3-base ONNX Runtime's optimizer ran 15 minutes at 17 GB before it was stopped. Also the
model converted to OpenVINO from PyTorch (`ov.convert_model`). Timed with bench's harness at 1 x 128
and 8 x 128 tokens, 2 threads, engines taking turns. Writes benchmarks/results/architectures.json.

    python benchmarks/architectures.py [--runs 10] [--only deberta-v3-base]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from pathlib import Path

from bertdeploy import BenchOptions, ExportOptions, export
from bertdeploy.benchmark.cases import fixed_length_cases
from bertdeploy.benchmark.engines import Engine
from bertdeploy.benchmark.lineup import pick_engines
from bertdeploy.benchmark.measure import measure
from bertdeploy.demo.packaged import minilm_path, review_texts
from bertdeploy.host import machine
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.encoding import load_encoder

RESULTS = Path(__file__).parent / "results" / "architectures.json"
THREADS = 2
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
CONFIGS = {  # the published base sizes
    "bert-base": ("BertConfig", BASE),
    "deberta-v3-base": ("DebertaV2Config", {**BASE, "relative_attention": True, "position_buckets": 256,
                                                       "pos_att_type": ["p2c", "c2p"], "max_relative_positions": -1,
                                                       "norm_rel_ebd": "layer_norm", "share_att_key": True,
                                                       "position_biased_input": False, "type_vocab_size": 0}),
    "modernbert-base": ("ModernBertConfig", {"hidden_size": 768, "num_hidden_layers": 22, "num_attention_heads": 12,
                                             "intermediate_size": 1152, "global_attn_every_n_layers": 3,
                                             "local_attention": 128}),
}


def build(name: str, folder: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config_class, sizes = CONFIGS[name]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), max_position_embeddings=512, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}, pad_token_id=tokenizer.pad_token_id, **sizes)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def openvino_from_pytorch(folder: Path, names: list[str]) -> Path:
    """The model converted by OpenVINO from PyTorch (ov.convert_model), fp32 weights: what OpenVINO runs when
    its ONNX frontend cannot take the export."""
    import openvino as ov
    import torch

    model = _model(folder)
    example = {name: torch.ones((2, 16), dtype=torch.long) for name in names}
    destination = folder / "openvino" / "model.xml"
    converted = ov.convert_model(model, example_input=example)
    for tensor, name in zip(converted.inputs, names, strict=True):
        tensor.get_tensor().set_names({name})  # the feed's names, not the tracer's
    ov.save_model(converted, destination, compress_to_fp16=False)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", choices=list(CONFIGS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    results = {}
    texts = review_texts()["positive"][:150] + review_texts()["negative"][:150]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calibration = work / "calibration.csv"
        with calibration.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([["text"], *([t] for t in texts)])
        for name in [args.only] if args.only else CONFIGS:
            folder = build(name, work / name.split()[0])
            exported = export(ExportOptions(folder, work / f"{name.split()[0]}-onnx",
                                            quantize=["int8", "int8-ov"], openvino=True, calibration_file=calibration,
                                            max_accuracy_drop=100))
            manifest = ExportManifest.read(exported.output_dir)
            options = BenchOptions(exported.output_dir, batch_sizes=[1, 8], seq_lengths=[128], runs=args.runs,
                                   warmup=2, threads=THREADS, record=False)
            engines = pick_engines(options, manifest)
            names = list(manifest.inputs)
            engines.append(Engine(name="fp32-ov, converted from PyTorch", backend="openvino",
                                  path=str(openvino_from_pytorch(folder, names)), threads=THREADS))
            encoder = load_encoder(exported.output_dir / manifest.tokenizer, manifest.max_length)
            cases = fixed_length_cases(encoder, texts, options.batch_sizes, options.seq_lengths, names)
            _, timings = measure(engines, cases, options)
            p50: dict[str, dict[str, float]] = {}
            for t in timings:
                p50.setdefault(t.engine, {})[f"{t.batch_size}x128"] = t.p50_ms
            results[name] = {
                "parameters_millions": sum(p.numel() for p in _model(folder).parameters()) / 1e6,
                "refused": {v.name: v.reason for v in exported.variants if not v.shipped},
                "p50_ms": p50,
                "speedup_vs_fastest_pytorch": {f"{t.engine} {t.batch_size}x128": t.speedup for t in timings},
            }
            _print(name, results[name])
    RESULTS.write_text(json.dumps({"machine": machine(threads=THREADS), "runs": args.runs, "models": results},
                                  indent=1) + "\n")


def _model(folder: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder)


def _print(name: str, figures: dict) -> None:
    print(f"\n{name}: {figures['parameters_millions']:.0f}M parameters; refused: {figures['refused']}")
    for engine, cells in figures["p50_ms"].items():
        print(f"  {engine:<14} " + "  ".join(f"{cell} {ms:8.1f} ms" for cell, ms in cells.items()))


if __name__ == "__main__":
    main()
