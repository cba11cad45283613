"""The ONNX exporter on every architecture export takes: tiny random classifiers of each, single texts and pairs,
padded batches against PyTorch, with the TorchScript and the dynamo exporter; the inputs each graph declares, the
fusions O2 makes of them, and a failing export named in one line with nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_vocab

from bertdeploy.builder.onnxexport import export_onnx
from bertdeploy.builder.optimize import optimize_graph
from bertdeploy.builder.quantize import graph_nodes
from bertdeploy.errors import ModelError
from bertdeploy.runtime.sessions import create_session

torch = pytest.importorskip("torch")

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
ARCHITECTURES = {  # config class, its settings, whether the graph takes token_type_ids
    "bert": ("BertConfig", SMALL, True),
    "roberta": ("RobertaConfig", {**SMALL, "type_vocab_size": 1}, False),  # as the published checkpoints
    "xlm-roberta": ("XLMRobertaConfig", {**SMALL, "type_vocab_size": 1}, False),
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}, False),
    "electra": ("ElectraConfig", {**SMALL, "embedding_size": 16}, True),
    "albert": ("AlbertConfig", {**SMALL, "embedding_size": 16}, True),
    "deberta-v2": ("DebertaV2Config", {**SMALL, "relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                       "position_buckets": 16, "type_vocab_size": 0, "position_biased_input": False},
                   False),
    "modernbert": ("ModernBertConfig", {**SMALL, "global_attn_every_n_layers": 2, "local_attention": 8}, False),
}
TEXTS = ["好 喜欢 满意", "差", "the phone is great good good 推荐 不错 开心 很 真的", "bad awful 失望"]
PAIRS = ["质量 很 好", "垃圾 退货 生气 难用", "is", "服务 快递 价格"]


def tiny(kind: str, folder):
    """A tiny random `kind` classifier with the tests' WordPiece tokenizer, saved in `folder`."""
    import transformers
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    config_class, settings, _ = ARCHITECTURES[kind]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), max_position_embeddings=128,
                                                 pad_token_id=tokenizer.pad_token_id, num_labels=3, **settings)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def _pytorch_and_onnx(folder, tokenizer, graph, pairs):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(TEXTS, pairs, padding=True, return_tensors="pt")
    if getattr(model.config, "type_vocab_size", 0) <= 1:  # one token type: ids of 0 only, as the graph assumes
        del batch["token_type_ids"]
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
    session = create_session(graph, "cpu")
    names = [i.name for i in session.get_inputs()]
    return names, expected, session.run(None, {name: batch[name].numpy() for name in names})[0]


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_every_architecture_exports_single_texts_and_pairs(kind, tmp_path):
    folder, tokenizer = tiny(kind, tmp_path / kind)
    graph = tmp_path / "model.onnx"
    names = export_onnx(folder, graph)
    types = ARCHITECTURES[kind][2]
    assert names == ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    for pairs in (None, PAIRS):  # padded batches: the rows differ in length
        declared, expected, got = _pytorch_and_onnx(folder, tokenizer, graph, pairs)
        assert declared == names
        assert np.abs(got - expected).max() < 1e-4, (kind, pairs is not None)


@pytest.mark.parametrize("kind", ["bert", "deberta-v2"])
def test_the_dynamo_exporter_matches_pytorch(kind, tmp_path):
    folder, tokenizer = tiny(kind, tmp_path / kind)
    graph = tmp_path / "model.onnx"
    export_onnx(folder, graph, exporter="dynamo")
    for pairs in (None, PAIRS):
        _, expected, got = _pytorch_and_onnx(folder, tokenizer, graph, pairs)
        assert np.abs(got - expected).max() < 1e-4


def test_o2_fuses_attention_in_every_layer_of_the_torchscript_graph_and_none_of_dynamos(tmp_path):
    """ONNX Runtime's optimizer fuses eager attention as the TorchScript exporter traces it: one Attention per
    layer, as Optimum's O2; it finds no attention pattern it knows in a torch.export graph (docs/export.md)."""
    folder, _ = tiny("bert", tmp_path / "bert")
    counts = {}
    for exporter in ("torchscript", "dynamo"):
        graph = tmp_path / f"{exporter}.onnx"
        export_onnx(folder, graph, exporter=exporter)
        fused = optimize_graph(graph, "O2", "cpu", tmp_path / f"{exporter}_O2.onnx", folder)
        counts[exporter] = {op: sum(o == op for _, o in graph_nodes(fused))
                            for op in ("Attention", "SkipLayerNormalization", "BiasGelu")}
    assert counts["torchscript"] == {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}
    assert counts["dynamo"]["Attention"] == 0 and counts["dynamo"]["SkipLayerNormalization"] == 4


def test_an_export_that_fails_names_the_architecture_and_leaves_nothing(tmp_path, monkeypatch):
    folder, _ = tiny("roberta", tmp_path / "roberta")

    def refuse(*args, **kwargs):
        open(args[2], "wb").close()  # a tracer that gave up after starting the file
        raise RuntimeError("Unsupported: ONNX export of operator foo\nat line 3")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    graph = tmp_path / "model.onnx"
    with pytest.raises(ModelError) as error:
        export_onnx(folder, graph)
    assert str(error.value) == (f"{folder}: RobertaForSequenceClassification cannot be exported to ONNX with the "
                                "torchscript exporter: Unsupported: ONNX export of operator foo")
    assert not graph.exists()
