"""`bertdeploy bench`: the same inputs for every engine, honest figures, memory per process, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import NO_VETO, make_rows, pytorch_engines, pytorch_logits, write_csv

from bertdeploy.benchmark.cases import fixed_length_cases, natural_cases
from bertdeploy.benchmark.run import BenchOptions, bench
from bertdeploy.builder.examples import load_examples
from bertdeploy.builder.reference import BF16_FLAGS, computes_bf16
from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError
from bertdeploy.host import cpu_flags
from bertdeploy.metrics import classification_report
from bertdeploy.runtime.encoding import load_encoder
from bertdeploy.runtime.predictor import Predictor

RUNS = 5
PYTORCHS = pytorch_engines()  # pytorch, and pytorch-bf16 where the CPU computes bf16


@pytest.fixture(scope="module")
def result(tiny_artifacts, tiny_classifier):
    return bench(BenchOptions(tiny_artifacts, eval_file=tiny_classifier[2], batch_sizes=[4, 1], seq_lengths=[16, 64],
                              runs=RUNS, warmup=1, threads=1, record=False))  # the fixture is shared: no writes


def test_every_engine_runs_every_cell(result):
    assert [e.name for e in result.engines] == [*PYTORCHS, "fp32", "int8", "auto"]  # auto: export's ranges
    cells = list(dict.fromkeys((t.inputs, t.batch_size) for t in result.timings))
    assert cells == [("16 tokens", 1), ("16 tokens", 4), ("natural", 1), ("natural", 4)]  # 64 > max length 32
    assert len(result.timings) == len(cells) * len(result.engines) and result.threads == 1 and result.auto is None
    for t in result.timings:
        samples = np.asarray(t.samples_ms)
        assert len(samples) == RUNS and np.all(samples > 0)
        assert t.mean_ms == pytest.approx(samples.mean(), rel=1e-3)
        assert t.p50_ms <= t.p90_ms <= t.p95_ms <= t.p99_ms <= samples.max() + 1e-3
        assert t.sequences_per_s == pytest.approx(t.batch_size / t.mean_ms * 1000)
        if t.inputs == "16 tokens":
            assert t.tokens_per_s == pytest.approx(t.batch_size * 16 / t.mean_ms * 1000, rel=1e-3)
        # against the cell's fastest PyTorch engine (the tiny model's bf16 keeps its accuracy within the bound)
        base = min((r for r in result.timings if r.engine in PYTORCHS and
                    (r.inputs, r.batch_size) == (t.inputs, t.batch_size)), key=lambda r: r.p50_ms)
        assert t.baseline == base.engine and t.speedup == pytest.approx(base.p50_ms / t.p50_ms)


def test_accuracy_is_what_each_engine_predicts(result, tiny_artifacts, tiny_classifier):
    examples = load_examples(tiny_classifier[2])
    labels = Predictor.load(tiny_artifacts).labels
    truth = [labels.index(y) for y in examples.labels]
    engines = {e.name: e for e in result.engines}
    expected = {
        "pytorch": np.argmax(pytorch_logits(tiny_classifier[0], examples.texts), axis=-1),
        **{v: np.argmax(Predictor.load(tiny_artifacts, variant=v).predict_proba(examples.texts), axis=-1)
           for v in ("fp32", "int8")},
        "auto": np.argmax(Predictor.load(tiny_artifacts).predict_proba(examples.texts), axis=-1),
    }
    for name, predicted in expected.items():
        report = classification_report(truth, predicted, labels)
        assert engines[name].accuracy == pytest.approx(report["accuracy"]), name
        assert engines[name].macro_f1 == pytest.approx(report["macro_f1"]), name
        assert engines[name].agreement == pytest.approx(np.mean(predicted == expected["pytorch"])), name
    assert result.eval_texts == len(examples)


def test_memory_and_load_time_come_from_a_process_per_engine(result, tiny_artifacts, tiny_classifier):
    engines = {e.name: e for e in result.engines}
    # the PyTorch process holds torch and transformers; the ONNX Runtime ones must not
    assert engines["pytorch"].peak_rss_mb > engines["fp32"].peak_rss_mb + 100
    assert all(50 < e.peak_rss_mb < 4000 and 0 < e.load_s < 60 for e in result.engines)
    assert engines["pytorch"].size_bytes == (tiny_classifier[0] / "model.safetensors").stat().st_size
    assert engines["int8"].size_bytes == (tiny_artifacts / "model_int8.onnx").stat().st_size
    assert result.machine["usable_cpus"] >= 1 and "onnxruntime" in result.machine["versions"]


def test_fixed_lengths_are_real_tokens_between_cls_and_sep(tiny_artifacts):
    encoder = load_encoder(tiny_artifacts / "tokenizer.json", 32)
    texts = [r["text"] for r in make_rows(30, seed=3)]
    cases = fixed_length_cases(encoder, texts, [1, 3], [10], ["input_ids", "attention_mask"])
    assert [(c.inputs, c.batch_size) for c in cases] == [("10 tokens", 1), ("10 tokens", 3)]
    feed = cases[1].feeds[0]
    assert set(feed) == {"input_ids", "attention_mask"}  # only what the graph declares
    ids = feed["input_ids"]
    cls, sep = encoder.tokenizer.token_to_id("[CLS]"), encoder.tokenizer.token_to_id("[SEP]")
    assert ids.shape == (3, 10) and (ids[:, 0] == cls).all() and (ids[:, -1] == sep).all()
    assert (feed["attention_mask"] == 1).all() and len({tuple(row) for row in ids}) == 3
    pool = {i for e in encoder.tokenizer.encode_batch(texts, add_special_tokens=False) for i in e.ids}
    assert set(ids[:, 1:-1].ravel()) <= pool


def test_natural_lengths_keep_file_order_and_pad_like_the_predictor(tiny_artifacts, tiny_classifier):
    encoder = load_encoder(tiny_artifacts / "tokenizer.json", 32)
    examples = load_examples(tiny_classifier[2])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    (case,) = natural_cases(encoder, examples, [8], runs=3, names=names)
    assert len(case.feeds) == 3  # no more batches than runs
    for i, feed in enumerate(case.feeds):
        expected = encoder.pad(encoder.tokenize(examples.texts[i * 8:(i + 1) * 8]), names)
        assert all(np.array_equal(feed[k], expected[k]) for k in names)
        assert feed["input_ids"].shape[1] % 8 == 0 and case.tokens[i] == feed["attention_mask"].sum()
    assert natural_cases(encoder, examples, [len(examples) + 1], runs=3, names=names) == []


def test_without_labels_it_reports_agreement_only(tiny_artifacts, tmp_path):
    texts = write_csv(tmp_path / "texts.csv", [{"text": r["text"]} for r in make_rows(12, seed=4)])
    result = bench(BenchOptions(tiny_artifacts, eval_file=texts, variants=["int8"], batch_sizes=[4], seq_lengths=[8],
                                runs=2, warmup=0, threads=1))
    n = len(result.engines)
    assert [(t.inputs, t.batch_size) for t in result.timings[::n]] == [("8 tokens", 4), ("natural", 4)]
    assert all(e.accuracy is None and e.macro_f1 is None for e in result.engines)
    assert result.engines[0].agreement == 1.0 and 0 <= result.engines[-1].agreement <= 1 and result.eval_texts == 12


def test_cli_prints_the_table_and_writes_json_and_plot(tiny_artifacts, tiny_classifier, tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(tiny_artifacts), "--eval-file", str(tiny_classifier[2]),
                                      "--variants", "int8", "--runs", "3", "--warmup", "0", "--batch-sizes", "1,2",
                                      "--seq-lengths", "16", "--threads", "1", "--json", str(tmp_path / "b.json"),
                                      "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "speed-up" in lines[3] and "(reference)" in result.stdout and "INFO" not in result.stdout
    assert "the fastest PyTorch that kept accuracy" in lines[1]
    n = len(PYTORCHS) + 1
    timing_rows, engine_rows = lines[4:4 + 4 * n], lines[6 + 4 * n:6 + 5 * n]  # 2 x 2 cells x n; then each engine
    assert [line.split()[0] for line in timing_rows[::n]] == ["16", "16", "natural", "natural"]
    assert [line.split()[0] for line in timing_rows[n - 1::n]] == ["int8"] * 4
    assert all(sum(c == "*" for c in "".join(timing_rows[i:i + n])) == 8 for i in range(0, 4 * n, n))  # 1 per column
    assert [line.split()[0] for line in engine_rows] == [*PYTORCHS, "int8"] and lines[6 + 5 * n] == ""
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [e["name"] for e in saved["engines"]] == [*PYTORCHS, "int8"]
    assert {t["baseline"] for t in saved["timings"]} <= set(PYTORCHS)
    assert saved["machine"]["cpu"] and saved["threads"] == 1 and len(saved["timings"][0]["samples_ms"]) == 3
    png = (tmp_path / "b.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def _bad(tmp_path, artifacts, model) -> dict:
    moved = tmp_path / "moved"
    shutil.copytree(artifacts, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source_model"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    unknown = write_csv(tmp_path / "odd.csv", [{"text": "好", "label": "neutral"}])
    return {
        "no artifacts": ([str(tmp_path / "nothing")], "nothing: no such directory"),
        "unknown variant": ([str(artifacts), "--variants", "fp32,O3"], "no variant 'O3'; it has fp32, int8"),
        "model moved": ([str(moved)], "no PyTorch model to compare with"),
        "not a model": ([str(artifacts), "--pytorch-model", str(tmp_path)], "pass --pytorch-model"),
        "bad batch sizes": ([str(artifacts), "--batch-sizes", "1,x"], "--batch-sizes: '1,x' is not"),
        "zero runs": ([str(artifacts), "--runs", "0"], "runs must be at least 1"),
        "plot dir missing": ([str(artifacts), "--plot", str(tmp_path / "no" / "b.png")], "does not exist"),
        "unknown label": ([str(artifacts), "--eval-file", str(unknown)], "neutral"),
        "cuda missing": ([str(artifacts), "--device", "cuda"], "--device cuda"),
    }


@pytest.mark.parametrize("case", ["no artifacts", "unknown variant", "model moved", "not a model", "bad batch sizes",
                                  "zero runs", "plot dir missing", "unknown label", "cuda missing"])
def test_bad_input_is_one_clear_line(case, tmp_path, tiny_artifacts, tiny_classifier):
    import torch

    if case == "cuda missing" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, message = _bad(tmp_path, tiny_artifacts, tiny_classifier[0])[case]
    result = CliRunner().invoke(cli, ["bench", *args, "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error:")
    assert not (tmp_path / "b.json").exists()


def test_a_directory_it_cannot_record_in_is_refused_before_any_timing(tiny_artifacts, monkeypatch, tmp_path):
    """bench records the auto routes in the manifest: where it cannot write (a read-only volume, found by a probe
    file, since root passes permission bits), one line before anything is timed; --no-record goes ahead."""
    from bertdeploy.artifacts import writable

    assert writable(tmp_path) and not list(tmp_path.iterdir())  # the probe leaves nothing behind
    assert not writable(tmp_path / "missing") and not writable(tiny_artifacts / "manifest.json")
    monkeypatch.setattr("bertdeploy.benchmark.run.writable", lambda directory: False)
    before = (tiny_artifacts / "manifest.json").read_bytes()
    result = CliRunner().invoke(cli, ["bench", str(tiny_artifacts), "--runs", "1", "--warmup", "0",
                                      "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "cannot write there" in result.stderr and "--no-record" in result.stderr
    assert not (tmp_path / "b.json").exists() and (tiny_artifacts / "manifest.json").read_bytes() == before
    result = CliRunner().invoke(cli, ["bench", str(tiny_artifacts), "--no-record", "--runs", "1", "--warmup", "0",
                                      "--batch-sizes", "1", "--seq-lengths", "8", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.json").is_file() and (tiny_artifacts / "manifest.json").read_bytes() == before


def test_options_are_checked():
    with pytest.raises(BertdeployError, match="batch sizes must be at least 1"):
        BenchOptions("x", batch_sizes=[0, 8])
    with pytest.raises(BertdeployError, match="unknown device 'tpu'"):
        BenchOptions("x", device="tpu")


@pytest.fixture(scope="module")
def static_export(tiny_classifier, tmp_path_factory):
    """A static student of the tiny classifier, exported to fp32 and int8: a graph of input_ids and attention_mask
    only, where its teacher's export also takes token_type_ids."""
    pytest.importorskip("model2vec", reason="distill --static needs the static extra")
    folder = tmp_path_factory.mktemp("static")
    steps = [["distill", str(tiny_classifier[0]), "--output-dir", str(folder / "student"), "--static",
              "--static-dims", "8", "--epochs", "2", "--max-accuracy-drop", str(NO_VETO)],
             ["export", str(folder / "student"), "--output-dir", str(folder / "student-onnx"), "--quantize", "int8",
              "--no-openvino", "--max-accuracy-drop", str(NO_VETO)]]
    for args in steps:
        done = CliRunner().invoke(cli, args)
        assert done.exit_code == 0, done.output
    return folder / "student-onnx"


