"""`bertdeploy serve`'s limits and shutdown: deadlines, body timeouts, the concurrency cap, clients that go
away, liveness, the batcher's timing metrics, and SIGTERM as a load balancer expects it.

Real uvicorn servers on loopback ports (tests/helpers.py); the model is held on an event where a test
needs requests to wait in the queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner
from helpers import Held, make_rows, metric, running, serve_command, wait_until

from bertdeploy.cli import cli
from bertdeploy.errors import BertdeployError
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve.batcher import DEADLINE, DISCONNECTED, Batcher, DeadlineExceeded, Observer
from bertdeploy.serve.httpapi import ServeOptions

TEXTS = [r["text"] for r in make_rows(20, seed=13)]


class Gate:
    """The real predictor; the texts the batcher tokenizes are recorded in `computed`, and its model runs wait
    for `release` (`entered` is set when the first one would start). As a context, released on the way out, so a
    failing test does not leave the batcher held."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor, self.computed = predictor, []
        self.release, self.entered = threading.Event(), threading.Event()
        gate = self

        class Encoder:
            def tokenize(self, texts, pairs=None):
                gate.computed.extend(texts)
                return predictor.encoder.tokenize(texts, pairs)

        self.encoder = Encoder()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()

    def iter_encoded(self, encodings, on_batch=None):
        self.entered.set()
        assert self.release.wait(30)
        return self._predictor.iter_encoded(encodings, on_batch)

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)


def _post(url: str, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"texts": texts}, timeout=30)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _request_head(length: int) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and whatever else came, until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_a_request_past_its_deadline_gets_504_and_its_texts_are_never_computed(fp32):
    gate = Gate(fp32)
    with running(gate, request_timeout=0.5, max_wait_ms=0) as url, ThreadPoolExecutor(2) as pool, gate:
        first = pool.submit(_post, url, TEXTS[:1])  # taken, then held in the model
        assert gate.entered.wait(10)
        started = time.monotonic()
        late = _post(url, TEXTS[1:4])  # waits in the queue behind it
        assert late.status_code == 504, late.text
        assert late.json() == {"error": "no answer within 0.5 s (the request timeout); retry later or send fewer "
                                        "texts"}
        assert 0.3 < time.monotonic() - started < 5
        assert metric(url, "bertdeploy_queue_texts") == 0  # they left the queue at once
        assert first.result().status_code == 504  # its deadline passed too, in the model
        gate.release.set()
        assert _post(url, TEXTS[4:5]).status_code == 200  # behind the texts that left, had they stayed
        assert gate.computed == TEXTS[:1] + TEXTS[4:5]
        assert metric(url, "bertdeploy_dropped_texts_total", reason="deadline") == 3
        assert metric(url, "bertdeploy_requests_total", route="/predict", status="504") == 2


def test_the_batcher_skips_requests_found_expired_or_cancelled_in_its_queue(fp32):
    """The event loop stands still past the deadline, so only the worker can notice it, and the cancelled
    request's task has had no turn to take it out of the queue."""
    gate, dropped, both = Gate(fp32), [], threading.Event()

    class Dropped(Observer):
        def dropped(self, reason: str, texts: int) -> None:
            dropped.append((reason, texts))
            if len(dropped) == 2:
                both.set()

    batcher = Batcher(gate, max_batch_size=8, max_wait_ms=0, max_queue=64, observer=Dropped())
    batcher.start()

    async def main():
        first = asyncio.create_task(batcher.predict(TEXTS[:1]))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        expiring = asyncio.create_task(batcher.predict(TEXTS[1:3], deadline=time.monotonic() + 0.05))
        cancelled = asyncio.create_task(batcher.predict(TEXTS[3:6]))
        await asyncio.sleep(0)  # both queued
        cancelled.cancel()  # cancels the request's future now; its task runs later
        time.sleep(0.1)  # the loop stands still past the deadline: no timer fires
        gate.release.set()
        assert both.wait(10)  # the worker dropped both, the loop still standing still
        assert (await first).shape == (1, 2)
        with pytest.raises(DeadlineExceeded):
            await expiring
        with pytest.raises(asyncio.CancelledError):
            await cancelled

    with gate:
        asyncio.run(main())
    batcher.stop()
    assert gate.computed == TEXTS[:1]
    assert sorted(dropped) == [(DEADLINE, 2), (DISCONNECTED, 3)]


