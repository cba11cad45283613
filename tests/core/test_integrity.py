"""An export's files are what its manifest says: a changed file is refused (unless verification is turned off),
no path the manifest names leads out of the directory, a dead export's staging folder goes at the next one; and
checkpoints are read from safetensors only unless pickled weights are allowed."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import NO_VETO, make_rows, write_csv

from bertdeploy.artifacts import MANIFEST_NAME, sha256_file, staging_dir
from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.predictor import Predictor


@pytest.fixture
def artifacts(tiny_artifacts, tmp_path) -> Path:
    """A copy of the tiny export to tamper with."""
    return Path(shutil.copytree(tiny_artifacts, tmp_path / "onnx"))


def _model_file(directory: Path) -> Path:
    manifest = ExportManifest.read(directory)
    return directory / manifest.variants[manifest.default_variant].file


def _flip_a_byte(path: Path) -> None:
    """Change one byte of the graph's name: the ONNX file still parses, its sha256 differs."""
    data = bytearray(path.read_bytes())
    at = data.find(b"main_graph")
    assert at >= 0, "the exported graph has its usual name"
    data[at] ^= 0x20
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _swap_tokenizer(path: Path) -> None:
    """Another tokenizer.json: the same tokenizer, written differently (it still loads)."""
    path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=1), encoding="utf-8")


TAMPERINGS = {"flipped byte": (_flip_a_byte, _model_file), "truncated": (_truncate, _model_file),
              "swapped tokenizer": (_swap_tokenizer, lambda d: d / "tokenizer.json")}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_a_changed_file_is_refused_with_one_line_naming_it(case, artifacts):
    tamper, target = TAMPERINGS[case]
    path = target(artifacts)
    expected = sha256_file(path)
    tamper(path)
    with pytest.raises(BertdeployError) as refused:
        Predictor.load(artifacts)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert f"has sha256 {sha256_file(path)}, but the manifest records {expected}" in message
    assert "re-export" in message and "--no-verify" in message


def test_predict_refuses_a_changed_file_and_loads_it_with_no_verify(artifacts, tmp_path):
    _swap_tokenizer(artifacts / "tokenizer.json")
    source = write_csv(tmp_path / "in.csv", make_rows(4))
    refused = CliRunner().invoke(cli, ["predict", str(artifacts), str(source)])
    assert refused.exit_code == 2, refused.output
    assert "tokenizer.json: the tokenizer has sha256" in refused.output and "Traceback" not in refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output
    loaded = CliRunner().invoke(cli, ["predict", str(artifacts), str(source), "--no-verify"])
    assert loaded.exit_code == 0, loaded.output
    assert len(loaded.stdout.strip().splitlines()) == 5  # the header and four predictions


def test_a_flipped_byte_loads_unverified(artifacts):
    _flip_a_byte(_model_file(artifacts))
    assert Predictor.load(artifacts, verify=False).predict(["好"])[0].label in ("positive", "negative")


def test_export_records_the_tokenizer_sha256(tiny_artifacts):
    assert ExportManifest.read(tiny_artifacts).tokenizer_sha256 == sha256_file(tiny_artifacts / "tokenizer.json")


