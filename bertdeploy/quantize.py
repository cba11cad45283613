"""INT8 (dynamic and static, and for OpenVINO) and FP16 versions of an exported ONNX graph.

Dynamic INT8 stores the weights in 8 bits and quantizes activations on the fly; static INT8
fixes the activation ranges from calibration texts; OpenVINO INT8 is NNCF's post-training
quantization of the same ONNX graph, also calibrated, for the OpenVINO runtime; FP16 halves
the weights and keeps fp32 inputs, outputs and numerically fragile ops. INT8 presets name the CPU the kernels target and
come from Optimum's `AutoQuantizationConfig`; `auto` reads the CPU's flags.
Any graph can be quantized: fused graphs need `DefaultTensorType`, which is always passed.
This module builds files; export.py chooses what to build and decides what is good enough to ship.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertdeploy.errors import BertdeployError, import_extra

PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64")
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Kept in fp32 by the FP16 conversion: reductions, exponentials and normalisations over- or
# underflow in half precision (NaN/inf); everything else runs in fp16.
FP16_FRAGILE_OPS = ["Softmax", "LayerNormalization", "SkipLayerNormalization", "ReduceMean", "Pow", "Sqrt", "Erf",
                    "Exp"]
# Nodes a retry keeps in float when quantizing everything costs too much accuracy: the
# classification head (pooler, classifier) and the feed-forward output projections, whose
# inputs carry the largest outliers in BERT-family models.
_FRAGILE_PATTERNS = {
    "head": re.compile(r"pooler|classifier"),
    "ffn_output": re.compile(r"/layer\.\d+/(output/dense|ffn/lin2)/"),
}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_preset() -> str:
    """The INT8 preset for this CPU: VNNI when it has it, then AVX-512, ARM, else AVX2."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = _cpu_flags()
    if {"avx512_vnni", "avx_vnni"} & flags:
        return "avx512_vnni"
    if "avx512bw" in flags:
        return "avx512"
    return "avx2"


def resolve_preset(preset: str) -> str:
    if preset == "auto":
        return detect_preset()
    if preset not in PRESETS:
        raise BertdeployError(f"unknown quantization preset {preset!r}; use auto or one of {', '.join(PRESETS)}")
    return preset


def _preset_settings(preset: str, is_static: bool, per_channel: bool) -> dict:
    """Activation/weight types, range and symmetry of an Optimum preset, as ORT quantizer arguments.

    Without VNNI, u8 x s8 products can saturate 16-bit accumulators, so `avx512` uses 7-bit weights.
    """
    from optimum.onnxruntime import AutoQuantizationConfig

    make = getattr(AutoQuantizationConfig, preset)
    extra = {"reduce_range": True} if preset == "avx512" else {}
    config = make(is_static=is_static, per_channel=per_channel, **extra)
    return {
        "activation_type": config.activations_dtype,
        "weight_type": config.weights_dtype,
        "reduce_range": config.reduce_range,
        "extra_options": {"ActivationSymmetric": config.activations_symmetric,
                          "WeightSymmetric": config.weights_symmetric},
    }


def graph_nodes(model_path: Path) -> list[tuple[str, str]]:
    """(name, op type) of every node of a graph, read once for `fragile_nodes`."""
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(model_path), load_external_data=False).graph.node]


def fragile_nodes(nodes: list[tuple[str, str]], groups: Iterable[str], op_types: Iterable[str]) -> list[str]:
    """Names of the `nodes` of `op_types` in `groups` (`head`, `ffn_output`)."""
    patterns = [_FRAGILE_PATTERNS[g] for g in groups]
    types = set(op_types)
    return [name for name, op in nodes if op in types and any(p.search(name) for p in patterns)]


