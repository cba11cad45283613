"""`bertdeploy distill`: a student of the tiny classifier, its layers, soft targets, unlabelled texts, resume, the
teacher-vs-student guard (by micro-F1 for a multi-label teacher), and its output taken by export and predict like
any fine-tuned model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import NO_VETO, checkpoint_written, make_rows, wait_for_process, write_csv
from safetensors.numpy import load_file

from bertdeploy.cli import cli

pytest.importorskip("torch", reason="the runtime install: no PyTorch to train with")


def _distill(teacher: Path, out: Path, *args: str):
    return CliRunner().invoke(cli, ["distill", str(teacher), "--output-dir", str(out), *args])


def test_the_kept_layers_are_the_teachers_evenly_spaced_first_and_last_kept(tiny_model_dir):
    import copy

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from bertdeploy.builder.distill import keep_layers

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6,
                                                       num_attention_heads=2, intermediate_size=32)).eval()
    student = copy.deepcopy(teacher)
    assert keep_layers(student, 3) == [0, 2, 5]
    assert student.config.num_hidden_layers == 3 and len(student.bert.encoder.layer) == 3
    for mine, theirs in zip(student.bert.encoder.layer, [teacher.bert.encoder.layer[i] for i in (0, 2, 5)],
                            strict=True):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    ids = torch.tensor([[1, 5, 7, 2]])
    assert student(input_ids=ids).logits.shape == (1, 2)
    chosen = copy.deepcopy(teacher)
    assert keep_layers(chosen, [5, 1, 3]) == [1, 3, 5]  # named layers, in the teacher's order
    assert all(torch.equal(a, b) for a, b in zip(chosen.bert.encoder.layer[0].parameters(),
                                                  teacher.bert.encoder.layer[1].parameters(), strict=True))


def test_the_loss_mixes_kl_at_the_temperature_and_cross_entropy_where_there_is_a_gold_label():
    import torch
    import torch.nn.functional as F

    from bertdeploy.builder.distill import distillation_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    teacher = torch.tensor([[1.0, 0.0], [-2.0, 2.0]])
    labels = torch.cat([torch.tensor([[1.0], [-1.0]]), teacher], dim=1)  # row 2 has no gold label
    loss = distillation_loss({"logits": logits}, labels, temperature=2.0, alpha=0.25)
    kl = F.kl_div(F.log_softmax(logits / 2, -1), F.softmax(teacher / 2, -1), reduction="none").sum(-1) * 4
    ce = F.cross_entropy(logits[:1], torch.tensor([1]))
    assert loss.item() == pytest.approx(((0.25 * kl[0] + 0.75 * ce) + kl[1]).item() / 2, rel=1e-6)


def test_the_multilabel_loss_is_the_same_per_label_with_sigmoids():
    import torch
    import torch.nn.functional as F

    from bertdeploy.builder.distill import distillation_loss

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.5, 0.3, -2.0]])
    teacher = torch.tensor([[1.0, 0.0, -3.0], [-2.0, 2.0, 1.0]])
    gold = torch.tensor([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])  # row 2 has no gold label set
    loss = distillation_loss({"logits": logits}, torch.cat([gold, teacher], dim=1), temperature=2.0, alpha=0.25,
                             multi_label=True)
    soft = torch.sigmoid(teacher / 2)  # KL of two-way distributions: cross-entropy less the teacher's entropy
    kl = (F.binary_cross_entropy_with_logits(logits / 2, soft, reduction="none")
          - F.binary_cross_entropy_with_logits(teacher / 2, soft, reduction="none")).mean(-1) * 4
    bce = F.binary_cross_entropy_with_logits(logits[0], gold[0])
    assert loss.item() == pytest.approx(((0.25 * kl[0] + 0.75 * bce) + kl[1]).item() / 2, rel=1e-5)


def test_distill_writes_a_student_that_export_and_predict_take(tiny_classifier, tmp_path):
    model, train, test = tiny_classifier
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("\n".join(r["text"] for r in make_rows(64, seed=9)) + "\n", encoding="utf-8")
    done = _distill(model, tmp_path / "student", "--layers", "1", "--unlabeled-file", str(unlabeled),
                    "--epochs", "3", "--learning-rate", "3e-3", "--warmup-ratio", "0", "--max-accuracy-drop",
                    str(NO_VETO), "--freeze-embeddings", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    manifest = json.loads((tmp_path / "student" / "manifest.json").read_text())
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    teacher = json.loads((model / "manifest.json").read_text())
    d = manifest["distillation"]
    assert d["layers_kept"] == [0] and config["num_hidden_layers"] == 1 and result["depth"] == {"teacher": 2,
                                                                                              "student": 1}
    assert (d["temperature"], d["alpha"], d["teacher_dir"]) == (2.0, 0.5, str(model.absolute()))
    assert d["unlabeled_file"]["rows"] == 64 and d["parameters"]["student"] < d["parameters"]["teacher"]
    assert d["eval"]["teacher"]["accuracy"] == pytest.approx(teacher["metrics"]["accuracy"])
    assert d["eval"]["student"]["accuracy"] == pytest.approx(manifest["metrics"]["accuracy"])
    assert 0 <= d["eval"]["student"]["agreement"] <= 1
    assert (manifest["labels"], manifest["max_length"]) == (teacher["labels"], teacher["max_length"])
    assert manifest["data"]["train_file"]["path"] == teacher["data"]["train_file"]["path"]
    # the unlabelled texts were trained on: (160 labelled + 64 unlabelled) / 16 per step, 3 epochs
    assert manifest["training"]["optimizer_steps"] == 3 * 14
    assert set(result["latency_ms"]["student"]) == {"batch_1", "batch_8"}
    words = "bert.embeddings.word_embeddings.weight"  # --freeze-embeddings: the teacher's table, kept as it was
    np.testing.assert_array_equal(load_file(tmp_path / "student" / "model.safetensors")[words],
                                  load_file(model / "model.safetensors")[words])
    assert manifest["training"]["freeze_embeddings"] is True

    exported = CliRunner().invoke(cli, ["export", str(tmp_path / "student"), "--output-dir", str(tmp_path / "onnx"),
                                        "--quantize", "none", "--no-openvino"])
    assert exported.exit_code == 0, exported.output
    predicted = CliRunner().invoke(cli, ["predict", str(tmp_path / "onnx"), str(test), "-o", str(tmp_path / "o.csv")])
    assert predicted.exit_code == 0, predicted.output
    assert f"accuracy {manifest['metrics']['accuracy']:.4f}" in predicted.stdout


def test_the_table_compares_teacher_and_student(tiny_classifier, tmp_path):
    model, _, _ = tiny_classifier
    done = _distill(model, tmp_path / "s", "--layers", "1", "--epochs", "1", "--max-accuracy-drop", str(NO_VETO))
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["model", "layers", "parameters", "accuracy", "macro-F1", "agreement", "batch", "1",
                                "batch", "8"]
    assert lines[1].split()[:2] == ["teacher", "2"] and lines[2].split()[:2] == ["student", "1"]
    assert "speed-up over the teacher (PyTorch fp32, the same texts, interleaved)" in done.stdout


def test_a_student_too_far_below_its_teacher_is_refused_and_nothing_is_written(tiny_classifier, tiny_model_dir,
                                                                               tmp_path):
    model, _, _ = tiny_classifier
    # a random base barely trained: near chance, while the teacher is right on ~95%
    done = _distill(model, tmp_path / "s", "--student", str(tiny_model_dir), "--epochs", "0.05",
                    "--learning-rate", "1e-7", "--max-accuracy-drop", "1")
    assert done.exit_code == 2
    assert "points below its teacher's" in done.output and "nothing was written" in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--layers", "0"], "--layers must be at least 1"),
    (["--layers", "2"], "--layers 2: the teacher has 2 layers; keep fewer"),
    ([], "give --layers N, --student MODEL or --static (one of them)"),
    (["--layers", "1", "--student", "x"], "give --layers N, --student MODEL or --static (one of them)"),
    (["--layers", "1", "--alpha", "1.5"], "--alpha must be between 0 and 1"),
    (["--layers", "0,2"], "--layers 0,2: the teacher's layers are 0 to 1"),
    (["--layers", "1,0"], "--layers 1,0: that is every layer of the teacher; keep fewer"),
    (["--layers", "1,x"], "give a number of layers (3) or layer numbers (0,2,5)"),
])
def test_bad_options_are_one_line_errors(tiny_classifier, tmp_path, args, message):
    model, _, _ = tiny_classifier
    done = _distill(model, tmp_path / "s", *args)
    assert done.exit_code == 2 and message in done.output
    assert not (tmp_path / "s").exists()


def test_bad_inputs_are_one_line_errors_and_write_nothing(tiny_classifier, tiny_model_dir, tmp_path):
    model, _, _ = tiny_classifier
    out = tmp_path / "s"
    done = _distill(tiny_model_dir, out, "--layers", "1")
    assert done.exit_code == 2 and "not a `bertdeploy finetune` output" in done.output
    (tmp_path / "empty.txt").write_text("")
    done = _distill(model, out, "--layers", "1", "--unlabeled-file", str(tmp_path / "empty.txt"))
    assert done.exit_code == 2 and "empty.txt: the file is empty" in done.output
    (tmp_path / "gbk.txt").write_bytes("好评\n差评".encode("gbk"))
    done = _distill(model, out, "--layers", "1", "--unlabeled-file", str(tmp_path / "gbk.txt"))
    assert done.exit_code == 2 and "gbk.txt line 1: not valid UTF-8" in done.output
    done = _distill(model, out, "--student", str(tmp_path))
    assert done.exit_code == 2 and "not a model directory" in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "gbk.txt"]


def test_a_killed_distillation_resumes(tiny_classifier, tmp_path, monkeypatch):
    from bertdeploy.builder.distill import DistillOptions, distill

    model, _, test = tiny_classifier
    write_csv(tmp_path / "big.csv", make_rows(400, 5))
    args = [str(model), "--output-dir", "out", "--layers", "1", "--train-file", "big.csv", "--batch-size", "1",
            "--epochs", "20", "--max-accuracy-drop", str(NO_VETO)]
    with (tmp_path / "log.txt").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "bertdeploy", "distill", *args], cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT)
        process.stdout = log
        checkpoints = tmp_path / "out.partial" / "checkpoints"
        pattern = "checkpoint-*/trainer_state.json"
        wait_for_process(lambda: any(checkpoint_written(s) for s in checkpoints.glob(pattern)), process)
        process.kill()
        process.wait()
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)
    result = distill(DistillOptions(model, "out", layers=1, train_file="big.csv",
                                    max_accuracy_drop=NO_VETO,
                                    training={"batch_size": 1, "epochs": 2, "resume": True}))
    assert result.student.resumed_from is not None and result.student.resumed_from.endswith("checkpoint-400")
    assert [e["epoch"] for e in result.student.epochs] == [1, 2]
    assert (tmp_path / "out" / "manifest.json").is_file() and not (tmp_path / "out.partial").exists()
    assert np.isfinite(result.figures["student"]["accuracy"])


# -- a multi-label teacher ---------------------------------------------------------------------------------------

def test_a_multilabel_teachers_student_is_judged_by_micro_f1(multilabel_teacher, tmp_path):
    done = _distill(multilabel_teacher, tmp_path / "student", "--layers", "1", "--epochs", "1",
                    "--max-accuracy-drop", str(NO_VETO), "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    teacher = json.loads((multilabel_teacher / "manifest.json").read_text())
    manifest = json.loads((tmp_path / "student" / "manifest.json").read_text())
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert result["metric"] == "micro_f1"
    figures = manifest["distillation"]["eval"]
    assert figures == result["figures"]
    assert set(figures["teacher"]) == {"micro_f1", "macro_f1", "subset_accuracy"}
    assert set(figures["student"]) == {"micro_f1", "macro_f1", "subset_accuracy", "agreement", "micro_f1_drop"}
    student = figures["student"]
    assert student["micro_f1_drop"] == pytest.approx((figures["teacher"]["micro_f1"] - student["micro_f1"]) * 100)
    assert student["micro_f1"] == pytest.approx(manifest["metrics"]["micro_f1"]) and 0 <= student["agreement"] <= 1
    # the teacher at its own tuned thresholds, on its eval file: its own figure (up to a score on a threshold)
    assert figures["teacher"]["micro_f1"] == pytest.approx(teacher["metrics"]["micro_f1"], abs=0.05)
    assert config["problem_type"] == manifest["problem_type"] == "multi_label_classification"
    assert manifest["label_separator"] == "|" and set(manifest["thresholds"]) == set(teacher["labels"])
    assert manifest["training"]["tune_thresholds"] and manifest["metrics"]["thresholds_tuned_on_these_data"]
    assert manifest["data"]["eval_file"]["path"] == teacher["data"]["eval_file"]["path"]


def test_a_multilabel_student_below_the_bound_is_refused_by_micro_f1(multilabel_teacher, tmp_path):
    from bertdeploy.builder.distill import DistillOptions, distill
    from bertdeploy.errors import BertdeployError

    options = DistillOptions(multilabel_teacher, tmp_path / "student", layers=1, training={"epochs": 1})
    options.max_accuracy_drop = -100.5  # past the options' check: a bound no student can hold (lost >= -100)
    with pytest.raises(BertdeployError, match=r"^the student's micro-F1 \d\.\d{4} is -?\d+\.\d{2} points below its "
                                              r"teacher's \d\.\d{4} \(allowed: -100\.5\); nothing was written"):
        distill(options)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
