"""`bertdeploy distill --static`: a student of the tiny classifier with no transformer (model2vec token vectors from
the teacher's encoder, their weighted mean, a head), its ONNX graph against PyTorch, export's variants (the INT8
table, a trimmed vocabulary), predict, a multi-label teacher, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import NO_VETO, tiny_classifier_of_kind

from bertdeploy.cli import cli

pytest.importorskip("torch", reason="the runtime install: no PyTorch to train with")
pytest.importorskip("model2vec", reason="distill --static needs the static extra")

DIMS = "8"  # the tiny teacher's hidden size is 32


def _run(*args: str):
    return CliRunner().invoke(cli, [*args])


@pytest.fixture(scope="module")
def static_student(tiny_classifier, tmp_path_factory):
    teacher, train, test = tiny_classifier
    out = tmp_path_factory.mktemp("static") / "student"
    done = _run("distill", str(teacher), "--output-dir", str(out), "--static", "--static-dims", DIMS,
                "--max-accuracy-drop", str(NO_VETO), "--json")
    assert done.exit_code == 0, done.output
    return out, json.loads(done.stdout), teacher, test


def test_the_static_student_is_recorded_with_its_vectors_origin(static_student):
    out, result, teacher, _ = static_student
    manifest = json.loads((out / "manifest.json").read_text())
    config = json.loads((out / "config.json").read_text())
    tokenizer = json.loads((teacher / "tokenizer.json").read_text())
    d = manifest["distillation"]
    assert config["model_type"] == "bertdeploy-static" and config["hidden_size"] == 8
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"])
    assert d["static"]["tool"].startswith("model2vec ") and d["static"]["dims"] == 8
    assert 0 < d["static"]["tokens"] < d["static"]["vocabulary"]  # the special tokens weigh nothing
    assert d["static"]["trimmed"] is None  # a vocabulary as small as a BERT's is kept whole
    assert d["layers_kept"] is None and result["depth"] == {"teacher": 2, "student": 0}
    assert d["parameters"]["student"] < d["parameters"]["teacher"]
    assert manifest["training"]["learning_rate"] == 1e-3 and manifest["training"]["epochs"] == 20
    assert d["eval"]["student"]["accuracy"] == pytest.approx(manifest["metrics"]["accuracy"])


def test_pytorch_and_the_graph_agree_and_special_tokens_weigh_nothing(static_student, tmp_path):
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    from bertdeploy.builder import staticmodel
    from bertdeploy.builder.pretrained import load_classifier

    out, *_ = static_student
    model = load_classifier(out).eval()
    assert isinstance(model, staticmodel.StaticForSequenceClassification)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.token_weights[tokenizer.all_special_ids].sum() == 0
    staticmodel.export_onnx(out, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    texts = ["很好", "太差了，不喜欢", "", "好好好好好好好好好好好好好好"]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    onnx_logits = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
    with torch.no_grad():
        torch_logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-5)
    # padding and the [CLS]/[SEP] around a text change nothing: a text alone equals the text in a padded batch
    alone = session.run(None, {k: v[:1, :int(batch["attention_mask"][0].sum())] for k, v in
                               {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}.items()})
    np.testing.assert_allclose(alone[0][0], onnx_logits[0], atol=1e-5)


def test_export_ships_fp32_and_an_int8_table_that_predict_serves(static_student, tmp_path):
    out, _, _, test = static_student
    exported = _run("export", str(out), "--output-dir", str(tmp_path / "onnx"), "--quantize", "int8", "--no-openvino",
                    "--max-accuracy-drop", str(NO_VETO))
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "int8"} and manifest["inputs"] == ["input_ids", "attention_mask"]
    assert manifest["variants"]["int8"]["size_bytes"] < manifest["variants"]["fp32"]["size_bytes"]
    fp32, int8 = ({i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "onnx" / v["file"])).graph
                   .initializer} for v in (manifest["variants"]["fp32"], manifest["variants"]["int8"]))
    scale = np.abs(fp32["token_vectors"]).max(axis=1) / 127  # a scale per row, folded into the token weights
    scale[scale == 0] = 1
    assert int8["token_vectors_int8"].dtype == np.int8 and "token_vectors_scale" not in int8
    np.testing.assert_allclose(int8["token_weights"], fp32["token_weights"] * scale, rtol=1e-6)
    np.testing.assert_allclose(int8["token_vectors_int8"] * scale[:, None] * fp32["token_weights"][:, None],
                               fp32["token_vectors"] * fp32["token_weights"][:, None], atol=float(scale.max()) / 2)
    predicted = _run("predict", str(tmp_path / "onnx"), str(test), "-o", str(tmp_path / "p.csv"), "--variant", "fp32")
    assert predicted.exit_code == 0, predicted.output
    student = json.loads((out / "manifest.json").read_text())
    assert f"accuracy {student['metrics']['accuracy']:.4f}" in predicted.stdout


def test_a_static_students_vocabulary_can_be_trimmed(static_student, tmp_path):
    out, *_ = static_student
    exported = _run("export", str(out), "--output-dir", str(tmp_path / "onnx"), "--quantize", "none",
                    "--no-openvino", "--trim-vocabulary", "--max-accuracy-drop", str(NO_VETO))
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["vocabulary"]["kept"] <= manifest["vocabulary"]["original"]


def test_a_multilabel_teachers_static_student_is_judged_by_micro_f1(multilabel_teacher, tmp_path):
    done = _run("distill", str(multilabel_teacher), "--output-dir", str(tmp_path / "s"), "--static", "--static-dims",
                DIMS, "--epochs", "3", "--max-accuracy-drop", str(NO_VETO), "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["metric"] == "micro_f1" and "micro_f1_drop" in result["figures"]["student"]
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    exported = _run("export", str(tmp_path / "s"), "--output-dir", str(tmp_path / "onnx"), "--quantize", "none",
                    "--no-openvino", "--max-accuracy-drop", str(NO_VETO))
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "onnx" / "manifest.json").read_text())["evaluation"]["metric"] == "micro_f1"


@pytest.mark.parametrize("args, message", [
    (["--static", "--layers", "1"], "give --layers N, --student MODEL or --static (one of them)"),
    (["--static", "--static-dims", "64"], "--static-dims 64: the teacher's vectors have 32 dimensions"),
    (["--static", "--static-dims", "1"], "--static-dims must be at least 2"),
])
def test_bad_static_options_are_one_line_and_write_nothing(tiny_classifier, tmp_path, args, message):
    teacher, *_ = tiny_classifier
    done = _run("distill", str(teacher), "--output-dir", str(tmp_path / "s"), *args)
    assert done.exit_code == 2 and message in done.output, done.output
    assert "Traceback" not in done.output and not (tmp_path / "s").exists()


def test_optimizing_a_static_student_is_refused(static_student, tmp_path):
    out, *_ = static_student
    done = _run("export", str(out), "--output-dir", str(tmp_path / "onnx"), "--optimize", "O2")
    assert done.exit_code == 2 and "static student, with no transformer layers to fuse" in done.output
    assert not (tmp_path / "onnx").exists()


def test_a_large_vocabulary_is_cut_to_the_training_texts_tokens(tiny_classifier, tmp_path, monkeypatch):
    from bertdeploy.builder import static

    teacher, _, test = tiny_classifier
    monkeypatch.setattr(static, "MAX_VOCABULARY", 20)  # the tiny vocabulary stands in for a multilingual one
    done = _run("distill", str(teacher), "--output-dir", str(tmp_path / "s"), "--static", "--static-dims", DIMS,
                "--epochs", "2", "--max-accuracy-drop", str(NO_VETO))
    assert done.exit_code == 0, done.output
    vectors = json.loads((tmp_path / "s" / "manifest.json").read_text())["distillation"]["static"]
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    vocabulary = json.loads((tmp_path / "s" / "tokenizer.json").read_text())["model"]["vocab"]
    # (the tiny vocabulary is single characters: all of them stay; test_trim.py shows what trimming drops)
    assert vectors["trimmed"]["kept"] == config["vocab_size"] == len(vocabulary) <= vectors["trimmed"]["original"]
    exported = _run("export", str(tmp_path / "s"), "--output-dir", str(tmp_path / "onnx"), "--quantize", "none",
                    "--no-openvino", "--max-accuracy-drop", str(NO_VETO))
    assert exported.exit_code == 0, exported.output
    predicted = _run("predict", str(tmp_path / "onnx"), str(test), "-o", str(tmp_path / "p.csv"))
    assert predicted.exit_code == 0, predicted.output


def test_a_static_student_below_the_bound_is_refused_with_what_to_do(tiny_classifier, tmp_path):
    from bertdeploy.builder.distill import DistillOptions, distill
    from bertdeploy.errors import BertdeployError

    teacher, *_ = tiny_classifier
    options = DistillOptions(teacher, tmp_path / "s", static=True, static_dims=8, training={"epochs": 1})
    options.max_accuracy_drop = -100.5  # past the options' check: a bound no student can hold
    with pytest.raises(BertdeployError, match=r"nothing was written\. A static student averages token vectors and "
                                              r"reads no word order .*--layers.*--max-accuracy-drop"):
        distill(options)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("what", [["--static", "--static-dims", "4"], ["--layers", "1"], ["--student", "TEACHER"]])
def test_a_static_teacher_is_refused_in_one_line(static_student, tmp_path, what):
    """A static student has no encoder for model2vec to read, nor layers to keep, nor more to teach than its teacher."""
    out, _, teacher, _ = static_student
    what = [str(teacher) if arg == "TEACHER" else arg for arg in what]
    done = _run("distill", str(out), "--output-dir", str(tmp_path / "s"), *what)
    assert done.exit_code == 2 and "Traceback" not in done.output, done.output
    assert f"a static student cannot teach: no encoder for model2vec to read, no layers to keep, and less to learn " \
        f"from than its own teacher; distill its teacher ({teacher}) instead" in done.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kind", ["bert", "xlmr", "roberta"])
def test_model2vec_reads_every_tokenizer_family(tmp_path, kind):
    """WordPiece, Unigram (SentencePiece) and byte-level BPE: every token but the special ones gets a vector."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertdeploy.builder.static import token_vectors

    folder = tiny_classifier_of_kind(tmp_path / kind, kind)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vectors, weights, origin = token_vectors(AutoModelForSequenceClassification.from_pretrained(folder), tokenizer, 8)
    special = set(tokenizer.all_special_ids)
    assert vectors.shape == (len(tokenizer), 8) and origin["tokens"] == len(tokenizer) - len(special)
    assert all(weights[i] == 0 for i in special)
    assert all(weights[i] == 1 and np.abs(vectors[i]).sum() > 0 for i in range(len(tokenizer)) if i not in special)