@contextlib.contextmanager
def _quiet_onnxruntime_logs() -> Iterator[None]:
    """ORT's quantizer logs advice through the root logger (and would install a handler on it)."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    errors_only = logging.Filter()
    errors_only.filter = lambda record: record.levelno >= logging.ERROR  # type: ignore[method-assign]
    if guard:
        root.addHandler(guard)
    root.addFilter(errors_only)
    try:
        yield
    finally:
        root.removeFilter(errors_only)
        if guard:
            root.removeHandler(guard)


def quantize_dynamic_int8(source: Path, destination: Path, preset: str, per_channel: bool = True,
                          exclude: Iterable[str] = ()) -> Path:
    """Dynamic INT8: weights of MatMul/Gather/Attention in int8, activations quantized per call."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    settings = _preset_settings(preset, is_static=False, per_channel=per_channel)
    # Without a default type the quantizer fails on fused graphs whose contrib ops defeat shape inference.
    settings["extra_options"]["DefaultTensorType"] = onnx.TensorProto.FLOAT
    with _quiet_onnxruntime_logs():
        quantize_dynamic(source, destination, per_channel=per_channel, nodes_to_exclude=list(exclude),
                         weight_type=settings["weight_type"], reduce_range=settings["reduce_range"],
                         extra_options=settings["extra_options"])
    return destination


def quantize_static_int8(source: Path, destination: Path, preset: str, feeds: Iterable[dict], count: int,
                         method: str = "minmax", per_channel: bool = True, exclude: Iterable[str] = (),
                         progress: bool = False) -> Path:
    """Static INT8 (QDQ): activation ranges calibrated by running `feeds` (one input dict per text)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    from tqdm import tqdm

    if method not in CALIBRATION_METHODS:
        raise BertdeployError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)
            self.bar = tqdm(total=count, desc="calibrating", unit="text", leave=False,
                            disable=None if progress else True)  # None: only on a terminal

        def get_next(self) -> dict | None:
            feed = next(self.feeds, None)
            self.bar.update(feed is not None)
            if feed is None:
                self.bar.close()
            return feed

    settings = _preset_settings(preset, is_static=True, per_channel=per_channel)
    settings["extra_options"].update(DefaultTensorType=onnx.TensorProto.FLOAT, CalibMaxIntermediateOutputs=64)
    with _quiet_onnxruntime_logs():
        quantize_static(source, destination, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=list(exclude),
                        calibrate_method=CalibrationMethod[CALIBRATION_METHODS[method]],
                        activation_type=settings["activation_type"], weight_type=settings["weight_type"],
                        reduce_range=settings["reduce_range"], extra_options=settings["extra_options"])
    return destination


def convert_fp16(source: Path, destination: Path, keep_fp32_nodes: Iterable[str] = ()) -> Path:
    """FP16 weights and compute; fp32 inputs/outputs, fragile op types and `keep_fp32_nodes` stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with _quiet_onnxruntime_logs():
        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True,
                                         op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_FRAGILE_OPS,
                                         node_block_list=list(keep_fp32_nodes))
    onnx.save(model, str(destination))
    return destination


def import_nncf():
    return import_extra("nncf", "openvino-int8", "int8-ov", "NNCF")


def quantize_openvino_int8(source: Path, destination: Path, feeds: Iterable[dict], count: int,
                           preset: str = "mixed", exclude: Iterable[str] = (), progress: bool = False) -> Path:
    """INT8 for the OpenVINO runtime: NNCF's post-training quantization of the ONNX graph (QDQ nodes that
    OpenVINO runs as int8 kernels), activation ranges from `feeds` (one input dict per text), with NNCF's
    transformer recipe (SmoothQuant, bias correction). Still one ONNX file."""
    import onnx

    nncf = import_nncf()
    nncf.set_log_level(logging.ERROR)
    model = onnx.load(str(source))
    # NNCF draws its progress bars on stdout, where the CLI prints results: send them to stderr, or nowhere.
    with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), preset=nncf.QuantizationPreset(preset),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=count,
                                  ignored_scope=nncf.IgnoredScope(names=list(exclude), validate=False))
    onnx.save(quantized, str(destination))
    return destination
