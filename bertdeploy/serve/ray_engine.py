"""`bertdeploy serve --engine ray`: the predictor as a Ray Serve deployment, on one machine or a cluster.

Each replica loads the torch-free predictor with `threads` threads and answers the same
`POST /predict` as the single-process server (same body, answer and error messages, API key and
body limit), plus `/v2/health/live` and `/v2/health/ready`. Requests are batched by Serve's own
`@serve.batch` (up to `max_batch_size` texts, waiting at most `max_wait_ms`); replicas are a fixed
number or autoscaled by Serve between `min_replicas` and `max_replicas` on ongoing requests per
replica; `max_queued_requests` caps the requests Serve holds waiting for a replica (the local
server's `max_queue` counts texts instead). Each answer names its replica in the
`x-bertdeploy-replica` header. The local server's request and body timeouts, concurrency cap and
drain settings are not taken here (ServeOptions refuses them with engine ray): Serve's own
`request_timeout_s`, `max_queued_requests` and `graceful_shutdown_timeout_s` do that work. For
your own Serve apps, `application(ServeOptions(...))` returns the bound application, and
`app_builder` serves `serve run bertdeploy.serve.ray_engine:app_builder artifact_dir=DIR`.
Needs the `ray` extra.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import threading

import numpy as np
import ray
from ray import serve

from bertdeploy import defaults
from bertdeploy.errors import BertdeployError
from bertdeploy.host import usable_cpus
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.runtime.raycluster import ray_cluster
from bertdeploy.serve import httpapi
from bertdeploy.serve.httpapi import ServeOptions

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-bertdeploy-replica"


class PredictorReplica:
    """One Serve replica: a Predictor, with requests batched by `@serve.batch` (counted in texts)."""

    def __init__(self, options: ServeOptions, api_key: str | None) -> None:
        self.options, self.api_key = options, api_key
        self.predictor = Predictor.load(options.artifact_dir, options=options.runtime)
        self.predictor.warm_up()  # before Serve marks the replica healthy and routes to it
        self.request_model = httpapi.predict_models(options.max_texts_per_request)[0]
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._score.set_max_batch_size(self.predictor.max_batch_size)
        self._score.set_batch_wait_timeout_s(options.max_wait_ms / 1000)
        logger.info("replica %s: %s", self.replica, self.predictor.describe())

    async def __call__(self, request):
        from pydantic import ValidationError
        from starlette.responses import JSONResponse

        def answer(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
            return JSONResponse(body, status_code=status, headers={REPLICA_HEADER: self.replica, **(headers or {})})

        path = request.url.path.rstrip("/") or "/"
        if path in httpapi.HEALTH:
            return answer(200, {path.rsplit("/", 1)[1]: True})
        authorization = request.headers.get("authorization", "").encode()
        if self.api_key is not None and not httpapi.key_matches(authorization, self.api_key.encode()):
            return answer(401, {"error": httpapi.KEY_REFUSED}, dict([httpapi.KEY_CHALLENGE]))
        if path != "/predict" or request.method != "POST":
            return answer(404, {"error": f"no route {request.method} {path}; use POST /predict"})
        raw = await request.body()
        if len(raw) > self.options.max_body_bytes:
            return answer(413, {"error": httpapi.body_too_large(self.options.max_body_bytes)})
        try:
            body = self.request_model.model_validate_json(raw)
            texts, pairs = httpapi.request_texts(body, self.predictor.pairs)
        except ValidationError as e:
            status, message = httpapi.invalid_body(e.errors())
            return answer(status, {"error": message})
        except httpapi.BadRequest as e:
            return answer(422, {"error": str(e)})
        probabilities = await self._score((texts, pairs))
        return answer(200, httpapi.predict_response(self.options.model_name, self.predictor.variant,
                                                    self.predictor.scheme, probabilities, body.all_scores))

    @serve.batch(max_batch_size=defaults.SERVE_MAX_BATCH_SIZE, batch_wait_timeout_s=defaults.MAX_WAIT_MS / 1000,
                 batch_size_fn=lambda items: sum(len(texts) for texts, _ in items))  # options' values: in __init__
    async def _score(self, requests: list[tuple[list[str], list[str] | None]]) -> list[np.ndarray]:
        """One model pass over the texts of every request Serve batched, split back per request."""
        texts = [text for batch_texts, _ in requests for text in batch_texts]
        pairs = None if requests[0][1] is None else [pair for _, batch_pairs in requests for pair in batch_pairs]
        scores = await asyncio.to_thread(self.predictor.predict_proba, texts, pairs)
        bounds = np.cumsum([0] + [len(t) for t, _ in requests])
        return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


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
        PredictorReplica, name=options.model_name, ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=options.max_ongoing_requests, max_queued_requests=options.max_queued_requests, **scaling)
    replicas = dataclasses.replace(options, runtime=dataclasses.replace(options.runtime, threads=threads))
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
    return application(ServeOptions(**rest, engine="ray", runtime=runtime))


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
