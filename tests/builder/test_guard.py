"""The export guard's rules, on stand-ins (no model, no quantizer): the order in which it tries a variant's builds
and precisions until one holds the bound, and how it counts points lost for a multi-label model. Its end-to-end
runs, a real export with a quantizer broken on purpose, are in test_export.py and test_openvino.py."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_multilabel_rows, write_csv

from bertdeploy.builder.examples import load_examples
from bertdeploy.labels import LabelScheme

# -- the search to the bound: nodes kept in float, and OpenVINO's inference precision ---------------------------

def _judged(monkeypatch, tmp_path, lost: dict, default: str = "bf16", backend: str = "openvino"):
    """build_to_the_bound with a stand-in judge whose points lost depend only on (nodes kept in float, precision),
    as `lost` gives them (default: 0, a pass at bound 1): the guard's order of attempts, on any CPU. Returns the
    variant and the node counts built."""
    from bertdeploy.builder import guard
    from bertdeploy.builder.guard import Variant, build_to_the_bound

    monkeypatch.setattr(guard, "default_precision", lambda: default)
    built: list[int] = []
    destination = tmp_path / "model_int8_ov.onnx"

    def build(settings: dict, nodes: list[str]) -> dict:
        built.append(len(nodes))
        destination.write_bytes(b"graph")
        return {"type": "int8-ov", "float_nodes": nodes}

    class Judge:
        def score(self, name, path, kind, *, optimization=None, quantization=None, backend="onnxruntime",
                  precision=None):
            points = lost.get((built[-1], precision), 0.0)
            return Variant(name=name, file=path.name, kind=kind, optimization=optimization, quantization=quantization,
                           size_bytes=5, sha256="", opset=17,
                           parity={"texts": 10, "max_abs_diff": 0.1, "label_agreement": 1 - points / 100},
                           eval={"accuracy": 0.9 - points / 100, "accuracy_drop": points}, shipped=points <= 1.0,
                           reason=None if points <= 1.0 else f"lost {points} points", backend=backend,
                           precision=precision)

        def lost(self, variant):
            return variant.eval["accuracy_drop"]

    variant = build_to_the_bound("int8-ov", "int8-ov", destination, Judge(), first_settings=[{"preset": "mixed"}],
                                 rank=lambda: ["a", "b", "c", "d"], build=build, backend=backend)
    return variant, built


def _tried(variant) -> list[tuple[int, str | None, bool]]:
    return [(a["nodes_kept_float"], a.get("precision"), a["passed"]) for a in variant.attempts]


def test_the_guard_judges_openvino_at_f32_before_keeping_nodes_in_float(monkeypatch, tmp_path):
    # passes at the CPU's default precision: judged once, runs at it
    variant, built = _judged(monkeypatch, tmp_path, {})
    assert variant.shipped and variant.precision == "bf16" and _tried(variant) == [(0, "bf16", True)] and built == [0]
    # misses the bound at bf16, holds it at f32: the same file judged again, no node kept in float
    variant, built = _judged(monkeypatch, tmp_path, {(0, "bf16"): 3.0})
    assert variant.shipped and variant.precision == "f32" and built == [0]
    assert _tried(variant) == [(0, "bf16", False), (0, "f32", True)]
    assert variant.quantization["float_nodes"] == []
    # misses it at both: the search keeps nodes in float at the precision that lost fewer points
    lost = {(0, "bf16"): 3.0, (0, "f32"): 2.0, (1, "f32"): 1.5, (1, "bf16"): 0.0}
    variant, built = _judged(monkeypatch, tmp_path, lost)
    assert variant.shipped and variant.precision == "f32" and built == [0, 1, 2]
    assert _tried(variant) == [(0, "bf16", False), (0, "f32", False), (1, "f32", False), (2, "f32", True)]
    lost = {(0, "bf16"): 2.0, (0, "f32"): 3.0, (1, "f32"): 0.0, (1, "bf16"): 0.5}
    variant, built = _judged(monkeypatch, tmp_path, lost)
    assert _tried(variant) == [(0, "bf16", False), (0, "f32", False), (1, "bf16", True)] and built == [0, 1]
    # a tie goes to the safer precision
    variant, _ = _judged(monkeypatch, tmp_path, {(0, "bf16"): 2.0, (0, "f32"): 2.0})
    assert _tried(variant) == [(0, "bf16", False), (0, "f32", False), (1, "f32", True)]
    # refused at every precision and node count: the reason counts every attempt, and the file is gone
    every = {(n, p): 5.0 for n in range(5) for p in ("bf16", "f32")}
    variant, built = _judged(monkeypatch, tmp_path, every)
    assert not variant.shipped and variant.reason.endswith("after 5 attempts") and built == [0, 1, 2, 4]
    assert not (tmp_path / "model_int8_ov.onnx").exists()
    # a CPU without bf16 runs f32 anyway: nothing else to try; ONNX Runtime has no precision to choose
    variant, _ = _judged(monkeypatch, tmp_path, {(0, "f32"): 3.0}, "f32")
    assert _tried(variant) == [(0, "f32", False), (1, "f32", True)]
    variant, _ = _judged(monkeypatch, tmp_path, {(0, None): 3.0}, backend="onnxruntime")
    assert variant.precision is None and _tried(variant) == [(0, None, False), (1, None, True)]


# -- a multi-label model: points of micro-F1 --------------------------------------------------------------------

def test_the_guard_counts_micro_f1_points_and_label_set_agreement(tmp_path):
    """The guard's rule on logits a variant might give: one text loses a label."""
    from bertdeploy.builder.guard import Judge

    rows = make_multilabel_rows(8, seed=3)
    examples = load_examples(write_csv(tmp_path / "guard.csv", rows), label_column="labels", multi_label=True)
    scheme = LabelScheme(("negative", "positive"), True)
    reference = np.where(scheme.encode(examples.labels), 3.0, -3.0).astype(np.float32)  # PyTorch right on all
    judge = Judge(examples, scheme, reference, None, device="cpu", max_accuracy_drop=1.0)
    assert judge.reference_figures == {"micro_f1": 1.0, "macro_f1": 1.0, "subset_accuracy": 1.0}
    worse = reference.copy()
    worse[2] = -3.0  # the third text ("negative|positive") loses both labels
    figures = judge.baseline(worse)
    positives = int(scheme.encode(examples.labels).sum())
    assert figures["micro_f1"] == pytest.approx(2 * (positives - 2) / (2 * (positives - 2) + 2))
    assert figures["micro_f1_drop"] == pytest.approx((1 - figures["micro_f1"]) * 100)
    assert figures["agreement"] == pytest.approx(7 / 8) and not figures["kept_accuracy"]
    assert judge.difference(worse) == pytest.approx(1 / (1 + np.exp(-3)) - 1 / (1 + np.exp(3)))
