"""`bertdeploy serve` against bad requests: hand-written KServe v2 cases (JSON and Triton's binary tensors) and
schemathesis over every route of the OpenAPI document, in positive and negative modes, with and without an API
key. Every refusal is a 4xx with a JSON `{"error": ...}` message, never a 5xx, and the server serves on."""

from __future__ import annotations

import copy
import json
import re
import struct
import time
from collections import Counter

import httpx
import hypothesis
import pytest
import schemathesis
from helpers import linked_copy, running, running_repository
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

KEY = "s3cret-key"
MAX_TEXTS = 256  # the servers' --max-texts-per-request (the default)
GOOD_TEXTS = ["这个手机很好", "质量太差了"]
GOOD = {"name": "text", "shape": [2], "datatype": "BYTES", "data": GOOD_TEXTS}


@pytest.fixture(scope="module")
def url(fp32):
    with running(fp32, max_wait_ms=1) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_url(fp32):
    with running(fp32, api_key=KEY, max_wait_ms=1) as base:
        yield base


def _pack(*values: bytes) -> bytes:
    """BYTES elements in Triton's binary form: each a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _binary(header: dict, blob: bytes, length: str | None = None) -> tuple[bytes, dict]:
    """A binary-tensor request: the JSON header, then `blob`; `length` overrides the header's true length."""
    head = json.dumps(header, ensure_ascii=False).encode()
    return head + blob, {"Inference-Header-Content-Length": length if length is not None else str(len(head))}


def _tensor(**changes) -> dict:
    return {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}


def _with(**changes) -> dict:
    return {k: v for k, v in {"inputs": [GOOD], **changes}.items() if v is not ...}


def _binary_input(blob: bytes, size: object = ..., shape: list | None = None, **request) -> dict:
    parameters = {"binary_data_size": len(blob) if size is ... else size}
    return {"inputs": [{"name": "text", "shape": shape or [2], "datatype": "BYTES", "parameters": parameters}],
            **request}


