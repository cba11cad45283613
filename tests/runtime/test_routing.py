"""`auto` routing's plan, from the timings bench or export recorded: which variant runs a batch of each size
(numbers in, routes out: no model, no OpenVINO). The routes on real exports are in tests/builder/test_openvino.py."""

from __future__ import annotations

from bertdeploy.manifest import TOKENS, AutoSection
from bertdeploy.runtime.routing import describe_routes, plan_routes


def test_plan_routes():
    p50 = {"a": {1: 1.0, 8: 9.0, 32: 40.0}, "b": {1: 1.5, 8: 6.0, 32: 25.0}, "c": {1: 1.02, 8: 6.1, 32: 25.5}}
    assert plan_routes(p50, ["a", "b"]) == [(2, "a"), (None, "b")]
    # c is within noise of the best everywhere: one model instead of two
    assert plan_routes(p50, ["a", "b", "c"]) == [(None, "c")]
    assert plan_routes(p50, ["a"]) == [(None, "a")] and plan_routes(p50, []) == [] and plan_routes({}, ["a"]) == []
    # a batch between two measured sizes goes to the nearer by ratio: 1..2 -> 1, 3..16 -> 8, 17+ -> 32
    assert plan_routes({"a": {1: 1, 8: 9, 32: 30}, "b": {1: 2, 8: 6, 32: 40}}, ["a", "b"]) == \
        [(2, "a"), (16, "b"), (None, "a")]
    assert plan_routes({"a": {"1": 1.0, "4": 2.0}, "b": {"4": 1.0}}, ["a", "b"]) == [(None, "b")]  # sizes both have
    # another runtime takes over only where it is more than 50% faster: switching runtimes costs each call
    runtimes = {"a": "onnxruntime", "b": "openvino", "c": "onnxruntime"}
    close = {"a": {1: 1.0, 8: 8.9, 32: 40.0}, "b": {1: 1.5, 8: 6.0, 32: 25.0}}
    assert plan_routes(close, ["a", "b"]) == [(2, "a"), (None, "b")]
    assert plan_routes(close, ["a", "b"], runtimes) == [(16, "a"), (None, "b")]  # 8.9 ms is within 1.5 x 6.0
    assert plan_routes(close, ["a", "b"], runtimes, switch=0.4) == [(2, "a"), (None, "b")]
    assert plan_routes({"a": {1: 1.0, 8: 9.0}, "c": {1: 1.5, 8: 6.0}}, ["a", "c"], runtimes) == [(2, "a"), (None, "c")]
    assert describe_routes([(45, "a"), (900, "b"), (None, "c")]) == \
        "up to 45 tokens: a; 46-900 tokens: b; 901+ tokens: c"
    assert describe_routes([(None, "a")]) == "a, any batch size"


def test_auto_timings_of_an_older_manifest_count_texts_of_the_max_length():
    tokens = AutoSection(measured_by="bench", unit=TOKENS, p50_ms={"a": {"56": 2.0, "1024": 30.0}})
    assert tokens.timings(max_length=128) == {"a": {56: 2.0, 1024: 30.0}}
    texts = AutoSection(measured_by="bench", p50_ms={"a": {"1": 2.0, "8": 30.0}})  # before the unit was recorded
    assert texts.timings(max_length=128) == {"a": {128: 2.0, 1024: 30.0}}
    assert AutoSection(measured_by="bench").timings(max_length=128) == {}
