"""The torch-free predictor on the tiny classifier's real exports."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import BLOCKER, assert_thread_safe, make_rows, pytorch_logits, softmax, varied_texts, write_jsonl

from bertdeploy.errors import BertdeployError
from bertdeploy.host import usable_cpus
from bertdeploy.runtime.encoding import padded_length, plan_batches
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Prediction, Predictor


def test_scores_match_pytorch_in_the_callers_order(tiny_artifacts, tiny_classifier):
    texts = varied_texts(60, seed=3)
    expected = softmax(pytorch_logits(tiny_classifier[0], texts))
    p = Predictor.load(tiny_artifacts, variant="fp32")
    assert p.labels == ["negative", "positive"] and p.variant == "fp32" and p.providers[0] == "CPUExecutionProvider"
    probabilities = p.predict_proba(texts)
    assert probabilities.shape == (len(texts), 2) and probabilities.dtype == np.float32
    assert np.abs(probabilities - expected).max() < 1e-5
    predictions = p.predict(texts)
    assert all(isinstance(x, Prediction) for x in predictions)
    assert [x.label for x in predictions] == [p.labels[i] for i in expected.argmax(-1)]
    assert all(abs(x.score - max(x.scores.values())) < 1e-7 and abs(sum(x.scores.values()) - 1) < 1e-5
               for x in predictions)
    # small batches (a token budget of 16: one text each) give the same fp32 scores
    small = Predictor.load(tiny_artifacts, variant="fp32", max_batch_tokens=16)
    assert np.abs(small.predict_proba(texts) - probabilities).max() < 1e-5


def test_default_variant_is_the_manifests_and_int8_agrees(tiny_artifacts):
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert Predictor.load(tiny_artifacts, backend="onnxruntime").variant == manifest["default_variant"]
    auto = Predictor.load(tiny_artifacts)  # the ranges export measured
    assert [(r.max_tokens, r.variant) for r in auto.routes] == \
        [(r["max_tokens"], r["variant"]) for r in manifest["auto"]["routes"]]
    texts = varied_texts(40, seed=4)
    fp32 = Predictor.load(tiny_artifacts, variant="fp32").predict_proba(texts)
    int8 = Predictor.load(tiny_artifacts, variant="int8").predict_proba(texts)
    assert np.mean(fp32.argmax(-1) == int8.argmax(-1)) >= 0.95
    with pytest.raises(BertdeployError, match="no variant 'int4'; it has fp32, int8"):
        Predictor.load(tiny_artifacts, variant="int4")


def test_edge_cases(tiny_artifacts):
    p = Predictor.load(tiny_artifacts)
    assert p.predict([]) == [] and p.predict_proba([]).shape == (0, 2)
    (empty,) = p.predict([""])
    assert empty.label in p.labels and 0.5 <= empty.score <= 1
    assert p.predict("好") == p.predict(["好"])  # one string is one text, not its characters
    with pytest.raises(TypeError, match=r"texts\[2\] is int, not str"):
        p.predict(["好", "差", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        p.predict_proba([None])
    with pytest.raises(ValueError, match="trained on single texts"):
        p.predict(["好"], pairs=["差"])
    with pytest.raises(BertdeployError, match="long_text must be one of truncate, chunk"):
        Predictor.load(tiny_artifacts, long_text="drop")


def test_batches_follow_the_token_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(500)] + [700]
    batches = plan_batches(lengths, max_batch_tokens=1024, max_batch_size=16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * padded_length(longest) <= 1024
    assert [len(lengths) - 1] in [b.tolist() for b in batches]  # longer than the budget: a batch of its own
    assert padded_length(1) == 8 and padded_length(8) == 8 and padded_length(9) == 16
    assert plan_batches([]) == []
    capped = plan_batches(lengths, max_batch_tokens=1024, max_batch_size=16, max_padding=0.25)
    assert sorted(np.concatenate(capped).tolist()) == list(range(len(lengths)))
    for batch in capped:
        own = sum(padded_length(lengths[i]) for i in batch)
        assert len(batch) == 1 or len(batch) * padded_length(max(lengths[i] for i in batch)) <= 1.25 * own
    assert len(capped) > len(batches)
    # short texts of one padded width still share a batch; a long one after them starts its own
    assert [b.tolist() for b in plan_batches([3, 5, 7, 60], 1024, 16, 0.25)] == [[0, 1, 2], [3]]


def test_pad_to_a_multiple_of_eight(tiny_artifacts):
    p = Predictor.load(tiny_artifacts)
    feed = p.encoder.pad(p.encoder.tokenize(["好", "这个手机很好"]), p.input_names)  # 3 and 8 tokens
    assert feed["input_ids"].shape == (2, 8) and feed["input_ids"].dtype == np.int64
    assert p.encoder.pad(p.encoder.tokenize(["这个手机真好"]), p.input_names)["input_ids"].shape == (1, 8)
    assert p.encoder.pad(p.encoder.tokenize(["这个手机真的好"]), p.input_names)["input_ids"].shape == (1, 16)
    assert feed["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}


def test_long_texts_chunked_into_windows_and_averaged(tiny_artifacts):
    p = Predictor.load(tiny_artifacts, variant="fp32", long_text="chunk")
    truncating = Predictor.load(tiny_artifacts, variant="fp32")
    short, long = "这个手机真的很好", "很好，喜欢！" * 10 + "差，失望，退货。" * 10
    assert np.abs(p.predict_proba([short]) - truncating.predict_proba([short])).max() < 1e-6
    windows, owners = p.encoder.windows([long])
    assert len(windows) >= 3 and (owners == 0).all()
    assert all(len(w.ids) <= 32 and w.ids[0] == windows[0].ids[0] for w in windows)  # each starts with [CLS]
    each = np.array([truncating.run_batch(p.encoder.pad([w], p.input_names))[0] for w in windows])
    assert np.abs(p.predict_proba([long])[0] - softmax(each).mean(0)).max() < 1e-5
    assert np.abs(p.predict_proba([long]) - truncating.predict_proba([long])).max() > 1e-3  # the tail counts


def test_one_predictor_shared_by_threads_gives_the_serial_results(tiny_artifacts):
    assert_thread_safe(Predictor.load(tiny_artifacts, variant="int8"), varied_texts(200, seed=5), [1, 3, 7, 20] * 5)


def test_runs_with_torch_transformers_optimum_and_datasets_blocked(tiny_artifacts, tmp_path):
    script = BLOCKER + textwrap.dedent(f"""
        from bertdeploy.runtime.predictor import Predictor
        p = Predictor.load({str(tiny_artifacts)!r})
        print(p.predict(["好", "差"])[0].label)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "transformers", "optimum", "datasets"}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["positive", "[]"]
    sanity = subprocess.run([sys.executable, "-c", BLOCKER + "import transformers"], capture_output=True)
    assert sanity.returncode != 0  # the blocker really blocks


