"""`bertdeploy serve`: an exported classifier over HTTP, with dynamic batching, metrics and limits.

Routes: `POST /predict` (our JSON), the KServe v2 / Triton protocol under `/v2` (kserve.py),
`GET /metrics` (Prometheus). Liveness answers as soon as the server listens; readiness only
after the model has been loaded and warmed up. Inference runs in the batcher's thread
(batcher.py), never on the event loop. Limits answer at once: 413 for a body too large, 422
for a wrong field or too many texts, 429 when the queue is full, 401 without the API key (every
route but health, compared in constant time). Errors are JSON `{"error": ...}` without stack
traces. On SIGTERM uvicorn stops accepting, finishes the requests in flight, then the batcher
drains its queue.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local classes.
import asyncio
import hmac
import json
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bertdeploy import __version__
from bertdeploy.batcher import Batcher, Overloaded
from bertdeploy.errors import BertdeployError, check_options

logger = logging.getLogger(__name__)

HEALTH = ("/v2/health/live", "/v2/health/ready")
VERSION = "1"


@dataclass
class ServeOptions:
    artifact_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    variant: str | None = None
    backend: str = "auto"  # auto, onnxruntime or openvino
    max_batch_tokens: int | None = None  # default: the predictor's (1,024 on the CPU, 16,384 on a GPU)
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_texts_per_request: int = 256
    max_body_bytes: int = 1_000_000
    api_key_env: str | None = None
    threads: int | None = None
    providers: str = "cpu"
    model_name: str | None = None  # default: the artifact directory's name
    allow_fallback: bool = False
    engine: str = "local"  # local: this process (uvicorn); ray: a Ray Serve deployment (rayserve.py)
    replicas: int = 1  # ray: a fixed number of replicas...
    min_replicas: int = 1  # ...or, with max_replicas, autoscaled between these on ongoing requests
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 32  # ray: requests one replica holds at once (what Serve can batch)
    ray_address: str | None = None  # ray: a running cluster (default: $RAY_ADDRESS, else a local one)

    def __post_init__(self) -> None:
        self.artifact_dir = Path(self.artifact_dir)
        self.model_name = self.model_name or self.artifact_dir.absolute().name
        check_options([
            (0 <= self.port <= 65535, f"port {self.port} is not between 0 and 65535"),
            (self.max_batch_tokens is None or self.max_batch_tokens >= 1, "max_batch_tokens must be at least 1"),
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_wait_ms >= 0, "max_wait_ms must be 0 or more"),
            (self.max_texts_per_request >= 1, "max_texts_per_request must be at least 1"),
            (self.max_queue >= self.max_texts_per_request,
             f"max_queue ({self.max_queue}) must hold at least one full request ({self.max_texts_per_request} texts)"),
            (self.max_body_bytes >= 1, "max_body_bytes must be at least 1"),
            (self.engine in ("local", "ray"), "engine must be local or ray"),
            (self.replicas >= 1 and self.min_replicas >= 0, "replicas must be at least 1 (min_replicas 0)"),
            (self.max_replicas is None or self.max_replicas >= max(1, self.min_replicas),
             "max_replicas must be at least min_replicas and 1"),
            (self.target_ongoing_requests > 0 and self.max_ongoing_requests >= 1,
             "target_ongoing_requests must be above 0 and max_ongoing_requests at least 1"),
            (re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name) is not None,
             f"model name {self.model_name!r}: use letters, digits, '_', '.' and '-' only (--model-name)"),
        ])

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise BertdeployError(f"--api-key-env {self.api_key_env}: that environment variable is not set or empty")
        return key


def serve(options: ServeOptions) -> None:
    """Load the model, then serve until SIGTERM or Ctrl-C."""
    if options.engine == "ray":
        from bertdeploy.raybulk import import_ray

        import_ray()  # names the extra when Ray is missing
        from bertdeploy.rayserve import serve_ray

        return serve_ray(options)
    import uvicorn

    from bertdeploy.predictor import Predictor

    key = options.api_key()
    predictor = Predictor.load(options.artifact_dir, options.variant, options.providers, options.threads,
                               max_batch_tokens=options.max_batch_tokens, max_batch_size=options.max_batch_size,
                               allow_fallback=options.allow_fallback, backend=options.backend)
    app = create_app(predictor, options, key)
    logger.info("serving %s (%s) as model %r on http://%s:%d", options.artifact_dir, predictor.describe(),
                options.model_name, options.host, options.port)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=30)


def create_app(predictor, options: ServeOptions, api_key: str | None = None):
    """The ASGI app for a loaded `Predictor`; warm-up starts with the app's lifespan."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from bertdeploy import kserve

    metrics = _Metrics()
    batcher = Batcher(predictor, options.max_batch_size, options.max_wait_ms, options.max_queue, metrics.batch)
    metrics.queue.set_function(lambda: batcher.queued)
    state = {"ready": False}
    name, labels = options.model_name, predictor.labels
    inputs = ["text", "text_pair"] if predictor.pairs else ["text"]

    async def warm_up() -> None:
        """Each model once at the longest length, so the first requests find memory allocated."""
        try:
            await asyncio.to_thread(predictor.warm_up)
        except Exception:
            logger.exception("warm-up failed; the server stays not ready")
            return
        state["ready"] = True
        logger.info("ready")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        warming = asyncio.create_task(warm_up())
        yield
        warming.cancel()
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="bertdeploy", version=__version__, lifespan=lifespan,
                  description=f"Text classifier {name}: labels {', '.join(labels)}.")
    app.add_middleware(_Limits, max_body_bytes=options.max_body_bytes, api_key=api_key)
    app.add_middleware(_Metered, metrics=metrics)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(*invalid_body(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error; see the server's log")

    async def scores(texts: list[str], pairs: list[str] | None):
        if not state["ready"]:
            raise HTTPException(503, "the model is still warming up")
        try:
            return await batcher.predict(texts, pairs)
        except Overloaded as e:
            raise HTTPException(429, f"{e}; retry later", headers={"Retry-After": "1"}) from None

    PredictRequest, PredictResponse = _predict_models(options.max_texts_per_request)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Labels and scores for one text or many")
    async def predict(body: PredictRequest) -> dict:
        try:
            texts, pairs = request_texts(body, predictor.pairs)
        except BadRequest as e:
            raise HTTPException(422, str(e)) from None
        return predict_response(name, predictor.variant, labels, await scores(texts, pairs), body.all_scores)

    @app.get("/v2/health/live", summary="Liveness: the process serves requests")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Readiness: the model is loaded and warmed up")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/v2", summary="Server metadata (KServe v2)")
    async def server_metadata() -> dict:
        return {"name": "bertdeploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    def check_model(model: str, version: str | None = None) -> None:
        if model != name or version not in (None, VERSION):
            raise HTTPException(404, f"no model {model!r}" + (f" version {version!r}" if version else "") +
                                f"; this server has {name!r} version {VERSION}")

    @app.get("/v2/models/{model}", summary="Model metadata (KServe v2)")
    @app.get("/v2/models/{model}/versions/{version}", include_in_schema=False)
    async def model_metadata(model: str, version: str | None = None) -> dict:
        check_model(model, version)
        return {"name": name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                "inputs": [{"name": i, "datatype": "BYTES", "shape": [-1]} for i in inputs],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]}],
                "parameters": {"labels": labels, "variant": predictor.variant}}

    @app.get("/v2/models/{model}/ready", summary="Model readiness (KServe v2)")
    @app.get("/v2/models/{model}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(model: str, version: str | None = None) -> JSONResponse:
        check_model(model, version)
        return JSONResponse({"name": name, "ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.post("/v2/repository/index", summary="The models this server has (Triton's repository extension)")
    async def repository_index() -> list:
        return [{"name": name, "version": VERSION, "state": "READY" if state["ready"] else "LOADING"}]

    infer_schema = {"requestBody": {"required": True, "content": {"application/json": {"schema": _INFER_SCHEMA}}}}

    @app.post("/v2/models/{model}/infer", summary="Inference (KServe v2; JSON or Triton's binary tensors)",
              openapi_extra=infer_schema)
    @app.post("/v2/models/{model}/versions/{version}/infer", include_in_schema=False)
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        check_model(model, version)
        try:
            parsed = kserve.parse_request(await request.body(), request.headers.get(kserve.HEADER),
                                          options.max_texts_per_request)
            if sorted(parsed.inputs) != sorted(inputs):
                raise kserve.InferError(f"inputs must be {' and '.join(inputs)}, got {', '.join(parsed.inputs)}")
            texts, pairs = parsed.inputs["text"], parsed.inputs.get("text_pair")
            if pairs is not None and len(pairs) != len(texts):
                raise kserve.InferError(f"{len(texts)} texts but {len(pairs)} text_pair elements")
        except kserve.InferError as e:
            return error(400, str(e))
        probabilities = await scores(texts, pairs)
        body, headers = kserve.encode_response(name, VERSION, parsed, [labels[i] for i in probabilities.argmax(-1)],
                                               probabilities)
        return Response(body, headers=headers)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class BadRequest(ValueError):
    """A /predict body that parses but asks for something this model cannot do (answered with 422)."""


def invalid_body(problems: list[dict]) -> tuple[int, str]:
    """Status and message for a body pydantic refused: 400 when it is not JSON, else 422 naming the field."""
    if any(p.get("type") == "json_invalid" for p in problems):
        return 400, "the body is not valid JSON"
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return 422, f"{where}: {first.get('msg')}"


def request_texts(body, pairs_model: bool) -> tuple[list[str], list[str] | None]:
    """The texts (and pairs) of a /predict body; BadRequest when they do not fit the model."""
    texts = [body.text] if body.text is not None else body.texts
    pairs = [body.pair] if body.pair is not None else body.pairs
    if (body.text is None) == (body.texts is None):
        raise BadRequest("give either 'text' or 'texts'")
    if pairs_model != (pairs is not None):
        raise BadRequest(f"this model {'needs' if pairs_model else 'takes no'} 'pair'/'pairs'")
    if pairs is not None and len(pairs) != len(texts):
        raise BadRequest(f"{len(texts)} texts but {len(pairs)} pairs")
    return texts, pairs


def predict_response(model: str, variant: str, labels: list[str], probabilities, all_scores: bool) -> dict:
    """The /predict answer: the best label and its score per text (every label's with `all_scores`)."""
    predictions = []
    for row in probabilities:
        best = int(row.argmax())
        entry = {"label": labels[best], "score": float(row[best])}
        if all_scores:
            entry["scores"] = dict(zip(labels, row.tolist(), strict=True))
        predictions.append(entry)
    return {"model": model, "variant": variant, "predictions": predictions}


def _predict_models(max_texts: int):
    from pydantic import BaseModel, ConfigDict, Field

    Texts = list[str] | None

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str | None = Field(None, description="One text; or give `texts`.")
        texts: Texts = Field(None, max_length=max_texts, description=f"Up to {max_texts} texts.")
        pair: str | None = Field(None, description="The second text, for models trained on pairs.")
        pairs: Texts = Field(None, max_length=max_texts)
        all_scores: bool = Field(False, description="Every label's score, not only the best one's.")

    class Prediction(BaseModel):
        label: str
        score: float
        scores: dict[str, float] | None = None

    class PredictResponse(BaseModel):
        model: str
        variant: str
        predictions: list[Prediction]

    return PredictRequest, PredictResponse


_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "parameters": {"type": "object"},
    "data": {"type": "array", "items": {"type": "string"}}}}
_INFER_SCHEMA = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "items": _TENSOR},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}


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

        try:
            await self.app(scope, receive, recorded)
        finally:
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


KEY_REFUSED = "missing or wrong API key: send 'Authorization: Bearer <key>'"
KEY_CHALLENGE = ("www-authenticate", "Bearer")  # the header a 401 carries


def key_matches(authorization: bytes, api_key: bytes) -> bool:
    """Whether an Authorization header carries the key, compared in constant time."""
    return hmac.compare_digest(authorization, b"Bearer " + api_key)


def body_too_large(limit: int) -> str:
    return f"the body is over {limit} bytes"


async def _send_error(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
