"""ONNX Runtime transformer fusions at Optimum's levels O1-O4, applied to an exported graph.

O1 basic fusions, O2 adds attention/LayerNorm/GELU fusions, O3 adds the GELU approximation,
O4 is O3 in fp16 for GPUs. Whether the result is still right is checked by export.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bertdeploy.errors import BertdeployError

LEVELS = ("O1", "O2", "O3", "O4")


def check_level(level: str, device: str) -> None:
    if level not in LEVELS:
        raise BertdeployError(f"unknown optimization level {level!r}; use one of {', '.join(LEVELS)}")
    if level == "O4" and device != "cuda":
        raise BertdeployError("--optimize O4 makes an fp16 graph that only pays off on a GPU: pass --device cuda, "
                              "or use O2/O3 on CPU")


def optimize_graph(export_dir: Path, level: str, device: str, destination: Path) -> Path:
    """Fuse `export_dir/model.onnx` (an Optimum export, config.json beside it) into `destination`."""
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    check_level(level, device)
    optimizer = ORTOptimizer.from_pretrained(export_dir, file_names=["model.onnx"])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=device == "cuda")
    with tempfile.TemporaryDirectory(dir=destination.parent) as work:
        optimizer.optimize(config, save_dir=work)
        shutil.move(Path(work) / "model_optimized.onnx", destination)
    return destination
