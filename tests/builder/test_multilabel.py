"""Multi-label classifiers end to end: data, metrics and thresholds, training, export and its guard, the
predictor, `predict`, `serve` (ours and KServe v2) and `bench`, on the tiny BERT and an easy set where a text
carries `positive`, `negative`, both or neither."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import NO_VETO, make_multilabel_rows, write_csv, write_jsonl

from bertdeploy.builder.examples import Examples, label_order, load_examples, split_examples
from bertdeploy.cli import cli
from bertdeploy.errors import DataError
from bertdeploy.labels import LabelScheme
from bertdeploy.metrics import multilabel_report, tune_thresholds

LABELS = ("negative", "positive")


# -- data --------------------------------------------------------------------------------------------------------

def test_label_cells_hold_sets_joined_by_the_separator_and_an_empty_cell_is_no_label(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"text": "a", "labels": "tech | business"}, {"text": "b", "labels": ""},
                                          {"text": "c", "labels": "tech|tech"}, {"text": "d", "labels": "sport"}])
    examples = load_examples(path, label_column="labels", multi_label=True)
    assert examples.labels == [("business", "tech"), (), ("tech",), ("sport",)]
    assert label_order(examples) == ["business", "sport", "tech"]
    semicolons = write_csv(tmp_path / "s.csv", [{"text": "a", "labels": "x;y"}, {"text": "b", "labels": "y"}])
    assert load_examples(semicolons, label_column="labels", multi_label=True, separator=";").labels == \
        [("x", "y"), ("y",)]


def test_jsonl_labels_may_be_lists_or_joined_strings_and_a_missing_one_is_an_empty_row(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": ["b", "a"]}, {"text": "b", "label": []},
                                              {"text": "c", "label": "a|c"}, {"text": "d"}])
    with pytest.raises(DataError, match=r"t\.jsonl: empty or missing 'text' / 'label' on line 4"):
        load_examples(path, multi_label=True)
    examples = load_examples(path, multi_label=True, drop_empty=True)
    assert examples.labels == [("a", "b"), (), ("a", "c")] and examples.multi_label


@pytest.mark.parametrize("cell", ["a||b", "|a", "a|"])
def test_a_separator_that_leaves_an_empty_label_name_is_refused_with_its_line(tmp_path, cell):
    path = write_csv(tmp_path / "t.csv", [{"text": "x", "labels": "a"}, {"text": "y", "labels": cell}])
    with pytest.raises(DataError, match=r"t\.csv line 3: 'labels' is .* empty label name between the separators"):
        load_examples(path, label_column="labels", multi_label=True)


def test_label_columns_hold_zero_or_one(tmp_path):
    rows = [{"text": "x", "insult": "1", "threat": "0"}, {"text": "y", "insult": "0", "threat": "0"},
            {"text": "z", "insult": "1", "threat": "1"}]
    examples = load_examples(write_csv(tmp_path / "t.csv", rows), label_columns=["threat", "insult"])
    assert examples.labels == [("insult",), (), ("threat", "insult")]
    assert label_order(examples, ["threat", "insult"]) == ["threat", "insult"]
    rows[1]["threat"] = "yes"
    with pytest.raises(DataError, match=r"t\.csv line 3: the label column 'threat' holds 'yes'; label columns hold 0"):
        load_examples(write_csv(tmp_path / "t.csv", rows), label_columns=["threat", "insult"])
    with pytest.raises(DataError, match="no column 'spam'"):
        load_examples(write_csv(tmp_path / "t.csv", rows), label_columns=["spam"])


def test_a_label_never_positive_or_always_positive_cannot_be_learned(tmp_path):
    examples = Examples(Path("t.csv"), ["a", "b", "c"], [("x",), ("x", "y"), ()], multi_label=True)
    with pytest.raises(DataError, match=r"t\.csv: label 'z' is never positive in 3 training rows"):
        label_order(examples, ["x", "y", "z"])
    always = Examples(Path("t.csv"), ["a", "b"], [("x",), ("x", "y")], multi_label=True)
    with pytest.raises(DataError, match="label 'x' is positive on every row"):
        label_order(always)
    nothing = Examples(Path("t.csv"), ["a", "b"], [(), ()], multi_label=True)
    with pytest.raises(DataError, match="no row carries a label"):
        label_order(nothing)


def test_the_validation_split_keeps_the_label_sets_in_proportion():
    labels = [("a",), ("b",), ("a", "b"), ()] * 25 + [("a", "c")]  # one set that occurs once
    examples = Examples(Path("t.csv"), [str(i) for i in range(len(labels))], labels, multi_label=True)
    train, held_out = split_examples(examples, 0.2, seed=0)
    assert len(held_out) in (20, 21) and len(train) + len(held_out) == len(examples)
    assert all(held_out.labels.count(s) == 5 for s in [("a",), ("b",), ("a", "b"), ()])


# -- metrics and thresholds --------------------------------------------------------------------------------------

def test_multilabel_report_by_hand():
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=bool)
    predicted = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=bool)
    report = multilabel_report(truth, predicted, LABELS)
    # negative: tp 2, fp 1, fn 0 -> F1 0.8; positive: tp 1, fp 0, fn 1 -> F1 2/3; micro: tp 3, fp 1, fn 1 -> 0.75
    assert report["micro_f1"] == pytest.approx(0.75)
    assert report["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert report["subset_accuracy"] == pytest.approx(0.5)
    assert report["per_class"]["positive"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                               "support": 2}


def test_tuned_thresholds_maximize_each_labels_f1():
    rng = np.random.default_rng(0)
    truth = rng.random((200, 2)) < 0.3
    scores = np.clip(truth * 0.25 + rng.random((200, 2)) * 0.6, 0, 1)  # positives score higher, below 0.5 often
    thresholds = tune_thresholds(truth, scores)
    scheme = LabelScheme(LABELS, True, tuple(thresholds))
    tuned = scheme.report(truth, scheme.decide(scores))
    for j, label in enumerate(LABELS):  # no threshold on a grid does better for any label
        grid = [multilabel_report(truth[:, [j]], scores[:, [j]] >= t, [label])["micro_f1"]
                for t in np.linspace(0, 1, 201)]
        assert tuned["per_class"][label]["f1"] >= max(grid) - 1e-12
    default = LabelScheme(LABELS, True)
    assert tuned["micro_f1"] > default.report(truth, default.decide(scores))["micro_f1"]
    assert tune_thresholds(np.zeros((3, 1), bool), np.ones((3, 1)))[0] == 0.5  # no positives: the default


# -- the tiny model end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multilabel(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The tiny BERT fine-tuned multi-label through the CLI, thresholds tuned, then exported with INT8 and
    OpenVINO: (folder, artifact dir, finetune's JSON result)."""
    folder = tmp_path_factory.mktemp("multilabel")
    write_csv(folder / "train.csv", make_multilabel_rows(200, seed=1))
    write_csv(folder / "test.csv", make_multilabel_rows(40, seed=2))
    runner = CliRunner()
    done = runner.invoke(cli, ["finetune", "--model", str(tiny_model_dir), "--train-file", str(folder / "train.csv"),
                               "--eval-file", str(folder / "test.csv"), "--output-dir", str(folder / "model"),
                               "--multi-label", "--label-column", "labels", "--tune-thresholds", "--epochs", "10",
                               "--learning-rate", "3e-3", "--max-length", "32", "--warmup-ratio", "0", "--seed", "0",
                               "--json"])
    assert done.exit_code == 0, done.output
    trained = json.loads(done.stdout)
    done = runner.invoke(cli, ["export", str(folder / "model"), "--output-dir", str(folder / "onnx"),
                               "--quantize", "int8", "--openvino", "--max-accuracy-drop", str(NO_VETO)])
    assert done.exit_code == 0, done.output
    return folder, folder / "onnx", trained


