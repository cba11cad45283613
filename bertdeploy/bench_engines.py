"""What `bench` runs: PyTorch, ONNX Runtime, OpenVINO and the predictor's `auto`, behind one interface.

An `Engine` names what to load (a plain record, so the memory probe rebuilds it in a fresh
process); `load` gives a runner with `prepare(feed)` (put the inputs where the engine reads them,
untimed), `run_prepared(prepared)` (the timed call) and `run(feed) -> logits`. ONNX Runtime and
OpenVINO are the predictor's own model classes (backends.py); PyTorch is eager, as users run it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdeploy.artifacts import read_manifest
from bertdeploy.backends import OpenVinoModel, OrtModel
from bertdeploy.predictor import Predictor, choose_routes

PYTORCH = "pytorch"
PYTORCH_BF16 = "pytorch-bf16"  # the same model under torch.autocast(bfloat16)
AUTO = "auto"
# CPU flags of native bf16 arithmetic: AVX512-BF16 and AMX on x86, the bf16 extension on Arm. There
# PyTorch's autocast to bf16 runs fast oneDNN kernels; elsewhere it emulates bf16 and is slower than fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))),
                    []))


def computes_bf16(device: str = "cpu", flags: set[str] | None = None) -> bool:
    """Whether `device` computes bf16 natively: a CPU flag of BF16_FLAGS, or a CUDA GPU PyTorch says supports it."""
    if device == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(set(BF16_FLAGS) & (cpu_flags() if flags is None else flags))


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
    """Eager PyTorch as users run it: `from_pretrained`, eval mode, inference mode; kind `bf16` under
    `torch.autocast(dtype=torch.bfloat16)` (weights stay fp32, as a user adding one line gets); `fp16` with the
    weights in fp16 (CUDA)."""

    def __init__(self, engine: Engine) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        torch.set_num_threads(engine.threads)
        model = AutoModelForSequenceClassification.from_pretrained(engine.path)
        if engine.kind == "fp16":
            model = model.half()
        self.model = model.to(engine.device).eval()
        self.device, self.autocast = engine.device, engine.kind == "bf16"
        self.names = ("input_ids", "attention_mask", "token_type_ids")

    def prepare(self, feed: dict) -> dict:
        return {k: self.torch.from_numpy(v).to(self.device) for k, v in feed.items() if k in self.names}

    def run_prepared(self, prepared: dict):
        with self.torch.inference_mode(), self.torch.autocast(self.device, dtype=self.torch.bfloat16,
                                                              enabled=self.autocast):
            out = self.model(**prepared).logits
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return out

    def run(self, feed: dict) -> np.ndarray:
        return self.run_prepared(self.prepare(feed)).float().cpu().numpy()


def pytorch_logits(model, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, device: str = "cpu",
                   batch_size: int = 32, autocast: bool = False, progress: str | None = None) -> np.ndarray:
    """A loaded PyTorch classifier's logits for every text, in order: batches of texts of similar length, under
    bf16 autocast if asked, with a progress bar named `progress` (none if None)."""
    import torch
    from tqdm.auto import tqdm

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        for start in tqdm(starts, desc=progress, file=sys.stderr, disable=None if progress else True):
            index = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in index], None if pairs is None else [pairs[i] for i in index],
                              padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out[index] = model(**batch.to(device)).logits.float().cpu().numpy()
    return out


class AutoModel:
    """The predictor's `backend="auto"`: each batch on the variant the manifest's ranges give for its size."""

    def __init__(self, engine: Engine) -> None:
        # No spinning: engines take turns, and one's spinning threads would slow the next one's call.
        self.predictor = Predictor.load(engine.path, threads=engine.threads, spinning=False)

    def prepare(self, feed: dict) -> dict:
        return {name: feed[name] for name in self.predictor.input_names}

    def run_prepared(self, prepared: dict) -> np.ndarray:
        return self.predictor.run_batch(prepared)

    run = run_prepared
