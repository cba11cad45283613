"""bertdeploy's variants against the routes an ML engineer would otherwise take, in one run, on one model.

On the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's Chinese reviews; made on
first use, about 10 minutes on 2 cores), with the same inputs, the same 2 threads, engines taking turns call by
call (bertdeploy.benchmark.run):
  pytorch                 eager PyTorch fp32, the reference
  pytorch-bf16            the same under torch.autocast(bfloat16), on CPUs that compute bf16 natively;
                          speed-ups are against the faster PyTorch that kept accuracy
  ours fp32 / int8 / O2-int8 / fp16 / int8-ov   what `bertdeploy export` shipped (the --artifacts folder)
  optimum-cli int8        `optimum-cli export onnx` then `optimum-cli onnxruntime quantize --avx512_vnni`
                          (the preset matching this CPU), run with ONNX Runtime
  ort-optimizer int8      onnxruntime.transformers.optimizer at its defaults (model_type bert),
                          then onnxruntime.quantization.quantize_dynamic at its defaults
  ort-optimizer int8*     the same with extra_options={"DefaultTensorType": FLOAT}, which the
                          quantizer's own error message suggests when the defaults fail
  openvino                the OpenVINO runtime on our fp32 ONNX file, at its defaults (bf16 on
                          CPUs with avx512_bf16)
Each is scored on the 1,000 held-out reviews (accuracy, agreement with PyTorch) and timed at
1/8/32 x 128 tokens and on real reviews at their natural lengths. A route that fails is
recorded with its error. Writes benchmarks/results/compare_tools.{json,png}.

`optimum-cli` is the one beside this Python: run the script from a venv that holds bertdeploy and optimum-onnx
(which needs transformers 4.57, not bertdeploy's `train` extra), after making the MiniLM in bertdeploy's own venv
(`python benchmarks/minilm_demo.py`), so that this venv never fine-tunes.

    python benchmarks/compare_tools.py [--artifacts runs/minilm-demo/onnx]
                                       [--eval-file runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import minilm_demo
from onnx import TensorProto

from bertdeploy import BenchOptions, BenchResult
from bertdeploy.benchmark.cases import fixed_length_cases, natural_cases
from bertdeploy.benchmark.engines import Engine
from bertdeploy.benchmark.lineup import pick_engines
from bertdeploy.benchmark.measure import measure
from bertdeploy.benchmark.report import plot
from bertdeploy.benchmark.run import load_eval
from bertdeploy.host import machine
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.encoding import load_encoder

RESULTS = Path(__file__).parent / "results"
THREADS = 2
WORKAROUND = {"DefaultTensorType": TensorProto.FLOAT}
MINILM = minilm_demo.DEFAULT


def optimum_route(model: Path, work: Path) -> Path:
    """The commands Optimum's documentation gives: export, then quantize with the CPU's preset."""
    cli = str(Path(sys.executable).parent / "optimum-cli")  # the one installed beside this Python
    subprocess.run([cli, "export", "onnx", "--model", str(model), "--task", "text-classification",
                    str(work / "optimum")], check=True, capture_output=True)
    subprocess.run([cli, "onnxruntime", "quantize", "--onnx_model", str(work / "optimum"),
                    "--avx512_vnni", "-o", str(work / "optimum-int8")], check=True, capture_output=True)
    return next((work / "optimum-int8").glob("*.onnx"))


def ort_optimizer_route(fp32: Path, work: Path, extra_options: dict | None = None) -> Path:
    """ONNX Runtime's own tools at their defaults: the transformer optimizer, then dynamic quantization."""
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = work / "ort_opt.onnx"
    if not optimized.exists():
        optimize_model(str(fp32), model_type="bert").save_model_to_file(str(optimized))
    out = work / f"ort_opt_int8{'_workaround' if extra_options else ''}.onnx"
    quantize_dynamic(optimized, out, extra_options=extra_options)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--eval-file", type=Path, default=MINILM / "data" / "test.csv")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.eval_file == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    manifest = ExportManifest.read(args.artifacts)
    options = BenchOptions(args.artifacts, eval_file=args.eval_file,
                           variants=["fp32", "int8", "O2-int8", "fp16", "int8-ov"], batch_sizes=[1, 8, 32],
                           seq_lengths=[128], runs=args.runs, warmup=args.warmup, threads=THREADS)
    engines = pick_engines(options, manifest)  # PyTorch fp32 (and bf16 autocast where the CPU computes bf16) first
    ours = [Engine(name=f"ours {e.name}", backend=e.backend, path=e.path, kind=e.kind, device=e.device,
                   threads=e.threads) for e in engines if e.backend != "pytorch"]
    engines = [e for e in engines if e.backend == "pytorch"] + ours
    fp32 = Path(next(e.path for e in ours if e.name == "ours fp32"))
    failures = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        routes = {"optimum-cli int8": lambda: optimum_route(Path(manifest.source_model), work),
                  "ort-optimizer int8": lambda: ort_optimizer_route(fp32, work),
                  # the same with the option its own error message suggests, to see where it would stand
                  "ort-optimizer int8*": lambda: ort_optimizer_route(fp32, work, WORKAROUND)}
        for name, build in routes.items():
            try:
                engines.append(Engine(name=name, backend="onnxruntime", path=str(build()), kind="int8",
                                      threads=THREADS))
            except Exception as e:  # noqa: BLE001 - the failure is the finding
                detail = e.stderr.decode()[-300:] if isinstance(e, subprocess.CalledProcessError) else str(e)
                failures[name] = detail.strip().splitlines()[-1] if detail.strip() else repr(e)
                logging.warning("%s failed: %s", name, failures[name])
        engines.append(Engine(name="openvino", backend="openvino", path=str(fp32), threads=THREADS))

        encoder = load_encoder(args.artifacts / manifest.tokenizer, manifest.max_length)
        examples = load_eval(options, manifest)
        names = list(manifest.inputs)
        cases = fixed_length_cases(encoder, examples.texts, options.batch_sizes, options.seq_lengths, names)
        cases += natural_cases(encoder, examples, options.batch_sizes, options.runs, names)
        reports, timings = measure(engines, cases, options, (examples, encoder, names, manifest.scheme))
        result = BenchResult(artifact_dir=str(args.artifacts), device="cpu", threads=THREADS, runs=options.runs,
                             warmup=options.warmup, eval_file=str(args.eval_file), eval_texts=len(examples),
                             machine=machine(), engines=reports, timings=timings)

    RESULTS.mkdir(exist_ok=True)
    saved = {**asdict(result), "failed_routes": failures}
    (RESULTS / "compare_tools.json").write_text(json.dumps(saved, indent=1, ensure_ascii=False) + "\n")
    plot(result, RESULTS / "compare_tools.png")
    from bertdeploy import render

    print(render.bench(result))
    for name, error in failures.items():
        print(f"{name}: FAILED: {error}")


if __name__ == "__main__":
    main()
