"""Trimming a classifier's vocabulary to what its texts use: WordPiece, Unigram and BPE on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the build wing: trimming rewrites PyTorch checkpoints")

from helpers import KIND_CORPUS, tiny_classifier_of_kind, write_csv  # noqa: E402

from bertdeploy.builder.vocabulary import trim  # noqa: E402
from bertdeploy.errors import ModelError  # noqa: E402

SEEN = KIND_CORPUS[:4]
UNSEEN = ["价格便宜 value", "态度 never", "refund the battery"]  # words the trimming texts do not use


def _load(folder: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()


def _logits(tokenizer, model, texts: list[str]):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("kind, family", [("bert", "WordPiece"), ("xlmr", "Unigram"), ("roberta", "BPE")])
def test_a_trimmed_vocabulary_tokenizes_and_computes_its_texts_alike(tmp_path, kind, family):
    original = tiny_classifier_of_kind(tmp_path / "model", kind)
    result = trim(original, SEEN, None, tmp_path / "trimmed")
    assert result.family == family and result.kept < result.original and result.texts == len(SEEN)

    tokenizer, model = _load(original)
    small_tokenizer, small = _load(tmp_path / "trimmed")
    assert small.config.vocab_size == result.kept == len(small_tokenizer)
    assert small.get_input_embeddings().weight.shape[0] == result.kept
    for text in SEEN:  # the same pieces under new ids, and the same logits
        assert small_tokenizer.tokenize(text) == tokenizer.tokenize(text)
        assert (small_tokenizer.convert_ids_to_tokens(small_tokenizer(text)["input_ids"])
                == tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"]))
    torch.testing.assert_close(_logits(small_tokenizer, small, SEEN), _logits(tokenizer, model, SEEN),
                               rtol=0, atol=1e-6)
    pair = small_tokenizer(SEEN[0], SEEN[1])["input_ids"]  # special tokens renumbered in pairs too
    assert small_tokenizer.convert_ids_to_tokens(pair) == tokenizer.convert_ids_to_tokens(
        tokenizer(SEEN[0], SEEN[1])["input_ids"])

    unknown = small_tokenizer.unk_token_id
    for text in UNSEEN:  # words never given still tokenize into pieces, at worst single characters, not [UNK]
        ids = small_tokenizer(text)["input_ids"]
        assert unknown not in ids and len(ids) > 2
    assert small_tokenizer.pad_token_id == small.config.pad_token_id
    saved = json.loads((tmp_path / "trimmed" / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["model"]["type"] == family


def test_a_vocabulary_it_cannot_trim_is_refused_in_one_line(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path)
    BertForSequenceClassification(BertConfig(vocab_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="cannot trim a WordLevel vocabulary"):
        trim(tmp_path, ["good"], None, tmp_path / "trimmed")
    assert not (tmp_path / "trimmed").exists()


POSITIVE, NEGATIVE = ["great", "good", "love"], ["awful", "terrible", "broke"]
FILLERS = ["the phone", "the battery", "shipping", "the hotel room", "this book", "the seller", "the screen"]


def _rows(n: int, seed: int) -> list[dict]:
    """Sentiment carried by whole English words only, so a trim that splits them into characters loses it."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = [rng.choice(FILLERS), rng.choice(POSITIVE if positive else NEGATIVE), rng.choice(FILLERS)]
        rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
    return rows


@pytest.fixture(scope="module")
def word_classifier(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny WordPiece classifier fine-tuned on `_rows`, and its eval file."""
    from bertdeploy.builder.train import FinetuneOptions, finetune

    folder = tmp_path_factory.mktemp("words")
    train, test = write_csv(folder / "train.csv", _rows(48, 0)), write_csv(folder / "test.csv", _rows(40, 1))
    result = finetune(FinetuneOptions(model=str(tiny_classifier_of_kind(folder / "base", "bert")), train_file=train,
                                      eval_file=test, output_dir=folder / "model", epochs=8, learning_rate=3e-3,
                                      batch_size=8))
    assert result.accuracy >= 0.9
    return folder / "model", test


def _export(model: Path, out: Path, **settings):
    from bertdeploy.builder.export import ExportOptions, export

    return export(ExportOptions(model, out, quantize=[], openvino=False, trim_vocabulary=True, **settings))


def test_export_trims_to_the_training_vocabulary_and_the_predictor_reads_it_unchanged(word_classifier, tmp_path):
    from bertdeploy.builder.examples import load_examples
    from bertdeploy.manifest import ExportManifest
    from bertdeploy.runtime.predictor import Predictor

    model, test = word_classifier
    result = _export(model, tmp_path / "onnx")
    vocabulary = ExportManifest.read(tmp_path / "onnx").vocabulary
    assert vocabulary["trimmed"] and vocabulary["kept"] < vocabulary["original"] == result.vocabulary["original"]
    assert vocabulary["texts_from"].endswith("train.csv") and vocabulary["pytorch"]["kept_accuracy"]
    assert json.loads((tmp_path / "onnx" / "tokenizer.json").read_text())["model"]["vocab"].__len__() == \
        vocabulary["kept"]
    examples = load_examples(test)
    predicted = Predictor.load(tmp_path / "onnx").predict(examples.texts)
    tokenizer, untrimmed = _load(model)
    expected = [untrimmed.config.id2label[i] for i in _logits(tokenizer, untrimmed, examples.texts).argmax(-1).tolist()]
    assert [p.label for p in predicted] == expected


def test_a_trim_that_loses_accuracy_is_refused_and_nothing_is_written(word_classifier, tmp_path):
    from bertdeploy.errors import BertdeployError

    model, _ = word_classifier
    fillers = write_csv(tmp_path / "fillers.csv", [{"text": f, "label": "positive"} for f in FILLERS])
    with pytest.raises(BertdeployError, match=r"--trim-vocabulary: the model with \d+ of \d+ tokens loses"):
        _export(model, tmp_path / "onnx", trim_texts=[fillers])  # the sentiment words become characters
    assert not (tmp_path / "onnx").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fillers.csv"]


def test_bench_runs_pytorch_on_a_trimmed_exports_inputs_as_the_trimmed_model(word_classifier, tmp_path):
    # the feeds hold the trimmed tokenizer's ids; the untrimmed PyTorch model reads them through their tokens
    from bertdeploy.benchmark.run import BenchOptions, bench

    model, test = word_classifier
    _export(model, tmp_path / "onnx")
    result = bench(BenchOptions(tmp_path / "onnx", eval_file=test, batch_sizes=[2], seq_lengths=[16], runs=2,
                                warmup=1, record=False))
    reports = {r.name: r for r in result.engines}
    assert reports["fp32"].agreement == 1.0 and reports["fp32"].accuracy == reports["pytorch"].accuracy >= 0.9