TWO = _pack("好".encode(), "差".encode())
# (request body: a JSON value, or raw bytes with headers), the status, a part of the error message
JSON_CASES = {
    "empty body": (b"", 400, "not valid JSON"),
    "not JSON": (b"inputs=text", 400, "not valid JSON"),
    "not UTF-8": (b'{"inputs": "\xff\xfe"}', 400, "not valid JSON"),
    "nested too deeply": (b"[" * 100_000, 400, "nested too deeply"),
    "an array": ([GOOD], 400, "JSON object with a list 'inputs'"),
    "a string": ("inputs", 400, "JSON object with a list 'inputs'"),
    "null": (b"null", 400, "JSON object with a list 'inputs'"),
    "no inputs": ({}, 400, "JSON object with a list 'inputs'"),
    "inputs an object": ({"inputs": GOOD}, 400, "JSON object with a list 'inputs'"),
    "inputs a number": ({"inputs": 5}, 400, "JSON object with a list 'inputs'"),
    "inputs null": ({"inputs": None}, 400, "JSON object with a list 'inputs'"),
    "inputs empty": ({"inputs": []}, 400, "inputs must be text, got none"),
    "input a number": ({"inputs": [5]}, 400, "inputs[0] must be a JSON object, not a number"),
    "input a string": ({"inputs": ["text"]}, 400, "inputs[0] must be a JSON object, not a string"),
    "input without a name": ({"inputs": [_tensor(name=...)]}, 400, "inputs[0] needs a 'name'"),
    "input name a number": ({"inputs": [_tensor(name=1)]}, 400, "inputs[0] needs a 'name'"),
    "input name not UTF-8": (b'{"inputs": [{"name": "\\udc80", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}',
                             400, "inputs[0] needs a 'name' (a UTF-8 string)"),
    "input twice": ({"inputs": [GOOD, GOOD]}, 400, "inputs[1] needs a 'name' (a UTF-8 string), once per input"),
    "unknown input": ({"inputs": [_tensor(name="words")]}, 400, "inputs must be text, got words"),
    "text_pair for a single-text model": ({"inputs": [GOOD, _tensor(name="text_pair")]}, 400,
                                          "inputs must be text, got text, text_pair"),
    "datatype FP32": ({"inputs": [_tensor(datatype="FP32")]}, 400, "must have datatype BYTES, not 'FP32'"),
    "datatype missing": ({"inputs": [_tensor(datatype=...)]}, 400, "must have datatype BYTES, not None"),
    "datatype a number": ({"inputs": [_tensor(datatype=5)]}, 400, "must have datatype BYTES, not 5"),
    "shape missing": ({"inputs": [_tensor(shape=...)]}, 400, "needs a shape [n] or [n, 1], not None"),
    "shape a string": ({"inputs": [_tensor(shape="2")]}, 400, "needs a shape [n] or [n, 1]"),
    "shape empty": ({"inputs": [_tensor(shape=[])]}, 400, "needs a shape [n] or [n, 1]"),
    "shape of rank 3": ({"inputs": [_tensor(shape=[2, 1, 1])]}, 400, "needs a shape [n] or [n, 1]"),
    "shape [n, 2]": ({"inputs": [_tensor(shape=[1, 2])]}, 400, "needs a shape [n] or [n, 1], not [1, 2]"),
    "shape negative": ({"inputs": [_tensor(shape=[-1])]}, 400, "needs a shape [n] or [n, 1], not [-1]"),
    "shape a fraction": ({"inputs": [_tensor(shape=[1.5])]}, 400, "needs a shape [n] or [n, 1], not [1.5]"),
    "shape a boolean": ({"inputs": [_tensor(shape=[True])]}, 400, "needs a shape [n] or [n, 1], not [True]"),
    "shape infinite": (b'{"inputs": [{"name": "text", "shape": [1e999], "datatype": "BYTES", "data": ["a"]}]}', 400,
                       "needs a shape [n] or [n, 1], not [inf]"),
    "shape huge": ({"inputs": [_tensor(shape=[2 ** 70])]}, 400, f"has {2 ** 70} texts; at most 256 per request"),
    "shape too many digits": (b'{"inputs": [{"name": "text", "shape": [' + b"9" * 5000 + b'], "datatype": "BYTES"}]}',
                              400, "not valid JSON"),
    "more texts than the limit": ({"inputs": [_tensor(shape=[257], data=["a"] * 257)]}, 400,
                                  "has 257 texts; at most 256 per request"),
    "shape over the count": ({"inputs": [_tensor(shape=[3])]}, 400, "has shape [3] but 2 elements"),
    "shape under the count": ({"inputs": [_tensor(shape=[1])]}, 400, "has shape [1] but 2 elements"),
    "[n, 1] under the count": ({"inputs": [_tensor(shape=[1, 1])]}, 400, "has shape [1, 1] but 2 elements"),
    "data missing": ({"inputs": [_tensor(data=...)]}, 400, "needs 'data' (a list of strings) or binary data"),
    "data a string": ({"inputs": [_tensor(data="好")]}, 400, "needs 'data' (a list of strings)"),
    "data an object": ({"inputs": [_tensor(data={"0": "好"})]}, 400, "needs 'data' (a list of strings)"),
    "element a number": ({"inputs": [_tensor(data=["好", 5])]}, 400, "element 1 must be a UTF-8 string, not a number"),
    "element null": ({"inputs": [_tensor(data=[None, "好"])]}, 400, "element 0 must be a UTF-8 string, not null"),
    "element nested twice": ({"inputs": [_tensor(data=[["好", ["差"]]])]}, 400, "element 1 must be a UTF-8 string, "
                                                                               "not an array"),
    "element not UTF-8": (b'{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", '
                          b'"data": ["ok", "\\ud800"]}]}', 400, "element 1 must be a UTF-8 string, not a string "
                                                                 "that is not valid UTF-8"),
    "input parameters a number": ({"inputs": [_tensor(parameters=5)]}, 400,
                                  "input 'text' parameters must be a JSON object, not a number"),
    "binary_data_size in a JSON request": ({"inputs": [_tensor(parameters={"binary_data_size": 4})]}, 400,
                                           "binary_data_size 4 does not fit the body"),
    "binary_data_size null": ({"inputs": [_tensor(parameters={"binary_data_size": None})]}, 400,
                              "binary_data_size None does not fit the body"),
    "outputs a number": (_with(outputs=5), 400, "outputs must be a JSON array, not a number"),
    "outputs a string": (_with(outputs="label"), 400, "outputs must be a JSON array, not a string"),
    "outputs null": (_with(outputs=None), 400, "outputs must be a JSON array, not null"),
    "outputs an object": (_with(outputs={"name": "label"}), 400, "outputs must be a JSON array, not an object"),
    "output a number": (_with(outputs=[5]), 400, "outputs[0] must be a JSON object, not a number"),
    "output a string": (_with(outputs=["label"]), 400, "outputs[0] must be a JSON object, not a string"),
    "output without a name": (_with(outputs=[{}]), 400, "outputs[0]: unknown output None; there are label, "
                                                        "probabilities"),
    "output name a list": (_with(outputs=[{"name": ["label"]}]), 400, "outputs[0]: unknown output ['label']"),
    "output unknown": (_with(outputs=[{"name": "logits"}]), 400, "outputs[0]: unknown output 'logits'"),
    "output parameters a list": (_with(outputs=[{"name": "label", "parameters": []}]), 400,
                                 "outputs[0] parameters must be a JSON object, not an array"),
    "binary_data a string": (_with(outputs=[{"name": "label", "parameters": {"binary_data": "true"}}]), 400,
                             "outputs[0] parameters: binary_data must be true or false, not a string"),
    "binary_data a number": (_with(outputs=[{"name": "label", "parameters": {"binary_data": 1}}]), 400,
                             "binary_data must be true or false, not a number"),
    "binary_data null": (_with(outputs=[{"name": "label", "parameters": {"binary_data": None}}]), 400,
                         "binary_data must be true or false, not null"),
    "parameters a number": (_with(parameters=5), 400, "parameters must be a JSON object, not a number"),
    "parameters a list": (_with(parameters=[]), 400, "parameters must be a JSON object, not an array"),
    "parameters null": (_with(parameters=None), 400, "parameters must be a JSON object, not null"),
    "binary_data_output a string": (_with(parameters={"binary_data_output": "yes"}), 400,
                                    "parameters: binary_data_output must be true or false, not a string"),
    "id a number": (_with(id=5), 400, "'id' must be a string, not a number"),
    "id null": (_with(id=None), 400, "'id' must be a string, not null"),
    "id an object": (_with(id={}), 400, "'id' must be a string, not an object"),
    "id not UTF-8": (b'{"id": "\\udfff", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
                     b'"data": ["a"]}]}', 400, "'id' must be a string, not a string that is not valid UTF-8"),
}
BINARY_CASES = {
    "length not a number": (*_binary(_binary_input(TWO), TWO, "ten"), 400,
                            "Inference-Header-Content-Length is not a number: 'ten'"),
    "length negative": (*_binary(_binary_input(TWO), TWO, "-5"), 400, "is not a number: '-5'"),
    "length empty": (*_binary(_binary_input(TWO), TWO, ""), 400, "is not a number: ''"),
    "length with an underscore": (*_binary(_binary_input(TWO), TWO, "1_0"), 400, "is not a number: '1_0'"),
    "length zero": (*_binary(_binary_input(TWO), TWO, "0"), 400, "Inference-Header-Content-Length is 0 but the "
                                                                 "body has"),
    "length beyond the body": (*_binary(_binary_input(TWO), TWO, "100000"), 400, "is 100000 but the body has"),
    "length huge": (*_binary(_binary_input(TWO), TWO, "9" * 40), 400, f"is {'9' * 40} but the body has"),
    "length cuts the JSON": (*_binary(_binary_input(TWO), TWO, "20"), 400, "the request is not valid JSON"),
    "length cuts a UTF-8 character": (*_binary({"id": "好", **_binary_input(TWO)}, TWO, "9"), 400,
                                      "the request is not valid JSON"),
    "data truncated": (*_binary(_binary_input(TWO, size=len(TWO) + 4), TWO), 400,
                       f"binary_data_size {len(TWO) + 4} does not fit the body"),
    "element truncated": (*_binary(_binary_input(TWO[:-1]), TWO[:-1]), 400, "input 'text': truncated binary data"),
    "length prefix truncated": (*_binary(_binary_input(TWO + b"\x01\x00"), TWO + b"\x01\x00"), 400,
                                "truncated binary data"),
    "element not UTF-8": (*_binary(_binary_input(_pack(b"ok", b"\xff\xfe")), _pack(b"ok", b"\xff\xfe")), 400,
                          "input 'text': element 1 is not UTF-8"),
    "element a lone surrogate's bytes": (*_binary(_binary_input(_pack(b"\xed\xa0\x80", b"a")),
                                                  _pack(b"\xed\xa0\x80", b"a")), 400, "element 0 is not UTF-8"),
    "bytes after the data": (*_binary(_binary_input(TWO), TWO + b"xyz"), 400,
                             "3 bytes of binary data after the inputs' binary_data_size"),
    "more elements than the shape": (*_binary(_binary_input(TWO, shape=[1]), TWO), 400, "has shape [1] but 2 "
                                                                                        "elements"),
    "fewer elements than the shape": (*_binary(_binary_input(TWO, shape=[3, 1]), TWO), 400,
                                      "has shape [3, 1] but 2 elements"),
    "binary_data_size negative": (*_binary(_binary_input(TWO, size=-1), TWO), 400, "binary_data_size -1 does not fit"),
    "binary_data_size a string": (*_binary(_binary_input(TWO, size=str(len(TWO))), TWO), 400,
                                  f"binary_data_size '{len(TWO)}' does not fit"),
    "binary_data_size a boolean": (*_binary(_binary_input(TWO, size=True), TWO), 400, "binary_data_size True does "
                                                                                      "not fit"),
    "binary_data_size a fraction": (*_binary(_binary_input(TWO, size=2.5), TWO), 400, "binary_data_size 2.5 does "
                                                                                      "not fit"),
    "binary datatype FP32": (*_binary({"inputs": [{"name": "text", "shape": [2], "datatype": "FP32",
                                                   "parameters": {"binary_data_size": 8}}]}, b"\0" * 8), 400,
                             "must have datatype BYTES, not 'FP32'"),
    "binary outputs a number": (*_binary(_binary_input(TWO, outputs=3), TWO), 400,
                                "outputs must be a JSON array, not a number"),
    "binary_data_output a number": (*_binary(_binary_input(TWO, parameters={"binary_data_output": 1}), TWO), 400,
                                    "binary_data_output must be true or false, not a number"),
}


