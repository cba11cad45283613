"""Helpers the tests share: plain functions and constants, no fixtures (those are in the conftest.py files).

Imported as `helpers` (pyproject.toml puts tests/ on the path). The runtime folders run in an install without
PyTorch (scripts/test_lean.sh), so this module imports only the runtime at the top: torch, transformers, onnx, the
build wing and the server are imported inside the functions that use them.

- tiny data: the words of the easy sentiment set, its rows, CSV and JSONL files;
- tiny models: the WordPiece vocabulary, a DeBERTa-v2, classifiers of each tokenizer family, an outlier feature,
  PyTorch's reference logits;
- the predictor: texts of many lengths, softmax, a thread-safety check, a meta-path blocker of the training stack;
- the runtime options the commands take;
- the build wing: a quantizer broken on purpose, the PyTorch engines bench and export time, a finetune run's
  checkpoints;
- the server: an app served on a loopback port, a predictor held on an event, the port a `serve` subprocess took,
  a bounded poll, one figure from /metrics.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bertdeploy.runtime.options import RuntimeOptions

# -- tiny data ---------------------------------------------------------------------------------------------------

POSITIVE = ["好", "喜欢", "满意", "推荐", "不错", "开心", "good", "great"]
NEGATIVE = ["差", "失望", "退货", "难用", "垃圾", "生气", "bad", "awful"]
FILLER = ["这个", "手机", "书", "质量", "服务", "快递", "价格", "真的", "很", "the", "phone", "is"]


def tiny_vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for word in POSITIVE + NEGATIVE + FILLER for c in word})
    return special + chars + [f"##{c}" for c in chars] + ["，", "！", "。"]


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


# -- tiny models ------------------------------------------------------------------------------------------------

def tiny_deberta(folder: Path, **config) -> Path:
    """A 2-layer, hidden-32 random DeBERTa-v2 classifier with the tiny WordPiece tokenizer, saved in `folder`;
    `config` adds to or overrides its DebertaV2Config."""
    import torch
    from transformers import BertTokenizerFast, DebertaV2Config, DebertaV2ForSequenceClassification

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128, "type_vocab_size": 0, "id2label": {0: "negative", 1: "positive"},
                "label2id": {"negative": 0, "positive": 1}, **config}
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(DebertaV2Config(vocab_size=len(tokenizer), **settings)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# The texts `trained_tokenizer` learns from (and the vocabulary tests trim to).
KIND_CORPUS = ["这个手机真的很好用", "质量太差了，非常失望", "the phone is great", "awful service, never again",
               "物流很快，价格便宜", "good value for the price", "书的内容不错", "客服态度很差",
               "the battery lasts two days and the screen is bright", "terrible support, I want a refund",
               "shipping was fast and the packaging careful", "it broke after a week, do not buy it",
               "I love this book, the characters feel real", "works as described, nothing more, nothing less",
               "the hotel room was clean but noisy at night", "would order again from this seller"] * 4


def special_tokens(kind: str) -> dict:
    return ({"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"} if kind == "bert" else
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "cls_token": "<s>",
             "sep_token": "</s>", "mask_token": "<mask>"})


def trained_tokenizer(kind: str):
    """A small tokenizer of each family trained on KIND_CORPUS, with the post-processing of its model family."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "bert":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=list(special_tokens(kind).values()))
    elif kind == "xlmr":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>",
                                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(KIND_CORPUS, trainer)
    cls, sep = ("[CLS]", "[SEP]") if kind == "bert" else ("<s>", "</s>")
    tokenizer.post_processor = (
        processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                                      special_tokens=[(t, tokenizer.token_to_id(t)) for t in (cls, sep)])
        if kind != "roberta" else
        processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))))
    return tokenizer


def tiny_classifier_of_kind(folder: Path, kind: str) -> Path:
    """A 2-layer random classifier of `kind` (bert: WordPiece, xlmr: Unigram, roberta: byte-level BPE)."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        PreTrainedTokenizerFast,
        RobertaConfig,
        RobertaForSequenceClassification,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    backend = trained_tokenizer(kind)
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=64, **special_tokens(kind))
    config, model = {"bert": (BertConfig, BertForSequenceClassification),
                     "xlmr": (XLMRobertaConfig, XLMRobertaForSequenceClassification),
                     "roberta": (RobertaConfig, RobertaForSequenceClassification)}[kind]
    settings = dict(vocab_size=backend.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=80, num_labels=2, pad_token_id=hf.pad_token_id)
    torch.manual_seed(0)
    model(config(**settings)).save_pretrained(folder)
    hf.save_pretrained(folder)
    return folder


def tiny_albert_classifier(folder: Path) -> Path:
    """A 2-layer random ALBERT (one layer's weights shared by both) fine-tuned for an epoch on the easy set."""
    import torch
    from transformers import AlbertConfig, AlbertForSequenceClassification, BertTokenizerFast

    from bertdeploy.builder.train import FinetuneOptions, finetune

    base = folder / "albert"
    base.mkdir(parents=True)
    (base / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(base / "vocab.txt"), do_lower_case=True)
    config = AlbertConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                          pad_token_id=tokenizer.pad_token_id, num_labels=2)
    torch.manual_seed(0)
    AlbertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    train = write_csv(folder / "albert-train.csv", make_rows(80, seed=1))
    test = write_csv(folder / "albert-test.csv", make_rows(20, seed=2))
    finetune(FinetuneOptions(model=str(base), train_file=train, eval_file=test, output_dir=folder / "albert-model",
                             epochs=1, max_length=32, seed=0))
    return folder / "albert-model"


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




