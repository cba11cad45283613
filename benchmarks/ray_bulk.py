"""`bertdeploy predict --engine ray` against the single-process `bertdeploy predict`, on the same 2 cores.

The MiniLM of benchmarks/minilm_demo.py (all-MiniLM-L6-v2 fine-tuned on the demo's reviews; made on first use, about
10 minutes on 2 cores; `--backend auto`) labels a CSV of N reviews (its train and test reviews repeated, with an id
column) three ways, each a whole `bertdeploy predict` process timed from start to exit: the local engine (one
process, 2 threads), Ray Data with 2 actors of 1 thread (the default here) and with 1 actor of 2 threads. Each also
runs on 100 rows, which shows the fixed cost (Ray starting a local cluster, the actors loading the model); rows/s
after it is (N - 100) / (t(N) - t(100)). The labels are compared with the local engine's. Writes
benchmarks/results/ray_bulk.json.

    python benchmarks/ray_bulk.py [--artifacts runs/minilm-demo/onnx] [--data runs/minilm-demo/data]
                                  [--rows 20000]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import minilm_demo

from bertdeploy.host import machine
from bertdeploy.timing import stopwatch

RESULTS = Path(__file__).parent / "results" / "ray_bulk.json"
MINILM = minilm_demo.DEFAULT
RUNS = {"local, 2 threads": [], "ray, 2 workers x 1 thread": ["--engine", "ray"],
        "ray, 1 worker x 2 threads": ["--engine", "ray", "--workers", "1", "--threads", "2"]}


def write_reviews(data: Path, path: Path, rows: int) -> None:
    texts = [row["text"] for name in ("train.csv", "test.csv")
             for row in csv.DictReader((data / name).open(encoding="utf-8"))]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, texts[i % len(texts)]] for i in range(rows))


def timed_predict(artifacts: Path, source: Path, output: Path, extra: list[str]) -> float:
    done, seconds = stopwatch(subprocess.run, [sys.executable, "-m", "bertdeploy", "-q", "predict", str(artifacts),
                                               str(source), "-o", str(output), *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return seconds


def labels(path: Path) -> list[str]:
    return [row["label"] for row in csv.DictReader(path.open(encoding="utf-8"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifacts", type=Path, default=MINILM / "onnx")
    parser.add_argument("--data", type=Path, default=MINILM / "data")
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    if args.artifacts == MINILM / "onnx":
        minilm_demo.ensure()  # the default model, made on first use
    elif args.data == MINILM / "data":
        minilm_demo.data()  # the default texts: the demo's reviews
    results = {}
    with tempfile.TemporaryDirectory() as work:
        small, big = Path(work) / "small.csv", Path(work) / "big.csv"
        write_reviews(args.data, small, 100)
        write_reviews(args.data, big, args.rows)
        reference = None
        for name, extra in RUNS.items():
            fixed = timed_predict(args.artifacts, small, Path(work) / "small_out.csv", extra)
            total = timed_predict(args.artifacts, big, Path(work) / "out.csv", extra)
            predicted = labels(Path(work) / "out.csv")
            reference = reference or predicted
            results[name] = {"seconds_100_rows": fixed, "seconds": total, "rows_per_second": args.rows / total,
                             "rows_per_second_after_start": (args.rows - 100) / (total - fixed),
                             "labels_as_local": sum(a == b for a, b in zip(predicted, reference, strict=True))
                             / args.rows}
            print(f"{name:<28} {total:7.1f} s for {args.rows} rows ({args.rows / total:6.0f} rows/s), "
                  f"100 rows {fixed:5.1f} s, after start {results[name]['rows_per_second_after_start']:6.0f} rows/s,"
                  f" labels as local {results[name]['labels_as_local']:.4f}", flush=True)
    local = results["local, 2 threads"]
    for result in results.values():
        result["vs_local"] = result["rows_per_second"] / local["rows_per_second"]
        result["vs_local_after_start"] = result["rows_per_second_after_start"] / local["rows_per_second_after_start"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": args.rows, "artifacts": str(args.artifacts), "machine": machine(),
                                   "runs": results},
                                  indent=1) + "\n")


if __name__ == "__main__":
    main()
