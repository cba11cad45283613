"""ONNX Runtime transformer fusions at Optimum's levels O1-O4, applied to an exported graph.

O1 basic fusions, O2 adds attention/LayerNorm/GELU fusions, O3 adds the GELU approximation,
O4 is O3 in fp16 for GPUs. Whether the result is still right is checked by export.py;
`fused_operators` counts what the fusions made, since some architectures get none.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bertdeploy.defaults import OPTIMIZATION_LEVELS
from bertdeploy.errors import BertdeployError

# ONNX Runtime's fused transformer operators (com.microsoft domain), by what they replace
FUSED = {
    "attention": ("Attention", "MultiHeadAttention", "QAttention", "PackedAttention", "GroupQueryAttention"),
    "skip_layer_norm": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"),
    "embed_layer_norm": ("EmbedLayerNormalization",),
    "gelu": ("Gelu", "FastGelu", "BiasGelu", "QuickGelu"),
}


def fused_operators(nodes: list[tuple[str, str]]) -> dict[str, int]:
    """How many fused operators of each kind a graph holds, from its (name, op type) nodes."""
    return {kind: sum(op in ops for _, op in nodes) for kind, ops in FUSED.items()}


def unfused_attention(level: str | None, fused: dict[str, int]) -> str | None:
    """A warning when graph optimization fused no attention: ONNX Runtime has no fusion for this
    architecture's attention (DeBERTa-v2 and ModernBERT among them), so the level gains little."""
    if level is None or level == "O1" or fused["attention"]:
        return None
    return (f"{level}: ONNX Runtime fused no attention in this architecture, so its graph optimization gains little "
            "here; OpenVINO transforms the graph itself: export with --openvino and let bench measure which is faster")


def check_level(level: str, device: str) -> None:
    if level not in OPTIMIZATION_LEVELS:
        raise BertdeployError(f"unknown optimization level {level!r}; use one of {', '.join(OPTIMIZATION_LEVELS)}")
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
