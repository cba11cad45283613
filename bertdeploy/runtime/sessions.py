"""ONNX Runtime sessions on the providers asked for: onnxruntime only.

`resolve_providers` checks our short names ('cpu', 'cuda', 'tensorrt') against what this onnxruntime build
has; `create_session` puts a graph on them and fails instead of silently falling back to the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bertdeploy.defaults import DEVICES
from bertdeploy.errors import BertdeployError
from bertdeploy.host import usable_cpus

logger = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
GPU_PROVIDERS = {PROVIDERS["cuda"], PROVIDERS["tensorrt"]}


def resolve_providers(providers: str | Sequence | None) -> list:
    """ONNX Runtime provider names from our short names ('cpu', 'cuda', 'tensorrt') or its own,
    each optionally as (name, options); checked against what this onnxruntime build has."""
    import onnxruntime as ort

    if providers is None:
        providers = ["cpu"]
    elif isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    available = ort.get_available_providers()
    resolved = []
    for provider in providers:
        name, options = provider if isinstance(provider, tuple) else (provider, None)
        name = PROVIDERS.get(name.lower(), name)
        if name not in available:
            hint = ("; install the GPU build: `pip uninstall -y onnxruntime && pip install '.[gpu]'` in bertdeploy's "
                    "checkout"
                    if name in GPU_PROVIDERS else "")
            raise BertdeployError(f"provider {name} is not in this ONNX Runtime (it has {', '.join(available)}){hint}")
        resolved.append((name, options) if options else name)
    if not resolved:
        raise BertdeployError("no providers given; use cpu, cuda or tensorrt")
    return resolved


def provider_name(provider: str | tuple) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def check_device(device: str) -> None:
    """The one check of a device that export builds on and bench times on (DEVICES); whether this ONNX Runtime
    can run there is `resolve_providers([device])`'s."""
    if device not in DEVICES:
        raise BertdeployError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def create_session(path: str | Path, providers: str | Sequence | None = "cpu", *, threads: int | None = None,
                   spinning: bool = False, allow_fallback: bool = False):
    """An InferenceSession on `providers` (first choice first), `threads` intra-op threads (default: the
    usable CPUs). If ONNX Runtime drops the first choice for the CPU, that is an error, or with
    `allow_fallback` a logged warning. `spinning`: the intra-op threads spin a moment after a call for the
    next one (the predictor's default; off here, for timings that take turns with other engines)."""
    import onnxruntime as ort

    wanted = resolve_providers(providers)
    names = [provider_name(p) for p in wanted]
    if names[0] == PROVIDERS["tensorrt"] and PROVIDERS["cuda"] not in names:
        wanted.insert(1, PROVIDERS["cuda"])  # for the subgraphs TensorRT does not take
    if PROVIDERS["cpu"] not in names:
        wanted.append(PROVIDERS["cpu"])  # for the nodes a GPU provider does not cover
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BertdeployError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
    first, active = provider_name(wanted[0]), session.get_providers()
    if first not in active:
        message = f"{path}: ONNX Runtime fell back to {active[0]} instead of {first} (check the CUDA/cuDNN libraries)"
        if not allow_fallback:
            raise BertdeployError(message + "; allow the fall-back explicitly to run anyway")
        logger.warning("%s", message)
    return session
