"""The KServe v2 / Triton inference protocol's request and response bodies, JSON and binary.

A request carries a BYTES input `text` (shape [n] or [n, 1]) and, for sentence-pair models,
`text_pair`; the response carries `label` (BYTES, [n]) and `probabilities` (FP32, [n, labels]).
For a multi-label model, each `label` element is the text's label set joined by the model's
separator ("" when no label passes its threshold; the model metadata's parameters give the
separator and thresholds) and `probabilities` holds each label's sigmoid score.
Triton's binary tensor extension is supported both ways, as `tritonclient` uses it by default:
with an `Inference-Header-Content-Length` header the body is that many bytes of JSON followed by
each binary input in turn (BYTES: a 4-byte little-endian length before each element), and an
output asked for with `binary_data` (or all of them, with `binary_data_output`) comes back the
same way. Anything malformed is an `InferError`, which the server answers with 400.

`routes` puts the protocol's routes on the app (app.py): server and model metadata, readiness,
Triton's repository extension (the index, and with a model repository load and unload, loader.py),
and inference through the model version's batcher, each model's routes with and without a version.
Not here: the health checks, the limits and the batcher (app.py, limits.py, batcher.py).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local classes.
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bertdeploy import __version__
from bertdeploy.serve.httpapi import error, refusals
from bertdeploy.serve.models import Refused
from bertdeploy.serve.repository import version_number

if TYPE_CHECKING:
    from bertdeploy.serve.models import Models

OUTPUTS = ("label", "probabilities")
HEADER = "Inference-Header-Content-Length"


class InferError(ValueError):
    """A malformed inference request; the message says what is wrong."""


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, list[str]]  # input name -> texts
    outputs: dict[str, bool]  # output name -> binary


def parse_request(body: bytes, header_length: str | None, max_texts: int) -> InferRequest:
    header, binary = body, b""
    if header_length is not None:
        if not header_length.isascii() or not header_length.isdigit():
            raise InferError(f"{HEADER} is not a number: {header_length!r}")
        size = int(header_length)
        if not 0 < size <= len(body):
            raise InferError(f"{HEADER} is {size} but the body has {len(body)} bytes")
        header, binary = body[:size], body[size:]
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as e:
        raise InferError(f"the request is not valid JSON: {e}") from None
    except RecursionError:
        raise InferError("the request is not valid JSON: nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InferError("the request must be a JSON object with a list 'inputs'")
    parameters = _object(request.get("parameters", {}), "parameters")
    everything_binary = _flag(parameters, "binary_data_output", "parameters") is True
    inputs, offset = {}, 0
    for i, tensor in enumerate(request["inputs"]):
        tensor = _object(tensor, f"inputs[{i}]")
        name = tensor.get("name")
        if not _is_text(name) or name in inputs:
            raise InferError(f"inputs[{i}] needs a 'name' (a UTF-8 string), once per input")
        if tensor.get("datatype") != "BYTES":
            raise InferError(f"input {name!r} must have datatype BYTES, not {tensor.get('datatype')!r}")
        count = _count(tensor.get("shape"), name)
        if count > max_texts:
            raise InferError(f"input {name!r} has {count} texts; at most {max_texts} per request")
        tensor_parameters = _object(tensor.get("parameters", {}), f"input {name!r} parameters")
        if "binary_data_size" in tensor_parameters:
            size = tensor_parameters["binary_data_size"]
            if not _is_count(size) or offset + size > len(binary):
                raise InferError(f"input {name!r}: binary_data_size {size!r} does not fit the body")
            values = _unpack_bytes(binary[offset:offset + size], name)
            offset += size
        else:
            values = _flatten(tensor.get("data"), name)
        if len(values) != count:
            raise InferError(f"input {name!r} has shape {tensor['shape']} but {len(values)} elements")
        inputs[name] = values
    if offset != len(binary):
        raise InferError(f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size")
    outputs = {}
    for i, tensor in enumerate(_list(request.get("outputs", []), "outputs")):
        tensor = _object(tensor, f"outputs[{i}]")
        if tensor.get("name") not in OUTPUTS:
            raise InferError(f"outputs[{i}]: unknown output {tensor.get('name')!r}; there are {', '.join(OUTPUTS)}")
        binary_data = _flag(_object(tensor.get("parameters", {}), f"outputs[{i}] parameters"), "binary_data",
                            f"outputs[{i}] parameters")
        outputs[tensor["name"]] = everything_binary if binary_data is None else binary_data
    request_id = request.get("id")
    if "id" in request and not _is_text(request_id):
        raise InferError(f"'id' must be a string, not {_kind(request_id)}")
    return InferRequest(request_id, inputs, outputs or dict.fromkeys(OUTPUTS, everything_binary))


def request_schema(inputs: list[str], max_texts: int, least: int) -> dict:
    """The JSON Schema of a JSON request to a model with these inputs (at least `least` of them), for the OpenAPI
    document. (A binary
    request, this JSON with `binary_data_size` in place of each input's `data`, then the tensors' bytes, is
    beyond what OpenAPI can describe.)"""
    strings = {"type": "array", "items": {"type": "string"}}
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", "enum": inputs},
        "shape": {"type": "array", "minItems": 1, "maxItems": 2,
                  "items": {"type": "integer", "minimum": 0, "maximum": max_texts}},
        "datatype": {"type": "string", "enum": ["BYTES"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "maxItems": max_texts, "items": {"anyOf": [{"type": "string"}, strings]}}}}
    output = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "enum": list(OUTPUTS)},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}
    return {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": least, "maxItems": len(inputs), "items": tensor},
        "outputs": {"type": "array", "items": output}}}


def encode_response(model: str, version: str, request: InferRequest, labels: list[str],
                    probabilities: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs after the JSON, their size in a header)."""
    tensors = {
        "label": ("BYTES", [len(labels)], labels),
        "probabilities": ("FP32", list(probabilities.shape), probabilities.astype("<f4")),
    }
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        datatype, shape, values = tensors[name]
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = _pack_bytes(values) if datatype == "BYTES" else values.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values if datatype == "BYTES" else values.ravel().tolist()
        outputs.append(entry)
    response = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, ensure_ascii=False).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER: str(len(header))}


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise InferError(f"{where} must be a JSON object, not {_kind(value)}")
    return value


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise InferError(f"{where} must be a JSON array, not {_kind(value)}")
    return value


