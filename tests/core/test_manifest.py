"""The manifest is one typed contract: read and checked once (each error names the file and the field), written back
as it was read, and described field for field by docs/artifacts.md; a manifest an earlier release wrote still
loads, and fields a later release adds are kept."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from helpers import varied_texts

from bertdeploy.artifacts import MANIFEST_NAME
from bertdeploy.errors import BertdeployError
from bertdeploy.manifest import (
    TOKENS,
    AutoRoute,
    AutoSection,
    DataFile,
    Evaluation,
    Exporter,
    ExportManifest,
    ModelManifest,
    TrainingData,
    ValSplit,
    VariantEntry,
    read_manifest,
)
from bertdeploy.runtime.predictor import Predictor

DOC = Path(__file__).resolve().parents[2] / "docs" / "artifacts.md"
HEADER = ("schema_version", "kind", "bertdeploy_version", "created")


def _variant(**more) -> dict:
    return {"file": "model.onnx", "kind": "fp32", "optimization": None, "quantization": None, "size_bytes": 1000,
            "sha256": "0" * 64, "opset": 14, "parity": {"texts": 40, "max_abs_diff": 1e-6, "label_agreement": 1.0},
            "eval": {"accuracy": 0.9, "macro_f1": 0.9, "accuracy_drop": 0.0}, "reason": None, "attempts": [],
            "latency_ms": {"batch_1": 2.0, "batch_8": 9.0}, **more}


# What the first release's export wrote: no OpenVINO (no `backend`, `precision`), no `exporter`, no tokenizer hash,
# no multi-label fields, no `evaluation.metric` or `pytorch`, no `auto`.
FIRST_RELEASE = {
    "schema_version": 1, "kind": "onnx", "bertdeploy_version": "0.1.0", "created": "2026-11-25T01:48:12+00:00",
    "source_model": "/models/reviews", "source_checkpoint": "bert-base-chinese", "task": "text-classification",
    "problem_type": "single_label_classification", "labels": ["negative", "positive"], "max_length": 128,
    "inputs": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["logits"], "tokenizer": "tokenizer.json",
    "text_column": "review", "text_pair_column": None, "label_column": "label", "device": "cpu",
    "default_variant": "int8",
    "evaluation": {"source": "test.csv", "texts": 40, "guard": "accuracy", "max_accuracy_drop": 0.5,
                   "reference": {"framework": "pytorch", "accuracy": 0.9, "macro_f1": 0.9}},
    "variants": {"fp32": _variant(), "int8": _variant(file="model_int8.onnx", kind="int8")},
    "rejected": {"fp16": {k: v for k, v in _variant(kind="fp16", reason="lost 3 points").items()
                          if k not in ("file", "sha256")}},
}


def _write(directory: Path, manifest: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def _written(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))


def _tables(text: str) -> list[list[list[str]]]:
    """Each `| field | meaning |` table, in order: per row, the backticked names in its first column."""
    tables = []
    for block in re.findall(r"\| field \| meaning \|\n\|---\|---\|\n((?:\|.*\n)+)", text):
        tables.append([re.findall(r"`([^`]+)`", row.split("|")[1]) for row in block.splitlines()])
    return tables


def _fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"extra"}


def _row(text: str, field: str) -> set[str]:
    """The backticked names in the row of `field`."""
    row = next(line for line in text.splitlines() if line.startswith(f"| `{field}` |"))
    return set(re.findall(r"`([^`]+)`", row))


def test_the_docs_name_every_field_of_the_dataclasses_and_no_other():
    text = DOC.read_text(encoding="utf-8")
    header, model, export, evaluation, variant, auto = ({n for row in t for n in row} for t in _tables(text))
    assert header == set(HEADER)
    for manifest in (ModelManifest, ExportManifest):  # every manifest starts with the header
        assert tuple(f.name for f in fields(manifest))[:len(HEADER)] == HEADER
    assert model == _fields(ModelManifest) - header
    assert export == _fields(ExportManifest) - header
    assert evaluation == _fields(Evaluation)
    assert variant == _fields(VariantEntry)
    assert auto == _fields(AutoSection)
    # the sections a row spells out inline
    assert _fields(TrainingData) | _fields(DataFile) | _fields(ValSplit) <= _row(text, "data")
    assert _fields(Exporter) <= _row(text, "exporter")
    assert _fields(AutoRoute) <= _row(text, "routes")


def test_a_manifest_of_the_first_release_loads(tmp_path):
    manifest = ExportManifest.read(_write(tmp_path / "old", FIRST_RELEASE))
    assert {e.backend for e in manifest.variants.values()} == {"onnxruntime"}  # before OpenVINO: ONNX Runtime
    assert manifest.variants["int8"].precision is None and manifest.rejected["fp16"].file is None
    assert manifest.on("onnxruntime") == ["fp32", "int8"] and manifest.on("openvino") == []
    assert manifest.max_accuracy_drop == 0.5 and manifest.evaluation.metric is None
    assert manifest.exporter is None and manifest.auto is None and manifest.tokenizer_sha256 is None
    assert manifest.columns.text_column == "review" and manifest.label_columns is None and not manifest.pairs
    assert not manifest.scheme.multi_label and manifest.scheme.labels == ("negative", "positive")
    assert manifest.files(tmp_path / "old")[0].sha256 is None  # not checked, as before
    # written back, it keeps every value it had; the fields it lacked are written as their defaults
    written = manifest.to_dict()
    sections = ("variants", "rejected")
    assert {k: written[k] for k in FIRST_RELEASE if k not in sections} == \
        {k: v for k, v in FIRST_RELEASE.items() if k not in sections}
    for section in sections:
        for name, entry in FIRST_RELEASE[section].items():
            assert written[section][name] == {**entry, "backend": "onnxruntime", "precision": None, "fused": None}
    assert "file" not in written["rejected"]["fp16"] and "exporter" not in written
    assert ExportManifest.read(_write(tmp_path / "again", written)) == manifest


def test_an_auto_section_in_texts_counts_each_as_a_text_of_the_max_length(tmp_path):
    older = {"measured_by": "bench", "threads": 2, "inputs": "128 tokens", "p50_ms": {"fp32": {"1": 2.0, "8": 9.0}},
             "eligible": ["fp32"], "routes": [{"max_batch_size": None, "variant": "fp32", "backend": "onnxruntime"}]}
    manifest = ExportManifest.read(_write(tmp_path, {**FIRST_RELEASE, "auto": older}))
    assert manifest.auto.unit is None and manifest.auto.timings(manifest.max_length) == {"fp32": {128: 2.0, 1024: 9.0}}
    assert manifest.auto.routes == (AutoRoute(max_tokens=None, variant="fp32"),)


def test_an_older_model_directory_loads(tmp_path):
    older = {"schema_version": 1, "kind": "model", "bertdeploy_version": "0.1.0",
             "created": "2026-11-25T01:00:00+00:00", "source_model": "bert-base-chinese", "task": "text-classification",
             "problem_type": "single_label_classification", "labels": ["negative", "positive"], "max_length": 128,
             "text_column": None, "text_pair_column": None, "label_column": None,
             "data": {"train_file": {"path": "/data/train.csv", "sha256": "1" * 64, "rows": 160},
                      "val_split": {"fraction": 0.1, "seed": 42}, "train_rows": 144, "eval_rows": 16},
             "training": {"epochs": 3, "drop_empty": True}, "metrics": {"best_epoch": 3, "accuracy": 0.9}}
    manifest = ModelManifest.read(_write(tmp_path, older))
    assert (manifest.text_column, manifest.label_column) == ("text", "label")  # the defaults, applied here once
    assert manifest.data.val_split == ValSplit(fraction=0.1, seed=42) and manifest.data.eval_file is None
    assert manifest.data.eval_source == DataFile(path="/data/train.csv", sha256="1" * 64, rows=160)
    assert manifest.drop_empty and not manifest.tune_thresholds and manifest.teacher_dir is None
    assert read_manifest(tmp_path) == manifest


def test_fields_a_later_release_adds_are_kept_and_written_back(tmp_path):
    later = copy.deepcopy(FIRST_RELEASE)
    later["calibration"] = {"texts": 300}
    later["variants"]["int8"]["energy_mj"] = 1.5
    later["evaluation"]["seeds"] = [0, 1]
    manifest = ExportManifest.read(_write(tmp_path, later))
    assert manifest.extra == {"calibration": {"texts": 300}} and manifest.variants["int8"].extra == {"energy_mj": 1.5}
    auto = AutoSection(measured_by="bench", unit=TOKENS, p50_ms={"int8": {"32": 1.0}}, eligible=["int8"],
                       routes=[AutoRoute(max_tokens=None, variant="int8")])
    replace(manifest, auto=auto).write(tmp_path)  # as bench records its ranges
    written = _written(tmp_path)
    assert written["calibration"] == {"texts": 300} and written["variants"]["int8"]["energy_mj"] == 1.5
    assert "seeds" not in written["evaluation"]  # inside the other sections: left out
    assert written["auto"]["routes"] == [{"max_tokens": None, "variant": "int8", "backend": "onnxruntime"}]
    assert list(written)[-2:] == ["auto", "calibration"]


def _break(manifest: dict, path: str, value=None, delete: bool = False) -> dict:
    broken = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return broken


@pytest.mark.parametrize(("path", "value", "delete", "message"), [
    ("max_length", None, True, "no 'max_length'; re-export the model"),
    ("variants.int8.kind", None, True, "no 'variants.int8.kind'"),
    ("variants", ["fp32"], False, "variants is ['fp32'], not an object"),
    ("variants.int8", "model_int8.onnx", False, "variants.int8 is 'model_int8.onnx', not an object"),
    ("labels", [], False, "labels is [], not a non-empty list of names"),
    ("max_length", "128", False, "max_length is '128', not a whole number"),
    ("evaluation", 0.5, False, "evaluation is 0.5, not an object"),
    ("variants.int8.file", "../model.onnx", False, "variant 'int8' is '../model.onnx', outside the artifact"),
    ("schema_version", 2, False, "schema version 2, but this bertdeploy"),
    ("kind", "model", False, "this is a 'model' directory, expected 'onnx'"),
])
def test_a_bad_manifest_is_refused_naming_the_file_and_the_field(tmp_path, path, value, delete, message):
    directory = _write(tmp_path / "bad", _break(FIRST_RELEASE, path, value, delete))
    with pytest.raises(BertdeployError) as refused:
        ExportManifest.read(directory)
    assert str(refused.value).startswith(str(directory)) and message in str(refused.value), str(refused.value)


def test_other_bad_manifests_are_refused(tmp_path):
    multi = {**FIRST_RELEASE, "problem_type": "multi_label_classification", "thresholds": {"negative": 0.5}}
    with pytest.raises(BertdeployError, match="thresholds name"):
        ExportManifest.read(_write(tmp_path / "thresholds", multi))
    with pytest.raises(BertdeployError, match="no 'labels'; re-run the fine-tuning"):
        ModelManifest.read(_write(tmp_path / "model", {"schema_version": 1, "kind": "model", "max_length": 8}))
    with pytest.raises(BertdeployError, match="this is a 'tflite' directory, expected 'model' or 'onnx'"):
        read_manifest(_write(tmp_path / "kind", {**FIRST_RELEASE, "kind": "tflite"}))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / MANIFEST_NAME).write_text("[]")
    with pytest.raises(BertdeployError, match="not a manifest"):
        ExportManifest.read(tmp_path / "list")
    with pytest.raises(BertdeployError, match="no manifest.json"):
        ExportManifest.read(tmp_path)


def _as_the_first_release_wrote(manifest: dict) -> dict:
    """An export's manifest without the fields later releases added; its auto section counted in texts."""
    older = {k: v for k, v in manifest.items()
             if k not in ("tokenizer_sha256", "exporter", "label_columns", "thresholds", "label_separator")}
    older["evaluation"] = {k: v for k, v in manifest["evaluation"].items() if k not in ("metric", "pytorch")}
    for section in ("variants", "rejected"):
        older[section] = {name: {k: v for k, v in entry.items() if k not in ("backend", "precision", "fused")}
                          for name, entry in manifest[section].items()}
    if "auto" in manifest:
        auto = {k: v for k, v in manifest["auto"].items() if k != "unit"}
        auto["p50_ms"] = {name: {"1": table[min(table, key=int)]} for name, table in auto["p50_ms"].items()}
        older["auto"] = auto
    return older


def test_the_predictor_loads_an_export_as_the_first_release_wrote_it(tiny_artifacts, tmp_path):
    older = Path(shutil.copytree(tiny_artifacts, tmp_path / "older"))
    _write(older, _as_the_first_release_wrote(_written(tiny_artifacts)))
    texts = varied_texts(20, seed=36)
    for variant in ExportManifest.read(older).variants:
        expected = Predictor.load(tiny_artifacts, variant=variant, threads=1).predict_proba(texts)
        assert np.array_equal(Predictor.load(older, variant=variant, threads=1).predict_proba(texts), expected)
    routed = Predictor.load(older, threads=1)  # auto, by timings in texts
    assert {r.model.backend for r in routed.routes} == {"onnxruntime"} and len(routed.predict(texts)) == len(texts)
