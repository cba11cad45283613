"""Judge exported variants: parity with PyTorch, the accuracy guard, quantizing to the bound, speed.

A variant runs on the same texts as PyTorch, exactly as the predictor will run it (its batches and
padding, and for OpenVINO the inference precision); it ships only if its logits are finite and it loses
no more accuracy than allowed (with labels), or disagrees with PyTorch on no more texts than that
(without). An OpenVINO variant that misses the bound at the CPU's default precision (bf16 where the
CPU has it) is judged again at f32, and runs at the precision it passed at. A quantization that still
misses it is rebuilt with its most sensitive nodes kept in float, as few as hold the bound, before
it is refused. The shipped variants are timed side by side and the fastest becomes the default.
This module knows nothing of how variants are built: export.py passes a builder in, and the settings to try first
(kinds.py has both).
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import sha256_file
from bertdeploy.builder.examples import Examples
from bertdeploy.builder.kinds import integer
from bertdeploy.defaults import F32
from bertdeploy.errors import BertdeployError, first_line
from bertdeploy.host import usable_cpus
from bertdeploy.labels import Drop, LabelScheme
from bertdeploy.manifest import AutoSection, VariantEntry
from bertdeploy.runtime.backends import ONNXRUNTIME, OPENVINO, default_precision, open_model
from bertdeploy.runtime.encoding import MAX_BATCH_SIZE, MAX_PADDING, batch_tokens, encode, run_batches
from bertdeploy.runtime.routing import auto_section
from bertdeploy.timing import interleaved_latency, median_tokens, stopwatch

logger = logging.getLogger(__name__)

# The fp32 export must match PyTorch to this many logit units (relative to the logits' scale);
# real exports differ by ~1e-5. Other variants are judged by the accuracy guard instead.
FP32_TOLERANCE = 1e-3


@dataclass(kw_only=True)
class Variant:
    name: str
    file: str
    kind: str  # fp32, optimized, or a quantized kind of kinds.KINDS (int8, int8-static, fp16, int8-ov)
    optimization: str | None
    quantization: dict | None
    size_bytes: int
    sha256: str
    opset: int
    parity: dict  # texts, max_abs_diff, label_agreement
    eval: dict | None  # accuracy, macro_f1, accuracy_drop
    shipped: bool
    reason: str | None = None  # why it was not shipped
    attempts: list[dict] = field(default_factory=list)
    latency_ms: dict | None = None  # batch_1, batch_8, batch_32 medians
    backend: str = ONNXRUNTIME  # the runtime it was checked on and runs on
    precision: str | None = None  # OpenVINO's inference precision, judged at and run at (bf16 or f32)
    fused: dict | None = None  # ONNX Runtime's fused operators in the graph, by kind (optimize.FUSED)

    @property
    def ran(self) -> bool:
        """Whether it was built and ran on the scoring texts (a refused variant may not have)."""
        return self.parity["label_agreement"] is not None

    def entry(self) -> VariantEntry:
        """Its record in the manifest; a refused variant's names no file."""
        recorded = {k: v for k, v in self.__dict__.items() if k not in ("name", "shipped")}
        return VariantEntry(**recorded) if self.shipped else VariantEntry(**{**recorded, "file": None, "sha256": None})


