"""`bertdeploy optimize` on the tiny classifier: every default candidate made through distill and export, one bench
run, the choice per cell, OUT/model ready for the predictor, report.json and report.html; a rerun reuses them."""

from __future__ import annotations

import json

from bertdeploy.manifest import ExportManifest
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
    manifest = ExportManifest.read(out / "model")
    assert manifest.extra["optimize"]["chosen"] == report["chosen"]
    assert Predictor.load(out / "model").predict(["这个手机很好"])[0].label in manifest.labels
    assert "<svg" in (out / "report.html").read_text()
    again = optimize(OptimizeOptions(model, out, max_accuracy_drop=100, **FAST))
    assert {c["status"] for c in again.report["candidates"]} == {"reused"}


def test_a_bound_nothing_meets_keeps_the_teachers_best(tiny_classifier, tmp_path):
    model, _, _ = tiny_classifier
    result = optimize(OptimizeOptions(model, tmp_path / "out", max_accuracy_drop=0, candidates="teacher",
                                      **FAST))
    assert result.kept == "teacher"
