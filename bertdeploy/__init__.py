"""bertdeploy: fine-tune a BERT-family text classifier and ship it fast.

Two wings joined by one contract, the artifact directory with its `manifest.json`:

- the build wing (`bertdeploy.builder`, `bertdeploy.benchmark`): finetune, distill, export, quantize, bench;
  torch, transformers and onnx;
- the runtime wing (`bertdeploy.runtime`, `bertdeploy.predict`, `bertdeploy.serve`): the predictor,
  `predict` and `serve`; onnxruntime or openvino, tokenizers and numpy, never torch.

Importing the package is cheap: `from bertdeploy import Predictor` loads the runtime on first use.
"""

from bertdeploy.version import __version__

__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):
        from bertdeploy.runtime import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'bertdeploy' has no attribute {name!r}")
