"""Fine-tuning mechanics on the tiny random BERT: real Trainer runs, a few seconds each."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import checkpoint_written, log_tail, make_rows, wait_for_process, write_csv, write_jsonl
from safetensors.numpy import load_file

from bertdeploy.builder.train import FinetuneOptions, finetune
from bertdeploy.errors import BertdeployError, ModelError, OutputDirError
from bertdeploy.manifest import DataFile, ModelManifest, ValSplit

FAST = dict(epochs=5, learning_rate=3e-3, batch_size=8)


def _options(model, train, out, **kw) -> FinetuneOptions:
    return FinetuneOptions(model=str(model), train_file=train, output_dir=out, **{**FAST, **kw})


def _accuracy_of_saved_model(model_dir: Path, rows: list[dict]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    return float(np.mean([p == r["label"] for p, r in zip(predicted, rows, strict=False)]))


def test_finetune_learns_and_writes_a_complete_directory(tiny_model_dir, tiny_data, tmp_path):
    train, test = tiny_data
    out = tmp_path / "model"
    result = finetune(_options(tiny_model_dir, train, out, eval_file=test))

    losses = [e["train_loss"] for e in result.epochs]
    assert len(result.epochs) == 5 and losses[-1] < losses[0] * 0.5
    assert result.accuracy >= 0.9
    best = max(result.epochs, key=lambda e: e["macro_f1"])
    assert result.best_epoch == best["epoch"] and result.macro_f1 == pytest.approx(best["macro_f1"])

    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "metrics.json", "manifest.json"}
    assert expected <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "test.csv", "train.csv"]  # no .partial left

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128

    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4, 5]
    assert set(metrics["best"]["per_class"]) == {"negative", "positive"}
    matrix = metrics["best"]["confusion_matrix"]["rows_true_columns_predicted"]
    assert sum(map(sum, matrix)) == 40 and np.trace(matrix) / 40 == pytest.approx(result.accuracy)
    assert metrics["vocabulary"]["unknown_tokens"] == 0 and metrics["vocabulary"]["texts"] == result.train_samples

    manifest = ModelManifest.read(out)
    assert manifest.labels == ("negative", "positive") and manifest.max_length == 128
    assert manifest.source_model == str(tiny_model_dir)
    assert isinstance(manifest.data.train_file, DataFile) and len(manifest.data.train_file.sha256) == 64
    assert manifest.data.eval_rows == 40
    assert manifest.training["learning_rate"] == 3e-3 and manifest.training["precision"] == "fp32"
    assert manifest.vocabulary == metrics["vocabulary"]

    # the best epoch's weights were saved, not the last ones
    assert _accuracy_of_saved_model(out, make_rows(40, 2)) == pytest.approx(result.accuracy)


def test_group_by_length_reports_the_kept_models_own_figures(tiny_model_dir, tiny_data, tmp_path):
    # the Trainer also shuffles evaluation batches by length: the final figures must still pair each text's
    # prediction with its own label
    train, test = tiny_data
    result = finetune(_options(tiny_model_dir, train, tmp_path / "m", eval_file=test, group_by_length=True))
    best = max(result.epochs, key=lambda e: e["macro_f1"])
    assert result.accuracy >= 0.9 and result.macro_f1 == pytest.approx(best["macro_f1"])
    assert _accuracy_of_saved_model(tmp_path / "m", make_rows(40, 2)) == pytest.approx(result.accuracy)


def test_val_split_pairs_and_max_train_samples(tiny_model_dir, tmp_path):
    rows = [{"q": r["text"], "a": "回答", "y": r["label"]} for r in make_rows(100, 3)]
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = finetune(_options(tiny_model_dir, train, tmp_path / "m", epochs=1, text_column="q",
                               text_pair_column="a", label_column="y", max_train_samples=50))
    assert (result.train_samples, result.eval_samples) == (50, 10)
    manifest = ModelManifest.read(tmp_path / "m")
    assert manifest.data.val_split == ValSplit(fraction=0.1, seed=42) and manifest.data.eval_file is None
    assert manifest.text_pair_column == "a" and manifest.pairs


def _weights_before_and_after(model_dir, data, out, **settings) -> tuple[dict, dict]:
    """The checkpoint's weights, and the fine-tuned model's after one epoch with `settings`."""
    train, test = data
    finetune(_options(model_dir, train, out, eval_file=test, epochs=1, **settings))
    return load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")


def test_freeze_encoder_trains_only_the_head(tiny_model_dir, tiny_data, tmp_path):
    before, after = _weights_before_and_after(tiny_model_dir, tiny_data, tmp_path / "m", freeze_encoder=True)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    np.testing.assert_array_equal(before[name], after[name])
    assert "classifier.weight" in after


def test_freeze_embeddings_keeps_the_word_table_and_trains_the_rest(tiny_model_dir, tiny_data, tmp_path):
    before, after = _weights_before_and_after(tiny_model_dir, tiny_data, tmp_path / "m", freeze_embeddings=True)
    words = "bert.embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(before[words], after[words])
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not np.array_equal(before[query], after[query])
    assert ModelManifest.read(tmp_path / "m").training["freeze_embeddings"] is True


def test_output_dir_refused_then_overwritten(tiny_model_dir, tiny_data, tmp_path):
    train, test = tiny_data
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty; pass --overwrite"):
        finetune(_options(tiny_model_dir, train, out, eval_file=test, epochs=1))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    finetune(_options(tiny_model_dir, train, out, eval_file=test, epochs=1, overwrite=True))
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("make_source, message", [
    (lambda tmp: tmp / "empty-dir", r"not a model directory \(no config.json\)"),
    (lambda tmp: "./no/such/model", "no such directory"),
])
def test_model_path_that_is_not_a_model(tiny_data, tmp_path, make_source, message):
    source = make_source(tmp_path)
    if isinstance(source, Path):
        source.mkdir()
    with pytest.raises(ModelError, match=message):
        finetune(_options(source, tiny_data[0], tmp_path / "m", eval_file=tiny_data[1]))
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_options_are_validated():
    with pytest.raises(BertdeployError, match="either an eval file or a validation split"):
        FinetuneOptions(model="m", train_file="t.csv", output_dir="o", eval_file="e.csv", val_split=0.2)
    with pytest.raises(BertdeployError, match="val_split must be between 0 and 1"):
        FinetuneOptions(model="m", train_file="t.csv", output_dir="o", val_split=1.5)


def _start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    log = (cwd.parent / "log.txt").open("w")  # a file, not a pipe nobody reads, which would fill and block
    process = subprocess.Popen([sys.executable, "-m", "bertdeploy", "finetune", *args], cwd=cwd,
                               stdout=log, stderr=subprocess.STDOUT)
    process.stdout = log
    return process


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


@pytest.fixture
def slow_run_args(tiny_model_dir, run_dir) -> list[str]:
    """A run whose epochs last long enough to interrupt: many rows, batch size 1."""
    write_csv(run_dir / "big.csv", make_rows(400, 5))
    write_csv(run_dir / "dev.csv", make_rows(20, 6))
    return ["--model", str(tiny_model_dir), "--train-file", "big.csv", "--eval-file", "dev.csv",
            "--output-dir", "out", "--batch-size", "1", "--epochs", "20"]


def test_ctrl_c_leaves_nothing(slow_run_args, run_dir):
    process = _start_cli(slow_run_args, run_dir)
    # in the Trainer's first epoch, once a step is done (its progress bar says so), before any checkpoint
    wait_for_process(lambda: "training on" in log_tail(process) and re.search(r"\b[1-9]\d*/\d+ \[", log_tail(process)),
              process)
    assert not list((run_dir / "out.partial").glob("checkpoints/checkpoint-*"))
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode != 0, log_tail(process)
    assert sorted(p.name for p in run_dir.iterdir()) == ["big.csv", "dev.csv"]


def test_killed_run_resumes_from_its_checkpoint(slow_run_args, run_dir, monkeypatch):
    process = _start_cli(slow_run_args, run_dir)
    checkpoints = run_dir / "out.partial" / "checkpoints"
    pattern = "checkpoint-*/trainer_state.json"
    wait_for_process(lambda: any(checkpoint_written(s) for s in checkpoints.glob(pattern)), process)
    process.kill()
    process.wait()
    assert not (run_dir / "out").exists()  # nothing that looks finished

    # a plain re-run is refused rather than silently discarding the checkpoint
    again = subprocess.run([sys.executable, "-m", "bertdeploy", "finetune", *slow_run_args], cwd=run_dir,
                           capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr

    monkeypatch.chdir(run_dir)
    options = FinetuneOptions(model=slow_run_args[1], train_file="big.csv", eval_file="dev.csv", output_dir="out",
                              batch_size=1, epochs=2, resume=True)  # shorten the rest of the run
    result = finetune(options)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-400")
    assert [e["epoch"] for e in result.epochs] == [1, 2]  # epoch 1 from before the kill, epoch 2 after
    assert (run_dir / "out" / "manifest.json").is_file() and not (run_dir / "out.partial").exists()


def test_resume_refuses_changed_settings(tiny_model_dir, tiny_data, tmp_path):
    train, test = tiny_data
    out = tmp_path / "out"
    partial = tmp_path / "out.partial" / "checkpoints" / "checkpoint-20"
    partial.mkdir(parents=True)
    (partial / "trainer_state.json").write_text("{}")
    (tmp_path / "out.partial" / "run.json").write_text(json.dumps({"learning_rate": 1.0}))
    with pytest.raises(OutputDirError, match="cannot resume: .*learning_rate.* differ"):
        finetune(_options(tiny_model_dir, train, out, eval_file=test, resume=True))


def test_same_seed_same_model(tiny_model_dir, tiny_data, tmp_path):
    train, test = tiny_data
    first = finetune(_options(tiny_model_dir, train, tmp_path / "a", eval_file=test, epochs=1))
    second = finetune(_options(tiny_model_dir, train, tmp_path / "b", eval_file=test, epochs=1))
    assert first.epochs == second.epochs
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in "ab")
    np.testing.assert_array_equal(a["classifier.weight"], b["classifier.weight"])
