"""The OpenVINO backend: fp32-ov and NNCF int8-ov variants, the same predictor API, and `auto` routing, on real
exports of the tiny classifier (routing's plan alone: tests/runtime/test_routing.py; the guard's search alone:
test_guard.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import (
    BLOCKER,
    NO_VETO,
    assert_thread_safe,
    break_quantizer,
    make_rows,
    pytorch_engines,
    pytorch_logits,
    running,
    softmax,
    tiny_deberta,
    varied_texts,
    write_csv,
)

from bertdeploy.benchmark.run import BenchOptions, bench
from bertdeploy.builder.export import ExportOptions, export
from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.backends import OpenVinoModel
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.runtime.routing import plan_routes

TEXTS = [r["text"] for r in make_rows(40, seed=11)]  # for the server


def _cpu_precision() -> str:
    import openvino

    return "bf16" if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


@pytest.fixture(scope="module")
def ov_artifacts(tiny_classifier, tmp_path_factory):
    """The tiny classifier exported with ONNX Runtime INT8 and both OpenVINO variants, none refused: whether NNCF's
    INT8 keeps a random tiny model's accuracy depends on the CPU (AMX hosts refused it), and these are mechanics."""
    out = tmp_path_factory.mktemp("ov") / "onnx"
    export(ExportOptions(model_dir=tiny_classifier[0], output_dir=out, quantize=["int8", "int8-ov"], openvino=True,
                         max_accuracy_drop=NO_VETO))
    return out