def test_compare_times_a_student_beside_its_teachers_export(static_export, tiny_artifacts, tiny_classifier,
                                                            tmp_path):
    teacher = json.loads((tiny_artifacts / "manifest.json").read_text())
    done = CliRunner().invoke(cli, ["bench", str(static_export), "--compare", str(tiny_artifacts), "--eval-file",
                                    str(tiny_classifier[2]), "--batch-sizes", "1,4", "--seq-lengths", "16",
                                    "--runs", "2", "--warmup", "0", "--threads", "1", "--json",
                                    str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")])
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "b.json").read_text())
    names = [e["name"] for e in result["engines"]]
    own = [*PYTORCHS, "fp32", "int8", "auto"]  # auto: export's ranges
    assert names == [*own, *(f"onnx:{n}" for n in own)]  # the compared export is named by its directory
    assert result["compared"] == [str(tiny_artifacts)]
    artifact = {e["name"]: e["artifact"] for e in result["engines"]}
    assert [n for n in names if artifact[n] == str(static_export)] == own
    # each engine scored through its own artifact's tokenizer, as its predictor runs it; agreement with the first
    examples = load_examples(tiny_classifier[2])
    engines = {e["name"]: e for e in result["engines"]}
    predicted = {name: np.argmax(Predictor.load(directory, variant="fp32").predict_proba(examples.texts), axis=-1)
                 for name, directory in (("fp32", static_export), ("onnx:fp32", tiny_artifacts))}
    truth = [["negative", "positive"].index(y) for y in examples.labels]
    for name, labels in predicted.items():
        assert engines[name]["accuracy"] == pytest.approx(np.mean(labels == truth)), name
    assert engines["onnx:fp32"]["agreement"] == pytest.approx(np.mean(predicted["onnx:fp32"] == predicted["fp32"]))
    assert engines["pytorch"]["agreement"] == 1.0 and all(e["accuracy"] is not None for e in engines.values())
    cells = {(t["inputs"], t["batch_size"]) for t in result["timings"]}
    assert cells == {("16 tokens", 1), ("16 tokens", 4), ("natural", 1), ("natural", 4)}
    assert len(result["timings"]) == len(cells) * len(names)
    assert {t["baseline"] for t in result["timings"]} <= {*PYTORCHS, "onnx:pytorch", "onnx:pytorch-bf16"}
    # the run's own manifest gets the auto ranges, of its own variants only; the compared one is left alone
    auto = json.loads((static_export / "manifest.json").read_text())["auto"]
    assert auto["measured_by"] == "bench" and set(auto["p50_ms"]) == {"fp32", "int8"}
    assert {route["variant"] for route in auto["routes"]} <= {"fp32", "int8"}
    assert json.loads((tiny_artifacts / "manifest.json").read_text()) == teacher
    assert "onnx:int8" in done.stdout and f"onnx: {tiny_artifacts}" in done.stdout
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")


