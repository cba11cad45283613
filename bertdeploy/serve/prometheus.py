"""The Prometheus metrics of one server or replica, and `GET /metrics`.

`Metrics` holds one registry per app (several apps may live in one process: tests): requests by route, status,
model and version, time to answer, requests in flight, and per model version its texts queued, its memory, its
loads (and failed loads) and the batcher's measurements, which `ModelMetrics` records as the batcher's `Observer`
(time in the queue, tokenization, each model run by the variant that ran it, texts dropped and why). A version
unloaded leaves no series behind (`forget`); one reloaded goes on counting in the same series. `Metered` is the
ASGI middleware that counts and times every response, the limits' refusals included, by the model version the
route named in the scope (`MODEL`). On Ray Serve each replica has its own registry, and `/metrics` answers with
the one of the replica the request reached. Not here: what is measured and when (batcher.py), the routes (app.py).
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations.
import time

from bertdeploy.serve.batcher import DEADLINE, DISCONNECTED, Observer

MODEL = "bertdeploy.model"  # the scope's key for the (model, version) a request used, for its labels
VERSIONED = ["model", "version"]
LOADED, FAILED = "loaded", "failed"  # the results of a load


class Metrics:
    """The Prometheus metrics of one app: the server's, and per model version those `ModelMetrics` records."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()  # one per app: several apps may live in one process (tests)
        self.requests = Counter("bertdeploy_requests", "HTTP requests by route, status and the model version they "
                                "used", ["route", "status", *VERSIONED], registry=registry)
        self.latency = Histogram("bertdeploy_request_seconds", "Time to answer, by route and model version",
                                 ["route", *VERSIONED],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=registry)
        self.in_flight = Gauge("bertdeploy_requests_in_flight", "HTTP requests being answered (a scrape counts itself)",
                               registry=registry)
        self.loads = Counter("bertdeploy_model_loads", "Model versions loaded, and loads that failed (the serving "
                             "version kept answering)", ["model", "result"], registry=registry)
        self.batch_size = Histogram("bertdeploy_batch_size", "Texts per model run", VERSIONED,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry)
        self.batch_tokens = Histogram("bertdeploy_batch_tokens", "Padded tokens (texts x length) per model run",
                                      VERSIONED, buckets=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
                                      registry=registry)
        self.queue = Gauge("bertdeploy_queue_texts", "Texts waiting to be batched", VERSIONED, registry=registry)
        self.memory = Gauge("bertdeploy_model_memory_bytes", "Resident memory the process grew by as the version "
                            "loaded and warmed up", VERSIONED, registry=registry)
        variant = [*VERSIONED, "variant"]
        self.queue_seconds = Histogram(
            "bertdeploy_queue_seconds", "Time from a request's arrival in the batcher's queue to its batch",
            variant, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
            registry=registry)
        self.tokenization_seconds = Histogram(
            "bertdeploy_tokenization_seconds", "Time to tokenize one batch's texts", variant,
            buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1), registry=registry)
        self.inference_seconds = Histogram(
            "bertdeploy_inference_seconds", "Time of one model run, by the variant that ran it", variant,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=registry)
        self.dropped = Counter("bertdeploy_dropped_texts", "Texts left unscored: their deadline passed (deadline) "
                               "or their client went away (disconnected) before they were batched",
                               [*VERSIONED, "reason"], registry=registry)
        self._series: dict[tuple[str, str], list] = {}  # (model, version) -> [(metric, label values)] to forget

    def model(self, name: str, version: int, predictor) -> "ModelMetrics":
        """The observer of one version's batcher (a version reloaded records into the same series)."""
        return ModelMetrics(self, (name, str(version)), predictor)

    def show(self, served) -> None:
        """Its queue and memory, for a version switched in (it replaces a version of the same number)."""
        labels = (served.name, str(served.version))
        self.queue.labels(*labels).set_function(lambda: served.batcher.queued)
        self.memory.labels(*labels).set_function(lambda: served.memory_bytes or 0)

    def series(self, labels: tuple[str, str], metric, *values: str):
        """`metric`'s child for this model version (and `values`), remembered so that `forget` removes it."""
        series = self._series.setdefault(labels, [])
        if (metric, (*labels, *values)) not in series:  # a version reloaded records into the same series
            series.append((metric, (*labels, *values)))
        return metric.labels(*labels, *values)

    def forget(self, name: str, version: int) -> None:
        """Remove the series of a version no longer served (the server's counters by route keep their counts)."""
        labels = (name, str(version))
        for metric, values in [(self.queue, labels), (self.memory, labels), *self._series.pop(labels, [])]:
            try:
                metric.remove(*values)
            except KeyError:
                pass


class ModelMetrics(Observer):
    """The batcher's measurements of one model version, labelled with its model, version (and variant)."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str], predictor) -> None:
        self.batch_size = metrics.series(labels, metrics.batch_size)
        self.batch_tokens = metrics.series(labels, metrics.batch_tokens)
        self.queue_seconds = metrics.series(labels, metrics.queue_seconds, predictor.variant)
        self.tokenization_seconds = metrics.series(labels, metrics.tokenization_seconds, predictor.variant)
        variants = {r.variant for r in getattr(predictor, "routes", ())} or {predictor.variant}
        self.inference_seconds = {v: metrics.series(labels, metrics.inference_seconds, v)  # each shown from the start
                                  for v in sorted(variants)}
        self.dropped_texts = {reason: metrics.series(labels, metrics.dropped, reason)
                              for reason in (DEADLINE, DISCONNECTED)}

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
    """Counts every response by route template, status and model version, and times it (limits' refusals
    included)."""

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
            model, version = scope.get(MODEL, ("", ""))
            self.metrics.requests.labels(route, str(status[0]), model, version).inc()
            self.metrics.latency.labels(route, model, version).observe(time.perf_counter() - started)


def route(app, metrics: Metrics) -> None:
    """`GET /metrics`, in Prometheus' text format."""
    from fastapi.responses import Response

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