def test_a_client_that_goes_away_while_queued_has_its_texts_skipped_and_counted(fp32):
    gate = Gate(fp32)
    with running(gate, max_wait_ms=0) as url, ThreadPoolExecutor(1) as pool, gate:
        first = pool.submit(_post, url, TEXTS[:1])
        assert gate.entered.wait(10)
        body = json.dumps({"texts": TEXTS[1:5]}).encode()
        with _connect(url) as client:
            client.sendall(_request_head(len(body)) + body)
            wait_until(lambda: metric(url, "bertdeploy_queue_texts") == 4, message="the texts were not queued")
        wait_until(lambda: metric(url, "bertdeploy_dropped_texts_total", reason="disconnected") == 4,
                   message="the texts of the client that went away were not dropped")
        assert metric(url, "bertdeploy_queue_texts") == 0
        gate.release.set()
        assert first.result().status_code == 200
        assert _post(url, TEXTS[5:6]).status_code == 200
        assert gate.computed == TEXTS[:1] + TEXTS[5:6]
        assert metric(url, "bertdeploy_requests_total", route="/predict", status="499") == 1


def test_a_body_that_stalls_gets_408_and_the_connection_is_freed(fp32):
    with running(fp32, body_timeout=0.5) as url, _connect(url) as client:
        started = time.monotonic()
        client.sendall(_request_head(100) + b'{"texts": ')  # and nothing more
        status, headers, body = _read_response(client)  # returns once the server has closed the connection
        assert 0.4 < time.monotonic() - started < 5
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "the body did not arrive within 0.5 s (--body-timeout)"}
        assert metric(url, "bertdeploy_requests_in_flight") == 1  # the scrape itself
        assert _post(url, TEXTS[:1]).status_code == 200


def test_requests_over_the_cap_get_503_while_health_and_metrics_answer(fp32):
    body = json.dumps({"texts": TEXTS[:2]}).encode()
    with running(fp32, max_concurrent_requests=2) as url:
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(_connect(url)) for _ in range(2)]
            for client in held:  # in flight until the rest of the body comes
                client.sendall(_request_head(len(body)) + body[:5])
            wait_until(lambda: metric(url, "bertdeploy_requests_in_flight") == 3, message="not both in flight")
            refused = _post(url, TEXTS[:1])
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json() == {"error": "over 2 requests at once (--max-concurrent-requests); retry later"}
            assert httpx.get(f"{url}/v2/health/live").status_code == 200
            assert httpx.get(f"{url}/v2/health/ready").status_code == 200
            for client in held:
                client.sendall(body[5:])
                status, _, answer = _read_response_once(client)
                assert status == 200 and len(json.loads(answer)["predictions"]) == 2
        assert _post(url, TEXTS[:1]).status_code == 200
        assert metric(url, "bertdeploy_requests_total", route="unmatched", status="503") == 1


