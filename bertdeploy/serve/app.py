"""The ASGI app of `bertdeploy serve`, one for both engines: the local server runs it under uvicorn
(local.py), each Ray Serve replica mounts it with `@serve.ingress` (ray_engine.py).

`create_app` wires a loaded predictor to its batcher, lifecycle, metrics and limits, and holds the
routes of our own protocol: `POST /predict` (httpapi.py's request and answer), the health checks (live
while the batching thread runs and warm-up has not failed; ready once warmed up and until draining),
and every error as JSON `{"error": ...}` without a stack trace. The KServe v2 routes are kserve.py's,
`/metrics` prometheus.py's, the limits checked before any route limits.py's, how a route gets its texts
scored served.py's. Not here: loading the model, the server process, its signals (local.py, ray_engine.py).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local classes.
import logging

from bertdeploy import __version__
from bertdeploy.serve import kserve, prometheus
from bertdeploy.serve.batcher import Batcher
from bertdeploy.serve.httpapi import (
    BadRequest,
    ServeOptions,
    error,
    invalid_body,
    predict_models,
    predict_response,
    refusals,
    request_texts,
)
from bertdeploy.serve.lifecycle import Lifecycle, lifespan
from bertdeploy.serve.limits import Limits
from bertdeploy.serve.served import Served

logger = logging.getLogger(__name__)


def queue_texts(options: ServeOptions) -> int:
    """The texts the batcher holds waiting: `max_queue` on the local engine. A Ray Serve replica holds at most
    `max_ongoing_requests` requests (Serve queues the rest, up to `max_queued_requests`), so its batcher takes
    all their texts."""
    if options.takes("max_queue"):
        return options.max_queue
    return options.max_ongoing_requests * options.max_texts_per_request


def create_app(predictor, options: ServeOptions, api_key: str | None = None, *, warmed: bool = False):
    """The ASGI app for a loaded `Predictor` (batching up to its max_batch_size texts; `options.runtime` is what
    it was loaded with). Its lifespan starts the batcher and, unless `warmed` (the predictor was warmed up
    already), the warm-up."""
    from fastapi import FastAPI

    metrics = prometheus.Metrics(options.model_name, predictor)
    batcher = Batcher(predictor, predictor.max_batch_size, options.max_wait_ms, queue_texts(options), metrics)
    metrics.queue.set_function(lambda: batcher.queued)
    lifecycle = Lifecycle(batcher, warmed)
    served = Served(predictor, options, batcher, lifecycle)
    app = FastAPI(title="bertdeploy", version=__version__, lifespan=lifespan(lifecycle, predictor),
                  responses=refusals(401, 408, 413, 503),
                  description=f"Text classifier {served.name}: labels {', '.join(served.labels)}.")
    app.state.served = served  # for the engines, and tests
    app.add_middleware(Limits, options=options, api_key=api_key)
    app.add_middleware(prometheus.Metered, metrics=metrics)
    _error_handlers(app)
    _predict_route(app, served)
    _health_routes(app, lifecycle)
    kserve.routes(app, served)
    prometheus.route(app, metrics)
    return app


def _error_handlers(app) -> None:
    """Every error as JSON `{"error": ...}`: refused bodies by httpapi's words, crashes without a trace."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

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


def _predict_route(app, served: Served) -> None:
    from fastapi import Request
    from starlette.exceptions import HTTPException

    PredictRequest, PredictResponse = predict_models(served.options.max_texts_per_request)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Labels and scores for one text or many", responses=refusals(400, 422, 429, 503, 504))
    async def predict(body: PredictRequest, request: Request) -> dict:
        try:
            texts, pairs = request_texts(body, served.predictor.pairs)
        except BadRequest as e:
            raise HTTPException(422, str(e)) from None
        return predict_response(served.name, served.predictor.variant, served.predictor.scheme,
                                await served.scores(texts, pairs, request), body.all_scores)


def _health_routes(app, lifecycle: Lifecycle) -> None:
    from fastapi.responses import JSONResponse

    @app.get("/v2/health/live", summary="Liveness: the batching thread runs and warm-up has not failed")
    async def live() -> JSONResponse:
        return JSONResponse({"live": lifecycle.live}, status_code=200 if lifecycle.live else 503)

    @app.get("/v2/health/ready", summary="Readiness: the model is loaded and warmed up, and not shutting down",
             responses=refusals(503))
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": lifecycle.ready}, status_code=200 if lifecycle.ready else 503)