def test_finetune_trains_with_sigmoid_outputs_and_records_the_thresholds(multilabel):
    folder, _, trained = multilabel
    manifest = json.loads((folder / "model" / "manifest.json").read_text())
    config = json.loads((folder / "model" / "config.json").read_text())
    metrics = json.loads((folder / "model" / "metrics.json").read_text())
    assert config["problem_type"] == manifest["problem_type"] == "multi_label_classification"
    assert manifest["label_separator"] == "|" and set(manifest["thresholds"]) == set(LABELS)
    assert manifest["thresholds"] == trained["thresholds"] != {"negative": 0.5, "positive": 0.5}
    assert metrics["metric_for_best_model"] == "micro_f1" and metrics["best"]["thresholds_tuned_on_these_data"]
    best = max(trained["epochs"], key=lambda e: e["micro_f1"])
    assert trained["best_epoch"] == best["epoch"]
    assert metrics["best"]["at_threshold_0.5"]["micro_f1"] == pytest.approx(best["micro_f1"])
    assert trained["micro_f1"] >= best["micro_f1"]  # tuned on these texts: never worse there
    assert trained["micro_f1"] > 0.8 and trained["accuracy"] is None
    assert set(metrics["best"]["per_class"]["positive"]) == {"precision", "recall", "f1", "support"}