class Judge:
    """Runs a variant on the scoring texts and decides whether it may ship."""

    def __init__(self, examples: Examples, scheme: LabelScheme, reference: np.ndarray, tokenizer, *, device: str,
                 max_accuracy_drop: float, exported: np.ndarray | None = None) -> None:
        self.examples, self.scheme, self.reference, self.tokenizer = examples, scheme, reference, tokenizer
        # the PyTorch model that was exported, when it is not the reference (a trimmed vocabulary): the variants'
        # parity is measured against it, their accuracy against the reference
        self.exported = reference if exported is None else exported
        self.device, self.max_drop = device, max_accuracy_drop
        # with labels, the guard goes by the scheme's metric (accuracy; micro-F1 for multi-label models)
        self.guard = scheme.metric if examples.labels else "agreement"
        self.truth = scheme.encode(examples.labels) if examples.labels else None
        self.reference_decided = scheme.decide(scheme.activate(reference))
        report = self._report(self.reference_decided) if examples.labels else {}
        self.reference_figures = {k: report.get(k) for k in scheme.figures}

    def _report(self, decided: np.ndarray) -> dict:
        report = self.scheme.report(self.truth, decided)
        return {k: report[k] for k in self.scheme.figures}

    def baseline(self, logits: np.ndarray) -> dict:
        """A PyTorch baseline (bf16 autocast, say) against fp32 PyTorch: its figures, and whether it kept accuracy,
        by the variants' rule; only one that did counts as a speed-up baseline."""
        agreement, report, drop = self._compare(logits)
        key = self.scheme.drop_key
        figures = {**dict.fromkeys(self.scheme.figures), key: None, "agreement": agreement}
        if report is not None:
            figures.update(report, **{key: drop.lost})
        return {**figures, "kept_accuracy": bool(np.isfinite(logits).all()) and drop.within}

    def _compare(self, logits: np.ndarray) -> tuple[float, dict | None, Drop]:
        """Agreement with PyTorch's decisions (the label, or the whole label set), the figures (with labels), and
        the points lost by the one rule (labels.judge_drop): the metric below PyTorch's with labels, else the share
        of texts whose decision differs."""
        decided = self.scheme.decide(self.scheme.activate(logits))
        agreement = self.scheme.agreement(decided, self.reference_decided)
        report = self._report(decided) if self.truth is not None else None
        return agreement, report, self.scheme.drop(self.reference_figures, report, self.max_drop, agreement)

    def difference(self, logits: np.ndarray) -> float:
        """Largest difference from the exported PyTorch model's outputs: logits, or for multi-label models sigmoid
        scores (the figures a threshold is applied to)."""
        if self.scheme.multi_label:
            return float(np.abs(self.scheme.activate(logits) - self.scheme.activate(self.exported)).max())
        return float(np.abs(logits - self.exported).max())

    def run(self, path: Path, backend: str = ONNXRUNTIME, precision: str | None = None) -> tuple[np.ndarray, object]:
        """The logits of every scoring text, and the model that computed them: run as the predictor runs it, in
        its batches (the default token budget, texts per batch and padding cut), so that what passes here is
        what users get (dynamic INT8 depends on a text's batch-mates, bf16 kernels on the padded width)."""
        model = open_model(path, backend, self.device, precision=precision)
        encodings = self.tokenizer.tokenize(self.examples.texts, self.examples.pairs)
        return run_batches(model.run, self.tokenizer, encodings, model.input_names, len(self.scheme.labels),
                           batch_tokens(model.on_gpu), MAX_BATCH_SIZE, MAX_PADDING), model

    def lost(self, variant: Variant) -> float:
        """The points `variant` lost by the guard's rule (what the bound is compared with); infinite for one
        that did not run or gave non-finite logits."""
        if not variant.ran or not np.isfinite(variant.parity["max_abs_diff"]):
            return float("inf")
        return self.scheme.drop(self.reference_figures, variant.eval, self.max_drop,
                                variant.parity["label_agreement"]).lost

    def check_fp32(self, path: Path) -> Variant:
        variant = self.score("fp32", path, "fp32")
        scale = 1.0 if self.scheme.multi_label else max(1.0, float(np.abs(self.exported).max()))
        if not variant.parity["max_abs_diff"] <= FP32_TOLERANCE * scale:
            what = "score" if self.scheme.multi_label else "logit"
            raise BertdeployError(
                f"the ONNX export disagrees with PyTorch: max |{what} difference| {variant.parity['max_abs_diff']:.2g} "
                f"over {len(self.examples)} texts, tolerance {FP32_TOLERANCE * scale:.2g}; nothing was written. "
                "Try another --opset, and report the model's config.json if it persists"
            )
        return variant

    def score(self, name: str, path: Path, kind: str, *, optimization: str | None = None,
              quantization: dict | None = None, backend: str = ONNXRUNTIME, precision: str | None = None) -> Variant:
        """`path` run on `backend` (OpenVINO at inference `precision`; None: the CPU's default) and judged."""
        try:
            (scores, model), seconds = stopwatch(self.run, path, backend, precision)
        except BertdeployError as e:  # e.g. OpenVINO cannot compile the graph: refuse this variant, keep the rest
            logger.warning("%s: %s", name, e)
            return self.refused(name, path, kind, str(e).split(": ", 1)[-1], optimization=optimization,
                                quantization=quantization, backend=backend)
        finite = bool(np.isfinite(scores).all())
        diff = self.difference(scores) if finite else float("inf")
        agreement, report, drop = self._compare(scores)
        parity = {"texts": len(self.examples), "max_abs_diff": diff, "label_agreement": agreement}
        evaluation = None if report is None else {**report, self.scheme.drop_key: drop.lost}
        reason = None if drop.within else drop.reason("PyTorch", len(self.examples))
        if not finite:
            reason = "produces NaN or infinite logits"
        at = f" at {model.precision}" if backend == OPENVINO else ""
        logger.info("%s%s: %s in %.1fs", name, at, reason or "passed", seconds)
        return Variant(name=name, file=path.name, kind=kind, optimization=optimization, quantization=quantization,
                       size_bytes=path.stat().st_size, sha256=sha256_file(path), opset=_opset(path), parity=parity,
                       eval=evaluation, shipped=reason is None, reason=reason, backend=backend,
                       precision=getattr(model, "precision", None))

    def refused(self, name: str, path: Path, kind: str, reason: str, *, optimization: str | None = None,
                quantization: dict | None = None, backend: str = ONNXRUNTIME) -> Variant:
        """A variant that could not be built or run: no figures, and the reason."""
        exists = path.is_file()
        return Variant(name=name, file=path.name, kind=kind, optimization=optimization, quantization=quantization,
                       size_bytes=path.stat().st_size if exists else 0, sha256=sha256_file(path) if exists else "",
                       opset=_opset(path) if exists else 0,
                       parity={"texts": len(self.examples), "max_abs_diff": None, "label_agreement": None}, eval=None,
                       shipped=False, reason=reason, backend=backend)


