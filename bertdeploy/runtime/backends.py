"""Where a graph runs: ONNX Runtime or the OpenVINO runtime, behind one small interface.

`open_model` gives an object with `input_names`, `providers` and `run(feed) -> logits` for an
ONNX file on either runtime. OpenVINO reads the same ONNX files (no second export), compiled for
the CPU with its settings made explicit: the inference precision (the one export judged the variant
at, recorded in the manifest; without one, bf16 where the CPU has it, else f32), the thread count,
and the latency or throughput hint. Which variant runs which batch sizes is routing.py's business.
Imports only onnxruntime, numpy and (when asked for) openvino: the predictor stands on it.
"""

from __future__ import annotations

import functools
import logging
import queue
from pathlib import Path

import numpy as np

from bertdeploy.defaults import AUTO, BACKENDS, BF16, F32, ONNXRUNTIME, OPENVINO, PRECISIONS
from bertdeploy.errors import BertdeployError, first_line, import_extra
from bertdeploy.host import usable_cpus
from bertdeploy.runtime.sessions import GPU_PROVIDERS, create_session

logger = logging.getLogger(__name__)

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def check_backend(backend: str) -> None:
    """The one check of the backend a predictor is asked for: 'auto' (each batch on the variant measured fastest
    for its size) or one of BACKENDS."""
    if backend not in (AUTO, *BACKENDS):
        raise BertdeployError(f"unknown backend {backend!r}; use auto, {', '.join(BACKENDS)}")


def import_openvino():
    return import_extra("openvino", "openvino", "the OpenVINO backend", "the openvino package")


@functools.cache
def openvino_installed() -> bool:
    try:
        import_openvino()
    except BertdeployError:
        return False
    return True


def cpu_precision(core) -> str:
    """OpenVINO's default inference precision on this CPU: bf16 where it computes it natively (AVX512-BF16, AMX),
    else f32."""
    return BF16 if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else F32


@functools.cache
def default_precision() -> str:
    """`cpu_precision` of this machine: what an OpenVINO variant runs at unless told otherwise."""
    return cpu_precision(import_openvino().Core())


class OrtModel:
    """An ONNX Runtime session; on CUDA, inputs are copied to the device and the output is bound there.

    `run(feed)` gives the logits. `prepare` and `run_prepared` split it for timing: `prepare` puts a feed
    where the session reads it (on CUDA: device copies, bound once), `run_prepared` only computes."""

    backend = ONNXRUNTIME

    def __init__(self, path: str | Path, providers=None, *, threads: int | None = None, spinning: bool = False,
                 allow_fallback: bool = False) -> None:
        self.session = create_session(path, providers, threads=threads, spinning=spinning,
                                      allow_fallback=allow_fallback)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.providers: list[str] = self.session.get_providers()
        self.on_gpu = self.providers[0] in GPU_PROVIDERS
        self._device_id = int(self.session.get_provider_options().get(self.providers[0], {}).get("device_id", 0))

    def prepare(self, feed: dict):
        feed = {name: feed[name] for name in self.input_names}
        if not self.on_gpu:
            return feed
        import onnxruntime as ort

        values = {n: ort.OrtValue.ortvalue_from_numpy(array, "cuda", self._device_id) for n, array in feed.items()}
        binding = self.session.io_binding()
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output_name, "cuda", self._device_id)
        return binding, values  # the device copies live as long as the binding

    def run_prepared(self, prepared) -> np.ndarray | None:
        """The logits on the CPU; on CUDA they stay on the device (None), the call synchronised."""
        if not self.on_gpu:
            return self.session.run([self.output_name], prepared)[0]
        self.session.run_with_iobinding(prepared[0])
        prepared[0].synchronize_outputs()
        return None

    def run(self, feed: dict) -> np.ndarray:
        if not self.on_gpu:  # the predictor's hot path: its feeds hold exactly the graph's inputs
            return self.session.run([self.output_name], feed)[0]
        prepared = self.prepare(feed)
        self.run_prepared(prepared)
        return prepared[0].copy_outputs_to_cpu()[0]


class OpenVinoModel:
    """A graph compiled by OpenVINO for the CPU at inference precision `precision` (bf16 or f32; None: the CPU's
    default, `cpu_precision`). Safe to share between threads: each concurrent call takes an inference request of
    its own from a pool."""

    backend = OPENVINO
    on_gpu = False

    def __init__(self, path: str | Path, threads: int | None = None, hint: str = "latency",
                 precision: str | None = None) -> None:
        if hint not in HINTS:
            raise BertdeployError(f"unknown OpenVINO hint {hint!r}; use {' or '.join(HINTS)}")
        if precision is not None and precision not in PRECISIONS:
            raise BertdeployError(f"unknown OpenVINO inference precision {precision!r}; use {' or '.join(PRECISIONS)}")
        ov = import_openvino()
        core = ov.Core()
        self.precision = precision or cpu_precision(core)
        self.threads, self.hint = threads or usable_cpus(), hint
        config = {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self.threads,
                  "PERFORMANCE_HINT": HINTS[hint]}
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as e:
            raise BertdeployError(f"{path}: OpenVINO cannot load it: {first_line(e)}") from None
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.providers = [f"OpenVINO CPU ({self.precision}, {self.threads} threads, {hint})"]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def prepare(self, feed: dict) -> dict:
        return {name: feed[name] for name in self.input_names}

    def run_prepared(self, prepared: dict) -> np.ndarray:
        return self.run(prepared)

    def run(self, feed: dict) -> np.ndarray:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({name: feed[name] for name in self.input_names}, share_inputs=True)
            return request.get_output_tensor(0).data.copy()
        finally:
            self._idle.put(request)


def open_model(path: str | Path, backend: str = ONNXRUNTIME, providers=None, *, threads: int | None = None,
               spinning: bool = False, allow_fallback: bool = False, hint: str = "latency",
               precision: str | None = None):
    """`path` ready to run on `backend`: ONNX Runtime on `providers`, or OpenVINO on the CPU at inference
    `precision` (None: the CPU's default)."""
    if backend == OPENVINO:
        return OpenVinoModel(path, threads, hint=hint, precision=precision)
    if backend != ONNXRUNTIME:
        raise BertdeployError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    return OrtModel(path, providers, threads=threads, spinning=spinning, allow_fallback=allow_fallback)

