"""`bertdeploy serve`: a real uvicorn server on a loopback port, real clients, the tiny classifier's export."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    SERVE_RUNTIME,
    SERVE_RUNTIME_ARGS,
    Held,
    make_rows,
    metric,
    running,
    serve_command,
    wait_until,
    write_jsonl,
)

from bertdeploy.cli import cli
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve.batcher import Batcher, Observer, Overloaded

TEXTS = [r["text"] for r in make_rows(40, seed=11)]


@pytest.fixture(scope="module")
def url(fp32):
    with running(fp32, max_wait_ms=30) as base:
        yield base


def _batch_sizes(url: str) -> tuple[float, float]:
    """(model runs, runs of one text) from /metrics."""
    return metric(url, "bertdeploy_batch_size_count"), metric(url, "bertdeploy_batch_size_bucket", le="1.0")


def test_predict_gives_the_predictors_results(url, fp32):
    response = httpx.post(f"{url}/predict", json={"texts": TEXTS[:10], "all_scores": True})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = fp32.predict_proba(TEXTS[:10])
    assert body["model"] == "tiny" and body["variant"] == "fp32" and len(body["predictions"]) == 10
    for prediction, row in zip(body["predictions"], expected, strict=True):
        assert prediction["label"] == fp32.labels[row.argmax()]
        assert np.allclose([prediction["scores"][label] for label in fp32.labels], row, atol=1e-5)
    one = httpx.post(f"{url}/predict", json={"text": TEXTS[0]}).json()["predictions"]
    assert len(one) == 1 and "scores" not in one[0] and one[0]["label"] == body["predictions"][0]["label"]
    assert httpx.post(f"{url}/predict", json={"texts": []}).json()["predictions"] == []


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(url, fp32):
    runs_before, singles_before = _batch_sizes(url)
    expected = fp32.predict_proba(TEXTS)
    barrier = threading.Barrier(len(TEXTS))

    def ask(i: int) -> list[float]:
        barrier.wait()
        response = httpx.post(f"{url}/predict", json={"text": TEXTS[i], "all_scores": True}, timeout=30)
        assert response.status_code == 200, response.text
        return [response.json()["predictions"][0]["scores"][label] for label in fp32.labels]

    with ThreadPoolExecutor(len(TEXTS)) as pool:
        got = np.array(list(pool.map(ask, range(len(TEXTS)))))
    assert np.allclose(got, expected, atol=1e-5)
    runs, singles = _batch_sizes(url)
    assert runs - runs_before < len(TEXTS)  # fewer model runs than requests
    assert (runs - runs_before) - (singles - singles_before) >= 1  # at least one run held several requests' texts


def test_the_v2_protocol_works_with_tritonclient(url, fp32):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    metadata = client.get_model_metadata("tiny")
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY"}]
    for binary in (True, False):  # Triton's binary tensors (the client's default) and plain JSON
        text = triton.InferInput("text", [5], "BYTES")
        text.set_data_from_numpy(np.array(TEXTS[:5], dtype=object), binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        result = client.infer("tiny", [text], outputs=outputs)
        expected = fp32.predict_proba(TEXTS[:5])
        assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
        labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]  # JSON gives str
        assert labels == [fp32.labels[i] for i in expected.argmax(-1)]
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        client.infer("other", [text])
    bad = triton.InferInput("words", [1], "BYTES")
    bad.set_data_from_numpy(np.array(["x"], dtype=object))
    with pytest.raises(InferenceServerException, match="inputs must be text, got words"):
        client.infer("tiny", [bad])


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"texts": ["a", 3]}, 422, "texts.1: Input should be a valid string"),
    ({"text": "a", "texts": ["b"]}, 422, "give either 'text' or 'texts'"),
    ({"txt": "a"}, 422, "txt: Extra inputs are not permitted"),
    ({"texts": ["a"] * 257}, 422, "at most 256 items"),
    ({"text": "a", "pair": "b"}, 422, "this model takes no 'pair'/'pairs'"),
    (b'{"texts": ["a"', 400, "the body is not valid JSON"),
    (b"x" * 1_000_001, 413, "the body is over 1000000 bytes"),
])
def test_bad_requests_get_a_clear_json_error(url, body, status, message):
    if isinstance(body, bytes):
        response = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(f"{url}/predict", json=body)
    assert response.status_code == status and message in response.json()["error"], response.text
    assert "Traceback" not in response.text


def test_a_chunked_body_over_the_limit_is_refused(url):
    def chunks():
        for _ in range(20):
            yield b"x" * 100_000

    response = httpx.post(f"{url}/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over 1000000 bytes" in response.json()["error"]


def test_the_api_key_guards_every_route_but_health(fp32):
    with running(fp32, api_key="s3cret") as base:
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        for path in ("/predict", "/v2/models/tiny/infer", "/metrics", "/openapi.json", "/v2/models/tiny"):
            method = httpx.post if path in ("/predict", "/v2/models/tiny/infer") else httpx.get
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = method(f"{base}{path}", headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{base}/predict", json={"text": "好"}, headers=good).status_code == 200
        assert httpx.get(f"{base}/metrics", headers=good).status_code == 200


def test_a_full_queue_answers_429_at_once(fp32):
    held = Held(fp32, "iter_encoded")  # the model stays busy with the first batch until a request is refused
    with running(held, max_queue=8, max_texts_per_request=8, max_wait_ms=400) as base:
        barrier = threading.Barrier(10)

        def ask(i: int) -> httpx.Response:
            barrier.wait()
            return httpx.post(f"{base}/predict", json={"texts": TEXTS[i * 4:i * 4 + 4]}, timeout=30)

        with ThreadPoolExecutor(10) as pool:
            asked = [pool.submit(ask, i) for i in range(10)]
            wait(asked, timeout=30, return_when=FIRST_COMPLETED)  # a 429: the others wait on the held model
            held.release.set()
            responses = [f.result() for f in asked]
        refused = [r for r in responses if r.status_code == 429]
        served = [(i, r) for i, r in enumerate(responses) if r.status_code == 200]
        assert refused and served and len(refused) + len(served) == 10
        assert refused[0].headers["retry-after"] == "1" and "queue is full" in refused[0].json()["error"]
        for i, r in served:
            expected = fp32.predict(TEXTS[i * 4:i * 4 + 4])
            assert [p["label"] for p in r.json()["predictions"]] == [p.label for p in expected]
        assert metric(base, "bertdeploy_requests_total", route="/predict", status="429") > 0


def test_live_at_once_ready_only_after_the_warm_up(fp32):
    held = Held(fp32, "warm_up")
    with running(held, wait_ready=False) as base:
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        assert httpx.get(f"{base}/v2/models/tiny/ready").status_code == 503
        response = httpx.post(f"{base}/predict", json={"text": "好"})
        assert response.status_code == 503 and "warming up" in response.json()["error"]
        held.release.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(f"{base}/predict", json={"text": "好"}).status_code == 200


@pytest.fixture(scope="module")
def pair_predictor(tiny_model_dir, tmp_path_factory) -> Predictor:
    from bertdeploy.builder.export import ExportOptions, export
    from bertdeploy.builder.train import FinetuneOptions, finetune

    folder = tmp_path_factory.mktemp("pairs")
    rows = [{"a": r["text"], "b": r["text"][::-1], "y": r["label"]} for r in make_rows(40, seed=12)]
    finetune(FinetuneOptions(model=str(tiny_model_dir), train_file=write_jsonl(folder / "pairs.jsonl", rows),
                             output_dir=folder / "model", text_column="a", text_pair_column="b", label_column="y",
                             epochs=1, max_length=32))
    export(ExportOptions(model_dir=folder / "model", output_dir=folder / "onnx", quantize=[]))
    return Predictor.load(folder / "onnx", threads=1)


def test_sentence_pair_models_take_pairs_on_both_apis(pair_predictor):
    import tritonclient.http as triton

    texts, pairs = TEXTS[:4], [t[::-1] for t in TEXTS[:4]]
    expected = pair_predictor.predict_proba(texts, pairs)
    with running(pair_predictor) as base:
        body = httpx.post(f"{base}/predict", json={"texts": texts, "pairs": pairs, "all_scores": True}).json()
        got = [[p["scores"][label] for label in pair_predictor.labels] for p in body["predictions"]]
        assert np.allclose(got, expected, atol=1e-5)
        missing = httpx.post(f"{base}/predict", json={"texts": texts})
        assert missing.status_code == 422 and "needs 'pair'/'pairs'" in missing.json()["error"]
        client = triton.InferenceServerClient(base.removeprefix("http://"))
        inputs = [triton.InferInput(name, [4], "BYTES") for name in ("text", "text_pair")]
        for tensor, values in zip(inputs, (texts, pairs), strict=True):
            tensor.set_data_from_numpy(np.array(values, dtype=object))
        assert np.allclose(client.infer("tiny", inputs).as_numpy("probabilities"), expected, atol=1e-5)


def test_sigterm_finishes_the_requests_in_flight(tiny_artifacts):
    with serve_command(str(tiny_artifacts), "--variant", "fp32", "--drain-delay", "0") as (process, base, log):
        release = threading.Event()

        def body():  # the request is in flight until the rest of its body comes
            yield b'{"texts": '
            assert release.wait(30)
            yield json.dumps(TEXTS[:3]).encode() + b"}"

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{base}/predict", content=body(), timeout=30,
                                  headers={"content-type": "application/json"})
            wait_until(lambda: metric(base, "bertdeploy_requests_in_flight") >= 2 or pending.done(),
                       message="the request did not arrive")  # the held request, and this scrape
            assert not pending.done()
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: not _accepts(base), 30, "still accepting connections after SIGTERM")
            release.set()
            response = pending.result()
        assert response.status_code == 200 and len(response.json()["predictions"]) == 3
        # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM
        assert process.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in "".join(log)


def _accepts(url: str) -> bool:
    """Whether the server still accepts connections."""
    try:
        httpx.get(f"{url}/v2/health/live", timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_serve_names_a_port_in_use_in_one_line(tiny_artifacts):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--port", str(port), "--variant", "fp32"])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["nowhere"], "nowhere: no such directory"),
    (["{artifacts}", "--api-key-env", "BERTDEPLOY_TEST_UNSET_KEY"], "BERTDEPLOY_TEST_UNSET_KEY: that environment"),
    (["{artifacts}", "--max-queue", "10"], "max_queue (10) must hold at least one full request (256 texts)"),
    (["{artifacts}", "--variant", "O9"], "no variant 'O9'"),
])
def test_serve_refuses_bad_settings_before_listening(tiny_artifacts, args, message):
    os.environ.pop("BERTDEPLOY_TEST_UNSET_KEY", None)
    result = CliRunner().invoke(cli, ["serve", *[a.format(artifacts=tiny_artifacts) for a in args]])
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_runtime_options_reach_the_local_servers_predictor(tiny_artifacts, stopped_load):
    result = CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--port", "0", *SERVE_RUNTIME_ARGS])
    assert result.exit_code == 2 and "Error: stopped at Predictor.load" in result.output, result.output
    assert stopped_load == [(tiny_artifacts, SERVE_RUNTIME, {})]
    stopped_load.clear()
    assert CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--port", "0"]).exit_code == 2
    assert stopped_load == [(tiny_artifacts, RuntimeOptions(max_batch_size=64), {})]  # --max-batch-size's default
    result = CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--threads", "0"])
    assert result.exit_code == 2 and result.output == "Error: --threads must be at least 1\n"


def test_the_batcher_keeps_requests_apart_and_bounds_batches(tiny_artifacts, fp32):
    sizes = []

    class Sizes(Observer):
        def ran(self, variant: str, texts: int, length: int, seconds: float) -> None:
            sizes.append(texts)

    predictor = Predictor.load(tiny_artifacts, variant="fp32", max_batch_size=8)
    batcher = Batcher(predictor, max_batch_size=8, max_wait_ms=50, max_queue=64, observer=Sizes())
    batcher.start()

    async def main():
        groups = [TEXTS[:1], TEXTS[1:4], TEXTS[4:16], TEXTS[16:18], []]  # 12 texts: more than one batch
        results = await asyncio.gather(*(batcher.predict(g) for g in groups))
        with pytest.raises(Overloaded, match="queue is full"):
            await asyncio.gather(*(batcher.predict(TEXTS) for _ in range(3)))
        return groups, results

    groups, results = asyncio.run(main())
    batcher.stop()
    for group, result in zip(groups, results, strict=True):
        assert result.shape == (len(group), 2)
        if group:
            assert np.allclose(result, fp32.predict_proba(group), atol=1e-5)
    assert max(sizes) <= 8 and any(s > 1 for s in sizes)
    with pytest.raises(Overloaded, match="shutting down"):
        asyncio.run(batcher.predict(["a"]))