def test_missing_files_and_wrong_directories_are_named(tiny_artifacts, tiny_classifier, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifacts, copy)
    (copy / "model_int8.onnx").unlink()
    with pytest.raises(BertdeployError, match=r"model_int8.onnx: missing; the manifest lists it as variant 'int8'"):
        Predictor.load(copy, variant="int8")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BertdeployError, match="tokenizer.json: missing; the manifest lists it as the tokenizer"):
        Predictor.load(copy, variant="fp32")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 2}))
    with pytest.raises(BertdeployError, match="schema version 2"):
        Predictor.load(copy)
    with pytest.raises(BertdeployError, match="expected 'onnx'"):
        Predictor.load(tiny_classifier[0])  # the fine-tuned model, not the export
    with pytest.raises(BertdeployError, match="no such directory"):
        Predictor.load(tmp_path / "nope")


def test_providers_and_threads(tiny_artifacts):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BertdeployError,
                           match=r"CUDAExecutionProvider is not in this ONNX Runtime.*pip install '\.\[gpu\]'"):
            Predictor.load(tiny_artifacts, providers="cuda")
    with pytest.raises(BertdeployError, match="provider NPUExecutionProvider is not in this ONNX Runtime"):
        Predictor.load(tiny_artifacts, providers=["NPUExecutionProvider"])
    p = Predictor.load(tiny_artifacts, threads=1, spinning=False)
    options = p.routes[0].model.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert Predictor.load(tiny_artifacts).max_batch_tokens == 1024  # the CPU default
    default = Predictor.load(tiny_artifacts).routes[0].model.session.get_session_options()
    assert default.intra_op_num_threads == usable_cpus()
    assert default.get_session_config_entry("session.intra_op.allow_spinning") == "1"  # as ONNX Runtime's default