# -- the predictor -----------------------------------------------------------------------------------------------

def softmax(rows) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def varied_texts(n: int, seed: int) -> list[str]:
    """Texts of many lengths, from 0 tokens to well past the tiny model's max length of 32."""
    rng = random.Random(seed)
    rows = make_rows(n, seed=seed)
    return [r["text"] * rng.choice([1, 1, 2, 5, 12]) for r in rows] + ["", "！"]


def assert_thread_safe(p, texts: list[str], sizes: list[int]) -> None:
    """Calls of `sizes` texts to predictor `p` from 8 threads at once return exactly what they return one by one."""
    starts = np.cumsum([0, *sizes])
    calls = [texts[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    serial = [p.predict_proba(c) for c in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            concurrent = list(pool.map(p.predict_proba, calls))
            assert all(np.array_equal(a, b) for a, b in zip(serial, concurrent, strict=True))


# The start of a `python -c` script in which torch, transformers, Optimum and datasets cannot import.
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "transformers", "optimum", "datasets"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""


# -- the runtime options the commands take -----------------------------------------------------------------------

# Every runtime option of `predict`, none at its default, and the RuntimeOptions they make.
PREDICT_RUNTIME_ARGS = ["--variant", "fp32", "--backend", "onnxruntime", "--threads", "1", "--providers", "cpu",
                        "--allow-fallback", "--no-spinning", "--precision", "f32", "--max-batch-tokens", "64",
                        "--long-text", "chunk", "--no-verify"]
PREDICT_RUNTIME = RuntimeOptions(variant="fp32", backend="onnxruntime", threads=1, providers="cpu",
                                 allow_fallback=True, spinning=False, precision="f32", max_batch_tokens=64,
                                 long_text="chunk", verify=False)

# Every runtime option of `serve`, none at its default, and the RuntimeOptions they make.
SERVE_RUNTIME_ARGS = ["--variant", "fp32", "--backend", "onnxruntime", "--threads", "1", "--providers", "cpu",
                      "--allow-fallback", "--no-spinning", "--precision", "f32", "--max-batch-tokens", "64",
                      "--max-batch-size", "8"]
SERVE_RUNTIME = RuntimeOptions(variant="fp32", backend="onnxruntime", threads=1, providers="cpu", allow_fallback=True,
                               spinning=False, precision="f32", max_batch_tokens=64, max_batch_size=8)


# -- the build wing ----------------------------------------------------------------------------------------------

def pytorch_engines() -> list[str]:
    """The PyTorch baselines export and bench time here: fp32, and bf16 autocast where the CPU computes bf16."""
    from bertdeploy.builder.reference import computes_bf16

    return ["pytorch", "pytorch-bf16"] if computes_bf16() else ["pytorch"]


def negate_logits(path) -> None:
    """Make a graph wrong on purpose: its logits come out negated, so every argmax flips."""
    import onnx

    model = onnx.load(str(path))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == output else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node("Neg", [f"{output}_raw"], [output]))
    onnx.save(model, str(path))


def break_quantizer(monkeypatch, name: str) -> list:
    """Make `quantize.<name>` build real files with negated logits; returns the `exclude` of each call."""
    from bertdeploy.builder import quantize

    real, calls = getattr(quantize, name), []

    def broken(source, destination, *args, **kwargs):
        calls.append(kwargs.get("exclude"))
        real(source, destination, *args, **kwargs)
        negate_logits(destination)
        return destination

    monkeypatch.setattr(quantize, name, broken)
    return calls


def log_tail(process: subprocess.Popen) -> str:
    """The end of the log of a command started with its stdout a file (process.stdout set to that file)."""
    return Path(process.stdout.name).read_text()[-2000:]


def wait_for_process(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll `condition()` while `process` runs; fail (with its log) when it finishes first, or after `timeout`
    (a bound, on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"finished early with {process.returncode}: {log_tail(process)}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def checkpoint_written(state: Path) -> bool:
    """Whether a checkpoint is complete: the Trainer writes trainer_state.json last."""
    try:
        return json.loads(state.read_text()).get("global_step", 0) > 0
    except (OSError, ValueError):
        return False


# -- the server --------------------------------------------------------------------------------------------------

def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_until(condition, seconds: float = 10, message: str = "the condition did not come") -> None:
    """Poll `condition()` until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.02)


@contextlib.contextmanager
def running(predictor, wait_ready: bool = True, api_key: str | None = None, apps: list | None = None, **settings):
    """`create_app` for one model, served by `draining_server` in a thread on a free loopback port; yields its base
    URL (and appends the app to `apps`, where given)."""
    from bertdeploy.serve.httpapi import ServeOptions
    from bertdeploy.serve.models import Models

    options = ServeOptions("tiny", **settings)
    with serving(Models.single(predictor, options), wait_ready, api_key, apps) as url:
        yield url


@contextlib.contextmanager
def running_repository(root: Path, wait_ready: bool = True, api_key: str | None = None, apps: list | None = None,
                       **settings):
    """As `running`, for the model repository `root` (`settings`: ServeOptions' and RuntimeOptions' fields)."""
    from bertdeploy.runtime.options import RuntimeOptions
    from bertdeploy.serve.httpapi import ServeOptions
    from bertdeploy.serve.loader import open_repository

    runtime, rest = RuntimeOptions.split(settings)
    with serving(open_repository(ServeOptions(model_repository=root, runtime=runtime, **rest)), wait_ready, api_key,
                 apps) as url:
        yield url


@contextlib.contextmanager
def serving(models, wait_ready: bool, api_key: str | None, apps: list | None):
    import httpx

    from bertdeploy.serve.app import create_app
    from bertdeploy.serve.local import draining_server

    sock = free_socket()
    app = create_app(models, api_key)
    if apps is not None:
        apps.append(app)
    server = draining_server(app, models.options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    wait_until(lambda: server.started and (not wait_ready or httpx.get(f"{url}/v2/health/ready").status_code == 200),
               60, "the server did not start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of the directory `source` at `target` whose files are hard links where they can be (instant, no space),
    else copies."""
    def link(file: str, to: str) -> None:
        try:
            os.link(file, to)
        except OSError:  # another file system
            shutil.copy2(file, to)

    shutil.copytree(source, target, copy_function=link)
    return target


class Held:
    """The real predictor, except that its method `method` (warm_up, iter_encoded) waits for `release`
    (`entered` is set when a call arrives), or raises `error` when one is given."""

    def __init__(self, predictor, method: str, error: BaseException | None = None) -> None:
        self._predictor, self._method, self._error = predictor, method, error
        self.release, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        value = getattr(self._predictor, name)
        if name != self._method:
            return value

        def held(*args, **kwargs):
            self.entered.set()
            if self._error is not None:
                raise self._error
            assert self.release.wait(30)
            return value(*args, **kwargs)
        return held


@contextlib.contextmanager
def serve_command(*args: str):
    """`bertdeploy serve ARGS --port 0` in a process of its own, once ready: yields (process, base URL, log lines);
    killed on the way out if it still runs."""
    process = subprocess.Popen([sys.executable, "-m", "bertdeploy", "serve", *args, "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    try:
        url = f"http://127.0.0.1:{serving_port(process, log)}"
        wait_until(lambda: ready(url), 60, lambda: "".join(log))
        yield process, url, log
    finally:
        process.kill()
        process.wait()


def serving_port(process: subprocess.Popen, log: list[str], seconds: float = 60) -> int:
    """The port `serve --port 0` took, from its log (a thread collects the lines of stderr into `log`)."""
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    found = []

    def logged() -> bool:
        assert process.poll() is None, "".join(log)
        found[:] = re.findall(r"serving .* on http://127\.0\.0\.1:(\d+)", "".join(log))
        return bool(found)

    wait_until(logged, seconds, lambda: "".join(log))
    return int(found[0])


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """The sum of the samples of /metrics named `name` that carry `labels` (0 when none does), e.g.
    metric(url, "bertdeploy_dropped_texts_total", reason="deadline")."""
    import httpx

    text, total = httpx.get(f"{url}/metrics", headers=headers or {}).text, 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})?", sample)
        if found and found.group(1) == name and \
                labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or "")).items():
            total += float(value)
    return total


def ready(url: str) -> bool:
    """Whether the server at `url` answers ready (False while it does not listen yet)."""
    import httpx

    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{url}/v2/health/ready").status_code == 200
    return False