def test_finetune_table_names_the_multilabel_figures(tiny_model_dir, tmp_path):
    write_csv(tmp_path / "train.csv", make_multilabel_rows(40, seed=1))
    done = CliRunner().invoke(cli, ["finetune", "--model", str(tiny_model_dir), "--train-file",
                                    str(tmp_path / "train.csv"), "--output-dir", str(tmp_path / "m"), "--multi-label",
                                    "--label-column", "labels", "--epochs", "1", "--max-length", "16"])
    assert done.exit_code == 0, done.output
    assert "micro-F1  macro-F1  subset accuracy" in done.stdout and "thresholds: negative 0.500" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--tune-thresholds"], "thresholds are tuned for multi-label models only"),
    (["--multi-label", "--label-separator", " "], "the label separator must not be empty or blank"),
    (["--label-columns", "a,b", "--labels", "a,b"], "the label columns name the labels: leave out --labels"),
])
def test_finetune_refuses_contradictory_multilabel_options(tiny_model_dir, tmp_path, args, message):
    write_csv(tmp_path / "train.csv", make_multilabel_rows(40, seed=1))
    done = CliRunner().invoke(cli, ["finetune", "--model", str(tiny_model_dir), "--train-file",
                                    str(tmp_path / "train.csv"), "--output-dir", str(tmp_path / "m"), *args])
    assert done.exit_code == 2 and message in done.output
    assert not (tmp_path / "m").exists()


def test_finetune_refuses_an_eval_label_the_training_data_lacks_and_writes_nothing(tiny_model_dir, tmp_path):
    write_csv(tmp_path / "train.csv", make_multilabel_rows(40, seed=1))
    rows = make_multilabel_rows(8, seed=2)
    rows[5]["labels"] = "positive|neutral"
    write_csv(tmp_path / "test.csv", rows)
    done = CliRunner().invoke(cli, ["finetune", "--model", str(tiny_model_dir), "--train-file",
                                    str(tmp_path / "train.csv"), "--eval-file", str(tmp_path / "test.csv"),
                                    "--output-dir", str(tmp_path / "m"), "--multi-label", "--label-column", "labels"])
    assert done.exit_code == 2
    assert "test.csv: label 'neutral' on line 7 is unknown to the model" in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv", "train.csv"]