def test_load_takes_one_runtime_options_object_or_its_fields_by_name(tiny_artifacts):
    options = RuntimeOptions(variant="fp32", threads=1, spinning=False, long_text="chunk", max_batch_tokens=64,
                             max_batch_size=4)
    assert pickle.loads(pickle.dumps(options)) == options  # what the Ray engines send to their actors and replicas
    p = Predictor.load(tiny_artifacts, options=options)
    assert p.options == options and p.variant == "fp32"
    assert (p.long_text, p.max_batch_tokens, p.max_batch_size) == ("chunk", 64, 4)
    session = p.routes[0].model.session.get_session_options()
    assert session.intra_op_num_threads == 1
    assert session.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    by_name = Predictor.load(tiny_artifacts, variant="fp32", threads=1, spinning=False, long_text="chunk",
                             max_batch_tokens=64, max_batch_size=4)
    assert by_name.options == options
    texts = varied_texts(20, seed=13)
    assert np.array_equal(by_name.predict_proba(texts), p.predict_proba(texts))
    # a field given by name takes the place of the object's
    assert Predictor.load(tiny_artifacts, options=options, long_text="truncate").options == \
        dataclasses.replace(options, long_text="truncate")
    assert Predictor.load(tiny_artifacts).options == RuntimeOptions()
    with pytest.raises(TypeError, match="thread"):
        Predictor.load(tiny_artifacts, thread=2)
    with pytest.raises(TypeError):
        Predictor.load(tiny_artifacts, "fp32")  # the settings go by name


@pytest.mark.parametrize(("settings", "message"), [
    ({"threads": 0}, "--threads must be at least 1"),
    ({"max_batch_tokens": 4}, "--max-batch-tokens must be at least 8"),
    ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
    ({"long_text": "drop"}, "long_text must be one of truncate, chunk"),
    ({"backend": "tensorflow"}, "unknown backend 'tensorflow'; use auto, onnxruntime, openvino"),
    ({"hint": "fast"}, "unknown OpenVINO hint 'fast'; use latency or throughput"),
])
def test_runtime_options_refuse_bad_values(settings, message):
    with pytest.raises(BertdeployError) as refused:
        RuntimeOptions(**settings)
    assert str(refused.value) == message


def test_usable_cpus_follow_the_affinity_mask():
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and at least 2 CPUs")
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "from bertdeploy.host import usable_cpus; print(usable_cpus())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "1"


def test_sentence_pairs(tiny_model_dir, tmp_path):
    from bertdeploy.builder.export import ExportOptions, export
    from bertdeploy.builder.train import FinetuneOptions, finetune

    rows = [{"a": r["text"], "b": "这个", "y": r["label"]} for r in make_rows(80, seed=6)]
    finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=write_jsonl(tmp_path / "pairs.jsonl", rows),
                             output_dir=tmp_path / "model", text_column="a", text_pair_column="b",
                             label_column="y", epochs=1, max_length=32))
    export(ExportOptions(model_dir=tmp_path / "model", output_dir=tmp_path / "onnx", quantize=[]))
    p = Predictor.load(tmp_path / "onnx")
    texts, pairs = [r["a"] for r in rows[:20]], [r["b"] * (i % 4) for i, r in enumerate(rows[:20])]
    expected = softmax(pytorch_logits(tmp_path / "model", texts, pairs))
    # tight: the untrained head's logits are ~0.01, so a token off (e.g. an empty pair's [SEP]) moves them ~1e-5
    assert np.abs(p.predict_proba(texts, pairs) - expected).max() < 1e-6
    with pytest.raises(ValueError, match=r"trained on text pairs \(a, b\); pass pairs="):
        p.predict(texts)
    with pytest.raises(ValueError, match="20 texts but 2 pairs"):
        p.predict(texts, pairs[:2])


@pytest.mark.gpu
def test_cuda_with_io_binding_matches_the_cpu(tiny_artifacts):
    texts = varied_texts(60, seed=12)
    cpu = Predictor.load(tiny_artifacts, variant="fp32")
    gpu = Predictor.load(tiny_artifacts, variant="fp32", providers="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.routes[0].model.on_gpu
    assert np.abs(gpu.predict_proba(texts) - cpu.predict_proba(texts)).max() < 1e-4
    with ThreadPoolExecutor(max_workers=4) as pool:
        serial = gpu.predict_proba(texts[:9])
        assert all(np.array_equal(a, serial) for a in pool.map(gpu.predict_proba, [texts[:9]] * 8))
