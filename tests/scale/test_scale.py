"""Scaling out on existing engines: torchrun for training, Ray Data for bulk inference, Ray Serve for serving.

The Ray tests run a real local cluster (in this process, or started by `bertdeploy serve --engine ray`), on 2
CPUs, with its files under pytest's temp dirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import (
    PREDICT_RUNTIME,
    PREDICT_RUNTIME_ARGS,
    SERVE_RUNTIME,
    SERVE_RUNTIME_ARGS,
    make_rows,
    varied_texts,
    write_csv,
    write_jsonl,
)

from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError
from bertdeploy.predict.ray_engine import predict_file_ray
from bertdeploy.predict.rows import PredictFileOptions
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve.httpapi import KEY_REFUSED, ServeOptions


def test_finetune_under_torchrun_trains_in_two_processes_and_writes_once(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", make_rows(160, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(40, seed=2))
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bertdeploy",
         "finetune", "--model", str(tiny_model_dir), "--train-file", str(train), "--eval-file", str(test),
         "--output-dir", str(out), "--epochs", "2", "--max-length", "32", "--batch-size", "8", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # one JSON document: only the main process printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "test.csv", "train.csv"]  # no .partial left
    assert result["accuracy"] == manifest["metrics"]["accuracy"]
    # 160 texts, 8 per process and step, 2 processes: 10 optimizer steps an epoch (one process: 20)
    assert manifest["training"]["optimizer_steps"] == 2 * 10


@pytest.fixture
def short_tmp():
    """A temp dir with a short path: Ray puts Unix sockets in it (at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="bd-ray-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen | None = None, seconds: float = 120) -> bool:
    """Poll readiness; False when the server exited because its port was taken in the meantime."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            errors = process.stderr.read()
            if "cannot listen on" in errors:
                return False
            raise AssertionError(f"the server exited: {errors[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return True
        time.sleep(0.5)
    raise AssertionError("not ready in time")


def _on_a_free_port(start, attempts: int = 3):
    """`start(port)` on a port free a moment ago; another one if it was taken in between (start says so with
    False, or Ray Serve's proxy with 'Failed to bind')."""
    for attempt in range(attempts):
        port = _free_port()
        try:
            started = start(port)
        except RuntimeError as e:
            if "Failed to bind" not in str(e) or attempt == attempts - 1:
                raise
            from ray import serve

            serve.shutdown()  # its proxy keeps the port it was started with
            continue
        if started is not False:
            return port, started
    raise AssertionError(f"no free port in {attempts} attempts")


def _concurrent_predictions(url: str, calls: list[list[str]], headers: dict | None = None) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda texts: httpx.post(url + "/predict", json={"texts": texts, "all_scores": True},
                                                      headers=headers, timeout=60), calls))


def _scores(response: httpx.Response, labels: list[str]) -> np.ndarray:
    return np.array([[p["scores"][label] for label in labels] for p in response.json()["predictions"]])


