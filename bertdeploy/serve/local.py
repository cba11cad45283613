"""`bertdeploy serve`, the local engine: an exported classifier over HTTP, with dynamic batching, metrics
and limits.

Routes: `POST /predict` (our JSON, httpapi.py), the KServe v2 / Triton protocol under `/v2`
(kserve.py), `GET /metrics` (Prometheus: requests, batches, time in the queue, tokenization and
inference, texts dropped). Liveness answers while the batching thread runs and warm-up has not
failed; readiness only after the model has been loaded and warmed up, and no more once SIGTERM
came. Inference runs in the batcher's thread (batcher.py), never on the event loop. Limits answer
at once: 413 for a body too large, 408 for one that does not arrive within `body_timeout`, 422 for
a wrong field or too many texts, 429 when the queue is full, 503 beyond `max_concurrent_requests`
(health checks and /metrics aside) or when the batcher takes no more, 504 when `request_timeout`
passes (its texts leave the queue, as do those of a client that went away), 401 without the API
key (every route but health, compared in constant time). Errors are JSON `{"error": ...}` without
stack traces. On SIGTERM readiness fails at once, requests are still served for `drain_delay`
seconds, then uvicorn stops accepting and gives the requests in flight up to `drain_timeout`
seconds, then the batcher drains its queue. Ray Serve (ray_engine.py) answers the same `/predict`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local classes.
import asyncio
import json
import logging
import signal
import socket
import time
from contextlib import asynccontextmanager

from bertdeploy import __version__
from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve import kserve
from bertdeploy.serve.batcher import (
    DEADLINE,
    DISCONNECTED,
    Batcher,
    DeadlineExceeded,
    Observer,
    Overloaded,
    ShuttingDown,
)
from bertdeploy.serve.httpapi import (
    HEALTH,
    KEY_CHALLENGE,
    KEY_REFUSED,
    BadRequest,
    ServeOptions,
    body_too_large,
    invalid_body,
    key_matches,
    predict_models,
    predict_response,
    request_texts,
)

logger = logging.getLogger(__name__)

VERSION = "1"
ARRIVED = "bertdeploy.arrived"  # the scope's key for when a request came (time.monotonic()), set by _Limits
UNCAPPED = (*HEALTH, "/metrics")  # routes max_concurrent_requests does not count: probes answer under load


def serve(options: ServeOptions) -> None:
    """Load the model, then serve until SIGTERM or Ctrl-C. Port 0 takes a free port, named in the log."""
    check_options([(options.engine == "local", "serve.local.serve runs the local engine; for engine='ray' call "
                                               "bertdeploy.serve.ray_engine.serve_ray")])
    key = options.api_key()
    predictor = Predictor.load(options.artifact_dir, options=options.runtime)
    app = create_app(predictor, options, key)
    listening = _listen(options.host, options.port)
    host, port = listening.getsockname()[:2]
    logger.info("serving %s (%s) as model %r on http://%s:%d", options.artifact_dir, predictor.describe(),
                options.model_name, f"[{host}]" if ":" in host else host, port)
    server = draining_server(app, options)
    with listening:
        server.run(sockets=[listening])
    if not server.started:
        raise BertdeployError("the server did not start; see the messages above")


def draining_server(app, options: ServeOptions):
    """uvicorn's Server for an app of `create_app`, which stops as a load balancer expects.

    On SIGTERM readiness fails at once while requests are still served; `options.drain_delay` seconds later
    (at once on SIGINT, or on a second SIGTERM) uvicorn closes the listener and idle connections and waits
    up to `options.drain_timeout` seconds for the requests in flight, then the app's batcher drains; a
    request that arrives on an open connection from then on gets 503."""
    import uvicorn

    served, delay = app.state.served, options.drain_delay

    class Draining(uvicorn.Server):
        closing_at: float | None = None  # time.monotonic() when the delay after SIGTERM ends
        pending: int | None = None  # that SIGTERM, handed to uvicorn then

        def handle_exit(self, sig, frame) -> None:
            served.draining = True
            if sig == signal.SIGTERM and self.closing_at is None and delay > 0 and not self.should_exit:
                logger.info("SIGTERM: not ready; serving %g s more, then waiting up to %g s for the requests in "
                            "flight", delay, options.drain_timeout)
                self.closing_at, self.pending = time.monotonic() + delay, sig
                return
            served.closing_since = served.closing_since or time.monotonic()
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.closing_at is not None and time.monotonic() >= self.closing_at and not self.should_exit:
                served.closing_since = time.monotonic()
                super().handle_exit(self.pending, None)  # as if the signal came now: uvicorn re-raises it on exit
            return await super().on_tick(counter)

    return Draining(uvicorn.Config(app, log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=options.drain_timeout))


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (IPv6 when the host has a colon), for uvicorn to serve on."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
        listening.listen(2048)  # connections queue from here on, before uvicorn's loop accepts them
    except OSError as e:
        listening.close()
        raise BertdeployError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or "
                              "--host") from None
    return listening


class _Served:
    """What the routes share: the predictor, its batcher, the options, and the server's state: warmed up (or
    failed to), draining (SIGTERM came)."""

    def __init__(self, predictor, options: ServeOptions, batcher: Batcher) -> None:
        self.predictor, self.options, self.batcher = predictor, options, batcher
        self.name, self.labels = options.model_name, predictor.labels
        self.inputs = ["text", "text_pair"] if predictor.pairs else ["text"]
        self.warmed = self.failed = self.draining = False
        # when the drain delay ended and the listener began to close: requests arriving later are refused (503)
        self.closing_since: float | None = None

    @property
    def ready(self) -> bool:
        return self.warmed and not self.draining

    @property
    def live(self) -> bool:
        return not self.failed and self.batcher.alive

    @property
    def state(self) -> str:
        """Triton's model state, for the repository index."""
        return "READY" if self.ready else "UNAVAILABLE" if self.failed or self.draining else "LOADING"

    async def warm_up(self) -> None:
        """Each model once at the longest length, so the first requests find memory allocated."""
        try:
            await asyncio.to_thread(self.predictor.warm_up)
        except Exception:
            logger.exception("warm-up failed; the server is neither ready nor live")
            self.failed = True
            return
        self.warmed = True
        logger.info("ready")

    async def scores(self, texts: list[str], pairs: list[str] | None, request):
        """The batcher's scores for a request's texts, within its deadline, unless its client goes away."""
        from starlette.exceptions import HTTPException

        if self.failed:
            raise HTTPException(503, "the model failed to warm up; see the server's log")
        if not self.warmed:
            raise HTTPException(503, "the model is still warming up")
        arrived = request.scope.get(ARRIVED, time.monotonic())
        if self.closing_since is not None and arrived >= self.closing_since:
            raise HTTPException(503, "the server is shutting down; retry on another instance",
                                headers={"Retry-After": "1"})
        deadline = arrived + self.options.request_timeout
        work = asyncio.ensure_future(self.batcher.predict(texts, pairs, deadline))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if not task.done():
                    task.cancel()  # work: the batcher drops the texts it has not taken
        if not work.done():
            raise HTTPException(499, "the client closed the connection")  # nobody reads it: for the metrics
        try:
            return work.result()
        except ShuttingDown as e:
            raise HTTPException(503, f"{e}; retry later", headers={"Retry-After": "1"}) from None
        except Overloaded as e:
            raise HTTPException(429, f"{e}; retry later", headers={"Retry-After": "1"}) from None
        except DeadlineExceeded:
            raise HTTPException(504, f"no answer within {self.options.request_timeout:g} s (the request "
                                     "timeout); retry later or send fewer texts") from None