def test_compare_feeds_each_engine_its_own_artifacts_inputs(static_export, tiny_artifacts, monkeypatch):
    from bertdeploy.benchmark import run
    from bertdeploy.benchmark.cases import Inputs

    seen: dict[str, list[set]] = {}

    def measure(engines, cases, options, scoring=None, max_accuracy_drop=1.0, own=None):
        for engine in engines:
            feeds = (own or {}).get(engine.artifact, Inputs(cases)).cases
            seen[engine.name] = [set(feed) for case in feeds for feed in case.feeds]
        raise BertdeployError("stopped at measure")

    monkeypatch.setattr(run, "measure", measure)
    with pytest.raises(BertdeployError, match="stopped at measure"):
        bench(BenchOptions(static_export, compare=[tiny_artifacts], batch_sizes=[2], seq_lengths=[8], threads=1))
    student, teacher = {"input_ids", "attention_mask"}, {"input_ids", "attention_mask", "token_type_ids"}
    assert seen["fp32"] == seen["pytorch"] == [student] and seen["onnx:fp32"] == seen["onnx:auto"] == [teacher]


def test_compare_refuses_other_labels_and_what_is_no_export(tiny_artifacts, tiny_classifier, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_artifacts, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "labels": manifest["labels"][::-1]}))
    pairs = tmp_path / "pairs"
    shutil.copytree(tiny_artifacts, pairs)
    (pairs / "manifest.json").write_text(json.dumps({**manifest, "text_pair_column": "second"}))
    cases = {str(other): f"--compare {other}: its labels (positive, negative; single_label_classification) are "
                         f"not those of {tiny_artifacts} (negative, positive; single_label_classification)",
             str(pairs): f"--compare {pairs}: one of it and {tiny_artifacts} classifies text pairs and the other",
             str(tiny_classifier[0]): "expected 'onnx' (--compare takes a directory that bertdeploy export wrote)",
             str(tiny_artifacts): "that is the artifact being measured"}
    for path, message in cases.items():
        done = CliRunner().invoke(cli, ["bench", str(tiny_artifacts), "--compare", path])
        assert done.exit_code == 2 and message in done.stderr, done.output
    with pytest.raises(BertdeployError, match="given twice"):
        BenchOptions(tiny_artifacts, compare=[other, other / "."])


