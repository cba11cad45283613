"""INT8 (dynamic and static, and for OpenVINO) and FP16 versions of an exported ONNX graph.

Dynamic INT8 stores the weights in 8 bits and quantizes activations on the fly; static INT8
fixes the activation ranges from calibration texts; OpenVINO INT8 is NNCF's post-training
quantization of the same ONNX graph, also calibrated, for the OpenVINO runtime; FP16 halves
the weights and keeps fp32 inputs, outputs and numerically fragile ops. INT8 presets name the CPU the kernels target,
with the types and symmetry Optimum's `AutoQuantizationConfig` gave each (PRESETS); `auto` reads the CPU's flags.
Any graph can be quantized: fused graphs need `DefaultTensorType`, which is always passed.
This module builds files; export.py chooses what to build and decides what is good enough to ship.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import platform
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from bertdeploy.defaults import AUTO, CALIBRATION_METHOD, CALIBRATION_METHODS, PER_CHANNEL, QUANT_PRESETS
from bertdeploy.errors import BertdeployError, import_extra
from bertdeploy.host import cpu_flags

# Kept in fp32 by the FP16 conversion: reductions, exponentials and normalisations over- or
# underflow in half precision (NaN/inf); everything else runs in fp16.
FP16_FRAGILE_OPS = ["Softmax", "LayerNormalization", "SkipLayerNormalization", "ReduceMean", "Pow", "Sqrt", "Erf",
                    "Exp"]
# Weight-carrying nodes the quantizers convert, and the sensitivity ranking can keep in float.
WEIGHT_OPS = ("MatMul", "Attention")
RANKING_TEXTS = 16


def detect_preset() -> str:
    """The INT8 preset for this CPU: VNNI when it has it, then AVX-512, ARM, else AVX2."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags()
    if {"avx512_vnni", "avx_vnni"} & flags:
        return "avx512_vnni"
    if "avx512bw" in flags:
        return "avx512"
    return "avx2"


def resolve_preset(preset: str) -> str:
    if preset == AUTO:
        return detect_preset()
    if preset not in QUANT_PRESETS:
        raise BertdeployError(f"unknown quantization preset {preset!r}; use auto or one of {', '.join(QUANT_PRESETS)}")
    return preset


# Per preset: weight type and 7-bit range. Activations are uint8 and asymmetric, weights symmetric, everywhere.
# Without VNNI, u8 x s8 products can saturate 16-bit accumulators: `avx512` uses 7-bit weights, `avx2` uint8 weights.
PRESETS = {
    "avx512_vnni": {"weight_type": "QInt8", "reduce_range": False},
    "avx512": {"weight_type": "QInt8", "reduce_range": True},
    "avx2": {"weight_type": "QUInt8", "reduce_range": False},
    "arm64": {"weight_type": "QInt8", "reduce_range": False},
}


def _preset_settings(preset: str) -> dict:
    """A preset's types, range and symmetry, as ONNX Runtime quantizer arguments."""
    import onnx
    from onnxruntime.quantization import QuantType

    return {
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType[PRESETS[preset]["weight_type"]],
        "reduce_range": PRESETS[preset]["reduce_range"],
        # Without a default type the quantizer fails on fused graphs whose contrib ops defeat shape inference.
        "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True,
                          "DefaultTensorType": onnx.TensorProto.FLOAT},
    }


def graph_nodes(model_path: Path) -> list[tuple[str, str]]:
    """(name, op type) of every node of a graph."""
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(model_path), load_external_data=False).graph.node]