def _post_infer(base: str, body, headers: dict | None = None, model: str = "tiny") -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(f"{base}/v2/models/{model}/infer", content=body, headers=headers or {})
    return httpx.post(f"{base}/v2/models/{model}/infer", json=body, headers=headers or {})


def _refused(response: httpx.Response, status: int, message: str) -> None:
    """A refusal as the server promises: the status, JSON `{"error": ...}` with the message, no trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    assert message in response.json()["error"], response.text
    assert "Traceback" not in response.text


@pytest.mark.parametrize(("body", "status", "message"), JSON_CASES.values(), ids=JSON_CASES.keys())
def test_malformed_kserve_json_requests_get_a_400_naming_the_problem(url, body, status, message):
    _refused(_post_infer(url, body), status, message)


@pytest.mark.parametrize(("body", "headers", "status", "message"), BINARY_CASES.values(), ids=BINARY_CASES.keys())
def test_malformed_kserve_binary_requests_get_a_400_naming_the_problem(url, body, headers, status, message):
    _refused(_post_infer(url, body, headers), status, message)


# (route, request body: a JSON value or raw bytes, the status, a part of the error message)
OTHER_CASES = [
    ("/v2/models/other/infer", _with(), 404, "no model 'other'; this server has 'tiny' version 1"),
    ("/v2/models/tiny/versions/2/infer", _with(), 404, "model 'tiny' has no version 2 loaded; it serves version 1"),
    ("/v2/models/tiny/infer", b"x" * 1_000_001, 413, "the body is over 1000000 bytes"),
    ("/predict", b'{"text": "\\ud800"}', 422, "text 0 is not valid UTF-8"),
    ("/predict", b'{"texts": ["ok", "\\udfff"]}', 422, "text 1 is not valid UTF-8"),
    ("/predict", b'{"texts": ' + b"[" * 100_000, 400, "error parsing the body"),
    ("/predict", b"[]", 422, "Input should be a valid dictionary"),
]


def _post_other(base: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{base}{path}", content=body if isinstance(body, bytes) else json.dumps(body),
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize(("path", "body", "status", "message"), OTHER_CASES)
def test_other_refusals_on_the_inference_routes(url, path, body, status, message):
    _refused(_post_other(url, path, body), status, message)


def test_good_kserve_requests_still_work_in_both_forms(url, fp32):
    """The refusals above stop at what is malformed: [n, 1] rows, binary tensors in and out, and an id pass."""
    expected = [fp32.labels[i] for i in fp32.predict_proba(GOOD_TEXTS).argmax(-1)]
    rows = _post_infer(url, _with(id="r1", inputs=[_tensor(shape=[2, 1], data=[[t] for t in GOOD_TEXTS])]))
    assert rows.status_code == 200 and rows.json()["id"] == "r1", rows.text
    assert rows.json()["outputs"][0]["data"] == expected
    blob = _pack(*(t.encode() for t in GOOD_TEXTS))
    body, headers = _binary(_binary_input(blob, outputs=[{"name": "label", "parameters": {"binary_data": True}}]),
                            blob)
    binary = _post_infer(url, body, headers)
    assert binary.status_code == 200, binary.text
    size = int(binary.headers["inference-header-content-length"])
    assert binary.content[size:] == _pack(*(label.encode() for label in expected))


def _server_errors(base: str, headers: dict | None = None) -> dict[str, float]:
    """Responses with a 5xx status the server counted, by route (health checks aside: a 503 while the models load
    is their answer, and the test servers are asked until they are ready)."""
    text = httpx.get(f"{base}/metrics", headers=headers or {}).text
    found = re.finditer(r'^bertdeploy_requests_total\{[^}]*route="([^"]*)",status="(5\d\d)"[^}]*\} (\S+)', text, re.M)
    return {f"{m[1]} {m[2]}": float(m[3]) for m in found if not m[1].startswith("/v2/health/")}


def _still_serving(base: str, headers: dict | None = None) -> None:
    """Health, a good request on both APIs, and not one 5xx in the server's own metrics."""
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    assert httpx.post(f"{base}/predict", json={"texts": GOOD_TEXTS}, headers=headers or {}).status_code == 200
    assert _post_infer(base, _with(), headers).status_code == 200
    assert _server_errors(base, headers) == {}


