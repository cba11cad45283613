"""`bertdeploy predict` on files and stdin, with the tiny classifier's exported artifacts."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import PREDICT_RUNTIME, PREDICT_RUNTIME_ARGS, make_rows, write_csv, write_jsonl

from bertdeploy.cli import cli
from bertdeploy.errors import DataError
from bertdeploy.predict.local import predict_file
from bertdeploy.predict.rows import PredictFileOptions
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Predictor


def _run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["predict", *args], input=input)


def _read_csv(text: str, delimiter: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def test_csv_with_labels_keeps_columns_and_prints_the_scores(tiny_artifacts, tmp_path):
    rows = [{"id": str(i), **r} for i, r in enumerate(make_rows(50, seed=7))]
    source = write_csv(tmp_path / "in.csv", rows)
    result = _run(str(tiny_artifacts), str(source), "--output", str(tmp_path / "out.csv"))
    assert result.exit_code == 0, result.output
    out = _read_csv((tmp_path / "out.csv").read_text(encoding="utf-8"))
    assert list(out[0]) == ["id", "text", "label", "predicted_label", "predicted_score"]
    assert [(r["id"], r["text"]) for r in out] == [(r["id"], r["text"]) for r in rows]
    expected = Predictor.load(tiny_artifacts).predict([r["text"] for r in rows])
    assert [r["predicted_label"] for r in out] == [p.label for p in expected]
    assert np.allclose([float(r["predicted_score"]) for r in out], [p.score for p in expected], atol=1e-5)
    accuracy = np.mean([r["label"] == r["predicted_label"] for r in out])
    assert f"accuracy {accuracy:.4f}" in result.stdout and "over 50 rows labelled in 'label'" in result.stdout
    assert "negative" in result.stdout and "precision" in result.stdout
    assert "predicted 50 texts with " in result.stdout and "on CPUExecutionProvider" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_text_from_stdin_to_stdout(tiny_artifacts):
    result = _run(str(tiny_artifacts), "-", input="好，喜欢\n差，退货\n\n")
    assert result.exit_code == 0, result.output
    out = _read_csv(result.stdout)
    assert [r["text"] for r in out] == ["好，喜欢", "差，退货", ""]  # an empty line is an empty text, kept
    assert [r["label"] for r in out][:2] == ["positive", "negative"]
    assert "predicted 3 texts" in result.stderr
    quiet = _run(str(tiny_artifacts), "-", "--no-spinning", input="好，喜欢\n差，退货\n\n")
    assert quiet.exit_code == 0 and quiet.stdout == result.stdout  # threads that never spin: the same labels


def test_jsonl_tsv_and_text_files_with_all_scores(tiny_artifacts, tmp_path):
    rows = [{"text": r["text"], "meta": {"n": i}} for i, r in enumerate(make_rows(12, seed=8))]
    result = _run(str(tiny_artifacts), str(write_jsonl(tmp_path / "in.jsonl", rows)), "--all-scores")
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["meta"] for r in out] == [{"n": i} for i in range(12)]
    assert all(abs(r["score_negative"] + r["score_positive"] - 1) < 1e-5 for r in out)
    assert all(r["score"] == max(r["score_negative"], r["score_positive"]) for r in out)

    write_csv(tmp_path / "in.tsv", [{"text": r["text"], "n": str(i)} for i, r in enumerate(rows)], delimiter="\t")
    result = _run(str(tiny_artifacts), str(tmp_path / "in.tsv"))
    assert result.exit_code == 0, result.output
    tsv = _read_csv(result.stdout, delimiter="\t")
    assert [r["label"] for r in tsv] == [r["label"] for r in out] and list(tsv[0]) == ["text", "n", "label", "score"]

    (tmp_path / "in.txt").write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    result = _run(str(tiny_artifacts), str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == \
        [r["label"] for r in out]


def test_other_text_column_and_variant(tiny_artifacts, tmp_path):
    source = write_csv(tmp_path / "in.csv", [{"review": r["text"]} for r in make_rows(10, seed=9)])
    result = _run(str(tiny_artifacts), str(source), "--text-column", "review", "--variant", "fp32", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "with fp32 on" in result.stderr and list(_read_csv(result.stdout)[0]) == ["review", "label", "score"]


def _bad(tmp_path, tiny_artifacts):
    good = write_csv(tmp_path / "good.csv", make_rows(5))
    (tmp_path / "bad.jsonl").write_text('{"text": "好"}\n{"text": 5}\n', encoding="utf-8")
    return {
        "no artifacts": ([str(tmp_path / "nope"), str(good)], "nope: no such directory"),
        "not an export": ([str(tmp_path), str(good)], "no manifest.json"),
        "unknown variant": ([str(tiny_artifacts), str(good), "--variant", "int4"], "no variant 'int4'; it has"),
        "no input": ([str(tiny_artifacts), str(tmp_path / "missing.csv")], "missing.csv: no such file"),
        "wrong column": ([str(tiny_artifacts), str(good), "--text-column", "review"],
                         "no column 'review'; the columns found are 'text', 'label'"),
        "unknown type": ([str(tiny_artifacts), str(tmp_path / "in.xlsx")], "unknown file type '.xlsx'"),
        "number as text": ([str(tiny_artifacts), str(tmp_path / "bad.jsonl")],
                           "bad.jsonl line 2: 'text' is a number, expected a string"),
        "jsonl to csv": ([str(tiny_artifacts), str(tmp_path / "bad.jsonl"), "--format", "csv"],
                         "JSONL input is written as JSONL"),
        "output is input": ([str(tiny_artifacts), str(good), "-o", str(good)], "is the input file"),
        "output dir missing": ([str(tiny_artifacts), str(good), "-o", str(tmp_path / "no" / "out.csv")],
                               "does not exist"),
        "cuda missing": ([str(tiny_artifacts), str(good), "--providers", "cuda"],
                         "CUDAExecutionProvider is not in this ONNX Runtime"),
    }


@pytest.mark.parametrize("case", ["no artifacts", "not an export", "unknown variant", "no input", "wrong column",
                                  "unknown type", "number as text", "jsonl to csv", "output is input",
                                  "output dir missing", "cuda missing"])
def test_bad_input_is_one_clear_line(case, tmp_path, tiny_artifacts):
    import onnxruntime

    if case == "cuda missing" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    args, message = _bad(tmp_path, tiny_artifacts)[case]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_failure_part_way_leaves_no_output_file(tiny_artifacts, tmp_path):
    source = write_csv(tmp_path / "in.csv", make_rows(300, seed=10))
    with source.open("ab") as f:
        f.write("好,positive\n".encode() * 5 + b"\xff\xfe,positive\n")  # line 307 is not UTF-8
    output = tmp_path / "out.csv"
    output.write_text("an older result\n")
    options = PredictFileOptions(tiny_artifacts, str(source), output=output, chunk_rows=64)
    with pytest.raises(DataError, match="in.csv line 307: not valid UTF-8"):
        predict_file(options)
    assert output.read_text() == "an older result\n"  # untouched, and no temporary file left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_unknown_and_empty_labels_are_counted_not_scored(tiny_artifacts, tmp_path):
    rows = make_rows(20, seed=11)
    rows[0]["label"], rows[1]["label"], rows[2]["label"] = "neutral", "", "neutral"
    result = predict_file(PredictFileOptions(tiny_artifacts, str(write_csv(tmp_path / "in.csv", rows)),
                                             output=tmp_path / "out.csv", chunk_rows=7))
    assert result.rows == 20 and result.scored == 17 and result.unlabelled == 1
    assert result.unknown_labels == {"neutral": 2}
    assert sum(sum(row) for row in result.report["confusion_matrix"]) == 17


def test_the_runtime_options_reach_the_local_engines_predictor(tiny_artifacts, tmp_path, stopped_load):
    source = write_csv(tmp_path / "in.csv", make_rows(3, seed=12))
    result = _run(str(tiny_artifacts), str(source), *PREDICT_RUNTIME_ARGS)
    assert result.exit_code == 2 and "Error: stopped at Predictor.load" in result.output, result.output
    assert stopped_load == [(tiny_artifacts, PREDICT_RUNTIME, {})]  # one RuntimeOptions, nothing passed beside it
    stopped_load.clear()
    assert _run(str(tiny_artifacts), str(source)).exit_code == 2
    assert stopped_load == [(tiny_artifacts, RuntimeOptions(), {})]  # the defaults are RuntimeOptions'


@pytest.mark.parametrize(("args", "message"), [
    (["--threads", "0"], "--threads must be at least 1"),
    (["--max-batch-tokens", "4"], "--max-batch-tokens must be at least 8"),
])
def test_bad_runtime_options_are_one_clear_line(tiny_artifacts, tmp_path, stopped_load, args, message):
    result = _run(str(tiny_artifacts), str(write_csv(tmp_path / "in.csv", make_rows(3, seed=12))), *args)
    assert result.exit_code == 2 and result.output == f"Error: {message}\n" and stopped_load == []
