"""The kinds of variant that export builds from the fp32 export: one entry each, the whole recipe in one place.

A kind says how to build its file (its builder function), which runtime checks and runs it, what the guard tries
first, whether it calibrates, what it needs installed, where export builds it unasked, and whether it is also built
from a fused graph. export.py and guard.py look a kind up here instead of testing its name; adding a kind is one
entry in KINDS and its builder function (its name in defaults.QUANTIZATIONS too, which the CLI offers before the
build wing loads: a test checks that the two agree).
Not here: the fp32 export and the optimization levels O1-O4 (onnxexport.py, optimize.py), which every kind starts
from, and whether a variant is good enough to ship (guard.py). The runtime never reads this: it learns a variant's
backend from the manifest.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bertdeploy.builder import quantize as q
from bertdeploy.defaults import ONNXRUNTIME, OPENVINO
from bertdeploy.runtime.backends import import_openvino
from bertdeploy.runtime.encoding import encode
from bertdeploy.runtime.sessions import create_session

UNFUSED = "fp32 export (unfused)"
FP32_OV = "fp32-ov"  # the fp32 file on OpenVINO: export --openvino, not a quantization
# what a kind's `extras` name, imported before any work so that a missing one is named first
IMPORTS: dict[str, Callable[[], object]] = {"openvino": import_openvino, "nncf": q.import_nncf}


@dataclass(frozen=True, kw_only=True)
class Build:
    """One build of a variant: the graph it starts from, the file it writes, and the export settings a builder
    reads."""

    kind: str
    graph: Path  # the fp32 export, or the graph fused at `fused`
    destination: Path
    fused: str | None  # the optimization level that fused `graph`; None: the unfused fp32 export
    tokenizer: object
    calibration: tuple[list[str], list[str] | None] | None  # texts and pairs, for the kinds that calibrate
    preset: str  # ONNX Runtime's INT8 preset (quantize.PRESETS)
    calibration_method: str
    progress: bool

    @property
    def texts(self) -> int:
        return len(self.calibration[0]) if self.calibration else 0

    @property
    def source(self) -> str:
        return f"{self.fused}-fused graph" if self.fused else UNFUSED

    def feeds(self) -> Iterator[dict]:
        """One feed per calibration text, with the inputs `graph` declares."""
        texts, pairs = self.calibration or ([], None)
        names = [i.name for i in create_session(self.graph, "cpu").get_inputs()]
        return (encode(self.tokenizer, [t], None if pairs is None else [pairs[i]], names) for i, t in enumerate(texts))


# A builder writes `build.destination` with the quantizer's `settings`, keeping the weight nodes `nodes` in float,
# and returns what it did: the manifest's `quantization` entry.
Builder = Callable[[Build, dict, list[str]], dict]


def _fp16(build: Build, settings: dict, nodes: list[str]) -> dict:
    q.convert_fp16(build.graph, build.destination, keep_fp32_nodes=nodes)
    return {"type": build.kind, "io": "float32", "fp32_ops": q.FP16_FRAGILE_OPS, "float_nodes": nodes}


def _int8(build: Build, settings: dict, nodes: list[str]) -> dict:
    q.quantize_dynamic_int8(build.graph, build.destination, build.preset, per_channel=settings["per_channel"],
                            exclude=nodes)
    return _ort_int8(build, settings, nodes)


def _int8_static(build: Build, settings: dict, nodes: list[str]) -> dict:
    q.quantize_static_int8(build.graph, build.destination, build.preset, build.feeds(), build.texts,
                           method=build.calibration_method, per_channel=settings["per_channel"], exclude=nodes,
                           progress=build.progress)
    return {**_ort_int8(build, settings, nodes), "calibration_method": build.calibration_method,
            "calibration_texts": build.texts}


def _ort_int8(build: Build, settings: dict, nodes: list[str]) -> dict:
    return {"type": build.kind, "preset": build.preset, "per_channel": settings["per_channel"], "float_nodes": nodes,
            "source": build.source}


def _int8_ov(build: Build, settings: dict, nodes: list[str]) -> dict:
    q.quantize_openvino_int8(build.graph, build.destination, build.feeds(), build.texts, preset=settings["preset"],
                             exclude=nodes, progress=build.progress)
    return {"type": build.kind, "tool": "nncf", "preset": settings["preset"], "per_channel": True,
            "float_nodes": nodes, "calibration_texts": build.texts, "source": build.source}


def _as_asked(per_channel: bool) -> list[dict]:
    """ONNX Runtime's INT8: per-channel weight scales as asked, then per-channel."""
    return [{"per_channel": per_channel}] + ([] if per_channel else [{"per_channel": True}])


@dataclass(frozen=True, kw_only=True)
class Kind:
    name: str
    build: Builder | None  # None: nothing to build, the fp32 file runs on `backend` as it is
    backend: str = ONNXRUNTIME  # the runtime it is checked on and runs on; OpenVINO's are built on the CPU
    # the quantizer's settings to try before keeping any node in float, from --per-channel
    first_settings: Callable[[bool], list[dict]] = lambda per_channel: [{}]
    calibrated: bool = False  # needs calibration texts (--calibration-file, else the training file)
    extras: tuple[str, ...] = ()  # the modules of optional extras it needs (IMPORTS)
    default_on: str | None = None  # the device export builds it on when no variants are named, if `extras` are there
    # also built from the graph an fp32 optimization level (O1-O3) fused, as '<level>-<name>', since neither order
    # is faster at every batch size (benchmarks/RESULTS.md): the timing picks
    fused_too: bool = False
    integer: bool = False  # INT8 kernels: ONNX Runtime's CUDA provider has no fast ones, so never the default there


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind(name="int8", build=_int8, first_settings=_as_asked, default_on="cpu", fused_too=True, integer=True),
    Kind(name="int8-static", build=_int8_static, first_settings=_as_asked, calibrated=True, integer=True),
    Kind(name="fp16", build=_fp16, default_on="cuda"),
    # NNCF: always per-channel weights; asymmetric activations ("mixed") for transformers
    Kind(name="int8-ov", build=_int8_ov, backend=OPENVINO, first_settings=lambda per_channel: [{"preset": "mixed"}],
         calibrated=True, extras=("openvino", "nncf"), default_on="cpu", integer=True),
    Kind(name=FP32_OV, build=None, backend=OPENVINO, extras=("openvino",), default_on="cpu"),
)}


def quantized() -> list[str]:
    """The kinds --quantize names, in the registry's order (fp32-ov, with nothing to build, is --openvino's)."""
    return [name for name, kind in KINDS.items() if kind.build is not None]


def built_unasked(kind: Kind, device: str) -> bool:
    """Whether export builds `kind` on `device` when no variants are named: where it pays and is installed."""
    return kind.default_on == device and all(importlib.util.find_spec(module) for module in kind.extras)


def import_extras(kinds: list[Kind]) -> None:
    """Import what `kinds` need beyond the training stack: a missing extra is named before any work."""
    for module in dict.fromkeys(module for kind in kinds for module in kind.extras):
        IMPORTS[module]()


def integer(kind: str) -> bool:
    """Whether a variant of manifest kind `kind` computes in INT8 (fp32 and optimized are no kind of this registry)."""
    return kind in KINDS and KINDS[kind].integer


def file_name(variant: str) -> str:
    """The file of variant `variant` in the artifact directory: model.onnx for fp32, model_<name>.onnx otherwise."""
    return "model.onnx" if variant == "fp32" else f"model_{variant.replace('-', '_')}.onnx"
