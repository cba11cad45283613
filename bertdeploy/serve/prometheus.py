"""The Prometheus metrics of one server or replica, and `GET /metrics`.

`Metrics` holds one registry per app (several apps may live in one process: tests): requests by route
and status, time to answer, requests in flight, texts queued, and the batcher's measurements as its
`Observer` (time in the queue, tokenization, each model run by the variant that ran it, texts dropped
and why). `Metered` is the ASGI middleware that counts and times every response, the limits' refusals
included. On Ray Serve each replica has its own registry, and `/metrics` answers with the one of the
replica the request reached. Not here: what is measured and when (batcher.py), the routes (app.py).
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations.
import time

from bertdeploy.serve.batcher import DEADLINE, DISCONNECTED, Observer


class Metrics(Observer):
    """The Prometheus metrics, the batcher's measurements among them (model and variant labels)."""

    def __init__(self, model: str, predictor) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()  # one per app: several apps may live in one process (tests)
        self.requests = Counter("bertdeploy_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("bertdeploy_request_seconds", "Time to answer, by route", ["route"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.batch_size = Histogram("bertdeploy_batch_size", "Texts per model run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_tokens = Histogram("bertdeploy_batch_tokens", "Padded tokens (texts x length) per model run",
                                      buckets=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
                                      registry=self.registry)
        self.queue = Gauge("bertdeploy_queue_texts", "Texts waiting to be batched", registry=self.registry)
        self.in_flight = Gauge("bertdeploy_requests_in_flight", "HTTP requests being answered (a scrape counts itself)",
                               registry=self.registry)
        labels = ["model", "variant"]
        self.queue_seconds = Histogram(
            "bertdeploy_queue_seconds", "Time from a request's arrival in the batcher's queue to its batch",
            labels, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
            registry=self.registry).labels(model, predictor.variant)
        self.tokenization_seconds = Histogram(
            "bertdeploy_tokenization_seconds", "Time to tokenize one batch's texts", labels,
            buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1), registry=self.registry,
        ).labels(model, predictor.variant)
        inference = Histogram("bertdeploy_inference_seconds", "Time of one model run, by the variant that ran it",
                              labels, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                              registry=self.registry)
        variants = {r.variant for r in getattr(predictor, "routes", ())} or {predictor.variant}
        self.inference_seconds = {v: inference.labels(model, v) for v in sorted(variants)}  # each shown from the start
        dropped = Counter("bertdeploy_dropped_texts", "Texts left unscored: their deadline passed (deadline) or "
                          "their client went away (disconnected) before they were batched", ["reason"],
                          registry=self.registry)
        self.dropped_texts = {reason: dropped.labels(reason) for reason in (DEADLINE, DISCONNECTED)}

    def queued(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    def tokenized(self, texts: int, seconds: float) -> None:
        self.tokenization_seconds.observe(seconds)

    def ran(self, variant: str, texts: int, length: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.batch_tokens.observe(texts * length)
        self.inference_seconds[variant].observe(seconds)

    def dropped(self, reason: str, texts: int) -> None:
        self.dropped_texts[reason].inc(texts)


class Metered:
    """Counts every response by route template and status, and times it (limits' refusals included)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def recorded(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recorded)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def route(app, metrics: Metrics) -> None:
    """`GET /metrics`, in Prometheus' text format."""
    from fastapi.responses import Response

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
