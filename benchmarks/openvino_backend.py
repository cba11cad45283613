"""OpenVINO beside ONNX Runtime on a fine-tuned MiniLM, and `--backend auto` against the better of the two.

On a copy of the export of the MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's
reviews, exported with --openvino and --quantize int8-ov; made on first use, about 10 minutes on 2 cores), with
bertdeploy.benchmark.run (same inputs, same 2 threads, engines taking turns):
1. every variant on its runtime at 1/8/32 x 128 tokens and on the 1,000 held-out reviews at their
   natural lengths, with accuracy; this run records auto's size ranges in the copy's manifest;
2. a second run of the two best variants of each runtime and `auto` at batch 1, 2, 4, 8, 16 and 32
   (sizes between the measured ones too), without recording.
Run 1 also gives auto's speed-up over the fastest PyTorch that kept accuracy (fp32, or bf16 autocast
on CPUs that compute bf16). For every cell of run 2: auto's p50 against the faster of the best ONNX
Runtime variant and the best OpenVINO variant in that cell. Noise, two ways: how far the same engine's p50 moved between
run 1 and run 2 in the cells both ran, and in run 2 how far auto's p50 sat from the p50 of the
variant it routes that batch to, timed beside it (the same model twice: any gap is measurement).
Writes benchmarks/results/openvino_backend.json.

    python benchmarks/openvino_backend.py [--artifacts runs/minilm-demo/onnx]
                                          [--eval-file runs/minilm-demo/data/test.csv]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import minilm_demo
import numpy as np

from bertdeploy import BenchOptions, bench
from bertdeploy.manifest import AutoRoute, ExportManifest
from bertdeploy.runtime.backends import OPENVINO

RESULTS = Path(__file__).parent / "results"
THREADS = 2
MINILM = minilm_demo.DEFAULT


def p50(result, engine: str, inputs: str, batch: int) -> float | None:
    return next((t.p50_ms for t in result.timings if (t.engine, t.inputs, t.batch_size) == (engine, inputs, batch)),
                None)


def route_for(routes: tuple[AutoRoute, ...], tokens: int) -> str:
    """The variant auto routes a batch of `tokens` padded tokens to (natural cells: their median batch)."""
    return next(r.variant for r in routes if r.max_tokens is None or tokens <= r.max_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--eval-file", type=Path, default=MINILM / "data" / "test.csv")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.eval_file == MINILM / "data" / "test.csv":
        minilm_demo.data()  # the default texts: the demo's reviews
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / "onnx"
        shutil.copytree(args.artifacts, copy)
        first = bench(BenchOptions(copy, eval_file=args.eval_file, batch_sizes=[1, 8, 32], seq_lengths=[128],
                                   runs=args.runs, warmup=3, threads=THREADS))
        runtime = {name: entry.backend for name, entry in ExportManifest.read(copy).variants.items()}
        speed = {name: float(np.mean([t.p50_ms / min(u.p50_ms for u in first.timings if (u.inputs, u.batch_size) ==
                                                     (t.inputs, t.batch_size) and u.engine in runtime)
                                      for t in first.timings if t.engine == name]))
                 for name in runtime}  # mean p50 relative to the fastest variant of each cell
        best = {side: sorted((n for n in runtime if (runtime[n] == OPENVINO) == (side == OPENVINO)), key=speed.get)[:2]
                for side in ("onnxruntime", OPENVINO)}
        routes = first.auto.routes
        second = bench(BenchOptions(copy, eval_file=args.eval_file, variants=[*best["onnxruntime"], *best[OPENVINO],
                                                                              "auto"],
                                    batch_sizes=[1, 2, 4, 8, 16, 32], seq_lengths=[128], runs=args.runs, warmup=3,
                                    threads=THREADS, record=False))

    cells, rows = list(dict.fromkeys((t.inputs, t.batch_size) for t in second.timings)), []
    for inputs, batch in cells:
        sides = {side: min((p50(second, n, inputs, batch), n) for n in best[side]) for side in best}
        better = min(sides.values())
        auto = p50(second, "auto", inputs, batch)
        tokens = next(t.padded_tokens for t in second.timings if (t.inputs, t.batch_size) == (inputs, batch))
        rows.append({"inputs": inputs, "batch_size": batch, "padded_tokens": tokens,
                     "onnxruntime": sides["onnxruntime"], "openvino": sides[OPENVINO], "auto_ms": auto,
                     "auto_over_better": auto / better[0]})
    moves = [abs(np.log(p50(second, t.engine, t.inputs, t.batch_size) / t.p50_ms)) for t in first.timings
             if p50(second, t.engine, t.inputs, t.batch_size) is not None]
    noise = {"median": float(np.exp(np.median(moves)) - 1), "max": float(np.exp(np.max(moves)) - 1),
             "cells": len(moves)}
    routed = [(r["auto_ms"], p50(second, route_for(routes, r["padded_tokens"]), r["inputs"], r["batch_size"]))
              for r in rows]
    twins = [abs(np.log(a / b)) for a, b in routed if b is not None]
    if twins:
        noise["same_model_median"] = float(np.exp(np.median(twins)) - 1)
        noise["same_model_max"] = float(np.exp(np.max(twins)) - 1)

    print("\nrun 1: p50 ms of every variant (accuracy on the held-out reviews)")
    names = [e.name for e in first.engines]
    print(f"{'inputs':<11} {'batch':>5} " + " ".join(f"{n:>9}" for n in names))
    for inputs, batch in dict.fromkeys((t.inputs, t.batch_size) for t in first.timings):
        print(f"{inputs:<11} {batch:>5} " + " ".join(f"{p50(first, n, inputs, batch):>9.2f}" for n in names))
    print(f"{'accuracy':<17} " + " ".join(f"{e.accuracy:>9.4f}" for e in first.engines))
    print(f"\nrecorded auto ranges: {[r.to_dict() for r in routes]}")
    print("\nrun 2: auto against the better runtime in each cell")
    print(f"{'inputs':<11} {'batch':>5} {'best onnxruntime':>24} {'best openvino':>22} {'auto':>8} {'auto/better':>11}")
    for r in rows:
        ort, ov = r["onnxruntime"], r["openvino"]
        print(f"{r['inputs']:<11} {r['batch_size']:>5} {ort[1]:>14} {ort[0]:>8.2f}ms {ov[1]:>12} {ov[0]:>8.2f}ms "
              f"{r['auto_ms']:>6.2f}ms {r['auto_over_better']:>10.3f}x")
    print(f"\nnoise: the same engine's p50 moved by {noise['median']:.1%} (median) and up to {noise['max']:.1%} "
          f"between the two runs ({noise['cells']} cells)")
    if twins:
        print(f"noise: auto's p50 and that of the variant it routes to, timed side by side, differed by "
              f"{noise['same_model_median']:.1%} (median) and up to {noise['same_model_max']:.1%} ({len(twins)} cells)")
    print(f"auto accuracy {next(e.accuracy for e in second.engines if e.name == 'auto'):.4f}")
    against_pytorch = {f"{t.inputs} x{t.batch_size}": {"auto_speedup": t.speedup, "baseline": t.baseline}
                       for t in first.timings if t.engine == "auto"}  # target on bf16 CPUs: >= 1.5x at 8 and 32 x 128
    for cell, figures in against_pytorch.items():
        print(f"run 1, {cell}: auto {figures['auto_speedup']:.2f}x {figures['baseline']} (the fastest PyTorch that "
              "kept accuracy)")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "openvino_backend.json").write_text(json.dumps({
        "run_1": asdict(first), "run_2": asdict(second), "best": best, "auto_vs_better": rows, "noise": noise,
        "auto_vs_fastest_pytorch": against_pytorch,
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
