"""Which INT8 recipe is fastest and still right, and what `bertdeploy export` ships, on a fine-tuned MiniLM.

The MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about
10 minutes on 2 cores) and its 1,000 held-out reviews.
Part 1, INT8 recipes, built side by side from one Optimum export of the fine-tuned MiniLM:
  fp32, O2                      the references
  int8 per-tensor / per-channel dynamic INT8 of the unfused export (per-channel is what we ship)
  O1/O2/O3 -> int8              fuse first, then quantize (needs DefaultTensorType on O2/O3)
  O2 -> int8, default options   the combination that fails (DATA.md); its error is recorded
Each is scored on the 1,000 held-out reviews (accuracy, agreement with PyTorch) and timed with
ONNX Runtime on 2 threads, variants interleaved round by round: batch 1 over 40 real reviews and
batch 8 of real reviews (padded to the longest of the 8), medians.
Part 2 runs `export()` as shipped (fp32, O2, int8, int8-static, fp16) and records its manifest.
Writes benchmarks/results/export_variants.json.

    python benchmarks/export_variants.py [--model runs/minilm-demo/model]
                                         [--eval-file runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import tempfile
from pathlib import Path

import minilm_demo
import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from bertdeploy import ExportOptions, export
from bertdeploy.builder.examples import load_examples
from bertdeploy.builder.export import reference_logits, write_tokenizer
from bertdeploy.builder.onnxexport import export_onnx
from bertdeploy.builder.optimize import optimize_graph
from bertdeploy.builder.quantize import detect_preset, quantize_dynamic_int8
from bertdeploy.builder.source import read_model_dir
from bertdeploy.host import machine
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.encoding import encode, logits
from bertdeploy.runtime.sessions import create_session
from bertdeploy.timing import interleaved_latency, stopwatch

RESULTS = Path(__file__).parent / "results" / "export_variants.json"
THREADS = 2
MINILM = minilm_demo.DEFAULT


def build_recipes(work: Path, preset: str, model_dir: Path) -> dict[str, Path | str]:
    """Every recipe's file, or the error that stopped it."""
    files: dict[str, Path | str] = {"fp32": work / "model.onnx"}
    for level in ("O1", "O2", "O3"):
        files[level] = optimize_graph(files["fp32"], level, "cpu", work / f"model_{level}.onnx", model_dir)
    files["int8 per-tensor"] = quantize_dynamic_int8(files["fp32"], work / "int8_pt.onnx", preset, per_channel=False)
    files["int8 per-channel (shipped)"] = quantize_dynamic_int8(files["fp32"], work / "int8_pc.onnx", preset)
    for level in ("O1", "O2", "O3"):
        files[f"{level} -> int8 per-channel"] = quantize_dynamic_int8(files[level], work / f"{level}_int8.onnx", preset)
    try:
        quantize_dynamic(files["O2"], work / "O2_int8_default.onnx", per_channel=True, weight_type=QuantType.QInt8)
        files["O2 -> int8, default options"] = work / "O2_int8_default.onnx"
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        files["O2 -> int8, default options"] = f"failed: {str(e).splitlines()[0][:200]}"
    del files["O1"], files["O3"]
    return files


def time_interleaved(sessions: dict, tokenizer, texts: list[str], rounds: int) -> dict[str, dict]:
    names = [i.name for i in next(iter(sessions.values())).get_inputs()]
    singles = [encode(tokenizer, [texts[i]], None, names) for i in np.linspace(0, len(texts) - 1, 40).astype(int)]
    eights = [encode(tokenizer, texts[i:i + 8], None, names) for i in range(0, 64, 8)]
    runs = {name: functools.partial(session.run, None) for name, session in sessions.items()}
    latency = interleaved_latency(runs, {"batch_1": singles, "batch_8": eights}, rounds)
    return {n: {k: round(v, 2) for k, v in groups.items()} for n, groups in latency.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=MINILM / "model", type=Path)
    parser.add_argument("--eval-file", default=MINILM / "data" / "test.csv", type=Path)
    parser.add_argument("--rounds", default=10, type=int)
    args = parser.parse_args()
    if args.model == MINILM / "model":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.eval_file == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no fine-tuned model")
    source = read_model_dir(args.model)
    examples = load_examples(args.eval_file)
    truth = np.array([source.labels.index(y) for y in examples.labels])
    reference = reference_logits(source, examples, "cpu")
    preset = detect_preset()
    recipes = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_onnx(source.path, work / "model.onnx")
        tokenizer = write_tokenizer(source, work / "tokenizer.json")
        files = build_recipes(work, preset, Path(source.path))
        sessions = {}
        for name, path in files.items():
            if isinstance(path, str):
                recipes[name] = {"error": path}
                continue
            sessions[name] = create_session(path, "cpu", threads=THREADS)
            scores = logits(sessions[name], tokenizer, examples.texts)
            recipes[name] = {
                "accuracy": float(np.mean(scores.argmax(-1) == truth)),
                "agreement_with_pytorch": float(np.mean(scores.argmax(-1) == reference.argmax(-1))),
                "max_abs_logit_diff": float(np.abs(scores - reference).max()),
                "size_mb": round(path.stat().st_size / 1e6, 1),
            }
        for name, latency in time_interleaved(sessions, tokenizer, examples.texts, args.rounds).items():
            recipes[name]["latency_ms"] = latency

        out = work / "artifact"
        result, export_seconds = stopwatch(export, ExportOptions(args.model, out, optimize="O2",
                                                                 quantize=["int8", "int8-static", "fp16"],
                                                                 eval_file=args.eval_file))
        manifest = ExportManifest.read(out).to_dict()
        shutil.rmtree(out)

    summary = {
        "machine": {**machine(threads=THREADS), "preset": preset},
        "model": str(args.model), "eval_texts": len(examples),
        "pytorch_accuracy": float(np.mean(reference.argmax(-1) == truth)),
        "int8_recipes": recipes,
        "export": {"seconds": round(export_seconds, 1), "default_variant": result.default_variant,
                   "variants": manifest["variants"], "rejected": manifest["rejected"]},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"PyTorch accuracy {summary['pytorch_accuracy']:.4f} on {len(examples)} reviews; preset {preset}")
    print(f"{'recipe':<30} {'acc':>6} {'agree':>6} {'MB':>6} {'b1 ms':>7} {'b8 ms':>7}")
    for name, r in recipes.items():
        if "error" in r:
            print(f"{name:<30} {r['error']}")
            continue
        print(f"{name:<30} {r['accuracy']:>6.3f} {r['agreement_with_pytorch']:>6.3f} {r['size_mb']:>6.1f} "
              f"{r['latency_ms']['batch_1']:>7.2f} {r['latency_ms']['batch_8']:>7.1f}")
    print(f"export() in {export_seconds:.0f}s, default {result.default_variant}")
    for v in result.variants:
        print(f"  {v.name:<12} shipped={v.shipped} eval={v.eval} latency={v.latency_ms} attempts={len(v.attempts)}")


if __name__ == "__main__":
    main()
