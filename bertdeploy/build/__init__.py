"""The build wing: train (finetune; with workdir and pretrained), distill, export (source, optimize, quantize,
guard), the PyTorch reference, the demo's data and model. Needs torch, transformers and Optimum (the `train`
extra), imported inside the functions that use them. May import the runtime wing; never `bertdeploy.bench`.
"""