def _read_response_once(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One response on a kept-alive connection: status, headers, body (by its content-length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


class Fatal(BaseException):
    """Not an error of one batch: it ends the batching thread."""


def test_liveness_fails_when_the_batching_thread_dies(fp32):
    with running(Held(fp32, "iter_encoded", error=Fatal("gone"))) as url:
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        response = _post(url, TEXTS[:2])
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        assert "the batching thread died" in response.json()["error"]
        live = httpx.get(f"{url}/v2/health/live")
        assert live.status_code == 503 and live.json() == {"live": False}
        later = _post(url, TEXTS[:1])
        assert later.status_code == 503 and "batching thread is not running" in later.json()["error"]


def test_liveness_and_readiness_fail_when_the_warm_up_failed(fp32):
    with running(Held(fp32, "warm_up", error=RuntimeError("out of memory")), wait_ready=False) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/live").status_code == 503, message="still live")
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{url}/v2/models/tiny/ready").status_code == 503
        assert httpx.post(f"{url}/v2/repository/index").json()[0]["state"] == "UNAVAILABLE"
        response = _post(url, TEXTS[:1])
        assert response.status_code == 503 and "failed to warm up" in response.json()["error"]


def test_metrics_time_the_queue_tokenization_and_inference_by_model_and_variant(fp32):
    names = ("bertdeploy_queue_seconds", "bertdeploy_tokenization_seconds", "bertdeploy_inference_seconds")
    with running(fp32) as url:
        text = httpx.get(f"{url}/metrics").text
        for name in names:
            assert f"# TYPE {name} histogram" in text
        assert 'bertdeploy_dropped_texts_total{model="tiny",reason="deadline",version="1"} 0.0' in text
        assert 'bertdeploy_dropped_texts_total{model="tiny",reason="disconnected",version="1"} 0.0' in text
        before = {n: metric(url, f"{n}_count", model="tiny", variant="fp32") for n in names}
        assert _post(url, TEXTS[:3]).status_code == 200
        for name in names:
            assert metric(url, f"{name}_count", model="tiny", variant="fp32") == before[name] + 1, name
            assert metric(url, f"{name}_sum", model="tiny", variant="fp32") > 0, name
            assert metric(url, f"{name}_bucket", model="tiny", variant="fp32", le="+Inf") == before[name] + 1, name


def test_sigterm_turns_readiness_off_serves_the_requests_in_flight_then_closes(tiny_artifacts):
    with serve_command(str(tiny_artifacts), "--variant", "fp32", "--drain-delay", "2") as (process, url, log):
        body = json.dumps({"texts": TEXTS[:3]}).encode()
        with _connect(url) as client:
            client.sendall(_request_head(len(body)) + body[:5])  # in flight until the rest comes
            wait_until(lambda: metric(url, "bertdeploy_requests_in_flight") == 2, message="not in flight")
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: _status(f"{url}/v2/health/ready") == 503, message="still ready after SIGTERM")
            assert _status(f"{url}/v2/models/{tiny_artifacts.name}/ready") == 503
            assert _status(f"{url}/v2/health/live") == 200
            client.sendall(body[5:])
            status, _, answer = _read_response_once(client)
            assert status == 200 and len(json.loads(answer)["predictions"]) == 3
        statuses = set()

        def closed() -> bool:  # served while the load balancer catches up, then no more connections
            try:
                statuses.add(_post(url, TEXTS[:1]).status_code)
            except httpx.TransportError:
                return True
            return False

        wait_until(closed, 20, "still accepting connections after the drain delay")
        assert statuses <= {200, 503}, statuses
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert "SIGTERM: not ready; serving 2 s more" in "".join(log)
        assert "Traceback" not in "".join(log)


def test_once_the_drain_delay_is_over_a_request_on_an_open_connection_gets_503(fp32):
    apps: list = []
    with running(fp32, apps=apps) as url, httpx.Client(base_url=url) as client:
        assert client.post("/predict", json={"text": TEXTS[0]}).status_code == 200  # the connection stays open
        apps[0].state.models.lifecycle.closing_since = time.monotonic()  # what the end of the drain delay sets
        refused = client.post("/predict", json={"text": TEXTS[0]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "shutting down" in refused.json()["error"]
        assert client.get("/v2/health/live").status_code == 200


def _status(url: str) -> int | None:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=5).status_code
    return None


@pytest.mark.parametrize(("args", "message"), [
    (["--engine", "ray", "--request-timeout", "5", "--drain-delay", "0"],
     "--request-timeout, --drain-delay: the local engine's only"),
    (["--engine", "ray", "--max-queue", "2048"], "Error: --max-queue: the local engine's only; Ray Serve has settings"),
    (["--engine", "ray", "--max-queue", "512", "--body-timeout", "3"],
     "--max-queue, --body-timeout: the local engine's only"),
    (["--request-timeout", "0"], "request_timeout, body_timeout and drain_timeout must be above 0 seconds"),
    (["--drain-delay", "-1"], "drain_delay must be 0 seconds or more"),
    (["--max-concurrent-requests", "0"], "max_concurrent_requests must be at least 1"),
])
def test_serve_refuses_bad_limits(tiny_artifacts, stopped_load, args, message):
    result = CliRunner().invoke(cli, ["serve", str(tiny_artifacts), "--port", "0", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert stopped_load == []  # refused before loading anything


def test_the_settings_one_engine_alone_takes_are_marked_and_refused_on_the_other(tmp_path):
    """The local engine's settings are refused on Ray (one rule, reading the marks on the fields); Ray's are left
    be on the local engine, as `application(options)` deploys options built with the default engine."""
    from bertdeploy.serve.models import queue_texts

    local = ServeOptions(tmp_path, replicas=3, max_queued_requests=5, max_queue=300)
    assert not local.takes("replicas") and local.takes("max_queue") and local.takes("max_body_bytes")
    assert queue_texts(local) == 300
    with pytest.raises(BertdeployError, match="^--max-queue, --drain-timeout: the local engine's only"):
        ServeOptions(tmp_path, engine="ray", max_queue=300, drain_timeout=3)
    ray = ServeOptions(tmp_path, engine="ray", max_texts_per_request=2000, max_ongoing_requests=4)
    assert not ray.takes("max_queue") and not ray.takes("request_timeout") and ray.takes("replicas")
    assert queue_texts(ray) == 8000  # a replica's batcher takes every text of the requests Serve lets it hold