def test_export_judges_variants_by_micro_f1_on_sigmoid_scores(multilabel):
    folder, onnx, trained = multilabel
    manifest = json.loads((onnx / "manifest.json").read_text())
    assert manifest["problem_type"] == "multi_label_classification"
    assert manifest["thresholds"] == trained["thresholds"] and manifest["label_separator"] == "|"
    evaluation = manifest["evaluation"]
    assert evaluation["guard"] == evaluation["metric"] == "micro_f1"
    # the same eval file and thresholds as the training run: PyTorch's figures are the training run's
    assert evaluation["reference"]["micro_f1"] == pytest.approx(trained["micro_f1"])
    for name, entry in manifest["variants"].items():
        assert set(entry["eval"]) == {"micro_f1", "macro_f1", "subset_accuracy", "micro_f1_drop"}, name
        assert 0 <= entry["parity"]["max_abs_diff"] <= 1  # a difference of sigmoid scores
    assert manifest["variants"]["fp32"]["parity"]["max_abs_diff"] < 1e-4
    assert manifest["variants"]["fp32"]["eval"]["micro_f1_drop"] == pytest.approx(0, abs=1e-9)
    assert set(manifest["evaluation"]["pytorch"]["pytorch"]) >= {"micro_f1", "micro_f1_drop", "kept_accuracy"}


def test_predictor_gives_label_sets_from_the_thresholds(multilabel):
    from bertdeploy.runtime.predictor import Predictor

    folder, onnx, trained = multilabel
    thresholds = np.array([trained["thresholds"][x] for x in LABELS], dtype=np.float32)
    texts = [r["text"] for r in make_multilabel_rows(40, seed=2)]
    for backend in ("auto", "onnxruntime", "openvino"):
        predictor = Predictor.load(onnx, backend=backend)
        scores = predictor.predict_proba(texts)
        assert scores.shape == (40, 2) and not np.allclose(scores.sum(axis=1), 1)  # sigmoid, not softmax
        predictions = predictor.predict(texts)
        for p, row in zip(predictions, scores, strict=True):
            assert p.labels == [x for x, s, t in zip(LABELS, row, thresholds, strict=True) if s >= t]
            assert p.label == (max(p.labels, key=lambda x: p.scores[x]) if p.labels else None)
            assert p.score == pytest.approx(row.max())
        assert {len(p.labels) for p in predictions} == {0, 1, 2}  # none, one and both occur
    chunked = Predictor.load(onnx, long_text="chunk")  # a long text: the mean of its windows' sigmoid scores
    long_text = "".join(texts[:12])
    windows, _ = chunked.encoder.windows([long_text])
    each = np.concatenate([scores for _, scores in chunked.iter_encoded(windows)])
    assert len(windows) > 1 and not np.allclose(each.sum(axis=1), 1)
    assert chunked.predict_proba([long_text])[0] == pytest.approx(each.mean(axis=0), abs=1e-6)


def test_predict_writes_label_sets_and_scores_them(multilabel, tmp_path):
    folder, onnx, trained = multilabel
    out = tmp_path / "out.csv"
    done = CliRunner().invoke(cli, ["predict", str(onnx), str(folder / "test.csv"), "-o", str(out),
                                    "--variant", "fp32"])  # PyTorch's decisions: the training run's figures
    assert done.exit_code == 0, done.output
    assert f"micro-F1 {trained['micro_f1']:.4f}" in done.stdout and "subset accuracy" in done.stdout
    import csv

    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert set(rows[0]) == {"text", "labels", "label", "score", "score_negative", "score_positive"}
    for row in rows:
        on = [x for x in LABELS if float(row[f"score_{x}"]) >= trained["thresholds"][x] - 1e-6]
        assert row["label"] == "|".join(on)
    jsonl = write_jsonl(tmp_path / "in.jsonl", [{"text": r["text"], "labels": r["labels"].split("|") if r["labels"]
                                                 else []} for r in make_multilabel_rows(40, seed=2)] + [{"text": "好"}])
    done = CliRunner().invoke(cli, ["predict", str(onnx), str(jsonl), "-o", str(tmp_path / "out.jsonl"),
                                    "--variant", "fp32"])
    assert done.exit_code == 0, done.output
    assert f"micro-F1 {trained['micro_f1']:.4f}" in done.stdout and "1 rows without a label" in done.stdout


