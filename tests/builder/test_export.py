"""`bertdeploy export` on the tiny fine-tuned BERT: real exports and ONNX Runtime sessions."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import (
    NO_VETO,
    add_outlier_feature,
    break_quantizer,
    make_rows,
    negate_logits,
    pytorch_logits,
    tiny_deberta,
    write_csv,
)

from bertdeploy.artifacts import MANIFEST_NAME, sha256_file
from bertdeploy.builder import quantize
from bertdeploy.builder.export import ExportOptions, ExportResult, export
from bertdeploy.builder.guard import Variant
from bertdeploy.builder.onnxexport import export_onnx
from bertdeploy.builder.reference import computes_bf16
from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.encoding import load_encoder, logits
from bertdeploy.runtime.sessions import create_session

# How close each float variant's logits must be to PyTorch's on the tiny model (logits of size ~3). What INT8
# does to a random tiny model depends on the CPU's kernels: only the real-model tests judge its accuracy.
TOLERANCE = {"fp32": 1e-4, "O2": 1e-3, "fp16": 2e-2}
QUANTIZED = ("int8", "O2-int8", "int8-static")


@pytest.fixture(scope="module")
def exported(tiny_classifier, tmp_path_factory):
    """Every variant, built once through the CLI, none refused (mechanics; the guard has tests of its own)."""
    model = tiny_classifier[0]
    out = tmp_path_factory.mktemp("export") / "onnx"
    variants = ["--optimize", "O2", "--quantize", "int8", "--quantize", "int8-static", "--quantize", "fp16",
                "--max-accuracy-drop", str(NO_VETO)]
    result = CliRunner().invoke(cli, ["export", str(model), "--output-dir", str(out), *variants, "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _written(directory: Path) -> dict:
    """The manifest as export wrote it: the JSON itself."""
    return json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))


def test_every_variant_loads_and_matches_pytorch(exported, tiny_classifier):
    out, payload = exported
    model = tiny_classifier[0]
    manifest = _written(out)
    assert set(manifest["variants"]) == {*TOLERANCE, *QUANTIZED} and not manifest["rejected"]  # int8 in both orders
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["exporter"] == {"name": "torchscript", "opset": 18}
    assert payload["default_variant"] == manifest["default_variant"]
    assert manifest["default_variant"] in manifest["variants"]
    texts = [r["text"] for r in make_rows(40, seed=2)] + ["很" * 200]  # and one text cut at max length
    reference = np.array(pytorch_logits(model, texts))
    tokenizer = load_encoder(out / "tokenizer.json", manifest["max_length"])
    for name, entry in manifest["variants"].items():
        path = out / entry["file"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["size_bytes"]
        session = create_session(path)
        axes = session.get_inputs()[0].shape
        assert isinstance(axes[0], str) and isinstance(axes[1], str), f"{name}: batch and sequence axes are dynamic"
        ours = logits(session, tokenizer, texts, max_batch_tokens=256)
        assert ours.shape == reference.shape and np.isfinite(ours).all(), name
        if name in TOLERANCE:
            assert np.abs(ours - reference).max() <= TOLERANCE[name], name
            assert np.mean(ours.argmax(-1) == reference.argmax(-1)) >= 0.95, name
            assert entry["parity"]["max_abs_diff"] <= TOLERANCE[name], name
        else:  # really quantized: integer MatMuls in the graph
            assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QuantizeLinear")
                       for n in onnx.load(str(path)).graph.node), name
        assert set(entry["eval"]) == {"accuracy", "macro_f1", "accuracy_drop"}
        assert entry["latency_ms"]["batch_1"] > 0 and entry["opset"] >= 14
    assert manifest["variants"]["O2-int8"]["quantization"]["source"] == "O2-fused graph"
    sizes = {name: entry["size_bytes"] for name, entry in manifest["variants"].items()}
    assert sizes["int8"] < sizes["fp32"] and sizes["fp16"] < sizes["fp32"]
    fp16 = onnx.load(str(out / manifest["variants"]["fp16"]["file"]))
    assert {i.type.tensor_type.elem_type for i in fp16.graph.output} == {onnx.TensorProto.FLOAT}


def test_manifest_records_the_evaluation_and_round_trips(exported, tiny_classifier):
    out, _ = exported
    manifest = _written(out)
    assert ExportManifest.read(out).to_dict() == manifest  # read and written back unchanged
    assert manifest["labels"] == ["negative", "positive"] and manifest["max_length"] == 32
    assert manifest["evaluation"]["guard"] == "accuracy" and manifest["evaluation"]["texts"] == 40
    assert manifest["evaluation"]["reference"]["accuracy"] >= 0.9
    assert manifest["variants"]["int8"]["quantization"]["per_channel"] is True
    assert manifest["variants"]["int8-static"]["quantization"]["calibration_texts"] == 160
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "tokenizer.json", *(v["file"] for v in manifest["variants"].values())])
    tokenizer = load_encoder(out / "tokenizer.json", 32)
    assert len(tokenizer.tokenize(["很" * 200])[0].ids) == 32
    copy = out.parent / "copy"
    shutil.copytree(out, copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(BertdeployError, match="schema version 99"):
        ExportManifest.read(copy)


def test_pytorch_baselines_are_scored_and_timed_beside_the_variants(exported):
    """PyTorch fp32, and under bf16 autocast where the CPU computes bf16, in export's table and manifest."""
    out, result = exported
    names = ["pytorch", "pytorch-bf16"] if computes_bf16() else ["pytorch"]
    assert list(result["pytorch"]) == names == list(_written(out)["evaluation"]["pytorch"])
    fp32 = result["pytorch"]["pytorch"]
    assert fp32["kept_accuracy"] and fp32["agreement"] == 1.0 and fp32["accuracy_drop"] == 0.0
    for figures in result["pytorch"].values():
        assert set(figures["latency_ms"]) == {"batch_1", "batch_8", "batch_32"}
        assert all(ms > 0 for ms in figures["latency_ms"].values())


