"""Helpers for the tests of `bertdeploy serve`: an app served on a loopback port, a predictor held on an
event, the port a `serve` subprocess took, a bounded poll, and one figure from /metrics."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time

import httpx

from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.local import create_app, draining_server


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_until(condition, seconds: float = 10, message: str = "the condition did not come") -> None:
    """Poll `condition()` until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.02)


@contextlib.contextmanager
def running(predictor, wait_ready: bool = True, api_key: str | None = None, apps: list | None = None, **settings):
    """`create_app` served by `draining_server` in a thread on a free loopback port; yields its base URL (and
    appends the app to `apps`, where given)."""
    options = ServeOptions("tiny", **settings)
    sock = free_socket()
    app = create_app(predictor, options, api_key)
    if apps is not None:
        apps.append(app)
    server = draining_server(app, options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    wait_until(lambda: server.started and (not wait_ready or httpx.get(f"{url}/v2/health/ready").status_code == 200),
               30, "the server did not start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Held:
    """The real predictor, except that its method `method` (warm_up, iter_encoded) waits for `release`
    (`entered` is set when a call arrives), or raises `error` when one is given."""

    def __init__(self, predictor, method: str, error: BaseException | None = None) -> None:
        self._predictor, self._method, self._error = predictor, method, error
        self.release, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        value = getattr(self._predictor, name)
        if name != self._method:
            return value

        def held(*args, **kwargs):
            self.entered.set()
            if self._error is not None:
                raise self._error
            assert self.release.wait(30)
            return value(*args, **kwargs)
        return held


def serving_port(process: subprocess.Popen, log: list[str], seconds: float = 60) -> int:
    """The port `serve --port 0` took, from its log (a thread collects the lines of stderr into `log`)."""
    threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
    found = []

    def logged() -> bool:
        assert process.poll() is None, "".join(log)
        found[:] = re.findall(r"serving .* on http://127\.0\.0\.1:(\d+)", "".join(log))
        return bool(found)

    wait_until(logged, seconds, lambda: "".join(log))
    return int(found[0])


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent), e.g. metric(url, "bertdeploy_dropped_texts_total", reason="deadline")."""
    text = httpx.get(f"{url}/metrics").text
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})?", sample)
        if found and found.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or "")) == labels:
            return float(value)
    return 0.0