def test_serve_answers_label_sets_on_predict_and_kserve(multilabel):
    from helpers import running

    from bertdeploy.runtime.predictor import Predictor

    _, onnx, trained = multilabel
    predictor = Predictor.load(onnx, variant="fp32", threads=1)
    texts = [r["text"] for r in make_multilabel_rows(12, seed=4)]
    expected = predictor.predict(texts)
    with running(predictor) as url:
        body = httpx.post(f"{url}/predict", json={"texts": texts}).json()
        for answer, p in zip(body["predictions"], expected, strict=True):
            assert answer["labels"] == p.labels and answer["scores"] == pytest.approx(p.scores, abs=1e-6)
            assert answer.get("label") == p.label
        metadata = httpx.get(f"{url}/v2/models/tiny").json()
        assert metadata["parameters"]["problem_type"] == "multi_label_classification"
        assert metadata["parameters"]["thresholds"] == trained["thresholds"]
        infer = httpx.post(f"{url}/v2/models/tiny/infer", json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}).json()
    outputs = {o["name"]: o for o in infer["outputs"]}
    assert outputs["label"]["data"] == ["|".join(p.labels) for p in expected]
    scores = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert scores == pytest.approx(np.array([[p.scores[x] for x in LABELS] for p in expected]), abs=1e-6)


def test_bench_scores_multilabel_engines_by_micro_f1(multilabel):
    from bertdeploy.benchmark.run import BenchOptions, bench

    folder, onnx, trained = multilabel
    result = bench(BenchOptions(onnx, eval_file=folder / "test.csv", variants=["fp32", "int8"], batch_sizes=[1],
                                seq_lengths=[16], runs=3, warmup=1, record=False))
    engines = {e.name: e for e in result.engines}
    assert result.multi_label
    assert engines["pytorch"].micro_f1 == pytest.approx(trained["micro_f1"]) and engines["pytorch"].accuracy is None
    assert engines["fp32"].micro_f1 == pytest.approx(trained["micro_f1"]) and engines["fp32"].agreement == 1.0
    from bertdeploy import render

    assert "micro-F1" in render.bench(result)


def test_predict_engine_ray_writes_and_scores_what_the_local_engine_does(ray_local, multilabel, tmp_path):
    from bertdeploy.predict.local import predict_file
    from bertdeploy.predict.ray_engine import predict_file_ray
    from bertdeploy.predict.rows import PredictFileOptions
    from bertdeploy.runtime.options import RuntimeOptions

    folder, onnx, _ = multilabel
    rows = [{"text": r["text"], "labels": r["labels"].split("|") if r["labels"] else []}
            for r in make_multilabel_rows(60, seed=5)] + [{"text": "好"}]
    jsonl = write_jsonl(tmp_path / "in.jsonl", rows)
    results = {}
    for engine, run in (("local", predict_file), ("ray", predict_file_ray)):
        for source, suffix in ((folder / "test.csv", "csv"), (jsonl, "jsonl")):
            results[engine, suffix] = run(PredictFileOptions(onnx, str(source), tmp_path / f"{engine}.{suffix}",
                                                             RuntimeOptions(variant="fp32"), engine=engine,
                                                             chunk_rows=16, workers=2))
    for suffix in ("csv", "jsonl"):
        assert (tmp_path / f"ray.{suffix}").read_text("utf-8") == (tmp_path / f"local.{suffix}").read_text("utf-8")
        local, ray = results["local", suffix], results["ray", suffix]
        assert ray.report == local.report and (ray.scored, ray.unlabelled) == (local.scored, local.unlabelled)
    assert results["ray", "jsonl"].scored == 60 and results["ray", "jsonl"].unlabelled == 1