def test_serve_engine_ray_two_replicas_answer_concurrently_and_stop_on_sigterm(tiny_artifacts, short_tmp):
    env = {**os.environ, "RAY_TMPDIR": short_tmp}
    env.pop("RAY_ADDRESS", None)

    def start(port: int):
        process = subprocess.Popen(
            [sys.executable, "-m", "bertdeploy", "serve", str(tiny_artifacts), "--engine", "ray", "--replicas", "2",
             "--threads", "1", "--variant", "fp32", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        return _wait_ready(f"http://127.0.0.1:{port}", process) and process

    port, server = _on_a_free_port(start)
    url = f"http://127.0.0.1:{port}"
    try:
        reference = Predictor.load(tiny_artifacts, variant="fp32")
        calls = [varied_texts(n, seed=n) for n in [1, 4, 9, 2, 6, 3] * 6]
        responses = _concurrent_predictions(url, calls)
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        for texts, response in zip(calls, responses, strict=True):
            assert np.allclose(_scores(response, reference.labels), reference.predict_proba(texts), atol=1e-5)
            assert response.json()["model"] == "onnx" and response.json()["variant"] == "fp32"
        replicas = {r.headers["x-bertdeploy-replica"] for r in responses}
        for _ in range(5):  # Ray's router may keep a short burst on one replica: more bursts until both answer
            if len(replicas) == 2:
                break
            replicas |= {r.headers["x-bertdeploy-replica"] for r in _concurrent_predictions(url, calls)}
        assert len(replicas) == 2  # both replicas answered
        # the single-process server's errors, word for word
        broken = httpx.post(url + "/predict", content=b"{", headers={"content-type": "application/json"}, timeout=30)
        assert broken.status_code == 400 and broken.json() == {"error": "the body is not valid JSON"}
        wrong = httpx.post(url + "/predict", json={"texts": ["a", 3]}, timeout=30)
        assert wrong.status_code == 422 and wrong.json() == {"error": "texts.1: Input should be a valid string"}
        both = httpx.post(url + "/predict", json={"text": "a", "texts": ["b"]}, timeout=30)
        assert both.status_code == 422 and both.json() == {"error": "give either 'text' or 'texts'"}
        _answers_kserve_v2_and_metrics(url, "onnx", reference)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0, server.stderr.read()[-3000:]


def _answers_kserve_v2_and_metrics(url: str, model: str, reference: Predictor) -> None:
    """The Ray engine mounts the local server's app: the KServe v2 routes and /metrics answer there too."""
    assert httpx.get(url + "/v2", timeout=30).json()["name"] == "bertdeploy"
    metadata = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()
    assert metadata["name"] == model and metadata["parameters"]["variant"] == "fp32"
    assert httpx.get(f"{url}/v2/models/{model}/ready", timeout=30).json() == {"name": model, "ready": True}
    assert httpx.post(url + "/v2/repository/index", timeout=30).json() == [
        {"name": model, "version": "1", "state": "READY"}]
    missing = httpx.get(url + "/v2/models/nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"].startswith("no model 'nope'")
    texts = varied_texts(3, seed=5)
    infer = httpx.post(f"{url}/v2/models/{model}/infer", timeout=30, json={
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})
    assert infer.status_code == 200, infer.text
    probabilities = next(o for o in infer.json()["outputs"] if o["name"] == "probabilities")
    assert np.allclose(np.reshape(probabilities["data"], probabilities["shape"]), reference.predict_proba(texts),
                       atol=1e-5)
    scraped = httpx.get(url + "/metrics", timeout=30)  # the metrics of the replica the scrape reached
    assert scraped.status_code == 200 and scraped.headers["x-bertdeploy-replica"]
    assert re.search(r'bertdeploy_requests_total\{[^}]*route="(/v2/models/\{model\}/infer|/predict)",status="200"',
                     scraped.text)
    assert "bertdeploy_inference_seconds_bucket" in scraped.text


def test_ray_serve_python_entry_point_with_autoscaling_and_an_api_key(ray_local, tiny_artifacts, monkeypatch):
    from ray import serve

    from bertdeploy.serve.ray_engine import app_builder, application

    built = app_builder({"artifact_dir": str(tiny_artifacts), "replicas": "2", "max_wait_ms": "2",
                         "max_queued_requests": "7"})  # serve run's args
    assert isinstance(built, serve.Application) and built._bound_deployment.max_queued_requests == 7
    monkeypatch.setenv("TEST_KEY", "s3cret")
    options = ServeOptions(tiny_artifacts, runtime=RuntimeOptions(variant="fp32", threads=1), min_replicas=1,
                           max_replicas=2, api_key_env="TEST_KEY", max_body_bytes=2000, model_name="tiny")

    def start(port: int) -> None:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(options), name="tiny", route_prefix="/")

    port, _ = _on_a_free_port(start)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)
        config = serve.status().applications["tiny"].deployments["tiny"]
        assert config.status == "HEALTHY"
        refused = httpx.post(url + "/predict", json={"text": "好"}, timeout=30)
        assert refused.status_code == 401 and refused.json() == {"error": KEY_REFUSED}  # the local server's words
        assert refused.headers["www-authenticate"] == "Bearer"
        key = {"Authorization": "Bearer s3cret"}
        reference = Predictor.load(tiny_artifacts, variant="fp32")
        calls = [varied_texts(3, seed=n) for n in range(20)]
        responses = _concurrent_predictions(url, calls, key)
        for texts, response in zip(calls, responses, strict=True):
            assert response.status_code == 200 and response.json()["model"] == "tiny"
            assert np.allclose(_scores(response, reference.labels), reference.predict_proba(texts), atol=1e-5)
        big = httpx.post(url + "/predict", json={"texts": ["好" * 3000]}, headers=key, timeout=30)
        assert big.status_code == 413
        assert httpx.get(url + "/metrics", timeout=30).status_code == 401  # the local server's key on every route
        assert httpx.get(url + "/metrics", headers=key, timeout=30).status_code == 200
    finally:
        serve.delete("tiny")


@pytest.fixture
def review_file(tmp_path) -> Path:
    """A CSV with what breaks naive readers: quoted commas and line breaks, an empty text, extra columns."""
    rows = [{"id": str(i), "text": r["text"], "label": r["label"], "note": "x,y" if i % 3 else ""}
            for i, r in enumerate(make_rows(300, seed=7))]
    rows[5]["text"] = "第一行\n第二行，好"
    rows[8]["text"] = ""
    rows[13]["text"] = '他说"好"'
    return write_csv(tmp_path / "reviews.csv", rows)


