"""The one rule of points lost (labels.judge_drop, LabelScheme.drop) that the export guard, bench and distill share:
by accuracy, micro-F1 for multi-label models, else by agreement; within the bound when lost <= allowed."""

from __future__ import annotations

import pytest

from bertdeploy.labels import LabelScheme, judge_drop

SINGLE = LabelScheme(("negative", "positive"))
MULTI = LabelScheme(("negative", "positive"), multi_label=True)


def test_single_label_models_lose_points_of_accuracy():
    reference = {"accuracy": 0.9, "macro_f1": 0.5}
    over = SINGLE.drop(reference, {"accuracy": 0.885, "macro_f1": 0.9}, 1.0)  # macro-F1 does not count
    assert over.metric == "accuracy" and over.lost == pytest.approx(1.5) and not over.within
    assert over.reason("PyTorch", 200) == "accuracy 0.8850 is 1.50 points below PyTorch's 0.9000 (allowed: 1)"
    assert SINGLE.drop(reference, {"accuracy": 0.895, "macro_f1": 0.0}, 1.0).within
    assert SINGLE.drop_key == "accuracy_drop"


def test_multi_label_models_lose_points_of_micro_f1():
    reference = {"micro_f1": 0.8, "macro_f1": 0.8, "subset_accuracy": 0.9}
    over = MULTI.drop(reference, {"micro_f1": 0.7, "macro_f1": 0.8, "subset_accuracy": 0.9}, 2.5)
    assert over.metric == "micro_f1" and over.lost == pytest.approx(10.0) and not over.within
    assert over.reason("its teacher", 40, subject="the student") == \
        "the student's micro-F1 0.7000 is 10.00 points below its teacher's 0.8000 (allowed: 2.5)"
    better = MULTI.drop(reference, {"micro_f1": 0.85, "macro_f1": 0.0, "subset_accuracy": 0.0}, 0.0)
    assert better.lost == pytest.approx(-5.0) and better.within  # gaining points is within any bound >= 0
    assert MULTI.drop_key == "micro_f1_drop"


def test_the_bound_is_inclusive():
    assert judge_drop(0.75, 0.5, 25.0).within and not judge_drop(0.75, 0.5, 24.99).within


def test_without_labels_the_share_of_texts_decided_otherwise_counts_and_unscored_loses_nothing():
    drop = SINGLE.drop({"accuracy": None, "macro_f1": None}, None, 1.0, agreement=0.98)
    assert drop.metric is None and drop.lost == pytest.approx(2.0) and not drop.within
    assert drop.reason("PyTorch", 50) == ("disagrees with PyTorch on 2.00% of 50 texts, so it may lose that much "
                                          "accuracy (allowed: 1 points)")
    assert judge_drop(0.9, None, 1.0, agreement=0.995).within  # one side unscored: by agreement (bench)
    nothing = judge_drop(None, None, 0.0)
    assert nothing.lost == 0.0 and nothing.within