def test_speed_ups_are_against_the_fastest_pytorch_that_kept_accuracy():
    def variant(name, ms):
        return Variant(name=name, file=f"{name}.onnx", kind="int8", optimization=None, quantization=None,
                       size_bytes=1, sha256="", opset=17, parity={}, eval=None, shipped=True,
                       latency_ms={"batch_1": ms, "batch_8": 8 * ms})

    pytorch = {"pytorch": {"kept_accuracy": True, "latency_ms": {"batch_1": 12.0, "batch_8": 80.0}},
               "pytorch-bf16": {"kept_accuracy": True, "latency_ms": {"batch_1": 16.0, "batch_8": 40.0}}}
    result = ExportResult(output_dir=Path("out"), default_variant="a", reference={}, guard="accuracy", eval_source=None,
                          texts=10, variants=[variant("a", 4.0), variant("b", 2.0)], pytorch=pytorch)
    assert result.speedups() == {"batch_1": ("b", 6.0, "pytorch"), "batch_8": ("b", 2.5, "pytorch-bf16")}
    pytorch["pytorch-bf16"]["kept_accuracy"] = False  # a faster PyTorch that lost accuracy is no baseline
    assert result.speedups()["batch_8"] == ("b", 5.0, "pytorch")


def test_guard_refuses_a_bad_variant_after_searching_to_the_bound(tiny_classifier, tmp_path, monkeypatch):
    model, _, _ = tiny_classifier
    calls = break_quantizer(monkeypatch, "quantize_dynamic_int8")
    result = export(ExportOptions(model, tmp_path / "out", quantize=["int8"], per_channel=False))
    int8 = next(v for v in result.variants if v.name == "int8")
    assert not int8.shipped and "points below PyTorch" in int8.reason
    ranked = int8.quantization["float_candidates"]
    assert ranked == 12  # 6 weight MatMuls in each of 2 layers (pooler and classifier are Gemm nodes)
    # as asked, per-channel, then 1, 2, 4, 8 and every ranked node kept in float: no build holds the bound
    assert [a["settings"]["per_channel"] for a in int8.attempts] == [False, True, True, True, True, True, True]
    assert [a["nodes_kept_float"] for a in int8.attempts] == [0, 0, 1, 2, 4, 8, 12]
    assert [len(c) for c in calls] == [0, 0, 1, 2, 4, 8, 12]
    assert result.default_variant == "fp32"
    manifest = _written(tmp_path / "out")
    assert "int8" not in manifest["variants"] and "file" not in manifest["rejected"]["int8"]
    rejected = manifest["rejected"]["int8"]  # with its figures and the reason
    assert rejected["eval"]["accuracy_drop"] > 1.0
    assert rejected["reason"].startswith(f"accuracy {rejected['eval']['accuracy']:.4f} is ")
    assert rejected["reason"].endswith("after 7 attempts") and len(rejected["attempts"]) == 7
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]


