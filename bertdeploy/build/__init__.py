"""The build wing: train (finetune), distill, export (optimize, quantize, guard), the PyTorch reference, the
demo's data and model. Needs torch, transformers and Optimum (the `train` extra), imported inside the
functions that use them. May import the runtime wing; never `bertdeploy.bench`.
"""
