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
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

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
        try:
            size = int(header_length)
        except ValueError:
            raise InferError(f"{HEADER} is not a number: {header_length!r}") from None
        if not 0 < size <= len(body):
            raise InferError(f"{HEADER} is {size} but the body has {len(body)} bytes")
        header, binary = body[:size], body[size:]
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as e:
        raise InferError(f"the request is not valid JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InferError("the request must be a JSON object with a list 'inputs'")
    parameters = _object(request.get("parameters", {}), "parameters")
    inputs, offset = {}, 0
    for i, tensor in enumerate(request["inputs"]):
        tensor = _object(tensor, f"inputs[{i}]")
        name = tensor.get("name")
        if not isinstance(name, str) or name in inputs:
            raise InferError(f"inputs[{i}] needs a 'name', once per input")
        if tensor.get("datatype") != "BYTES":
            raise InferError(f"input {name!r} must have datatype BYTES, not {tensor.get('datatype')!r}")
        count = _count(tensor.get("shape"), name)
        if count > max_texts:
            raise InferError(f"input {name!r} has {count} texts; at most {max_texts} per request")
        size = _object(tensor.get("parameters", {}), f"input {name!r} parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InferError(f"input {name!r}: binary_data_size {size!r} does not fit the body")
            values = _unpack_bytes(binary[offset:offset + size], name)
            offset += size
        else:
            values = _flatten(tensor.get("data"), name)
        if len(values) != count:
            raise InferError(f"input {name!r} has shape {tensor['shape']} but {len(values)} elements")
        inputs[name] = values
    everything_binary = parameters.get("binary_data_output") is True
    outputs = {}
    for i, tensor in enumerate(request.get("outputs") or []):
        tensor = _object(tensor, f"outputs[{i}]")
        if tensor.get("name") not in OUTPUTS:
            raise InferError(f"outputs[{i}]: unknown output {tensor.get('name')!r}; there are {', '.join(OUTPUTS)}")
        binary_data = _object(tensor.get("parameters", {}), f"outputs[{i}] parameters").get("binary_data")
        outputs[tensor["name"]] = everything_binary if binary_data is None else binary_data is True
    request_id = request.get("id")
    return InferRequest(request_id if isinstance(request_id, str) else None, inputs,
                        outputs or dict.fromkeys(OUTPUTS, everything_binary))


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
        raise InferError(f"{where} must be a JSON object")
    return value


def _count(shape: object, name: str) -> int:
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2 or
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or
            (len(shape) == 2 and shape[1] != 1)):
        raise InferError(f"input {name!r} needs a shape [n] or [n, 1], not {shape!r}")
    return shape[0]


def _flatten(data: object, name: str) -> list[str]:
    if not isinstance(data, list):
        raise InferError(f"input {name!r} needs 'data' (a list of strings) or binary data")
    values = [v for row in data for v in (row if isinstance(row, list) else [row])]
    if not all(isinstance(v, str) for v in values):
        raise InferError(f"input {name!r}: every element must be a string")
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