def test_the_search_keeps_as_few_nodes_in_float_as_hold_the_bound(tiny_classifier, tmp_path, monkeypatch):
    """A quantizer whose build misses the bound unless the 3 most sensitive nodes stay in float: 1, 2 fail,
    4 passes, then 3 passes, and the shipped file is the one built with 3."""
    model, _, _ = tiny_classifier
    ranking = quantize.rank_sensitive_nodes(_fp32_graph(model, tmp_path), _feeds(model))
    real, calls = quantize.quantize_dynamic_int8, []

    def needs_three(source, destination, *args, **kwargs):
        calls.append(list(kwargs["exclude"]))
        real(source, destination, *args, **kwargs)
        if not set(ranking[:3]) <= set(kwargs["exclude"]):
            negate_logits(destination)
        return destination

    monkeypatch.setattr(quantize, "quantize_dynamic_int8", needs_three)
    result = export(ExportOptions(model, tmp_path / "out", quantize=["int8"]))
    int8 = next(v for v in result.variants if v.name == "int8")
    assert [len(c) for c in calls] == [0, 1, 2, 4, 3]
    assert int8.shipped and int8.quantization["float_nodes"] == ranking[:3] == calls[-1]
    assert [a["passed"] for a in int8.attempts] == [False, False, False, True, True]
    shipped = tmp_path / "out" / "model_int8.onnx"
    assert _written(tmp_path / "out")["variants"]["int8"]["sha256"] == sha256_file(shipped)
    floats = {n.name for n in onnx.load(str(shipped)).graph.node if n.op_type == "MatMul"}
    assert set(ranking[:3]) <= floats and set(ranking[3:]).isdisjoint(floats)  # the rest are integer ops
    assert not list((tmp_path / "out").glob("*.passed"))
    out = CliRunner().invoke(cli, ["export", str(model), "--output-dir", str(tmp_path / "cli"), "--quantize", "int8"])
    assert out.exit_code == 0, out.output
    assert "int8: kept the 3/12 weight nodes most sensitive to quantization in float" in out.stdout
    assert "fastest against the fastest PyTorch that kept accuracy: batch 1 " in out.stdout


def test_an_outlier_feature_ranks_first(tiny_classifier, tmp_path):
    """The attention output projections that carry the outlier are the most sensitive nodes (numpy, any CPU)."""
    outlier = add_outlier_feature(tiny_classifier[0], tmp_path / "outlier")
    graph = _fp32_graph(outlier, tmp_path)
    ranking = quantize.rank_sensitive_nodes(graph, _feeds(outlier))
    assert {name.split("/")[-3:-1] == ["output", "dense"] and "attention" in name for name in ranking[:2]} == {True}
    assert len(ranking) == 12 and len(set(ranking)) == 12


