"""Training throughput of our recipe against the plain recipe that pads every text to max length.

Same model (the packaged MiniLM), same Chinese reviews, same seed, same TrainingArguments, one
run each, on this machine:
  bertdeploy              `finetune()` as shipped: dynamic padding, random batches
  bertdeploy-grouped      `finetune(group_by_length=True)`: batches of similar length
  pad-to-max              the stock Trainer on texts padded to max_length (the plain tutorial recipe)
Samples/s is the Trainer's own train_samples_per_second (per-epoch evaluation included in all
three). Writes benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py [--train-size 1500] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, default_data_collator

from bertdeploy import FinetuneOptions, finetune
from bertdeploy.builder.examples import load_examples
from bertdeploy.builder.pretrained import load_model
from bertdeploy.builder.train import Recipe, metric_function
from bertdeploy.builder.trainer_settings import training_arguments
from bertdeploy.demo.packaged import minilm_path, write_review_splits
from bertdeploy.host import machine
from bertdeploy.labels import LabelScheme
from bertdeploy.metrics import classification_report

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"


def pad_to_max(options: FinetuneOptions, labels: list[str]) -> dict:
    """The plain recipe: every text padded to max_length, no grouping; everything else as ours."""
    tokenizer, model = load_model(options.model, labels, seed=options.seed)
    label_ids = {label: i for i, label in enumerate(labels)}

    def encode(path):
        examples = load_examples(path)
        enc = tokenizer(examples.texts, truncation=True, max_length=options.max_length, padding="max_length")
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": label_ids[y]} for i, y in enumerate(examples.labels)]

    args = training_arguments(options, Path(options.output_dir) / "checkpoints")
    trainer = Trainer(model=model, args=args, train_dataset=encode(options.train_file),
                      eval_dataset=encode(options.eval_file), data_collator=default_data_collator,
                      compute_metrics=metric_function(LabelScheme(tuple(labels)), Recipe()))
    run = trainer.train()
    prediction = trainer.predict(trainer.eval_dataset)
    report = classification_report(prediction.label_ids, np.argmax(prediction.predictions, -1), labels)
    return {"samples_per_second": run.metrics["train_samples_per_second"], "runtime_s": run.metrics["train_runtime"],
            "accuracy": report["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=1500)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        splits = write_review_splits(tmp, args.train_size, args.test_size, seed=0)
        base = dict(model=minilm_path(), train_file=splits.train_file, eval_file=splits.test_file,
                    epochs=args.epochs, learning_rate=args.learning_rate, max_length=128, batch_size=16, seed=0)
        figures = {}
        for name, grouped in (("bertdeploy", False), ("bertdeploy-grouped", True)):
            result = finetune(FinetuneOptions(output_dir=f"{tmp}/{name}", group_by_length=grouped, **base))
            figures[name] = {"samples_per_second": result.train_samples_per_second,
                             "runtime_s": result.train_runtime, "accuracy": result.accuracy}
            print(name, figures[name], flush=True)
        figures["pad-to-max"] = pad_to_max(FinetuneOptions(output_dir=f"{tmp}/plain", **base), ["negative", "positive"])
        print("pad-to-max", figures["pad-to-max"], flush=True)

    plain = figures["pad-to-max"]["samples_per_second"]
    report = {
        "what": "fine-tuning throughput, MiniLM-L6 on Chinese reviews, max_length 128, batch 16, one run each",
        "machine": machine(threads=torch.get_num_threads()),
        "settings": vars(args),
        "recipes": figures,
        "speedup_vs_pad_to_max": {k: v["samples_per_second"] / plain for k, v in figures.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for name, v in figures.items():
        print(f"{name:20} {v['samples_per_second']:7.1f} samples/s  x{v['samples_per_second'] / plain:4.2f}  "
              f"accuracy {v['accuracy']:.4f}")


if __name__ == "__main__":
    main()