async def _disconnected(receive) -> None:
    """Returns when the client goes away (after the body was read, receive only waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(predictor, options: ServeOptions, api_key: str | None = None):
    """The ASGI app for a loaded `Predictor` (batching up to its max_batch_size texts; `options.runtime` is what
    `serve` loads it with); warm-up starts with the app's lifespan."""
    from fastapi import FastAPI

    metrics = _Metrics(options.model_name, predictor)
    batcher = Batcher(predictor, predictor.max_batch_size, options.max_wait_ms, options.max_queue, metrics)
    metrics.queue.set_function(lambda: batcher.queued)
    served = _Served(predictor, options, batcher)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        warming = asyncio.create_task(served.warm_up())
        yield
        warming.cancel()
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="bertdeploy", version=__version__, lifespan=lifespan, responses=_refusals(401, 408, 413, 503),
                  description=f"Text classifier {served.name}: labels {', '.join(served.labels)}.")
    app.state.served = served  # for draining_server, and tests
    app.add_middleware(_Limits, options=options, api_key=api_key)
    app.add_middleware(_Metered, metrics=metrics)
    _error_handlers(app)
    _predict_route(app, served)
    _health_routes(app, served)
    _kserve_routes(app, served)
    _metrics_route(app, metrics)
    return app


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