def test_compared_labels_are_unique(tiny_artifacts, tmp_path):
    from bertdeploy.benchmark.lineup import compared_artifacts
    from bertdeploy.manifest import ExportManifest

    copies = [tmp_path / "a" / "onnx", tmp_path / "b" / "onnx", tmp_path / "onnx-2"]
    for copy in copies:
        shutil.copytree(tiny_artifacts, copy)
    options = BenchOptions(tmp_path / "main", compare=copies)
    compared = compared_artifacts(options, ExportManifest.read(tiny_artifacts))
    assert [c.label for c in compared] == ["onnx", "onnx-2", "onnx-2-2"]


@pytest.mark.gpu
def test_cuda_compares_pytorch_fp32_fp16_with_onnx_runtime(tiny_artifacts, tiny_classifier):
    result = bench(BenchOptions(tiny_artifacts, eval_file=tiny_classifier[2], batch_sizes=[1, 8], seq_lengths=[32],
                                runs=5, warmup=2, device="cuda"))
    bf16 = ["pytorch-bf16"] if computes_bf16("cuda") else []
    assert [e.name for e in result.engines] == ["pytorch", *bf16, "pytorch-fp16", "fp32"]  # INT8 left out on CUDA
    engines = {e.name: e for e in result.engines}
    assert engines["fp32"].agreement == 1.0 and engines["pytorch-fp16"].agreement > 0.9
    assert result.machine["gpu"] and all(t.p50_ms > 0 for t in result.timings)


