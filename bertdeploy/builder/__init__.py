"""The build wing: train (finetune; with workdir and pretrained), distill, export (source, onnxexport, optimize,
kinds, quantize, guard), the PyTorch reference. Named `builder`, not `build`, which tools read as build output.
Needs torch, transformers and onnx (the `train` extra), imported inside the functions that use them.
May import the runtime wing; never `bertdeploy.benchmark`.
"""