def rank_sensitive_nodes(source: Path, feeds: Iterable[dict]) -> list[str]:
    """The graph's weight MatMuls (and fused Attention), most sensitive to 8 bits first.

    Each node's sensitivity is the relative error of its output, on the activations `feeds` (one input dict
    per text) really give it, when its input is quantized per tensor to uint8 (as dynamic and static INT8
    and NNCF do) and its weight per output channel to int8: one fp32 run, then numpy. Outlier features,
    which crush every other value of a per-tensor activation scale, rank first.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(source))
    weights = {i.name: i for i in model.graph.initializer if len(i.dims) == 2}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in weights]
    outputs = {o.name for o in model.graph.output}
    for name in dict.fromkeys(n.input[0] for n in nodes):
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    matrices = {n.name: numpy_helper.to_array(weights[n.input[1]]).astype(np.float64) for n in nodes}
    quantized = {name: _fake_int8_weight(w) for name, w in matrices.items()}  # once: the weights do not change
    errors: dict[str, list[float]] = {n.name: [] for n in nodes}
    for feed in itertools.islice(feeds, RANKING_TEXTS):
        values = dict(zip(names, session.run(names, feed), strict=True))
        for n in nodes:
            x = values[n.input[0]].reshape(-1, values[n.input[0]].shape[-1]).astype(np.float64)
            exact = x @ matrices[n.name]
            errors[n.name].append(float(np.linalg.norm(_fake_uint8(x) @ quantized[n.name] - exact)
                                        / max(np.linalg.norm(exact), 1e-12)))
    return sorted(errors, key=lambda name: -float(np.mean(errors[name] or [0.0])))


def _fake_uint8(x: np.ndarray) -> np.ndarray:
    """`x` quantized to uint8 with one asymmetric scale, and back."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero = np.round(-low / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_int8_weight(w: np.ndarray) -> np.ndarray:
    """`w` (in x out) quantized to int8 with one symmetric scale per output channel, and back."""
    values, scale = int8_rows(w.T)
    return (values * scale).T


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`w` in int8 with one symmetric scale per row: (values, scales as a column)."""
    scale = np.abs(w).max(axis=1, keepdims=True) / 127
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale.astype(w.dtype)


# Graph metadata naming, for a table, a 1-D initializer of per-row weights read with the same ids and multiplied into
# its rows (a static student's token weights): its per-row scales are folded into those weights
ROW_WEIGHTS = "bertdeploy.row_weights"


def int8_tables(model) -> list[str]:
    """Store each embedding table of `model` (an onnx ModelProto, changed in place: a 2-D float initializer that a
    Gather reads rows of) in int8 with one scale per row: Gather, Cast, then the scales gathered and multiplied in,
    or folded into the table's row weights where the graph's ROW_WEIGHTS metadata names them ("table:weights").

    ONNX Runtime's quantizer gives a table one scale for all its rows, set by its largest value; a row's own
    scale keeps each token's vector as exact as a per-channel weight. Returns the new nodes' names, for the
    quantizer to leave alone."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    tables = {i.name: i for i in graph.initializer if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT}
    inputs = {i.name for i in graph.input}
    folds = dict(pair.split(":") for prop in model.metadata_props if prop.key == ROW_WEIGHTS
                 for pair in prop.value.split(","))
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    made: list[str] = []
    for position, node in reversed(list(enumerate(graph.node))):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = node.input[0] if node.op_type == "Gather" and node.input else None
        if table not in tables or table in inputs or axis != 0 or readers[table] != 1:
            continue
        values, scale = int8_rows(numpy_helper.to_array(tables[table]))
        graph.initializer.remove(tables[table])
        graph.initializer.append(numpy_helper.from_array(values, f"{table}_int8"))
        ids, out, base = node.input[1], node.output[0], node.name or node.output[0]
        nodes = [helper.make_node("Gather", [f"{table}_int8", ids], [f"{out}_int8"], name=f"{base}_int8")]
        weights = next((i for i in graph.initializer if i.name == folds.get(table)), None)
        if weights is not None:  # the rows' weights carry their scales: rows x scale x weight = int8 x (scale x weight)
            folded = numpy_helper.to_array(weights) * scale[:, 0]
            weights.CopyFrom(numpy_helper.from_array(folded.astype(np.float32), weights.name))
            nodes.append(helper.make_node("Cast", [f"{out}_int8"], [out], name=f"{base}_cast",
                                          to=onnx.TensorProto.FLOAT))
            made += [n.name for n in graph.node if weights.name in n.input]  # in float: the scales are in them
        else:
            graph.initializer.append(numpy_helper.from_array(scale, f"{table}_scale"))
            nodes += [helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], name=f"{base}_cast",
                                       to=onnx.TensorProto.FLOAT),
                      helper.make_node("Gather", [f"{table}_scale", ids], [f"{out}_scale"], name=f"{base}_scale"),
                      helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{base}_rows")]
        graph.node.remove(node)
        for offset, new in enumerate(nodes):
            graph.node.insert(position + offset, new)
        made += [n.name for n in nodes]
    return made


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


def quantize_dynamic_int8(source: Path, destination: Path, preset: str, per_channel: bool = PER_CHANNEL,
                          exclude: Iterable[str] = ()) -> Path:
    """Dynamic INT8: weights of MatMul/Attention in int8, embedding tables in int8 per row (int8_tables),
    activations quantized per call."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    settings = _preset_settings(preset)
    model = onnx.load(str(source))
    exclude = [*exclude, *int8_tables(model)]
    with _quiet_onnxruntime_logs():
        quantize_dynamic(model, destination, per_channel=per_channel, nodes_to_exclude=exclude,
                         weight_type=settings["weight_type"], reduce_range=settings["reduce_range"],
                         extra_options=settings["extra_options"])
    return destination


def quantize_static_int8(source: Path, destination: Path, preset: str, feeds: Iterable[dict], count: int,
                         method: str = CALIBRATION_METHOD, per_channel: bool = PER_CHANNEL, exclude: Iterable[str] = (),
                         progress: bool = False) -> Path:
    """Static INT8 (QDQ): MatMul weights in int8, activation ranges calibrated by running `feeds` (one input dict per
    text); embedding tables in int8 per row (int8_tables)."""
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

    settings = _preset_settings(preset)
    settings["extra_options"]["CalibMaxIntermediateOutputs"] = 64
    model = onnx.load(str(source))
    exclude = [*exclude, *int8_tables(model)]
    with _quiet_onnxruntime_logs():
        quantize_static(model, destination, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude,
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
