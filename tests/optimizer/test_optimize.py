"""`bertdeploy optimize` on the tiny classifier: every default candidate made through distill and export, one bench
run, the choice per cell, OUT/model ready for the predictor, report.json and report.html; a rerun reuses them; a
teacher evaluated on a split of its training file (single and multi-label), real texts at natural lengths, the time
budget, a student that cannot be made, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from helpers import make_multilabel_rows, make_rows, write_csv

from bertdeploy.builder.train import FinetuneOptions, finetune
from bertdeploy.cli import cli
from bertdeploy.manifest import ExportManifest, ModelManifest
from bertdeploy.optimizer.choose import choose
from bertdeploy.optimizer.run import OptimizeOptions, optimize
from bertdeploy.runtime.predictor import Predictor

FAST = {"batch_sizes": [1, 8], "seq_length": 32, "runs": 3, "training": {"epochs": 1}}


def test_optimize_makes_times_and_keeps_the_fastest_within_the_bound(tiny_classifier, tmp_path):
    model, _, _ = tiny_classifier
    out = tmp_path / "out"
    result = optimize(OptimizeOptions(model, out, max_accuracy_drop=100, **FAST))  # every engine within the bound
    report = json.loads((out / "report.json").read_text())
    assert report == result.report
    assert {e["candidate"] for e in report["engines"]} == {"teacher", "static", "layers-1"}
    for key, choice in report["chosen"].items():
        timed = [e["p50_ms"][key] for e in report["engines"] if e["within"]]
        assert choice["within"] and choice["p50_ms"] == min(timed), (key, choice)
    assert choose(report["engines"], list(report["chosen"])) == report["chosen"]  # reproducible from report.json
    manifest = ExportManifest.read(out / "model")
    assert manifest.extra["optimize"]["chosen"] == report["chosen"]
    mine = [e for e in report["engines"] if e["candidate"] == result.kept]
    assert manifest.auto.measured_by == "optimize"  # backend auto routes by this run's timings of the kept export
    assert list(manifest.auto.eligible) == [e["variant"] for e in mine if e["within"]]
    assert manifest.auto.p50_ms == {e["variant"]: {str(e["padded_tokens"][c]): round(ms, 4) for c, ms in
                                                   e["p50_ms"].items()} for e in mine}
    assert Predictor.load(out / "model").predict(["这个手机很好"])[0].label in manifest.labels
    assert "<svg" in (out / "report.html").read_text()
    again = optimize(OptimizeOptions(model, out, max_accuracy_drop=100, **FAST))
    assert {c["status"] for c in again.report["candidates"]} == {"reused"}


def test_the_command_prints_the_choice_and_a_changed_bound_makes_the_teacher_again(tiny_classifier, tmp_path):
    model, _, _ = tiny_classifier
    args = ["optimize", str(model), "--output-dir", str(tmp_path / "out"), "--candidates", "teacher",
            "--batch-sizes", "1,8", "--seq-length", "32", "--runs", "3"]
    done = CliRunner().invoke(cli, [*args, "--max-accuracy-drop", "0"])
    assert done.exit_code == 0, done.output
    assert "bound: accuracy at least" in done.output and "1x32: teacher / " in done.output
    assert f"kept teacher in {tmp_path / 'out' / 'model'}" in done.output
    again = optimize(OptimizeOptions(model, tmp_path / "out", max_accuracy_drop=100, candidates="teacher", **FAST))
    assert again.report["candidates"][0]["status"] == "made"  # another bound: its export is made again


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_a_teacher_scored_on_a_split_scores_every_candidate_on_the_rows_it_held_out(tiny_model_dir, tmp_path,
                                                                                     multi_label):
    rows = make_multilabel_rows(200, seed=1) if multi_label else make_rows(200, seed=1)
    train = write_csv(tmp_path / "train.csv", rows)
    labels = {"multi_label": True, "label_column": "labels"} if multi_label else {}
    teacher = tmp_path / "teacher"  # no eval file: finetune holds a split of the training file out
    finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=train, output_dir=teacher, epochs=8,
                             learning_rate=3e-3, max_length=32, warmup_ratio=0.0, seed=0, **labels))
    recorded = ModelManifest.read(teacher)
    result = optimize(OptimizeOptions(teacher, tmp_path / "out", candidates="static", max_accuracy_drop=100,
                                      **FAST))
    report = result.report
    assert report["eval_texts"] == recorded.data.eval_rows > 0
    # the teacher's PyTorch score on the rows written out is the one finetune recorded on the rows it held out
    assert report["bound"]["metric"] == ("micro_f1" if multi_label else "accuracy")
    assert report["bound"]["reference"] == pytest.approx(recorded.metrics[report["bound"]["metric"]], abs=1e-9)
    student = ModelManifest.read(tmp_path / "out" / "work" / "models" / "static")
    assert student.data.val_split == recorded.data.val_split and student.data.eval_rows == recorded.data.eval_rows
    assert {e["candidate"] for e in report["engines"]} == {"teacher", "static"}


def test_real_texts_time_natural_lengths_and_the_budget_starts_no_new_candidate(tiny_classifier, tmp_path):
    model, _, _ = tiny_classifier
    traffic = tmp_path / "traffic.txt"  # longer than the eval texts: their lengths show whose they are
    traffic.write_text("\n".join(" ".join(r["text"] for r in make_rows(6, seed=i)) for i in range(30)) + "\n",
                       encoding="utf-8")
    result = optimize(OptimizeOptions(model, tmp_path / "out", candidates="teacher,static", texts=traffic,
                                      time_budget_s=0, **FAST))
    report = result.report
    assert report["cells"] == [{"batch_size": 1, "seq_length": "natural"}, {"batch_size": 8, "seq_length": "natural"}]
    assert set(report["chosen"]) == {"1xnatural", "8xnatural"}
    assert report["rejected"] == [{"candidate": "static", "stage": "not started",
                                   "reason": report["rejected"][0]["reason"]}]
    assert "--time-budget" in report["rejected"][0]["reason"]
    assert {e["candidate"] for e in report["engines"]} == {"teacher"} and result.kept == "teacher"
    timed = json.loads((tmp_path / "out" / "work" / "bench.json").read_text())["timings"]
    natural = [t for t in timed if t["inputs"] == "natural" and t["batch_size"] == 1]
    # the traffic's long texts, cut at the max length (32), not the eval file's short ones
    assert natural and all(t["padded_tokens"] == 32 for t in natural)
    assert "<svg" in (tmp_path / "out" / "report.html").read_text()


def test_a_student_that_cannot_be_made_is_reported_and_the_run_goes_on(tmp_path):
    from helpers import tiny_albert_classifier

    teacher = tiny_albert_classifier(tmp_path)  # ALBERT shares one layer: no layer-cut student
    result = optimize(OptimizeOptions(teacher, tmp_path / "out", candidates="teacher,layers-1",
                                      max_accuracy_drop=100, **FAST))
    (rejected,) = result.report["rejected"]
    assert rejected["candidate"] == "layers-1" and rejected["stage"] == "distill"
    assert "ALBERT" in rejected["reason"]
    assert result.kept == "teacher" and (tmp_path / "out" / "model" / "manifest.json").is_file()


def test_bad_input_is_one_line_and_writes_nothing(tiny_classifier, tmp_path):
    model, train, _ = tiny_classifier
    orphan = tmp_path / "orphan"
    shutil.copytree(model, orphan)
    manifest = json.loads((orphan / "manifest.json").read_text())
    manifest["data"]["train_file"]["path"] = str(tmp_path / "gone.csv")
    (orphan / "manifest.json").write_text(json.dumps(manifest))
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("text\n好\n", encoding="utf-8")
    few = tmp_path / "few.txt"
    few.write_text("好\n差\n", encoding="utf-8")
    cases = [([str(orphan)], "no training data recorded (or it is gone); pass --train-file and --eval-file"),
             ([str(model), "--candidates", "teacher,layers-9"], "'layers-9' is none of teacher, static, layers-N"),
             ([str(model), "--texts", str(tmp_path / "none.txt")], "none.txt: no such file"),
             ([str(model), "--texts", str(few), "--batch-sizes", "1,8"], "2 texts, fewer than the largest batch"),
             ([str(model), "--seq-length", "64"], "over the teacher's max length 32"),
             ([str(model), "--eval-file", str(unlabelled)], "unlabelled.csv: no 'label' column"),
             ([str(model), "--train-file", str(tmp_path / "typo.csv")], "--train-file"),
             ([str(model), "--max-accuracy-drop", "-1"], "--max-accuracy-drop is in points")]
    for args, message in cases:
        done = CliRunner().invoke(cli, ["optimize", *args, "--output-dir", str(tmp_path / "out")])
        assert done.exit_code == 2 and message in done.output, (args, done.output)
        assert "Traceback" not in done.output and not (tmp_path / "out").exists(), args
