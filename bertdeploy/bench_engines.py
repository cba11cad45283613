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

from bertdeploy.artifacts import read_manifest
from bertdeploy.backends import OpenVinoModel, OrtModel
from bertdeploy.predictor import Predictor, choose_routes

PYTORCH = "pytorch"
AUTO = "auto"


@dataclass(frozen=True)
class Engine:
    name: str
    backend: str  # pytorch, onnxruntime, openvino, auto (the predictor's routing)
    path: str  # model directory (pytorch), .onnx file, or artifact directory (auto)
    kind: str = "fp32"  # fp32, optimized, int8, int8-static, fp16, int8-ov, auto
    device: str = "cpu"
    threads: int = 1

    def load(self):
        if self.backend == PYTORCH:
            return TorchModel(self)
        if self.backend == AUTO:
            return AutoModel(self)
        if self.backend == "openvino":
            return OpenVinoModel(self.path, self.threads)
        return OrtModel(self.path, self.device, self.threads)

    def size_bytes(self) -> int:
        path = Path(self.path)
        if self.backend == AUTO:
            manifest = read_manifest(path, "onnx")
            files = {manifest["variants"][name]["file"] for _, name in choose_routes(path, manifest)}
            return sum((path / f).stat().st_size for f in files)
        if path.is_file():
            return path.stat().st_size
        weights = [*path.glob("model*.safetensors"), *path.glob("pytorch_model*.bin")]  # not training_args.bin
        return sum(p.stat().st_size for p in weights)


class TorchModel:
    """Eager PyTorch as users run it: `from_pretrained`, eval mode, inference mode; fp16 as `<name>-fp16` on CUDA."""

    def __init__(self, engine: Engine) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        torch.set_num_threads(engine.threads)
        model = AutoModelForSequenceClassification.from_pretrained(engine.path)
        if engine.kind == "fp16":
            model = model.half()
        self.model = model.to(engine.device).eval()
        self.device = engine.device
        self.names = ("input_ids", "attention_mask", "token_type_ids")

    def prepare(self, feed: dict) -> dict:
        return {k: self.torch.from_numpy(v).to(self.device) for k, v in feed.items() if k in self.names}

    def run_prepared(self, prepared: dict):
        with self.torch.inference_mode():
            out = self.model(**prepared).logits
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return out

    def run(self, feed: dict) -> np.ndarray:
        return self.run_prepared(self.prepare(feed)).float().cpu().numpy()


class AutoModel:
    """The predictor's `backend="auto"`: each batch on the variant the manifest's ranges give for its size."""

    def __init__(self, engine: Engine) -> None:
        self.predictor = Predictor.load(engine.path, threads=engine.threads)

    def prepare(self, feed: dict) -> dict:
        return {name: feed[name] for name in self.predictor.input_names}

    def run_prepared(self, prepared: dict) -> np.ndarray:
        return self.predictor.run_batch(prepared)

    run = run_prepared
