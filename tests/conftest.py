"""Shared fixtures: a tiny random BERT with a real WordPiece tokenizer, and small data files.

The runtime install (no torch) cannot build them: with $BERTDEPLOY_TEST_ARTIFACTS set, the full suite
saves the tiny classifier's export there and a run without torch uses it (scripts/test_lean.sh); the
tests that need PyTorch itself skip there.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest


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


POSITIVE = ["好", "喜欢", "满意", "推荐", "不错", "开心", "good", "great"]
NEGATIVE = ["差", "失望", "退货", "难用", "垃圾", "生气", "bad", "awful"]
FILLER = ["这个", "手机", "书", "质量", "服务", "快递", "价格", "真的", "很", "the", "phone", "is"]


def _vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for word in POSITIVE + NEGATIVE + FILLER for c in word})
    return special + chars + [f"##{c}" for c in chars] + ["，", "！", "。"]


PREBUILT = "BERTDEPLOY_TEST_ARTIFACTS"
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT saved with save_pretrained, and its fast tokenizer."""
    torch = pytest.importorskip("torch", reason="the runtime install: no PyTorch to build models with")
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True, tokenize_chinese_chars=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)  # the same random weights every run
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_deberta(folder: Path, **config) -> Path:
    """A 2-layer, hidden-32 random DeBERTa-v2 classifier with the tiny WordPiece tokenizer, saved in `folder`;
    `config` adds to or overrides its DebertaV2Config."""
    import torch
    from transformers import BertTokenizerFast, DebertaV2Config, DebertaV2ForSequenceClassification

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128, "type_vocab_size": 0, "id2label": {0: "negative", 1: "positive"},
                "label2id": {"negative": 0, "positive": 1}, **config}
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(DebertaV2Config(vocab_size=len(tokenizer), **settings)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """An easy synthetic sentiment set: the label word decides the class."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": "".join(words) + rng.choice(["！", "。", ""]), "label": label})
    return rows


def make_multilabel_rows(n: int, seed: int = 0, separator: str = "|") -> list[dict]:
    """An easy multi-label set: a text carries `positive` if it holds a positive word, `negative` if a negative
    one; a quarter hold both and a quarter neither (an empty label cell)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [["positive"], ["negative"], ["negative", "positive"], []][i % 4]
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if y == "positive" else NEGATIVE) for y in labels]
        rng.shuffle(words)
        rows.append({"text": "".join(words) + rng.choice(["！", "。", ""]), "labels": separator.join(labels)})
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


NO_VETO = 100.0  # an accuracy bound in points that no variant can miss: the guard never refuses


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


def add_outlier_feature(model_dir: Path, out_dir: Path, scale: float = 1e4) -> Path:
    """A copy of a BERT classifier with an outlier feature: the same function in fp32, hostile to 8 bits.

    In every layer, feature 0 of the attention values is multiplied by `scale` and the attention output
    projection's weights for that feature divided by it, so PyTorch's (and the fp32 export's) logits are
    unchanged. The output projection's input then has one feature `scale` times the others: one uint8 scale
    per tensor, as INT8 activations have, rounds every other feature to zero, which deletes what attention
    adds. Only those projections (one per layer) need to stay in float to undo it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(model_dir, out_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        for layer in model.base_model.encoder.layer:
            value, output = layer.attention.self.value, layer.attention.output.dense
            value.weight[0] *= scale
            value.bias[0] *= scale
            output.weight[:, 0] /= scale
    model.save_pretrained(out_dir)
    return out_dir


def pytorch_logits(model_dir: Path, texts: list[str], pairs: list[str] | None = None,
                   max_length: int = 32):
    """Logits straight from transformers, one text at a time (no padding at all): the reference.

    Tokenized as a batch of one, as training does: transformers' single-text call drops an empty pair
    ("a", "") to "[CLS] a [SEP]", while its batch call, training and the predictor keep "[CLS] a [SEP] [SEP]"."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for i, text in enumerate(texts):
            batch = tokenizer([text], None if pairs is None else [pairs[i]], truncation=True, max_length=max_length,
                              return_tensors="pt")
            rows.append(model(**batch).logits[0].numpy())
    return rows


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
