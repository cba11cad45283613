"""Which candidates optimize tries, in which order, and what it keeps per cell: plain functions, no models."""

from __future__ import annotations

import pytest

from bertdeploy.errors import BertdeployError
from bertdeploy.optimizer.choose import choose, default_candidates, kept_candidate, parse_candidates


def test_the_default_candidates_go_cheapest_first():
    assert [c.name for c in default_candidates(12)] == ["teacher", "static", "layers-4", "layers-6"]
    assert [c.name for c in default_candidates(6)] == ["teacher", "static", "layers-2", "layers-3"]
    assert [c.name for c in default_candidates(2)] == ["teacher", "static", "layers-1"]
    assert [c.name for c in default_candidates(1)] == ["teacher", "static"]


def test_candidates_by_name_in_cost_order_and_refused_by_name():
    assert [c.name for c in parse_candidates("layers-3, static,teacher,static,layers-03", 6)] == [
        "teacher", "static", "layers-3"]
    for wrong in ("layers-6", "layers-0", "tiny", "layers-x"):
        with pytest.raises(BertdeployError, match=wrong):
            parse_candidates(wrong, 6)


def _engine(candidate, variant, score, floor, **p50):
    return {"candidate": candidate, "variant": variant, "score": score, "within": score >= floor, "p50_ms": p50}


def _engines(floor):
    return [_engine("teacher", "fp32", 0.95, floor, a=6.0, b=150.0),
            _engine("teacher", "int8", 0.948, floor, a=3.0, b=70.0),
            _engine("layers-3", "int8", 0.943, floor, a=1.6, b=80.0),
            _engine("static", "fp32", 0.90, floor, a=0.05, b=0.4)]


def test_the_fastest_within_the_bound_per_cell_else_the_teachers_best():
    chosen = choose(_engines(0.94), ["a", "b"])
    assert (chosen["a"]["candidate"], chosen["a"]["variant"], chosen["a"]["within"]) == ("layers-3", "int8", True)
    assert chosen["a"]["speedup"] == pytest.approx(3.0 / 1.6)
    assert (chosen["b"]["candidate"], chosen["b"]["variant"]) == ("teacher", "int8")  # faster than the student there
    nothing = choose(_engines(0.99), ["a"])["a"]
    assert (nothing["candidate"], nothing["variant"], nothing["within"]) == ("teacher", "fp32", False)
    assert kept_candidate(chosen, ["a", "b"]) == "teacher"  # one cell each: the larger cell's
    assert kept_candidate({"a": chosen["a"], "b": chosen["a"], "c": chosen["b"]}, ["a", "b", "c"]) == "layers-3"
