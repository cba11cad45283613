"""Shared fixtures: a tiny random BERT with a real WordPiece tokenizer, and small data files. The tests'
plain helpers (functions and constants) are in helpers.py, never here: no test imports conftest or another test
file. The tests sit in a folder per part of the package: core/, runtime/, predict/, serve/ (the runtime wing,
which scripts/test_lean.sh runs without torch), builder/, benchmark/ and scale/; a folder's own fixtures are in
its conftest.py. The folders are no packages (no __init__.py), so every test file's name is unique in tests/.

The runtime install (no torch) cannot build them: with $BERTDEPLOY_TEST_ARTIFACTS set, the full suite
saves the tiny classifier's export there and a run without torch uses it (scripts/test_lean.sh); the
tests that need PyTorch itself skip there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import NO_VETO, make_rows, tiny_vocab, write_csv


def _cuda() -> bool:
    """ONNX Runtime has its CUDA provider and, where PyTorch is installed, PyTorch sees a GPU."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    try:
        import torch
    except ImportError:
        return True
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` skip cleanly on machines without a CUDA GPU (CI has none)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU, onnxruntime-gpu and (for PyTorch) CUDA torch")
        for item in gpu:
            item.add_marker(skip)


PREBUILT = "BERTDEPLOY_TEST_ARTIFACTS"
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT saved with save_pretrained, and its fast tokenizer."""
    torch = pytest.importorskip("torch", reason="the runtime install: no PyTorch to build models with")
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True, tokenize_chinese_chars=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)  # the same random weights every run
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_data(tmp_path) -> tuple[Path, Path]:
    return write_csv(tmp_path / "train.csv", make_rows(160, seed=1)), write_csv(tmp_path / "test.csv", make_rows(40, 2))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The tiny BERT fine-tuned until it is right on ~95% of the easy set: (model dir, train file, test file).

    Its wide margins make parity between PyTorch and each ONNX variant a meaningful check.
    """
    from bertdeploy.builder.train import FinetuneOptions, finetune

    folder = tmp_path_factory.mktemp("tiny-classifier")
    train = write_csv(folder / "train.csv", make_rows(160, seed=1))
    test = write_csv(folder / "test.csv", make_rows(40, seed=2))
    finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=train, eval_file=test, output_dir=folder / "model",
                             epochs=8, learning_rate=3e-3, max_length=32, warmup_ratio=0.0, seed=0))
    return folder / "model", train, test


@pytest.fixture(scope="session")
def tiny_artifacts(request) -> Path:
    """The tiny classifier's export: built here, or without PyTorch the one a full run saved in
    $BERTDEPLOY_TEST_ARTIFACTS."""
    if HAS_TORCH:
        return request.getfixturevalue("built_artifacts")
    saved = Path(os.environ.get(PREBUILT, "")) / "onnx"
    if not os.environ.get(PREBUILT) or not (saved / "manifest.json").is_file():
        pytest.skip(f"no PyTorch to build the test artifacts, and no ${PREBUILT} with a full run's export")
    return saved


@pytest.fixture(scope="session")
def built_artifacts(tiny_classifier, tmp_path_factory) -> Path:
    """The tiny classifier exported to fp32 and dynamic INT8: an artifact directory for the predictor.

    The accuracy bound is one no variant can miss (100 points): whether a quantizer keeps a random tiny
    model's accuracy depends on the CPU's kernels, and these fixtures are for mechanics."""
    from bertdeploy.builder.export import ExportOptions, export

    out = tmp_path_factory.mktemp("artifacts") / "onnx"
    export(ExportOptions(model_dir=tiny_classifier[0], output_dir=out, quantize=["int8"], max_accuracy_drop=NO_VETO))
    if os.environ.get(PREBUILT):  # for the runtime install's run (scripts/test_lean.sh)
        shutil.copytree(out, Path(os.environ[PREBUILT]) / "onnx", dirs_exist_ok=True)
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster in this process, on 2 CPUs, its files under a short temp dir (once per test module)."""
    import ray

    path = tempfile.mkdtemp(prefix="bd-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=path, logging_level=logging.WARNING,
             log_to_driver=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stopped_load(monkeypatch) -> list[tuple[Path, object, dict]]:
    """`Predictor.load` recording each call's (directory, options, other settings), then stopping the command
    there with a user error ('stopped at Predictor.load'): what an engine hands the predictor, without a model."""
    from bertdeploy.errors import BertdeployError
    from bertdeploy.runtime.predictor import Predictor

    calls = []

    def load(directory, *, options=None, **settings):
        calls.append((Path(directory), options, settings))
        raise BertdeployError("stopped at Predictor.load")

    monkeypatch.setattr(Predictor, "load", load)
    return calls