_REFUSED = {400: "The body is not valid JSON, or (KServe) a malformed inference request",
            401: "A missing or wrong API key (a server started with --api-key-env)",
            404: "No such model or version", 413: "The body is over --max-body-bytes",
            408: "The body did not arrive within --body-timeout",
            422: "A wrong field, or more texts than --max-texts-per-request", 429: "The queue is full; retry later",
            503: "Not ready (warming up, or shutting down), or more than --max-concurrent-requests at once",
            504: "No answer within --request-timeout"}


def _refusals(*statuses: int) -> dict:
    """The OpenAPI `responses` of the errors a route may answer, each a JSON `{"error": ...}`."""
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    return {status: {"description": _REFUSED[status], "content": {"application/json": {"schema": error}}}
            for status in statuses}


def _error_handlers(app) -> None:
    """Every error as JSON `{"error": ...}`: refused bodies by httpapi's words, crashes without a trace."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(*invalid_body(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error; see the server's log")


def _predict_route(app, served: _Served) -> None:
    from fastapi import Request
    from starlette.exceptions import HTTPException

    PredictRequest, PredictResponse = predict_models(served.options.max_texts_per_request)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Labels and scores for one text or many", responses=_refusals(400, 422, 429, 503, 504))
    async def predict(body: PredictRequest, request: Request) -> dict:
        try:
            texts, pairs = request_texts(body, served.predictor.pairs)
        except BadRequest as e:
            raise HTTPException(422, str(e)) from None
        return predict_response(served.name, served.predictor.variant, served.predictor.scheme,
                                await served.scores(texts, pairs, request), body.all_scores)


def _health_routes(app, served: _Served) -> None:
    from fastapi.responses import JSONResponse

    @app.get("/v2/health/live", summary="Liveness: the batching thread runs and warm-up has not failed")
    async def live() -> JSONResponse:
        return JSONResponse({"live": served.live}, status_code=200 if served.live else 503)

    @app.get("/v2/health/ready", summary="Readiness: the model is loaded and warmed up, and not shutting down",
             responses=_refusals(503))
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": served.ready}, status_code=200 if served.ready else 503)


def _kserve_routes(app, served: _Served) -> None:
    """Server and model metadata, readiness, Triton's repository index and inference, by the v2 protocol."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException


    name, labels, inputs = served.name, served.labels, served.inputs

    @app.get("/v2", summary="Server metadata (KServe v2)")
    async def server_metadata() -> dict:
        return {"name": "bertdeploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    def check_model(model: str, version: str | None = None) -> None:
        if model != name or version not in (None, VERSION):
            raise HTTPException(404, f"no model {model!r}" + (f" version {version!r}" if version else "") +
                                f"; this server has {name!r} version {VERSION}")

    @app.get("/v2/models/{model}", summary="Model metadata (KServe v2)", responses=_refusals(404))
    @app.get("/v2/models/{model}/versions/{version}", include_in_schema=False)
    async def model_metadata(model: str, version: str | None = None) -> dict:
        check_model(model, version)
        return {"name": name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                "inputs": [{"name": i, "datatype": "BYTES", "shape": [-1]} for i in inputs],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]}],
                "parameters": {**served.predictor.scheme.manifest_fields(), "variant": served.predictor.variant}}

    @app.get("/v2/models/{model}/ready", summary="Model readiness (KServe v2)", responses=_refusals(404, 503))
    @app.get("/v2/models/{model}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(model: str, version: str | None = None) -> JSONResponse:
        check_model(model, version)
        return JSONResponse({"name": name, "ready": served.ready}, status_code=200 if served.ready else 503)

    @app.post("/v2/repository/index", summary="The models this server has (Triton's repository extension)")
    async def repository_index() -> list:
        return [{"name": name, "version": VERSION, "state": served.state}]

    infer_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": kserve.request_schema(inputs, served.options.max_texts_per_request)}}}}

    @app.post("/v2/models/{model}/infer", summary="Inference (KServe v2; JSON or Triton's binary tensors)",
              openapi_extra=infer_schema, responses=_refusals(400, 404, 429, 503, 504))
    @app.post("/v2/models/{model}/versions/{version}/infer", include_in_schema=False)
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        check_model(model, version)
        try:
            parsed = kserve.parse_request(await request.body(), request.headers.get(kserve.HEADER),
                                          served.options.max_texts_per_request)
            if sorted(parsed.inputs) != sorted(inputs):
                raise kserve.InferError(f"inputs must be {' and '.join(inputs)}, got "
                                        f"{', '.join(parsed.inputs) or 'none'}")
            texts, pairs = parsed.inputs["text"], parsed.inputs.get("text_pair")
            if pairs is not None and len(pairs) != len(texts):
                raise kserve.InferError(f"{len(texts)} texts but {len(pairs)} text_pair elements")
        except kserve.InferError as e:
            return _error(400, str(e))
        probabilities = await served.scores(texts, pairs, request)
        scheme = served.predictor.scheme
        body, headers = kserve.encode_response(name, VERSION, parsed,
                                               [scheme.text(d) for d in scheme.decide(probabilities)], probabilities)
        return Response(body, headers=headers)


def _metrics_route(app, metrics: "_Metrics") -> None:
    from fastapi.responses import Response

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _Metrics(Observer):
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


class _Metered:
    """Counts every response by route template and status, and times it (limits' refusals included)."""

    def __init__(self, app, metrics: _Metrics) -> None:
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


class _Limits:
    """The API key (all routes but health), the cap on concurrent requests (not counting health checks and
    /metrics), the body's size and the time it may take to arrive, checked before any route runs; stamps
    the request's arrival (`scope[ARRIVED]`) for its deadline.

    The body is read here, at most `max_body_bytes` of it (chunked bodies too), and handed on whole."""

    def __init__(self, app, options: ServeOptions, api_key: str | None) -> None:
        self.app, self.options = app, options
        self.api_key = api_key.encode() if api_key else None
        self.active = 0  # requests counted against max_concurrent_requests

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = time.monotonic()
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in HEALTH:
            if not key_matches(headers.get(b"authorization", b""), self.api_key):
                return await _send_error(send, 401, KEY_REFUSED, [tuple(x.encode() for x in KEY_CHALLENGE)])
        if scope["path"] in UNCAPPED:
            return await self._read(scope, receive, send, headers)
        if self.active >= self.options.max_concurrent_requests:
            return await _send_error(send, 503, f"over {self.options.max_concurrent_requests} requests at once "
                                                "(--max-concurrent-requests); retry later", [(b"retry-after", b"1")])
        self.active += 1
        try:
            await self._read(scope, receive, send, headers)
        finally:
            self.active -= 1

    async def _read(self, scope, receive, send, headers: dict) -> None:
        limit = self.options.max_body_bytes
        too_large = body_too_large(limit)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            return await _send_error(send, 413, too_large)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.options.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit:
                        return await _send_error(send, 413, too_large)
                    if not message.get("more_body"):
                        break
        except TimeoutError:  # the connection closes after the answer: the rest of the body never comes
            return await _send_error(send, 408, f"the body did not arrive within {self.options.body_timeout:g} s "
                                                "(--body-timeout)", [(b"connection", b"close")])
        body, delivered = b"".join(chunks), [False]

        async def replay():
            if delivered[0]:
                return await receive()  # after the body: wait for the client to go away
            delivered[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _send_error(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
