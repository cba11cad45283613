"""The HTTP contract of `bertdeploy serve`, the same on both engines: the local server (local.py) and
Ray Serve (ray_engine.py), which mount the same app (app.py).

Their options (the predictor's settings among them as one `RuntimeOptions`), each setting that only one
engine takes marked as such on its field and refused on the other by one rule; the `/predict` request
and answer (pydantic models, the texts a body asks for, the answer's shape); the messages of refused
requests (a body that is not JSON or has a wrong field, a missing or wrong API key, a body too large)
and the error body `{"error": ...}` with its OpenAPI description; the health routes, which never need
the key. No routes, no server: app.py and the engines.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from bertdeploy import defaults
from bertdeploy.defaults import LOCAL, RAY
from bertdeploy.errors import BertdeployError, check_options
from bertdeploy.labels import LabelScheme
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.serve.repository import NAME, Policy

HEALTH = ("/v2/health/live", "/v2/health/ready")
ENGINE = "engine"  # the mark, in a field's metadata, of a setting that one engine alone takes


def _only(engine: str, default):
    """A ServeOptions field that `engine` alone takes (marked in its metadata)."""
    return field(default=default, metadata={ENGINE: engine})


def _taken_by(setting: dataclasses.Field, engine: str) -> bool:
    return setting.metadata.get(ENGINE, engine) == engine


@dataclass
class ServeOptions:
    artifact_dir: Path | None = None  # one model; or model_repository
    host: str = defaults.HOST
    port: int = defaults.PORT
    # how the predictor loads and runs; its max_batch_size (default here: 64) also caps the texts batched across
    # requests
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    max_wait_ms: float = defaults.MAX_WAIT_MS
    max_queue: int = _only(LOCAL, defaults.MAX_QUEUE)  # texts waiting to be batched before requests get 429
    max_texts_per_request: int = defaults.MAX_TEXTS_PER_REQUEST
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    # seconds from a request's arrival to its answer (504 after; its texts leave the queue)
    request_timeout: float = _only(LOCAL, defaults.REQUEST_TIMEOUT)
    body_timeout: float = _only(LOCAL, defaults.BODY_TIMEOUT)  # seconds for a whole body to arrive (408 after)
    # requests answered at once, health checks and /metrics aside (503 beyond)
    max_concurrent_requests: int = _only(LOCAL, defaults.MAX_CONCURRENT_REQUESTS)
    # on SIGTERM: seconds not ready but still serving before the listener closes, then the most seconds the
    # requests in flight get to finish
    drain_delay: float = _only(LOCAL, defaults.DRAIN_DELAY)
    drain_timeout: float = _only(LOCAL, defaults.DRAIN_TIMEOUT)
    api_key_env: str | None = None
    model_name: str | None = None  # default: the artifact directory's name
    engine: str = defaults.LOCAL  # local: this process (uvicorn); ray: a Ray Serve deployment (ray_engine.py)
    replicas: int = _only(RAY, defaults.REPLICAS)  # a fixed number of replicas, each a model of runtime.threads...
    min_replicas: int = _only(RAY, defaults.MIN_REPLICAS)  # ...or, with max_replicas, autoscaled between these
    max_replicas: int | None = _only(RAY, None)
    target_ongoing_requests: float = _only(RAY, defaults.TARGET_ONGOING_REQUESTS)
    max_ongoing_requests: int = _only(RAY, defaults.MAX_ONGOING_REQUESTS)  # requests one replica holds at once
    # requests Serve holds waiting for a replica before it refuses more
    max_queued_requests: int = _only(RAY, defaults.MAX_QUEUED_REQUESTS)
    ray_address: str | None = _only(RAY, None)  # a running cluster (default: $RAY_ADDRESS, else a local one)
    # ROOT/<name>/<version>/ exports, served side by side (repository.py); in place of artifact_dir
    model_repository: Path | None = _only(LOCAL, None)
    version_policy: str = _only(LOCAL, "latest")  # latest, latest:N or all (repository.py)
    poll: float | None = _only(LOCAL, None)  # seconds between looks at model_repository for changes (None: never)
    max_loaded_models: int | None = _only(LOCAL, None)  # model versions loaded at once (None: no limit)

    def __post_init__(self) -> None:
        if self.engine == RAY and self.model_repository is not None:
            raise BertdeployError("--model-repository: the local engine's only; a Ray Serve replica serves one model "
                                  "(Serve's multiplexing loads models into replicas on demand, by a request header, "
                                  "with no versions, load/unload or reload without dropped requests): run one "
                                  "`serve --engine ray` per model")
        check_options([((self.artifact_dir is None) != (self.model_repository is None),
                        "give either a model directory or --model-repository ROOT")])
        repository = self.model_repository is not None
        check_options([
            (not repository or self.model_name is None,
             "--model-name: with --model-repository each model is named by its folder"),
            (repository or (self.version_policy, self.poll, self.max_loaded_models) == ("latest", None, None),
             "--version-policy, --poll and --max-loaded-models go with --model-repository"),
            (self.poll is None or self.poll > 0, "--poll must be above 0 seconds"),
            (self.max_loaded_models is None or self.max_loaded_models >= 1, "--max-loaded-models must be at least 1"),
        ])
        if repository:
            self.model_repository = Path(self.model_repository)
            Policy.parse(self.version_policy)
        else:
            self.artifact_dir = Path(self.artifact_dir)
            self.model_name = self.model_name or self.artifact_dir.absolute().name
        if self.runtime.max_batch_size is None:
            self.runtime = dataclasses.replace(self.runtime, max_batch_size=defaults.SERVE_MAX_BATCH_SIZE)
        check_options([
            (0 <= self.port <= 65535, f"port {self.port} is not between 0 and 65535"),
            (self.max_wait_ms >= 0, "max_wait_ms must be 0 or more"),
            (self.max_texts_per_request >= 1, "max_texts_per_request must be at least 1"),
            (self.max_queue >= self.max_texts_per_request or not self.takes("max_queue"),
             f"max_queue ({self.max_queue}) must hold at least one full request ({self.max_texts_per_request} texts)"),
            (self.max_body_bytes >= 1, "max_body_bytes must be at least 1"),
            (self.request_timeout > 0 and self.body_timeout > 0 and self.drain_timeout > 0,
             "request_timeout, body_timeout and drain_timeout must be above 0 seconds"),
            (self.drain_delay >= 0, "drain_delay must be 0 seconds or more"),
            (self.max_concurrent_requests >= 1, "max_concurrent_requests must be at least 1"),
            (self.engine in defaults.ENGINES, "engine must be local or ray"),
            (self.replicas >= 1 and self.min_replicas >= 0, "replicas must be at least 1 (min_replicas 0)"),
            (self.max_replicas is None or self.max_replicas >= max(1, self.min_replicas),
             "max_replicas must be at least min_replicas and 1"),
            (self.target_ongoing_requests > 0 and self.max_ongoing_requests >= 1,
             "target_ongoing_requests must be above 0 and max_ongoing_requests at least 1"),
            (self.max_queued_requests >= 1 or self.max_queued_requests == -1,
             "max_queued_requests must be at least 1, or -1 for no limit"),
            (self.model_name is None or NAME.fullmatch(self.model_name) is not None,
             f"model name {self.model_name!r}: use letters, digits, '_', '.' and '-', not first (--model-name)"),
        ])
        if self.engine == RAY and (elsewhere := self._elsewhere()):
            raise BertdeployError(f"{', '.join(elsewhere)}: the local engine's only; Ray Serve has settings of its "
                                  "own for these (docs/serve.md)")

    def _elsewhere(self) -> list[str]:
        """The settings another engine alone takes that differ from their defaults, as options (`--max-queue`).

        Refused on the Ray engine. The local engine lets Ray's settings be: `application(options)` deploys
        options built with the default engine as they are (docs/scaling.md)."""
        return [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(self)
                if not _taken_by(f, self.engine) and getattr(self, f.name) != f.default]

    def takes(self, name: str) -> bool:
        """Whether this engine applies the setting `name` (one that another engine alone takes, it does not)."""
        return _taken_by(self.__dataclass_fields__[name], self.engine)

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise BertdeployError(f"--api-key-env {self.api_key_env}: that environment variable is not set or empty")
        return key


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
    for where, values in (("text", texts), ("pair", pairs or [])):
        for i, value in enumerate(values):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate from a \ud800-style JSON escape
                raise BadRequest(f"{where} {i} is not valid UTF-8 (it has a lone surrogate)") from None
    return texts, pairs


def predict_response(probabilities, *, model: str, version: int, variant: str, scheme: LabelScheme,
                     all_scores: bool) -> dict:
    """The /predict answer: per text, the best label and its score (every label's with `all_scores`); for a
    multi-label model the label set (`labels`, possibly empty), the best passing label (`label`, left out
    when none passes) and every label's score."""
    predictions = []
    for row, decided in zip(probabilities, scheme.decide(probabilities), strict=True):
        best = int(row.argmax())
        entry = {"label": scheme.labels[best], "score": float(row[best])}
        if scheme.multi_label:
            entry.update(label=scheme.best(row, decided), labels=scheme.names(decided))
        if all_scores or scheme.multi_label:
            entry["scores"] = dict(zip(scheme.labels, row.tolist(), strict=True))
        predictions.append(entry)
    return {"model": model, "version": version, "variant": variant, "predictions": predictions}


def predict_models(max_texts: int):
    from pydantic import BaseModel, ConfigDict, Field

    Texts = list[str] | None

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str | None = Field(None, description="One text; or give `texts`.")
        texts: Texts = Field(None, max_length=max_texts, description=f"Up to {max_texts} texts.")
        pair: str | None = Field(None, description="The second text, for models trained on pairs.")
        pairs: Texts = Field(None, max_length=max_texts)
        all_scores: bool = Field(False, description="Every label's score, not only the best one's.")
        model: str | None = Field(None, description="The model, where the server has several (a model repository).")
        version: int | None = Field(None, ge=1, description="The model's version (default: the newest served).")

    class Prediction(BaseModel):
        label: str | None = Field(None, description="The best label; for multi-label models the best-scoring label "
                                                    "that passes its threshold, left out when none does.")
        labels: list[str] | None = Field(None, description="Multi-label models: every label that passes its "
                                                           "threshold, in label order (possibly none).")
        score: float
        scores: dict[str, float] | None = Field(None, description="Every label's score (always, for multi-label "
                                                                  "models).")

    class PredictResponse(BaseModel):
        model: str
        version: int
        variant: str
        predictions: list[Prediction]

    return PredictRequest, PredictResponse


KEY_REFUSED = "missing or wrong API key: send 'Authorization: Bearer <key>'"
KEY_CHALLENGE = ("www-authenticate", "Bearer")  # the header a 401 carries


def key_matches(authorization: bytes, api_key: bytes) -> bool:
    """Whether an Authorization header carries the key, compared in constant time."""
    return hmac.compare_digest(authorization, b"Bearer " + api_key)


def body_too_large(limit: int) -> str:
    return f"the body is over {limit} bytes"


def error(status: int, message: str, headers: dict | None = None):
    """A refusal as the JSON body `{"error": message}` every route answers with."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


_REFUSED = {400: "The body is not valid JSON, or (KServe) a malformed inference request",
            401: "A missing or wrong API key (a server started with --api-key-env)",
            404: "No such model or version", 409: "A version still being copied, or over --max-loaded-models",
            413: "The body is over --max-body-bytes",
            408: "The body did not arrive within --body-timeout",
            422: "A wrong field, more texts than --max-texts-per-request, no model named where there are several, "
                 "or a version that cannot be loaded", 429: "The queue is full; retry later",
            503: "Not ready (warming up, or shutting down), or more than --max-concurrent-requests at once",
            504: "No answer within --request-timeout"}


def refusals(*statuses: int) -> dict:
    """The OpenAPI `responses` of the errors a route may answer, each a JSON `{"error": ...}`."""
    schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    return {status: {"description": _REFUSED[status], "content": {"application/json": {"schema": schema}}}
            for status in statuses}
