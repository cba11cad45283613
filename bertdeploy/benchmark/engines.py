"""What `bench` runs: PyTorch, ONNX Runtime, OpenVINO and the predictor's `auto`, behind one interface.

An `Engine` names what to load (a plain record, so the memory probe rebuilds it in a fresh
process); `load` gives a runner with `prepare(feed)` (put the inputs where the engine reads them,
untimed), `run_prepared(prepared)` (the timed call) and `run(feed) -> logits`. ONNX Runtime and
OpenVINO are the predictor's own model classes (backends.py); PyTorch is eager, as users run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.builder.reference import PYTORCH, TorchModel
from bertdeploy.defaults import AUTO, VERIFY  # AUTO as an engine: the predictor's routing among the variants
from bertdeploy.manifest import ExportManifest
from bertdeploy.runtime.backends import OpenVinoModel, OrtModel
from bertdeploy.runtime.options import RuntimeOptions
from bertdeploy.runtime.predictor import Predictor
from bertdeploy.runtime.routing import choose_routes


@dataclass(frozen=True, kw_only=True)
class Engine:
    name: str
    backend: str  # pytorch, onnxruntime, openvino, auto (the predictor's routing)
    path: str  # model directory (pytorch), .onnx file, or artifact directory (auto)
    kind: str = "fp32"  # fp32, optimized, int8, int8-static, fp16, int8-ov, auto
    device: str = "cpu"
    threads: int = 1
    precision: str | None = None  # OpenVINO's inference precision: the one the manifest records for the variant
    verify: bool = VERIFY  # auto: the predictor checks its files against the manifest's sha256
    allow_pickle: bool = False  # pytorch: load weights that are pickled only (pytorch_model.bin)
    ids_from: str | None = None  # pytorch: the trimmed tokenizer.json the feeds were made with (TorchModel)
    artifact: str | None = None  # the exported artifact directory it belongs to, whose tokenizer makes its feeds

    def load(self):
        if self.backend == PYTORCH:
            return TorchModel(self.path, self.kind, device=self.device, threads=self.threads,
                              allow_pickle=self.allow_pickle, ids_from=self.ids_from)
        if self.backend == AUTO:
            return AutoModel(self)
        if self.backend == "openvino":
            return OpenVinoModel(self.path, self.threads, precision=self.precision)
        return OrtModel(self.path, self.device, threads=self.threads)

    def size_bytes(self) -> int:
        path = Path(self.path)
        if self.backend == AUTO:
            manifest = ExportManifest.read(path)
            files = {manifest.variants[name].file for _, name in choose_routes(path, manifest)}
            return sum((path / f).stat().st_size for f in files)
        if path.is_file():
            return path.stat().st_size
        weights = [*path.glob("model*.safetensors"), *path.glob("pytorch_model*.bin")]  # not training_args.bin
        return sum(p.stat().st_size for p in weights)


class AutoModel:
    """The predictor's `backend="auto"`: each batch on the variant the manifest's ranges give for its size."""

    def __init__(self, engine: Engine) -> None:
        # No spinning: engines take turns, and one's spinning threads would slow the next one's call.
        self.predictor = Predictor.load(engine.path, options=RuntimeOptions(threads=engine.threads, spinning=False,
                                                                            verify=engine.verify))

    def prepare(self, feed: dict) -> dict:
        return {name: feed[name] for name in self.predictor.input_names}

    def run_prepared(self, prepared: dict) -> np.ndarray:
        return self.predictor.run_batch(prepared)

    run = run_prepared
