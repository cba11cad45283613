"""ONNX Runtime's transformer optimizer at the levels O1-O4 that Optimum named, applied to an exported graph.

O1 is ONNX Runtime's basic graph optimizations alone; O2 adds its extended ones and the transformer fusions
(attention, skip LayerNorm, bias GELU); O3 adds the GELU approximation; O4 is O3 in fp16, for GPUs. LEVELS holds
each level's settings, the same as Optimum's `AutoOptimizationConfig` passes to the optimizer (embedding
LayerNorm fusion off, every other fusion at ONNX Runtime's default), so the graphs are the same node for node.
Whether the result is still right is checked by export.py; `fused_operators` counts what the fusions made,
since some architectures get none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True, kw_only=True)
class Level:
    """One optimization level: ONNX Runtime's graph optimization level, whether the transformer fusions run,
    the GELU approximation, and fp16 weights."""

    ort_level: int
    fusions: bool = True
    gelu_approximation: bool = False
    fp16: bool = False


LEVELS = {
    "O1": Level(ort_level=1, fusions=False),
    "O2": Level(ort_level=2),
    "O3": Level(ort_level=2, gelu_approximation=True),
    "O4": Level(ort_level=2, gelu_approximation=True, fp16=True),
}


def attention_shape(model_dir: Path) -> tuple[int, int]:
    """(attention heads, hidden size) from a checkpoint's config.json, whatever the architecture names them."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    heads = config.get("num_attention_heads", config.get("n_heads", 0))
    return heads, config.get("hidden_size", config.get("dim", 0))  # 0: the optimizer reads them off the graph


def optimize_graph(source: Path, level: str, device: str, destination: Path, model_dir: Path) -> Path:
    """Fuse the exported graph `source` of the checkpoint in `model_dir` into `destination` at `level`."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    check_level(level, device)
    settings = LEVELS[level]
    options = FusionOptions("bert")  # every BERT-family encoder takes ONNX Runtime's BERT fusions
    options.enable_embed_layer_norm = False  # off in every one of Optimum's levels
    options.enable_gelu_approximation = settings.gelu_approximation
    heads, hidden = attention_shape(model_dir)
    optimizer = optimize_model(str(source), "bert", heads, hidden, optimization_options=options,
                               opt_level=settings.ort_level, use_gpu=device == "cuda",
                               only_onnxruntime=not settings.fusions)
    if settings.fp16:
        optimizer.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
    optimizer.save_model_to_file(str(destination))
    return destination