def _opset(path: Path) -> int:
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next(o.version for o in imports if o.domain in ("", "ai.onnx"))


def precisions(backend: str) -> list[str | None]:
    """The inference precisions to judge a variant at, in turn until one holds the bound: on OpenVINO the CPU's
    default (what it runs at unless told: bf16 where the CPU has it), then f32 where that differs. On an AMX
    Xeon, bf16 costs an NNCF INT8 graph accuracy at the padded widths the predictor's batches have, and f32
    does not (docs/openvino.md). ONNX Runtime has no such setting: [None]."""
    if backend != OPENVINO:
        return [None]
    default = default_precision()
    return [default] + ([F32] if default != F32 else [])


def _attempt(variant: Variant, settings: dict, nodes: int) -> dict:
    """One attempt of the guard, as the manifest records it (OpenVINO's with the precision it was judged at)."""
    return {"settings": settings, "nodes_kept_float": nodes,
            **({"precision": variant.precision} if variant.precision else {}),
            "passed": variant.shipped, "reason": variant.reason, "eval": variant.eval, "parity": variant.parity}


def _named(variant: Variant) -> str:
    """'int8-ov at bf16' for an OpenVINO variant, its name for the rest: for the guard's warnings."""
    return f"{variant.name} at {variant.precision}" if variant.precision else variant.name


def _after(variant: Variant, attempts: int) -> None:
    variant.reason = f"{variant.reason}, after {attempts} attempt{'s' if attempts > 1 else ''}"


def judge_at_precisions(judge: Judge, name: str, path: Path, kind: str, *, backend: str = OPENVINO) -> Variant:
    """A variant with nothing to build (fp32-ov: the fp32 file on OpenVINO), judged at each of `precisions` in
    turn until one holds the bound; it runs at that one. Every attempt is recorded."""
    tried: list[dict] = []
    for precision in precisions(backend):
        variant = judge.score(name, path, kind, backend=backend, precision=precision)
        tried.append(_attempt(variant, {}, 0))
        if variant.shipped or not variant.ran:
            break
        logger.warning("%s: %s", _named(variant), variant.reason)
    variant.attempts = tried
    if not variant.shipped and len(tried) > 1:
        _after(variant, len(tried))
    return variant


