"""Does `bertdeploy predict` stream? Peak RSS and speed on files of 10 thousand to 1 million lines.

The model does not matter for memory, only the streaming does, and the fine-tuned MiniLM would need
over an hour for a million reviews on 2 cores. So this exports a small random BERT classifier
(2 layers, hidden 64, MiniLM's tokenizer and vocabulary, max length 128) and runs the real
`bertdeploy predict` on CSV files of real reviews repeated to 10k, 100k and 1M lines, each in
its own process; the process reports its own peak RSS (VmHWM) when the command returns.
Writes benchmarks/results/predict_memory.json.

    python benchmarks/predict_memory.py
"""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bertdeploy.demo.packaged import minilm_path, review_texts
from bertdeploy.host import machine
from bertdeploy.timing import stopwatch

RESULTS = Path(__file__).parent / "results" / "predict_memory.json"
SIZES = (10_000, 100_000, 1_000_000)
RUN = """
import sys
from bertdeploy.cli import cli
try:
    cli(sys.argv[1:], prog_name="bertdeploy")
except SystemExit as e:
    code = e.code
peak = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1]
print(peak, file=open(sys.argv[-1] + ".peak", "w"))
sys.exit(code)
"""


def small_classifier(folder: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    from bertdeploy.builder.export import ExportOptions, export

    texts = [t for group in review_texts().values() for t in group]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = small_classifier(work / "model")
        export(ExportOptions(model_dir=model, output_dir=work / "onnx", quantize=[]))
        for size in SIZES:
            source = work / f"reviews_{size}.csv"
            with source.open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "text"])
                writer.writerows([i, t] for i, t in zip(range(size), itertools.cycle(texts), strict=False))
            output = work / "out.csv"
            _, seconds = stopwatch(subprocess.run, [sys.executable, "-c", RUN, "-q", "predict", str(work / "onnx"),
                                                     str(source), "-o", str(output)], check=True)
            peak_mb = int(Path(f"{output}.peak").read_text()) / 1024
            with output.open(encoding="utf-8") as f:
                rows = sum(1 for _ in f) - 1
            results.append({"lines": size, "input_mb": source.stat().st_size / 1e6, "rows_written": rows,
                            "seconds": seconds, "texts_per_second": size / seconds, "peak_rss_mb": peak_mb})
            print(json.dumps(results[-1]), file=sys.stderr)
            source.unlink()
    growth = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"model": "random BERT, 2 layers, hidden 64, MiniLM tokenizer, max length 128",
                                   "machine": machine(), "runs": results, "peak_rss_1m_over_10k": growth},
                                  indent=2) + "\n")
    print(f"peak RSS, 1M lines / 10k lines: {growth:.3f}")


if __name__ == "__main__":
    main()