def test_predict_engine_ray_writes_what_the_local_engine_writes(ray_local, tiny_artifacts, review_file, tmp_path):
    runner = CliRunner()
    local = runner.invoke(cli, ["predict", str(tiny_artifacts), str(review_file), "--variant", "fp32", "--all-scores",
                                "-o", str(tmp_path / "local.csv")])
    assert local.exit_code == 0, local.output
    # many small batches over 2 actors, so order has to be kept on purpose
    result = predict_file_ray(PredictFileOptions(tiny_artifacts, str(review_file), tmp_path / "ray.csv",
                                                 RuntimeOptions(variant="fp32"), all_scores=True, engine="ray",
                                                 chunk_rows=16, workers=2))
    assert (tmp_path / "ray.csv").read_text(encoding="utf-8") == (tmp_path / "local.csv").read_text(encoding="utf-8")
    assert result.rows == 300 and "2 Ray Data workers of 1 thread" in result.variant
    assert result.report is not None and result.scored == 300

    jsonl = write_jsonl(tmp_path / "rows.jsonl", [{"text": "好", "label": "positive", "n": 1}, {"text": "坏", "x": {}}])
    for engine in ("local", "ray"):
        done = runner.invoke(cli, ["predict", str(tiny_artifacts), str(jsonl), "--variant", "fp32", "--engine",
                                   engine, "-o", str(tmp_path / f"{engine}.jsonl")])
        assert done.exit_code == 0, done.output
    assert (tmp_path / "ray.jsonl").read_text(encoding="utf-8") == (tmp_path / "local.jsonl").read_text("utf-8")


def test_predict_engine_ray_user_errors(ray_local, tiny_artifacts, tmp_path):
    runner = CliRunner()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "好"}] * 5 + [{"text": 3}])
    done = runner.invoke(cli, ["predict", str(tiny_artifacts), str(bad), "--engine", "ray", "-o",
                               str(tmp_path / "out.jsonl")])
    assert done.exit_code == 2 and "'text' is a number, expected a string" in done.output
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
    done = runner.invoke(cli, ["predict", str(tiny_artifacts), "-", "--engine", "ray"], input="好\n")
    assert done.exit_code == 2 and "reads files, not stdin" in done.output


def test_ray_engines_take_the_providers_as_the_local_ones_do(tiny_artifacts, tmp_path):
    """A provider ONNX Runtime lacks is refused before Ray starts; inside an actor, its model is loaded on the
    providers asked for, and a refusal travels back as the user's error."""
    import onnxruntime

    from bertdeploy.predict.ray_engine import FAILED, _Scorer
    from bertdeploy.predict.rows import Columns

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: asking for it is no mistake here")
    source = write_csv(tmp_path / "in.csv", make_rows(4, seed=3))
    done = CliRunner().invoke(cli, ["predict", str(tiny_artifacts), str(source), "--engine", "ray", "--providers",
                                    "cuda", "--allow-fallback"])
    assert done.exit_code == 2 and "provider CUDAExecutionProvider is not in this ONNX Runtime" in done.output
    columns = Columns("text", None, None, ["text", "label"], {"label": "label", "score": "score"})
    options = PredictFileOptions(tiny_artifacts, str(source), runtime=RuntimeOptions(providers="cuda"), engine="ray")
    failed = _Scorer(options, "csv", "csv", columns)(pd.DataFrame(make_rows(4, seed=3)))
    assert "provider CUDAExecutionProvider is not in this ONNX Runtime" in failed[FAILED].iloc[0]
    scored = _Scorer(PredictFileOptions(tiny_artifacts, str(source), runtime=RuntimeOptions(providers="cpu", threads=1),
                                        engine="ray"), "csv", "csv", columns)
    assert scored.predictor.providers[0] == "CPUExecutionProvider"
    assert scored(pd.DataFrame(make_rows(4, seed=3)))[FAILED].tolist() == [""] * 4


def test_the_runtime_options_reach_the_ray_predict_actors_predictor(tiny_artifacts, tmp_path, stopped_load,
                                                                    monkeypatch):
    """The CLI's options -> predict_file_ray -> each Ray Data actor -> its Predictor.load: one RuntimeOptions, its
    threads those the actor reserves (1 without --threads). Ray is faked: map_batches builds the actor here."""
    from unittest import mock

    from bertdeploy.predict import ray_engine

    reserved = []

    def map_batches(actor, **settings):
        reserved.append(settings["num_cpus"])
        actor(**settings["fn_constructor_kwargs"])
        raise BertdeployError("stopped after the actor")

    fake = mock.MagicMock()
    fake.cluster_resources.return_value = {"CPU": 4}
    fake.data.read_csv.return_value.map_batches.side_effect = map_batches
    monkeypatch.setattr(ray_engine, "ray_cluster", lambda address: contextlib.nullcontext(fake))
    source = write_csv(tmp_path / "in.csv", make_rows(3, seed=12))
    for args in (PREDICT_RUNTIME_ARGS, [], ["--threads", "2"]):
        done = CliRunner().invoke(cli, ["predict", str(tiny_artifacts), str(source), "--engine", "ray", *args])
        assert done.exit_code == 2 and "Error: stopped after the actor" in done.output, done.output
    assert stopped_load == [(tiny_artifacts, PREDICT_RUNTIME, {}), (tiny_artifacts, RuntimeOptions(threads=1), {}),
                            (tiny_artifacts, RuntimeOptions(threads=2), {})]
    assert reserved == [1, 1, 2]


