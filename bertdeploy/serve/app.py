"""The ASGI app of `bertdeploy serve`, one for both engines: the local server runs it under uvicorn
(local.py), each Ray Serve replica mounts it with `@serve.ingress` (ray_engine.py).

`create_app` puts the routes over the model versions a server serves (models.py: one model, or a repository's)
and holds those of our own protocol: `POST /predict` (httpapi.py's request and answer; `model` names the model
where there are several), the health checks (live while no batching thread died and nothing failed to start;
ready once the models are warmed up and until draining), and every error as JSON `{"error": ...}` without a
stack trace. The KServe v2 routes, with the repository's load and unload, are kserve.py's, `/metrics`
prometheus.py's, the limits checked before any route limits.py's, how a route gets its texts scored served.py's.
Not here: loading the models (local.py, loader.py), the server process, its signals (local.py, ray_engine.py).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local classes.
import logging

from bertdeploy import __version__
from bertdeploy.serve import kserve, prometheus
from bertdeploy.serve.httpapi import (
    BadRequest,
    error,
    invalid_body,
    predict_models,
    predict_response,
    refusals,
    request_texts,
)
from bertdeploy.serve.lifecycle import Lifecycle, lifespan
from bertdeploy.serve.limits import Limits
from bertdeploy.serve.models import Models, Refused

logger = logging.getLogger(__name__)


def create_app(models: Models, api_key: str | None = None):
    """The ASGI app serving `models` (`Models.single(predictor, options)` for one loaded `Predictor`). Its lifespan
    starts the batchers, the warm-up of what is not warmed up, and a repository's loader."""
    from fastapi import FastAPI

    options = models.options
    if options.model_repository is None:
        (served,) = models.all()
        about = f"Text classifier {served.name}: labels {', '.join(served.labels)}."
    else:
        about = f"Text classifiers of the model repository {options.model_repository}."
    app = FastAPI(title="bertdeploy", version=__version__, description=about,
                  lifespan=lifespan(models.lifecycle, models.start, models.stop),
                  responses=refusals(401, 408, 413, 503))
    app.state.models = models  # for the engines, and tests
    app.add_middleware(Limits, options=options, api_key=api_key)
    app.add_middleware(prometheus.Metered, metrics=models.metrics)
    _error_handlers(app)
    _predict_route(app, models)
    _health_routes(app, models.lifecycle)
    kserve.routes(app, models)
    prometheus.route(app, models.metrics)
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

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error; see the server's log")


def _predict_route(app, models: Models) -> None:
    from fastapi import Request
    from starlette.exceptions import HTTPException

    PredictRequest, PredictResponse = predict_models(models.options.max_texts_per_request)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Labels and scores for one text or many", responses=refusals(400, 404, 422, 429, 503, 504))
    async def predict(body: PredictRequest, request: Request) -> dict:
        with models.using(body.model, body.version, request.scope) as served:
            try:
                texts, pairs = request_texts(body, served.predictor.pairs)
            except BadRequest as e:
                raise HTTPException(422, str(e)) from None
            return predict_response(await served.scores(texts, pairs, request), model=served.name,
                                    version=served.version, variant=served.predictor.variant,
                                    scheme=served.predictor.scheme, all_scores=body.all_scores)


def _health_routes(app, lifecycle: Lifecycle) -> None:
    from fastapi.responses import JSONResponse

    @app.get("/v2/health/live", summary="Liveness: no batching thread died, and the models did not fail to start")
    async def live() -> JSONResponse:
        return JSONResponse({"live": lifecycle.live}, status_code=200 if lifecycle.live else 503)

    @app.get("/v2/health/ready", summary="Readiness: the models are loaded and warmed up, and not shutting down",
             responses=refusals(503))
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": lifecycle.ready}, status_code=200 if lifecycle.ready else 503)