def test_the_timing_harness_takes_turns_in_a_shuffled_order_and_drops_the_warm_up():
    from bertdeploy.timing import distinct_shapes, interleave, stopwatch

    order: list[tuple[int, str]] = []
    samples = interleave({k: (lambda step, k=k: order.append((step, k))) for k in "abcd"}, rounds=20, warmup=2)
    assert {k: len(v) for k, v in samples.items()} == dict.fromkeys("abcd", 20)
    assert all(ms >= 0 for v in samples.values() for ms in v)
    turns = [tuple(k for step, k in order if step == s) for s in range(22)]
    assert all(sorted(t) == list("abcd") for t in turns) and len(set(turns)) > 1  # each once a round, reordered
    feeds = [{"input_ids": np.zeros(shape)} for shape in [(1, 8), (1, 8), (2, 8), (1, 16)]]
    assert distinct_shapes(feeds) == [1, 2, 3]
    assert stopwatch(sum, [1, 2])[0] == 3


def test_native_bf16_is_read_from_the_cpu_flags():
    assert computes_bf16(flags={"avx2", "avx512_bf16"}) and computes_bf16(flags={"amx_bf16", "amx_int8"})
    assert computes_bf16(flags={"asimd", "bf16"})  # Arm's bf16 extension
    assert not computes_bf16(flags={"avx2", "avx512f", "avx512_vnni"}) and not computes_bf16(flags=set())
    assert computes_bf16() == bool(set(BF16_FLAGS) & cpu_flags())


@pytest.mark.skipif(not computes_bf16(), reason="this CPU has no native bf16 (avx512_bf16, amx_bf16)")
def test_pytorch_bf16_is_autocast_and_scored(result, tiny_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    engines = {e.name: e for e in result.engines}
    bf16 = engines["pytorch-bf16"]
    assert bf16.backend == "pytorch" and bf16.kind == "bf16" and bf16.size_bytes == engines["pytorch"].size_bytes
    examples = load_examples(tiny_classifier[2])
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier[0])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier[0]).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        predicted = [int(model(**tokenizer([t], return_tensors="pt")).logits.argmax()) for t in examples.texts]
    truth = [["negative", "positive"].index(y) for y in examples.labels]
    assert bf16.accuracy == pytest.approx(np.mean(np.array(predicted) == truth), abs=0.03)  # bf16 rounding at 0.5
    assert 0.9 <= bf16.agreement <= 1.0