def test_the_runtime_options_reach_the_ray_serve_replicas_predictor(tiny_artifacts, stopped_load, monkeypatch):
    """The CLI's options -> the Serve application -> each replica -> its Predictor.load: one RuntimeOptions, its
    threads those the replica reserves (without --threads: the cluster's CPUs over the replicas). No cluster:
    the replica is built here from what the application binds, on 4 CPUs."""
    from bertdeploy.serve import ray_engine

    reserved = []

    def serve_ray(options):
        deployment = ray_engine.application(options, cpus=4)._bound_deployment
        reserved.append(deployment.ray_actor_options["num_cpus"])
        ray_engine.PredictorReplica(*deployment.init_args, **deployment.init_kwargs)

    monkeypatch.setattr(ray_engine, "serve_ray", serve_ray)
    for args in (SERVE_RUNTIME_ARGS, ["--replicas", "2"]):
        done = CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--engine", "ray", *args])
        assert done.exit_code == 2 and "Error: stopped at Predictor.load" in done.output, done.output
    assert stopped_load == [(tiny_artifacts, SERVE_RUNTIME, {}),
                            (tiny_artifacts, RuntimeOptions(threads=2, max_batch_size=64), {})]
    assert reserved == [1, 2]


def test_the_ray_serve_app_builder_takes_the_runtime_options_by_name(tiny_artifacts):
    from bertdeploy.serve.ray_engine import app_builder

    built = app_builder({"artifact_dir": str(tiny_artifacts), "replicas": "2", "variant": "fp32", "threads": "1",
                         "providers": "cpu", "allow_fallback": "true", "spinning": "false", "precision": "f32",
                         "max_batch_size": "8", "max_wait_ms": "2"})  # as `serve run` passes them: text
    options = built._bound_deployment.init_args[0]
    assert options.runtime == RuntimeOptions(variant="fp32", threads=1, providers="cpu", allow_fallback=True,
                                             spinning=False, precision="f32", max_batch_size=8)
    assert (options.replicas, options.max_wait_ms, options.engine) == (2, 2.0, "ray")
    with pytest.raises(BertdeployError, match="^--threads must be at least 1$"):
        app_builder({"artifact_dir": str(tiny_artifacts), "threads": 0})


def test_ray_predict_actors_chunk_long_texts_when_asked(ray_local, tiny_artifacts, tmp_path):
    """--long-text chunk reaches the actors' predictors: a text past the max length scores as on the local engine,
    and not as truncated."""
    rows = [{"text": "很好，喜欢！" * 10 + "差，失望，退货。" * 10, "label": "negative"}, *make_rows(5, seed=4)]
    source = write_csv(tmp_path / "long.csv", rows)
    for engine, long_text in (("local", "truncate"), ("local", "chunk"), ("ray", "chunk")):
        done = CliRunner().invoke(cli, ["predict", str(tiny_artifacts), str(source), "--variant", "fp32",
                                        "--all-scores", "--long-text", long_text, "--engine", engine, "-o",
                                        str(tmp_path / f"{engine}-{long_text}.csv")])
        assert done.exit_code == 0, done.output
    chunked = (tmp_path / "ray-chunk.csv").read_text("utf-8")
    assert chunked == (tmp_path / "local-chunk.csv").read_text("utf-8")
    assert chunked != (tmp_path / "local-truncate.csv").read_text("utf-8")


def test_serve_engine_ray_names_a_port_in_use(tiny_artifacts, short_tmp):
    env = {**os.environ, "RAY_TMPDIR": short_tmp}
    env.pop("RAY_ADDRESS", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "bertdeploy", "serve", str(tiny_artifacts), "--engine", "ray",
                               "--port", str(port)], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 2 and f"Error: cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_the_ray_queue_option_counts_requests(tiny_artifacts):
    done = CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--engine", "ray", "--max-queued-requests", "0"])
    assert done.exit_code == 2 and "max_queued_requests must be at least 1, or -1 for no limit" in done.output
    assert "requests waiting for a replica" in CliRunner().invoke(cli, ["serve", "--help"]).output