def test_an_older_manifest_without_hashes_loads_and_says_so(artifacts, caplog):
    manifest = json.loads((artifacts / MANIFEST_NAME).read_text(encoding="utf-8"))
    del manifest["tokenizer_sha256"]
    for entry in manifest["variants"].values():
        del entry["sha256"]
    (artifacts / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with caplog.at_level(logging.DEBUG, logger="bertdeploy.artifacts"):
        Predictor.load(artifacts)
    assert "the manifest records no sha256 for the tokenizer" in caplog.text


@pytest.mark.parametrize("where", ["tokenizer", "variant"])
@pytest.mark.parametrize("name", ["../outside.json", "/etc/passwd", "sub/../../outside.json"])
def test_manifest_paths_out_of_the_directory_are_refused(where, name, artifacts):
    manifest = json.loads((artifacts / MANIFEST_NAME).read_text(encoding="utf-8"))
    if where == "tokenizer":
        manifest["tokenizer"] = name
    else:
        manifest["variants"][manifest["default_variant"]]["file"] = name
    (artifacts / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BertdeployError, match="outside the artifact directory"):
        Predictor.load(artifacts, verify=False)  # checked with or without verification


def test_a_symlink_leading_out_is_refused(artifacts, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(artifacts / "tokenizer.json", outside)
    (artifacts / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BertdeployError, match="a link that leads out of the artifact directory"):
        Predictor.load(artifacts, verify=False)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_folders_of_dead_processes_go_at_the_next_write(tmp_path, caplog):
    destination = tmp_path / "onnx"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        dead = tmp_path / f".onnx.tmp-{host}-{_dead_pid()}-abc123"
        alive = tmp_path / f".onnx.tmp-{host}-{live.pid}-def456"
        other_host = tmp_path / f".onnx.tmp-{host}x-{_dead_pid()}-ghi789"
        for folder in (dead, alive, other_host):
            (folder / ".work").mkdir(parents=True)
        with caplog.at_level(logging.INFO, logger="bertdeploy.artifacts"), staging_dir(destination) as out:
            (out / "manifest.json").write_text("{}")
        assert not dead.exists() and alive.is_dir() and other_host.is_dir()
        assert dead.name in caplog.text and alive.name not in caplog.text
        assert (destination / "manifest.json").is_file()
    finally:
        live.kill()
        live.wait()


# -- safetensors only, unless pickled weights are allowed ---------------------------------------

@pytest.fixture
def pickled_classifier(tiny_classifier, tmp_path) -> Path:
    """The tiny classifier saved with pickled weights only (pytorch_model.bin)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_classifier[0], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier[0])
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # transformers 5 saves safetensors only
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_finetune_refuses_a_pickled_checkpoint_and_loads_it_with_the_flag(pickled_classifier, tiny_data, tmp_path):
    from bertdeploy.builder.pretrained import load_model

    train, test = tiny_data
    result = CliRunner().invoke(cli, ["finetune", "--model", str(pickled_classifier), "--train-file", str(train),
                                      "--eval-file", str(test), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{pickled_classifier}: its weights are pickled only" in result.output and "--allow-pickle" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    _, model = load_model(str(pickled_classifier), ["negative", "positive"], allow_pickle=True)
    assert model.config.num_labels == 2


def test_export_refuses_a_pickled_checkpoint_and_exports_it_with_the_flag(pickled_classifier, tmp_path):
    from bertdeploy.builder.export import ExportOptions, export

    out = tmp_path / "onnx"
    with pytest.raises(BertdeployError, match=rf"{pickled_classifier}: .*pickled only.*--allow-pickle"):
        export(ExportOptions(model_dir=pickled_classifier, output_dir=out, quantize=["none"]))
    result = export(ExportOptions(model_dir=pickled_classifier, output_dir=out, quantize=["none"], openvino=False,
                                  eval_samples=16, max_accuracy_drop=NO_VETO, allow_pickle=True))
    assert list(ExportManifest.read(result.output_dir).variants) == ["fp32"]


def test_bench_checks_the_variants_it_times(artifacts):
    pytest.importorskip("torch", reason="bench compares with PyTorch")
    from bertdeploy.benchmark.lineup import pick_engines
    from bertdeploy.benchmark.run import BenchOptions

    _truncate(artifacts / "model.onnx")
    manifest = ExportManifest.read(artifacts)
    with pytest.raises(BertdeployError, match="model.onnx: variant 'fp32' has sha256"):
        pick_engines(BenchOptions(artifacts), manifest)
    assert "fp32" in [e.name for e in pick_engines(BenchOptions(artifacts, verify=False), manifest)]
