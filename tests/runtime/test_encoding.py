"""Long texts are cut before they are tokenized only where the model then reads exactly the tokens of the whole
text: for each tokenizer family, on English, on Chinese without spaces, on whitespace runs past the cut."""

from __future__ import annotations

import random

import pytest

from bertdeploy.runtime.encoding import CUT_CHARS_PER_TOKEN, load_encoder, reads_before_cut

MAX_LENGTH = 16
LIMIT = MAX_LENGTH * CUT_CHARS_PER_TOKEN
WORDS = ["battery", "screen", "refund", "delivery", "excellent", "terrible", "unbelievable", "价格", "便宜", "质量",
         "很好", "太差了", "服务", "态度", "!", ",", "42"]
CORPUS = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(200)]


def _tokenizer(kind: str, path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials)
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        specials = ["<pad>", "<unk>", "<s>", "</s>"]
        trainer = trainers.UnigramTrainer(vocab_size=120, unk_token="<unk>", special_tokens=specials)
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<pad>", "<unk>", "<s>", "</s>"]
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = specials[2], specials[3]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(t, tokenizer.token_to_id(t)) for t in (cls, sep)])
    tokenizer.enable_padding(pad_id=0, pad_token=specials[0])
    tokenizer.save(str(path))
    return load_encoder(path, MAX_LENGTH)


def _texts() -> list[str]:
    rng = random.Random(0)
    english = " ".join(rng.choices(WORDS[:7], k=400))
    chinese = "".join(rng.choices(WORDS[7:14], k=400))  # no spaces: one word to a Unigram or BPE pre-tokenizer
    return [
        english, chinese, english[:LIMIT + 3], chinese + " " + english,
        "unbelievable" * 40 + " battery",  # a single word across the cut
        "refund " * 4 + "battery" * 15,  # cut, its last word is short enough for WordPiece; whole, it is [UNK]
        "refund" + " " * (LIMIT * 3) + "terrible screen " * 20,  # whitespace past the cut, the words after it
        "short text", "", english + "\n" + chinese, "a" * (LIMIT - 1),
    ]


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "bpe"])
def test_cutting_long_texts_reads_the_same_tokens_as_the_whole_text(kind, tmp_path):
    encoder = _tokenizer(kind, tmp_path / "tokenizer.json")
    texts = _texts()
    assert any(len(t) > LIMIT for t in texts)
    whole = encoder.tokenizer.encode_batch(texts)
    got = encoder.tokenize(texts)
    assert [e.ids for e in got] == [e.ids for e in whole]
    assert [e.type_ids for e in got] == [e.type_ids for e in whole]


def test_english_is_cut_and_chinese_without_spaces_is_not(tmp_path):
    encoder = _tokenizer("unigram", tmp_path / "tokenizer.json")
    english, chinese = (text[:LIMIT] for text in _texts()[:2])
    assert reads_before_cut(encoder.tokenizer.encode(english), english)  # the cheap path where it is safe...
    assert not reads_before_cut(encoder.tokenizer.encode(chinese), chinese)  # ...and only there