@pytest.mark.parametrize("server", ["one model", "a model repository"])
def test_the_server_serves_on_after_the_bad_requests(fp32, tiny_artifacts, tmp_path, server):
    """A server of its own gets every hand-written bad request above, each refused as promised, and then still
    serves both APIs with no 5xx counted: not an order of the tests in this file. The same for a model repository
    holding the model as `tiny` version 1."""
    if server == "one model":
        serving = running(fp32, max_wait_ms=1)
    else:
        linked_copy(tiny_artifacts, tmp_path / "models" / "tiny" / "1")
        serving = running_repository(tmp_path / "models", variant="fp32", threads=1, max_wait_ms=1)
    with serving as base:
        for body, status, message in JSON_CASES.values():
            _refused(_post_infer(base, body), status, message)
        for body, headers, status, message in BINARY_CASES.values():
            _refused(_post_infer(base, body, headers), status, message)
        for path, body, status, message in OTHER_CASES:
            _refused(_post_other(base, path, body), status, message)
        _still_serving(base)


# Examples per operation and mode (operations without parameters or a body have one possible request).
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 40}
KEYED_EXAMPLES = 12


def _shapes_agree(case):
    """A generated KServe request whose shape is valid, with its first dimension set to the data's count.

    The schema cannot say that the two agree, so without this nearly every generated request stops at the count
    check, before the fields after it. Only a valid shape changes, to another valid one: a request made
    invalid on purpose (negative mode) stays invalid."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return case
    case.body = body = copy.deepcopy(body)
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("data"), list):
            continue
        shape = tensor.get("shape")
        count = sum(len(row) if isinstance(row, list) else 1 for row in tensor["data"])
        if (isinstance(shape, list) and 1 <= len(shape) <= 2 and count <= MAX_TEXTS and
                all(type(d) is int and 0 <= d <= MAX_TEXTS for d in shape)):
            tensor["shape"] = [count, 1][:len(shape)]
    return case


def _fuzz(base: str, headers: dict, examples: int, mode: GenerationMode, counts: Counter) -> None:
    """Every operation of the server's OpenAPI document in one generation mode; `counts` gets the cases sent."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=headers)
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    if mode.is_negative:
        checks.append(negative_data_rejection)  # what the schema forbids gets a 4xx
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        # The one model and its version, so that the bodies reach the parser (other names are 404s, tested above);
        # unload, though, a model there is not, so that the others stay served (test_repository.py unloads).
        model = "none" if operation.path.endswith("/unload") else "tiny"
        pinned = {"path_parameters": {"model": model}, "query": {"version": "1"}} if "{model}" in operation.path \
            else {}
        if mode.is_negative and "infer" not in operation.path:
            pinned.pop("query", None)  # the version is what negative mode can vary in the metadata routes

        @hypothesis.given(operation.as_strategy(generation_mode=mode, **pinned).map(_shapes_agree))
        @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case) -> None:
            case.call_and_validate(headers=headers, checks=checks)
            counts[case.operation.label] += 1

        try:
            check()
        except Unsatisfiable:
            assert mode.is_negative  # nothing to make invalid: no parameters, no body


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_generated_request_gets_a_5xx(url, mode, record_property):
    counts: Counter = Counter()
    started = time.monotonic()
    _fuzz(url, {}, EXAMPLES[mode], mode, counts)
    _report(record_property, f"{mode.value} mode, no key", counts, time.monotonic() - started)
    assert counts["POST /predict"] >= EXAMPLES[mode] // 2 and counts["POST /v2/models/{model}/infer"] >= \
        EXAMPLES[mode] // 2, counts
    _still_serving(url)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_generated_request_to_a_model_repository_gets_a_5xx(tiny_artifacts, tmp_path, mode, record_property):
    """The same over a repository's server (its model `tiny` version 1), whose load route reloads the model."""
    linked_copy(tiny_artifacts, tmp_path / "models" / "tiny" / "1")
    counts: Counter = Counter()
    started = time.monotonic()
    with running_repository(tmp_path / "models", variant="fp32", threads=1, max_wait_ms=1) as base:
        _fuzz(base, {}, EXAMPLES[mode] // 2, mode, counts)
        _report(record_property, f"{mode.value} mode, a model repository", counts, time.monotonic() - started)
        assert mode.is_negative or counts["POST /v2/repository/models/{model}/load"] >= 1, counts  # no body to vary
        assert counts["POST /predict"] >= 10 and counts["POST /v2/models/{model}/infer"] >= 10, counts
        _still_serving(base)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_generated_request_gets_a_5xx_with_the_api_key(keyed_url, mode, record_property):
    counts: Counter = Counter()
    started = time.monotonic()
    good = {"Authorization": f"Bearer {KEY}"}
    _fuzz(keyed_url, good, KEYED_EXAMPLES, mode, counts)
    _report(record_property, f"{mode.value} mode, with the API key", counts, time.monotonic() - started)
    assert counts["POST /predict"] >= KEYED_EXAMPLES // 2, counts
    _still_serving(keyed_url, good)


def test_generated_requests_without_the_key_get_a_401(keyed_url, record_property):
    """Generated requests to every operation but health, without the key or with a wrong one: 401, nothing else."""
    schema = schemathesis.openapi.from_url(f"{keyed_url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    counts: Counter = Counter()
    started = time.monotonic()
    for operation in (result.ok() for result in schema.get_all_operations()):
        @hypothesis.given(operation.as_strategy(), hypothesis.strategies.sampled_from(
            [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"bearer {KEY}"}]))
        @hypothesis.settings(max_examples=4, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case, headers) -> None:
            response = case.call(headers=headers)
            if not case.operation.path.startswith("/v2/health/"):
                assert response.status_code == 401 and response.headers["www-authenticate"] == ["Bearer"], response.text
                assert "API key" in response.json()["error"]
            else:
                assert response.status_code == 200, response.text
            counts[case.operation.label] += 1

        check()
    _report(record_property, "without the API key", counts, time.monotonic() - started)
    assert sum(counts.values()) >= 20, counts


def _report(record_property, what: str, counts: Counter, seconds: float) -> None:
    """The cases sent, per operation: printed (pytest -s shows it) and recorded in the JUnit XML."""
    total = sum(counts.values())
    record_property(f"fuzz cases, {what}", total)
    print(f"\nschemathesis, {what}: {total} cases in {seconds:.1f} s "
          f"({', '.join(f'{label}: {n}' for label, n in sorted(counts.items()))})")
