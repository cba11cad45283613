"""The runtime wing: run exported variants. onnxruntime or openvino, tokenizers and numpy, never torch.

sessions (ONNX Runtime on the providers asked for), encoding (texts to padded, length-grouped batches),
backends (ONNX Runtime or OpenVINO behind one interface), routing (which variant runs which batch size),
options (the runtime settings every engine takes), predictor (what apps embed), raycluster (Ray, for the
Ray engines). Never imports `bertdeploy.builder` or `bertdeploy.benchmark`.
"""