@pytest.mark.parametrize("variant", ["int8", "O2-int8", "int8-static"])
def test_int8_embedding_tables_keep_a_scale_per_row(exported, variant):
    """Each table is stored in int8 with its own scale per token (not one scale for the whole table), and reads back
    within half a step of every row's fp32 values."""
    out, payload = exported
    manifest = _written(out)

    def initializers(file):
        return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out / file)).graph.initializer}

    fp32, quantized = initializers(manifest["variants"]["fp32"]["file"]), initializers(
        manifest["variants"][variant]["file"])
    tables = [name for name, value in fp32.items() if "embeddings" in name and value.ndim == 2]
    assert any("word_embeddings" in name for name in tables)
    for name in tables:
        values, scale = quantized[f"{name}_int8"], quantized[f"{name}_scale"]
        assert values.dtype == np.int8 and values.shape == fp32[name].shape and scale.shape == (len(values), 1)
        assert len(np.unique(scale)) > 1
        assert np.all(np.abs(values * scale - fp32[name]) <= scale / 2 + 1e-7)


def _fp32_graph(model_dir, tmp_path):
    graph = tmp_path / f"graph-{model_dir.name}.onnx"
    export_onnx(model_dir, graph)
    return graph


def _feeds(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [dict(tokenizer(row["text"], return_tensors="np")) for row in make_rows(16, seed=5)]


def test_a_quantizer_that_crashes_refuses_its_variant_only(tiny_classifier, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("Unable to find data type for weight_name='x'\nmore detail")

    monkeypatch.setattr(quantize, "quantize_dynamic_int8", crash)
    result = export(ExportOptions(tiny_classifier[0], tmp_path / "out", quantize=["int8", "fp16"],
                                  max_accuracy_drop=NO_VETO))
    int8 = next(v for v in result.variants if v.name == "int8")
    assert not int8.shipped and len(int8.attempts) == 1  # no search: keeping nodes in float cannot fix a crash
    assert int8.reason == "the quantizer failed: Unable to find data type for weight_name='x', after 1 attempt"
    assert {v.name for v in result.variants if v.shipped} == {"fp32", "fp16"}
    assert _written(tmp_path / "out")["rejected"]["int8"]["parity"]["label_agreement"] is None
    from bertdeploy import render

    row = next(line for line in render.export(result).splitlines() if line.startswith("int8 "))
    assert row.split()[-1] == "REFUSED"


def test_fp32_disagreeing_with_pytorch_fails_loudly_and_writes_nothing(tiny_classifier, tmp_path, monkeypatch):
    from bertdeploy.builder import export as export_module

    model, _, _ = tiny_classifier
    real = export_module.reference_logits
    monkeypatch.setattr(export_module, "reference_logits", lambda *a, **k: real(*a, **k) + 0.5)
    with pytest.raises(BertdeployError, match="disagrees with PyTorch"):
        export(ExportOptions(model, tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tiny_classifier, tmp_path, monkeypatch):
    from bertdeploy.builder import export as export_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "time_and_pick", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(ExportOptions(tiny_classifier[0], tmp_path / "out", quantize=["int8"]))
    assert list(tmp_path.iterdir()) == []


def test_without_labelled_data_variants_are_judged_by_agreement(tiny_classifier, tmp_path):
    model = tmp_path / "plain"
    shutil.copytree(tiny_classifier[0], model)
    (model / "manifest.json").unlink()  # a model fine-tuned elsewhere: no training data to score on
    result = export(ExportOptions(model, tmp_path / "out", quantize=["int8"], max_accuracy_drop=NO_VETO))
    assert result.guard == "agreement" and result.reference["accuracy"] is None
    assert result.eval_source == "built-in sample texts"
    assert all(v.shipped and v.eval is None and 0 <= v.parity["label_agreement"] <= 1 for v in result.variants)
    assert next(v for v in result.variants if v.name == "fp32").parity["label_agreement"] == 1.0


def test_without_labelled_data_the_guard_refuses_by_agreement(tiny_classifier, tmp_path, monkeypatch):
    model = tmp_path / "plain"
    shutil.copytree(tiny_classifier[0], model)
    (model / "manifest.json").unlink()
    break_quantizer(monkeypatch, "quantize_dynamic_int8")
    result = export(ExportOptions(model, tmp_path / "out", quantize=["int8"]))
    refused = next(v for v in result.variants if v.name == "int8")
    assert not refused.shipped and "disagrees with PyTorch on" in refused.reason
    assert "(allowed: 1 points)" in refused.reason
    rejected = _written(tmp_path / "out")["rejected"]["int8"]
    assert rejected["parity"]["label_agreement"] < 0.99 and rejected["reason"] == refused.reason


def test_the_bound_decides(tiny_classifier, tmp_path, monkeypatch):
    """The same broken variant: refused at the default bound (above), shipped at a bound it cannot miss."""
    break_quantizer(monkeypatch, "quantize_dynamic_int8")
    result = export(ExportOptions(tiny_classifier[0], tmp_path / "out", quantize=["int8"], max_accuracy_drop=NO_VETO))
    int8 = next(v for v in result.variants if v.name == "int8")
    assert int8.shipped and len(int8.attempts) == 1 and int8.eval["accuracy_drop"] > 1.0


def _bad_exports(tmp_path, tiny_model_dir, tiny_classifier) -> dict[str, tuple[list[str], str]]:
    model = str(tiny_classifier[0])
    (tmp_path / "empty").mkdir()
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(model, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    no_labels = tmp_path / "no-labels"
    shutil.copytree(model, no_labels)
    (no_labels / "manifest.json").unlink()
    config = json.loads((no_labels / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (no_labels / "config.json").write_text(json.dumps(config))
    no_data = tmp_path / "no-data"
    shutil.copytree(model, no_data)
    (no_data / "manifest.json").unlink()
    write_csv(tmp_path / "unseen.csv", [{"text": "好", "label": "positive"}, {"text": "差", "label": "neutral"}])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    return {
        "no such directory": (["nope"], "nope: no such directory"),
        "not a model directory": ([str(tmp_path / "empty")], "not a model directory (no config.json)"),
        "no tokenizer": ([str(no_tokenizer)], "no tokenizer.json"),
        "not a classifier": ([str(tiny_model_dir)], "not a text classifier (architectures: BertForMaskedLM)"),
        "no labels": ([str(no_labels)], "no labels"),
        "O4 on CPU": ([model, "--optimize", "O4"], "O4 makes an fp16 graph"),
        "unknown preset": ([model, "--quant-preset", "sse4"], "Invalid value for '--quant-preset'"),
        "unknown eval label": ([model, "--eval-file", str(tmp_path / "unseen.csv")],
                               "label 'neutral' on line 3 is unknown to the model"),
        "no calibration texts": ([str(no_data), "--quantize", "int8-static"], "pass --calibration-file"),
        "CUDA missing": ([model, "--device", "cuda"], "CUDAExecutionProvider is not in this ONNX Runtime"),
        "output not empty": ([model, "--output-dir", str(tmp_path / "full")], "not empty; pass --overwrite"),
    }


@pytest.mark.parametrize("case", ["no such directory", "not a model directory", "no tokenizer", "not a classifier",
                                  "no labels", "O4 on CPU", "unknown preset", "unknown eval label",
                                  "no calibration texts", "CUDA missing", "output not empty"])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, tiny_model_dir, tiny_classifier,
                                                        monkeypatch):
    import onnxruntime

    if case == "CUDA missing" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    args, message = _bad_exports(tmp_path, tiny_model_dir, tiny_classifier)[case]
    if "--output-dir" not in args:
        args = [*args, "--output-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, ["export", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and (case != "output not empty" or
                                                 [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging directory left behind"


def test_scores_on_the_validation_split_the_training_run_held_out(tiny_model_dir, tiny_data, tmp_path):
    from bertdeploy.builder.train import FinetuneOptions, finetune

    train, _ = tiny_data
    trained = finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=train, output_dir=tmp_path / "m",
                                       val_split=0.2, epochs=1, max_length=32))
    result = export(ExportOptions(tmp_path / "m", tmp_path / "out", quantize=["none"]))
    assert [v.name for v in result.variants] == ["fp32"]
    assert "validation split" in result.eval_source and result.texts == trained.eval_samples == 32
    assert result.reference["accuracy"] == pytest.approx(trained.accuracy)


@pytest.mark.gpu
def test_cuda_export_with_o4_and_fp16(tiny_classifier, tmp_path):
    result = export(ExportOptions(tiny_classifier[0], tmp_path / "out", optimize="O4", quantize=["fp16", "int8"],
                                  device="cuda"))
    shipped = {v.name: v for v in result.variants if v.shipped}
    assert {"fp32", "O4", "fp16"} <= set(shipped) and all(v.parity["label_agreement"] >= 0.95 for v in shipped.values())
    assert not result.default_variant.endswith("int8")  # INT8 is never the default on CUDA
    assert create_session(tmp_path / "out" / shipped["O4"].file, "cuda").get_providers()[0] == "CUDAExecutionProvider"


def test_export_reports_what_the_graph_optimizer_fused(exported):
    out, payload = exported
    variants = _written(out)["variants"]
    assert variants["fp32"]["fused"] == {"attention": 0, "skip_layer_norm": 0, "embed_layer_norm": 0, "gelu": 0}
    assert variants["O2"]["fused"]["attention"] == 2 and variants["O2"]["fused"]["skip_layer_norm"] >= 2  # 2 layers
    assert variants["O2-int8"]["fused"]["attention"] == 2  # quantized from the fused graph
    assert {v["name"]: v["fused"] for v in payload["variants"]}["O2"] == variants["O2"]["fused"]  # --json too


def test_an_architecture_without_attention_fusion_is_named(tmp_path, caplog):
    """ONNX Runtime has no attention fusion for DeBERTa-v2: export says so, and what to try instead."""
    model = tiny_deberta(tmp_path / "deberta")
    result = export(ExportOptions(model, tmp_path / "onnx", optimize="O2", max_accuracy_drop=NO_VETO))
    optimized = next(v for v in result.variants if v.name == "O2")
    assert optimized.shipped and optimized.fused["attention"] == 0 and optimized.fused["skip_layer_norm"] > 0
    assert "O2: ONNX Runtime fused no attention in this architecture" in caplog.text
    assert "--openvino" in caplog.text
    if "int8-ov" not in [v.name for v in result.variants] and importlib.util.find_spec("nncf"):
        assert "not building int8-ov, which nobody named" in caplog.text  # no training texts to calibrate on
    from bertdeploy import render

    fused_line = next(line for line in render.export(result).splitlines() if line.startswith("O2: fused"))
    assert "skip-layer-norm" in fused_line and "attention" not in fused_line


def test_a_plain_export_builds_what_is_worth_shipping_here(tiny_classifier, tmp_path):
    """ONNX Runtime INT8 everywhere (the portable default); the OpenVINO variants where OpenVINO and NNCF are
    installed; a variant the guard refuses is listed as such, not missing."""
    done = CliRunner().invoke(cli, ["export", str(tiny_classifier[0]), "--output-dir", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    manifest = _written(tmp_path / "out")
    expected = {"fp32", "int8"}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        expected |= {"fp32-ov", "int8-ov"}
    assert set(manifest["variants"]) | set(manifest["rejected"]) == expected
    named = export(ExportOptions(tiny_classifier[0], tmp_path / "named", quantize=["int8"], max_accuracy_drop=NO_VETO))
    assert [v.name for v in named.variants] == ["fp32", "int8"]  # naming the variants builds exactly those
    on_gpu = ExportOptions("m", "o", device="cuda")
    assert on_gpu.quantize == ["fp16"] and not on_gpu.openvino  # INT8 and OpenVINO do not pay on CUDA