def build_to_the_bound(name: str, kind: str, destination: Path, judge: Judge, *, first_settings: list[dict],
                       rank: Callable[[], list[str]], build: Callable[[dict, list[str]], dict],
                       optimization: str | None = None, backend: str = ONNXRUNTIME) -> Variant:
    """Build variant `name` with `build(settings, float_nodes)` and judge it, with each of `first_settings` in turn
    (the quantizer's settings to try before keeping any node in float) until one passes; if it misses the bound,
    judge the same file at a safer inference precision (OpenVINO: f32, see `precisions`), then keep the nodes
    `rank()` names in float, most sensitive first, as few as hold the bound.

    The search doubles the nodes kept in float (1, 2, 4, ... all) until a build passes, then halves the gap
    to the last failure: the bound (--max-accuracy-drop, in the guard's own terms) is the target the quantizer
    works to. It judges at the precision that lost the fewest points (the safer one on a tie). A variant that
    misses the bound even with every ranked node in float is refused and its file deleted.
    """
    tried: list[dict] = []
    order = precisions(backend)

    def attempt(settings: dict, nodes: list[str], precision: str | None) -> Variant:
        logger.info("building %s (attempt %d: %s, %d nodes kept in float)", name, len(tried) + 1, settings, len(nodes))
        try:
            described = build(settings, nodes)
        except BertdeployError:
            raise
        except Exception as e:  # noqa: BLE001 - a quantizer failing on an unusual graph refuses this variant only
            variant = judge.refused(name, destination, kind, f"the quantizer failed: {first_line(e)[:300]}",
                                    optimization=optimization, backend=backend)
        else:
            variant = judge.score(name, destination, kind, optimization=optimization, quantization=described,
                                  backend=backend, precision=precision)
        return record(variant, settings, nodes)

    def record(variant: Variant, settings: dict, nodes: list[str]) -> Variant:
        tried.append(_attempt(variant, settings, len(nodes)))
        if not variant.shipped:
            logger.warning("%s: %s", _named(variant), variant.reason)
        return variant

    for settings in first_settings:
        judged = [attempt(settings, [], order[0])]
        for precision in order[1:]:  # the same file at a safer precision: nothing to rebuild
            if judged[-1].shipped or not judged[-1].ran:
                break
            logger.info("%s: judging it again at %s inference precision", name, precision)
            again = judge.score(name, destination, kind, optimization=optimization,
                                quantization=copy.deepcopy(judged[0].quantization), backend=backend,
                                precision=precision)
            judged.append(record(again, settings, []))
        variant = judged[-1] if judged[-1].shipped or not judged[-1].ran else \
            min(reversed(judged), key=judge.lost)  # the precision that did best: the search goes on at it
        if variant.shipped or not variant.ran:
            break
    precision = variant.precision
    if not variant.shipped and variant.ran:  # it ran, and missed the bound: keeping nodes in float may help
        ranked = rank()
        if ranked:
            logger.info("%s: keeping the nodes most sensitive to quantization in float until it holds the bound "
                        "(%d candidates%s)", name, len(ranked), f", at {precision} precision" if precision else "")
        failed, count, best = 0, 1, None
        while ranked and best is None:
            count = min(count, len(ranked))
            variant = attempt(settings, ranked[:count], precision)
            if variant.shipped:
                best = _keep(variant, destination)
            elif count == len(ranked):
                break
            else:
                failed, count = count, count * 2
        while best is not None and count - failed > 1:
            middle = (failed + count) // 2
            variant = attempt(settings, ranked[:middle], precision)
            if variant.shipped:
                best, count = _keep(variant, destination), middle
            else:
                failed = middle
        if best is not None:
            best[1].replace(destination)
            variant = best[0]
        if variant.quantization is not None:
            variant.quantization["float_candidates"] = len(ranked)  # the ranked nodes: float_nodes are the first
    variant.attempts = tried
    if not variant.shipped:
        destination.unlink(missing_ok=True)
        _after(variant, len(tried))
    return variant


def _keep(variant: Variant, destination: Path) -> tuple[Variant, Path]:
    """Set aside a passing build while the search tries fewer nodes in float."""
    kept = destination.with_name(destination.name + ".passed")
    shutil.copyfile(destination, kept)
    return variant, kept


def time_and_pick(variants: list[Variant], directory: Path, tokenizer, examples: Examples, *, device: str,
                  baselines: dict[str, Callable[[dict], object]], rounds: int = 7,
                  ) -> tuple[str, AutoSection | None, dict]:
    """Median latency of each shipped variant, on its runtime, and of each PyTorch `baselines` run (name: run(feed)),
    at batch 1, 8 and 32 of real texts, interleaved.

    The fastest ONNX Runtime variant per text is the default (never INT8 on CUDA, which has no fast integer
    kernels). On the CPU, also the manifest's `auto` section: the fastest variant of any runtime per range of
    batch sizes in padded tokens (bench measures this at more lengths and replaces it). Returns the default,
    the auto section and the baselines' latency.
    """
    shipped = [v for v in variants if v.shipped]
    models = {v.name: open_model(directory / v.file, v.backend, device, precision=v.precision) for v in shipped}
    names = next(iter(models.values())).input_names
    picks = np.linspace(0, len(examples) - 1, num=min(32, len(examples))).astype(int)
    texts = [examples.texts[i] for i in picks]
    pairs = None if examples.pairs is None else [examples.pairs[i] for i in picks]
    groups = {"batch_1": [encode(tokenizer, texts[i:i + 1], pairs and pairs[i:i + 1], names)
                          for i in range(0, len(texts), max(1, len(texts) // 8))][:8],
              "batch_8": [encode(tokenizer, texts[::4][:8], pairs and pairs[::4][:8], names)]}
    if len(texts) == 32:
        groups["batch_32"] = [encode(tokenizer, texts, pairs, names)]
    latency = interleaved_latency({**{name: model.run for name, model in models.items()}, **baselines}, groups,
                                  rounds)
    for v in shipped:
        v.latency_ms = latency[v.name]
    runtime = [v for v in shipped if v.backend == ONNXRUNTIME]
    candidates = [v for v in runtime if not (device == "cuda" and integer(v.kind))] or runtime
    best = min(candidates, key=lambda v: v.latency_ms["batch_1"] + v.latency_ms["batch_8"] / 8)
    baseline_latency = {name: latency[name] for name in baselines}
    if device != "cpu":
        return best.name, None, baseline_latency
    p50 = {v.name: {median_tokens(groups[group]): ms for group, ms in v.latency_ms.items()} for v in shipped}
    return best.name, auto_section(p50, [v.name for v in shipped], {v.name: v.backend for v in shipped}, "export",
                                   f"{len(texts)} texts of the scoring set", usable_cpus()), baseline_latency
