"""bertdeploy: fine-tune a BERT-family text classifier and ship it fast.

Two wings joined by one contract, the artifact directory with its `manifest.json`:

- the build wing (`bertdeploy.builder`, `bertdeploy.benchmark`): finetune, distill, export, quantize, bench;
  torch, transformers and onnx;
- the runtime wing (`bertdeploy.runtime`, `bertdeploy.predict`, `bertdeploy.serve`): the predictor,
  `predict` and `serve`; onnxruntime or openvino, tokenizers and numpy, never torch.

The public face, each name loaded on first use so that importing the package stays cheap:

    from bertdeploy import Predictor                       # the runtime (no torch)
    from bertdeploy import finetune, FinetuneOptions       # the build wing (the `train` extra)
    from bertdeploy import export, ExportOptions, distill, DistillOptions, bench, BenchOptions
"""

from __future__ import annotations

import importlib

from bertdeploy.version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "Predictor": "bertdeploy.runtime.predictor",
    "Prediction": "bertdeploy.runtime.predictor",
    "RuntimeOptions": "bertdeploy.runtime.options",
    "finetune": "bertdeploy.builder.train",
    "FinetuneOptions": "bertdeploy.builder.trainer_settings",
    "FinetuneResult": "bertdeploy.builder.train",
    "distill": "bertdeploy.builder.distill",
    "DistillOptions": "bertdeploy.builder.distill",
    "DistillResult": "bertdeploy.builder.distill",
    "export": "bertdeploy.builder.export",
    "ExportOptions": "bertdeploy.builder.export",
    "ExportResult": "bertdeploy.builder.export",
    "bench": "bertdeploy.benchmark.run",
    "BenchOptions": "bertdeploy.benchmark.options",
    "BenchResult": "bertdeploy.benchmark.report",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bertdeploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
