"""The build wing: train (finetune; with workdir and pretrained), distill, export (source, onnxexport, optimize,
quantize, guard), the PyTorch reference, the demo's data and model. Needs torch, transformers and onnx (the `train`
extra), imported inside the functions that use them. May import the runtime wing; never `bertdeploy.bench`.
"""