def _flag(parameters: dict, key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if key in parameters and not isinstance(value, bool):
        raise InferError(f"{where}: {key} must be true or false, not {_kind(value)}")
    return value


def _kind(value: object) -> str:
    """What a JSON value is, in JSON's words, for messages (a string UTF-8 cannot encode is "not UTF-8")."""
    if isinstance(value, str) and not _is_text(value):
        return "a string that is not valid UTF-8"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_text(value: object) -> bool:
    """A string that UTF-8 can encode: JSON's \\ud800-style escapes can make lone surrogates, which cannot."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _count(shape: object, name: str) -> int:
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(_is_count(d) for d in shape) or
            (len(shape) == 2 and shape[1] != 1)):
        raise InferError(f"input {name!r} needs a shape [n] or [n, 1], not {shape!r}")
    return shape[0]


def _flatten(data: object, name: str) -> list[str]:
    if not isinstance(data, list):
        raise InferError(f"input {name!r} needs 'data' (a list of strings) or binary data")
    values = [v for row in data for v in (row if isinstance(row, list) else [row])]
    for i, value in enumerate(values):
        if not _is_text(value):
            raise InferError(f"input {name!r}: element {i} must be a UTF-8 string, not {_kind(value)}")
    return values


def _unpack_bytes(blob: bytes, name: str) -> list[str]:
    values, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise InferError(f"input {name!r}: truncated binary data")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise InferError(f"input {name!r}: truncated binary data")
        try:
            values.append(blob[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InferError(f"input {name!r}: element {len(values)} is not UTF-8") from None
        offset += length
    return values


def _pack_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode("utf-8") for v in values))


def routes(app, models: "Models") -> None:
    """Server and model metadata, readiness, Triton's repository index, load and unload, and inference, by the v2
    protocol: the model's routes with and without a version (the newest served)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict

    options = models.options
    single = options.model_repository is None

    @app.get("/v2", summary="Server metadata (KServe v2)")
    async def server_metadata() -> dict:
        return {"name": "bertdeploy", "version": __version__,
                "extensions": ["binary_tensor_data", *([] if single else ["model_repository"])]}

    @app.get("/v2/models/{model}", summary="Model metadata (KServe v2)", responses=refusals(404))
    @app.get("/v2/models/{model}/versions/{version}", include_in_schema=False)
    async def model_metadata(model: str, version: str | None = None) -> dict:
        served = models.find(model, _number(model, version))
        return {"name": served.name, "versions": [str(v) for v in sorted(models.table[served.name])],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": i, "datatype": "BYTES", "shape": [-1]} for i in served.inputs],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(served.labels)]}],
                "parameters": {**served.predictor.scheme.manifest_fields(), "variant": served.predictor.variant}}

    @app.get("/v2/models/{model}/ready", summary="Model readiness (KServe v2)", responses=refusals(404, 503))
    @app.get("/v2/models/{model}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(model: str, version: str | None = None) -> JSONResponse:
        served = models.find(model, _number(model, version))
        ready = served.state == "READY"  # warmed up, and the server not draining
        return JSONResponse({"name": served.name, "ready": ready}, status_code=200 if ready else 503)

    class IndexRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ready: bool = False  # only the versions ready for inference

    @app.post("/v2/repository/index", summary="The models this server has (Triton's repository extension)",
              responses=refusals(400, 422))
    async def repository_index(body: IndexRequest | None = None) -> list:
        if single:
            entries = [served.entry() for served in models.all()]
        else:
            entries = await models.loader.index()
        return [e for e in entries if not (body and body.ready) or e["state"] == "READY"]

    @app.post("/v2/repository/models/{model}/load", responses=refusals(400, 404, 409, 422, 503),
              summary="Load the model's versions from the repository, beside those serving, and switch to them once "
                      "they are ready (Triton's repository extension)")
    async def load(model: str) -> dict:
        return await _loader().load(model)

    @app.post("/v2/repository/models/{model}/unload", responses=refusals(400, 404, 503),
              summary="Stop serving the model: the requests it holds finish, new ones get 404")
    async def unload(model: str) -> dict:
        return await _loader().unload(model)

    def _loader():
        if single:
            raise Refused(400, "this server serves one model (serve DIR); start it with --model-repository ROOT to "
                                 "load and unload models")
        return models.loader

    inputs = models.all()[0].inputs if single else ["text", "text_pair"]  # a repository's models take either
    infer_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": request_schema(inputs, options.max_texts_per_request, len(inputs) if single else 1)}}}}

    @app.post("/v2/models/{model}/infer", summary="Inference (KServe v2; JSON or Triton's binary tensors)",
              openapi_extra=infer_schema, responses=refusals(400, 404, 429, 503, 504))
    @app.post("/v2/models/{model}/versions/{version}/infer", include_in_schema=False)
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        with models.using(model, _number(model, version), request.scope) as served:
            try:
                parsed = parse_request(await request.body(), request.headers.get(HEADER),
                                       options.max_texts_per_request)
                if sorted(parsed.inputs) != sorted(served.inputs):
                    raise InferError(f"inputs must be {' and '.join(served.inputs)}, got "
                                     f"{', '.join(parsed.inputs) or 'none'}")
                texts, pairs = parsed.inputs["text"], parsed.inputs.get("text_pair")
                if pairs is not None and len(pairs) != len(texts):
                    raise InferError(f"{len(texts)} texts but {len(pairs)} text_pair elements")
            except InferError as e:
                return error(400, str(e))
            probabilities = await served.scores(texts, pairs, request)
            scheme = served.predictor.scheme
            body, headers = encode_response(served.name, str(served.version), parsed,
                                            [scheme.text(d) for d in scheme.decide(probabilities)], probabilities)
        return Response(body, headers=headers)


def _number(model: str, version: str | None) -> int | None:
    """The version a route's path names (None: the newest); Refused (404) when it is not a version number."""
    if version is None:
        return None
    if not version_number(version):
        raise Refused(404, f"model {model!r} has no version {version!r}: versions are numbers from 1")
    return version_number(version)
