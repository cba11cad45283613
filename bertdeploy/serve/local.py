"""`bertdeploy serve`, the local engine: an exported classifier over HTTP, with dynamic batching, metrics
and limits.

Routes: `POST /predict` (our JSON, httpapi.py), the KServe v2 / Triton protocol under `/v2`
(kserve.py), `GET /metrics` (Prometheus). Liveness answers as soon as the server listens; readiness
only after the model has been loaded and warmed up. Inference runs in the batcher's thread
(batcher.py), never on the event loop. Limits answer at once: 413 for a body too large, 422
for a wrong field or too many texts, 429 when the queue is full, 401 without the API key (every
route but health, compared in constant time). Errors are JSON `{"error": ...}` without stack
traces. On SIGTERM uvicorn stops accepting, finishes the requests in flight, then the batcher
drains its queue. Ray Serve (ray_engine.py) answers the same `/predict`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local classes.
import asyncio
import json
import logging
import socket
import time
from contextlib import asynccontextmanager

from bertdeploy import __version__
from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.serve import kserve
from bertdeploy.serve.batcher import Batcher, Overloaded
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


def serve(options: ServeOptions) -> None:
    """Load the model, then serve until SIGTERM or Ctrl-C. Port 0 takes a free port, named in the log."""
    check_options([(options.engine == "local", "serve.local.serve runs the local engine; for engine='ray' call "
                                               "bertdeploy.serve.ray_engine.serve_ray")])
    import uvicorn

    key = options.api_key()
    predictor = Predictor.load(options.artifact_dir, options=options.runtime)
    app = create_app(predictor, options, key)
    listening = _listen(options.host, options.port)
    host, port = listening.getsockname()[:2]
    logger.info("serving %s (%s) as model %r on http://%s:%d", options.artifact_dir, predictor.describe(),
                options.model_name, f"[{host}]" if ":" in host else host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30))
    with listening:
        server.run(sockets=[listening])
    if not server.started:
        raise BertdeployError("the server did not start; see the messages above")


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
    """What the routes share: the predictor, its batcher, the options, and whether warm-up is done."""

    def __init__(self, predictor, options: ServeOptions, batcher: Batcher) -> None:
        self.predictor, self.options, self.batcher = predictor, options, batcher
        self.name, self.labels = options.model_name, predictor.labels
        self.inputs = ["text", "text_pair"] if predictor.pairs else ["text"]
        self.ready = False

    async def warm_up(self) -> None:
        """Each model once at the longest length, so the first requests find memory allocated."""
        try:
            await asyncio.to_thread(self.predictor.warm_up)
        except Exception:
            logger.exception("warm-up failed; the server stays not ready")
            return
        self.ready = True
        logger.info("ready")

    async def scores(self, texts: list[str], pairs: list[str] | None):
        from starlette.exceptions import HTTPException

        if not self.ready:
            raise HTTPException(503, "the model is still warming up")
        try:
            return await self.batcher.predict(texts, pairs)
        except Overloaded as e:
            raise HTTPException(429, f"{e}; retry later", headers={"Retry-After": "1"}) from None


def create_app(predictor, options: ServeOptions, api_key: str | None = None):
    """The ASGI app for a loaded `Predictor` (batching up to its max_batch_size texts; `options.runtime` is what
    `serve` loads it with); warm-up starts with the app's lifespan."""
    from fastapi import FastAPI

    metrics = _Metrics()
    batcher = Batcher(predictor, predictor.max_batch_size, options.max_wait_ms, options.max_queue, metrics.batch)
    metrics.queue.set_function(lambda: batcher.queued)
    served = _Served(predictor, options, batcher)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        warming = asyncio.create_task(served.warm_up())
        yield
        warming.cancel()
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="bertdeploy", version=__version__, lifespan=lifespan, responses=_refusals(401, 413),
                  description=f"Text classifier {served.name}: labels {', '.join(served.labels)}.")
    app.add_middleware(_Limits, max_body_bytes=options.max_body_bytes, api_key=api_key)
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
            422: "A wrong field, or more texts than --max-texts-per-request", 429: "The queue is full; retry later",
            503: "The model is still warming up"}


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
    from starlette.exceptions import HTTPException

    PredictRequest, PredictResponse = predict_models(served.options.max_texts_per_request)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Labels and scores for one text or many", responses=_refusals(400, 422, 429, 503))
    async def predict(body: PredictRequest) -> dict:
        try:
            texts, pairs = request_texts(body, served.predictor.pairs)
        except BadRequest as e:
            raise HTTPException(422, str(e)) from None
        return predict_response(served.name, served.predictor.variant, served.predictor.scheme,
                                await served.scores(texts, pairs), body.all_scores)


def _health_routes(app, served: _Served) -> None:
    from fastapi.responses import JSONResponse

    @app.get("/v2/health/live", summary="Liveness: the process serves requests")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Readiness: the model is loaded and warmed up", responses=_refusals(503))
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
        return [{"name": name, "version": VERSION, "state": "READY" if served.ready else "LOADING"}]

    infer_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": kserve.request_schema(inputs, served.options.max_texts_per_request)}}}}

    @app.post("/v2/models/{model}/infer", summary="Inference (KServe v2; JSON or Triton's binary tensors)",
              openapi_extra=infer_schema, responses=_refusals(400, 404, 429, 503))
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
        probabilities = await served.scores(texts, pairs)
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


class _Metrics:
    def __init__(self) -> None:
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

    def batch(self, texts: int, length: int) -> None:
        self.batch_size.observe(texts)
        self.batch_tokens.observe(texts * length)


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
    """The API key (all routes but health) and the body size limit, checked before any route runs.

    The body is read here, at most `max_body_bytes` of it (chunked bodies too), and handed on whole."""

    def __init__(self, app, max_body_bytes: int, api_key: str | None) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in HEALTH:
            if not key_matches(headers.get(b"authorization", b""), self.api_key):
                return await _send_error(send, 401, KEY_REFUSED, [tuple(x.encode() for x in KEY_CHALLENGE)])
        too_large = body_too_large(self.max_body_bytes)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await _send_error(send, 413, too_large)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await _send_error(send, 413, too_large)
            if not message.get("more_body"):
                break
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
