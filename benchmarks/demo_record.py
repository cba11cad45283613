"""One JSON of what a run of `scripts/demo.sh` printed: the figures the README's quick start shows.

Reads the demo's folder after the run (runs/demo by default): the fine-tuning history (model/metrics.json), every
variant's figures as export judged them (onnx/manifest.json), `bench`'s figures with the machine (bench.json) and
the accuracy of `predict` on the test file (test_predictions.csv) and what `predict` printed (examples.txt,
predict.log); then it serves the export on loopback and records the log and the answer to the README's request.
With --seconds, how long the whole script took.
Writes benchmarks/results/demo_e5_<name>.json.

    python benchmarks/demo_record.py NAME [--demo runs/demo] [--seconds 630]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"


SERVED_TEXT = "这产品太差了"  # the README's curl example


def served(onnx: Path) -> list[str]:
    """What `bertdeploy serve ONNX` logs until ready, and its answer to the README's request for SERVED_TEXT (on a
    free loopback port), as lines: the record of the quick start's serve step."""
    server = subprocess.Popen([sys.executable, "-m", "bertdeploy", "serve", str(onnx), "--port", "0"],
                              stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("INFO bertdeploy.serve.models: ready") for line in log):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("".join(log) or "bertdeploy serve did not start")
            time.sleep(0.05)
        port = re.search(r"on http://127\.0\.0\.1:(\d+)", "".join(log)).group(1)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": SERVED_TEXT}, timeout=30)
        answer.raise_for_status()
        return [line.rstrip("\n") for line in log if line.startswith("INFO")] + [answer.text]
    finally:
        server.terminate()
        server.wait(30)


def record(demo: Path, seconds: float | None) -> dict:
    metrics = json.loads((demo / "model" / "metrics.json").read_text())
    manifest = json.loads((demo / "onnx" / "manifest.json").read_text())
    bench = json.loads((demo / "bench.json").read_text())
    with (demo / "test_predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {
        "machine": bench["machine"],
        "demo_seconds": seconds,
        "finetune": {"epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
                     "train_samples_per_second": metrics["train_samples_per_second"]},
        "export": {"default_variant": manifest["default_variant"], "exporter": manifest["exporter"],
                   "pytorch": manifest["evaluation"]["pytorch"], "vocabulary": manifest.get("vocabulary"),
                   "variants": {name: {key: v.get(key) for key in ("eval", "parity", "size_bytes", "latency_ms")}
                                for name, v in manifest["variants"].items()},
                   "auto": manifest.get("auto")},
        "bench": bench,
        "predict_accuracy": sum(r["label"] == r["predicted_label"] for r in rows) / len(rows),
        "printed": {**{name: (demo / name).read_text(encoding="utf-8").splitlines()
                       for name in ("examples.txt", "predict.log") if (demo / name).is_file()},
                    "serve": served(demo / "onnx")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="names the result file: demo_e5_<name>.json")
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seconds", type=float, help="the whole demo's wall time")
    args = parser.parse_args()
    out = RESULTS / f"demo_e5_{args.name}.json"
    out.write_text(json.dumps(record(args.demo, args.seconds), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