def _copy(artifacts, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(artifacts, copy)
    return copy


def _set_auto(directory, p50: dict) -> None:
    """Give the manifest these timings (variant -> {batch size in padded tokens: ms}), as bench would record them."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["auto"] = {**manifest["auto"], "p50_ms": p50, "eligible": list(p50)}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_export_ships_both_openvino_variants(ov_artifacts, tiny_classifier):
    manifest = ExportManifest.read(ov_artifacts)
    variants = manifest.variants
    assert list(variants) == ["fp32", "fp32-ov", "int8", "int8-ov"] and manifest.default_variant in ("fp32", "int8")
    fp32_ov, int8_ov = variants["fp32-ov"], variants["int8-ov"]
    assert fp32_ov.file == "model.onnx" and fp32_ov.sha256 == variants["fp32"].sha256  # no second export
    assert fp32_ov.backend == int8_ov.backend == "openvino" and variants["int8"].backend == "onnxruntime"
    assert fp32_ov.precision == int8_ov.precision == _cpu_precision()
    assert int8_ov.file == "model_int8_ov.onnx" and int8_ov.quantization["tool"] == "nncf"
    assert int8_ov.quantization["calibration_texts"] == 160  # the whole (small) training file
    graph = onnx.load(str(ov_artifacts / int8_ov.file))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) >= 8  # really quantized: QDQ around MatMuls
    assert int8_ov.size_bytes == (ov_artifacts / int8_ov.file).stat().st_size
    for entry in variants.values():
        assert set(entry.eval) == {"accuracy", "macro_f1", "accuracy_drop"}
        assert set(entry.latency_ms) == {"batch_1", "batch_8", "batch_32"}
    auto = manifest.auto
    assert auto.measured_by == "export" and set(auto.p50_ms) == set(variants) == set(auto.eligible)
    assert auto.unit == "padded tokens" and auto.routes[-1].max_tokens is None
    assert all(r.backend == variants[r.variant].backend for r in auto.routes)


def test_openvino_predictions_match_pytorch_and_onnx_runtime(ov_artifacts, tiny_classifier):
    texts = varied_texts(60, seed=21)
    expected = softmax(pytorch_logits(tiny_classifier[0], texts))
    fp32_ov = Predictor.load(ov_artifacts, variant="fp32-ov", threads=1)
    assert fp32_ov.backend == "openvino" and fp32_ov.providers[0].startswith(f"OpenVINO CPU ({_cpu_precision()}")
    model = fp32_ov.routes[0].model
    assert model.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(model.compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    scores = fp32_ov.predict_proba(texts)
    assert scores.shape == (len(texts), 2) and scores.dtype == np.float32
    assert np.abs(scores - expected).max() < (0.02 if _cpu_precision() == "bf16" else 1e-4)
    assert np.mean(scores.argmax(-1) == expected.argmax(-1)) >= 0.95
    int8_ov = Predictor.load(ov_artifacts, backend="openvino", variant="int8-ov")
    quantized = int8_ov.predict_proba(texts)  # its accuracy on a random tiny model depends on the CPU: not judged here
    assert quantized.shape == (len(texts), 2) and np.allclose(quantized.sum(-1), 1, atol=1e-5)
    assert int8_ov.predict([]) == [] and int8_ov.predict([""])[0].label in int8_ov.labels
    throughput = Predictor.load(ov_artifacts, variant="int8-ov", hint="throughput")
    assert str(throughput.routes[0].model.compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
    assert np.allclose(throughput.predict_proba(texts), int8_ov.predict_proba(texts), atol=1e-3)


def test_one_openvino_predictor_shared_by_threads(ov_artifacts):
    assert_thread_safe(Predictor.load(ov_artifacts, variant="int8-ov"), varied_texts(120, seed=22), [1, 3, 6, 2] * 5)


def test_backend_and_variant_must_fit(ov_artifacts, tiny_artifacts):
    with pytest.raises(BertdeployError, match="variant 'int8-ov' runs on openvino, not onnxruntime; its onnxruntime "
                                              "variants are fp32, int8"):
        Predictor.load(ov_artifacts, variant="int8-ov", backend="onnxruntime")
    with pytest.raises(BertdeployError, match="no OpenVINO variants; export with --openvino"):
        Predictor.load(tiny_artifacts, backend="openvino")
    with pytest.raises(BertdeployError, match="unknown backend 'tensorflow'"):
        Predictor.load(ov_artifacts, backend="tensorflow")
    openvino_only = Predictor.load(ov_artifacts, backend="openvino")  # the fastest OpenVINO variant(s) per size
    assert {r.model.backend for r in openvino_only.routes} == {"openvino"}
    default = ExportManifest.read(ov_artifacts).default_variant
    assert Predictor.load(ov_artifacts, backend="onnxruntime").variant == default
    with pytest.raises(BertdeployError, match="OpenVINO cannot load it"):
        bad = ov_artifacts.parent / "bad.onnx"
        bad.write_bytes(b"not a graph")
        OpenVinoModel(bad)


def test_auto_runs_each_batch_on_the_variant_fastest_at_its_size(ov_artifacts, tmp_path):
    copy = _copy(ov_artifacts, tmp_path)
    _set_auto(copy, {"int8": {"16": 1.0, "128": 10.0, "512": 40.0}, "int8-ov": {"16": 1.5, "128": 6.0, "512": 25.0},
                     "fp32": {"16": 3.0, "128": 20.0, "512": 80.0}})
    auto = Predictor.load(copy)
    assert auto.variant == auto.backend == "auto"
    assert [(r.max_tokens, r.variant, r.model.backend) for r in auto.routes] == \
        [(45, "int8", "onnxruntime"), (None, "int8-ov", "openvino")]
    assert "up to 45 tokens: int8 on CPUExecutionProvider; 46+ tokens: int8-ov on OpenVINO CPU" in auto.describe()
    int8, int8_ov = (Predictor.load(copy, variant=v) for v in ("int8", "int8-ov"))
    # routed by texts x padded length: one short text (8 tokens) and 4 of them (32) to int8, and one long text
    # (32 tokens) too; 8 short ones (64) and 2 long ones (64) to int8-ov
    short, long = "好", "这个手机很好用，" * 6
    lengths = [len(e.ids) for e in auto.encoder.tokenize([short, long])]
    assert lengths[0] <= 8 and 24 < lengths[1] <= 32  # the tiny model's max length is 32
    for texts, engine in (([short], int8), ([short] * 4, int8), ([long], int8), ([short] * 8, int8_ov),
                          ([long] * 2, int8_ov)):
        assert np.array_equal(auto.predict_proba(texts), engine.predict_proba(texts)), (len(texts), engine.variant)
    eight = [short] * 8
    assert not np.array_equal(int8.predict_proba(eight), int8_ov.predict_proba(eight))  # the check can fail
    auto.warm_up()
    # only OpenVINO asked for: its variants only
    assert [r.variant for r in Predictor.load(copy, backend="openvino").routes] == ["int8-ov"]


def test_bench_measures_openvino_and_records_the_ranges(ov_artifacts, tiny_classifier, tmp_path):
    copy = _copy(ov_artifacts, tmp_path)
    result = bench(BenchOptions(copy, eval_file=tiny_classifier[2], batch_sizes=[1, 8], seq_lengths=[16], runs=5,
                                warmup=1, threads=1))
    engines = {e.name: e for e in result.engines}
    assert list(engines) == [*pytorch_engines(), "fp32", "fp32-ov", "int8", "int8-ov", "auto"]
    assert engines["int8-ov"].backend == "openvino" and engines["fp32-ov"].size_bytes == engines["fp32"].size_bytes
    examples = tiny_classifier[2]
    from bertdeploy.builder.examples import load_examples

    data = load_examples(examples)
    truth = np.array([["negative", "positive"].index(y) for y in data.labels])
    predicted = Predictor.load(copy, variant="int8-ov").predict_proba(data.texts).argmax(-1)
    assert engines["int8-ov"].accuracy == pytest.approx(np.mean(predicted == truth))
    manifest = ExportManifest.read(copy)
    assert manifest.auto == result.auto and result.auto.measured_by == "bench"
    sizes = {t.padded_tokens for t in result.timings}
    assert {16, 128} <= sizes  # 1 and 8 x 16 tokens, and the natural cells
    for name in ("fp32", "fp32-ov", "int8", "int8-ov"):
        assert set(result.auto.p50_ms[name]) == {str(size) for size in sizes}
        for size in sizes:
            cells = [t.p50_ms for t in result.timings if t.engine == name and t.padded_tokens == size]
            assert result.auto.p50_ms[name][str(size)] == pytest.approx(np.exp(np.mean(np.log(cells))), rel=1e-3)
    runtimes = {name: manifest.variants[name].backend for name in result.auto.eligible}
    expected = plan_routes(result.auto.p50_ms, list(result.auto.eligible), runtimes)
    assert [(r.max_tokens, r.variant) for r in result.auto.routes] == expected
    assert [(r.max_tokens, r.variant) for r in Predictor.load(copy).routes] == expected
    before = (copy / "manifest.json").read_bytes()
    bench(BenchOptions(copy, batch_sizes=[1], seq_lengths=[16], runs=2, warmup=0, threads=1, record=False))
    bench(BenchOptions(copy, variants=["int8"], batch_sizes=[1], seq_lengths=[16], runs=2, warmup=0, threads=1))
    assert (copy / "manifest.json").read_bytes() == before  # --no-record, and a partial run, leave it alone


def test_a_graph_openvino_cannot_compile_is_refused_and_the_rest_ships(tmp_path):
    """DeBERTa-v3's relative attention exports to an ONNX `If` of dynamic rank, which OpenVINO's CPU plugin
    does not compile (2026.4): fp32-ov is refused with OpenVINO's reason, not the whole export."""
    model = tiny_deberta(tmp_path / "deberta-v3", relative_attention=True, position_buckets=256,
                         pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
                         position_biased_input=False)
    done = CliRunner().invoke(cli, ["export", str(model), "--output-dir", str(tmp_path / "onnx"), "--quantize", "int8",
                                    "--openvino", "--max-accuracy-drop", str(NO_VETO)])
    assert done.exit_code == 0, done.output
    manifest = ExportManifest.read(tmp_path / "onnx")
    assert {"fp32", "int8"} <= set(manifest.variants)
    if "fp32-ov" in manifest.rejected:  # a later OpenVINO may compile it: then it ships like any other
        reason = manifest.rejected["fp32-ov"].reason
        assert reason.startswith("OpenVINO cannot load it: ") and "dynamic rank" in reason
        assert "refused fp32-ov: OpenVINO cannot load it" in done.stdout
        assert (tmp_path / "onnx" / "model.onnx").is_file()  # the fp32 file it shares stays
    else:
        assert "fp32-ov" in manifest.variants


def test_the_guard_refuses_a_bad_int8_ov_after_searching_to_the_bound(tiny_classifier, tmp_path, monkeypatch):
    calls = break_quantizer(monkeypatch, "quantize_openvino_int8")
    result = export(ExportOptions(tiny_classifier[0], tmp_path / "out", quantize=["int8-ov"]))
    refused = next(v for v in result.variants if v.name == "int8-ov")
    assert not refused.shipped and "points below PyTorch" in refused.reason and refused.backend == "openvino"
    ranked = refused.quantization["float_candidates"]  # as asked, then 1, 2, 4, 8 and every ranked node in float
    assert [len(c) for c in calls] == [0, 1, 2, 4, 8, ranked]
    # where the CPU computes bf16, the plain build is judged again at f32 first (the same file: no rebuild)
    again = [0] if _cpu_precision() == "bf16" else []
    assert [a["nodes_kept_float"] for a in refused.attempts] == [0, *again, 1, 2, 4, 8, ranked]
    assert [a["precision"] for a in refused.attempts[:1 + len(again)]] == [_cpu_precision(), *["f32"] * len(again)]
    assert not (tmp_path / "out" / "model_int8_ov.onnx").exists()
    manifest = ExportManifest.read(tmp_path / "out")
    assert "int8-ov" not in manifest.variants and manifest.rejected["int8-ov"].reason == refused.reason
    assert manifest.rejected["int8-ov"].eval["accuracy_drop"] > 1.0


# -- the inference precision is part of an OpenVINO variant ------------------------------------------------------

@pytest.fixture(scope="module")
def f32_artifacts(tiny_classifier, tmp_path_factory):
    """fp32-ov and int8-ov exported where the CPU's default precision is said to be bf16 and every OpenVINO run
    at a precision other than f32 gives negated logits: both miss the bound there (by ~90 points) and hold it at
    f32, on any CPU. The bound, 50 points, is one only the negation misses: what NNCF does to a random tiny
    model's accuracy differs by CPU. Scored on texts of mixed lengths (from 9 to 32 tokens), so that the batches
    and their padding matter. Returns the directory, the result, the int8-ov builds and the eval file."""
    from bertdeploy.builder import guard, quantize
    from bertdeploy.builder.guard import Judge

    run, builds = Judge.run, []
    build = quantize.quantize_openvino_int8

    def negated_unless_f32(self, path, backend="onnxruntime", precision=None):
        logits, model = run(self, path, backend, precision)
        return (logits if backend != "openvino" or model.precision == "f32" else -logits), model

    def counted(*args, **kwargs):
        builds.append(kwargs.get("exclude"))
        return build(*args, **kwargs)

    folder = tmp_path_factory.mktemp("f32")
    rows = [{**row, "text": row["text"] * (1 + i % 3)} for i, row in enumerate(make_rows(120, seed=3))]
    eval_file, out = write_csv(folder / "eval.csv", rows), folder / "onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guard, "default_precision", lambda: "bf16")
        patch.setattr(Judge, "run", negated_unless_f32)
        patch.setattr(quantize, "quantize_openvino_int8", counted)
        result = export(ExportOptions(tiny_classifier[0], out, quantize=["int8", "int8-ov"], openvino=True,
                                      eval_file=eval_file, max_accuracy_drop=50.0))
    return out, result, builds, eval_file


def test_a_variant_that_misses_the_bound_at_bf16_ships_at_f32_and_runs_at_it(f32_artifacts):
    out, result, builds, _ = f32_artifacts
    manifest = ExportManifest.read(out)
    assert set(manifest.variants) == {"fp32", "fp32-ov", "int8", "int8-ov"} and not manifest.rejected
    assert manifest.variants["int8"].precision is None and len(manifest.variants["int8"].attempts) == 1
    for name in ("fp32-ov", "int8-ov"):
        entry = manifest.variants[name]
        assert entry.precision == "f32", name
        assert [(a["precision"], a["passed"]) for a in entry.attempts] == [("bf16", False), ("f32", True)], name
        assert entry.attempts[0]["eval"]["accuracy_drop"] > 50 >= entry.eval["accuracy_drop"], name
    assert builds == [[]]  # int8-ov was built once, with no node in float: only the precision changed
    assert manifest.variants["int8-ov"].quantization["float_nodes"] == []
    from bertdeploy import render

    table = render.export(result)
    assert "fp32-ov      openvino f32" in table and "int8-ov      openvino f32" in table
    assert "int8-ov: runs at f32 inference precision (at bf16 it missed the bound" in table


def test_the_predictor_bench_and_cli_run_a_variant_at_its_recorded_precision(f32_artifacts, tiny_classifier,
                                                                            tmp_path):
    out = f32_artifacts[0]
    for name in ("fp32-ov", "int8-ov"):
        model = Predictor.load(out, variant=name, threads=1).routes[0].model
        assert model.precision == "f32" and model.providers[0].startswith("OpenVINO CPU (f32, 1 threads"), name
    auto = Predictor.load(out, backend="openvino", threads=1)
    assert {r.model.precision for r in auto.routes} == {"f32"}
    # the user's override wins over the manifest, for every OpenVINO variant; ONNX Runtime's take no precision
    override = Predictor.load(out, variant="int8-ov", precision="bf16", threads=1)
    assert override.routes[0].model.precision == "bf16" and override.options.precision == "bf16"
    assert Predictor.load(out, variant="fp32", precision="bf16").backend == "onnxruntime"
    with pytest.raises(BertdeployError, match="unknown OpenVINO precision 'f16'; use bf16 or f32"):
        Predictor.load(out, precision="f16")
    # a manifest without the field (an older export): the CPU's default, as before
    copy = _copy(out, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["variants"]["int8-ov"]["precision"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Predictor.load(copy, variant="int8-ov", threads=1).routes[0].model.precision == _cpu_precision()
    # bench compiles each OpenVINO variant at its recorded precision
    from bertdeploy.benchmark.lineup import pick_engines

    engines = {e.name: e for e in pick_engines(BenchOptions(out, threads=1), ExportManifest.read(out))}
    assert engines["int8-ov"].precision == engines["fp32-ov"].precision == "f32"
    assert engines["int8-ov"].load().precision == "f32" and engines["fp32"].precision is None
    # predict (and serve) take --precision into the RuntimeOptions every engine passes
    source = write_csv(tmp_path / "in.csv", make_rows(6, seed=24))
    runner = CliRunner()
    done = runner.invoke(cli, ["predict", str(out), str(source), "--variant", "int8-ov", "--threads", "1"])
    assert done.exit_code == 0, done.output
    assert "int8-ov on OpenVINO CPU (f32, 1 threads" in done.stderr
    done = runner.invoke(cli, ["predict", str(out), str(source), "--variant", "int8-ov", "--threads", "1",
                               "--precision", "bf16"])
    assert done.exit_code == 0, done.output
    assert "int8-ov on OpenVINO CPU (bf16, 1 threads" in done.stderr


def test_the_accuracy_recorded_is_what_predict_gives(f32_artifacts, tmp_path):
    """The guard scores each variant as the predictor runs it (its batches and padding, OpenVINO at the recorded
    precision): `predict` on the eval file gives the figures the manifest records, and the guard's scores are
    the predictor's, bit for bit. Dynamic INT8 scales each batch's activations, so other batches would move its
    scores (a random tiny model's figures mean nothing else)."""
    from bertdeploy.builder.examples import load_examples
    from bertdeploy.builder.guard import Judge
    from bertdeploy.predict.local import predict_file
    from bertdeploy.predict.rows import PredictFileOptions
    from bertdeploy.runtime.encoding import load_encoder
    from bertdeploy.runtime.options import RuntimeOptions

    out, _, _, eval_file = f32_artifacts
    manifest = ExportManifest.read(out)
    assert manifest.evaluation.source == str(eval_file) and manifest.evaluation.texts == 120
    examples, scheme = load_examples(eval_file), manifest.scheme
    encoder = load_encoder(out / "tokenizer.json", manifest.max_length)
    judge = Judge(examples, scheme, np.zeros((len(examples), 2), dtype=np.float32), encoder, device="cpu",
                  max_accuracy_drop=1.0)
    for name, entry in manifest.variants.items():
        scored = predict_file(PredictFileOptions(out, str(eval_file), tmp_path / f"{name}.csv",
                                                 RuntimeOptions(variant=name)))
        assert scored.scored == 120
        for figure in ("accuracy", "macro_f1"):
            assert scored.report[figure] == pytest.approx(entry.eval[figure], abs=1e-9), (name, figure)
        logits, _ = judge.run(out / entry.file, entry.backend, entry.precision)
        predicted = Predictor.load(out, variant=name).predict_proba(examples.texts)
        assert np.array_equal(scheme.activate(logits), predicted), name


def test_cli_export_predict_and_errors(tiny_classifier, ov_artifacts, tmp_path):
    runner = CliRunner()
    done = runner.invoke(cli, ["export", str(tiny_classifier[0]), "--output-dir", str(tmp_path / "onnx"),
                               "--openvino", "--quantize", "int8-ov", "--max-accuracy-drop", str(NO_VETO)])
    assert done.exit_code == 0, done.output
    assert f"fp32-ov      openvino {_cpu_precision()}" in done.stdout and "\nauto: " in done.stdout
    rows = make_rows(12, seed=23)
    source = write_csv(tmp_path / "in.csv", rows)
    done = runner.invoke(cli, ["predict", str(ov_artifacts), str(source), "--backend", "openvino"])
    assert done.exit_code == 0, done.output
    assert "on OpenVINO CPU" in done.stderr and "CPUExecutionProvider" not in done.stderr
    done = runner.invoke(cli, ["predict", str(ov_artifacts), str(source), "--backend", "openvino", "--variant", "int8"])
    assert done.exit_code == 2 and "Error: variant 'int8' runs on onnxruntime, not openvino" in done.output
    done = runner.invoke(cli, ["export", str(tiny_classifier[0]), "--output-dir", str(tmp_path / "gpu"), "--openvino",
                               "--device", "cuda"])
    assert done.exit_code == 2 and "built and checked on the CPU" in done.output
    assert not (tmp_path / "gpu").exists()


OPENVINO_BLOCKER = BLOCKER.replace('{"torch", "transformers", "optimum", "datasets"}',
                                   '{"torch", "transformers", "optimum", "datasets", "openvino"}')


def test_torch_free_with_openvino_and_a_clear_message_without_it(ov_artifacts, tiny_classifier, tmp_path):
    heavy = '{"torch", "transformers", "optimum", "datasets"}'
    script = BLOCKER + textwrap.dedent(f"""
        from bertdeploy.runtime.predictor import Predictor
        p = Predictor.load({str(ov_artifacts)!r}, variant="int8-ov")
        print(p.backend, p.predict(["好", "差"])[0].label in p.labels)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["openvino True", "[]"]

    script = OPENVINO_BLOCKER + textwrap.dedent(f"""
        from bertdeploy.errors import BertdeployError
        from bertdeploy.runtime.predictor import Predictor
        p = Predictor.load({str(ov_artifacts)!r})  # auto: ONNX Runtime's variants only
        print(sorted({{r.model.backend for r in p.routes}}))
        try:
            Predictor.load({str(ov_artifacts)!r}, backend="openvino")
        except BertdeployError as e:
            print(e)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == [
        "['onnxruntime']", "the OpenVINO backend needs the openvino package: install bertdeploy's 'openvino' extra "
                           "(pip install '.[openvino]' in its checkout)"]

    script = BLOCKER.replace('{"torch", "transformers", "optimum", "datasets"}', '{"nncf"}') + textwrap.dedent(f"""
        from bertdeploy.cli import main
        sys.argv = ["bertdeploy", "export", {str(tiny_classifier[0])!r}, "--output-dir", "out", "--quantize", "int8-ov"]
        main()
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 2 and "Error: int8-ov needs NNCF: install bertdeploy's 'openvino-int8' extra" in run.stderr
    assert not (tmp_path / "out").exists()


def test_server_with_auto_over_both_runtimes(ov_artifacts, tmp_path):
    import httpx

    copy = _copy(ov_artifacts, tmp_path)
    _set_auto(copy, {"int8": {"32": 1.0, "256": 10.0}, "int8-ov": {"32": 1.5, "256": 6.0}})
    auto = Predictor.load(copy, threads=1)
    assert [r.variant for r in auto.routes] == ["int8", "int8-ov"]
    int8, int8_ov = (Predictor.load(copy, variant=v, threads=1) for v in ("int8", "int8-ov"))
    with running(auto, max_wait_ms=20) as url:  # ready only after every model's warm-up
        one = httpx.post(f"{url}/predict", json={"text": TEXTS[0], "all_scores": True}).json()
        assert one["variant"] == "auto"
        assert np.allclose(list(one["predictions"][0]["scores"].values()), int8.predict_proba(TEXTS[:1])[0], atol=1e-6)
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda t: httpx.post(f"{url}/predict", json={"text": t, "all_scores": True},
                                                         timeout=30).json(), TEXTS))
    # whichever model each batch ran on, every answer is one of the two models' scores for that text
    for text, answer in zip(TEXTS, answers, strict=True):
        scores = np.array(list(answer["predictions"][0]["scores"].values()))
        assert min(np.abs(scores - m.predict_proba([text])[0]).max() for m in (int8, int8_ov)) < 0.02
