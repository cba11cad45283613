"""The `bertdeploy` command through Click's CliRunner: results on stdout, clean errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import make_rows, write_csv, write_jsonl

from bertdeploy.cli import cli


def _run(args: list[str]):
    return CliRunner().invoke(cli, args)


def test_finetune_prints_a_table_and_json(tiny_model_dir, tiny_data, tmp_path):
    train, test = tiny_data
    args = ["finetune", "--model", str(tiny_model_dir), "--train-file", str(train), "--eval-file", str(test),
            "--epochs", "2", "--learning-rate", "3e-3", "--batch-size", "8"]
    result = _run([*args, "--output-dir", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.stdout and "<- best" in result.stdout and f"saved {tmp_path / 'a'}" in result.stdout
    assert "{'loss'" not in result.stdout  # the Trainer's log lines go to stderr

    result = _run([*args, "--output-dir", str(tmp_path / "b"), "--labels", "positive,negative", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["labels"] == ["positive", "negative"] and len(payload["epochs"]) == 2


def _bad_inputs(tmp_path, tiny_model_dir) -> dict[str, tuple[list[str], str]]:
    good = write_csv(tmp_path / "good.csv", make_rows(20))
    rows = make_rows(20)
    rows[3]["text"] = ""
    write_csv(tmp_path / "blank.csv", rows)
    (tmp_path / "empty.csv").write_text("")
    write_csv(tmp_path / "other.csv", [{"review": "x", "label": "a"}])
    write_csv(tmp_path / "one.csv", [{"text": f"t{i}", "label": "pos"} for i in range(5)])
    write_csv(tmp_path / "unseen.csv", [{"text": "x", "label": "neutral"}])
    (tmp_path / "gbk.csv").write_bytes(b"text,label\n" + "很好,pos\n".encode("gbk"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n', encoding="utf-8")
    write_jsonl(tmp_path / "ok.jsonl", make_rows(4))
    (tmp_path / "not-a-model").mkdir()
    return {
        "missing file": (["--train-file", "nope.csv"], "nope.csv: no such file"),
        "empty file": (["--train-file", "empty.csv"], "empty.csv: the file is empty"),
        "missing column": (["--train-file", "other.csv"], "no column 'text'; the columns found are 'review', 'label'"),
        "empty text": (["--train-file", "blank.csv"], "on line 5; fix them or pass --drop-empty"),
        "single class": (["--train-file", "one.csv"], "a classifier needs at least two classes"),
        "unseen eval label": (["--train-file", str(good), "--eval-file", "unseen.csv"],
                              "label 'neutral' on line 2 is unknown to the model"),
        "invalid utf-8": (["--train-file", "gbk.csv"], "gbk.csv line 2: not valid UTF-8"),
        "malformed jsonl": (["--train-file", "bad.jsonl"], "bad.jsonl line 2: malformed JSON"),
        "not a model": (["--train-file", str(good), "--model", "not-a-model"], "not a model directory"),
        "both eval options": (["--train-file", str(good), "--eval-file", "ok.jsonl", "--val-split", "0.2"],
                              "either an eval file or a validation split"),
        "bad label list": (["--train-file", str(good), "--labels", "positive,positive"],
                           "each label must be named once"),
    }


CASES = ["missing file", "empty file", "missing column", "empty text", "single class", "unseen eval label",
         "invalid utf-8", "malformed jsonl", "not a model", "both eval options", "bad label list"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, message = _bad_inputs(tmp_path, tiny_model_dir)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    full = ["finetune", "--model", str(tiny_model_dir), "--output-dir", "out", *args]
    if "--model" in args:
        full = ["finetune", "--output-dir", "out", *args]
    result = _run(full)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_drop_empty_skips_the_bad_rows(tiny_model_dir, tmp_path):
    rows = make_rows(40)
    rows[0]["text"] = " "
    train = write_csv(tmp_path / "blank.csv", rows)
    result = _run(["finetune", "--model", str(tiny_model_dir), "--train-file", str(train), "--output-dir",
                   str(tmp_path / "m"), "--epochs", "1", "--drop-empty", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["train_samples"] + payload["eval_samples"] == 39


def test_version_and_module_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bertdeploy", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("bertdeploy, version ")


def test_the_cli_starts_without_numpy_a_runtime_or_the_training_stack():
    """Its choices and defaults come from defaults.py, its tables from render.py; each command loads the rest."""
    import subprocess
    import sys

    heavy = ["numpy", "tokenizers", "onnxruntime", "openvino", "torch", "transformers", "optimum", "onnx", "datasets"]
    code = f"import sys, bertdeploy.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


TRAINING_BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "transformers", "optimum", "datasets", "accelerate", "onnx"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
from bertdeploy.cli import main
sys.argv = ["bertdeploy", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize(("args", "command"), [
    (["finetune", "--model", "m", "--train-file", "{train}", "--output-dir", "out"], "finetune"),
    (["export", "{artifacts}", "--output-dir", "out"], "export"),
    (["bench", "{artifacts}"], "bench"),
])
def test_without_the_training_stack_the_build_commands_name_the_extra(args, command, tiny_artifacts, tiny_data,
                                                                       tmp_path):
    """What the runtime install (`pip install .`) gives: one line naming the extra, exit 2, no files."""
    import subprocess
    import sys

    values = {"train": str(tiny_data[0]), "artifacts": str(tiny_artifacts)}
    done = subprocess.run([sys.executable, "-c", TRAINING_BLOCKED, *[a.format(**values) for a in args]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"Error: {command} needs the training stack (PyTorch, transformers, ONNX): "
                                   "install bertdeploy's 'train' extra (pip install '.[train]' in its checkout)")
    assert not (tmp_path / "out").exists()
    helped = subprocess.run([sys.executable, "-c", TRAINING_BLOCKED, args[0], "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "Usage: bertdeploy" in helped.stdout
    if command == "bench":  # the runtime commands still run
        predicted = subprocess.run([sys.executable, "-c", TRAINING_BLOCKED, "predict", str(tiny_artifacts), "-"],
                                   input="好\n", capture_output=True, text=True, timeout=120)
        assert predicted.returncode == 0 and predicted.stdout.splitlines()[0] == "text,label,score", predicted
