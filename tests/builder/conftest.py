"""Fixtures the build wing's tests share (the tiny models and their export are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_multilabel_rows, write_csv


@pytest.fixture(scope="module")
def multilabel_teacher(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT fine-tuned multi-label (label sets joined by "|", thresholds tuned on its eval file)."""
    from bertdeploy.builder.train import FinetuneOptions, finetune

    folder = tmp_path_factory.mktemp("multilabel-teacher")
    train = write_csv(folder / "train.csv", make_multilabel_rows(120, seed=1))
    test = write_csv(folder / "test.csv", make_multilabel_rows(40, seed=2))
    finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=train, eval_file=test, output_dir=folder / "model",
                             label_column="labels", multi_label=True, tune_thresholds=True, epochs=4,
                             learning_rate=3e-3, max_length=32, warmup_ratio=0.0, seed=0))
    return folder / "model"

