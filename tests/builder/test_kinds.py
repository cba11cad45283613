"""The registry of variant kinds (builder/kinds.py): every kind has its whole recipe, `export --quantize` offers
exactly its quantized kinds, and a new kind is one entry: export builds, judges and records it with no other change."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import pytest
from helpers import NO_VETO

from bertdeploy import defaults
from bertdeploy.builder import kinds
from bertdeploy.builder.export import ExportOptions, export
from bertdeploy.builder.kinds import FP32_OV, IMPORTS, KINDS, Build, Kind, file_name, quantized
from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError


def test_every_kind_has_its_whole_recipe():
    assert list(KINDS) == [kind.name for kind in KINDS.values()]
    for kind in KINDS.values():
        assert kind.build is None or callable(kind.build)
        assert kind.backend in defaults.BACKENDS
        for per_channel in (True, False):
            settings = kind.first_settings(per_channel)
            assert settings and all(isinstance(s, dict) for s in settings)
        assert set(kind.extras) <= set(IMPORTS)
        assert kind.default_on in (None, *defaults.DEVICES)
        assert not (kind.calibrated and kind.build is None)  # calibration is a build's
    assert KINDS[FP32_OV].build is None and KINDS[FP32_OV].backend == defaults.OPENVINO
    assert len({file_name(name) for name in [*KINDS, "fp32", "O2", "O2-int8"]}) == len(KINDS) + 3
    assert file_name("fp32") == "model.onnx" and file_name("O2-int8") == "model_O2_int8.onnx"
    assert kinds.integer("int8") and kinds.integer("int8-ov") and not kinds.integer("fp16")
    assert not kinds.integer("fp32") and not kinds.integer("optimized")  # manifest kinds outside the registry


def test_export_quantize_offers_exactly_the_registry_s_quantized_kinds():
    (option,) = [p for p in cli.commands["export"].params if p.name == "quantize"]
    assert isinstance(option.type, click.Choice)
    assert list(option.type.choices) == [*quantized(), defaults.NO_QUANTIZATION]
    assert quantized() == list(defaults.QUANTIZATIONS)
    assert FP32_OV not in quantized()  # --openvino names it
    with pytest.raises(BertdeployError, match=f"unknown quantization 'int4'; use one of {', '.join(quantized())}"):
        ExportOptions("m", "o", quantize=["int4"])


def test_the_defaults_and_the_openvino_rule_come_from_the_registry(monkeypatch):
    on_gpu = ExportOptions("m", "o", device="cuda")
    assert on_gpu.quantize == [k for k in quantized() if KINDS[k].default_on == "cuda"] and not on_gpu.openvino
    monkeypatch.setattr(kinds.importlib.util, "find_spec", lambda name: None)  # no extra installed
    on_cpu = ExportOptions("m", "o")
    assert on_cpu.quantize == ["int8"] and not on_cpu.openvino and on_cpu.defaulted
    with pytest.raises(BertdeployError, match=r"OpenVINO variants \(--openvino, int8-ov\) are built and checked on "
                                              "the CPU"):
        ExportOptions("m", "o", quantize=["int8-ov"], device="cuda")
    assert [k.name for k in ExportOptions("m", "o", quantize=["fp16", "int8"], openvino=True).kinds()] == \
        [FP32_OV, "fp16", "int8"]


def _copy(build: Build, settings: dict, nodes: list[str]) -> dict:
    """A stand-in kind's builder: the graph as it is."""
    shutil.copyfile(build.graph, build.destination)
    return {"type": build.kind, "float_nodes": nodes, "source": build.source}


def test_a_new_kind_is_one_entry(tiny_classifier, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(KINDS, "copy", Kind(name="copy", build=_copy, fused_too=True))
    result = export(ExportOptions(tiny_classifier[0], tmp_path / "out", optimize="O1", quantize=["copy"],
                                  openvino=False, max_accuracy_drop=NO_VETO))
    assert [v.name for v in result.variants] == ["fp32", "O1", "copy", "O1-copy"]
    _, _, copy, fused = result.variants
    assert copy.shipped and copy.file == "model_copy.onnx" and (tmp_path / "out" / copy.file).is_file()
    assert copy.kind == "copy" and copy.backend == "onnxruntime"
    assert copy.quantization == {"type": "copy", "float_nodes": [], "source": "fp32 export (unfused)"}
    assert fused.quantization["source"] == "O1-fused graph" and fused.optimization == "O1"
    assert [a["settings"] for a in copy.attempts] == [{}]
