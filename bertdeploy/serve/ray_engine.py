"""`bertdeploy serve --engine ray`: the predictor as a Ray Serve deployment, on one machine or a cluster.

Each replica loads the torch-free predictor with `threads` threads, warms it up, and mounts the same
app as the local server (app.py) with Serve's `@serve.ingress`: `POST /predict`, the KServe v2 routes,
the health checks and `/metrics`, with the same answers, errors, API key and body limit. Each replica
batches its requests' texts with its own batcher (up to `max_batch_size` texts, waiting at most
`max_wait_ms`) and has its own metrics; `/metrics`, like every answer, comes from the replica the
request reached, named in the `x-bertdeploy-replica` header. Replicas are a fixed number or
autoscaled by Serve between `min_replicas` and `max_replicas` on ongoing requests per replica;
`max_ongoing_requests` caps what one replica holds and `max_queued_requests` the requests Serve holds
waiting for a replica. The local engine's settings (its queue of texts, request and body timeouts,
concurrency cap, drain) are refused here (ServeOptions): Serve's own `request_timeout_s`,
`max_queued_requests` and `graceful_shutdown_timeout_s` do that work. Serve checks each replica's
health (`check_health`: the batching thread runs) and replaces one that fails; a replica being stopped
reports not ready and finishes its queue. For your own Serve apps, `application(ServeOptions(...))`
returns the bound application, and `app_builder` serves `serve run bertdeploy.serve.ray_engine:app_builder
artifact_dir=DIR`. Needs the `ray` extra.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import threading

import ray
from ray import serve

from bertdeploy.defaults import RAY
from bertdeploy.errors import BertdeployError
from bertdeploy.host import usable_cpus
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.runtime.raycluster import ray_cluster
from bertdeploy.serve.app import create_app
from bertdeploy.serve.httpapi import ServeOptions
from bertdeploy.serve.models import Models

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-bertdeploy-replica"


class PredictorReplica:
    """One Serve replica: a Predictor, warmed up before Serve routes to it, behind the app of `create_app`
    (built by `__serve_build_asgi_app__` once the predictor is loaded; `Ingress` is this class with it mounted)."""

    def __init__(self, options: ServeOptions, api_key: str | None) -> None:
        self.options, self.api_key = options, api_key
        self.predictor = Predictor.load(options.artifact_dir, options=options.runtime)
        self.predictor.warm_up()  # before Serve marks the replica healthy and routes to it
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.lifecycle = None
        logger.info("replica %s: %s", self.replica, self.predictor.describe())

    def __serve_build_asgi_app__(self):
        app = create_app(Models.single(self.predictor, self.options, warmed=True), self.api_key)
        app.add_middleware(_NamesReplica, replica=self.replica)
        self.lifecycle = app.state.models.lifecycle
        return app

    def check_health(self) -> None:
        """Serve's health check: failing it (the batching thread died), the replica is replaced."""
        if self.lifecycle is not None and not self.lifecycle.live:
            raise RuntimeError(f"replica {self.replica}: the batching thread is not running")


Ingress = serve.ingress()(PredictorReplica)  # the app is built on each replica, after the predictor loads


class _NamesReplica:
    """Names the replica that answered in every response's `x-bertdeploy-replica` header."""

    def __init__(self, app, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        async def named(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [self.header, *message.get("headers", [])]}
            await send(message)

        await self.app(scope, receive, named if scope["type"] == "http" else send)


def application(options: ServeOptions, cpus: int | None = None):
    """The bound Serve application for `options`: fixed replicas, or autoscaling when max_replicas is set.

    Threads per replica default to the cluster's CPUs (`cpus`, else this machine's) over the most replicas; the
    replicas get `options` with them set in `options.runtime`.
    """
    most = options.max_replicas or options.replicas
    threads = options.runtime.threads or max(1, (cpus or usable_cpus()) // most)
    scaling = {"num_replicas": options.replicas} if options.max_replicas is None else {
        "num_replicas": "auto",
        "autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                               "target_ongoing_requests": options.target_ongoing_requests}}
    deployment = serve.deployment(
        Ingress, name=options.model_name, ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=options.max_ongoing_requests, max_queued_requests=options.max_queued_requests, **scaling)
    replicas = dataclasses.replace(options, engine=RAY, runtime=dataclasses.replace(options.runtime, threads=threads))
    return deployment.bind(replicas, options.api_key())


def _flag(value: object) -> bool:
    """A boolean from a Serve config (true/false) or `serve run`'s key=value (the text 'true', 'false', '1', '0')."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def app_builder(args: dict):
    """For `serve run bertdeploy.serve.ray_engine:app_builder artifact_dir=DIR replicas=2 threads=1 ...` and Serve
    config files: ServeOptions' and RuntimeOptions' fields by name, side by side."""
    kinds = {"port": int, "replicas": int, "min_replicas": int, "max_replicas": int, "threads": int,
             "max_batch_size": int, "max_batch_tokens": int, "max_queued_requests": int, "max_texts_per_request": int,
             "max_body_bytes": int, "max_ongoing_requests": int, "max_wait_ms": float,
             "target_ongoing_requests": float, "allow_fallback": _flag, "spinning": _flag}
    values = {k: kinds[k](v) if k in kinds else v for k, v in args.items()}
    runtime, rest = RuntimeOptions.split(values)
    return application(ServeOptions(**rest, engine=RAY, runtime=runtime))


def serve_ray(options: ServeOptions) -> None:
    """Start (or join) a Ray cluster, run the deployment behind Serve's HTTP proxy, and wait for SIGTERM/Ctrl-C.

    On the way out, a cluster started here goes down whole (quick); on a cluster joined, only this application
    is deleted, and Serve keeps serving the others."""
    options.api_key()  # a missing key variable is the user's mistake: say so before starting anything
    joined = ray.is_initialized() or bool(options.ray_address or os.environ.get("RAY_ADDRESS"))
    with ray_cluster(options.ray_address):
        stop = _stop_on_signals()  # after ray.init, which installs handlers of its own
        try:
            serve.start(http_options={"host": options.host, "port": options.port})
            cpus = int(ray.cluster_resources().get("CPU", 1))
            serve.run(application(options, cpus), name=options.model_name, route_prefix="/")
        except RuntimeError as e:
            raise _start_error(e, options) from None
        described = (f"{options.replicas} replicas" if options.max_replicas is None else
                     f"{options.min_replicas}-{options.max_replicas} replicas (autoscaled)")
        logger.info("serving %s as model %r with Ray Serve, %s, on http://%s:%d", options.artifact_dir,
                    options.model_name, described, options.host, options.port)
        if not stop.is_set():
            logger.info("ready")
        stop.wait()
        logger.info("stopping")
        if joined:
            serve.delete(options.model_name)


def _start_error(error: RuntimeError, options: ServeOptions) -> BertdeployError:
    """Serve failing to start, in one line: the local server's words for a port in use, else Ray's own error."""
    text = str(error)
    if "Failed to bind to address" in text:
        return BertdeployError(f"cannot listen on {options.host}:{options.port}: Ray Serve's proxy could not bind it; "
                               "choose another --port or --host")
    errors = [line.strip() for line in text.splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
    return BertdeployError(f"Ray Serve could not start the deployment: {(errors or text.splitlines())[-1]}")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    return stop
